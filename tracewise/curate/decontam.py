"""Decontamination and deduplication of a training pool, before curation picks from it.

Decontamination: a training problem is dropped when it shares a word n-gram (default 8 words, as
s1 did) with any question of an evaluation set in use: GSM8K test, MATH-500 and AIME 2024 from the
local data directory, the embedded world's test split of every generate run drawn from the world,
and any user file. Texts shorter than n words are compared whole. Counts go per eval set (a problem
overlapping two sets counts in both) and per reason.

Deduplication: exact duplicates by a hash of the normalised text, then near duplicates by MinHash
(``datasketch``) over word shingles, each candidate pair confirmed by exact Jaccard so a MinHash
collision never drops a problem. In both cases the problem with the smallest id stays, so the
result does not depend on input order.

Measured on the embedded world (templated questions of ~21 words): 8-grams flag about 20% of the
train pool as overlapping the world test split (shared template spans plus equal numbers, never a
whole question; 13-grams flag 0.05%). This is reported, not hidden: raise ``decontam.ngram`` for
templated worlds if that is too strict.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from tracewise.core.config import doc
from tracewise.core.records import Problem

log = logging.getLogger(__name__)

DEFAULT_BENCHMARKS = ("gsm8k", "math500", "aime24")
_WORD = re.compile(r"[a-z0-9]+")


@dataclass
class DecontamConfig:
    """What to remove from the training pool before curation (``curate.decontam.*``)."""

    enabled: bool = doc("Drop training problems that overlap an evaluation set.", True)
    ngram: int = doc("Word n-gram length of the overlap test (s1 used 8).", 8)
    benchmarks: list[str] = doc(
        "Benchmarks in the local data dir to decontaminate against; a missing file is skipped with a "
        "warning and shown as 'not found' in the table.", factory=lambda: list(DEFAULT_BENCHMARKS))
    # Off by default: the world's splits are disjoint by construction (tested), and its templated
    # questions share 8-grams ("How many eggs does Ann have now") without sharing a problem, so an
    # n-gram check there measures the template, not contamination (it dropped 20.6% of the quickstart pool).
    world_test: bool = doc("Also the embedded world's test split of every generate run drawn from the world "
                           "(template n-grams make this drop ~20% of world problems that are not test problems).",
                           False)
    files: list[str] = doc("User evaluation files (JSONL/parquet with a problem/question column).", factory=list,
                           hash=False)
    dedup: bool = doc("Drop exact and near duplicates inside the training pool.", True)
    near_dup_threshold: float = doc("Jaccard similarity of word shingles at or above which two problems are "
                                    "near duplicates (1.0 = exact duplicates only).", 0.8)
    shingle: int = doc("Words per shingle for near-duplicate detection.", 5)
    num_perm: int = doc("MinHash permutations (more = fewer missed candidates).", 128)

    def validate(self) -> None:
        if self.ngram < 1:
            raise ValueError(f"curate.decontam.ngram must be >= 1, got {self.ngram}")
        if self.shingle < 1:
            raise ValueError(f"curate.decontam.shingle must be >= 1, got {self.shingle}")
        if not 0.0 < self.near_dup_threshold <= 1.0:
            raise ValueError(f"curate.decontam.near_dup_threshold must be in (0, 1], got {self.near_dup_threshold}")
        if self.num_perm < 16:
            raise ValueError(f"curate.decontam.num_perm must be >= 16, got {self.num_perm}")
        from tracewise.data.benchmarks import BENCHMARKS

        bad = [b for b in self.benchmarks if b not in BENCHMARKS]
        if bad:
            raise ValueError(f"curate.decontam.benchmarks: unknown {bad}; valid: {sorted(BENCHMARKS)} "
                             "(put other files in curate.decontam.files)")
        missing = [f for f in self.files if not Path(f).is_file()]
        if missing:
            raise ValueError(f"curate.decontam.files: not found: {missing}")


def words(text: str) -> list[str]:
    """Lower-cased alphanumeric words: punctuation, LaTeX '$' and spacing never hide an overlap."""
    return _WORD.findall(text.lower())


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """Word n-grams of ``text``; a text shorter than n words is one gram (the whole text)."""
    ws = words(text)
    if len(ws) < n:
        return {tuple(ws)} if ws else set()
    return {tuple(ws[i:i + n]) for i in range(len(ws) - n + 1)}


def text_hash(text: str) -> str:
    return hashlib.sha256(" ".join(words(text)).encode()).hexdigest()


@dataclass
class EvalSet:
    """Question texts of one evaluation set (``where`` names it in tables and errors)."""

    name: str
    texts: list[str]
    where: str = ""


def _questions(path: str | Path, field: str | None = None) -> list[str]:
    from tracewise.data.benchmarks import QUESTION_COLUMNS, iter_rows

    out = []
    for where, row in iter_rows(str(path)):
        col = field or next((c for c in QUESTION_COLUMNS if c in row), None)
        if col is None or not isinstance(row.get(col), str):
            raise ValueError(f"{where}: no question column (tried {list(QUESTION_COLUMNS)})")
        out.append(row[col])
    return out


def eval_sets(cfg: DecontamConfig, world_configs: Iterable = ()) -> tuple[list[EvalSet], list[str]]:
    """The evaluation sets to check, and the names of default benchmarks whose file is missing."""
    from tracewise.data.benchmarks import BENCHMARKS, benchmark_path
    from tracewise.world.problems import generate_problems

    sets, missing = [], []
    for name in cfg.benchmarks:
        try:
            path = benchmark_path(name)
        except ValueError as e:  # a fresh machine has no shared data: curation must still run
            log.warning("decontam: %s; not checked against %s", e, name)
            missing.append(name)
            continue
        sets.append(EvalSet(name, _questions(path, BENCHMARKS[name].question_field), str(path)))
    if cfg.world_test:
        seen: set[str] = set()
        for wc in world_configs:
            texts = [p.question for p in generate_problems(wc, "test")]
            key = text_hash("\n".join(texts))
            if texts and key not in seen:  # several teachers' runs usually share one world
                seen.add(key)
                name = "world_test" if len(seen) == 1 else f"world_test_{len(seen)}"
                sets.append(EvalSet(name, texts, f"embedded world (seed {wc.seed}, {len(texts)} test problems)"))
    for f in cfg.files:
        sets.append(EvalSet(Path(f).stem, _questions(f), str(f)))
    return sets, missing


def contaminated(problems: list[Problem], sets: list[EvalSet], n: int) -> dict[str, list[str]]:
    """problem id -> names of the eval sets it shares a word n-gram with.

    Texts shorter than n words cannot share an n-gram, so they are matched whole: a short training
    question found inside an eval question (or a short eval question inside a training one) counts.
    """
    index: dict[tuple[str, ...], set[str]] = {}
    short_eval: list[tuple[str, str]] = []  # (" w1 w2 ", set name) for eval texts under n words
    joined: dict[str, str] = {}  # set name -> all its texts, normalised, for short training texts
    for s in sets:
        for t in s.texts:
            ws = words(t)
            if len(ws) < n:
                if ws:
                    short_eval.append((f" {' '.join(ws)} ", s.name))
                continue
            for i in range(len(ws) - n + 1):
                index.setdefault(tuple(ws[i:i + n]), set()).add(s.name)
        joined[s.name] = " " + " | ".join(" ".join(words(t)) for t in s.texts) + " "
    hits: dict[str, list[str]] = {}
    for p in problems:
        ws = words(p.question)
        names: set[str] = set()
        if len(ws) >= n:
            for i in range(len(ws) - n + 1):
                names |= index.get(tuple(ws[i:i + n]), set())
        elif ws:
            needle = f" {' '.join(ws)} "
            names |= {name for name, text in joined.items() if needle in text}
        text = f" {' '.join(ws)} "
        names |= {name for needle, name in short_eval if needle in text}
        if names:
            hits[p.id] = sorted(names)
    return hits


def near_duplicates(problems: list[Problem], cfg: DecontamConfig) -> tuple[dict[str, str], dict[str, str]]:
    """``(exact, near)``: dropped id -> the id it duplicates (kept: the smaller id of each group)."""
    from datasketch import MinHash, MinHashLSH

    exact: dict[str, str] = {}
    first_of: dict[str, str] = {}
    rest = []
    for p in sorted(problems, key=lambda q: q.id):
        h = text_hash(p.question)
        if h in first_of:
            exact[p.id] = first_of[h]
        else:
            first_of[h] = p.id
            rest.append(p)
    near: dict[str, str] = {}
    if cfg.near_dup_threshold >= 1.0:
        return exact, near
    lsh = MinHashLSH(threshold=cfg.near_dup_threshold, num_perm=cfg.num_perm)
    shingles: dict[str, set] = {}
    for p in rest:  # ascending id: a problem is compared with the kept ones before it
        sh = {" ".join(g) for g in ngrams(p.question, cfg.shingle)}
        shingles[p.id] = sh
        m = MinHash(num_perm=cfg.num_perm, seed=1)
        m.update_batch([s.encode() for s in sorted(sh)])
        # MinHash only proposes candidates; exact Jaccard decides, so a collision never drops a problem.
        match = sorted(c for c in lsh.query(m) if _jaccard(sh, shingles[c]) >= cfg.near_dup_threshold)
        if match:
            near[p.id] = match[0]
        else:
            lsh.insert(p.id, m)
    return exact, near


def _jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


@dataclass
class CleanPool:
    """Which problem ids survive, and why the others were dropped (for the curate table)."""

    kept: set[str]
    dropped: dict[str, str]  # id -> "contaminated" | "exact_duplicate" | "near_duplicate"
    report: dict


def clean_pool(problems: dict[str, Problem], cfg: DecontamConfig, world_configs: Iterable = ()) -> CleanPool:
    """Decontaminate, then deduplicate what is left; the report is JSON-ready."""
    dropped: dict[str, str] = {}
    report: dict = {"decontam": None, "dedup": None}
    pool = [problems[k] for k in sorted(problems)]
    if cfg.enabled:
        sets, missing = eval_sets(cfg, world_configs)
        hits = contaminated(pool, sets, cfg.ngram)
        dropped.update({pid: "contaminated" for pid in hits})
        report["decontam"] = {
            "ngram": cfg.ngram, "dropped": len(hits), "not_found": missing,
            "per_eval_set": {s.name: {"n_texts": len(s.texts), "dropped": sum(s.name in v for v in hits.values()),
                                      "where": s.where} for s in sets},
            "examples": [{"problem_id": k, "eval_sets": v} for k, v in sorted(hits.items())[:5]],
        }
    if cfg.dedup:
        exact, near = near_duplicates([p for p in pool if p.id not in dropped], cfg)
        dropped.update({pid: "exact_duplicate" for pid in exact})
        dropped.update({pid: "near_duplicate" for pid in near})
        report["dedup"] = {
            "exact": len(exact), "near": len(near), "threshold": cfg.near_dup_threshold, "shingle": cfg.shingle,
            "examples": [{"problem_id": k, "duplicate_of": v, "kind": "exact" if k in exact else "near"}
                         for k, v in sorted({**exact, **near}.items())[:5]],
        }
    report["problems_in"] = len(pool)
    report["dropped"] = len(dropped)
    return CleanPool({p.id for p in pool} - set(dropped), dropped, report)


def render(report: dict) -> list[str]:
    """Markdown bullet lines for the curate table."""
    lines = []
    d = report.get("decontam")
    if d:
        per = ", ".join(f"{name} {e['dropped']} (of {e['n_texts']} eval questions)"
                        for name, e in d["per_eval_set"].items()) or "no eval set found"
        miss = f"; not found, NOT checked: {', '.join(d['not_found'])}" if d["not_found"] else ""
        lines.append(f"- Decontamination ({d['ngram']}-gram overlap): dropped {d['dropped']} of "
                     f"{report['problems_in']} problems; per eval set: {per}{miss}.")
    u = report.get("dedup")
    if u:
        lines.append(f"- Dedup: dropped {u['exact']} exact and {u['near']} near duplicates "
                     f"(Jaccard >= {u['threshold']} over {u['shingle']}-word shingles).")
    return lines


def world_configs_of(generation_dirs: Iterable[str]) -> list:
    """World configs of the generate runs whose problems come from the embedded world."""
    from tracewise.core.config import load_config
    from tracewise.generate.stage import GenerateConfig

    out = []
    for d in generation_dirs:
        path = Path(d) / "config.yaml"
        if not path.is_file():
            continue
        try:
            cfg = load_config(GenerateConfig, path)
        except ValueError:  # not a generate run (an ingest run): its problems are not the embedded world's
            continue
        if cfg.problems.source == "world":
            out.append(cfg.problems.world)
    return out
