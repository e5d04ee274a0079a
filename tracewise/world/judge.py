"""A procedural stand-in for the judge LLM, with known false-positive / false-negative rates.

The paper checked teacher answers with a judge model (Qwen3-30B-A3B-Thinking). A judge is not
math-verify: it can accept a wrong answer or reject a right one. In the embedded world we know the
truth, so we can set those error rates and measure what each correctness filter lets through.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from tracewise.core.config import doc
from tracewise.core.seeding import sample_seed

_NUM = re.compile(r"-?\d+(?:\.\d+)?")


@dataclass
class JudgeConfig:
    """The procedural judge's error behaviour."""

    false_positive_rate: float = doc("P(judge says correct | answer is wrong).", 0.05)
    false_negative_rate: float = doc("P(judge says wrong | answer is correct).", 0.02)
    seed: int = doc("Seed for the judge's errors.", 0)

    def validate(self) -> None:
        for name in ("false_positive_rate", "false_negative_rate"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"judge.{name} must be in [0, 1], got {v}")


def _norm(ans: str | None) -> str | None:
    if ans is None:
        return None
    if ans.strip().startswith("["):  # a listops list: the whole list matters, not its last number
        return re.sub(r"\s+", "", ans)
    m = _NUM.findall(ans.replace(",", ""))
    return m[-1] if m else ans.strip()


def procedural_judge(key: str, pred: str | None, gold: str, cfg: JudgeConfig) -> tuple[bool, str]:
    """Return ``(judged_correct, raw_output)`` for an extracted prediction against the gold.

    The judge first decides the truth by exact numeric match (what a careful judge would see),
    then flips its verdict with the configured error rates, seeded by ``key`` so verdicts are
    reproducible and independent across traces.
    """
    truth = pred is not None and _norm(pred) == _norm(gold)
    rng = random.Random(sample_seed(cfg.seed, "judge|" + key, 0))
    flip = rng.random() < (cfg.false_negative_rate if truth else cfg.false_positive_rate)
    verdict = truth != flip
    raw = (
        f"The response's final answer is {pred!r}; the reference answer is {gold!r}. "
        f"Verdict: {'CORRECT' if verdict else 'INCORRECT'}"
    )
    return verdict, raw
