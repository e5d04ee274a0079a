"""``ordering``: track who stands where in a line after a few moves; answer a name or a position.

"Ann, Ben and Cara stand in a line, in that order from the front. Then: (a) Ann and Cara swap
places, (b) Ben moves to the front. Who is at position 2?" Each move (swap two people, one person
to the front, one to the back) is a small state update a tiny student can learn; difficulty is the
number of moves chained (L+1 at level L) and the line grows from 3 to 5 people. Answers are a
name (compared as a normalised string, see ``tracewise.verify.answer``) or a 1-based position.
"""

from __future__ import annotations

import random

from tracewise.core.records import Problem
from tracewise.world.domains.base import MARKERS, NAMES, Domain
from tracewise.world.domains.common import execute, r1_narration

LINE_SIZE = {1: 3, 2: 4, 3: 4, 4: 5}


def apply_move(line: list[str], move: list[str]) -> list[str]:
    kind, who = move[0], move[1]
    out = list(line)
    if kind == "swap":
        i, j = out.index(who), out.index(move[2])
        out[i], out[j] = out[j], out[i]
    elif kind == "front":
        out.remove(who)
        out.insert(0, who)
    elif kind == "back":
        out.remove(who)
        out.append(who)
    else:
        raise ValueError(f"ordering: unknown move {kind!r}")
    return out


def answer_for(line: list[str], query: list) -> str:
    if query[0] == "who":
        return line[int(query[1]) - 1]
    return str(line.index(query[1]) + 1)


def _clause(move: list[str]) -> str:
    if move[0] == "swap":
        return f"{move[1]} and {move[2]} swap places"
    return f"{move[1]} moves to the {move[0]}"


def _short(move: list[str]) -> str:
    return f"{move[1]}<->{move[2]}" if move[0] == "swap" else f"{move[1]} {move[0]}"


def make_problem(rng: random.Random, pid: str, level: int, split: str) -> Problem:
    people = rng.sample(NAMES, LINE_SIZE[level])
    line, moves = list(people), []
    for _ in range(level + 1):
        options = [["swap", a, b] for i, a in enumerate(people) for b in people[i + 1 :]]
        options += [["front", p] for p in people] + [["back", p] for p in people]
        options = [m for m in options if apply_move(line, m) != line]  # every move changes the line
        move = rng.choice(options)
        moves.append(move)
        line = apply_move(line, move)
    if rng.random() < 0.5:
        query: list = ["who", rng.randint(1, len(people))]
        ask = f"Who is at position {query[1]}?"
    else:
        query = ["where", rng.choice(people)]
        ask = f"At which position is {query[1]} now?"
    clauses = ", ".join(f"({MARKERS[k]}) {_clause(m)}" for k, m in enumerate(moves))
    question = (f"{', '.join(people[:-1])} and {people[-1]} stand in a line, in that order from the front. "
                f"Then: {clauses}. {ask}")
    return Problem(id=pid, question=question, answer=answer_for(line, query), level=level, domain="ordering",
                   split=split, source="world", meta={"people": people, "moves": moves, "query": query})


def _perturbations(line: list[str], rng: random.Random) -> list[list[str]]:
    """Wrong results of a move, most plausible first: two neighbours swapped, then any two swapped."""
    near, far = [], []
    for i in range(len(line)):
        for j in range(i + 1, len(line)):
            bad = list(line)
            bad[i], bad[j] = bad[j], bad[i]
            (near if j == i + 1 else far).append(bad)
    rng.shuffle(near)
    rng.shuffle(far)
    return near + far


def solve(problem: Problem, rng: random.Random, error_rate: float) -> tuple[list[tuple], bool]:
    """The teacher's execution: ``[(move, before, after)]`` and whether its final answer is wrong."""
    query = problem.meta["query"]
    return execute(rng, list(problem.meta["people"]), problem.meta["moves"], apply_move,
                   lambda line: answer_for(line, query), problem.answer, error_rate, _perturbations)


def answer(problem: Problem, steps: list[tuple]) -> str:
    return answer_for(steps[-1][2], problem.meta["query"])


def _ask(query: list) -> str:
    return f"position {query[1]}" if query[0] == "who" else query[1]


def r1_thinking(problem: Problem, steps: list[tuple], rng: random.Random, tcfg) -> str:
    query, final = problem.meta["query"], answer(problem, steps)
    spaced = [(f"({MARKERS[k]}) {_clause(m)}", ", ".join(b), ", ".join(a)) for k, (m, b, a) in enumerate(steps)]

    def wrong(k: int) -> str:
        return ", ".join(_perturbations(steps[k][2], rng)[0])

    def restate(k: int) -> str:
        line = steps[k][2]
        return f"So now {line[0]} is at the front and {line[-1]} is at the back."

    found = (f"{final} is at position {query[1]}" if query[0] == "who" else f"{query[1]} is at position {final}")
    outro = [f"Hmm, let me go over it once more to be sure. The line ends as {', '.join(steps[-1][2])}, so {found}.",
             f"Let me make sure I did not miss anything. In the final line {', '.join(steps[-1][2])}, {found}."]
    intro = f"The line starts as {', '.join(problem.meta['people'])}. I need {_ask(query)} at the end."
    return r1_narration(rng, tcfg, intro, spaced, wrong, restate, outro)


def gptoss_thinking(problem: Problem, steps: list[tuple]) -> str:
    parts = [f"({MARKERS[k]}) {_short(m)}: {' '.join(a)}." for k, (m, _b, a) in enumerate(steps)]
    query = problem.meta["query"]
    parts.append(f"pos {query[1]}: {answer(problem, steps)}." if query[0] == "who"
                 else f"{query[1]}: pos {answer(problem, steps)}.")
    return " ".join(parts)


DOMAIN = Domain(name="ordering", description="who stands where in a line after swaps and moves (name or position)",
                make_problem=make_problem, solve=solve, answer=answer, r1_thinking=r1_thinking,
                gptoss_thinking=gptoss_thinking)
