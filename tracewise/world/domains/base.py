"""What every embedded-world domain is (:class:`Domain`) and the vocabulary they share.

Imports nothing above ``tracewise.core``: the domain modules, ``world/problems.py`` and
``world/teachers.py`` all build on it, and the registry (``tracewise.world.domains``) on them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

from tracewise.core.records import Problem

NAMES = ["Ann", "Ben", "Cara", "Dan", "Eva", "Finn", "Gina", "Hugo", "Ivy", "Jack", "Kim", "Leo"]
MARKERS = "abcdefgh"  # steps are listed as (a), (b), ... in every domain


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
