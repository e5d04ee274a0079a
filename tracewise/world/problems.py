"""Seeded generator of multi-step arithmetic word problems (the embedded world's math domain).

Why these numbers: a 2-layer student trained for a few minutes on CPU can learn single-digit
operand arithmetic with small intermediate values, but not two-digit operands (measured while
sizing the quickstart). So every operand is 1–9 and every intermediate value stays in
``[0, max_value]``; difficulty is the number of steps the student must chain.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from tracewise.core.config import doc
from tracewise.core.records import Problem
from tracewise.world.domains import get_domain
from tracewise.world.domains.base import MARKERS, NAMES

ITEMS = ["apples", "pens", "coins", "cards", "books", "shells", "stamps", "marbles", "eggs", "cups"]

# Phrasings per operation as (verb, clause); {b} = operand, {i} = item. Several per op so a student
# must read the verb, not memorise a position. Events are listed with markers (a), (b), ... and both
# teachers cite the marker and verb of the event they use ("(b) loses 2"), as real traces restate
# what they use. Measured while sizing the quickstart: without a citable marker a 2-layer student
# mostly failed at *finding* the k-th event's number (2 of 3 step errors), not at arithmetic.
PHRASES = {
    "+": [("gets", "gets {b} more"), ("finds", "finds {b} more"), ("buys", "buys {b} more")],
    "-": [("gives away", "gives away {b}"), ("loses", "loses {b}"), ("sells", "sells {b}")],
    "*": [("multiplies", "multiplies the {i} by {b}")],
}
SYMBOL_WORD = {"+": "plus", "-": "minus", "*": "times"}


@dataclass
class WorldConfig:
    """Which problems the embedded world generates."""

    seed: int = doc("Seed for problem generation; the same seed always gives the same problems.", 0)
    n_train: int = doc("Number of training problems (the teachers' pool).", 2000)
    n_test: int = doc("Number of held-out test problems (disjoint from train).", 200)
    levels: list[int] = doc("Difficulty levels to draw from; level L chains L+1 operations.", factory=lambda: [1, 2, 3])
    max_value: int = doc("Largest intermediate value allowed; 9 keeps every step a single-digit fact a tiny student can learn.", 9)
    domain: str = doc("World domain: 'arith' (the quickstart's math), 'ordering' or 'listops' "
                      "(see tracewise.world.domains).", "arith")
    ops: list[str] = doc(
        "Operations to draw from ('+', '-', '*'). Default +/-: with single-digit values '*' is rare and "
        "its phrasing costs a tiny student many steps to learn.", factory=lambda: ["+", "-"])

    def validate(self) -> None:
        if self.n_train < 0 or self.n_test < 0:
            raise ValueError("world: n_train and n_test must be >= 0")
        bad = [lv for lv in self.levels if lv not in (1, 2, 3, 4)]
        if bad or not self.levels:
            raise ValueError(f"world.levels: expected values in 1..4, got {self.levels}")
        if self.max_value < 9:
            raise ValueError("world.max_value must be >= 9")
        if not self.ops or set(self.ops) - {"+", "-", "*"}:
            raise ValueError(f"world.ops: expected a non-empty subset of ['+', '-', '*'], got {self.ops}")
        get_domain(self.domain)  # ValueError naming the valid domains


def _rng(seed: int, *parts: object) -> random.Random:
    h = hashlib.sha256("|".join(map(str, (seed, *parts))).encode()).digest()
    return random.Random(int.from_bytes(h[:8], "little"))


def _program(rng: random.Random, n_ops: int, max_value: int, ops: list[str]) -> tuple[int, list[tuple[str, int, int, int]]]:
    """Draw a start value and ``n_ops`` steps ``(op, operand, before, after)`` within bounds."""
    for _attempt in range(1000):
        start = rng.randint(2, 9)
        value, steps = start, []
        for _ in range(n_ops):
            options = []
            for op in ops:
                for b in range(1, 10):
                    after = value + b if op == "+" else value - b if op == "-" else value * b
                    if 1 <= after <= max_value and not (op == "*" and b == 1):
                        options.append((op, b, after))
            if not options:  # e.g. ops=['+'] from a value that cannot grow: draw a new start
                break
            op, b, after = rng.choice(options)
            steps.append((op, b, value, after))
            value = after
        if len(steps) == n_ops:
            return start, steps
    raise ValueError(f"world: no {n_ops}-step problem fits ops={ops} and max_value={max_value}; widen them")


def make_problem(rng: random.Random, pid: str, level: int, split: str, max_value: int, ops: list[str]) -> Problem:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    start, steps = _program(rng, level + 1, max_value, ops)
    verbs, clauses = [], []
    for k, (op, b, _before, _after) in enumerate(steps):
        verb, clause = rng.choice(PHRASES[op])
        verbs.append(verb)
        clauses.append(f"({MARKERS[k]}) " + clause.format(b=b, i=item))
    sentences = [f"{name} has {start} {item}.", f"Then {name}: " + ", ".join(clauses) + ".", f"How many {item} now?"]
    return Problem(
        id=pid,
        question=" ".join(sentences),
        answer=str(steps[-1][3]),
        level=level,
        domain="arith",
        split=split,
        source="world",
        meta={"name": name, "item": item, "start": start, "steps": [list(s) for s in steps], "verbs": verbs},
    )


def generate_problems(cfg: WorldConfig, split: str) -> list[Problem]:
    """Deterministic problems for ``split`` ('train' or 'test'); train never repeats a test question.

    Test is drawn first from its own stream and train skips any question text that appears in
    test, so the splits are disjoint by construction whatever the sizes.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    test = _draw(cfg, "test", cfg.n_test, exclude=set())
    if split == "test":
        return test
    return _draw(cfg, "train", cfg.n_train, exclude={p.question for p in test})


def _draw(cfg: WorldConfig, split: str, n: int, exclude: set[str]) -> list[Problem]:
    domain = get_domain(cfg.domain)  # unknown domain: ValueError before any work
    out: list[Problem] = []
    seen = set(exclude)
    attempt = 0
    while len(out) < n:
        rng = _rng(cfg.seed, cfg.domain, split, attempt)
        attempt += 1
        level = cfg.levels[len(out) % len(cfg.levels)]  # balanced levels
        pid = f"{cfg.domain}-{split}-{len(out):05d}"
        if cfg.domain == "arith":
            p = make_problem(rng, pid, level, split, cfg.max_value, cfg.ops)
        else:  # other domains (tracewise.world.domains); max_value and ops are arithmetic-only
            p = domain.make_problem(rng, pid, level, split)
        if attempt > 50 * (n + 10):
            raise ValueError(f"world: could not draw {n} distinct {split} problems; lower n or widen levels/ops")
        if p.question in seen:
            continue
        seen.add(p.question)
        out.append(p)
    return out
