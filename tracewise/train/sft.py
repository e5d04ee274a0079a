"""Stage ``train sft``: supervised fine-tuning on curated traces with TRL's ``SFTTrainer``.

Loss on the completion only, AdamW, cosine schedule with warmup (the paper's recipe).

The trainer (:mod:`tracewise.train.hf_trainer`) adds ``fast_loss`` (the plain next-token loss, without
TRL's per-step metrics) and ``batch_order``: ``random`` by default, so each batch of a mixed dataset mixes
its sources; ``length_buckets`` (less padding) puts similar lengths, i.e. often one source, in a batch.

Resume: checkpoints hold optimizer, scheduler and RNG state; a rerun continues from the last one
with the same data order (HF Trainer skips the batches already seen).

Real students (any HF causal LM): LoRA (``lora.r > 0``) or QLoRA (``qlora``: 4-bit NF4 base via
bitsandbytes, CUDA only) through PEFT, bf16, gradient checkpointing, TRL packing (best-fit
decreasing, padding-free). Multi-GPU and DeepSpeed come from ``accelerate launch --config_file
configs/accelerate/<ddp|zero2|zero3>.yaml -m tracewise.cli train sft ...``: every rank runs this
stage, rank 0 alone writes the run dir's files and holds its lock, and no rank starts before rank 0
has it (``claim_run_dir``). A LoRA run keeps the adapter in ``adapter/`` and, by
default, the merged model in ``model/``, so later stages load ``model/`` whatever the recipe was.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from tracewise.core.config import doc
from tracewise.core.fingerprint import model_input
from tracewise.core.model_files import with_resolved_model
from tracewise.core.seeds import Replicated, run_seeds as run_each, seeds_field
from tracewise.core.store import is_done, mark_done, save_config, stage_dir
from tracewise.core.threads import THREADS_HELP, use_threads
from tracewise.train.common import (claim_run_dir, prepare_trainer, quiet_library_warnings, restore_final_checkpoint,
                                    resolve_bf16, series)
from tracewise.train.hf_trainer import BATCH_ORDERS, check_report_to, trainer_class

log = logging.getLogger(__name__)


MODEL_DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class LoRASpec:
    """LoRA adapter settings (PEFT); ``r = 0`` means a full fine-tune."""

    r: int = doc("LoRA rank; 0 = full fine-tune (every weight trains).", 0)
    alpha: int = doc("LoRA alpha (the update is scaled by alpha / r).", 32)
    dropout: float = doc("Dropout on the LoRA branch input.", 0.05)
    target_modules: list[str] = doc("Module names to adapt, or ['all-linear'] (every linear but the LM head).",
                                    factory=lambda: ["all-linear"])
    merge: bool = doc("Save the base with the adapter merged into model/ (adapter/ keeps the adapter); "
                      "false = model/ holds the adapter only.", True)


@dataclass
class SFTRunConfig(Replicated):
    """Fine-tune a causal LM on a curated dataset (``tracewise train sft``)."""

    out: str = doc("Root directory; the stage writes into <out>/sft-<hash>/ (final model in model/).", "runs", hash=False)
    experiment: str = doc("Label of this student in reports (e.g. 'r1', 'gpt-oss', 'mix').", "")
    model: str = doc("Base model: local path or HF id (the embedded student is a local path).", "")
    dataset: str = doc("HF dataset saved by `curate` (columns prompt/completion, conversational).", "")
    max_steps: int = doc("Optimizer steps (the paper: 3000).", 600)
    batch_size: int = doc("Per-device batch size.", 32)
    grad_accum: int = doc("Gradient accumulation steps (global batch = batch_size × grad_accum × devices).", 1)
    global_batch: int = doc("If > 0: derive grad_accum = global_batch / (batch_size × devices) at launch, so one "
                            "recipe keeps its global batch on any number of GPUs.", 0)
    learning_rate: float = doc("Peak learning rate (AdamW).", 3e-3)
    warmup_ratio: float = doc("Fraction of steps for linear warmup before the cosine decay.", 0.05)
    weight_decay: float = doc("AdamW weight decay.", 0.0)
    max_length: int = doc("Truncate examples to this many tokens.", 512)
    seed: int = doc("Seed for data order and dropout.", 0)
    seeds: int | list[int] = seeds_field("`train sft` trains one run per seed, one after another, each the ordinary "
                                         "run of seed=s (own run dir, cached and resumed alone): the seed varies the "
                                         "data order and dropout, nothing else.")
    logging_steps: int = doc("Log the loss every N steps.", 10, hash=False)
    save_steps: int = doc("Save a resumable checkpoint every N steps.", 100, hash=False)
    batch_order: str = doc("Order of training examples: 'random' (uniform shuffle; use it for mixed datasets), "
                           "'length_buckets' (similar lengths per batch, batches shuffled: less padding, but in a mix "
                           "of a verbose and a concise teacher every batch is one teacher's, and the quickstart mix "
                           "student measured pass@1 0.17 vs 0.90 random), 'group_by_length' (legacy transformers "
                           "sampler, streaks of one teacher: 0.13; only to reproduce old runs).", "random")
    micro_batches: int = doc("Split each batch into this many micro-batches, sorted by length, accumulated into one "
                             "optimizer step: the same random examples and gradient per step as one batch (the loss "
                             "is normalised by the step's token count), with each micro-batch padded only to its "
                             "own longest example. batch_size must be a multiple of it; batch_order random only.",
                             1, hash="nondefault")
    length_grouping: bool | None = doc("Removed: use batch_order (setting it is an error that says which value).",
                                       None, hash=False)
    fast_loss: bool = doc("Plain next-token loss without TRL's per-step entropy/accuracy metrics.", True)
    bf16: bool | None = doc("bf16 mixed precision; None = on when CUDA is available.", None)
    gradient_checkpointing: bool = doc("Trade compute for memory (large models).", False)
    torch_compile: bool = doc("torch.compile the model (transformers' torch_compile); kernels fuse differently, so "
                              "it is part of the run hash. On the quickstart's tiny student on 2 CPU cores the "
                              "compile time ate the gain (benchmarks/quickstart.py).", False, hash="nondefault")
    packing: bool = doc("Pack samples into max_length rows (TRL best-fit decreasing, padding-free; use "
                        "attn_implementation=flash_attention_2 on GPU so packed samples never attend to each other).",
                        False)
    lora: LoRASpec = doc("LoRA adapter (lora.r > 0) instead of a full fine-tune.", factory=LoRASpec)
    qlora: bool = doc("QLoRA: load the base in 4-bit NF4 (bitsandbytes, CUDA only) and train a LoRA on it.", False)
    model_dtype: str = doc("dtype the base is loaded in: 'auto' (bf16 for (Q)LoRA when bf16 is on, else float32 "
                           "master weights), 'float32', 'bfloat16', 'float16'.", "auto")
    attn_implementation: str = doc("Attention kernel ('sdpa', 'flash_attention_2', 'eager'); '' = transformers' "
                                   "default.", "")
    trust_remote_code: bool = doc("Allow model code from the hub (some base models need it).", False)
    chat_template: str = doc("Chat template for a tokenizer without one (base models): a .jinja file or a "
                             "tokenizer path/id to copy it from; '' = the tokenizer's own.", "")
    threads: int = doc(THREADS_HELP, 0, hash=False)
    report_to: list[str] = doc("Experiment trackers to log to (transformers' report_to), e.g. wandb, tensorboard, "
                               "trackio; the tracker's package must be installed; several: report_to=wandb,tensorboard. "
                               "Empty (the default) = none.", factory=list, hash=False)

    def validate(self) -> None:
        if self.length_grouping is not None:
            raise ValueError(
                "train.sft.length_grouping was replaced by batch_order: use batch_order=random (the default) or "
                "batch_order=length_buckets (similar-length batches in shuffled order); length_grouping=true was "
                "batch_order=group_by_length, whose streaks of one source skewed mixed-dataset students")
        if self.micro_batches < 1 or self.batch_size % self.micro_batches:
            raise ValueError(f"train.sft.micro_batches must be >= 1 and divide batch_size={self.batch_size}, "
                             f"got {self.micro_batches}")
        if self.micro_batches > 1 and self.batch_order != "random":
            raise ValueError("train.sft.micro_batches > 1 needs batch_order=random (it sorts each random batch)")
        if self.batch_order not in BATCH_ORDERS:
            raise ValueError(f"train.sft.batch_order: expected one of {list(BATCH_ORDERS)}, got {self.batch_order!r}")
        check_report_to(self.report_to, "train.sft")
        if not self.model:
            raise ValueError("train.sft.model is required (a local model path or HF id)")
        if not self.dataset or not Path(self.dataset).exists():
            raise ValueError(f"train.sft.dataset: {self.dataset!r} not found (a dataset dir written by `curate`)")
        for name in ("max_steps", "batch_size", "grad_accum", "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.sft.{name} must be >= 1, got {getattr(self, name)}")
        if self.learning_rate <= 0 or not 0 <= self.warmup_ratio < 1:
            raise ValueError("train.sft.learning_rate must be > 0 and warmup_ratio in [0, 1)")
        if self.global_batch < 0:
            raise ValueError(f"train.sft.global_batch must be >= 0 (0 = use grad_accum), got {self.global_batch}")
        if self.lora.r < 0 or self.lora.alpha <= 0 or not 0 <= self.lora.dropout < 1:
            raise ValueError("train.sft.lora: r must be >= 0 (0 = full fine-tune), alpha > 0, dropout in [0, 1)")
        if self.lora.r and not self.lora.target_modules:
            raise ValueError("train.sft.lora.target_modules: give module names or ['all-linear']")
        if self.qlora and self.lora.r == 0:
            raise ValueError("train.sft.qlora trains a LoRA on a 4-bit base: set lora.r > 0 (e.g. lora.r=16)")
        if self.model_dtype not in MODEL_DTYPES:
            raise ValueError(f"train.sft.model_dtype: expected one of {list(MODEL_DTYPES)}, got {self.model_dtype!r}")
        self.validate_seeds("train.sft")


def model_dir(run_dir: str | Path) -> Path:
    """Where a finished SFT run keeps its final model (loadable with ``from_pretrained``)."""
    return Path(run_dir) / "model"


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


def adapter_dir(run_dir: str | Path) -> Path:
    """Where a LoRA run keeps its adapter (``PeftModel.from_pretrained(base, adapter_dir)``)."""
    return Path(run_dir) / "adapter"


def world_size() -> int:
    """Processes in this launch (``accelerate launch`` / torchrun set WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def grad_accum_for(cfg: SFTRunConfig, n_procs: int) -> int:
    """Gradient accumulation steps: ``cfg.grad_accum``, or what keeps ``cfg.global_batch`` on ``n_procs``."""
    if not cfg.global_batch:
        return cfg.grad_accum
    per_step = cfg.batch_size * n_procs
    if cfg.global_batch % per_step:
        raise ValueError(
            f"train.sft.global_batch={cfg.global_batch} is not a multiple of batch_size × processes = "
            f"{cfg.batch_size} × {n_procs}; change batch_size or the number of processes"
        )
    return cfg.global_batch // per_step


def _check_hardware(cfg: SFTRunConfig, cuda: bool) -> None:
    if cfg.qlora:
        if not cuda:
            raise ValueError("train.sft.qlora needs a CUDA GPU (bitsandbytes 4-bit kernels); this machine has none. "
                             "Use lora.r > 0 without qlora for LoRA on CPU")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise ValueError("train.sft.qlora needs bitsandbytes: pip install 'tracewise[qlora]'") from None


def _load_dtype(cfg: SFTRunConfig, bf16: bool):
    import torch

    if cfg.model_dtype != "auto":
        return getattr(torch, cfg.model_dtype)
    # A full fine-tune keeps float32 master weights (mixed precision autocasts the matmuls); a frozen
    # (Q)LoRA base never gets an optimizer step, so bf16 halves its memory at no cost.
    return torch.bfloat16 if cfg.lora.r and bf16 else torch.float32


def _load_model(cfg: SFTRunConfig, dtype):
    from transformers import AutoModelForCausalLM

    kwargs: dict = {"dtype": dtype, "trust_remote_code": cfg.trust_remote_code}
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    if cfg.qlora:
        import torch
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_quant_storage=torch.bfloat16)
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}
    try:
        model = AutoModelForCausalLM.from_pretrained(cfg.model, **kwargs)
    except Exception as e:
        raise ValueError(f"{cfg.model}: not a causal LM ({type(e).__name__}: {e})") from None
    if cfg.qlora:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    return model


