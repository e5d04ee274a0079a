"""Markdown to self-contained HTML for the report.

The markdown document is the single source: the HTML is rendered from it by a small renderer
here (headings, tables, lists, paragraphs, code, images) that inlines every image as a base64
data URI, so ``report.html`` is one file that can be mailed or archived without its folder.
We render ourselves rather than use the optional ``markdown`` package so the output does not
depend on what happens to be installed, and so no image can slip through as an external ref.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
import shutil
from pathlib import Path

from tracewise.report.sections import Section

# report.md marks where a section's raw HTML fragment goes in report.html: this comment on a line of its
# own, with the section number and a digest of the fragment (a study's markdown cannot guess it).
_FRAGMENT = "<!-- tracewise:html {n} {digest} -->"

CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}th,td{border:1px solid #ccc;padding:.3em .6em}
th{background:#f3f3f3}tr.hl td{background:#fff4c2}img{max-width:100%}pre{background:#f6f6f6;padding:.6em}"""


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
        if sec.html:
            parts.append(_marker(n, sec.html))
    return "\n\n".join(parts) + "\n"


def _marker(n: int, fragment: str) -> str:
    return _FRAGMENT.format(n=n, digest=hashlib.sha256(fragment.encode("utf-8")).hexdigest()[:16])


def html_fragments(sections: list[Section]) -> dict[str, str]:
    """``{marker line: fragment}`` of the sections that carry raw HTML (for ``html_page``)."""
    return {_marker(n, sec.html): sec.html for n, sec in enumerate(sections) if sec.html}


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


def markdown_to_html(text: str, base: Path, fragments: dict[str, str] | None = None) -> str:
    """Render the markdown subset this report writes; images resolve relative to ``base``. A line that is
    a key of ``fragments`` (see ``html_fragments``) becomes that fragment, raw, once; any other text,
    HTML comments included, is escaped."""
    out: list[str] = []
    pending = dict(fragments or {})
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.strip() in pending:
            out.append(pending.pop(line.strip()))
            i += 1
        elif line.startswith("```"):
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


def html_page(title: str, markdown: str, base: Path, fragments: dict[str, str] | None = None) -> str:
    """The whole ``report.html``: ``markdown`` rendered, images inlined from ``base``, the sections' raw
    HTML ``fragments`` (``html_fragments``) in place of their marker lines."""
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head><body>\n{markdown_to_html(markdown, base, fragments)}\n</body></html>\n")
