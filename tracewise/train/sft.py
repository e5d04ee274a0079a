"""Stage ``train sft``: supervised fine-tuning on curated traces with TRL's ``SFTTrainer``.

Loss on the completion only, AdamW, cosine schedule with warmup (the paper's recipe). Two
deliberate departures from TRL's defaults, both measured in ``benchmarks/sft.py``:

* ``FastSFTTrainer.compute_loss`` computes the plain next-token loss from the model's logits.
  TRL's default routes every step through a chunked "fused LM head" that also computes entropy
  and top-1 accuracy for logging; on CPU that bookkeeping costs more than the tiny model itself.
* batches are grouped by length (``train_sampling_strategy="group_by_length"``) so padding is
  small without packing, and samples never attend to each other.

Resume: checkpoints hold optimizer, scheduler and RNG state; a rerun continues from the last one
with the same data order (HF Trainer skips the batches already seen).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from tracewise.config import doc
from tracewise.store import is_done, mark_done, save_config, stage_dir

log = logging.getLogger(__name__)


@dataclass
class SFTRunConfig:
    """Fine-tune a causal LM on a curated dataset (``tracewise train sft``)."""

    out: str = doc("Root directory; the stage writes into <out>/sft-<hash>/ (final model in model/).", "runs", hash=False)
    experiment: str = doc("Label of this student in reports (e.g. 'r1', 'gpt-oss', 'mix').", "")
    model: str = doc("Base model: local path or HF id (the embedded student is a local path).", "")
    dataset: str = doc("HF dataset saved by `curate` (columns prompt/completion, conversational).", "")
    max_steps: int = doc("Optimizer steps (the paper: 3000).", 600)
    batch_size: int = doc("Per-device batch size.", 32)
    grad_accum: int = doc("Gradient accumulation steps (global batch = batch_size × grad_accum × devices).", 1)
    learning_rate: float = doc("Peak learning rate (AdamW).", 3e-3)
    warmup_ratio: float = doc("Fraction of steps for linear warmup before the cosine decay.", 0.05)
    weight_decay: float = doc("AdamW weight decay.", 0.0)
    max_length: int = doc("Truncate examples to this many tokens.", 512)
    seed: int = doc("Seed for data order and dropout.", 0)
    logging_steps: int = doc("Log the loss every N steps.", 10, hash=False)
    save_steps: int = doc("Save a resumable checkpoint every N steps.", 100, hash=False)
    length_grouping: bool = doc("Group batches by length to cut padding (no cross-sample attention).", True)
    fast_loss: bool = doc("Plain next-token loss without TRL's per-step entropy/accuracy metrics.", True)
    bf16: bool | None = doc("bf16 mixed precision; None = on when CUDA is available.", None)
    gradient_checkpointing: bool = doc("Trade compute for memory (large models).", False)
    threads: int = doc("torch CPU threads (0 = torch default).", 0, hash=False)

    def validate(self) -> None:
        if not self.model:
            raise ValueError("train.sft.model is required (a local model path or HF id)")
        if not self.dataset or not Path(self.dataset).exists():
            raise ValueError(f"train.sft.dataset: {self.dataset!r} not found (a dataset dir written by `curate`)")
        for name in ("max_steps", "batch_size", "grad_accum", "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.sft.{name} must be >= 1, got {getattr(self, name)}")
        if self.learning_rate <= 0 or not 0 <= self.warmup_ratio < 1:
            raise ValueError("train.sft.learning_rate must be > 0 and warmup_ratio in [0, 1)")


def model_dir(run_dir: str | Path) -> Path:
    """Where a finished SFT run keeps its final model (loadable with ``from_pretrained``)."""
    return Path(run_dir) / "model"


def _trainer_class():
    import torch
    from trl import SFTTrainer

    class FastSFTTrainer(SFTTrainer):
        """SFTTrainer whose loss skips TRL's fused-head metrics (see module docstring)."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
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

    return FastSFTTrainer


