"""Stage ``train rl``: reason shorter with RL — TRL ``GRPOTrainer`` (or ``RLOOTrainer``) on length-penalised rewards.

The recipe follows Arora & Zanette (2025), "Training Language Models to Reason Efficiently": start
from an SFT checkpoint, sample ``num_generations`` = 8 completions per prompt at temperature 0.6,
reward ``correct * (1 - alpha * sigmoid(z(length)))`` (``arora_zanette`` in
:mod:`tracewise.train.rewards`; any reward spec list works), KL coefficient ``beta`` = 1e-3. The
paper's advantage is leave-one-out (``algorithm: rloo``); ``grpo`` (group-normalised) is the default.

Batches: ``per_device_train_batch_size`` counts *completions*, so a step sees
``per_device_train_batch_size / num_generations`` prompts. It must be a multiple of
``num_generations`` so a prompt's group is never split (group-normalised rewards need the whole
group in one reward call).

Resume: checkpoints hold optimizer, scheduler and RNG state; a rerun continues from the last one.
``max_steps`` is not part of the run-dir hash (the schedule is constant after ``warmup_steps``, so
the first N steps do not depend on it): a rerun with a larger ``max_steps`` extends a finished run
from its final checkpoint instead of starting over. A *smaller* ``max_steps`` than the run dir already
holds is an error (the shorter policy is not kept): train it into another ``out``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tracewise.backends.vllm import VLLMConfig
from tracewise.core.config import doc
from tracewise.core.fingerprint import HUB_ID, model_input
from tracewise.core.store import is_done, last_complete_checkpoint, mark_done, save_config, stage_dir
from tracewise.core.seeds import Replicated, run_seeds as run_each, seeds_field
from tracewise.core.threads import THREADS_HELP, use_threads
from tracewise.data.sources import ProblemsConfig, load_problems
from tracewise.train.common import (checkpoint_step, prepare_trainer, quiet_library_warnings, resolve_bf16,
                                    restore_final_checkpoint, series)
from tracewise.train.hf_trainer import check_report_to

log = logging.getLogger(__name__)

ALGORITHMS = ("grpo", "rloo")
GRPO_LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo")
SCALE_REWARDS = ("group", "batch", "none")
# What `train rl` passes to TRL when a key is left unset, so no run depends on TRL's defaults (they changed
# across versions: GRPO's loss_type bnpo -> dapo, scale_rewards True -> "group", beta 0.04 -> 0.0):
# * loss_type "dapo": token losses averaged over the batch's tokens. "grpo" (per-sequence mean) gives a
#   short completion's tokens larger gradients than a long one's, a length bias of its own that would
#   confound a length-penalty study.
# * scale_rewards "group": advantages divided by the group's reward std (GRPO as published).
# * RLOO: leave-one-out baseline, advantages not normalised (TRL's normalize_advantages=False).
# beta means different things per algorithm in TRL: GRPO adds beta * per-token KL to the LOSS; RLOO
# subtracts beta * the sequence KL from the REWARD (before the leave-one-out baseline), as Arora & Zanette.
GRPO_DEFAULTS = {"loss_type": "dapo", "scale_rewards": "group"}
RLOO_DEFAULTS = {"normalize_advantages": False}
# A model that is not a local path must be an HF hub id (core.fingerprint.HUB_ID, e.g. "gpt2",
# "Qwen/Qwen2.5-0.5B"); anything else (several slashes, ./, /, ~), or a name whose first part is a local
# directory ("runs/sft-x"), is a local path. fullmatch: `$` with .match would let "gpt2\n" through.


def _default_rewards() -> list[dict]:
    return [{"name": "arora_zanette", "alpha": 0.1}]


@dataclass
class RLRunConfig(Replicated):
    """RL from an SFT checkpoint with length-penalised rewards (``tracewise train rl``)."""

    out: str = doc("Root directory; the stage writes into <out>/rl-<hash>/ (final model in model/).", "runs", hash=False)
    experiment: str = doc("Label of this student in reports (e.g. 'r1-rl-a0.1').", "")
    model: str = doc("Policy to start from: an SFT run's model/ dir (or the run dir itself), or an HF id.", "")
    problems: ProblemsConfig = doc("Prompts and gold answers (default: the embedded world's train split).",
                                   factory=ProblemsConfig)
    algorithm: str = doc("'grpo' (TRL GRPOTrainer, group-normalised advantage) or 'rloo' (TRL RLOOTrainer, "
                         "leave-one-out baseline as in the paper).", "grpo")
    rewards: list[dict] = doc("Reward specs for tracewise.train.rewards.build_rewards: {name, weight, label, "
                              "...params}; names: correctness, arora_zanette, kimi, cosine, dapo_overlong.",
                              factory=_default_rewards)
    num_generations: int = doc("Completions sampled per prompt (the group size G; the paper: 8).", 8)
    per_device_train_batch_size: int = doc("Completions per device per step; a multiple of num_generations.", 32)
    gradient_accumulation_steps: int = doc("Steps per optimizer update (also steps per generation round).", 1)
    max_steps: int = doc("Optimizer steps; a larger value on rerun extends a finished run (a smaller one than the run "
                         "dir holds is an error).", 100, hash=False)
    learning_rate: float = doc("Learning rate (AdamW, constant after warmup); raise it for tiny students.", 1e-6)
    warmup_steps: int = doc("Linear warmup steps before the constant learning rate.", 0)
    beta: float = doc("KL coefficient against the starting policy (the paper: 1e-3; 0 = no reference model). grpo: "
                      "beta * KL is added to the loss; rloo: beta * KL is subtracted from the reward.", 1e-3)
    temperature: float = doc("Sampling temperature (the paper: 0.6).", 0.6)
    top_p: float = doc("Nucleus sampling mass.", 1.0)
    max_completion_length: int = doc("Longest completion sampled, in tokens (longer ones are truncated).", 512)
    epsilon: float = doc("PPO-style clipping range of the importance ratio.", 0.2)
    num_iterations: int = doc("Optimisation passes per generated batch (μ).", 1)
    loss_type: str | None = doc(f"GRPO loss aggregation {list(GRPO_LOSS_TYPES)} (grpo only); None = "
                                f"{GRPO_DEFAULTS['loss_type']!r}, passed to TRL explicitly.", None)
    scale_rewards: str | None = doc(f"GRPO advantage scaling {list(SCALE_REWARDS)} (grpo only); None = "
                                    f"{GRPO_DEFAULTS['scale_rewards']!r}, passed to TRL explicitly.", None)
    mask_truncated_completions: bool = doc("Leave truncated completions out of the loss (DAPO).", False)
    seed: int = doc("Seed for data order and sampling.", 0)
    seeds: int | list[int] = seeds_field("`train rl` trains one run per seed, one after another, each the ordinary "
                                         "run of seed=s (own run dir, cached and resumed alone): the seed varies the "
                                         "prompt order and the sampled completions, nothing else.")
    logging_steps: int = doc("Log rewards and lengths every N steps.", 1, hash=False)
    save_steps: int = doc("Save a resumable checkpoint every N steps.", 10, hash=False)
    save_total_limit: int = doc("Keep only the newest N checkpoints.", 2, hash=False)
    bf16: bool | None = doc("bf16 mixed precision; None = on when CUDA is available.", None)
    use_vllm: bool | None = doc("Generate with vLLM (colocated); None = on when CUDA is available and vllm is "
                                "importable.", None)
    vllm: VLLMConfig = doc("vLLM (colocated, one engine per training process): gpu_memory_utilization (default 0.3: "
                           "training needs the rest), tensor_parallel_size, max_model_len (None = longest prompt + "
                           "max_completion_length, never the model config's context).",
                           factory=lambda: VLLMConfig(gpu_memory_utilization=0.3), hash=False)
    gradient_checkpointing: bool = doc("Trade compute for memory (large models).", False)
    threads: int = doc(THREADS_HELP, 0, hash=False)
    trust_remote_code: bool = doc("Run Python code shipped with the model or tokenizer (HF auto_map); off unless you pass it.", False, hash=False)
    report_to: list[str] = doc("Experiment trackers to log to (transformers' report_to), e.g. wandb, tensorboard, "
                               "trackio; the tracker's package must be installed; several: report_to=wandb,tensorboard. "
                               "Empty (the default) = none.", factory=list, hash=False)

    def validate(self) -> None:
        from tracewise.train.rewards import build_rewards, check_group_size

        if not self.model:
            raise ValueError("train.rl.model is required (an SFT run's model/ dir, or an HF id)")
        local = Path(self.model)
        if not local.exists() and (not HUB_ID.fullmatch(self.model) or Path(local.parts[0]).is_dir()):
            raise ValueError(f"train.rl.model: {self.model!r} not found (expected an SFT run's model/ dir)")
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"train.rl.algorithm: expected one of {list(ALGORITHMS)}, got {self.algorithm!r}")
        for name in ("per_device_train_batch_size", "gradient_accumulation_steps", "max_steps",
                     "max_completion_length", "num_iterations", "logging_steps", "save_steps", "save_total_limit"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.rl.{name} must be >= 1, got {getattr(self, name)}")
        try:
            funcs, _ = build_rewards(self.rewards)
            check_group_size(funcs, self.num_generations)
        except ValueError as e:
            raise ValueError(f"train.rl.rewards: {e}") from None
        if self.num_generations < 2:
            raise ValueError(f"train.rl.num_generations must be >= 2 (advantages compare a prompt's samples), "
                             f"got {self.num_generations}")
        if self.per_device_train_batch_size % self.num_generations:
            raise ValueError(f"train.rl.per_device_train_batch_size ({self.per_device_train_batch_size}) must be a "
                             f"multiple of num_generations ({self.num_generations}) so no prompt's group is split")
        checks = [("learning_rate", self.learning_rate > 0), ("beta", self.beta >= 0),
                  ("temperature", self.temperature > 0), ("top_p", 0 < self.top_p <= 1),
                  ("epsilon", self.epsilon > 0), ("warmup_steps", self.warmup_steps >= 0)]
        for name, ok in checks:
            value = getattr(self, name)
            if not ok or not math.isfinite(value):
                raise ValueError(f"train.rl.{name}: bad value {value!r}")
        if self.loss_type is not None:
            if self.algorithm != "grpo":
                raise ValueError("train.rl.loss_type applies to algorithm 'grpo' only; leave it unset for 'rloo'")
            if self.loss_type not in GRPO_LOSS_TYPES:
                raise ValueError(f"train.rl.loss_type: expected one of {list(GRPO_LOSS_TYPES)}, got {self.loss_type!r}")
        if self.scale_rewards is not None:
            if self.algorithm != "grpo":
                raise ValueError("train.rl.scale_rewards applies to algorithm 'grpo' only; leave it unset for 'rloo'")
            if self.scale_rewards not in SCALE_REWARDS:
                raise ValueError(f"train.rl.scale_rewards: expected one of {list(SCALE_REWARDS)}, "
                                 f"got {self.scale_rewards!r}")
        self.vllm.validate()
        unused = {k: v for k, v in vars(self.vllm).items()
                  if k in ("data_parallel_size", "dtype", "enforce_eager", "chunk_size") and v != getattr(VLLMConfig(), k)}
        if unused:
            raise ValueError(f"train.rl.vllm: {sorted(unused)} cannot be set for colocated vLLM (TRL builds one engine "
                             "per training process; more processes = accelerate launch --num_processes)")
        if self.use_vllm and importlib.util.find_spec("vllm") is None:
            raise ValueError("train.rl.use_vllm=true but vllm is not installed")
        self.problems.validate()
        check_report_to(self.report_to, "train.rl")
        self.validate_seeds("train.rl")


def model_dir(run_dir: str | Path) -> Path:
    """Where a finished RL run keeps its final policy (loadable with ``from_pretrained``)."""
    return Path(run_dir) / "model"


def resolve_model(model: str) -> str:
    """An SFT/RL run dir (``<run>/model/config.json``) resolves to its ``model/``; anything else is kept."""
    p = Path(model)
    if p.is_dir() and not (p / "config.json").exists() and (p / "model" / "config.json").exists():
        return str(p / "model")
    return model


def load_prompts(cfg: ProblemsConfig):
    """A ``datasets.Dataset`` with conversational ``prompt``, gold ``answer``, ``problem_id`` and ``level``.

    Every gold is checked with ``validate_dataset_golds`` so no row is silently scored 0.
    """
    from datasets import Dataset

    from tracewise.train.rewards import validate_dataset_golds

    problems = load_problems(cfg)
    if not problems:
        raise ValueError(f"problems: no problems in {cfg.source!r} (split {cfg.split!r})")
    ds = Dataset.from_dict({
        "prompt": [[{"role": "user", "content": p.question}] for p in problems],
        "answer": [p.answer for p in problems],
        "problem_id": [p.id for p in problems],
        "level": [int(p.level) for p in problems],
    })
    try:
        validate_dataset_golds(ds, "answer")
    except ValueError as e:
        raise ValueError(f"problems ({cfg.source}): {e}") from None
    return ds


def eos_token_ids(tokenizer, model) -> list[int]:
    """The ids that end a completion, as TRL computes them: the tokenizer's EOS plus the model's."""
    ids = model.generation_config.eos_token_id
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids = [tokenizer.eos_token_id, *ids]
    return ids


def build_reward_funcs(specs: list[dict], eos_ids: list[int], num_generations: int):
    """``build_rewards`` with ``eos_token_id`` given to every reward that takes it (unless its spec sets one)."""
    from tracewise.train.rewards import REWARDS, build_rewards, check_group_size

    filled = []
    for spec in specs:
        spec = dict(spec)
        cls = REWARDS.get(spec.get("name"))
        if cls is not None and "eos_token_id" in inspect.signature(cls.__init__).parameters and eos_ids:
            spec.setdefault("eos_token_id", eos_ids)
        filled.append(spec)
    funcs, weights = build_rewards(filled)
    check_group_size(funcs, num_generations)
    return funcs, weights


class SpecialTokenText:
    """A reward that scores completions decoded from their ids *with* special tokens kept.

    TRL decodes completions with ``skip_special_tokens=True``. The embedded student's ``<think>`` and
    ``</think>`` are special tokens, so the reward would see ``"ok 7-1=6.Answer: 6"``: the answer is no
    longer at a line start and verify() finds none (measured: every correct completion scored 0).
    Harmony channel markers (gpt-oss) are special tokens too, and verify() reads them. As in the HF
    eval backend, only the stop token (and padding) is dropped; truncation is still read from the ids.
    """

    def __init__(self, reward: Any, tokenizer: Any, eos_ids: list[int]):
        self.reward = reward
        self.tokenizer = tokenizer
        self.eos_ids = frozenset(eos_ids)
        self.pad_id = tokenizer.pad_token_id
        self.__name__ = getattr(reward, "__name__", type(reward).__name__)

    @property
    def requires_group(self) -> bool:
        return getattr(self.reward, "requires_group", False)

    def texts(self, completion_ids: list[list[int]]) -> list[str]:
        """Decoded as the HF backend does for eval: the stop token dropped, other specials kept."""
        out = []
        for ids in completion_ids:
            ids = [int(t) for t in ids]
            if ids and ids[-1] in self.eos_ids:
                ids = ids[:-1]
            ids = [t for t in ids if t != self.pad_id]
            out.append(self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False))
        return out

    def __call__(self, prompts, completions, completion_ids, **columns):
        return self.reward(prompts, self.texts(completion_ids), completion_ids, **columns)


def _use_vllm(cfg: RLRunConfig, cuda: bool) -> bool:
    if cfg.use_vllm is None:
        return cuda and importlib.util.find_spec("vllm") is not None
    if cfg.use_vllm and not cuda:
        raise ValueError("train.rl.use_vllm=true needs a CUDA GPU")
    return cfg.use_vllm


def trainer_args(cfg: RLRunConfig, output_dir: str, weights: list[float], max_model_len: int | None = None):
    """The TRL ``GRPOConfig``/``RLOOConfig`` for this run (field names as in TRL 1.16). Every setting the
    paper's recipe depends on is passed explicitly (see GRPO_DEFAULTS / RLOO_DEFAULTS).
    ``max_model_len``: vLLM's context when ``cfg.vllm.max_model_len`` is unset (from the data)."""
    import torch
    from trl import GRPOConfig, RLOOConfig

    cuda = torch.cuda.is_available()
    bf16 = resolve_bf16(cfg.bf16, cuda, "train.rl")
    vllm = _use_vllm(cfg, cuda)
    kwargs: dict[str, Any] = dict(
        output_dir=output_dir,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=cfg.warmup_steps,
        optim="adamw_torch",
        num_generations=cfg.num_generations,
        max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        beta=cfg.beta,
        epsilon=cfg.epsilon,
        num_iterations=cfg.num_iterations,
        reward_weights=weights,
        mask_truncated_completions=cfg.mask_truncated_completions,
        bf16=bf16,
        fp16=False,
        use_cpu=not cuda,
        activation_checkpointing=cfg.gradient_checkpointing,  # transformers 5 name; gradient_checkpointing warns
        use_vllm=vllm,
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        report_to=list(cfg.report_to),
        seed=cfg.seed,
        data_seed=cfg.seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    if vllm:
        kwargs.update(vllm_mode="colocate", vllm_gpu_memory_utilization=cfg.vllm.gpu_memory_utilization,
                      vllm_tensor_parallel_size=cfg.vllm.tensor_parallel_size,
                      vllm_max_model_length=cfg.vllm.max_model_len or max_model_len)
    if cfg.algorithm == "grpo":
        kwargs.update(loss_type=cfg.loss_type or GRPO_DEFAULTS["loss_type"],
                      scale_rewards=cfg.scale_rewards or GRPO_DEFAULTS["scale_rewards"])
        return GRPOConfig(**kwargs)
    return RLOOConfig(**kwargs, **RLOO_DEFAULTS)


def vllm_context(cfg: RLRunConfig, tokenizer, dataset) -> int:
    """vLLM's context for RL generation: the longest templated prompt + max_completion_length, so a
    model whose config declares a huge context (Mistral-Nemo: 1,024,000) never sizes vLLM by it."""
    texts = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in dataset["prompt"]]
    longest = max(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
    return longest + cfg.max_completion_length


def load_policy(model_path: str, trust_remote_code: bool):
    """Tokenizer and policy, the policy in float32 master weights whatever dtype the checkpoint was saved
    in (transformers 5 loads the saved dtype by default: a bf16 SFT checkpoint would train in pure bf16,
    where lr-1e-6 updates round away); bf16 mixed precision is TRL's autocast on top."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(model_path, trust_remote_code=trust_remote_code,
                                                     dtype=torch.float32)
    except Exception as e:
        raise ValueError(f"{model_path}: not a causal LM with a tokenizer ({type(e).__name__}: {e})") from None
    return tokenizer, model


def _done_steps(run_dir: Path) -> int:
    try:
        return int(json.loads((run_dir / "DONE").read_text()).get("steps", 0))
    except (OSError, ValueError, TypeError, AttributeError):
        return 0


def _refuse_shorter(run_dir: Path, max_steps: int) -> None:
    """A run dir that already holds more than ``max_steps`` steps cannot give a ``max_steps``-step policy.

    ``max_steps`` stays out of the run hash so a larger value extends a finished run and an interrupted
    run resumes; the price is this case, which is refused instead of handing back the longer-trained
    policy (or, from a later checkpoint, training zero steps) as if it were the shorter one.
    """
    trained = max(_done_steps(run_dir) if is_done(run_dir) else 0,
                  checkpoint_step(last_complete_checkpoint(run_dir / "checkpoints")) if run_dir.is_dir() else 0)
    if trained > max_steps:
        raise ValueError(
            f"train rl: {run_dir} already holds {trained} training steps, more than max_steps={max_steps}; it cannot "
            f"give a {max_steps}-step policy. Train the shorter run into another out= directory (or delete this run dir)")


def _default_experiment(model_path: str) -> str:
    """'<sft experiment>-rl' when starting from an SFT run's model/, else '<model name>-rl'."""
    sft_label = Path(model_path).parent / "experiment.txt"
    if Path(model_path).is_dir() and sft_label.is_file():
        return f"{sft_label.read_text().strip()}-rl"
    return f"{Path(model_path).name or 'model'}-rl"


def run(cfg: RLRunConfig, callbacks: list | None = None) -> Path:
    """Train; resumable from the last checkpoint; returns the run dir (final policy in ``model/``).

    ``callbacks``: extra ``transformers.TrainerCallback`` objects (e.g. timers in benchmarks).
    """
    with quiet_library_warnings():
        return _run(cfg, callbacks)


def _run(cfg: RLRunConfig, callbacks: list | None) -> Path:
    import torch

    cfg.validate()
    cfg.check_one_seed("train rl")
    from tracewise.core.model_files import resolve_model_file

    model_path = resolve_model_file(resolve_model(cfg.model))  # a GGUF file/package → its cached HF dir
    inputs = [*model_input(cfg.model), *cfg.problems.input_files()]
    run_dir = stage_dir(cfg.out, "rl", cfg, inputs=inputs)
    _refuse_shorter(run_dir, cfg.max_steps)
    if is_done(run_dir):
        done = _done_steps(run_dir)
        if done == cfg.max_steps:
            log.info("train rl: %s is complete (%d steps), nothing to do", run_dir, done)
            return run_dir
        if not last_complete_checkpoint(run_dir / "checkpoints"):
            raise ValueError(f"train rl: cannot extend {run_dir} to {cfg.max_steps} steps: its checkpoints are gone "
                             "(delete the run dir to train from scratch)")
        log.info("train rl: extending %s from %d to %d steps", run_dir, done, cfg.max_steps)
        (run_dir / "DONE").unlink()
    cfg = dataclasses.replace(cfg, threads=use_threads(cfg.threads))  # the number it ran with, in config.yaml
    dataset = load_prompts(cfg.problems)  # bad golds fail here, before anything is written
    tokenizer, model = load_policy(model_path, cfg.trust_remote_code)
    tokenizer.padding_side = "left"
    eos_ids = eos_token_ids(tokenizer, model)
    funcs, weights = build_reward_funcs(cfg.rewards, eos_ids, cfg.num_generations)
    reward_funcs = [SpecialTokenText(f, tokenizer, eos_ids) for f in funcs]
    save_config(run_dir, cfg)
    (run_dir / "experiment.txt").write_text(cfg.experiment or _default_experiment(model_path))
    ckpt_root = run_dir / "checkpoints"
    context = vllm_context(cfg, tokenizer, dataset) if _use_vllm(cfg, torch.cuda.is_available()) else None
    args = trainer_args(cfg, str(ckpt_root), weights, max_model_len=context)
    from trl import GRPOTrainer, RLOOTrainer

    trainer_cls = GRPOTrainer if cfg.algorithm == "grpo" else RLOOTrainer
    trainer = trainer_cls(model=model, reward_funcs=reward_funcs, args=args, train_dataset=dataset,
                          processing_class=tokenizer)
    resume = prepare_trainer(trainer, "rl", cfg.experiment or "rl", cfg.max_steps, _describe_reward, ckpt_root,
                             callbacks)
    if not restore_final_checkpoint(trainer, resume, cfg.max_steps):
        trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(str(model_dir(run_dir)))
    tokenizer.save_pretrained(str(model_dir(run_dir)))
    history = trainer.state.log_history
    (run_dir / "log_history.json").write_text(json.dumps(history, indent=1))
    rewards, lengths = series(history, "reward"), series(history, "completions/mean_length")
    mark_done(run_dir, {
        "experiment": cfg.experiment, "algorithm": cfg.algorithm, "steps": trainer.state.global_step,
        "first_reward": rewards[0] if rewards else None, "last_reward": rewards[-1] if rewards else None,
        "first_mean_length": lengths[0] if lengths else None, "last_mean_length": lengths[-1] if lengths else None,
    })
    log.info("train rl [%s]: %d steps, reward %.3f → %.3f, mean length %.1f → %.1f tokens",
             cfg.experiment, trainer.state.global_step,
             rewards[0] if rewards else float("nan"), rewards[-1] if rewards else float("nan"),
             lengths[0] if lengths else float("nan"), lengths[-1] if lengths else float("nan"))
    return run_dir


def run_seeds(cfg: RLRunConfig) -> list[Path]:
    """One ``run`` per seed of ``cfg.seeds`` (``tracewise train rl seeds=3``); returns their run dirs."""
    return run_each(run, cfg)


def _describe_reward(logs: dict) -> str | None:
    """The progress line's metrics: the latest reward and completion length."""
    if not isinstance(logs.get("reward"), (int, float)):
        return None
    return (f"reward {float(logs['reward']):.4f} "
            f"mean length {float(logs.get('completions/mean_length') or float('nan')):.1f}")
