"""Throughput of batched, pooled, cached verification vs one math-verify call per process.

The baseline is what a shell loop or a naive job-per-comparison setup does: start a Python
process, import math-verify, parse and compare one (pred, gold), exit. The measured path is
``tracewise.verify.pool.VerifyPool.verify_many`` over the same kind of workload an eval or RL step
produces: every MATH-500 gold, several samples per problem, answers that repeat (most samples of a
problem agree), extraction from full completions included, pool startup included.

    python benchmarks/verify.py                      # defaults: 200 problems x 8 samples, 2 workers
    python benchmarks/verify.py --problems 500 --samples 8 --workers 4 --baseline 20 --out verify.json

Prints one JSON object: per-comparison seconds of the baseline, items/s of the pool (cold cache,
startup included; then warm cache), of in-process ``verify`` (no time bound), and the ratios.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "math500_test.jsonl"
FALLBACK_GOLDS = ["2", "\\frac{1}{2}", "\\sqrt{3}", "(1, 2)", "x^2+1", "\\pi", "3.5", "10", "-4", "\\frac{\\sqrt{2}}{2}"]

ONE_SHOT = (
    "import sys, math_verify\n"
    "pred, gold = sys.argv[1], sys.argv[2]\n"
    "print(bool(math_verify.verify(math_verify.parse('$' + gold + '$'), math_verify.parse(pred))))\n"
)


def workload(n_problems: int, samples: int, seed: int = 0) -> list[tuple[str, str, bool]]:
    """(completion, gold, truncated) triples: per problem, ~60% of samples give the gold, the rest
    one of two wrong answers or no answer (as an RL group or a pass@8 eval looks)."""
    rng = random.Random(seed)
    if DATA.exists():
        golds = [json.loads(line)["answer"] for line in DATA.read_text().splitlines() if line.strip()]
    else:
        golds = FALLBACK_GOLDS * 50
    golds = golds[:n_problems]
    items = []
    for i, gold in enumerate(golds):
        wrong = [f"{i + 7}", f"\\frac{{{i + 1}}}{{{i + 3}}}"]
        for _ in range(samples):
            r = rng.random()
            pred = gold if r < 0.6 else wrong[0] if r < 0.8 else wrong[1] if r < 0.95 else None
            body = "<think>Let me work it out step by step. " + "Some reasoning. " * 20 + "</think>"
            items.append((body + (f"The answer is \\boxed{{{pred}}}." if pred else "I am not sure."), gold, False))
    return items


def baseline(items: list[tuple[str, str, bool]], n: int) -> float:
    """Median seconds per comparison with a fresh Python process per comparison."""
    from tracewise.verify.answer import extract_answer

    times = []
    for text, gold, _ in items[:n]:
        pred = extract_answer(text) or ""
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", ONE_SHOT, f"${pred}$", gold], check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", type=int, default=200)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--baseline", type=int, default=10, help="comparisons timed with one process each")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from tracewise.verify.answer import verify
    from tracewise.verify.pool import VerifyPool

    items = workload(args.problems, args.samples)
    per_process_s = baseline(items, args.baseline)

    t0 = time.perf_counter()
    with VerifyPool(workers=args.workers) as pool:
        cold = pool.verify_many(items)
        cold_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        warm = pool.verify_many(items)
        warm_s = time.perf_counter() - t1
        stats = pool.stats
    assert [r.correct for r in cold] == [r.correct for r in warm]

    t2 = time.perf_counter()
    inproc = [verify(t, g, truncated=tr) for t, g, tr in items]
    inproc_s = time.perf_counter() - t2
    assert [r.correct for r in inproc] == [r.correct for r in cold], "pool and in-process verify disagree"

    n = len(items)
    result = {
        "items": n,
        "distinct_comparisons": stats.tasks,
        "workers": args.workers,
        "baseline_s_per_comparison": round(per_process_s, 4),
        "baseline_items_per_s": round(1 / per_process_s, 2),
        "pool_cold_items_per_s": round(n / cold_s, 1),
        "pool_warm_items_per_s": round(n / warm_s, 1),
        "in_process_items_per_s": round(n / inproc_s, 1),
        "speedup_cold_vs_baseline": round(per_process_s * n / cold_s, 1),
        "speedup_warm_vs_baseline": round(per_process_s * n / warm_s, 1),
        "accuracy": round(sum(r.correct for r in cold) / n, 4),
        "max_comparison_s": round(stats.max_elapsed_s, 3),
        "timeouts": stats.timeouts,
    }
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
