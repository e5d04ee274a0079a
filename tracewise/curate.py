"""Stage ``curate``: the same correct problems from every teacher, as SFT datasets.

The comparison the paper makes (verbose R1-style vs concise gpt-oss-style traces) is only fair if
both students see the *same* problems: otherwise one teacher's dataset is easier because that
teacher failed on the hard problems. So a problem is kept only when every selected teacher's
sample-0 trace is judged correct by the chosen filter, and each teacher's dataset is built over
exactly that kept set. The mix dataset takes each kept problem once, from a teacher picked by a
hash of ``(mix_seed, problem_id)``: unlike a shuffle, a problem's pick does not move when other
problems are added or inputs are listed in another order.

Before the filter, the pool is decontaminated against every evaluation set in use and deduplicated
(``tracewise.decontam``); after it, a curation strategy (``tracewise.curation_strategies``: random,
s1, LIMO, difficulty-adaptive) may pick ``target_size`` problems, saved as ``datasets/selected/``.

Outputs: ``datasets/<teacher>/`` and ``datasets/<mix_name>/`` (``save_to_disk``), ``kept.json``,
and ``table.md`` / ``table.json`` with what the filter did (accuracies, agreement, token costs and,
in the embedded world, how many traces with a known mistake got through).
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from statistics import mean

from tracewise import curation_strategies, decontam
from tracewise.config import doc
from tracewise.curation_strategies import STRATEGIES, SelectionConfig
from tracewise.decontam import DecontamConfig
from tracewise.records import Problem, Trace, Verdict
from tracewise.store import is_done, mark_done, save_config, stage_dir
from tracewise.tokens import student_completion
from tracewise.verify_stage import (
    content_ordered,
    generation_files,
    load_generations,
    load_verdicts,
    verdicts_file,
    write_json,
)

log = logging.getLogger(__name__)

# filter name -> verdict methods that must all say "correct"
FILTERS: dict[str, tuple[str, ...]] = {
    "judge": ("judge",),
    "math_verify": ("math_verify",),
    "both": ("math_verify", "judge"),
    "none": (),
}
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")  # dataset names become directory names


@dataclass
class CurateConfig:
    """Build per-teacher and mixed SFT datasets over the problems all teachers got right (``tracewise curate``)."""

    out: str = doc("Root directory; the stage writes into <out>/curate-<hash>/.", "runs", hash=False)
    # Paths stay out of the hash: the run dir is keyed by the bytes of the files read (see run()).
    generations: list[str] = doc("Generate run directories (one or more per teacher).", factory=list, hash=False)
    verdicts: str = doc("Verify run directory holding verdicts for those traces.", "", hash=False)
    teachers: list[str] = doc("Teachers to compare (default: every teacher found, sorted).", factory=list)
    filter: str = doc("Correctness filter: 'judge', 'math_verify', 'both' (both must agree) or 'none'.", "both")
    mix: bool = doc("Also build a mixed dataset taking each kept problem from one teacher.", True)
    mix_seed: int = doc("Seed of the per-problem teacher pick in the mix.", 0)
    mix_name: str = doc("Name of the mixed dataset (its directory under datasets/).", "mix")
    decontam: DecontamConfig = doc("Decontamination against eval sets and dedup, before the filter.",
                                   factory=DecontamConfig)
    strategy: str = doc("Curation strategy: 'all' (every kept problem), 'random', 's1', 'limo' or 'adaptive' "
                        "(see tracewise.curation_strategies); the pick is saved as datasets/selected.", "all")
    target_size: int = doc("Problems the strategy keeps (required unless strategy='all').", 0)
    selection: SelectionConfig = doc("Strategy settings: seed, reference student, LIMO words, adaptive threshold.",
                                     factory=SelectionConfig)

    def validate(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"curate.strategy: unknown strategy {self.strategy!r}; valid: {list(STRATEGIES)}")
        if self.strategy != "all" and self.target_size < 1:
            raise ValueError(f"curate.target_size: strategy {self.strategy!r} needs target_size >= 1, "
                             f"got {self.target_size}")
        if self.target_size < 0:
            raise ValueError(f"curate.target_size must be >= 0, got {self.target_size}")
        if "selected" in (self.mix_name, *self.teachers) and self.strategy != "all":
            raise ValueError("curate: 'selected' names the strategy's dataset; rename the teacher or mix")
        self.decontam.validate()
        self.selection.validate()
        if self.filter not in FILTERS:
            raise ValueError(f"curate.filter: unknown filter {self.filter!r}; valid: {sorted(FILTERS)}")
        if not self.generations:
            raise ValueError("curate.generations: give at least one generate run directory")
        if len(set(self.generations)) != len(self.generations):
            raise ValueError(f"curate.generations: a directory is listed twice: {self.generations}")
        if not self.verdicts:
            raise ValueError("curate.verdicts: give the verify run directory")
        if len(set(self.teachers)) != len(self.teachers):
            raise ValueError(f"curate.teachers: a teacher is listed twice: {self.teachers}")
        if not _SAFE_NAME.fullmatch(self.mix_name):
            raise ValueError(f"curate.mix_name: {self.mix_name!r} must be a plain name (letters, digits, . _ + -)")
        if self.mix_name in self.teachers:
            raise ValueError(f"curate.mix_name: {self.mix_name!r} is also a teacher name; pick another")


def dataset_path(run_dir: str | Path, name: str) -> Path:
    """Where dataset ``name`` (a teacher, or the mix) of a curate run is saved; ValueError if absent."""
    path = Path(run_dir) / "datasets" / name
    if not path.is_dir():
        found = sorted(p.name for p in (Path(run_dir) / "datasets").glob("*") if p.is_dir())
        raise ValueError(f"{run_dir}: no dataset {name!r}; found {found}")
    return path


def mix_teacher(seed: int, problem_id: str, teachers: list[str]) -> str:
    """The teacher whose trace the mix uses for ``problem_id``: depends on nothing but seed and id."""
    h = hashlib.sha256(f"mix|{seed}|{problem_id}".encode()).digest()
    return sorted(teachers)[int.from_bytes(h[:8], "little") % len(teachers)]


@dataclass
class CurationInputs:
    """Validated inputs: the problems, each selected teacher's sample-0 traces, and their verdicts."""

    problems: dict[str, Problem]
    teachers: list[str]
    traces: dict[str, dict[str, Trace]]  # teacher -> problem id -> sample-0 trace
    verdicts: dict[str, Verdict]  # Verdict.key -> verdict


