"""Every atomic write (temp file + rename) uses a temp name of its own (``core.records.open_temp``): two
writers of one path never share a temp file, so neither loses its rename or publishes the other's bytes.

Each case runs writer B to completion in the window between writer A's temp write and A's rename (the
interleaving two processes can produce). With a fixed ``X.tmp`` name, B overwrites and renames A's
temp file, and A's rename then fails (or, where errors are swallowed, A's bytes never land)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tracewise.core import fingerprint
from tracewise.core.store import atomic_copy
from tracewise.curate.tables import _write_disagreements
from tracewise.evaluate.metrics import write_summary
from tracewise.report.sections import write_section_file
from tracewise.verify.stage import write_json


def _row(tag: str) -> dict:
    return {"experiment": tag, "benchmark": "b", "n": 1, "pass@1": 0.5, "pass@8": 0.5, "maj@8": 0.5,
            "mean_tokens": 1.0, "mean_thinking_tokens": 1.0, "mean_answer_tokens": 0.0, "ci95": {"pass@1": [0.0, 1.0]}}


def _copy(path: Path, tag: str) -> None:
    src = path.parent.parent / f"src-{tag}.jsonl"
    src.write_text(f'{{"who": "{tag}"}}\n')
    atomic_copy(src, path)


def _sha_cache(path: Path, tag: str) -> None:
    cache = fingerprint._ShaCache()
    cache.entries = {str(path.parent.parent / f"src-{tag}"): [0, 0, 0, 0, 0, tag]}
    cache.dirty = True
    cache.save()


# name -> (write(path, tag), read(path) -> the tag that landed)
WRITERS = {
    "curate.tables._write_disagreements": (lambda p, t: _write_disagreements(p, [{"who": t}]),
                                           lambda p: json.loads(p.read_text())["who"]),
    "evaluate.metrics.write_summary": (lambda p, t: write_summary(p, [_row(t)]),
                                       lambda p: json.loads(p.read_text())["rows"][0]["experiment"]),
    "report.sections.write_section_file": (lambda p, t: write_section_file(p, t, "body"),
                                           lambda p: json.loads(p.read_text())["title"]),
    "verify.stage.write_json": (lambda p, t: write_json(p, {"who": t}), lambda p: json.loads(p.read_text())["who"]),
    "core.store.atomic_copy": (_copy, lambda p: json.loads(p.read_text())["who"]),
    "core.fingerprint cache": (_sha_cache, lambda p: next(iter(json.loads(p.read_text()).values()))[-1]),
}


@pytest.mark.parametrize("name", WRITERS)
def test_two_writers_of_one_path_never_share_a_temp_file(name: str, tmp_path: Path, monkeypatch) -> None:
    write, read = WRITERS[name]
    out = tmp_path / "dir"
    out.mkdir()
    path = out / ("file_sha256.json" if "fingerprint" in name else "out.json")
    monkeypatch.setenv(fingerprint.CACHE_ENV, str(out))
    for tag in ("A", "B"):  # the cache keeps entries of files that exist
        (tmp_path / f"src-{tag}").write_text(tag)

    real_replace = os.replace
    temps: list[str] = []

    def replace(src, dst):
        temps.append(Path(src).name)
        if len(temps) == 1:  # A's rename: first let B write and rename the same path
            write(path, "B")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    write(path, "A")

    assert len(temps) == 2 and temps[0] != temps[1], temps  # each writer had its own temp file
    assert read(path) == "A"  # the later rename wins, whole
    assert sorted(p.name for p in out.iterdir()) == [path.name]  # and no temp file is left behind