def _peft_config(cfg: SFTRunConfig):
    if not cfg.lora.r:
        return None
    from peft import LoraConfig

    targets = cfg.lora.target_modules
    return LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout, task_type="CAUSAL_LM",
                      target_modules="all-linear" if targets == ["all-linear"] else list(targets))


def training_args(cfg: SFTRunConfig, output_dir: str, grad_accum: int, bf16: bool, cuda: bool):
    """The TRL ``SFTConfig`` for this run (field names as in TRL 1.16 / transformers 5)."""
    from trl import SFTConfig

    return SFTConfig(
        output_dir=output_dir,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size // cfg.micro_batches,
        gradient_accumulation_steps=grad_accum * cfg.micro_batches,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=cfg.warmup_ratio,  # transformers 5: a float < 1 is a ratio of max_steps
        weight_decay=cfg.weight_decay,
        optim="adamw_torch",
        max_length=cfg.max_length,
        completion_only_loss=True,
        packing=cfg.packing,
        bf16=bf16,
        use_cpu=not cuda,
        # The transformers 5 name: passing gradient_checkpointing (deprecated) warns on every run.
        activation_checkpointing=cfg.gradient_checkpointing,
        torch_compile=cfg.torch_compile,
        # length_buckets: our sampler replaces transformers' random one (TracewiseSFTTrainer._get_train_sampler).
        train_sampling_strategy="group_by_length" if cfg.batch_order == "group_by_length" else "random",
        logging_steps=cfg.logging_steps,
        save_steps=cfg.save_steps,
        save_total_limit=2,
        report_to=list(cfg.report_to),
        seed=cfg.seed,
        data_seed=cfg.seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
        # Every parameter that requires grad gets one; DDP's search for unused ones is a wasted pass.
        ddp_find_unused_parameters=False,
        chat_template_path=cfg.chat_template or None,
    )


