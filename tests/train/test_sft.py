"""train sft: the loss falls, parameters change, the model saves loadable, resume continues."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from tracewise.train.sft import LoRASpec, SFTRunConfig, model_dir, run
from conftest import save_pens_dataset


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory, student_path):
    return save_pens_dataset(tmp_path_factory.mktemp("ds") / "ds", repeats=8)


def _cfg(out, student_path, dataset, **kw):
    base = dict(out=str(out), experiment="t", model=student_path, dataset=dataset, max_steps=30, batch_size=8,
                learning_rate=1e-2, logging_steps=5, save_steps=10, threads=1)
    base.update(kw)
    return SFTRunConfig(**base)


def test_sft_learns_and_saves(tmp_path, student_path, tiny_dataset):
    from transformers import AutoModelForCausalLM

    before = AutoModelForCausalLM.from_pretrained(student_path).state_dict()
    run_dir = run(_cfg(tmp_path, student_path, tiny_dataset))
    losses = [h["loss"] for h in json.loads((run_dir / "log_history.json").read_text()) if "loss" in h]
    assert losses[-1] < 0.5 * losses[0], losses
    after = AutoModelForCausalLM.from_pretrained(model_dir(run_dir)).state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) >= len(before) // 2
    assert (run_dir / "DONE").exists() and (run_dir / "experiment.txt").read_text() == "t"


def test_sft_rerun_is_noop_and_resume_continues(tmp_path, student_path, tiny_dataset, caplog):
    cfg = _cfg(tmp_path, student_path, tiny_dataset, max_steps=20)
    run_dir = run(cfg)
    mtime = (run_dir / "DONE").stat().st_mtime
    assert run(cfg) == run_dir and (run_dir / "DONE").stat().st_mtime == mtime
    # Simulate a crash after the step-10 checkpoint: drop the final artifacts and the later checkpoint.
    (run_dir / "DONE").unlink()
    shutil.rmtree(model_dir(run_dir))
    shutil.rmtree(run_dir / "checkpoints" / "checkpoint-20")
    ckpt_history = json.loads((run_dir / "checkpoints" / "checkpoint-10" / "trainer_state.json").read_text())["log_history"]
    with caplog.at_level("INFO", logger="tracewise.train.sft"):
        run(cfg)
    assert any("resuming from" in r.message and "checkpoint-10" in r.message for r in caplog.records)
    history = json.loads((run_dir / "log_history.json").read_text())
    steps = [h["step"] for h in history if "loss" in h]
    assert steps == [5, 10, 15, 20], steps  # no step repeated or lost
    assert history[: len(ckpt_history)] == ckpt_history  # steps 1-10 were not retrained
    assert (model_dir(run_dir) / "config.json").exists()


def test_sft_killed_after_its_last_checkpoint_does_not_train_past_max_steps(tmp_path, student_path, tiny_dataset):
    """A kill after checkpoint-20 of a 20-step run (before DONE): transformers, resuming at global_step ==
    max_steps in mid-epoch (72 rows / batch 8 = 9 steps per epoch), would train a 21st step."""
    from safetensors.torch import load_file

    cfg = _cfg(tmp_path, student_path, tiny_dataset, max_steps=20)
    run_dir = run(cfg)
    final = load_file(str(model_dir(run_dir) / "model.safetensors"))
    history = json.loads((run_dir / "log_history.json").read_text())
    (run_dir / "DONE").unlink()
    shutil.rmtree(model_dir(run_dir))
    run(cfg)
    assert json.loads((run_dir / "DONE").read_text())["steps"] == 20
    again = load_file(str(model_dir(run_dir) / "model.safetensors"))
    assert all(torch.equal(final[k], again[k]) for k in final)
    steps = [h["step"] for h in json.loads((run_dir / "log_history.json").read_text()) if "loss" in h]
    assert steps == [h["step"] for h in history if "loss" in h] == [5, 10, 15, 20]


def test_sft_bad_input(tmp_path, student_path, tiny_dataset):
    with pytest.raises(ValueError, match="dataset"):
        run(_cfg(tmp_path, student_path, str(tmp_path / "missing")))
    with pytest.raises(ValueError, match="max_steps"):
        run(_cfg(tmp_path, student_path, tiny_dataset, max_steps=0))
    with pytest.raises(ValueError, match="not a dataset"):
        (tmp_path / "empty").mkdir()
        run(_cfg(tmp_path, student_path, str(tmp_path / "empty")))


# ---------------------------------------------------------------- batch order (issue 12)

N_PER_SOURCE, BATCH, K_RUN = 200, 2, 22


@pytest.fixture(scope="module")
def two_source_dataset(tmp_path_factory):
    """A 50/50 mix of a verbose source ("Ann", long thinking) and a concise one ("Bob"), 200 rows each,
    saved source by source (the worst case for any sampler that keeps the stored order)."""
    from datasets import Dataset

    def row(who, a, thinking):
        return {"prompt": [{"role": "user", "content": f"{who} has {a} pens. How many pens now?"}],
                "completion": [{"role": "assistant", "content": f"<think>{thinking}</think>Answer: {a}"}]}

    rows = [row("Ann", i % 9 + 1, f"{i % 9 + 1}+0={i % 9 + 1}. " * 6) for i in range(N_PER_SOURCE)]
    rows += [row("Bob", i % 9 + 1, "") for i in range(N_PER_SOURCE)]
    path = tmp_path_factory.mktemp("mix") / "ds"
    Dataset.from_list(rows).save_to_disk(str(path))
    return str(path)


def _batches_in_training_order(tmp_path, student_path, dataset, batch_order):
    """(sources, padding tokens) of each batch the trainer's dataloader yields, in order, for one epoch."""
    from tracewise.train.sft import build_trainer

    trainer = build_trainer(_cfg(tmp_path, student_path, dataset, batch_size=BATCH, batch_order=batch_order),
                            tmp_path / "ck")
    tok = trainer.processing_class
    out = []
    for batch in trainer.get_train_dataloader():
        texts = [tok.decode(ids) for ids in batch["input_ids"]]
        sources = {"Ann" if "Ann has" in t else "Bob" if "Bob has" in t else "?" for t in texts}
        out.append((sources, int((batch["attention_mask"] == 0).sum())))
    assert len(out) == 2 * N_PER_SOURCE // BATCH and all("?" not in s for s, _ in out)
    return out


