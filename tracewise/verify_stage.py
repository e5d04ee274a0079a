"""Stage ``verify``: a verdict per teacher trace and per method (math-verify, judge).

The paper filtered teacher traces with a judge model; math-verify is the rule-based check. The two
disagree, and which one curates the training set changes what the student learns from, so this
stage records both side by side (``verdicts.jsonl``) and writes ``audit.json`` with per-teacher
accuracies, their agreement and a sample of disagreements to read by eye. It only judges; choosing
what to keep is ``curate``'s job.

The judge verdict reuses math-verify's extracted answer: a judge LLM would read the same final
answer, and using one extraction means the two methods disagree only about *equivalence*, never
about which substring is the answer.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tracewise.config import doc
from tracewise.progress import progress_bar
from tracewise.records import Problem, Trace, Verdict, from_dict, iter_jsonl
from tracewise.store import AppendLog, is_done, mark_done, path_digest, save_config, stage_dir
from tracewise.verify import verify
from tracewise.world.judge import JudgeConfig, procedural_judge

log = logging.getLogger(__name__)

METHODS = ("math_verify", "judge")
# name -> what it is. An LLM judge backend (the paper's Qwen3 judge) is planned and plugs in here.
JUDGES = {"embedded": "procedural judge with known false-positive/negative rates (tracewise.world.judge)"}
MAX_DISAGREEMENTS = 50  # enough to eyeball patterns; the counts cover the rest
BATCH = 128  # traces per AppendLog write: one fsync per batch, not per verdict

JudgeFn = Callable[[str, str | None, str], tuple[bool, str]]


@dataclass
class VerifyConfig:
    """Judge teacher traces (``tracewise verify``)."""

    out: str = doc("Root directory; the stage writes into <out>/verify-<hash>/.", "runs", hash=False)
    # Paths stay out of the hash: the run dir is keyed by the bytes of the files read (see run()).
    generations: list[str] = doc("Generate run directories whose traces to judge.", factory=list, hash=False)
    methods: list[str] = doc("Verdict methods to run: 'math_verify' and/or 'judge'.", factory=lambda: list(METHODS))
    judge: str = doc("Judge backend for the 'judge' method; only 'embedded' exists so far.", "embedded")
    judge_cfg: JudgeConfig = doc("Error rates and seed of the embedded judge.", factory=JudgeConfig)

    def validate(self) -> None:
        if not self.generations:
            raise ValueError("verify.generations: give at least one generate run directory")
        if len(set(self.generations)) != len(self.generations):
            raise ValueError(f"verify.generations: a directory is listed twice: {self.generations}")
        if not self.methods:
            raise ValueError(f"verify.methods: give at least one of {list(METHODS)}")
        bad = [m for m in self.methods if m not in METHODS]
        if bad or len(set(self.methods)) != len(self.methods):
            raise ValueError(f"verify.methods: expected distinct values from {list(METHODS)}, got {self.methods}")
        if self.judge not in JUDGES:
            raise ValueError(f"verify.judge: unknown judge {self.judge!r}; valid: {sorted(JUDGES)}")
        self.judge_cfg.validate()


def generation_files(run_dir: str | os.PathLike) -> tuple[Path, Path]:
    """``(problems.jsonl, traces.jsonl)`` of a finished generate run, or a ValueError saying what is wrong."""
    d = Path(run_dir)
    if not d.is_dir():
        raise ValueError(f"{d}: generate run directory not found")
    if not is_done(d):
        raise ValueError(f"{d}: generate run is not finished (no DONE marker); rerun generate to complete it")
    files = (d / "problems.jsonl", d / "traces.jsonl")
    for f in files:
        if not f.is_file():
            raise ValueError(f"{f}: file not found; is {d} a generate run directory?")
    return files


def content_ordered(paths: list[Path]) -> list[Path]:
    """Inputs sorted by their bytes' digest, so listing the same inputs in another order finds the same run dir."""
    return sorted(paths, key=lambda p: (path_digest(p), str(p)))


@dataclass
class Generations:
    """Validated contents of several generate runs: every trace paired with the problem it answers."""

    pairs: list[tuple[Trace, Problem]]
    problems: dict[str, Problem]  # by id, over all runs (first seen wins when consistency is not required)
    problem_where: dict[str, str]  # id -> "file:line" of its first definition, for error messages

    @property
    def teachers(self) -> list[str]:
        return sorted({t.teacher for t, _ in self.pairs})