def load_inputs(cfg: CurateConfig) -> CurationInputs:
    """Read generate and verify outputs and check they fit together; every problem is a ValueError."""
    gens = load_generations(cfg.generations, consistent=True)
    found = gens.teachers
    unknown = [t for t in cfg.teachers if t not in found]
    if unknown:
        raise ValueError(f"curate.teachers: {unknown} not found in the generate runs; found: {found}")
    teachers = sorted(cfg.teachers or found)
    if cfg.mix and cfg.mix_name in teachers:
        raise ValueError(f"curate.mix_name: {cfg.mix_name!r} is also a teacher name; pick another")
    bad = [t for t in teachers if not _SAFE_NAME.fullmatch(t)]
    if bad:
        raise ValueError(f"teacher names {bad} cannot name dataset directories; rename them (generate.name)")
    traces: dict[str, dict[str, Trace]] = {t: {} for t in teachers}
    for tr, _problem in gens.pairs:
        if tr.teacher in traces and tr.sample_idx == 0:
            traces[tr.teacher][tr.problem_id] = tr
    verdicts = load_verdicts(cfg.verdicts)
    where = verdicts_file(cfg.verdicts)
    for v in verdicts.values():
        p = gens.problems.get(v.problem_id)
        if v.teacher in traces and v.sample_idx == 0 and p is not None and v.gold != p.answer:
            raise ValueError(
                f"{where}: verdict {v.key!r} was judged against gold {v.gold!r}, but the problem's answer is "
                f"{p.answer!r} ({gens.problem_where[p.id]}); verify these generate runs again"
            )
    for method in FILTERS[cfg.filter]:
        missing = [f"{method}|{tr.key}" for t in teachers for tr in traces[t].values()
                   if f"{method}|{tr.key}" not in verdicts]
        if missing:
            raise ValueError(
                f"{where}: no '{method}' verdict for {len(missing)} trace(s), e.g. {missing[:3]}; "
                f"run verify on these generate runs with methods including {method!r}"
            )
    return CurationInputs(gens.problems, teachers, traces, verdicts)


def passes(trace: Trace, verdicts: dict[str, Verdict], methods: tuple[str, ...]) -> bool:
    return all(verdicts[f"{m}|{trace.key}"].correct for m in methods)


def kept_problems(inp: CurationInputs, filter_name: str) -> list[str]:
    """Ids (sorted) where every teacher has a sample-0 trace that passes the filter."""
    methods = FILTERS[filter_name]
    return [
        pid for pid in sorted(inp.problems)
        if all(pid in inp.traces[t] and passes(inp.traces[t][pid], inp.verdicts, methods) for t in inp.teachers)
    ]


def _features():
    from datasets import Features, List, Value

    message = {"role": Value("string"), "content": Value("string")}
    return Features({
        "prompt": List(message), "completion": List(message), "problem_id": Value("string"),
        "teacher": Value("string"), "level": Value("int64"), "answer": Value("string"),
        "n_tokens": Value("int64"), "n_thinking_tokens": Value("int64"),
    })


def sft_row(problem: Problem, trace: Trace) -> dict:
    """One conversational prompt/completion row (TRL's format), with the columns the tables need."""
    return {
        "prompt": [{"role": "user", "content": problem.question}],
        "completion": [{"role": "assistant", "content": student_completion(trace.thinking, trace.answer_text)}],
        "problem_id": problem.id, "teacher": trace.teacher, "level": problem.level, "answer": problem.answer,
        "n_tokens": trace.n_tokens, "n_thinking_tokens": trace.n_thinking_tokens,
    }