def _longest_single_source_run(sources: list[set]) -> int:
    best = run_len = 0
    prev = None
    for s in sources:
        cur = next(iter(s)) if len(s) == 1 else None
        run_len = run_len + 1 if cur is not None and cur == prev else (1 if cur is not None else 0)
        prev = cur
        best = max(best, run_len)
    return best


@pytest.mark.parametrize("batch_order, streaky", [("random", False), ("length_buckets", False),
                                                   ("group_by_length", True)])
def test_mixed_dataset_batches_interleave_sources(tmp_path, student_path, two_source_dataset, batch_order, streaky):
    """No run of K_RUN = 22 consecutive single-source batches of the same source.

    Why 22: 200 batches of 2 from 200 + 200 rows. Under a uniformly random batch order a given window of
    k batches is all one source with probability at most 2 * 2^-k (length_buckets: a and b batches of
    each source, a, b <= 100, a window of a random permutation of 200 is all-A w.p. C(a,k)/C(200,k) <=
    2^-k; random: each batch is all-A w.p. ~1/4, so <= 2 * 4^-k); over <= 200 windows P(some run >= 22)
    <= 400 * 2^-22 ~ 1e-4 for ANY seed. group_by_length sorts each chunk of 50 batches (100 rows) longest
    first: the source with >= 50 rows of that chunk fills >= 24 consecutive batches, so it always fails.
    """
    batches = _batches_in_training_order(tmp_path, student_path, two_source_dataset, batch_order)
    run = _longest_single_source_run([s for s, _ in batches])
    assert (run >= K_RUN) == streaky, (batch_order, run)