def _load_dataset(path: str):
    from datasets import load_from_disk

    try:
        # In memory: TRL's preprocessing must not write cache files into curate's (immutable) output.
        ds = load_from_disk(path, keep_in_memory=True)
    except Exception as e:
        raise ValueError(f"{path}: not a dataset saved by `curate` ({type(e).__name__}: {e})") from None
    missing = {"prompt", "completion"} - set(ds.column_names)
    if missing:
        raise ValueError(f"{path}: dataset lacks column(s) {sorted(missing)}; expected prompt/completion")
    if len(ds) == 0:
        raise ValueError(f"{path}: dataset is empty")
    keep = [c for c in ds.column_names if c not in ("prompt", "completion")]
    ds = ds.remove_columns(keep)
    return ds


def _last_checkpoint(ckpt_root: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(ckpt_root)) if ckpt_root.exists() else None


def run(cfg: SFTRunConfig) -> Path:
    """Train; resumable from the last checkpoint; returns the run dir (final model in ``model/``)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig

    cfg.validate()
    run_dir = stage_dir(cfg.out, "sft", cfg, inputs=[p for p in (cfg.model, cfg.dataset) if Path(p).exists()])
    if is_done(run_dir):
        log.info("train sft: %s is complete, nothing to do", run_dir)
        return run_dir
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    dataset = _load_dataset(cfg.dataset)
    save_config(run_dir, cfg)
    (run_dir / "experiment.txt").write_text(cfg.experiment or Path(cfg.dataset).name)
    tokenizer = AutoTokenizer.from_pretrained(cfg.model)
    try:
        model = AutoModelForCausalLM.from_pretrained(cfg.model)
    except Exception as e:
        raise ValueError(f"{cfg.model}: not a causal LM ({type(e).__name__}: {e})") from None
    cuda = torch.cuda.is_available()
    bf16 = cuda if cfg.bf16 is None else cfg.bf16
    ckpt_root = run_dir / "checkpoints"
    args = SFTConfig(
        output_dir=str(ckpt_root),
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=cfg.warmup_ratio,  # transformers 5: a float < 1 is a ratio of max_steps
        weight_decay=cfg.weight_decay,
        optim="adamw_torch",
        max_length=cfg.max_length,
        completion_only_loss=True,
        packing=False,
        bf16=bf16,
        use_cpu=not cuda,
        gradient_checkpointing=cfg.gradient_checkpointing,
        train_sampling_strategy="group_by_length" if cfg.length_grouping else "random",
        logging_steps=cfg.logging_steps,
        save_steps=cfg.save_steps,
        save_total_limit=2,
        report_to=[],
        seed=cfg.seed,
        data_seed=cfg.seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer_cls = _trainer_class() if cfg.fast_loss else __import__("trl").SFTTrainer
    trainer = trainer_cls(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # it prints raw dicts; losses go to logging + log_history.json
    trainer.add_callback(_progress_callback(cfg.max_steps, cfg.experiment or "sft"))
    resume = _last_checkpoint(ckpt_root)
    if resume:
        log.info("train sft: resuming from %s", resume)
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(str(model_dir(run_dir)))
    tokenizer.save_pretrained(str(model_dir(run_dir)))
    history = trainer.state.log_history
    (run_dir / "log_history.json").write_text(json.dumps(history, indent=1))
    losses = [h["loss"] for h in history if "loss" in h]
    mark_done(run_dir, {"experiment": cfg.experiment, "steps": trainer.state.global_step,
                        "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None})
    log.info("train sft [%s]: %d steps, loss %.3f → %.3f", cfg.experiment, trainer.state.global_step,
             losses[0] if losses else float("nan"), losses[-1] if losses else float("nan"))
    return run_dir


def _progress_callback(total: int, label: str):
    """A rich progress bar over optimizer steps, with the latest loss."""
    from transformers import TrainerCallback

    from tracewise.progress import progress_bar

    class _Bar(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            self._cm = progress_bar(f"train sft [{label}]", total)
            self._advance = self._cm.__enter__()
            self._advance(state.global_step)

        def on_step_end(self, args, state, control, **kw):
            self._advance(1)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs and state.global_step % (args.logging_steps * 10) == 0:
                log.info("train sft [%s] step %d/%d loss %.4f", label, state.global_step, total, float(logs["loss"]))

        def on_train_end(self, args, state, control, **kw):
            self._cm.__exit__(None, None, None)

    return _Bar()
