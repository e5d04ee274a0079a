"""Around transformers' Trainer, for ``train sft`` and ``train rl``: batch order, a lean SFT loss and
``report_to`` checks. (Resuming, shared by both stages: :mod:`tracewise.train.common`.)

``fast_loss``: the plain next-token loss from the model's logits. TRL's default routes every step through
a chunked "fused LM head" that also computes entropy and top-1 accuracy for logging; on CPU that
bookkeeping costs more than the tiny model itself.

``batch_order``: which examples share a batch, and which batch comes next.

* ``random`` (default): a uniform shuffle every epoch (transformers' ``RandomSampler``). Every batch is a
  random sample of the dataset, so in a mixed dataset each batch mixes the sources in their proportions.
* ``length_buckets``: within chunks of 50 batches of randomly drawn examples, examples are sorted by length and
  cut into batches (little padding), then the order of ALL full batches is shuffled (seeded by ``seed`` and
  the epoch), so runs of one source are no longer than chance makes them. But a batch holds examples of
  similar length, and in a mix of a verbose and a concise teacher that means one teacher: measured on the
  quickstart's mix student (one seed, 600 steps), pass@1 0.17 against 0.90 in random order (0.11 with the loss
  normalised by a dataset-wide token count, so it is not the per-batch weighting). Faster where padding
  dominates; check accuracy against ``random`` before relying on it.
* ``random`` with ``micro_batches`` m > 1: the same random batches, each sorted by length and fed as m
  micro-batches accumulated into one optimizer step (``SortedChunkSampler``): same examples per step, less
  padding (the quickstart's mix student pads 0.63× as many tokens with m = 4).
* ``group_by_length`` (legacy; what ``length_grouping: true`` did): transformers' ``LengthGroupedSampler``.
  Each chunk of 50 batches is sorted longest first and the chunks are not shuffled, so a mixed dataset
  is seen as ~25-batch streaks of the long source followed by ~25 of the short one. That ordering, not
  the data, produced a wrong published conclusion in this project (issue 12); use it only to reproduce
  old runs.
"""

from __future__ import annotations

BATCH_ORDERS = ("random", "length_buckets", "group_by_length")
MEGABATCH = 50  # batches sorted together; the same chunk size as transformers' LengthGroupedSampler


def length_bucket_indices(lengths: list[int], batch_size: int, seed: int, megabatch: int = MEGABATCH) -> list[int]:
    """Example indices in training order: consecutive ``batch_size`` slices are the batches.

    Deterministic in ``seed``. Chunks are whole multiples of ``batch_size``, so only the dataset's last
    chunk can leave a short batch; it goes last, so the slicing into batches never shifts.
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(lengths), generator=g).tolist()
    chunk = megabatch * batch_size
    batches: list[list[int]] = []
    for start in range(0, len(perm), chunk):
        part = sorted(perm[start:start + chunk], key=lambda i: lengths[i])
        batches += [part[j:j + batch_size] for j in range(0, len(part), batch_size)]
    full = [b for b in batches if len(b) == batch_size]
    short = [b for b in batches if len(b) < batch_size]
    order = torch.randperm(len(full), generator=g).tolist()
    return [i for k in order for i in full[k]] + [i for b in short for i in b]


class LengthBucketSampler:
    """``torch.utils.data.Sampler`` for ``batch_order: length_buckets`` (see the module docstring).

    The order depends only on ``seed`` and the epoch (``set_epoch``, called by the Trainer and
    accelerate), not on global RNG state: a resumed run skips exactly the batches it already saw, and
    every process of a multi-GPU launch computes the same order.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int):
        self.lengths, self.batch_size, self.seed, self.epoch = list(lengths), batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        return iter(length_bucket_indices(self.lengths, self.batch_size, self.seed * 1_000_003 + self.epoch))


def sorted_chunk_indices(lengths: list[int], chunk: int, seed: int) -> list[int]:
    """A uniform random permutation cut into ``chunk``-sized slices, each slice sorted by length.

    With ``micro_batches`` m > 1, a slice is one optimizer step's batch (``batch_size`` examples drawn at
    random, exactly as ``random`` draws them) and the trainer sees it as m micro-batches of increasing
    length, accumulated into one step: the step's examples and its gradient (the loss is normalised by
    the step's token count, ``num_items_in_batch``) are those of the random batch, but each micro-batch
    is padded only to its own longest example.
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(lengths), generator=g).tolist()
    return [i for start in range(0, len(perm), chunk)
            for i in sorted(perm[start:start + chunk], key=lambda i: lengths[i])]


class SortedChunkSampler(LengthBucketSampler):
    """``torch.utils.data.Sampler`` for ``micro_batches`` > 1 under ``batch_order: random`` (see
    ``sorted_chunk_indices``); like ``LengthBucketSampler`` its order depends only on seed and epoch."""

    def __iter__(self):
        return iter(sorted_chunk_indices(self.lengths, self.batch_size, self.seed * 1_000_003 + self.epoch))


def dataset_lengths(dataset, column: str = "input_ids") -> list[int]:
    """Token count of each row of a tokenized ``datasets.Dataset`` (read from Arrow, no Python lists of ids)."""
    import pyarrow.compute as pc

    col = dataset.with_format("arrow")[column]
    return pc.list_value_length(col).to_pylist()


def trainer_class(fast_loss: bool, batch_order: str, micro_batches: int = 1):
    import torch
    from trl import SFTTrainer

    class TracewiseSFTTrainer(SFTTrainer):
        """SFTTrainer with ``batch_order: length_buckets`` and, if ``fast_loss``, the plain loss."""

        def _get_train_sampler(self, train_dataset=None):
            sorted_chunks = batch_order == "random" and micro_batches > 1
            if batch_order != "length_buckets" and not sorted_chunks:
                return super()._get_train_sampler(train_dataset)  # random / group_by_length: transformers' own
            ds = train_dataset if train_dataset is not None else self.train_dataset
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            if sorted_chunks:  # one chunk = the micro-batches of one optimizer step
                return SortedChunkSampler(dataset_lengths(ds), self.args.train_batch_size * micro_batches, seed)
            return LengthBucketSampler(dataset_lengths(ds), self.args.train_batch_size, seed)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if not fast_loss:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            labels = inputs["labels"]
            model_inputs = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "position_ids")}
            outputs = model(**model_inputs, use_cache=False)
            logits = outputs.logits[:, :-1, :].float()
            targets = labels[:, 1:]
            loss_sum = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100, reduction="sum"
            )
            denom = num_items_in_batch if num_items_in_batch is not None else (targets != -100).sum()
            loss = loss_sum / torch.as_tensor(denom, device=loss_sum.device).clamp(min=1)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes
            return (loss, outputs) if return_outputs else loss

    return TracewiseSFTTrainer


def check_report_to(names: list[str], where: str) -> None:
    """``report_to`` names must be transformers integrations whose package is installed (checked before any output)."""
    if not names:
        return
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK, get_available_reporting_integrations

    for name in names:
        if name in ("none", "all"):
            continue
        if name not in INTEGRATION_TO_CALLBACK:
            raise ValueError(f"{where}.report_to: unknown tracker {name!r}; known: {sorted(INTEGRATION_TO_CALLBACK)}")
        if name not in get_available_reporting_integrations():
            raise ValueError(f"{where}.report_to: {name!r} needs its Python package, which is not installed")
