"""The curation table: what the filter did, per teacher (accuracies, judge/math-verify agreement, token
costs, known-wrong traces let through), as ``table.json`` numbers and ``table.md`` markdown."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from statistics import mean

from tracewise.core.records import Problem, Trace, Verdict
from tracewise.core.store import atomic_write_text
from tracewise.curate import decontam
from tracewise.curate import strategies as curation_strategies
from tracewise.verify.llm_judge import excerpt


@dataclass
class CurationInputs:
    """Validated inputs: the problems, each selected teacher's sample-0 traces, and their verdicts."""

    problems: dict[str, Problem]
    teachers: list[str]
    traces: dict[str, dict[str, Trace]]  # teacher -> problem id -> sample-0 trace
    verdicts: dict[str, Verdict]  # Verdict.key -> verdict


def _rate(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def _mean(xs: list[int]) -> float | None:
    return mean(xs) if xs else None


SHOW_DISAGREEMENTS = 10  # rows of table.md; disagreements.jsonl holds them all


def judge_disagreements(inp: CurationInputs) -> list[dict]:
    """Every compared trace where the judge and math-verify disagree, with the judge's raw output.

    Sorted by teacher then problem. ``raw_excerpt`` is the judge's reply outside its thinking, short
    enough for a table row; ``raw`` is all of it.
    """
    rows = []
    for t in inp.teachers:
        for pid, tr in sorted(inp.traces[t].items()):
            mv, jd = inp.verdicts.get(f"math_verify|{tr.key}"), inp.verdicts.get(f"judge|{tr.key}")
            if mv is None or jd is None or mv.correct == jd.correct:
                continue
            rows.append({"problem_id": pid, "teacher": t, "sample_idx": tr.sample_idx, "pred": mv.pred,
                         "gold": mv.gold, "math_verify": mv.correct, "math_verify_reason": mv.reason,
                         "judge": jd.correct, "judge_reason": jd.reason, "raw_excerpt": excerpt(jd.raw),
                         "raw": jd.raw})
    return rows


def curation_table(inp: CurationInputs, kept: list[str], filter_name: str, mix_counts: dict | None) -> dict:
    """The numbers behind ``table.md``; ``None`` where an input does not carry what a number needs."""
    kept_set, vs = set(kept), inp.verdicts
    per_teacher = {}
    for t in inp.teachers:
        trs = list(inp.traces[t].values())
        kept_trs = [tr for tr in trs if tr.problem_id in kept_set]
        verdict_of = {m: [vs.get(f"{m}|{tr.key}") for tr in trs] for m in ("math_verify", "judge")}
        have = {m: all(v is not None for v in verdict_of[m]) for m in verdict_of}
        known = all(isinstance(tr.meta.get("teacher_error"), bool) for tr in trs)
        accuracy = {m: _rate([v.correct for v in verdict_of[m]]) if have[m] else None for m in verdict_of}
        per_teacher[t] = {
            "n_traces": len(trs),
            "math_verify_accuracy": accuracy["math_verify"],
            "judge_accuracy": accuracy["judge"],
            "judge_mv_agreement": _rate([a.correct == b.correct for a, b in zip(*verdict_of.values())])
            if all(have.values()) else None,
            "mean_tokens_all": _mean([tr.n_tokens for tr in trs]),
            "mean_tokens_kept": _mean([tr.n_tokens for tr in kept_trs]),
            "mean_thinking_tokens_all": _mean([tr.n_thinking_tokens for tr in trs]),
            "mean_thinking_tokens_kept": _mean([tr.n_thinking_tokens for tr in kept_trs]),
            # teacher_error is the world's record of an uncorrected mistake: exact, unlike any verdict.
            "known_wrong": sum(tr.meta["teacher_error"] for tr in trs) if known else None,
            "wrong_let_through": sum(tr.meta["teacher_error"] for tr in kept_trs) if known else None,
        }
    table = {
        "filter": filter_name, "teachers": inp.teachers, "problems_in": len(inp.problems), "kept": len(kept),
        "kept_pct": 100.0 * len(kept) / len(inp.problems) if inp.problems else 0.0,
        "per_teacher": per_teacher, "teacher_agreement": None, "token_ratio": None, "mix": mix_counts,
        "disagreements": None,
    }
    if any(r["judge_mv_agreement"] is not None for r in per_teacher.values()):
        rows = judge_disagreements(inp)
        compared = sum(r["n_traces"] for r in per_teacher.values() if r["judge_mv_agreement"] is not None)
        table["disagreements"] = {"n": len(rows), "of": compared, "file": "disagreements.jsonl",
                                  "shown": [{k: v for k, v in r.items() if k != "raw"}
                                            for r in rows[:SHOW_DISAGREEMENTS]]}
    if len(inp.teachers) >= 2:
        common = [pid for pid in sorted(inp.problems)
                  if all(f"math_verify|{t}|{pid}|0" in vs for t in inp.teachers)]
        if common:
            mv = [[vs[f"math_verify|{t}|{pid}|0"].correct for t in inp.teachers] for pid in common]
            table["teacher_agreement"] = {
                "n_problems": len(common),
                "math_verify_agree": _rate([len(set(row)) == 1 for row in mv]),
                "all_correct": _rate([all(row) for row in mv]),  # "both correct" for two teachers
            }
        by_len = sorted((per_teacher[t]["mean_tokens_kept"], t) for t in inp.teachers
                        if per_teacher[t]["mean_tokens_kept"])
        if len(by_len) >= 2:
            (short, s_name), (long_, l_name) = by_len[0], by_len[-1]
            table["token_ratio"] = {"longest": l_name, "shortest": s_name, "ratio": long_ / short}
    return table


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f}"


