"""Where tracewise's verify and math-verify alone disagree, and why.

Two reports:

``table``     the hand-labelled regression table (tests/fixtures/verify_regression.jsonl: gold, model
              output, expected verdict, category): agreement of tracewise with the expected verdicts,
              and of math-verify alone (its default extraction and comparison) on the same rows.
``datasets``  every GSM8K-test, MATH-500 and AIME-2024 gold against itself in a ``\\boxed{}`` sentence,
              every MATH-500 gold against the next problem's gold (false positives), the MATH-500
              and AIME reference solutions, and the real R1-distill traces in
              ../shared/data/traces, each judged by both; every disagreement is put in a bucket that
              names the guard or the documented decision of tracewise.verify that explains it, and
              ``unexplained`` collects the rest.

    PYTHONPATH=. python3 scripts/verify_agreement.py table
    PYTHONPATH=. python3 scripts/verify_agreement.py datasets [--limit N] [--out report.json]

tracewise's verdicts come from the deadline-bounded pool (tracewise.verify.pool); math-verify runs
with its own signal-based timeouts (5 s parse, 5 s compare: this script's main thread).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
TABLE = REPO / "tests" / "fixtures" / "verify_regression.jsonl"


def load_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def math_verify_alone(gold: str, text: str) -> tuple[bool, str | None]:
    """math-verify as its README uses it: parse the gold in ``$...$`` and the whole output, verify."""
    import math_verify

    try:
        g = math_verify.parse(f"${gold}$")
        p = math_verify.parse(text)
        extracted = p[-1] if p and isinstance(p[-1], str) else (str(p[0]) if p else None)
        return bool(math_verify.verify(g, p)), extracted
    except Exception:  # a timeout or a parser error: math-verify itself would count it wrong
        return False, None


def tracewise_verdicts(pairs: list[tuple[str, str]], timeout_s: float = 5.0) -> list:
    from tracewise.verify.pool import verify_many

    return verify_many([(text, gold, False) for gold, text in pairs], timeout_s=timeout_s)


# ---------------------------------------------------------------- table


def table(path: Path = TABLE, verbose: bool = True) -> dict:
    rows = load_jsonl(path)
    tw = tracewise_verdicts([(r["gold"], r["pred"]) for r in rows])
    per_cat: dict[str, Counter] = defaultdict(Counter)
    misses = []
    for r, v in zip(rows, tw):
        mv_ok, _ = math_verify_alone(r["gold"], r["pred"])
        c = per_cat[r["category"]]
        c["n"] += 1
        c["tracewise"] += v.correct == r["expected"]
        c["math_verify"] += mv_ok == r["expected"]
        if v.correct != r["expected"] or mv_ok != r["expected"]:
            misses.append((r["category"], r["gold"], r["pred"][-70:], r["expected"], v.correct, mv_ok))
    total = Counter()
    for c in per_cat.values():
        total.update(c)
    if verbose:
        print(f"{'category':18s} {'n':>4s} {'tracewise':>10s} {'math-verify':>12s}")
        for cat, c in per_cat.items():
            print(f"{cat:18s} {c['n']:4d} {c['tracewise']:10d} {c['math_verify']:12d}")
        print(f"{'total':18s} {total['n']:4d} {total['tracewise']:10d} {total['math_verify']:12d}")
        print(f"\nagreement with the expected verdicts: tracewise {total['tracewise']}/{total['n']}, "
              f"math-verify alone {total['math_verify']}/{total['n']}")
        if misses:
            print("\nrows where either differs from the expected verdict (category, gold, output tail, expected, "
                  "tracewise, math-verify):")
            for m in misses:
                print("  ", m)
    return {"n": total["n"], "tracewise": total["tracewise"], "math_verify": total["math_verify"],
            "per_category": {k: dict(v) for k, v in per_cat.items()}}


# ---------------------------------------------------------------- datasets


def dataset_pairs(limit: int | None = None) -> list[tuple[str, str, str, str]]:
    """(source, id, gold, text) pairs."""
    out = []
    for name in ("gsm8k_test", "math500_test", "aime2024"):
        for r in load_jsonl(DATA / f"{name}.jsonl")[:limit]:
            out.append((f"{name}:gold", r["id"], r["answer"], f"The final answer is $\\boxed{{{r['answer']}}}$."))
    math500 = load_jsonl(DATA / "math500_test.jsonl")[:limit]
    for r, other in zip(math500, math500[1:] + math500[:1]):  # another problem's gold: almost always wrong
        out.append(("math500_test:other_gold", r["id"], r["answer"], f"The final answer is $\\boxed{{{other['answer']}}}$."))
    for name in ("math500_test", "aime2024"):
        for r in load_jsonl(DATA / f"{name}.jsonl")[:limit]:
            out.append((f"{name}:solution", r["id"], r["answer"], r["solution"]))
    for r in load_jsonl(DATA / "traces" / "r1distill_math_thought_anchors.jsonl")[:limit]:
        out.append(("r1_traces", r["id"], r["answer"], r["completion"]))
    return out


def _norm(s: str | None) -> str:
    return re.sub(r"\s+", "", s or "")


def _answer_region(text: str) -> str:
    """The text tracewise extracted its answer from: the answer span after the thinking, if it has one."""
    from tracewise import verify as V
    from tracewise.core.text import parse_completion

    try:
        span = parse_completion(text).answer
    except Exception:
        return text
    return span if V._extract(span)[0] else text


def bucket(gold: str, text: str, tw, mv_ok: bool, mv_pred: str | None) -> str:
    """The guard or documented decision of tracewise.verify that explains a disagreement."""
    from tracewise import verify as V

    if tw.timed_out:
        return "guard: comparison missed the pool deadline"
    if tw.reason == "unparseable_gold":
        return f"guard: gold refused ({V.refusal_reason(gold.strip()) or 'math-verify cannot parse it'})"
    if V._SYMBOLIC_GOLD.fullmatch(gold.strip()):
        return "decision: name / [list] gold compared as text"
    if tw.correct and _norm(tw.pred) == _norm(gold):
        return "decision: identical text is the same answer"
    if tw.reason == "no_answer":
        return "decision: no box, Answer: line or 'answer is' phrase -> no answer (math-verify takes the last expression)"
    n_boxes = len(V._boxes(_answer_region(text)))
    if n_boxes >= 2:
        if "," in (tw.pred or "") and tw.correct:
            return "decision: multi-part gold, the run of boxes compared as a set"
        return "decision: several boxes, the last box (or run of boxes) is the answer"
    if tw.pred is not None and V.refusal_reason(tw.pred):
        return f"guard: prediction refused ({V.refusal_reason(tw.pred)})"
    if _norm(mv_pred) != _norm(tw.pred):
        return "extraction: math-verify read a different span"
    return "unexplained"


def datasets(limit: int | None = None, out: Path | None = None, verbose: bool = True) -> dict:
    pairs = dataset_pairs(limit)
    t0 = time.monotonic()
    tw = tracewise_verdicts([(g, t) for _, _, g, t in pairs])
    t_tw = time.monotonic() - t0
    per_source: dict[str, Counter] = defaultdict(Counter)
    buckets: dict[str, list] = defaultdict(list)
    t0 = time.monotonic()
    for (source, pid, gold, text), v in zip(pairs, tw):
        mv_ok, mv_pred = math_verify_alone(gold, text)
        c = per_source[source]
        c["n"] += 1
        c["tracewise_correct"] += v.correct
        c["math_verify_correct"] += mv_ok
        if v.correct != mv_ok:
            c["disagree"] += 1
            b = bucket(gold, text, v, mv_ok, mv_pred)
            buckets[b].append({"source": source, "id": pid, "gold": gold, "tracewise": [v.correct, v.reason, v.pred],
                               "math_verify": [mv_ok, mv_pred]})
    t_mv = time.monotonic() - t0
    report = {"pairs": len(pairs), "per_source": {k: dict(v) for k, v in per_source.items()},
              "buckets": {k: len(v) for k, v in sorted(buckets.items())},
              "examples": {k: v[:5] for k, v in sorted(buckets.items())},
              "seconds": {"tracewise_pool": round(t_tw, 1), "math_verify": round(t_mv, 1)}}
    if verbose:
        print(f"{'source':24s} {'n':>5s} {'tw correct':>10s} {'mv correct':>10s} {'disagree':>8s}")
        for s, c in per_source.items():
            print(f"{s:24s} {c['n']:5d} {c['tracewise_correct']:10d} {c['math_verify_correct']:10d} {c['disagree']:8d}")
        print("\ndisagreements by reason:")
        for k, v in sorted(buckets.items(), key=lambda kv: -len(kv[1])):
            print(f"  {len(v):5d}  {k}")
            for ex in v[:3]:
                print(f"         {ex['source']} {ex['id']}: gold {ex['gold'][:50]!r} tw {ex['tracewise']} "
                      f"mv {[ex['math_verify'][0], (ex['math_verify'][1] or '')[:50]]}")
    if out:
        out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=["table", "datasets"])
    ap.add_argument("--limit", type=int, default=None, help="datasets: at most N rows per file")
    ap.add_argument("--out", type=Path, default=None, help="datasets: write the report as JSON")
    args = ap.parse_args(argv)
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    if args.what == "table":
        table()
    else:
        report = datasets(args.limit, args.out)
        return 1 if report["buckets"].get("unexplained") else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
