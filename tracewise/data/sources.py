"""Where problems come from: the embedded world, or a JSONL file of Problem-shaped rows.

Real benchmark loaders (GSM8K, MATH-500, AIME) plug in here by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tracewise.data.benchmarks import BENCHMARKS, benchmark_path, load_benchmark
from tracewise.core.config import doc
from tracewise.core.records import Problem, from_dict, iter_jsonl
from tracewise.world.problems import WorldConfig, generate_problems


@dataclass
class ProblemsConfig:
    """Which problems a stage works on."""

    source: str = doc("'world' for the embedded world, a benchmark name (gsm8k, math500, aime24, gsm8k_train, "
                      "math_train; see tracewise.data.benchmarks), or a path to a JSONL file with "
                      "id/question|problem/answer.", "world")
    split: str = doc("World split to use: 'train' or 'test'.", "train")
    limit: int | None = doc("Use only the first N problems (None = all).", None)
    world: WorldConfig = doc("Embedded world settings (used when source='world').", factory=WorldConfig)

    def validate(self) -> None:
        if self.split not in ("train", "test"):
            raise ValueError(f"problems.split: expected 'train' or 'test', got {self.split!r}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"problems.limit must be >= 1, got {self.limit}")
        if self.source != "world" and self.source not in BENCHMARKS and not Path(self.source).exists():
            raise ValueError(f"problems.source: {self.source}: file not found "
                             f"(use 'world', a JSONL path or a benchmark: {sorted(BENCHMARKS)})")
        if self.source == "world":
            self.world.validate()

    def input_files(self) -> list[str]:
        """Files whose bytes define the problems (for the run-dir hash)."""
        if self.source in BENCHMARKS:
            return [str(benchmark_path(self.source))]
        return [] if self.source == "world" else [self.source]


def read_problem_file(path: str | Path) -> list[Problem]:
    """Read problems from JSONL: Problem records, or plain rows with ``problem``/``question`` and ``answer``."""
    out, seen = [], set()
    for lineno, row in iter_jsonl(path):
        where = f"{path}:{lineno}"
        if "_kind" in row:
            p = from_dict(Problem, row, where)
        else:
            q = row.get("question", row.get("problem"))
            if not isinstance(q, str) or "answer" not in row or "id" not in row:
                raise ValueError(f"{where}: expected fields 'id', 'question' (or 'problem') and 'answer'")
            level = row.get("level", 0)
            p = Problem(
                id=str(row["id"]),
                question=q,
                answer=str(row["answer"]),
                level=level if isinstance(level, int) else 0,
                domain=str(row.get("domain", "math")),
                split=str(row.get("split", "test")),
                source=str(row.get("source", Path(path).stem)),
            )
        if p.id in seen:
            raise ValueError(f"{where}: duplicate problem id {p.id!r}")
        seen.add(p.id)
        out.append(p)
    if not out:
        raise ValueError(f"{path}: no problems found (empty file)")
    return out


def load_problems(cfg: ProblemsConfig) -> list[Problem]:
    if cfg.source in BENCHMARKS:
        return load_benchmark(cfg.source, limit=cfg.limit)
    problems = generate_problems(cfg.world, cfg.split) if cfg.source == "world" else read_problem_file(cfg.source)
    return problems[: cfg.limit] if cfg.limit else problems
