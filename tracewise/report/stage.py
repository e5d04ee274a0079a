"""Experiment report: a markdown file with PNG plots beside it, and a self-contained HTML twin.

The markdown document is the single source: the HTML is rendered from it by a small renderer
here (headings, tables, lists, paragraphs, code, images) that inlines every image as a base64
data URI, so ``report.html`` is one file that can be mailed or archived without its folder.
We render ourselves rather than use the optional ``markdown`` package so the output does not
depend on what happens to be installed, and so no image can slip through as an external ref.

All prose that states a finding (headline, difficulty reading) is computed from the numbers.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import re
import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from tracewise.core.config import doc
from tracewise.report.diagnostics import consistency, consistency_reading, consistency_table, plot_solve_histogram
from tracewise.evaluate.metrics import level_breakdown, read_summary, write_summary
from tracewise.core.records import Sample, read_records

log = logging.getLogger(__name__)

CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}th,td{border:1px solid #ccc;padding:.3em .6em}
th{background:#f3f3f3}tr.hl td{background:#fff4c2}img{max-width:100%}pre{background:#f6f6f6;padding:.6em}"""


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


@dataclass
class Section:
    """One report section: a title, a markdown body and PNG images shown after the body."""

    title: str
    markdown: str
    images: list[Path] = field(default_factory=list)


def section_from_dict(d: dict, where: str) -> Section:
    """Build a ``Section`` from ``{title, markdown, images}``, raising ``ValueError`` naming ``where``."""
    if not isinstance(d, dict) or set(d) - {"title", "markdown", "images"}:
        raise ValueError(f"{where}: expected a mapping with keys title, markdown, images; got {d!r}")
    title, body, images = d.get("title"), d.get("markdown", ""), d.get("images", [])
    if not isinstance(title, str) or not title.strip() or not isinstance(body, str):
        raise ValueError(f"{where}: 'title' must be a non-empty string and 'markdown' a string")
    if not isinstance(images, list) or not all(isinstance(p, str) for p in images):
        raise ValueError(f"{where}: 'images' must be a list of file paths")
    missing = [p for p in images if not Path(p).is_file()]
    if missing:
        raise ValueError(f"{where}: image(s) not found: {missing}")
    return Section(title, body, [Path(p) for p in images])


def load_section_file(path: str | Path) -> Section:
    """Read a study's ``section.json``; image paths in it are relative to the file's directory."""
    path = Path(path)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable section JSON ({e})") from e
    if isinstance(d, dict) and isinstance(d.get("images"), list):
        d = {**d, "images": [str(path.parent / p) if not Path(p).is_absolute() else p for p in d["images"]]}
    return section_from_dict(d, str(path))


def write_section_file(path: str | Path, title: str, markdown: str, images: list[str | Path] = ()) -> Path:
    """Write a study's report section as JSON (images stored relative to ``path``'s directory)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rel = [str(Path(p).resolve().relative_to(path.parent.resolve())) if Path(p).resolve().is_relative_to(
        path.parent.resolve()) else str(Path(p).resolve()) for p in images]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"title": title, "markdown": markdown, "images": rel}, indent=2), encoding="utf-8")
    tmp.replace(path)
    return path


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
    """(label, steps, losses) from an HF ``log_history.json``; entries without a loss are skipped."""
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
    if not points:
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


def headline(rows: list[dict]) -> str:
    """One line per benchmark comparing the most token-hungry experiment with the thriftiest."""
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
    return "\n\n".join(lines)


def plot_accuracy_vs_tokens(rows: list[dict], path: Path) -> Path:
    """Scatter of pass@1 (circles) and pass@8 (triangles) against mean tokens, with CI bars."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    multi = len({r["benchmark"] for r in rows}) > 1
    for i, r in enumerate(rows):
        color = f"C{i % 10}"
        x = r["mean_tokens"]
        for key, marker in (("pass@1", "o"), ("pass@8", "^")):
            y = r[key]
            ci = r["ci95"].get(key)
            # a percentile CI need not straddle the point; clip so matplotlib gets non-negative bars
            yerr = [[max(0.0, y - ci[0])], [max(0.0, ci[1] - y)]] if ci else None
            ax.errorbar([x], [y], yerr=yerr, fmt=marker, color=color, capsize=3)
        label = f"{r['experiment']} ({r['benchmark']})" if multi else r["experiment"]
        ax.annotate(label, (x, r["pass@1"]), textcoords="offset points", xytext=(6, -10), fontsize=8)
    if all(r["mean_tokens"] > 0 for r in rows):
        ax.set_xscale("log")  # teachers differ by multiples in length, so ratios read better on a log axis
    ax.set_xlabel("mean tokens per sample")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    handles = [Line2D([], [], marker=m, ls="", color="k", label=k) for k, m in (("pass@1", "o"), ("pass@8", "^"))]
    ax.legend(handles=handles, loc="lower right")
    return _save(fig, path)


