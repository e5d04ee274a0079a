"""Domains of the embedded world beyond arithmetic, and the registry that names them.

``DOMAINS`` maps a domain name (``problems.world.domain``) to a :class:`Domain`: a seeded problem
generator plus the pieces the procedural teachers need (the teacher's own, possibly mistaken,
execution and the r1 / gpt-oss thinking text). ``arith`` is listed for completeness; its problems
and traces keep their original code path in ``world/problems.py`` and ``world/teachers.py`` so that
every existing math run is byte-identical.

Every domain follows the arithmetic world's recipe, so a style comparison means the same thing in
each: a start state, L+1 marked steps ``(a) (b) ...`` at level L, each step a small learnable
operation, and a final question; both teachers carry exactly the same computation (one state per
step), the verbose one only adds words around it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

from tracewise.core.records import Problem


@dataclass(frozen=True)
class Domain:
    """One embedded-world domain.

    ``make_problem(rng, pid, level, split)`` draws a problem; ``solve(problem, rng, error_rate)``
    is the teacher's execution ``(steps, erred)`` where each step is ``(label, before, after)``
    and an error at one step propagates; ``answer(problem, steps)`` is the final answer the
    teacher states; ``r1_thinking`` / ``gptoss_thinking`` render the thinking span.
    """

    name: str
    description: str
    make_problem: Callable[[random.Random, str, int, str], Problem]
    solve: Callable[[Problem, random.Random, float], tuple[list[tuple], bool]]
    answer: Callable[[Problem, list[tuple]], str]
    r1_thinking: Callable[..., str]
    gptoss_thinking: Callable[[Problem, list[tuple]], str]


def _registry() -> dict[str, Domain | None]:
    from tracewise.world.domains import listops, ordering

    # None: handled natively by world/problems.py and world/teachers.py (unchanged code path).
    return {"arith": None, "ordering": ordering.DOMAIN, "listops": listops.DOMAIN}


DOMAINS: dict[str, Domain | None] = _registry()
DOMAIN_NAMES: tuple[str, ...] = tuple(DOMAINS)


def get_domain(name: str, where: str = "world.domain") -> Domain | None:
    """The registered domain ``name`` (None for the native ``arith``); ValueError naming the valid ones."""
    if name not in DOMAINS:
        raise ValueError(f"{where}: unknown domain {name!r}; valid: {list(DOMAIN_NAMES)}")
    return DOMAINS[name]