def build_trainer(cfg: SFTRunConfig, output_dir: str | Path, grad_accum: int | None = None):
    """The trainer ``run`` trains (model loaded, dataset tokenized), checkpoints under ``output_dir``.

    Nothing is trained or written; tests read its batches (``get_train_dataloader()``) and labels.
    """
    import torch
    from transformers import AutoTokenizer

    cuda = torch.cuda.is_available()
    dataset = _load_dataset(cfg.dataset)
    try:
        tokenizer = AutoTokenizer.from_pretrained(cfg.model, trust_remote_code=cfg.trust_remote_code)
    except Exception as e:
        raise ValueError(f"{cfg.model}: cannot load its tokenizer ({type(e).__name__}: {e})") from None
    if not tokenizer.chat_template and not cfg.chat_template:
        raise ValueError(f"{cfg.model}: its tokenizer has no chat template (a base model?); set "
                         "train.sft.chat_template, e.g. chat_template=configs/paper/chat_template.jinja")
    bf16 = resolve_bf16(cfg.bf16, cuda, "train.sft")
    args = training_args(cfg, str(output_dir), grad_accum or cfg.grad_accum, bf16, cuda)
    # After the SFTConfig: under DeepSpeed ZeRO-3 it registers the config that makes from_pretrained
    # load each weight straight into its shard instead of whole on every rank.
    model = _load_model(cfg, _load_dtype(cfg, bf16))
    return trainer_class(cfg.fast_loss, cfg.batch_order, cfg.micro_batches)(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=_peft_config(cfg))


