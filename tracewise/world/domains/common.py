"""Pieces shared by the non-arithmetic domains: seeded errors and the r1 step narration.

The r1 narration mirrors ``world/teachers.py``'s arithmetic one (open, cite each step, sometimes
slip and correct, re-check, restate, go over it once more) so the verbose/concise contrast is the
same kind of contrast in every domain.
"""

from __future__ import annotations

import random
from typing import Callable, Sequence

OPENINGS = ["Okay, let me see.", "Okay, so I need to figure this out.", "Alright, let me think."]


def execute(rng: random.Random, start, ops: Sequence, apply: Callable, answer_of: Callable, gold: str,
            error_rate: float, perturb: Callable) -> tuple[list[tuple], bool]:
    """The teacher's execution ``[(op, before, after)]`` and whether its final answer is wrong.

    With probability ``error_rate`` the teacher makes one uncorrected mistake: at a random step it
    writes a plausible wrong state (``perturb(state, rng)`` lists candidates, most plausible first)
    and carries on from it. The step and state are chosen so the mistake reaches the final answer
    when any can (a slip that a later step erases, e.g. before "remove the first item", would make
    a "wrong" trace with the right answer); a problem no single slip can change stays correct.
    ``answer_of(state)`` is the answer a final state gives.
    """
    states = [start]
    for op in ops:
        states.append(apply(states[-1], op))

    def final(state, k: int):
        for op in ops[k + 1 :]:
            state = apply(state, op)
        return answer_of(state)

    bad: tuple[int, object] | None = None
    if rng.random() < error_rate:
        order = list(range(len(ops)))
        rng.shuffle(order)
        for k in order:
            wrong = next((c for c in perturb(states[k + 1], rng) if final(c, k) != gold), None)
            if wrong is not None:
                bad = (k, wrong)
                break
    steps, state = [], start
    for k, op in enumerate(ops):
        after = bad[1] if bad is not None and k == bad[0] else apply(state, op)
        steps.append((op, state, after))
        state = after
    return steps, answer_of(state) != gold


def r1_narration(
    rng: random.Random,
    tcfg,
    intro: str,
    steps: Sequence[tuple[str, str, str]],
    wrong: Callable[[int], str],
    restate: Callable[[int], str],
    outro: Sequence[str],
) -> str:
    """The r1 thinking text.

    ``steps`` holds ``(cite, before, after)`` strings per step; ``wrong(k)`` a plausible wrong
    result of step k (a slip the teacher notices); ``restate(k)`` the state after step k in words;
    ``outro`` the closing re-checks to choose from. Rates come from the teacher config.
    """
    lines = [rng.choice(OPENINGS), intro]
    for k, (cite, before, after) in enumerate(steps):
        lines.append(f"Next, {cite}, so I get {after}.")
        if rng.random() < tcfg.slip_rate:
            lines[-1] = f"Next, {cite}, so I get {wrong(k)}."
            lines.append(f"Wait, that is not right. Let me redo it from {before}: that gives {after}.")
        elif rng.random() < tcfg.recheck_rate:
            lines.append(f"Wait, let me double check that: {before} becomes {after}. Yes, that is right.")
        if rng.random() < tcfg.restate_rate:
            lines.append(restate(k))
    lines.append(rng.choice(list(outro)))
    return "\n".join(lines)