def save_dataset(rows: list[dict], path: Path) -> None:
    from datasets import Dataset

    features = _features()
    # from_dict with explicit features also works for zero rows (from_list cannot infer them).
    ds = Dataset.from_dict({k: [r[k] for r in rows] for k in features}, features=features)
    ds.save_to_disk(str(path))


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
    from tracewise.judge_llm import excerpt

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
    import json
    import os

    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    os.replace(tmp, path)


def _extra_inputs(cfg: CurateConfig) -> list[Path]:
    """Files besides the traces whose bytes change the result: eval sets, generate configs, reference."""
    from tracewise.benchmarks import benchmark_path

    out = []
    if cfg.decontam.enabled:
        for name in cfg.decontam.benchmarks:
            try:
                out.append(benchmark_path(name))
            except ValueError:  # missing: skipped with a warning, shown in the table
                pass
        out += [Path(f) for f in cfg.decontam.files]
        if cfg.decontam.world_test:  # the world test split is defined by the generate config, not its output
            out += [Path(d) / "config.yaml" for d in cfg.generations if (Path(d) / "config.yaml").is_file()]
    if cfg.strategy != "all" and cfg.selection.reference:
        out.append(curation_strategies.reference_file(cfg.selection.reference))
    return out


def run(cfg: CurateConfig) -> Path:
    """Filter, build the datasets and the table; returns the run dir. A finished run is a no-op."""
    cfg.validate()
    inputs = [f for d in cfg.generations for f in generation_files(d)] + [verdicts_file(cfg.verdicts)]
    inputs += _extra_inputs(cfg)
    run_dir = stage_dir(cfg.out, "curate", cfg, inputs=content_ordered(inputs))
    if is_done(run_dir):
        log.info("curate: %s is complete, nothing to do", run_dir)
        return run_dir
    inp = load_inputs(cfg)  # all validation happens here, before the run dir exists
    clean = decontam.clean_pool(inp.problems, cfg.decontam, decontam.world_configs_of(cfg.generations))
    kept = [pid for pid in kept_problems(inp, cfg.filter) if pid in clean.kept]
    selection = None
    if cfg.strategy != "all":  # a target larger than the pool fails here, before any output
        selection = curation_strategies.select(cfg.strategy, cfg.target_size, kept, inp.problems, inp.teachers,
                                               inp.traces, cfg.selection, cfg.mix_seed)
        kept = sorted(selection.picks)
    if not kept:
        log.warning("curate: no problem passes filter %r for all of %s; the datasets are empty",
                    cfg.filter, inp.teachers)
    save_config(run_dir, cfg)
    shutil.rmtree(run_dir / "datasets", ignore_errors=True)  # leftovers of an interrupted run
    sizes = {}
    for t in inp.teachers:
        save_dataset([sft_row(inp.problems[pid], inp.traces[t][pid]) for pid in kept], run_dir / "datasets" / t)
        sizes[t] = len(kept)
    mix_counts = None
    if cfg.mix and len(inp.teachers) < 2:
        log.warning("curate: mix needs at least two teachers; only %s selected, so no mix is built", inp.teachers)
    elif cfg.mix:
        picks = {pid: mix_teacher(cfg.mix_seed, pid, inp.teachers) for pid in kept}
        rows = [sft_row(inp.problems[pid], inp.traces[picks[pid]][pid]) for pid in kept]
        save_dataset(rows, run_dir / "datasets" / cfg.mix_name)
        sizes[cfg.mix_name] = len(rows)
        counts = {t: sum(1 for p in picks.values() if p == t) for t in inp.teachers}
        mix_counts = {"name": cfg.mix_name, "counts": counts}
    if selection is not None:
        rows = [sft_row(inp.problems[pid], inp.traces[t][pid]) for pid, t in sorted(selection.picks.items())]
        save_dataset(rows, run_dir / "datasets" / "selected")
        sizes["selected"] = len(rows)
    table = curation_table(inp, kept, cfg.filter, mix_counts)
    table["datasets"] = sizes
    table["pool_cleaning"] = clean.report
    table["strategy"] = selection.info if selection is not None else None
    write_json(run_dir / "kept.json", {"filter": cfg.filter, "teachers": inp.teachers, "problem_ids": kept})
    write_json(run_dir / "table.json", table)
    _write_disagreements(run_dir / "disagreements.jsonl", judge_disagreements(inp) if table["disagreements"] else [])
    markdown = render_table(table)
    (run_dir / "table.md").write_text(markdown, encoding="utf-8")
    for line in markdown.splitlines():
        if line.strip():
            log.info("curate: %s", line)
    mark_done(run_dir, {"kept": len(kept), "problems_in": len(inp.problems), "datasets": sizes})
    return run_dir