def run_dir_of(cfg: SFTRunConfig) -> Path:
    """The run dir ``run(cfg)`` trains into: keyed by the config, the base model's and the dataset's bytes."""
    return stage_dir(cfg.out, "sft", cfg, inputs=[*model_input(cfg.model), cfg.dataset, *model_input(cfg.chat_template)])


def run(cfg: SFTRunConfig) -> Path:
    """Train; resumable from the last checkpoint; returns the run dir (final model in ``model/``)."""
    with quiet_library_warnings():
        return _run(cfg)


def _run(cfg: SFTRunConfig) -> Path:
    import torch

    cfg.validate()
    cfg.check_one_seed("train sft")
    _check_hardware(cfg, torch.cuda.is_available())
    n_procs, main = world_size(), is_main_process()
    grad_accum = grad_accum_for(cfg, n_procs)
    run_dir = run_dir_of(cfg)
    if is_done(run_dir):
        log.info("train sft: %s is complete, nothing to do", run_dir)
        return run_dir
    cfg = dataclasses.replace(cfg, threads=use_threads(cfg.threads))  # the number it ran with, in config.yaml
    cfg = with_resolved_model(cfg)  # a GGUF file/package → its cached HF dir (the run dir is keyed by the spec's bytes)
    ckpt_root = run_dir / "checkpoints"
    trainer = build_trainer(cfg, ckpt_root, grad_accum)

    def write() -> None:  # rank 0 only: the lock, then the first files
        save_config(run_dir, cfg)
        (run_dir / "experiment.txt").write_text(cfg.experiment or Path(cfg.dataset).name)

    claim_run_dir(run_dir, main, write)  # every rank waits for rank 0's lock before touching the run dir
    resume = prepare_trainer(trainer, "sft", cfg.experiment or "sft", cfg.max_steps, _describe_loss if main else None,
                             ckpt_root)
    log.info("train sft [%s]: rank %d of %d: batch %d × grad_accum %d × %d process(es) = global batch %d, "
             "batch order %s%s%s", cfg.experiment, trainer.args.process_index, n_procs, cfg.batch_size, grad_accum,
             n_procs, n_procs * cfg.batch_size * grad_accum, cfg.batch_order,
             f" in {cfg.micro_batches} length-sorted micro-batches" if cfg.micro_batches > 1 else "",
             f", LoRA r={cfg.lora.r}" + (" on a 4-bit base" if cfg.qlora else "") if cfg.lora.r else "")
    if not restore_final_checkpoint(trainer, resume, cfg.max_steps):
        trainer.train(resume_from_checkpoint=resume)
    _save(cfg, trainer, trainer.processing_class, run_dir, main)
    if main:
        history = trainer.state.log_history
        (run_dir / "log_history.json").write_text(json.dumps(history, indent=1))
        losses = series(history, "loss")
        mark_done(run_dir, {"experiment": cfg.experiment, "steps": trainer.state.global_step,
                            "processes": n_procs, "global_batch": n_procs * cfg.batch_size * grad_accum,
                            "lora_r": cfg.lora.r, "qlora": cfg.qlora, "batch_order": cfg.batch_order,
                            "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None})
        log.info("train sft [%s]: %d steps, loss %.3f → %.3f", cfg.experiment, trainer.state.global_step,
                 losses[0] if losses else float("nan"), losses[-1] if losses else float("nan"))
    trainer.accelerator.wait_for_everyone()  # no rank returns before the run dir is complete
    return run_dir


def run_seeds(cfg: SFTRunConfig) -> list[Path]:
    """One ``run`` per seed of ``cfg.seeds`` (``tracewise train sft seeds=3``); returns their run dirs."""
    return run_each(run, cfg)


def _save(cfg: SFTRunConfig, trainer, tokenizer, run_dir: Path, main: bool) -> None:
    """Final weights: ``model/`` always loads with ``from_pretrained``; LoRA runs also keep ``adapter/``.

    ``trainer.save_model`` runs on every rank (under ZeRO-3 it gathers shards) and writes on rank 0.
    The merge reloads the base unquantised and applies the saved adapter, which is right under any
    sharding and for QLoRA (merging into 4-bit weights would round the update away).
    """
    if not cfg.lora.r:
        trainer.save_model(str(model_dir(run_dir)))
        if main:
            tokenizer.save_pretrained(str(model_dir(run_dir)))
            log.info("train sft: final model saved to %s", model_dir(run_dir))
        return
    target = adapter_dir(run_dir) if cfg.lora.merge else model_dir(run_dir)
    trainer.save_model(str(target))
    if not main:
        return
    tokenizer.save_pretrained(str(target))
    if cfg.lora.merge:
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        dtype = torch.bfloat16 if cfg.qlora else _load_dtype(cfg, bool(trainer.args.bf16))
        base = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=dtype, trust_remote_code=cfg.trust_remote_code)
        merged = PeftModel.from_pretrained(base, str(target)).merge_and_unload()
        merged.save_pretrained(str(model_dir(run_dir)))
        tokenizer.save_pretrained(str(model_dir(run_dir)))
    log.info("train sft: final model saved to %s", model_dir(run_dir))


def _describe_loss(logs: dict) -> str | None:
    """The progress line's metric: the latest loss."""
    return f"loss {float(logs['loss']):.4f}" if "loss" in logs else None
