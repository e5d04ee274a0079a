"""Replicate seeds as a config axis: ``seeds=3`` (seed … seed+2) or ``seeds=[0, 1, 2]``.

A stage run stays one seed: its config's ``seed`` (``sampling.seed`` for eval) is what its run dir
is keyed by, and ``seeds`` is never hashed. ``seeds`` only says how many runs to make; each is the
ordinary stage run with ``seed=s`` (``for_seed``), so replicates are cached and resumed like any run,
and their run dirs differ in the seed alone. Statistics over the replicates live in
``tracewise.evaluate.replicates``.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from tracewise.core.config import doc

C = TypeVar("C")
R = TypeVar("R", bound="Replicated")

SEEDS_HELP = ("Replicates: a count N (seeds seed … seed+N-1; seeds=3 for intervals over seeds) or an explicit list "
              "(seeds=[0,1,2]); 1 = the one run of `seed`.")


def seeds_field(varies: str) -> Any:
    """The ``seeds`` field of a config: the shared help text plus what a replicate varies; never hashed."""
    return doc(f"{SEEDS_HELP} {varies}", 1, hash=False)


def seed_list(seeds: int | Sequence[int]) -> list[int]:
    """``3`` → ``[0, 1, 2]``; an explicit list is kept (duplicates rejected: they are not replicates)."""
    if isinstance(seeds, bool):
        raise ValueError(f"seeds: expected a count or a list of ints, got {seeds!r}")
    if isinstance(seeds, int):
        if seeds < 1:
            raise ValueError(f"seeds: need at least 1, got {seeds}")
        return list(range(seeds))
    out = [int(s) for s in seeds]
    if not out:
        raise ValueError("seeds: empty list")
    dup = [s for s, c in Counter(out).items() if c > 1]
    if dup:
        raise ValueError(f"seeds: repeated seed(s) {dup} would count one run twice")
    return out


def resolve_seeds(seed: int, seeds: int | Sequence[int] | None) -> list[int]:
    """The replicate seeds: a count N is ``seed … seed+N-1``, a list is itself, None is ``[seed]``."""
    if seeds is None:
        return [seed]
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        return [seed + s for s in seed_list(seeds)]
    return seed_list(seeds)


class Replicated:
    """Mixin for a stage config with a ``seeds`` field; ``SEED`` is the dotted path of the field a
    replicate sets (``seed``, or ``sampling.seed`` for eval)."""

    SEED = "seed"
    seeds: Any  # the dataclass field (seeds_field)

    def base_seed(self) -> int:
        node: Any = self
        for part in self.SEED.split("."):
            node = getattr(node, part)
        return int(node)

    def seed_values(self) -> list[int]:
        return resolve_seeds(self.base_seed(), self.seeds)

    def for_seed(self: C, seed: int) -> C:
        """This config as the one run of ``seed`` (``seeds`` back to its default: the run dir and
        config.yaml of a replicate are those of an ordinary run with that seed)."""
        return _set(dataclasses.replace(self, seeds=1), self.SEED.split("."), seed)

    def validate_seeds(self, where: str) -> None:
        try:
            self.seed_values()
        except ValueError as e:
            raise ValueError(f"{where}.{e}") from None

    def check_one_seed(self, where: str) -> None:
        """A stage's ``run`` trains one seed; several go through ``run_seeds`` (the CLI does)."""
        if self.seed_values() != [self.base_seed()]:
            raise ValueError(f"{where}: seeds={self.seeds!r} asks for runs {self.seed_values()}; run(cfg) makes "
                             f"the one run of {self.SEED}={self.base_seed()}: use run_seeds(cfg)")


def _set(obj: Any, path: list[str], value: Any) -> Any:
    if len(path) == 1:
        return dataclasses.replace(obj, **{path[0]: value})
    return dataclasses.replace(obj, **{path[0]: _set(getattr(obj, path[0]), path[1:], value)})


def run_seeds(run: Callable[[R], Path], cfg: R) -> list[Path]:
    """``run`` once per replicate seed, one after another (each with the config's own threads, so the
    cores are never oversubscribed); a finished replicate is a no-op, an interrupted one resumes."""
    return [run(cfg.for_seed(s)) for s in cfg.seed_values()]
