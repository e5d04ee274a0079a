"""train sft ``micro_batches``: a random batch fed as length-sorted micro-batches is the same optimizer step
as the batch itself (same examples, same gradient), with less padding (issue 19's padding lever)."""

from __future__ import annotations

import pytest
import torch

from tracewise.train.hf_trainer import SortedChunkSampler, dataset_lengths, sorted_chunk_indices
from tracewise.train.sft import SFTRunConfig, build_trainer


@pytest.fixture(scope="module")
def ragged_dataset(tmp_path_factory):
    """Rows whose thinking spans 0–15 repeats: lengths from ~20 to ~200 tokens."""
    from datasets import Dataset

    rows = [{"prompt": [{"role": "user", "content": f"Ann has {i % 9 + 1} pens. How many pens now?"}],
             "completion": [{"role": "assistant",
                             "content": f"<think>{'1+0=1. ' * ((i * 7) % 16)}</think>Answer: {i % 9 + 1}"}]}
            for i in range(64)]
    path = tmp_path_factory.mktemp("ragged") / "ds"
    Dataset.from_list(rows).save_to_disk(str(path))
    return str(path)


def _cfg(tmp_path, student_path, dataset, **kw):
    base = dict(out=str(tmp_path), experiment="m", model=student_path, dataset=dataset, max_steps=1, batch_size=16,
                learning_rate=1e-2, save_steps=10 ** 6, threads=1)
    return SFTRunConfig(**{**base, **kw})


def test_sorted_chunks_are_the_random_batches_sorted():
    lengths = [10, 50, 20, 40, 30, 60, 70, 5, 15]
    order = sorted_chunk_indices(lengths, chunk=4, seed=1)
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(1)).tolist()
    # the same examples per chunk as the seeded permutation, each chunk by increasing length
    assert [set(order[i:i + 4]) for i in (0, 4, 8)] == [set(perm[i:i + 4]) for i in (0, 4, 8)]
    for i in (0, 4, 8):
        chunk = [lengths[j] for j in order[i:i + 4]]
        assert chunk == sorted(chunk)
    s = SortedChunkSampler(lengths, 4, seed=1)
    first = list(s)
    s.set_epoch(1)
    assert sorted(first) == sorted(s) == list(range(9)) and list(s) != first


def _step_gradient(trainer) -> torch.Tensor:
    """The flattened gradient the optimizer would apply at step 1 (before clipping)."""
    from transformers import TrainerCallback

    grads: list[torch.Tensor] = []
    model = trainer.model

    class Grab(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, **kw):
            grads.append(torch.cat([p.grad.detach().flatten().clone() for p in model.parameters()
                                    if p.grad is not None]))

    trainer.add_callback(Grab())
    trainer.train()
    assert len(grads) == 1
    return grads[0]


def test_micro_batches_give_the_gradient_of_the_whole_batch(tmp_path, student_path, ragged_dataset):
    """Four length-sorted micro-batches of 4 vs the same 16 examples as one padded batch: the same gradient
    (each micro-batch's token loss is divided by the step's token count, not its own)."""
    micro = build_trainer(_cfg(tmp_path / "a", student_path, ragged_dataset, micro_batches=4), tmp_path / "a")
    loader = micro.get_train_dataloader()
    batches = [b for _, b in zip(range(4), loader)]
    widths = [b["input_ids"].shape[1] for b in batches]
    assert widths == sorted(widths) and widths[0] < widths[-1]  # sorted micro-batches, padded each to its own
    g_micro = _step_gradient(micro)

    first16 = sorted_chunk_indices(dataset_lengths(micro.train_dataset), 16, seed=0)[:16]  # seed 0, epoch 0
    whole = build_trainer(_cfg(tmp_path / "b", student_path, ragged_dataset), tmp_path / "b")
    whole._get_train_sampler = lambda *a, **k: first16  # the same 16 examples, one batch
    assert next(iter(whole.get_train_dataloader()))["input_ids"].shape[0] == 16
    g_whole = _step_gradient(whole)
    assert torch.allclose(g_micro, g_whole, rtol=1e-4, atol=1e-6), (g_micro - g_whole).abs().max()


def test_micro_batches_pad_less(tmp_path, student_path, ragged_dataset):
    def padding(**kw):
        trainer = build_trainer(_cfg(tmp_path, student_path, ragged_dataset, **kw), tmp_path / "ck")
        return sum(int((b["attention_mask"] == 0).sum()) for b in trainer.get_train_dataloader())

    assert padding(micro_batches=4) < 0.5 * padding()


def test_micro_batches_must_divide_the_batch_and_keep_random_order(tmp_path, student_path, ragged_dataset):
    with pytest.raises(ValueError, match="micro_batches"):
        _cfg(tmp_path, student_path, ragged_dataset, micro_batches=3).validate()
    with pytest.raises(ValueError, match="batch_order=random"):
        _cfg(tmp_path, student_path, ragged_dataset, micro_batches=4, batch_order="length_buckets").validate()
