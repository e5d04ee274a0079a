"""The verl adapter: verl's argument names, group rewards through the batch contract, shipped configs."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import pytest
import yaml

from tracewise.train import rewards as R
from tracewise.train import verl_reward as V

ROOT = Path(__file__).resolve().parents[2]
RIGHT = "<think>2 + 2 = 4</think>The answer is $\\boxed{4}$."
WRONG = "<think>2 + 2 = 5</think>The answer is $\\boxed{5}$."


@pytest.fixture(autouse=True)
def _fresh_cache():
    R.clear_verdict_cache()
    yield


def test_compute_score_with_verl_argument_names():
    out = V.compute_score(data_source="math", solution_str=RIGHT, ground_truth="4", extra_info=None)
    assert out["score"] == 1.0 and out["acc"] == 1.0
    assert V.compute_score(data_source="gsm8k", solution_str=WRONG, ground_truth=4, extra_info={})["score"] == 0.0
    assert V.compute_score("math", RIGHT, "4", {"truncated": True})["score"] == 0.0  # cut off: never correct
    with pytest.raises(ValueError, match="unusable ground_truth"):
        V.compute_score(data_source="math", solution_str=RIGHT, ground_truth=None, extra_info={})


def test_per_sample_length_reward_counts_tokens(student_path, student_tokenizer):
    n_tok = len(student_tokenizer(RIGHT, add_special_tokens=False)["input_ids"])
    assert 10 < n_tok < len(RIGHT) - 10  # tokens, clearly not the character count
    # the soft limit is 5 tokens below the response: (max_len - cache_len - L) / cache_len = -5/10
    specs = [{"name": "correctness"}, {"name": "dapo_overlong", "max_len": n_tok + 5, "cache_len": 10, "weight": 0.5}]
    out = V.compute_score(data_source="world", solution_str=RIGHT, ground_truth="4", extra_info={},
                          rewards=specs, tokenizer=student_path)
    assert out["response_tokens"] == n_tok
    assert out["reward_dapo_overlong"] == pytest.approx(-0.5)
    assert out["score"] == pytest.approx(1.0 - 0.25)
    # max_resp_len: a response of that many tokens was truncated by verl, so it is not correct
    cut = V.compute_score("world", RIGHT, "4", {}, rewards=specs, tokenizer=student_path, max_resp_len=n_tok)
    assert cut["acc"] == 0.0 and cut["reward_correctness"] == 0.0
    with pytest.raises(ValueError, match="needs token lengths"):
        V.compute_score("world", RIGHT, "4", {}, rewards=specs)  # no tokenizer: characters are never used


def test_group_rewards_need_the_batch_contract():
    with pytest.raises(ValueError, match="use compute_score_batch"):
        V.compute_score("world", RIGHT, "4", {"response_length": 5}, rewards=[{"name": "arora_zanette", "alpha": 0.2}])


def test_compute_score_batch_groups_by_extra_info_index():
    # Two prompts, interleaved as after verl's batch balancing; lengths given by the reward manager.
    texts = [RIGHT, RIGHT, WRONG, RIGHT, RIGHT, WRONG]
    index = [0, 1, 0, 0, 1, 1]
    lengths = [10, 7, 20, 30, 7, 3]
    infos = [{"index": i, "response_length": n} for i, n in zip(index, lengths)]
    out = V.compute_score_batch(data_sources=["world"] * 6, solution_strs=texts, ground_truths=["4"] * 6,
                                extra_infos=infos, rewards=[{"name": "arora_zanette", "alpha": 0.2}], num_generations=3)
    # prompt 0: correct lengths 10, 30 -> mean 20, population std 10, z = -1, +1 -> 1 - 0.2*sigmoid(z)
    # prompt 1: correct lengths 7, 7 -> std 0, z = 0 -> 0.9; the wrong ones -> 0
    assert [o["score"] for o in out] == pytest.approx([0.9462117157, 0.9, 0.0, 0.8537882843, 0.9, 0.0], abs=1e-9)
    assert [o["acc"] for o in out] == [1.0, 1.0, 0.0, 1.0, 1.0, 0.0]
    assert [o["response_tokens"] for o in out] == lengths


def test_batch_errors_and_split_groups(caplog):
    az = [{"name": "arora_zanette", "alpha": 0.1}]
    with pytest.raises(ValueError, match="no 'index'"):
        V.compute_score_batch(["w"], [RIGHT], ["4"], [{"response_length": 3}], rewards=az)
    with pytest.raises(ValueError, match="unknown name 'brevity'"):
        V.compute_score_batch(["w"], [RIGHT], ["4"], [{"index": 0}], rewards=[{"name": "brevity"}])
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        V.compute_score_batch(["w"], [RIGHT], ["4"], [{"index": 0}], rewards=[{"name": "arora_zanette", "alpha": -1}])
    with pytest.raises(ValueError, match="num_generations >= 2"):
        V.compute_score_batch(["w"], [RIGHT], ["4"], [{"index": 0, "response_length": 3}], rewards=az, num_generations=1)
    with caplog.at_level(logging.WARNING, logger=V.__name__):  # verl's per-sample reward loop: groups of one
        V.compute_score_batch(["w"], [RIGHT], ["4"], [{"index": 0, "response_length": 3}], rewards=az, num_generations=8)
    assert "not multiples of num_generations=8" in caplog.text


def _load_like_verl(path: Path):
    """verl imports the reward file by path under a fixed module name (get_custom_reward_fn)."""
    spec = importlib.util.spec_from_file_location("custom_module", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["length_penalty", "arora_zanette_batch"])
def test_shipped_verl_configs_load_the_adapter_with_their_kwargs(name, student_path):
    cfg = yaml.safe_load((ROOT / f"configs/verl/{name}.yaml").read_text())
    assert cfg["defaults"] == ["ppo_trainer", "_self_"]
    fn_cfg = cfg["reward"]["custom_reward_function"] if "reward" in cfg else cfg["custom_reward_function"]
    module = _load_like_verl(ROOT / fn_cfg["path"])
    fn = getattr(module, fn_cfg["name"])
    rollout, actor = cfg["actor_rollout_ref"]["rollout"], cfg["actor_rollout_ref"]["actor"]
    assert rollout["n"] == 8 and rollout["temperature"] == 0.6 and actor["kl_loss_coef"] == 1e-3
    # resolve the ${...} interpolations verl would resolve
    kwargs = {k: v for k, v in fn_cfg["reward_kwargs"].items()}
    kwargs.update(tokenizer=student_path, max_resp_len=cfg["data"]["max_response_length"])
    if "num_generations" in kwargs:
        kwargs["num_generations"] = rollout["n"]
    if fn_cfg["name"] == "compute_score":
        out = fn(data_source="world", solution_str=RIGHT, ground_truth="4", extra_info={"index": 0}, **kwargs)
        assert out["score"] == 1.0  # short and correct: no overlong penalty
    else:
        texts = [RIGHT, WRONG] * 4
        out = fn(data_sources=["world"] * 8, solution_strs=texts, ground_truths=["4"] * 8,
                 extra_infos=[{"index": 0} for _ in range(8)], **kwargs)
        assert [o["acc"] for o in out] == [1.0, 0.0] * 4
        assert all(o["score"] == pytest.approx(0.95) for o in out[::2])  # equal lengths: 1 - alpha/2


def test_export_parquet_writes_verl_rows_and_checks_golds(tmp_path):
    import pandas as pd

    from tracewise.data.sources import ProblemsConfig
    from tracewise.world.problems import WorldConfig

    path = V.export_parquet(ProblemsConfig(world=WorldConfig(n_train=5, n_test=0)), tmp_path / "train.parquet")
    df = pd.read_parquet(path)
    assert list(df["extra_info"].map(lambda e: e["index"])) == [0, 1, 2, 3, 4]
    assert set(df.columns) >= {"data_source", "prompt", "reward_model", "extra_info"}
    gold = df["reward_model"][0]["ground_truth"]
    assert V.compute_score(df["data_source"][0], f"Answer: {gold}", gold, dict(df["extra_info"][0]))["score"] == 1.0
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "question": "1+1?", "answer": ""}\n')
    with pytest.raises(ValueError, match="row 0: missing gold"):
        V.export_parquet(ProblemsConfig(source=str(bad)), tmp_path / "bad.parquet")