def load_generations(dirs: list[str], consistent: bool = True) -> Generations:
    """Read and validate every problems/traces file; errors name the file and line.

    ``consistent=True`` refuses the same problem id with different question or answer in two runs
    (curation compares teachers on *the same* problems). Verify passes False: each trace is checked
    against the gold of its own run, so unrelated problem sets can share ids there.
    """
    pairs: list[tuple[Trace, Problem]] = []
    problems: dict[str, Problem] = {}
    problem_where: dict[str, str] = {}
    trace_where: dict[str, str] = {}
    for d in dirs:
        problems_file, traces_file = generation_files(d)
        local: dict[str, Problem] = {}
        for lineno, obj in iter_jsonl(problems_file):
            where = f"{problems_file}:{lineno}"
            p = from_dict(Problem, obj, where)
            if p.id in local:
                raise ValueError(f"{where}: duplicate problem id {p.id!r}")
            local[p.id] = p
            first = problems.get(p.id)
            if first is None:
                problems[p.id], problem_where[p.id] = p, where
            elif consistent and (first.answer != p.answer or first.question != p.question):
                raise ValueError(
                    f"{where}: problem {p.id!r} conflicts with {problem_where[p.id]} "
                    f"(answer {p.answer!r} vs {first.answer!r}); these generate runs used different problem sets"
                )
        for lineno, obj in iter_jsonl(traces_file):
            where = f"{traces_file}:{lineno}"
            t = from_dict(Trace, obj, where)
            if t.problem_id not in local:
                raise ValueError(f"{where}: trace for problem {t.problem_id!r}, which is not in {problems_file}")
            if t.key in trace_where:
                raise ValueError(
                    f"{where}: trace {t.key!r} also at {trace_where[t.key]}; give the generate runs "
                    "distinct teacher names (generate.name)"
                )
            trace_where[t.key] = where
            pairs.append((t, local[t.problem_id]))
    return Generations(pairs, problems, problem_where)


def verdicts_file(run_dir: str | os.PathLike) -> Path:
    """``verdicts.jsonl`` of a finished verify run, or a ValueError saying what is wrong."""
    d = Path(run_dir)
    if not d.is_dir():
        raise ValueError(f"{d}: verify run directory not found")
    if not is_done(d):
        raise ValueError(f"{d}: verify run is not finished (no DONE marker); rerun verify to complete it")
    f = d / "verdicts.jsonl"
    if not f.is_file():
        raise ValueError(f"{f}: file not found; is {d} a verify run directory?")
    return f


def load_verdicts(run_dir: str | os.PathLike) -> dict[str, Verdict]:
    """Verdicts of a verify run keyed by ``Verdict.key``; malformed or duplicate lines name file:line."""
    path = verdicts_file(run_dir)
    out: dict[str, Verdict] = {}
    for lineno, obj in iter_jsonl(path):
        v = from_dict(Verdict, obj, f"{path}:{lineno}")
        if v.key in out:
            raise ValueError(f"{path}:{lineno}: duplicate verdict {v.key!r}")
        out[v.key] = v
    return out


def make_judge(name: str, cfg: JudgeConfig) -> JudgeFn:
    """``judge(trace_key, pred, gold) -> (correct, raw_output)`` for backend ``name``."""
    if name == "embedded":
        return lambda key, pred, gold: procedural_judge(key, pred, gold, cfg)
    raise ValueError(f"verify.judge: unknown judge {name!r}; valid: {sorted(JUDGES)}")


def verdicts_for(trace: Trace, problem: Problem, methods: list[str], judge: JudgeFn) -> list[Verdict]:
    """One verdict per method for one trace."""
    mv = verify(trace.text, problem.answer, truncated=trace.finish_reason == "length")
    common = dict(problem_id=trace.problem_id, teacher=trace.teacher, gold=problem.answer, sample_idx=trace.sample_idx)
    out = []
    if "math_verify" in methods:
        out.append(Verdict(method="math_verify", correct=mv.correct, reason=mv.reason, pred=mv.pred, **common))
    if "judge" in methods:
        if mv.pred is None or mv.reason == "truncated":
            # Nothing to judge (no answer), or a trace cut off mid-thought that must never be trained
            # on: the judge agrees with math-verify by construction and its reason passes through.
            out.append(Verdict(method="judge", correct=False, reason=mv.reason, pred=mv.pred, **common))
        else:
            ok, raw = judge(trace.key, mv.pred, problem.answer)
            reason = "correct" if ok else "wrong"
            out.append(Verdict(method="judge", correct=ok, reason=reason, pred=mv.pred, raw=raw, **common))
    return out