def render_table(table: dict) -> str:
    """Markdown for ``table.md`` (the report includes it verbatim under its own heading)."""
    lines = [
        f"Filter **{table['filter']}** over teachers {', '.join(table['teachers'])}: "
        f"{table['kept']} of {table['problems_in']} problems kept ({table['kept_pct']:.1f}%).",
        "",
        "| teacher | math-verify acc | judge acc | judge = math-verify | mean tokens (all) | mean tokens (kept) "
        "| mean thinking (all) | mean thinking (kept) | known-wrong let through |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for t, r in table["per_teacher"].items():
        wrong = "n/a" if r["known_wrong"] is None else f"{r['wrong_let_through']} of {r['known_wrong']}"
        lines.append(
            f"| {t} | {_pct(r['math_verify_accuracy'])} | {_pct(r['judge_accuracy'])} "
            f"| {_pct(r['judge_mv_agreement'])} "
            f"| {_num(r['mean_tokens_all'])} | {_num(r['mean_tokens_kept'])} | {_num(r['mean_thinking_tokens_all'])} "
            f"| {_num(r['mean_thinking_tokens_kept'])} | {wrong} |"
        )
    lines.append("")
    if table["teacher_agreement"]:
        a = table["teacher_agreement"]
        lines.append(f"- Teachers' math-verify verdicts agree on {_pct(a['math_verify_agree'])} of "
                     f"{a['n_problems']} problems; all correct on {_pct(a['all_correct'])}.")
    if table["token_ratio"]:
        r = table["token_ratio"]
        lines.append(f"- On the kept set, {r['longest']} traces are {r['ratio']:.2f}x as long as {r['shortest']}'s.")
    if table["mix"]:
        m = table["mix"]
        picks = ", ".join(f"{n} from {t}" for t, n in sorted(m["counts"].items()))
        lines.append(f"- Mix `{m['name']}`: {picks}.")
    lines.append("- Known-wrong = traces whose teacher made an uncorrected mistake (embedded world only).")
    lines.extend(decontam.render(table.get("pool_cleaning") or {}))
    if table.get("strategy"):
        lines.extend(curation_strategies.render(table["strategy"]))
    if table.get("disagreements"):
        lines.extend(_render_disagreements(table["disagreements"]))
    return "\n".join(lines) + "\n"


def _cell(x, limit: int = 60) -> str:
    text = " ".join(str(x).split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _render_disagreements(d: dict) -> list[str]:
    lines = ["", f"Judge and math-verify disagree on {d['n']} of {d['of']} traces"
             + (f"; the first {len(d['shown'])} (all in `{d['file']}`):" if d["n"] else ".")]
    if d["shown"]:
        lines += ["", "| problem | teacher | math-verify pred | gold | math-verify | judge | judge output (excerpt) |",
                  "|---|---|---|---|---|---|---|"]
        for r in d["shown"]:
            lines.append(f"| {_cell(r['problem_id'])} | {_cell(r['teacher'])} | {_cell(r['pred'])} | {_cell(r['gold'])} "
                         f"| {r['math_verify_reason']} | {r['judge_reason']} | {_cell(r['raw_excerpt'], 160)} |")
    return lines


def _write_disagreements(path: Path, rows: list[dict]) -> None:
    """One JSON object per line, for reading by eye or with jq; written atomically."""
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in rows))
