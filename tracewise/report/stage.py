"""Stage ``report``: report.md with PNG plots beside it, a self-contained report.html twin
(``tracewise.report.render``) and the merged summary.json.

Sections, in order: headline, results table, accuracy vs tokens, learning curves, length by
difficulty, per-problem consistency, curation table, the studies' sections (``extra_sections``,
``section_files``), then every registered section (``tracewise.report.sections.SECTIONS``, e.g.
test-time controls when the summaries hold control rows).

All prose that states a finding (headline, difficulty reading) is computed from the numbers.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from tracewise.core.config import doc
from tracewise.core.records import Sample, read_records
from tracewise.evaluate.metrics import level_breakdown, read_summary, write_summary
from tracewise.evaluate.replicates import Comparison, ProblemTable, compare, problem_table
from tracewise.report.diagnostics import consistency, consistency_reading, consistency_table, plot_solve_histogram
from tracewise.report.plots import plot_accuracy_vs_tokens, plot_learning_curves
from tracewise.report.render import html_fragments, html_page, render_markdown
from tracewise.report.sections import SECTIONS, Section, load_section_file, section_from_dict
from tracewise.report.viewer import load_problem_sources, load_trace_sources, viewer_fragment

log = logging.getLogger(__name__)


@dataclass
class ReportConfig:
    """What to put in the report and where to write it."""

    out: str = doc("output directory: report.md, report.html, summary.json and the plot PNGs go here")
    summaries: list[str] = doc("paths of summary.json files whose rows are merged", factory=list)
    samples: list[str] = doc("paths of samples.jsonl files, for the by-difficulty table (optional)", factory=list)
    train_logs: list[str] = doc("paths of HF Trainer log_history.json files (dicts with 'step', 'loss'); "
                                "curves are labelled by experiment.txt beside each, else its dir name", factory=list)
    curate_table: str | None = doc("markdown file included verbatim as the curation section", None)
    mix_experiment: str = doc("experiment name of the mixed-teacher student, highlighted by difficulty", "mix")
    title: str = doc("report title", "tracewise report")
    extra_sections: list[dict] = doc("sections from later studies: {title, markdown, images}", factory=list)
    section_files: list[str] = doc("JSON files, each one section {title, markdown, images} written by a study "
                                   "(images relative to the JSON file's directory)", factory=list)
    viewer: bool = doc("add the sample viewer to report.html when samples are given: per problem the question, "
                       "gold answer, every student's samples (thinking/answer spans, verdict, tokens) and teacher "
                       "traces, filterable by student, level and correct/wrong (report.html stays one file)", True)
    problems: list[str] = doc("where the viewer finds each problem's question and gold: eval/generate/ingest run dirs "
                              "(problems.jsonl, else the problems section of config.yaml), problem JSONL files or "
                              "benchmark names (default: the run dir of each samples file, when it has them)",
                              factory=list)
    traces: list[str] = doc("teachers' training traces shown under each evaluated problem: generate/ingest run dirs "
                            "or traces.jsonl files (only traces of evaluated problems are embedded)", factory=list)
    reference_traces: list[str] = doc("teacher traces the students were NOT trained on (e.g. the teachers run on the "
                                      "test problems), shown labelled 'reference (not trained on)'; same forms as "
                                      "traces", factory=list)

    def validate(self) -> None:
        """Reject configs that cannot produce a report, naming the offending field."""
        if not self.out:
            raise ValueError("report.out: an output directory is required")
        if not self.summaries:
            raise ValueError("report.summaries: at least one summary.json path is required")
        if self.curate_table and not Path(self.curate_table).is_file():
            raise ValueError(f"report.curate_table: {self.curate_table} not found")
        for i, sec in enumerate(self.extra_sections):
            section_from_dict(sec, f"report.extra_sections[{i}]")
        for f in self.section_files:
            if not Path(f).is_file():
                raise ValueError(f"report.section_files: {f} not found")
        for name in ("traces", "reference_traces"):
            for f in getattr(self, name):
                if not (Path(f).is_file() or (Path(f) / "traces.jsonl").is_file()):
                    raise ValueError(f"report.{name}: {f}: no traces.jsonl there (a generate or ingest run dir, "
                                     f"or the file)")


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def load_rows(paths: list[str]) -> list[dict]:
    """Merge the rows of several summary.json files; the same experiment/benchmark twice is an error."""
    rows: list[dict] = []
    origin: dict[tuple[str, str], str] = {}
    for path in paths:
        for row in read_summary(path):
            key = (row["experiment"], row["benchmark"])
            if key in origin:
                raise ValueError(f"{path}: experiment {key[0]!r} on {key[1]!r} already read from {origin[key]}")
            origin[key] = path
            rows.append(row)
    return rows


def load_train_log(path: str | Path) -> tuple[str, list[float], list[float]]:
    """(label, steps, losses) from an HF ``log_history.json``; entries without a loss are skipped.

    A finished run shorter than its ``logging_steps`` logs no loss, only the final ``train_loss`` summary:
    its curve is empty (the report says so) rather than an error that would stop the whole report.
    """
    path = Path(path)
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read training log ({e})") from None
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a JSON list of log entries (Trainer state.log_history)")
    # HF mixes eval entries and a final train summary into the history; only 'loss' entries are the curve
    num = (int, float)
    points = [(float(e["step"]), float(e["loss"])) for e in entries
              if isinstance(e, dict) and isinstance(e.get("step"), num) and isinstance(e.get("loss"), num)]
    finished = any(isinstance(e, dict) and "train_loss" in e for e in entries)
    if not points and not finished:
        raise ValueError(f"{path}: no entries with numeric 'step' and 'loss'")
    marker = path.parent / "experiment.txt"
    label = marker.read_text(encoding="utf-8").strip() if marker.exists() else ""
    return label or path.parent.name, [s for s, _ in points], [loss for _, loss in points]


def metrics_table(rows: list[dict]) -> str:
    """Markdown experiment × metric table."""
    lines = [
        "| experiment | benchmark | n | pass@1 [95% CI] | pass@8 | maj@8 | mean tokens | thinking | answer "
        "| acc / 1k tokens | tokens when wrong |",
        "|" + "---|" * 11,
    ]
    for r in rows:
        lo, hi = r["ci95"]["pass@1"]
        lines.append(
            f"| {r['experiment']} | {r['benchmark']} | {r['n']} | {_fmt(r['pass@1'])} [{_fmt(lo)}, {_fmt(hi)}] "
            f"| {_fmt(r['pass@8'])} | {_fmt(r['maj@8'])} | {_fmt(r['mean_tokens'], 0)} "
            f"| {_fmt(r['mean_thinking_tokens'], 0)} | {_fmt(r['mean_answer_tokens'], 0)} "
            f"| {_fmt(r.get('acc_per_1k_tokens'))} | {_fmt(r.get('mean_tokens_wrong'), 0)} |"
        )
    notes = [f"- {r['experiment']}: {r['note']}" for r in rows if r.get("note")]
    return "\n".join(lines + ([""] + notes if notes else []))


def headline(rows: list[dict], tables: dict[str, dict[str, list[ProblemTable]]] | None = None) -> str:
    """One line per benchmark comparing the most token-hungry experiment with the thriftiest, followed by
    the paired-interval readings when their samples are given (``tables``: benchmark → experiment → one
    per-problem table per seed); without samples the line says it carries no interval."""
    by_bench: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_bench[r["benchmark"]].append(r)
    lines = []
    for bench, group in by_bench.items():
        prefix = f"{bench}: " if len(by_bench) > 1 else ""
        ordered = sorted(group, key=lambda r: r["mean_tokens"])  # stable: ties keep input order
        lo, hi = ordered[0], ordered[-1]
        if len(ordered) == 1:
            lines.append(f"{prefix}{hi['experiment']} reached pass@1 {hi['pass@1']:.3f}, pass@8 {hi['pass@8']:.3f} "
                         f"with {hi['mean_tokens']:.0f} mean tokens (no other experiment to compare).")
            continue
        diff = abs(hi["pass@8"] - lo["pass@8"]) * 100
        ratio = (f"{hi['mean_tokens'] / lo['mean_tokens']:.1f}× fewer tokens than {hi['experiment']}"
                 if lo["mean_tokens"] > 0 else f"0 tokens against {hi['mean_tokens']:.0f} for {hi['experiment']}")
        lines.append(
            f"{prefix}{lo['experiment']} used {ratio} ({lo['mean_tokens']:.0f} vs {hi['mean_tokens']:.0f}); "
            f"pass@8 differs by {diff:.1f} points ({lo['pass@8']:.3f} vs {hi['pass@8']:.3f})."
        )
        lines.append(interval_readings(hi["experiment"], lo["experiment"], (tables or {}).get(bench, {})))
    return "\n\n".join(lines)


def interval_readings(a: str, b: str, tables: dict[str, list[ProblemTable]]) -> str:
    """What the paired intervals say about ``a`` vs ``b``; the point line above is not a finding on its own."""
    ta, tb = tables.get(a), tables.get(b)
    if not ta or not tb or len(ta) != len(tb):
        return ("These are point estimates: no per-sample records of both experiments (with the same seeds) "
                "were given, so the differences carry no interval and are not claimed as effects.")
    try:
        cmps = compare(a, ta, b, tb, metrics=("pass@1", "pass@8"))
    except ValueError as e:  # evaluated on different problems: no pairing possible
        return f"No paired interval: {e}."
    return readings_block(cmps)


def readings_block(cmps: list[Comparison]) -> str:
    """Paired comparisons as the report words them: a heading, then one bullet per reading (token ratio first)."""
    ordered = [c for c in cmps if c.metric == "token_ratio"] + [c for c in cmps if c.metric != "token_ratio"]
    return "Paired 95% intervals (problems resampled within seeds, then seeds):\n\n" + "\n".join(
        f"- {c.reading()}" for c in ordered)


def replicate_tables(sample_paths: list[str]) -> dict[str, dict[str, list[ProblemTable]]]:
    """benchmark → experiment → one per-problem table per samples file that holds it (a file = one seed of
    one eval run; files of the same experiment are its replicate seeds, in the order given)."""
    out: dict[str, dict[str, list[ProblemTable]]] = defaultdict(lambda: defaultdict(list))
    for path in sample_paths:
        groups: dict[tuple[str, str], list[Sample]] = defaultdict(list)
        for smp in read_records(path, Sample):
            groups[(smp.benchmark, smp.experiment)].append(smp)
        for (bench, exp), samples in groups.items():
            out[bench][exp].append(problem_table(samples))
    return out


def difficulty_section(by_exp: dict[str, dict], mix: str) -> str:
    """Table of mean tokens / pass@1 per level per experiment, and a reading computed from it."""
    levels = sorted({lv for d in by_exp.values() for lv in d["tokens_by_level"]}, key=int)
    lines = [
        "| experiment | " + " | ".join(f"L{lv} tokens / pass@1" for lv in levels) + " |",
        "|---|" + "---|" * len(levels),
    ]
    for name, d in by_exp.items():
        cells = [
            f"{_fmt(d['tokens_by_level'].get(lv), 0)} / {_fmt(d['pass@1_by_level'].get(lv), 2)}" for lv in levels
        ]
        label = f"**{name}**" if name == mix else name  # the HTML renderer highlights bold-first-cell rows
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + difficulty_reading(by_exp, mix)


def difficulty_reading(by_exp: dict[str, dict], mix: str) -> str:
    """One line: how much more the mix spends on its hardest level than its easiest, vs the others."""
    ratios: dict[str, tuple[float, str, str]] = {}
    for name, d in by_exp.items():
        lvs = sorted((lv for lv in d["tokens_by_level"] if lv != "0"), key=int)  # level 0 = unknown difficulty
        if len(lvs) < 2:
            continue
        easy, hard = d["tokens_by_level"][lvs[0]], d["tokens_by_level"][lvs[-1]]
        if easy > 0:
            ratios[name] = (hard / easy, lvs[0], lvs[-1])
    if not ratios:
        return "Reading: fewer than two difficulty levels in the data, so length adaptation cannot be assessed."
    others = {n: r for n, r in ratios.items() if n != mix}
    listing = ", ".join(f"{n} {r[0]:.2f}×" for n, r in others.items())
    if mix not in ratios:
        return f"Reading: no experiment named {mix!r} with level data; hardest/easiest token ratios: {listing}."
    r, lo, hi = ratios[mix]
    acc = by_exp[mix]["pass@1_by_level"]
    text = (
        f"Reading: {mix} spends {r:.2f}× the tokens on level {hi} that it spends on level {lo} "
        f"(pass@1 {_fmt(acc.get(lo), 2)} → {_fmt(acc.get(hi), 2)})"
    )
    if not others:
        return text + "; no other student to compare with."
    vals = [o[0] for o in others.values()]
    if r > max(vals):
        verdict = "more length adaptation than any other student"
    elif r < min(vals):
        verdict = "less length adaptation than every other student"
    else:
        verdict = "length adaptation within the range of the other students"
    return f"{text}; others: {listing} → {verdict}."


def _group_samples(sample_paths: list[str]) -> dict[tuple[str, str], list[Sample]]:
    """Samples of every file, grouped by (benchmark, experiment); read once for every section."""
    grouped: dict[tuple[str, str], list[Sample]] = defaultdict(list)
    for path in sample_paths:
        per_file: dict[tuple[str, str], list[Sample]] = defaultdict(list)
        for s in read_records(path, Sample):
            per_file[(s.benchmark, s.experiment)].append(s)
        for key, samples in per_file.items():
            # Another file of the same experiment is another replicate seed: its samples are pooled as
            # further samples of each problem (indices shifted past the earlier seeds').
            offset = 1 + max((s.sample_idx for s in grouped[key]), default=-1)
            grouped[key].extend(dataclasses.replace(s, sample_idx=s.sample_idx + offset) if offset else s
                                for s in samples)
    return grouped


def _level_data(rows: list[dict], grouped: dict[tuple[str, str], list[Sample]]) -> dict[str, dict[str, dict]]:
    """{benchmark: {experiment: level breakdown}} from samples when given, else from summary rows."""
    out: dict[str, dict[str, dict]] = defaultdict(dict)
    for r in rows:
        if r.get("tokens_by_level") and r.get("pass@1_by_level"):
            out[r["benchmark"]][r["experiment"]] = r
    for (bench, exp), samples in grouped.items():
        out[bench][exp] = level_breakdown(samples)  # raw samples beat the rounded summary numbers
    return out


def consistency_section(grouped: dict[tuple[str, str], list[Sample]], out: Path) -> Section:
    """Per-problem solve counts per student: why pass@1 and pass@8 can rank students differently."""
    stats = {(exp if bench == "world" else f"{exp} ({bench})"): consistency(samples)
             for (bench, exp), samples in grouped.items()}
    body = consistency_table(stats) + "\n\n" + consistency_reading(stats)
    return Section("Are errors per-sample noise or problem-specific?", body,
                   [plot_solve_histogram(stats, out / "solve_histogram.png")])


def viewer_section(cfg: ReportConfig, grouped: dict[tuple[str, str], list[Sample]]) -> Section:
    """The sample viewer (tracewise.report.viewer) as a section: a pointer in report.md, the fragment in
    report.html. Replicate seeds' samples are pooled as in the other sections."""
    samples = [s for group in grouped.values() for s in group]
    ids = {s.problem_id for s in samples}
    if cfg.problems:
        problems = load_problem_sources(cfg.problems)
    else:
        problems = load_problem_sources([str(Path(p).parent) for p in cfg.samples], strict=False)
    traces = load_trace_sources(cfg.traces, ids)
    reference = load_trace_sources(cfg.reference_traces, ids, "report.reference_traces")
    shown = len({t.problem_id for t in [*traces, *reference]})
    body = (f"{len(ids)} problems, {len(samples)} samples of {len({s.experiment for s in samples})} students; "
            f"teacher traces on {shown} of the problems: {len(traces)} from the training pool, {len(reference)} "
            f"references (not trained on). Interactive in report.html: it opens on the problems where the students "
            f"disagree; filters: student, level, correct/wrong, also from the URL hash "
            f"(e.g. #exp=mix&verdict=wrong&disagree=0&teachers=1).")
    missing = len(ids - set(problems))
    if missing:
        body += f" No question or gold found for {missing} problems (set report.problems)."
    return Section("Samples: what the students wrote", body,
                   html=viewer_fragment(samples, problems, traces, reference))


