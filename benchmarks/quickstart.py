"""The quickstart's wall time per stage, and the speed-up of each lever against the slow path, in one run.

1. Runs `tracewise quickstart` (its defaults: one seed; `seeds=3` for three; or the config/overrides you give) into a fresh
   directory and prints the time of each stage from the run's timings.json.
2. Measures each training lever on that run's own base student and curated r1 (or mix) dataset, in this
   same process, one after the other: the median optimizer-step time of one student at 1 thread against
   the slow path (float32, one padded batch per step — the quickstart before these levers): bf16
   autocast, torch.compile, both, 2 or 4 length-sorted micro-batches per batch (the default now: same
   examples and gradient per step), bf16 with micro-batches. A first step's extra time (compilation) is
   printed separately, because it is paid once per student. The bf16 levers run only on a CPU with bf16
   units (avx512_bf16 or AMX); elsewhere bf16 matmuls are ~50x slower and they are skipped with a note.
   Then the scheduling lever: two students trained at once in two 1-thread processes against one after
   the other with 2 threads each.

Run it on an idle machine (2 cores are easily disturbed by another process).

Usage: python benchmarks/quickstart.py [--out DIR] [--run-dir DIR] [--lever-steps N] [-c CONFIG] [KEY=VALUE ...]
  --run-dir DIR: skip step 1 and measure the levers on an existing quickstart run.
"""

from __future__ import annotations

import argparse
import json
import os
import logging
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from tracewise.core.config import load_config
from tracewise.core.logs import setup_logging
from tracewise.studies import quickstart


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None)
    ap.add_argument("--run-dir", default=None, help="measure the levers on this finished quickstart run")
    ap.add_argument("--lever-steps", type=int, default=40)
    ap.add_argument("--lever-dataset", default="r1", choices=["r1", "mix"], help="the student the levers are timed on")
    ap.add_argument("-c", "--config", default=None)
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    setup_logging("WARNING")
    if a.run_dir:
        out = Path(a.run_dir)
    else:
        out = Path(a.out or tempfile.mkdtemp(prefix="tw-bench-"))
        cfg = load_config(quickstart.QuickstartConfig, a.config, [*a.overrides, f"out={out}"])
        t0 = time.time()
        quickstart.run(cfg)
        print_stages(out, time.time() - t0)
    print_levers(out, a.lever_steps, a.lever_dataset)


def print_stages(out: Path, wall: float) -> None:
    timings = json.loads((out / "timings.json").read_text())
    total = sum(timings.values())
    print(f"quickstart wall time: {wall:.0f} s (stages {total:.0f} s)")
    for stage, secs in timings.items():
        print(f"  {stage:>12}: {secs:7.1f} s  ({secs / total:5.1%})")


def _inputs(out: Path) -> tuple[str, str, str]:
    """(base model, r1 dataset, mix dataset) of a quickstart run."""
    from tracewise.curate import dataset_path

    [student] = sorted(out.glob("student-*/model"))
    [cur] = sorted(out.glob("curate-*"))
    return str(student), str(dataset_path(cur, "r1")), str(dataset_path(cur, "mix"))


def step_times(base: str, dataset: str, steps: int, threads: int, **levers) -> list[float]:
    """Seconds of each optimizer step of one quickstart student (train sft's own trainer)."""
    import torch
    from transformers import TrainerCallback

    from tracewise.train import sft
    from tracewise.studies.common import TrainSettings

    torch.set_num_threads(threads)
    cfg = TrainSettings(max_steps=steps, **levers).sft_config("unused", "bench", base, dataset, 0)
    cfg = replace(cfg, save_steps=10 ** 9, logging_steps=10 ** 9)
    marks: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if not marks:
                marks.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            marks.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp:
        trainer = sft.build_trainer(cfg, tmp)
        trainer.add_callback(Clock())
        trainer.train()
    return [b - a for a, b in zip(marks, marks[1:])]


def _pair_wall(base: str, datasets: list[str], steps: int, parallel: bool) -> float:
    from tracewise.studies.common import TrainSettings, train_all

    with tempfile.TemporaryDirectory() as tmp:
        cfgs = [replace(TrainSettings(max_steps=steps, micro_batches=1).sft_config(tmp, f"pair{i}", base, d, 0),
                        save_steps=10 ** 9)
                for i, d in enumerate(datasets)]
        t0 = time.time()
        train_all(cfgs, parallel=2 if parallel else 1, threads=2)
        return time.time() - t0


def print_levers(out: Path, steps: int, which: str = "r1") -> None:
    base, r1, mix = _inputs(out)
    data = r1 if which == "r1" else mix
    print(f"\nlevers on one {which} student ({steps} steps, 1 thread, median step after the first):")
    slow = {"micro_batches": 1}  # float32, one padded batch per step: the quickstart before these levers
    variants = {"float32 (slow path)": slow, "bf16 autocast": {**slow, "bf16": True},
                "torch.compile": {**slow, "torch_compile": True},
                "bf16 + compile": {**slow, "bf16": True, "torch_compile": True},
                "micro_batches 2": {"micro_batches": 2}, "micro_batches 4 (default)": {"micro_batches": 4},
                "bf16 + micro 4": {"bf16": True, "micro_batches": 4}}
    only = os.environ.get("LEVERS")  # e.g. LEVERS="float32 (slow path),bf16 + micro 2" to time a subset
    if only:
        variants = {k: v for k, v in variants.items() if k in only.split(",")}
    from tracewise.train.common import cpu_has_native_bf16

    if not cpu_has_native_bf16():  # 40 bf16 steps would take minutes each variant and prove nothing new
        skipped = [k for k, v in variants.items() if v.get("bf16")]
        variants = {k: v for k, v in variants.items() if not v.get("bf16")}
        print(f"  skipped {', '.join(skipped)}: this CPU has no avx512_bf16/AMX, where bf16 matmuls run ~50x slower "
              "than float32 (tracewise.train.common.cpu_has_native_bf16)")
    ref = None
    for name, levers in variants.items():
        t = step_times(base, data, steps, 1, **levers)
        med = statistics.median(t[1:])
        ref = ref or med
        print(f"  {name:>20}: {1000 * med:6.1f} ms/step (first step {t[0]:5.1f} s)  speed-up {ref / med:4.2f}×  "
              f"per {steps}-step student incl. first step {ref * steps / (t[0] + med * (steps - 1)):4.2f}×")
    serial = _pair_wall(base, [r1, mix], steps, parallel=False)
    par = _pair_wall(base, [r1, mix], steps, parallel=True)
    print(f"\nscheduling (r1 + mix students, {steps} steps each, the slow path's float32 batches): one after the other with 2 threads "
          f"{serial:.1f} s; side by side, 1 thread each {par:.1f} s  → {serial / par:4.2f}×")


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main()
