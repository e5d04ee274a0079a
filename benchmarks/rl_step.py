"""Seconds per RL step of ``train rl`` on the embedded student, and where the time goes.

    python benchmarks/rl_step.py [--model RUN/sft-x/model] [--steps 6] [--batch 32] [--generations 8]
                                 [--max-completion 256] [--algorithm grpo] [--threads 2]

Runs the real stage (``tracewise.train.rl.run``) and times, per optimizer step, the whole step
(``on_step_begin`` → ``on_step_end``), TRL's sampling (``_generate_single_turn``: HF ``generate``, or
vLLM on a GPU) and reward scoring (``_calculate_rewards``: math-verify + length penalty). The rest
is the policy/reference forward passes and the backward pass. The first step is reported apart
(warm-up). Without ``--model`` it builds the embedded student and SFTs it briefly on concise
(gpt-oss-style) world traces so completions stop at realistic lengths; pass a quickstart SFT model
(``runs/<out>/sft-<hash>/model``) to time the real thing.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

log = logging.getLogger("bench.rl")


def build_student(tmp: Path, sft_steps: int) -> str:
    """Embedded student (default size) + a short SFT on concise world traces; returns its model dir."""
    from tracewise.curate.stage import save_dataset
    from tracewise.core.tokens import student_completion
    from tracewise.core.text import parse_completion
    from tracewise.train.sft import SFTRunConfig, model_dir
    from tracewise.train.sft import run as sft_run
    from tracewise.world.init_stage import InitStudentConfig, model_path
    from tracewise.world.init_stage import run as init_run
    from tracewise.world.problems import WorldConfig, generate_problems
    from tracewise.world.teachers import TeacherConfig, write_trace

    student = init_run(InitStudentConfig(out=str(tmp), pretrain_steps=0))
    rows = []
    for p in generate_problems(WorldConfig(n_train=512, n_test=0), "train"):
        t = parse_completion(write_trace(p, TeacherConfig(style="gpt-oss"), 0)[0])
        rows.append({"prompt": [{"role": "user", "content": p.question}],
                     "completion": [{"role": "assistant", "content": student_completion(t.thinking, t.answer)}],
                     "problem_id": p.id, "teacher": "gpt-oss", "level": p.level, "answer": p.answer,
                     "n_tokens": 0, "n_thinking_tokens": 0})
    save_dataset(rows, tmp / "ds")
    run_dir = sft_run(SFTRunConfig(out=str(tmp), experiment="bench", model=str(model_path(student)),
                                   dataset=str(tmp / "ds"), max_steps=sft_steps, batch_size=16,
                                   save_steps=10_000, logging_steps=10_000))
    return str(model_dir(run_dir))


class _Timer:
    """Patches the trainer's generation and reward methods; a callback closes each step's books."""

    def __init__(self) -> None:
        self.gen = 0.0
        self.rew = 0.0
        self.steps: list[dict] = []

    def patch(self, cls) -> None:
        for name, attr in (("_generate_single_turn", "gen"), ("_calculate_rewards", "rew")):
            original = getattr(cls, name)

            def timed(trainer, *a, _orig=original, _attr=attr, **kw):
                t = time.perf_counter()
                try:
                    return _orig(trainer, *a, **kw)
                finally:
                    setattr(self, _attr, getattr(self, _attr) + time.perf_counter() - t)

            setattr(cls, name, timed)

    def callback(self):
        from transformers import TrainerCallback

        timer = self

        class _StepTimes(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                timer.gen = timer.rew = 0.0
                timer._t0 = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                timer.steps.append({"total": time.perf_counter() - timer._t0, "gen": timer.gen, "rew": timer.rew})

        return _StepTimes()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="policy to start from (default: build a small SFT student)")
    ap.add_argument("--sft-steps", type=int, default=150, help="SFT steps when building the student")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=32, help="completions per step (a multiple of --generations)")
    ap.add_argument("--generations", type=int, default=8)
    ap.add_argument("--max-completion", type=int, default=256)
    ap.add_argument("--algorithm", default="grpo", choices=["grpo", "rloo"])
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ["TRACEWISE_NO_PROGRESS"] = "1"
    torch.set_num_threads(a.threads)
    from trl import GRPOTrainer, RLOOTrainer

    from tracewise.data.sources import ProblemsConfig
    from tracewise.train.rl import RLRunConfig, run

    tmp = Path(tempfile.mkdtemp())
    model = a.model or build_student(tmp, a.sft_steps)
    timer = _Timer()
    timer.patch(GRPOTrainer if a.algorithm == "grpo" else RLOOTrainer)
    cfg = RLRunConfig(out=str(tmp), experiment="bench", model=model, problems=ProblemsConfig(), algorithm=a.algorithm,
                      num_generations=a.generations, per_device_train_batch_size=a.batch, max_steps=a.steps,
                      max_completion_length=a.max_completion, learning_rate=a.lr, save_steps=10_000, threads=a.threads)
    run_dir = run(cfg, callbacks=[timer.callback()])
    history = [h for h in json.loads((run_dir / "log_history.json").read_text()) if "reward" in h]
    first, rest = timer.steps[0], timer.steps[1:] or timer.steps[:1]
    total = sum(s["total"] for s in rest)
    gen, rew = sum(s["gen"] for s in rest), sum(s["rew"] for s in rest)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {a.threads} threads"
    print(f"{a.algorithm}: {a.batch} completions/step ({a.batch // a.generations} prompts x {a.generations}), "
          f"max {a.max_completion} new tokens, {device}, model {model}")
    print(f"mean completion length {statistics.fmean(h['completions/mean_length'] for h in history):.1f} tokens, "
          f"clipped {statistics.fmean(h['completions/clipped_ratio'] for h in history):.0%}, "
          f"reward {statistics.fmean(h['reward'] for h in history):.3f}")
    print(f"first step (warm-up): {first['total']:.2f} s (generation {first['gen']:.2f} s, rewards {first['rew']:.2f} s)")
    print(f"seconds/step over {len(rest)} steps: {total / len(rest):.2f} s "
          f"(median {statistics.median(s['total'] for s in rest):.2f} s)")
    print(f"generation {gen / total:.0%}, rewards {rew / total:.0%}, forward/backward/other {1 - (gen + rew) / total:.0%}")


if __name__ == "__main__":
    main()