def run(cfg: ReportConfig) -> Path:
    """Write report.md, report.html and the merged summary.json into ``cfg.out``; return the HTML path."""
    cfg.validate()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = load_rows(cfg.summaries)
    sections = [
        Section("Headline", headline(rows, replicate_tables(cfg.samples))),
        Section("Results", metrics_table(rows)),
        Section("Accuracy vs tokens", "", [plot_accuracy_vs_tokens(rows, out / "accuracy_vs_tokens.png")]),
    ]
    if cfg.train_logs:
        curves = [load_train_log(p) for p in cfg.train_logs]
        unlogged = [label for label, steps, _ in curves if not steps]
        note = (f"No loss was logged for {', '.join(unlogged)} (the run was shorter than its `logging_steps`)."
                if unlogged else "")
        curves = [c for c in curves if c[1]]
        plots = [plot_learning_curves(curves, out / "learning_curves.png")] if curves else []
        sections.append(Section("Learning curves", note, plots))
    grouped = _group_samples(cfg.samples)
    level_data = _level_data(rows, grouped)
    if level_data:
        body = "\n\n".join(
            (f"### {bench}\n\n" if len(level_data) > 1 else "") + difficulty_section(by_exp, cfg.mix_experiment)
            for bench, by_exp in sorted(level_data.items())
        )
        sections.append(Section("Does the mixed student adapt length to difficulty?", body))
    if cfg.samples:
        sections.append(consistency_section(grouped, out))
    if cfg.samples and cfg.viewer:
        sections.append(viewer_section(cfg, grouped))
    if cfg.curate_table:
        sections.append(Section("Curation", Path(cfg.curate_table).read_text(encoding="utf-8")))
    for i, d in enumerate(cfg.extra_sections):
        sections.append(section_from_dict(d, f"report.extra_sections[{i}]"))
    for f in cfg.section_files:
        sections.append(load_section_file(f))
    for build in SECTIONS.values():
        sections.extend(build(rows, out, sections))

    md = render_markdown(cfg.title, sections, out)
    (out / "report.md").write_text(md, encoding="utf-8")
    html_path = out / "report.html"
    html_path.write_text(html_page(cfg.title, md, out, html_fragments(sections)), encoding="utf-8")
    write_summary(out / "summary.json", rows)
    log.info("report written to %s (%d experiments, %d sections)", html_path, len(rows), len(sections))
    return html_path