def test_length_buckets_cut_padding(tmp_path, student_path, two_source_dataset):
    """length_buckets pairs rows of similar length: far less padding than random pairs (~half of which mix a
    long and a short row)."""
    pad = {order: sum(p for _, p in _batches_in_training_order(tmp_path / order, student_path, two_source_dataset,
                                                               order)) for order in ("random", "length_buckets")}
    assert pad["length_buckets"] < 0.2 * pad["random"], pad


def test_length_bucket_order_depends_only_on_seed_and_epoch():
    """Resume skips the batches already seen, so the order must be reproducible from (seed, epoch) alone."""
    from tracewise.train.hf_trainer import LengthBucketSampler

    lengths = [5 + (i * 7) % 40 for i in range(103)]
    a, b = LengthBucketSampler(lengths, 4, seed=3), LengthBucketSampler(lengths, 4, seed=3)
    torch.manual_seed(0)
    first = list(a)
    torch.manual_seed(1)  # the global RNG state does not matter
    assert list(b) == first and sorted(first) == list(range(103))
    a.set_epoch(1)
    assert list(a) != first and sorted(a) == list(range(103))
    assert list(LengthBucketSampler(lengths, 4, seed=4)) != first
    # 103 rows < one chunk of 50 batches: the batches are consecutive slices of the length-sorted rows, the
    # short one (3 rows) last, and the 25 full ones in shuffled, not sorted, order.
    ranked = sorted(lengths)
    got = [sorted(lengths[i] for i in first[j:j + 4]) for j in range(0, 103, 4)]
    assert sorted(got[:25]) == [ranked[j:j + 4] for j in range(0, 100, 4)] and got[25] == ranked[100:]
    assert got[:25] != sorted(got[:25]) and got[:25] != sorted(got[:25], reverse=True)


def test_removed_length_grouping_key_is_a_clear_error(tmp_path, student_path, tiny_dataset):
    from tracewise.core.config import load_config

    base = [f"model={student_path}", f"dataset={tiny_dataset}"]
    with pytest.raises(ValueError, match="length_grouping was replaced by batch_order.*group_by_length"):
        load_config(SFTRunConfig, None, base + ["length_grouping=true"])
    with pytest.raises(ValueError, match="batch_order: expected one of"):
        load_config(SFTRunConfig, None, base + ["batch_order=sorted"])
    assert load_config(SFTRunConfig, None, base).batch_order == "random"


# ---------------------------------------------------------------- completion-only loss


def test_completion_only_loss_masks_exactly_the_prompt(tmp_path, student_path):
    """labels == -100 on every prompt token and on no completion token; the loss counts completion tokens only.

    Expected token spans are written out by hand from the student's chat template, not taken from TRL.
    """
    from datasets import Dataset
    from tracewise.train.sft import build_trainer

    ds = tmp_path / "one"
    Dataset.from_list([{"prompt": [{"role": "user", "content": "Bob has 3 pens. How many pens now?"}],
                        "completion": [{"role": "assistant", "content": "<think>3+0=3.</think>Answer: 3"}]}]
                      ).save_to_disk(str(ds))
    trainer = build_trainer(_cfg(tmp_path, student_path, str(ds), batch_size=1), tmp_path / "ck")
    tok = trainer.processing_class
    prompt = tok("<|user|>Bob has 3 pens. How many pens now?<|end|><|assistant|>", add_special_tokens=False)["input_ids"]
    completion = tok("<think>3+0=3.</think>Answer: 3<|end|>", add_special_tokens=False)["input_ids"]
    batch = next(iter(trainer.get_train_dataloader()))
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    P = len(prompt)
    assert P > 10 and ids == prompt + completion
    assert labels[:P] == [-100] * P  # every prompt token masked
    assert labels[P:] == completion  # no completion token masked
    # The loss the trainer optimises: mean cross-entropy over the completion's next-token predictions only.
    model = trainer.model
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"]).logits[0].float()
        expected = torch.nn.functional.cross_entropy(logits[P - 1:-1], torch.tensor(completion))
        loss = trainer.compute_loss(model, batch)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


