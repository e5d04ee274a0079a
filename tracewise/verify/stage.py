"""Stage ``verify``: a verdict per teacher trace and per method (math-verify, judge).

The paper filtered teacher traces with a judge model; math-verify is the rule-based check. The two
disagree, and which one curates the training set changes what the student learns from, so this
stage records both side by side (``verdicts.jsonl``) and writes ``audit.json`` with per-teacher
accuracies, their agreement and a sample of disagreements to read by eye. It only judges; choosing
what to keep is ``curate``'s job.

Two judges: ``judge.backend=embedded`` is the procedural judge of the embedded world (known error
rates, it reads math-verify's extracted answer, so the methods disagree only about *equivalence*);
any generation backend (``hf``, ``vllm``, ``openai``) serves an LLM judge (``tracewise.verify.llm_judge``)
that reads the trace's final response itself, so it can also rescue answers math-verify could not
extract. Its raw output is kept in ``Verdict.raw``.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tracewise.core.config import doc
from tracewise.core.fingerprint import model_input
from tracewise.verify.llm_judge import JudgeItem, JudgeResult, LLMJudge, LLMJudgeConfig, excerpt
from tracewise.core.logs import progress_bar
from tracewise.core.records import Problem, Trace, Verdict, from_dict, iter_jsonl
from tracewise.core.store import AppendLog, atomic_write_text, is_done, mark_done, path_digest, save_config, stage_dir
from tracewise.verify.pool import DEFAULT_TIMEOUT_S, verify_many
from tracewise.world.judge import JudgeConfig, procedural_judge

log = logging.getLogger(__name__)

METHODS = ("math_verify", "judge")
# 'embedded' is the procedural judge; every generation backend name (tracewise.backends) serves an LLM judge.
JUDGES = {"embedded": "procedural judge with known false-positive/negative rates (tracewise.world.judge)",
          "<backend>": "an LLM judge model served by that generation backend (tracewise.verify.llm_judge)"}
MAX_DISAGREEMENTS = 50  # enough to eyeball patterns; the counts cover the rest
BATCH = 128  # traces per AppendLog write: one fsync per batch, not per verdict

JudgeFn = Callable[[list[JudgeItem]], list[JudgeResult]]  # batch in, results in the same order out


@dataclass
class VerifyConfig:
    """Judge teacher traces (``tracewise verify``)."""

    out: str = doc("Root directory; the stage writes into <out>/verify-<hash>/.", "runs", hash=False)
    # Paths stay out of the hash: the run dir is keyed by the bytes of the files read (see run()).
    generations: list[str] = doc("Generate run directories whose traces to judge.", factory=list, hash=False)
    methods: list[str] = doc("Verdict methods to run: 'math_verify' and/or 'judge'.", factory=lambda: list(METHODS))
    judge: LLMJudgeConfig = doc("Judge for the 'judge' method (judge.backend=embedded|hf|vllm|openai).",
                                factory=LLMJudgeConfig)
    judge_cfg: JudgeConfig = doc("Error rates and seed of the embedded judge.", factory=JudgeConfig)
    verify_workers: int = doc("math-verify worker processes (-1 = auto, 0 = in this process without a hard "
                              "time bound).", -1, hash=False)
    verify_timeout_s: float = doc("Seconds one math-verify comparison may take; slower ones count as wrong.",
                                  DEFAULT_TIMEOUT_S)

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
        if "judge" in self.methods:
            self.judge.validate()
        self.judge_cfg.validate()
        if self.verify_workers < -1 or not self.verify_timeout_s > 0:
            raise ValueError(f"verify.verify_workers must be >= -1 and verify.verify_timeout_s > 0, got "
                             f"{self.verify_workers} and {self.verify_timeout_s}")


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


def make_judge(spec: LLMJudgeConfig | str, cfg: JudgeConfig) -> JudgeFn:
    """A batch judge ``judge([JudgeItem]) -> [JudgeResult]`` for ``spec`` (a config or a backend name)."""
    spec = LLMJudgeConfig(backend=spec) if isinstance(spec, str) else spec
    if spec.backend == "embedded":
        def embedded(items: list[JudgeItem]) -> list[JudgeResult]:
            return [JudgeResult(*procedural_judge(i.key, i.pred, i.gold, cfg)) for i in items]
        return embedded
    spec.validate()
    return LLMJudge(spec)


def verdicts_for(trace: Trace, problem: Problem, methods: list[str], judge: JudgeFn) -> list[Verdict]:
    """One verdict per method for one trace."""
    return verdicts_for_batch([(trace, problem)], methods, judge)


def verdicts_for_batch(pairs: list[tuple[Trace, Problem]], methods: list[str], judge: JudgeFn,
                       workers: int = 0, timeout_s: float = DEFAULT_TIMEOUT_S) -> list[Verdict]:
    """One verdict per method per trace; every judge question of the batch goes out in one call.

    math-verify runs in ``workers`` processes with a deadline per comparison (``tracewise.verify.pool``);
    0 runs it here.
    """
    llm = isinstance(judge, LLMJudge)
    out: list[Verdict] = []
    asks: list[tuple[int, JudgeItem]] = []  # (position in out to fill, question)
    mvs = verify_many([(t.text, p.answer, t.finish_reason == "length") for t, p in pairs],
                      workers=workers if workers >= 0 else None, timeout_s=timeout_s)
    for (trace, problem), mv in zip(pairs, mvs, strict=True):
        common = dict(problem_id=trace.problem_id, teacher=trace.teacher, gold=problem.answer,
                      sample_idx=trace.sample_idx)
        if "math_verify" in methods:
            out.append(Verdict(method="math_verify", correct=mv.correct, reason=mv.reason, pred=mv.pred, **common))
        if "judge" not in methods:
            continue
        # A trace cut off mid-thought must never be trained on, whatever a judge says; the procedural
        # judge also needs an extracted answer. Those verdicts pass math-verify's reason through.
        # An LLM judge does read answer-less traces: rescuing answers math-verify missed is its point.
        if mv.reason == "truncated" or (mv.pred is None and not llm):
            out.append(Verdict(method="judge", correct=False, reason=mv.reason, pred=mv.pred, **common))
        else:
            out.append(Verdict(method="judge", correct=False, reason="", pred=mv.pred, **common))
            asks.append((len(out) - 1, JudgeItem(trace.key, problem.question, problem.answer, mv.pred,
                                                 trace.answer_text, trace.text)))
    results = judge([item for _, item in asks])
    unanswered = set()
    for (pos, item), res in zip(asks, results, strict=True):
        if res is None:  # the backend gave up on this one: store nothing for the trace, a rerun asks again
            unanswered.add(item.key)
            continue
        v = out[pos]
        v.correct = bool(res.correct)
        v.reason = "judge_unparseable" if res.correct is None else ("correct" if res.correct else "wrong")
        v.raw, v.meta = res.raw, dict(res.meta)
    return [v for v in out if f"{v.teacher}|{v.problem_id}|{v.sample_idx}" not in unanswered]


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
                     "gold": mv.gold, "mv": mv.correct, "judge": jd.correct, "judge_reason": jd.reason,
                     "judge_excerpt": excerpt(jd.raw)}
                )
        audit["agreement"] = {
            t: {"n": c["n"], "agree": c["agree"], "rate": c["agree"] / c["n"]} for t, c in sorted(agree.items())
        }
        audit["n_disagreements"] = len(disagreements)
        audit["disagreements"] = disagreements[:MAX_DISAGREEMENTS]
    return audit


def write_json(path: Path, data: dict) -> None:
    """Canonical JSON (sorted keys) written atomically: readers never see half a file."""
    atomic_write_text(path, json.dumps(data, sort_keys=True, indent=1, ensure_ascii=False) + "\n")


def run(cfg: VerifyConfig) -> Path:
    """Judge every trace with every method; resumable; returns the run dir (``verdicts.jsonl``, ``audit.json``)."""
    cfg.validate()
    inputs = [f for d in cfg.generations for f in generation_files(d)]
    if "judge" in cfg.methods and cfg.judge.template_file:
        inputs.append(Path(cfg.judge.template_file))  # the template's bytes, not its path, key the run
    inputs = content_ordered(inputs)
    if "judge" in cfg.methods and cfg.judge.backend in ("hf", "vllm"):
        inputs.extend(model_input(cfg.judge.model))  # the judge model's content (tracewise.core.fingerprint)
    run_dir = stage_dir(cfg.out, "verify", cfg, inputs=inputs)
    if is_done(run_dir):
        log.info("verify: %s is complete, nothing to do", run_dir)
        return run_dir
    # Everything is read and validated before the run dir exists, so a bad input leaves no trace.
    gens = load_generations(cfg.generations, consistent=False)
    judge = make_judge(cfg.judge, cfg.judge_cfg) if "judge" in cfg.methods else make_judge("embedded", cfg.judge_cfg)
    save_config(run_dir, cfg)
    store = AppendLog(run_dir / "verdicts.partial.jsonl", Verdict, key=lambda v: v.key)
    # A trace is redone if any of its verdicts is missing (a torn line can drop one of a pair).
    todo = [(t, p) for t, p in gens.pairs if not all(store.done(f"{m}|{t.key}") for m in cfg.methods)]
    if store.records:
        log.info("verify: resuming, %d verdicts already done, %d traces to go", len(store.records), len(todo))
    with progress_bar("verify", len(todo)) as advance:
        step = cfg.judge.flush_every if isinstance(judge, LLMJudge) else BATCH
        for start in range(0, len(todo), step):
            batch = todo[start : start + step]
            store.append(verdicts_for_batch(batch, cfg.methods, judge, cfg.verify_workers, cfg.verify_timeout_s))
            advance(len(batch))
    left = sum(not all(store.done(f"{m}|{t.key}") for m in cfg.methods) for t, _ in todo)
    if left:
        raise ValueError(f"verify: the judge backend gave no answer for {left} trace(s) (see the warnings above); "
                         f"the {len(store.records)} verdicts so far are kept in {run_dir}: rerun verify to retry the rest")
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
