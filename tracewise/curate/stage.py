"""Stage ``curate``: the same correct problems from every teacher, as SFT datasets.

The comparison the paper makes (verbose R1-style vs concise gpt-oss-style traces) is only fair if
both students see the *same* problems: otherwise one teacher's dataset is easier because that
teacher failed on the hard problems. So a problem is kept only when every selected teacher's
sample-0 trace is judged correct by the chosen filter, and each teacher's dataset is built over
exactly that kept set. The mix dataset takes each kept problem once, from a teacher picked by a
hash of ``(mix_seed, problem_id)``: unlike a shuffle, a problem's pick does not move when other
problems are added or inputs are listed in another order.

Before the filter, the pool is decontaminated against every evaluation set in use and deduplicated
(``tracewise.curate.decontam``); after it, a curation strategy (``tracewise.curate.strategies``: random,
s1, LIMO, difficulty-adaptive) may pick ``target_size`` problems, saved as ``datasets/selected/``.

Outputs: ``datasets/<teacher>/`` and ``datasets/<mix_name>/`` (``save_to_disk``), ``kept.json``,
and ``table.md`` / ``table.json`` with what the filter did (accuracies, agreement, token costs and,
in the embedded world, how many traces with a known mistake got through).
"""

from __future__ import annotations

import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from tracewise.curate import decontam
from tracewise.curate import strategies as curation_strategies
from tracewise.core.config import doc
from tracewise.curate.strategies import STRATEGIES, SelectionConfig, mix_teacher
from tracewise.curate.decontam import DecontamConfig
from tracewise.core.records import Problem, Trace, Verdict, kill_point
from tracewise.core.store import is_done, mark_done, save_config, stage_dir
from tracewise.curate.tables import CurationInputs, _write_disagreements, curation_table, judge_disagreements, render_table
from tracewise.core.tokens import student_completion
from tracewise.verify.stage import (
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
                        "(see tracewise.curate.strategies); the pick is saved as datasets/selected.", "all")
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
    kill_point("datasets")  # test hook (TRACEWISE_TEST_KILL_AFTER=datasets:N); no-op when unset


def _extra_inputs(cfg: CurateConfig) -> list[Path]:
    """Files besides the traces whose bytes change the result: eval sets, generate configs, reference."""
    from tracewise.data.benchmarks import benchmark_path

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
    # One line on a normal run; the table (with every judge disagreement) is in table.md, and at DEBUG.
    log.info("curate: kept %d of %d problems (filter %s); %d judge disagreements; table: %s", len(kept),
             len(inp.problems), cfg.filter, (table["disagreements"] or {}).get("n", 0), run_dir / "table.md")
    log.debug("curate table:\n%s", markdown)
    mark_done(run_dir, {"kept": len(kept), "problems_in": len(inp.problems), "datasets": sizes})
    return run_dir
