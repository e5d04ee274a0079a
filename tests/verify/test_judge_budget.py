"""A thinking judge's token budget: outputs cut off before their verdict are asked again once at
``retry_max_tokens`` (the same seed continues the same sample), so only they pay for the long budget."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tracewise.backends.base import Completion
from tracewise.verify.llm_judge import JudgeItem, LLMJudge, LLMJudgeConfig

REPO = Path(__file__).resolve().parents[2]


class ThinkingJudge:
    """Each request deliberates for a scripted number of tokens, then says its verdict (4 more tokens)."""

    name = "thinking"

    def __init__(self, think: dict[str, int]):
        self.think, self.calls = think, []

    def generate(self, requests, sampling, progress=None):
        self.calls.append(([r.id for r in requests], sampling.max_tokens))
        out = []
        for r in requests:
            n = self.think[r.id]
            if n + 4 <= sampling.max_tokens:
                out.append(Completion(r.id, 0, "<think>" + "hmm " * n + "</think>Verdict: YES", n + 4, "stop"))
            else:
                out.append(Completion(r.id, 0, "<think>" + "hmm " * sampling.max_tokens, sampling.max_tokens, "length"))
        yield out


def _items(keys):
    return [JudgeItem(k, "q", "4", "4", "4", "4") for k in keys]


def test_cut_off_outputs_are_retried_once_at_the_larger_budget():
    backend = ThinkingJudge({"short": 10, "long": 300, "endless": 5000})
    judge = LLMJudge(LLMJudgeConfig(backend="hf", model="m", max_tokens=100, retry_max_tokens=1000), backend=backend)
    out = dict(zip(["short", "long", "endless"], judge(_items(["short", "long", "endless"]))))
    assert backend.calls == [(["short", "long", "endless"], 100), (["long", "endless"], 1000)]
    assert out["short"].correct is True and "judge_retried" not in out["short"].meta
    assert out["long"].correct is True and out["long"].meta["judge_retried"] and out["long"].meta["judge_tokens"] == 304
    assert out["endless"].correct is None and out["endless"].meta["judge_finish"] == "length"  # still unparseable
    # Off by default: one call, cut-off outputs stay unparseable.
    backend = ThinkingJudge({"long": 300})
    (res,) = LLMJudge(LLMJudgeConfig(backend="hf", model="m", max_tokens=100), backend=backend)(_items(["long"]))
    assert res.correct is None and len(backend.calls) == 1
    with pytest.raises(ValueError, match="retry_max_tokens"):
        LLMJudgeConfig(backend="hf", model="m", max_tokens=100, retry_max_tokens=50).validate()


def test_the_paper_judge_config_retries_cut_off_verdicts():
    cfg = yaml.safe_load((REPO / "configs/paper/verify_qwen3_judge.yaml").read_text())["judge"]
    assert cfg["retry_max_tokens"] > cfg["max_tokens"] >= 8192
