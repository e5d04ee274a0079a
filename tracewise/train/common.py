"""What `train sft` and `train rl` share around the HF Trainer: the progress bar and log lines, resuming
from the newest complete checkpoint without training past ``max_steps``, and claiming a run dir for every
rank of a multi-process launch."""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

from tracewise.core.logs import progress_bar
from tracewise.core.records import kill_point
from tracewise.core.store import last_complete_checkpoint

log = logging.getLogger(__name__)


@contextmanager
def quiet_library_warnings():
    """Hide the library warnings a user can do nothing about, and only those, while a trainer runs.

    PEFT 0.21 and TRL 1.16 read ``model.is_gradient_checkpointing`` (wrapping, training, merging; TRL's GRPO
    on every generation step), which transformers 5.24 deprecated: one FutureWarning per step between the
    progress bars of every ``train sft`` (LoRA) and ``train rl`` run."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (``avx512_bf16`` or AMX flags in /proc/cpuinfo).

    Without them torch's bf16 matmul falls back to a slow path: measured on this project's AVX2-only
    2-core machines, a [920 x 128] @ [128 x 512] product took 95.5 ms in bf16 against 1.6 ms in float32
    (57x), so bf16 autocast makes CPU training far slower instead of 1.2-1.4x faster."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:  # not Linux: cannot tell, assume the user knows their CPU
            return True
    flags = set(cpuinfo.split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def resolve_bf16(requested: bool | None, cuda: bool, where: str) -> bool:
    """A stage's ``bf16`` setting as used: None = on with CUDA; warns when it means slow bf16 on a CPU."""
    bf16 = cuda if requested is None else requested
    warn_if_slow_cpu_bf16(bf16, cuda, where)
    return bf16


def warn_if_slow_cpu_bf16(bf16: bool, cuda: bool, where: str) -> None:
    """A warning (not an error: results are right, only slow) when bf16 is asked for on a CPU without bf16 units."""
    if bf16 and not cuda and not cpu_has_native_bf16():
        log.warning("%s: bf16 on a CPU without avx512_bf16/AMX: bf16 matmuls run ~50x slower than float32 here; "
                    "set bf16=false", where)


def trainer_progress_callback(description: str, total: int, describe_log: Callable[[dict], str | None]):
    """An HF ``TrainerCallback``: a rich bar over optimizer steps, and every 10th logging step one log
    line ``"<description> step N/T <describe_log(logs)>"`` (nothing when it returns None).

    One class for `train sft` and `train rl`: they differ only in which logged metrics matter.
    """
    from transformers import TrainerCallback

    stage_log = logging.getLogger("tracewise.train")

    class _Bar(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            self._cm = progress_bar(description, total)
            self._advance = self._cm.__enter__()
            self._advance(state.global_step)  # a resumed run starts part-way

        def on_step_end(self, args, state, control, **kw):
            self._advance(1)
            kill_point("steps")  # test hook (TRACEWISE_TEST_KILL_AFTER=steps:N); no-op when unset

        def on_save(self, args, state, control, **kw):
            kill_point("saves")  # test hook: after the N-th complete checkpoint

        def on_log(self, args, state, control, logs=None, **kw):
            if not logs or state.global_step % (args.logging_steps * 10):
                return
            text = describe_log(logs)
            if text is not None:
                stage_log.info("%s step %d/%d %s", description, state.global_step, total, text)

        def on_train_end(self, args, state, control, **kw):
            self._cm.__exit__(None, None, None)

    return _Bar()


def prepare_trainer(trainer, stage: str, label: str, total: int, describe_log: Callable[[dict], str | None] | None,
                    ckpt_root: Path, callbacks: list | None = None) -> str | None:
    """Swap the Trainer's raw-dict printer for a progress bar (none when ``describe_log`` is None, e.g. on
    non-main ranks), add ``callbacks``, and return the checkpoint to resume from (None: a fresh start).

    Resuming skips (and deletes) a checkpoint torn by a kill mid-save (``last_complete_checkpoint``).
    """
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # it prints raw dicts; metrics go to logging + log_history.json
    if describe_log is not None:
        trainer.add_callback(trainer_progress_callback(f"train {stage} [{label}]", total, describe_log))
    for cb in callbacks or []:
        trainer.add_callback(cb)
    resume = last_complete_checkpoint(ckpt_root)
    if resume:
        logging.getLogger(f"tracewise.train.{stage}").info("train %s: resuming from %s", stage, resume)
    return resume


def from_main_rank(value: Any) -> Any:
    """Rank 0's ``value`` on every rank of this launch (``value`` itself in a single process).

    A collective: every rank must call it, so it is also a barrier."""
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value], from_process=0)[0]


def claim_run_dir(run_dir: Path, main: bool, write: Callable[[], None],
                  share: Callable[[Any], Any] | None = None) -> None:
    """Rank 0 runs ``write`` (``save_config``, which takes the run dir's lock, and its first files); every
    rank then learns whether that worked, and all stop with the same error if it did not.

    Only rank 0 holds the lock, but every rank writes into the run dir (checkpoint shards under
    DeepSpeed) and prunes torn checkpoints from it (``prepare_trainer``). So no rank goes on to that
    before rank 0 holds the lock: a run dir in use by another process stops the whole launch with
    "run dir in use by pid N", instead of ranks 1..N-1 training into (and deleting checkpoints of) a
    run the other process owns. ``share`` is called on every rank, failure or not (a collective that
    one rank skips hangs the others); by default ``from_main_rank``.
    """
    failure: BaseException | None = None
    if main:
        try:
            write()
        except Exception as e:  # OSError too: the other ranks must hear of any failure
            failure = e
    error = (share or from_main_rank)(None if failure is None else f"{type(failure).__name__}: {failure}")
    if failure is not None:
        raise failure
    if error is not None:
        raise ValueError(f"{run_dir}: rank 0 could not claim the run dir, so this rank stops too ({error})")


def series(history: list[dict], key: str) -> list[float]:
    """The numeric values of ``key`` in a Trainer ``log_history``, in order."""
    return [float(h[key]) for h in history if isinstance(h.get(key), (int, float))]


def checkpoint_step(path: str | None) -> int:
    """The optimizer step a ``checkpoint-N`` directory was saved at (0 for None or another name)."""
    try:
        return int(Path(path).name.rsplit("-", 1)[1]) if path else 0
    except (IndexError, ValueError):
        return 0


def restore_final_checkpoint(trainer, checkpoint: str | None, max_steps: int) -> bool:
    """Load ``checkpoint`` into ``trainer`` instead of training when it already holds ``max_steps`` steps.

    A run killed after its last checkpoint but before DONE must not train on: transformers, resuming at
    ``global_step == max_steps`` in mid-epoch, runs one more step before it checks ``max_steps`` (measured:
    a 10-step run came back with 11). Under DeepSpeed the weights only load inside ``train()``, so that
    case still resumes through it.
    """
    if checkpoint_step(checkpoint) < max_steps or trainer.is_deepspeed_enabled:
        return False
    from transformers.trainer_callback import TrainerState

    trainer._load_from_checkpoint(checkpoint)
    trainer.state = TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json"))
    log.info("%s holds all %d steps: restored, nothing to train", checkpoint, max_steps)
    return True
