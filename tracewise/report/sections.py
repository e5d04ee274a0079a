"""Report sections: the ``Section`` type, section files that studies write (``write_section_file``)
and the report reads (``section_files``), and the registry of sections the report adds by itself.

A registered section builder is called as ``build(rows, out, sections)`` with the merged summary rows,
the output directory and the sections so far, and returns the sections to add (often none).
Registering by name keeps the report stage free of imports from the modules that build them: a
builder registers itself with ``@register_section("name")`` when its module is imported
(``tracewise.report`` imports its own, e.g. the test-time controls section).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tracewise.core.store import atomic_write_text


@dataclass
class Section:
    """One report section: a title, a markdown body and PNG images shown after the body.

    ``html`` is a trusted, self-contained HTML fragment built by tracewise itself (e.g. the sample
    viewer), inserted raw into report.html after the body; report.md gets a one-line pointer instead.
    Section files and ``extra_sections`` cannot set it, so a study's text is always escaped.
    """

    title: str
    markdown: str
    images: list[Path] = field(default_factory=list)
    html: str = ""


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
    return atomic_write_text(path, json.dumps({"title": title, "markdown": markdown, "images": rel}, indent=2))


SectionBuilder = Callable[[list[dict], Path, list[Section]], list[Section]]
SECTIONS: dict[str, SectionBuilder] = {}


def register_section(name: str) -> Callable[[SectionBuilder], SectionBuilder]:
    """Decorator: add ``build(rows, out, sections) -> list[Section]`` to every report as ``name``."""

    def add(build: SectionBuilder) -> SectionBuilder:
        if name in SECTIONS:
            raise ValueError(f"report section {name!r} is already registered")
        SECTIONS[name] = build
        return build

    return add


def get_section(name: str) -> SectionBuilder:
    """The registered section builder ``name``; ValueError listing the valid names."""
    if name not in SECTIONS:
        raise ValueError(f"unknown report section {name!r}; valid: {', '.join(sorted(SECTIONS)) or '(none)'}")
    return SECTIONS[name]
