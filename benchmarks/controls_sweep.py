"""The full test-time-controls sweep over every quickstart student, timed.

Runs ``tracewise study controls`` (budget_force and truncate budget sweeps, a wait_extend
min_thinking sweep, think_free, and each student as trained) and ``tracewise study few-shot`` on a
finished quickstart run, then prints the wall time of each study and the measured table. Every eval
is a stage in the store: a second run is a no-op, so pass a fresh ``--out`` to time it again.

Usage: nice -n 10 python benchmarks/controls_sweep.py [--run-dir runs/quickstart] [--out runs/bench-controls]
       [--limit 100] [--n 4] [--threads 2] [--students r1,gpt-oss] [--skip-few-shot]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

log = logging.getLogger("bench.controls")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", default="runs/quickstart", help="finished quickstart run (its students are swept)")
    ap.add_argument("--out", default="runs/bench-controls", help="where eval run dirs and sections go")
    ap.add_argument("--limit", type=int, default=100, help="held-out problems (quickstart: 100)")
    ap.add_argument("--n", type=int, default=4, help="samples per problem")
    ap.add_argument("--max-tokens", type=int, default=256, help="max new tokens (uncontrolled, think_free, wait)")
    ap.add_argument("--budgets", default="16,32,64,128,256", help="budget_force / truncate budgets")
    ap.add_argument("--min-thinking", default="32,64,128", help="wait_extend min_thinking values")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--students", default="", help="comma-separated student labels (default: every finished one)")
    ap.add_argument("--skip-few-shot", action="store_true", help="only the controls study")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    import os

    os.environ.setdefault("TRACEWISE_NO_PROGRESS", "1")
    import torch

    torch.set_num_threads(args.threads)
    from tracewise.backends.base import SamplingParams
    from tracewise.studies import common, controls, few_shot

    sampling = SamplingParams(n=args.n, temperature=0.6, max_tokens=args.max_tokens, seed=0)
    problems = common.quickstart_test_problems()
    problems.limit = args.limit
    out = Path(args.out)
    students = [s.strip() for s in args.students.split(",") if s.strip()]
    timings = {}

    t0 = time.time()
    ccfg = controls.ControlsStudyConfig(
        out=str(out / "controls"), run_dir=args.run_dir, problems=problems, sampling=sampling,
        budgets=[int(b) for b in args.budgets.split(",")], min_thinking=[int(m) for m in args.min_thinking.split(",")],
        threads=args.threads, students=students)
    section = controls.run(ccfg)
    timings["study controls"] = round(time.time() - t0, 1)
    if not args.skip_few_shot:
        t0 = time.time()
        fcfg = few_shot.FewShotStudyConfig(out=str(out / "few_shot"), run_dir=args.run_dir, problems=problems,
                                           sampling=sampling, threads=args.threads, students=students)
        few_section = few_shot.run(fcfg)
        timings["study few-shot"] = round(time.time() - t0, 1)
    rows = json.loads((out / "controls" / "summary.json").read_text())["rows"]
    print(f"\n{len(rows)} result sets, {args.limit} problems x {args.n} samples, threads={args.threads}")
    print(f"{'experiment':42s} {'pass@1':>7s} {'tokens':>7s} {'thinking':>8s} {'trunc':>6s}")
    for r in rows:
        print(f"{r['experiment']:42s} {r['pass@1']:7.3f} {r['mean_tokens']:7.1f} {r['mean_thinking_tokens']:8.1f} "
              f"{r.get('truncated_rate', 0):6.2f}")
    print("\n" + json.loads(section.read_text())["markdown"])
    if not args.skip_few_shot:
        print("\n" + json.loads(few_section.read_text())["markdown"])
    print(f"\nwall time (s): {timings}")
    (out / "timings.json").write_text(json.dumps(timings, indent=1))


if __name__ == "__main__":
    main()
