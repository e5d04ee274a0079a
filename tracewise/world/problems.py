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

from tracewise.config import doc
from tracewise.records import Problem

NAMES = ["Ann", "Ben", "Cara", "Dan", "Eva", "Finn", "Gina", "Hugo", "Ivy", "Jack", "Kim", "Leo"]
ITEMS = ["apples", "pens", "coins", "cards", "books", "shells", "stamps", "marbles", "eggs", "cups"]

# Phrasings per operation as (verb, sentence); {n} = name, {b} = operand, {i} = item. Several per
# op so a student must read the verb, not memorise a position. Both teachers quote the verb with
# its operand ("buys 4"), as real traces restate what they use: that anchors each step to its
# sentence, which a 2-layer student cannot otherwise find reliably (measured: without the quote,
# 2 of 3 step errors were picking the wrong sentence's number).
PHRASES = {
    "+": [("gets", "{n} gets {b} more."), ("finds", "{n} finds {b} more."), ("buys", "{n} buys {b} more.")],
    "-": [("gives away", "{n} gives away {b}."), ("loses", "{n} loses {b}."), ("sells", "{n} sells {b}.")],
    "*": [("grows", "The {i} grow {b} times."), ("multiplies", "{n} multiplies the {i} by {b}.")],
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
    domain: str = doc("World domain (only 'arith' in the quickstart).", "arith")

    def validate(self) -> None:
        if self.n_train < 0 or self.n_test < 0:
            raise ValueError("world: n_train and n_test must be >= 0")
        bad = [lv for lv in self.levels if lv not in (1, 2, 3, 4)]
        if bad or not self.levels:
            raise ValueError(f"world.levels: expected values in 1..4, got {self.levels}")
        if self.max_value < 9:
            raise ValueError("world.max_value must be >= 9")
        if self.domain != "arith":
            raise ValueError(f"world.domain: unknown domain {self.domain!r}; valid: ['arith']")


def _rng(seed: int, *parts: object) -> random.Random:
    h = hashlib.sha256("|".join(map(str, (seed, *parts))).encode()).digest()
    return random.Random(int.from_bytes(h[:8], "little"))


def _program(rng: random.Random, n_ops: int, max_value: int) -> tuple[int, list[tuple[str, int, int, int]]]:
    """Draw a start value and ``n_ops`` steps ``(op, operand, before, after)`` within bounds."""
    while True:
        start = rng.randint(2, 9)
        value, steps = start, []
        for _ in range(n_ops):
            options = []
            for op in ("+", "-", "*"):
                for b in range(1, 10):
                    after = value + b if op == "+" else value - b if op == "-" else value * b
                    if 1 <= after <= max_value and not (op == "*" and b == 1):
                        options.append((op, b, after))
            op, b, after = rng.choice(options)
            steps.append((op, b, value, after))
            value = after
        return start, steps


def make_problem(rng: random.Random, pid: str, level: int, split: str, max_value: int) -> Problem:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    start, steps = _program(rng, level + 1, max_value)
    sentences = [f"{name} has {start} {item}."]
    verbs = []
    for op, b, _before, _after in steps:
        verb, sentence = rng.choice(PHRASES[op])
        verbs.append(verb)
        sentences.append(sentence.format(n=name, b=b, i=item))
    sentences.append(f"How many {item} does {name} have now?")
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
    out: list[Problem] = []
    seen = set(exclude)
    attempt = 0
    while len(out) < n:
        rng = _rng(cfg.seed, cfg.domain, split, attempt)
        attempt += 1
        level = cfg.levels[len(out) % len(cfg.levels)]  # balanced levels
        p = make_problem(rng, f"{cfg.domain}-{split}-{len(out):05d}", level, split, cfg.max_value)
        if p.question in seen:
            continue
        seen.add(p.question)
        out.append(p)
        if attempt > 50 * (n + 10):
            raise ValueError(f"world: could not draw {n} distinct {split} problems; lower n or raise max_value")
    return out
