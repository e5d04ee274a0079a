"""``listops``: apply a few list operations to a list of digits; answer the list, an item or a count.

"Start with the list [3, 1, 4, 1]. Then: (a) reverse it, (b) sort it from smallest to largest,
(c) remove the first item. What is the list now?" Each operation (reverse, sort, rotate, remove the
first item, swap the ends) is a small symbolic update; difficulty is the number chained (L+1 at
level L) and the start list grows from 4 to 5 digits. Answers are a list of at least 3 digits
written ``[1, 3, 4]`` (compared as a normalised string, see ``tracewise.verify.answer``), or a number.
"""

from __future__ import annotations

import random

from tracewise.core.records import Problem
from tracewise.world.domains.base import MARKERS, Domain
from tracewise.world.domains.common import execute, r1_narration

START_SIZE = {1: 4, 2: 4, 3: 5, 4: 5}
MIN_SIZE = 3  # list answers keep >= 3 items: a 2-item "[1, 3]" is an interval to math-verify
OPS = {
    "reverse": ("reverse it", "reverse"),
    "sort": ("sort it from smallest to largest", "sort"),
    "rotate": ("move the first item to the end", "rotate"),
    "drop": ("remove the first item", "drop first"),
    "swap": ("swap the first and last items", "swap ends"),
}


def apply_op(xs: list[int], op: str) -> list[int]:
    if op == "reverse":
        return xs[::-1]
    if op == "sort":
        return sorted(xs)
    if op == "rotate":
        return xs[1:] + xs[:1]
    if op == "drop":
        return xs[1:]
    if op == "swap":
        return [xs[-1], *xs[1:-1], xs[0]]
    raise ValueError(f"listops: unknown operation {op!r}")


def fmt(xs: list[int], spaced: bool = True) -> str:
    return "[" + (", " if spaced else ",").join(map(str, xs)) + "]"


def answer_for(xs: list[int], query: list) -> str:
    if query[0] == "list":
        return fmt(xs)
    if query[0] == "item":
        return str(xs[int(query[1]) - 1])
    return str(sum(x > int(query[1]) for x in xs))


def _ask(query: list) -> str:
    if query[0] == "list":
        return "What is the list now?"
    if query[0] == "item":
        return f"What is item {query[1]} of the list now?"
    return f"How many items are larger than {query[1]} now?"


def make_problem(rng: random.Random, pid: str, level: int, split: str) -> Problem:
    start = [rng.randint(1, 9) for _ in range(START_SIZE[level])]
    xs, ops = list(start), []
    for _ in range(level + 1):
        options = [op for op in OPS if (op != "drop" or len(xs) > MIN_SIZE) and apply_op(xs, op) != xs]
        if not options:  # e.g. [5, 5, 5, 5]: nothing changes it; draw again (the caller's rng moves on)
            return make_problem(rng, pid, level, split)
        op = rng.choice(options)
        ops.append(op)
        xs = apply_op(xs, op)
    r = rng.random()
    query: list = ["list"] if r < 0.5 else ["item", rng.randint(1, len(xs))] if r < 0.75 else ["count", rng.randint(2, 7)]
    clauses = ", ".join(f"({MARKERS[k]}) {OPS[op][0]}" for k, op in enumerate(ops))
    question = f"Start with the list {fmt(start)}. Then: {clauses}. {_ask(query)}"
    return Problem(id=pid, question=question, answer=answer_for(xs, query), level=level, domain="listops",
                   split=split, source="world", meta={"start": start, "ops": ops, "query": query})


def _perturbations(xs: list[int], rng: random.Random) -> list[list[int]]:
    """Wrong results, most plausible first: two unequal neighbours swapped or a digit off by one,
    then any one digit replaced."""
    near, far = [], []
    for i in range(len(xs) - 1):
        if xs[i] != xs[i + 1]:
            near.append([*xs[:i], xs[i + 1], xs[i], *xs[i + 2 :]])
    for i, x in enumerate(xs):
        for v in range(1, 10):
            if v != x:
                (near if abs(v - x) == 1 else far).append([*xs[:i], v, *xs[i + 1 :]])
    rng.shuffle(near)
    rng.shuffle(far)
    return near + far


def solve(problem: Problem, rng: random.Random, error_rate: float) -> tuple[list[tuple], bool]:
    """The teacher's execution ``[(op, before, after)]`` and whether its final answer is wrong."""
    query = problem.meta["query"]
    return execute(rng, list(problem.meta["start"]), problem.meta["ops"], apply_op,
                   lambda xs: answer_for(xs, query), problem.answer, error_rate, _perturbations)


def answer(problem: Problem, steps: list[tuple]) -> str:
    return answer_for(steps[-1][2], problem.meta["query"])


def _found(query: list, xs: list[int], final: str) -> str:
    if query[0] == "list":
        return "that is the answer"
    if query[0] == "item":
        return f"item {query[1]} is {final}"
    return f"{final} of them are larger than {query[1]}"


def r1_thinking(problem: Problem, steps: list[tuple], rng: random.Random, tcfg) -> str:
    query, final = problem.meta["query"], answer(problem, steps)
    spaced = [(f"({MARKERS[k]}) {OPS[op][0]}", fmt(b), fmt(a)) for k, (op, b, a) in enumerate(steps)]

    def wrong(k: int) -> str:
        return fmt(_perturbations(steps[k][2], rng)[0])

    def restate(k: int) -> str:
        xs = steps[k][2]
        return f"So now the list starts with {xs[0]} and ends with {xs[-1]}."

    last = fmt(steps[-1][2])
    outro = [f"Hmm, let me go over it once more to be sure. The list ends as {last}, so {_found(query, steps[-1][2], final)}.",
             f"Let me make sure I did not miss anything. The final list is {last}, so {_found(query, steps[-1][2], final)}."]
    need = {"list": "the final list", "item": f"item {query[-1]} at the end",
            "count": f"how many items are larger than {query[-1]} at the end"}[query[0]]
    intro = f"The list starts as {fmt(problem.meta['start'])}. I need {need}."
    return r1_narration(rng, tcfg, intro, spaced, wrong, restate, outro)


def gptoss_thinking(problem: Problem, steps: list[tuple]) -> str:
    parts = [f"({MARKERS[k]}) {OPS[op][1]}: {fmt(a, spaced=False)}." for k, (op, _b, a) in enumerate(steps)]
    query = problem.meta["query"]
    if query[0] == "item":
        parts.append(f"item {query[1]}: {answer(problem, steps)}.")
    elif query[0] == "count":
        parts.append(f">{query[1]}: {answer(problem, steps)}.")
    return " ".join(parts)


DOMAIN = Domain(name="listops", description="reverse / sort / rotate / drop / swap a digit list (list, item or count)",
                make_problem=make_problem, solve=solve, answer=answer, r1_thinking=r1_thinking,
                gptoss_thinking=gptoss_thinking)