# ---------------------------------------------------------------- warnings, report_to


@pytest.mark.parametrize("lora_r", [0, 4])
def test_tiny_run_emits_no_library_warnings(tmp_path, student_path, tiny_dataset, lora_r):
    """pyproject's filterwarnings hides these in pytest; catch_warnings(record=True) + "always" sees them
    (transformers warned `gradient_checkpointing` is deprecated on every run, between progress bars)."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(_cfg(tmp_path, student_path, tiny_dataset, max_steps=2, save_steps=100, lora=LoRASpec(r=lora_r)))
    libs = ("transformers", "trl", "accelerate", "peft", "tracewise")
    bad = [f"{w.category.__name__} {w.filename}:{w.lineno}: {w.message}" for w in caught
           if issubclass(w.category, (FutureWarning, UserWarning, DeprecationWarning))
           and any(f"/{lib}/" in w.filename for lib in libs)]
    assert not bad, bad


def test_report_to_reaches_the_training_arguments(tmp_path, student_path, tiny_dataset, monkeypatch):
    from transformers.integrations import integration_utils

    from tracewise.core.config import load_config
    from tracewise.train.sft import training_args

    cfg = _cfg(tmp_path, student_path, tiny_dataset, report_to=["tensorboard", "wandb"])
    assert training_args(cfg, str(tmp_path), 1, False, False).report_to == ["tensorboard", "wandb"]
    assert training_args(_cfg(tmp_path, student_path, tiny_dataset), str(tmp_path), 1, False, False).report_to == []
    base = [f"model={student_path}", f"dataset={tiny_dataset}"]
    with pytest.raises(ValueError, match="report_to: unknown tracker 'wandbb'"):
        load_config(SFTRunConfig, None, base + ["report_to=[wandbb]"])
    monkeypatch.setattr(integration_utils, "get_available_reporting_integrations", lambda: ["tensorboard"])
    with pytest.raises(ValueError, match="'wandb' needs its Python package"):
        load_config(SFTRunConfig, None, base + ["report_to=[wandb]"])
    assert load_config(SFTRunConfig, None, base + ["report_to=[tensorboard]"]).report_to == ["tensorboard"]


def test_dependency_floors_cover_the_apis_the_code_uses():
    """pyproject's minimums are the first releases with the APIs we call (found in each release's source)."""
    from pathlib import Path

    from packaging.requirements import Requirement
    from packaging.version import Version

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    deps = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]["dependencies"]
    floors = {}
    for d in deps:
        req = Requirement(d)
        floors[req.name] = min((Version(s.version) for s in req.specifier if s.operator == ">="), default=None)
    needed = {"transformers": "5.23",  # TrainingArguments(activation_checkpointing=...); 5.22 lacks it
              "datasets": "4.0",  # datasets.List
              "trl": "1.0"}
    for name, first in needed.items():
        assert floors[name] is not None and floors[name] >= Version(first), (name, floors[name])


# ---------------------------------------------------------------- slow: accuracy vs batch order

# Measured here (one seed, 600 steps, 2000 problems, pass@1 on 100 test problems x 4 samples):
# random 0.90, length_buckets 0.17, group_by_length 0.13 (length_buckets with a dataset-wide instead of
# per-batch token normalisation of the loss: 0.11). Batches of one length are batches of one teacher in
# the mix, and that, not only the streaks, costs the accuracy.
SLOW_STEPS, SLOW_N_TRAIN, SLOW_TOL, SLOW_FLOOR = 600, 2000, 0.15, 0.6


def quickstart_mix_pass1(out, orders, steps=SLOW_STEPS, n_train=SLOW_N_TRAIN, n_test=100, samples=4) -> dict[str, float]:
    """pass@1 of the quickstart's 50/50-mix student (its student, teachers, judge, filter and recipe; fewer
    problems and steps) trained with each batch order, on the same held-out problems."""
    from dataclasses import replace

    from tracewise import curate, evaluate, generate
    from tracewise.verify import stage as verify_stage
    from tracewise.backends.base import SamplingParams
    from tracewise.data.sources import ProblemsConfig
    from tracewise.studies.quickstart import QuickstartConfig
    from tracewise.train import sft
    from tracewise.world import init_stage

    torch.set_num_threads(1)
    qs, out = QuickstartConfig(), str(out)
    world = replace(qs.world, n_train=n_train, n_test=n_test)
    base = str(init_stage.model_path(init_stage.run(init_stage.InitStudentConfig(
        out=out, student=qs.student, pretrain_steps=qs.pretrain_steps))))
    problems = ProblemsConfig(source="world", split="train", world=world)
    gens = [str(generate.run(generate.GenerateConfig(out=out, tokenizer=base, teacher=t, problems=problems,
                                                     sampling=SamplingParams(n=1, seed=qs.seed))))
            for t in qs.teachers]
    ver = verify_stage.run(verify_stage.VerifyConfig(out=out, generations=gens, judge_cfg=qs.judge))
    cur = curate.run(curate.CurateConfig(out=out, generations=gens, verdicts=str(ver), filter=qs.filter,
                                         mix_seed=qs.seed))
    t = qs.train
    result = {}
    for order in orders:
        run_dir = sft.run(sft.SFTRunConfig(
            out=out, experiment=f"mix-{order}", model=base, dataset=str(curate.dataset_path(cur, "mix")),
            max_steps=steps, batch_size=t.batch_size, learning_rate=t.learning_rate, warmup_ratio=t.warmup_ratio,
            seed=qs.seed, batch_order=order, threads=1))
        ev = evaluate.run(evaluate.EvalConfig(
            out=out, experiment=f"mix-{order}", model=str(sft.model_dir(run_dir)),
            problems=ProblemsConfig(source="world", split="test", world=world), threads=1,
            sampling=SamplingParams(n=samples, temperature=qs.eval_temperature, max_tokens=qs.eval_max_tokens,
                                    seed=qs.seed)))
        result[order] = json.loads((ev / "summary.json").read_text())["rows"][0]["pass@1"]
    return result


@pytest.fixture(scope="module")
def mix_pass1(tmp_path_factory):
    """pass@1 of the mix student per batch order, each trained once (data stages are shared and reused)."""
    root, cache = tmp_path_factory.mktemp("qs_mix"), {}

    def get(order: str) -> float:
        if order not in cache:
            cache.update(quickstart_mix_pass1(root, (order,)))
        return cache[order]

    return get


@pytest.mark.slow
def test_quickstart_mix_student_learns_in_the_default_order(mix_pass1):
    """The published failure (mix student pass@1 0.155 after grouped training) does not come back."""
    assert SFTRunConfig().batch_order == "random"
    assert mix_pass1("random") >= SLOW_FLOOR


@pytest.mark.slow
@pytest.mark.parametrize("order", [
    pytest.param("length_buckets", marks=pytest.mark.xfail(strict=True, reason="measured 0.17 vs 0.90 random: "
                                                           "one-length batches are one-teacher batches in the mix")),
    pytest.param("group_by_length", marks=pytest.mark.xfail(strict=True, reason="measured 0.13 vs 0.90 random")),
])
def test_quickstart_mix_student_accuracy_does_not_depend_on_the_batch_order(mix_pass1, order):
    """pass@1 within SLOW_TOL = 0.15 of the random-order student's. Known to fail for both length-aware
    orders (strict xfail: the day one of them matches random, this says so and the doc can change).

    Noise: pass@1 is a mean over 100 problems of per-problem pass rates in [0, 1] (variance <= 1/4), so
    its standard error is <= 0.05 and that of a difference of two students <= 0.071; 0.15 is ~2.1 of
    those (a worst-case bound).
    """
    assert abs(mix_pass1(order) - mix_pass1("random")) <= SLOW_TOL
