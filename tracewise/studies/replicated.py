"""Replicate seeds in the studies: a variant's eval runs per seed, its row over seeds, paired comparisons.

Every study evaluates each variant once per seed of its ``seeds`` (the same list for all variants), so
two variants are compared on the same problems and seeds: ``Replicates.compare`` bootstraps their
paired per-problem difference (``tracewise.evaluate.replicates.compare``: problems within seeds, then
seeds), and a reading calls a difference real only when its 95% interval excludes the null
(``Comparison.reading``: "not distinguishable from zero at this size (n problems × k seeds)"). Table
cells (``tracewise.evaluate.replicates.cell``) show the mean over seeds, the seed SD (with several seeds)
and the hierarchical 95% interval. ``per_seed`` decides which finished student a replicate seed uses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence, TypeVar

from tracewise.core.records import Sample, read_records
from tracewise.evaluate.metrics import read_summary
from tracewise.evaluate.replicates import Comparison, ProblemTable, combine_rows, compare, problem_table

T = TypeVar("T")


class Replicates:
    """``runs``: key → one eval run dir per seed (seed order shared by every key). ``experiments`` maps a
    key to the experiment label its samples and rows carry inside those dirs (default: the key itself;
    a budget sweep's dir holds several labels), or to one label per dir when each seed's run is labelled
    apart (``r1-s0``, ``r1-s1``)."""

    def __init__(self, runs: dict[str, Sequence[str | Path]], experiments: dict[str, str | Sequence[str]] | None = None,
                 n_boot: int = 2000):
        self.runs = {k: [Path(d) for d in v] for k, v in runs.items()}
        self.experiments = experiments or {}
        self.n_boot = n_boot
        self._samples: dict[Path, list[Sample]] = {}
        self._tables: dict[str, list[ProblemTable]] = {}

    def label(self, key: str) -> str:
        labels = self.experiments.get(key, key)
        return labels if isinstance(labels, str) else labels[0]

    def _labels(self, key: str) -> list[str]:
        """The label of ``key`` in each of its run dirs, in seed order."""
        labels = self.experiments.get(key, key)
        if isinstance(labels, str):
            return [labels] * len(self.runs[key])
        if len(labels) != len(self.runs[key]):
            raise ValueError(f"{key}: {len(labels)} labels for {len(self.runs[key])} run dirs")
        return list(labels)

    def _read(self, run_dir: Path) -> list[Sample]:
        if run_dir not in self._samples:
            self._samples[run_dir] = read_records(run_dir / "samples.jsonl", Sample)
        return self._samples[run_dir]

    def tables(self, key: str) -> list[ProblemTable]:
        """Per-problem tables of ``key``, one per seed."""
        if key not in self._tables:
            tables = []
            for d, label in zip(self.runs[key], self._labels(key)):
                samples = [s for s in self._read(d) if s.experiment == label]
                if not samples:
                    raise ValueError(f"{d}: no samples of {label!r}")
                tables.append(problem_table(samples))
            self._tables[key] = tables
        return self._tables[key]

    def row(self, key: str) -> dict:
        """``key``'s summary row over its seeds (means, ``seeds``, ``sd``, hierarchical ``ci95``)."""
        rows = []
        for d, label in zip(self.runs[key], self._labels(key)):
            found = [r for r in read_summary(d / "summary.json") if r["experiment"] == label]
            if len(found) != 1:
                raise ValueError(f"{d}/summary.json: expected one row of {label!r}, found {len(found)}")
            rows.append(found[0])
        return combine_rows(rows, self.tables(key), n_boot=self.n_boot)

    def compare(self, a: str, b: str, metrics: Sequence[str] = ("pass@1",)) -> list[Comparison]:
        """Paired ``a − b`` per metric and the token ratio ``b / a``, with 95% intervals."""
        return compare(a, self.tables(a), b, self.tables(b), metrics=metrics, n_boot=self.n_boot)


def stats(row: dict) -> dict:
    """The replicate statistics of a row, to carry into a study's results: seeds, sd, ci95."""
    return {"seeds": row.get("seeds", 1), "sd": row.get("sd", {}), "ci95": row.get("ci95", {})}


def find(comparisons: Sequence[Comparison], a: str, b: str, metric: str = "pass@1") -> Comparison | None:
    """The comparison ``a`` vs ``b`` on ``metric``, if it was computed."""
    return next((c for c in comparisons if (c.a, c.b, c.metric) == (a, b, metric)), None)


def per_seed(runs: Sequence[tuple[int | None, float, T]], seeds: Sequence[int], where: str) -> list[T]:
    """The run each replicate seed uses, from one student's finished runs ``(train seed, mtime, item)``.

    A run that trained several seeds of the student (quickstart ``seeds=3``) gives replicate seed s the
    newest run trained with seed s (a missing one is an error); a student with one train seed gives its
    newest run to every replicate, whose seed then varies the sampling only."""
    if not runs:
        raise ValueError(f"{where}: no finished run")
    trained = sorted({s for s, _t, _x in runs if s is not None})
    if len(trained) <= 1:
        newest = max(runs, key=lambda r: r[1])[2]
        return [newest] * len(seeds)
    missing = [s for s in seeds if s not in trained]
    if missing:
        raise ValueError(f"{where}: trained with seeds {trained}, not {missing}; set seeds to some of {trained}")
    return [max((r for r in runs if r[0] == s), key=lambda r: r[1])[2] for s in seeds]