def build_audit(verdicts: list[Verdict], traces: list[Trace], methods: list[str]) -> dict:
    """Per teacher × method accuracy, judge-vs-math-verify agreement and the first disagreements.

    Where traces carry ``meta.teacher_error`` (embedded world) it also counts, per method, the
    traces known to be wrong that the method accepted: the quantity a filter is meant to minimise.
    """
    known_wrong = {t.key: t.meta["teacher_error"] for t in traces if isinstance(t.meta.get("teacher_error"), bool)}
    reasons: dict[str, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
    accepted_wrong: dict[str, Counter] = defaultdict(Counter)
    by_trace: dict[tuple, dict[str, Verdict]] = defaultdict(dict)
    for v in verdicts:
        reasons[v.teacher][v.method][v.reason] += 1
        trace_key = f"{v.teacher}|{v.problem_id}|{v.sample_idx}"
        if v.correct and known_wrong.get(trace_key):
            accepted_wrong[v.teacher][v.method] += 1
        by_trace[(v.teacher, v.problem_id, v.sample_idx)][v.method] = v
    accuracy = {}
    for teacher, per_method in sorted(reasons.items()):
        accuracy[teacher] = {}
        for method, counts in sorted(per_method.items()):
            n = sum(counts.values())
            entry = {"n": n, "correct": counts["correct"], "accuracy": counts["correct"] / n, "reasons": dict(counts)}
            if known_wrong:
                entry["known_wrong_accepted"] = accepted_wrong[teacher][method]
            accuracy[teacher][method] = entry
    audit: dict = {"methods": list(methods), "n_verdicts": len(verdicts), "accuracy": accuracy}
    if set(METHODS) <= set(methods):
        agree: dict[str, Counter] = defaultdict(Counter)
        disagreements = []
        for (teacher, pid, idx), vs in sorted(by_trace.items()):
            mv, jd = vs["math_verify"], vs["judge"]
            agree[teacher]["n"] += 1
            agree[teacher]["agree"] += mv.correct == jd.correct
            if mv.correct != jd.correct:
                disagreements.append(
                    {"teacher": teacher, "problem_id": pid, "sample_idx": idx, "pred": mv.pred,
                     "gold": mv.gold, "mv": mv.correct, "judge": jd.correct}
                )
        audit["agreement"] = {
            t: {"n": c["n"], "agree": c["agree"], "rate": c["agree"] / c["n"]} for t, c in sorted(agree.items())
        }
        audit["n_disagreements"] = len(disagreements)
        audit["disagreements"] = disagreements[:MAX_DISAGREEMENTS]
    return audit


def write_json(path: Path, data: dict) -> None:
    """Canonical JSON (sorted keys) written atomically: readers never see half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, sort_keys=True, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def run(cfg: VerifyConfig) -> Path:
    """Judge every trace with every method; resumable; returns the run dir (``verdicts.jsonl``, ``audit.json``)."""
    cfg.validate()
    inputs = [f for d in cfg.generations for f in generation_files(d)]
    run_dir = stage_dir(cfg.out, "verify", cfg, inputs=content_ordered(inputs))
    if is_done(run_dir):
        log.info("verify: %s is complete, nothing to do", run_dir)
        return run_dir
    # Everything is read and validated before the run dir exists, so a bad input leaves no trace.
    gens = load_generations(cfg.generations, consistent=False)
    judge = make_judge(cfg.judge, cfg.judge_cfg)
    save_config(run_dir, cfg)
    store = AppendLog(run_dir / "verdicts.partial.jsonl", Verdict, key=lambda v: v.key)
    # A trace is redone if any of its verdicts is missing (a torn line can drop one of a pair).
    todo = [(t, p) for t, p in gens.pairs if not all(store.done(f"{m}|{t.key}") for m in cfg.methods)]
    if store.records:
        log.info("verify: resuming, %d verdicts already done, %d traces to go", len(store.records), len(todo))
    with progress_bar("verify", len(todo)) as advance:
        for start in range(0, len(todo), BATCH):
            batch = todo[start : start + BATCH]
            store.append(v for t, p in batch for v in verdicts_for(t, p, cfg.methods, judge))
            advance(len(batch))
    store.finalize(run_dir / "verdicts.jsonl")
    audit = build_audit(list(store.records.values()), [t for t, _ in gens.pairs], cfg.methods)
    write_json(run_dir / "audit.json", audit)
    _log_audit(audit)
    mark_done(run_dir, {"n_traces": len(gens.pairs), "n_verdicts": len(store.records), "methods": cfg.methods})
    return run_dir


def _log_audit(audit: dict) -> None:
    for teacher, per_method in audit["accuracy"].items():
        accs = ", ".join(f"{m} {e['accuracy']:.1%} of {e['n']}" for m, e in per_method.items())
        agree = audit.get("agreement", {}).get(teacher)
        tail = f"; judge agrees with math-verify on {agree['rate']:.1%}" if agree else ""
        log.info("verify [%s]: %s%s", teacher, accs, tail)
    if audit.get("n_disagreements"):
        log.info("verify: %d judge/math-verify disagreements (first %d in audit.json)",
                 audit["n_disagreements"], len(audit["disagreements"]))
