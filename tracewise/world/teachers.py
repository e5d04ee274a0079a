"""Procedural teachers that write traces in the two styles the paper compares.

* ``r1``: verbose ``<think>…</think>`` — restates the problem, explores, says "Wait", re-checks
  steps, sometimes slips and corrects itself — then a short answer with ``\\boxed{}``.
* ``gpt-oss``: harmony-style terse analysis (one equation per step), then a final channel.

Both styles carry exactly the same computation (one equation per step, in order); the verbose
one only adds words around it. That is deliberate: the paper's claim is that the extra words are
not needed, so our world must not hide computation in them.

Each teacher makes uncorrected arithmetic mistakes at a difficulty-dependent rate, seeded per
(teacher, problem) so the two teachers err on different problems and the all-correct
intersection is a real filter.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from tracewise.core.config import doc
from tracewise.core.records import Problem
from tracewise.core.seeding import sample_seed
from tracewise.world.domains import DOMAINS
from tracewise.world.domains.base import MARKERS

STYLES = ("r1", "gpt-oss")


@dataclass
class TeacherConfig:
    """A procedural teacher's style and error behaviour."""

    style: str = doc("Trace style: 'r1' (verbose <think>) or 'gpt-oss' (terse harmony).", "r1")
    error_rate: list[float] = doc(
        "Probability of an uncorrected arithmetic mistake, per difficulty level 1, 2, 3, ...", factory=lambda: [0.03, 0.06, 0.10]
    )
    format_error_rate: float = doc("Probability the final answer is missing (a realistic formatting failure).", 0.01)
    slip_rate: float = doc("r1 only: per-step probability of a slip that is noticed and corrected ('Wait, ...').", 0.15)
    recheck_rate: float = doc("r1 only: per-step probability of re-checking a correct step.", 0.5)
    restate_rate: float = doc("r1 only: per-step probability of restating the running total in words.", 0.3)

    def validate(self) -> None:
        if self.style not in STYLES:
            raise ValueError(f"teacher.style: unknown style {self.style!r}; valid: {list(STYLES)}")
        for name in ("format_error_rate", "slip_rate", "recheck_rate", "restate_rate"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"teacher.{name} must be in [0, 1], got {v}")
        if not self.error_rate or any(not 0.0 <= r <= 1.0 for r in self.error_rate):
            raise ValueError(f"teacher.error_rate: expected probabilities in [0, 1], got {self.error_rate}")

    def rate_for(self, level: int) -> float:
        return self.error_rate[min(max(level, 1), len(self.error_rate)) - 1]


def _eq(a: int, op: str, b: int, c: int, spaced: bool) -> str:
    sym = {"*": "*", "+": "+", "-": "-"}[op]
    return f"{a} {sym} {b} = {c}" if spaced else f"{a}{sym}{b}={c}"


def _wrong(rng: random.Random, value: int) -> int:
    """A plausible wrong result: off by one or two, never negative, never the right value."""
    return rng.choice([v for v in (value - 2, value - 1, value + 1, value + 2) if v >= 0])


def compute_steps(problem: Problem, rng: random.Random, cfg: TeacherConfig) -> tuple[list[tuple], bool]:
    """The teacher's own (possibly mistaken) execution of the problem's steps.

    Returns ``[(op, operand, before, after)]`` as the teacher computed them and whether it erred.
    An error at step k propagates: later steps start from the wrong value.
    """
    steps = problem.meta.get("steps")
    if not steps:
        raise ValueError(f"problem {problem.id}: embedded teachers need world problems (meta.steps missing)")
    erred = rng.random() < cfg.rate_for(problem.level)
    bad_step = rng.randrange(len(steps)) if erred else -1
    value = int(problem.meta["start"])
    out = []
    for k, (op, b, _before, _after) in enumerate(steps):
        after = value + b if op == "+" else value - b if op == "-" else value * b
        if k == bad_step:
            after = _wrong(rng, after)
        out.append((op, b, value, after))
        value = after
    return out, erred


def _r1_text(problem: Problem, steps: list[tuple], rng: random.Random, cfg: TeacherConfig) -> str:
    name, item = problem.meta["name"], problem.meta["item"]
    start = problem.meta["start"]
    lines = [
        rng.choice(["Okay, let me see.", "Okay, so I need to figure this out.", "Alright, let me think."]),
        f"{name} starts with {start} {item}.",
    ]
    for k, ((op, b, before, after), verb) in enumerate(zip(steps, problem.meta["verbs"])):
        cite = f"({MARKERS[k]}) {verb} {b}"
        lines.append(f"Next, {cite}, so I compute {_eq(before, op, b, after, True)}.")
        if rng.random() < cfg.slip_rate:
            lines[-1] = f"Next, {cite}, so {_eq(before, op, b, _wrong(rng, after), True)}."
            lines.append(f"Wait, that is not right. Let me redo it: {_eq(before, op, b, after, True)}.")
        elif rng.random() < cfg.recheck_rate:
            lines.append(f"Wait, let me double check that: {_eq(before, op, b, after, True)}. Yes, that is right.")
        if rng.random() < cfg.restate_rate:
            lines.append(f"So now {name} has {after} {item}.")
    final = steps[-1][3]
    lines.append(
        rng.choice(
            [
                f"Hmm, let me go over it once more to be sure. {name} ends with {final} {item}.",
                f"Let me make sure I did not miss anything. So {name} has {final} {item} at the end.",
            ]
        )
    )
    return "\n".join(lines)


def _gptoss_text(problem: Problem, steps: list[tuple]) -> str:
    parts = []
    for k, ((op, b, before, after), verb) in enumerate(zip(steps, problem.meta["verbs"])):
        parts.append(f"({MARKERS[k]}) {verb} {b}: {_eq(before, op, b, after, False)}.")
    return " ".join(parts)


def _other_domain(problem: Problem):
    """The non-arithmetic world domain that wrote ``problem``, or None (arith keeps its own code path)."""
    if problem.source != "world" or problem.domain == "arith":
        return None
    return DOMAINS.get(problem.domain)


def write_trace(problem: Problem, cfg: TeacherConfig, seed: int, sample_idx: int = 0) -> tuple[str, bool]:
    """The teacher's completion text for one problem, and whether it contains an uncorrected error.

    Seeded by (seed, teacher style, problem id, sample index) only, so a resumed run writes the
    same bytes and the two teachers' mistakes are independent.
    """
    rng = random.Random(sample_seed(seed, f"{cfg.style}|{problem.id}", sample_idx))
    domain = _other_domain(problem)
    if domain is not None:  # ordering, listops, ...: same seeding and formats, the domain's own text
        steps, erred = domain.solve(problem, rng, cfg.rate_for(problem.level))
        answer = domain.answer(problem, steps)
    else:
        steps, erred = compute_steps(problem, rng, cfg)
        answer = steps[-1][3]
    drop_answer = rng.random() < cfg.format_error_rate
    if cfg.style == "r1":
        thinking = domain.r1_thinking(problem, steps, rng, cfg) if domain else _r1_text(problem, steps, rng, cfg)
        final = "I am not sure." if drop_answer else f"So the answer is \\boxed{{{answer}}}."
        return f"<think>\n{thinking}\n</think>\n\n{final}", erred
    thinking = domain.gptoss_thinking(problem, steps) if domain else _gptoss_text(problem, steps)
    final = "Done." if drop_answer else f"Answer: {answer}"
    return (
        f"<|channel|>analysis<|message|>{thinking}<|end|>"
        f"<|start|>assistant<|channel|>final<|message|>{final}<|return|>"
    ), erred