def plot_learning_curves(curves: list[tuple[str, list[float], list[float]]], path: Path) -> Path:
    """Training loss against step, one line per run."""
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    for label, steps, losses in curves:
        ax.plot(steps, losses, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (log scale)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


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


def _inline(text: str, base: Path) -> str:
    """Escape, then render `code`, **bold**, images (as data URIs) and links."""
    out = html.escape(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)

    def image(m: re.Match) -> str:
        target = base / html.unescape(m.group(2))
        if not target.is_file():  # never emit a src to a file outside the HTML
            return f"[missing image: {m.group(1)}]"
        data = base64.b64encode(target.read_bytes()).decode("ascii")
        alt = m.group(1).replace('"', "&quot;")
        return f'<img alt="{alt}" src="data:image/png;base64,{data}">'

    out = re.sub(r"!\[([^\]]*)\]\(([^)]+)\)", image, out)
    return re.sub(r"\[([^\]]+)\]\(([^)]+)\)", r'<a href="\2">\1</a>', out)


def markdown_to_html(text: str, base: Path) -> str:
    """Render the markdown subset this report writes; images resolve relative to ``base``."""
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            j = next((k for k in range(i + 1, len(lines)) if lines[k].startswith("```")), len(lines))
            out.append("<pre>" + html.escape("\n".join(lines[i + 1 : j])) + "</pre>")
            i = j + 1
        elif m := re.match(r"(#{1,6})\s+(.*)", line):
            out.append(f"<h{len(m.group(1))}>{_inline(m.group(2), base)}</h{len(m.group(1))}>")
            i += 1
        elif line.lstrip().startswith("|"):
            j = next((k for k in range(i, len(lines)) if not lines[k].lstrip().startswith("|")), len(lines))
            out.append(_table_html(lines[i:j], base))
            i = j
        elif re.match(r"\s*[-*]\s+", line):
            items = []
            while i < len(lines) and re.match(r"\s*[-*]\s+", lines[i]):
                items.append("<li>" + _inline(re.sub(r"\s*[-*]\s+", "", lines[i], count=1), base) + "</li>")
                i += 1
            out.append("<ul>" + "".join(items) + "</ul>")
        elif not line.strip():
            i += 1
        else:
            para = []
            while i < len(lines) and lines[i].strip() and not re.match(r"(#|\||```|\s*[-*]\s)", lines[i].lstrip()):
                para.append(lines[i].strip())
                i += 1
            out.append("<p>" + _inline(" ".join(para), base) + "</p>")
    return "\n".join(out)


def _table_html(rows: list[str], base: Path) -> str:
    def cells(line: str) -> list[str]:
        return [c.strip() for c in line.strip().strip("|").split("|")]

    body = [r for r in rows if not re.fullmatch(r"\s*\|?[\s:|-]+\|?\s*", r)]  # drop the |---| separator
    head, rest = cells(body[0]), body[1:]
    parts = ["<table><thead><tr>" + "".join(f"<th>{_inline(c, base)}</th>" for c in head) + "</tr></thead><tbody>"]
    for r in rest:
        cs = cells(r)
        cls = ' class="hl"' if cs and cs[0].startswith("**") else ""
        parts.append(f"<tr{cls}>" + "".join(f"<td>{_inline(c, base)}</td>" for c in cs) + "</tr>")
    return "".join(parts) + "</tbody></table>"


def _group_samples(sample_paths: list[str]) -> dict[tuple[str, str], list[Sample]]:
    """Samples of every file, grouped by (benchmark, experiment); read once for every section."""
    grouped: dict[tuple[str, str], list[Sample]] = defaultdict(list)
    for path in sample_paths:
        for s in read_records(path, Sample):
            grouped[(s.benchmark, s.experiment)].append(s)
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


def run(cfg: ReportConfig) -> Path:
    """Write report.md, report.html and the merged summary.json into ``cfg.out``; return the HTML path."""
    cfg.validate()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = load_rows(cfg.summaries)
    sections = [
        Section("Headline", headline(rows)),
        Section("Results", metrics_table(rows)),
        Section("Accuracy vs tokens", "", [plot_accuracy_vs_tokens(rows, out / "accuracy_vs_tokens.png")]),
    ]
    if cfg.train_logs:
        curves = [load_train_log(p) for p in cfg.train_logs]
        sections.append(Section("Learning curves", "", [plot_learning_curves(curves, out / "learning_curves.png")]))
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
    if cfg.curate_table:
        sections.append(Section("Curation", Path(cfg.curate_table).read_text(encoding="utf-8")))
    for i, d in enumerate(cfg.extra_sections):
        sections.append(section_from_dict(d, f"report.extra_sections[{i}]"))
    for f in cfg.section_files:
        sections.append(load_section_file(f))
    from tracewise.report import controls as controls_report  # imports this module: not at the top

    if controls_report.has_control_rows(rows) and not any(s.title.startswith(controls_report.TITLE) for s in sections):
        sections.extend(Section(title, body, images) for title, body, images in controls_report.sections(rows, out))

    md = render_markdown(cfg.title, sections, out)
    (out / "report.md").write_text(md, encoding="utf-8")
    page = (f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(cfg.title)}</title>'
            f"<style>{CSS}</style></head><body>\n{markdown_to_html(md, out)}\n</body></html>\n")
    html_path = out / "report.html"
    html_path.write_text(page, encoding="utf-8")
    write_summary(out / "summary.json", rows)
    log.info("report written to %s (%d experiments, %d sections)", html_path, len(rows), len(sections))
    return html_path


def render_markdown(title: str, sections: list[Section], out: Path) -> str:
    """The report as markdown; images outside ``out`` are copied in so relative refs resolve."""
    parts = [f"# {title}"]
    for n, sec in enumerate(sections):
        parts.append(f"## {sec.title}")
        if sec.markdown.strip():
            parts.append(sec.markdown.strip())
        for img in sec.images:
            if not img.is_file():
                raise ValueError(f"section {sec.title!r}: image {img} not found")
            if img.resolve().parent != out.resolve():
                # prefix with the section number so two studies' "plot.png" cannot overwrite each other
                dest = out / f"section{n}-{img.name}"
                shutil.copyfile(img, dest)
                img = dest
            parts.append(f"![{sec.title}]({img.name})")
    return "\n\n".join(parts) + "\n"
