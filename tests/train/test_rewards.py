"""Length-penalty rewards: hand-computed tables, TRL call signature, pickling, config errors (verl: test_verl_reward)."""

from __future__ import annotations

import logging
import pickle

import pytest

from tracewise.train import rewards as R

EOS = 2
RIGHT = "<think>2 + 2 = 4</think>The answer is $\\boxed{4}$."
WRONG = "<think>2 + 2 = 5</think>The answer is $\\boxed{5}$."


@pytest.fixture(autouse=True)
def _fresh_cache():
    R.clear_verdict_cache()
    yield
    R.clear_verdict_cache()


def ids(length: int, stopped: bool = True) -> list[int]:
    """Token ids of the given length ending in EOS (stopped) or in an ordinary token (truncated)."""
    return [7] * (length - 1) + [EOS if stopped else 7]


# ---------------------------------------------------------------- hand-computed tables (score())


def test_arora_zanette_table_uses_population_std_over_correct_samples():
    az = R.AroraZanette(alpha=0.2)
    lengths = [10, 20, 30, 40, 50, 70, 5, 6, 15, 15]
    correct = [True, True, True, False, True, False, False, False, True, True]
    groups = [[0, 1, 2, 3], [4, 5], [6, 7], [8, 9]]
    # Group 1: correct lengths 10, 20, 30 -> mean 20, population std sqrt(200/3) = 8.16497,
    #   z = -1.224745, 0, +1.224745; sigmoid = 0.227101, 0.5, 0.772899;
    #   r = 1 - 0.2*sigmoid = 0.954579, 0.9, 0.845421; the wrong 40 gets 0.
    #   (Sample std 10 would give z = -1 and r = 0.946212 instead.)
    # Group 2: one correct sample -> z = 0 -> 1 - 0.2/2 = 0.9; wrong -> 0.
    # Group 3: nothing correct -> 0, 0.   Group 4: equal lengths, std 0 -> z = 0 -> 0.9, 0.9.
    expected = [0.9545794961, 0.9, 0.8454205039, 0.0, 0.9, 0.0, 0.0, 0.0, 0.9, 0.9]
    assert az.score(lengths, correct, groups) == pytest.approx(expected, abs=1e-9)


def test_arora_zanette_alpha_zero_is_plain_correctness():
    az = R.AroraZanette(alpha=0.0)
    assert az.score([3, 9, 4], [True, True, False], [[0, 1, 2]]) == [1.0, 1.0, 0.0]


def test_kimi_table():
    kimi = R.KimiLength()
    lengths = [10, 20, 30, 50, 10, 30, 7, 7, 9]
    correct = [True, False, True, False, False, True, True, False, True]
    groups = [[0, 1, 2, 3], [4, 5], [6, 7], [8]]
    # Group 1: L_min 10, L_max 50, span 40 -> lam = 0.5, 0.25, 0.0, -0.5;
    #   correct 10 -> 0.5, wrong 20 -> min(0, 0.25) = 0, correct 30 -> 0.0, wrong 50 -> -0.5.
    # Group 2: lam = 0.5, -0.5: wrong short -> min(0, 0.5) = 0; correct long -> -0.5.
    # Group 3: all lengths equal -> 0 for all.   Group 4: a single sample -> 0.
    expected = [0.5, 0.0, 0.0, -0.5, 0.0, -0.5, 0.0, 0.0, 0.0]
    assert kimi.score(lengths, correct, groups) == pytest.approx(expected)


def test_cosine_table_with_paper_defaults():
    cos = R.CosineLength(max_len=100)
    lengths = [0, 25, 50, 99, 100, 150, 0, 50, 75, 100]
    correct = [True, True, True, True, True, False, False, False, False, False]
    # correct: r = 1 + 0.5*(2-1)*(1 + cos(pi L/100)):
    #   L=0 -> 2.0; L=25 -> 1 + 0.5*(1 + 0.707107) = 1.853553; L=50 -> 1.5; L=99 -> 1.000247
    # L >= 100 -> exceed penalty -10, correct or not.
    # wrong: r = 0 + 0.5*(-10-0)*(1 + cos(pi L/100)): L=0 -> -10; L=50 -> -5; L=75 -> -5*(0.292893) = -1.464466
    expected = [2.0, 1.8535533906, 1.5, 1.0002467198, -10.0, -10.0, -10.0, -5.0, -1.4644660941, -10.0]
    assert cos.score(lengths, correct, [[i] for i in range(10)]) == pytest.approx(expected, abs=1e-9)


def test_cosine_custom_values():
    cos = R.CosineLength(max_len=10, correct_r0=1.0, correct_rL=0.5, wrong_r0=-1.0, wrong_rL=-0.5, exceed_penalty=-2.0)
    # L=5 is halfway: cos(pi/2) = 0 -> midpoint of each pair; L=12 -> exceed -2.
    assert cos.score([5, 5, 12], [True, False, True], [[0], [1], [2]]) == pytest.approx([0.75, -0.75, -2.0])


def test_dapo_overlong_table():
    dapo = R.DapoOverlong(max_len=100, cache_len=20)
    # soft limit 100 - 20 = 80: <= 80 -> 0; 81 -> -1/20; 90 -> -10/20; 100 -> -1; beyond -> -1.
    lengths = [50, 80, 81, 90, 100, 101, 120]
    assert dapo.score(lengths, [False] * 7, [[i] for i in range(7)]) == pytest.approx(
        [0.0, 0.0, -0.05, -0.5, -1.0, -1.0, -1.0])


# ---------------------------------------------------------------- TRL call signature (real verify)


def test_trl_call_with_string_completions_and_eos_truncation():
    az = R.AroraZanette(alpha=0.2, eos_token_id=EOS)
    corr = R.Correctness(eos_token_id=EOS)
    prompts = ["What is 2+2?"] * 4
    completions = [RIGHT, RIGHT, WRONG, RIGHT]
    # the last one is correct text but has no EOS: truncated -> wrong, left out of the stats.
    completion_ids = [ids(10), ids(30), ids(20), ids(5, stopped=False)]
    extra = dict(answer=["4"] * 4, trainer_state=None, log_extra=None, log_metric=None)
    assert corr(prompts=prompts, completions=completions, completion_ids=completion_ids, **extra) == [1.0, 1.0, 0.0, 0.0]
    # correct lengths 10, 30: mean 20, population std 10 -> z = -1, +1 -> 1 - 0.2*sigmoid(z)
    out = az(prompts=prompts, completions=completions, completion_ids=completion_ids, **extra)
    assert out == pytest.approx([0.9462117157, 0.8537882843, 0.0, 0.0], abs=1e-9)


def test_trl_call_with_conversational_prompts_and_completions():
    kimi = R.KimiLength(eos_token_id=[EOS, 0])
    p1 = [{"role": "user", "content": "What is 2+2?"}]
    p1_reordered = [{"content": "What is 2+2?", "role": "user"}]  # same prompt, other key order
    p2 = [{"role": "user", "content": "What is 3+1?"}]
    prompts = [p1, p2, p1_reordered, p2]
    completions = [[{"role": "assistant", "content": c}] for c in (RIGHT, WRONG, WRONG, RIGHT)]
    completion_ids = [ids(10), ids(40), ids(30), ids(20)]
    out = kimi(prompts=prompts, completions=completions, completion_ids=completion_ids, answer=["4"] * 4)
    # p1 group (idx 0, 2): lengths 10, 30 -> lam 0.5, -0.5 -> correct 0.5, wrong -0.5
    # p2 group (idx 1, 3): lengths 40, 20 -> lam -0.5, 0.5 -> wrong -0.5, correct 0.5
    assert out == pytest.approx([0.5, -0.5, -0.5, 0.5])


def test_truncated_column_overrides_eos_and_lengths_are_tokens():
    cos = R.CosineLength(max_len=100, eos_token_id=EOS)
    long_text = RIGHT + " " * 5000  # many characters, few tokens: length must come from ids
    out = cos(prompts=["q", "q"], completions=[long_text, RIGHT], completion_ids=[ids(50), ids(50)],
              answer=["4", "4"], truncated=[False, True])
    assert out == pytest.approx([1.5, -5.0])  # correct at L=50 -> 1.5; truncated -> wrong at L=50 -> -5


def test_answer_field_is_configurable_and_missing_gold_is_an_error():
    corr = R.Correctness(answer_field="solution", eos_token_id=EOS)
    assert corr(prompts=["q"], completions=[RIGHT], completion_ids=[ids(3)], solution=[4]) == [1.0]
    with pytest.raises(ValueError, match="no 'solution' column"):
        corr(prompts=["q"], completions=[RIGHT], completion_ids=[ids(3)], answer=["4"])
    with pytest.raises(ValueError, match="completion 1 has no usable gold"):
        corr(prompts=["q", "q"], completions=[RIGHT, RIGHT], completion_ids=[ids(3)] * 2, solution=["4", None])


def test_without_eos_information_samples_count_as_complete_with_a_warning(caplog):
    corr = R.Correctness()
    with caplog.at_level(logging.WARNING, logger=R.__name__):
        out = corr(prompts=["q"], completions=[RIGHT], completion_ids=[[7, 7, 7]], answer=["4"])
    assert out == [1.0]
    assert "no eos_token_id" in caplog.text


def test_dapo_needs_no_gold_column():
    dapo = R.DapoOverlong(max_len=10, cache_len=4)
    assert dapo(prompts=["q", "q"], completions=["a", "b"], completion_ids=[[1] * 6, [1] * 8]) == [0.0, -0.5]


# ---------------------------------------------------------------- pickling


@pytest.mark.parametrize("reward", [
    R.Correctness(eos_token_id=EOS), R.AroraZanette(alpha=0.4, eos_token_id=EOS), R.KimiLength(eos_token_id=EOS),
    R.CosineLength(max_len=64, eos_token_id=EOS), R.DapoOverlong(max_len=64, cache_len=16),
], ids=lambda r: r.__name__)
def test_pickle_round_trip_keeps_name_params_and_behaviour(reward):
    clone = pickle.loads(pickle.dumps(reward))
    assert type(clone) is type(reward) and clone.__name__ == reward.__name__
    assert vars(clone) == vars(reward)
    kwargs = dict(prompts=["q"] * 3, completions=[RIGHT, WRONG, RIGHT],
                  completion_ids=[ids(10), ids(40), ids(60)], answer=["4"] * 3)
    assert clone(**kwargs) == reward(**kwargs)


# ---------------------------------------------------------------- config


def test_build_rewards_from_specs():
    funcs, weights = R.build_rewards([
        {"name": "correctness", "weight": 1.0, "eos_token_id": EOS},
        {"name": "kimi", "weight": 0.5},
        {"name": "dapo_overlong", "max_len": 512, "cache_len": 128},
        {"name": "arora_zanette", "alpha": 0.05, "label": "az_005"},
    ])
    assert [f.__name__ for f in funcs] == ["correctness", "kimi", "dapo_overlong", "az_005"]
    assert weights == [1.0, 0.5, 1.0, 1.0]
    assert funcs[0].eos_token_ids == {EOS} and funcs[3].alpha == 0.05
    assert [f.requires_group for f in funcs] == [False, True, False, True]


@pytest.mark.parametrize("spec, message", [
    ({"name": "lenght"}, "valid names: .*arora_zanette.*correctness.*cosine.*dapo_overlong.*kimi"),
    ({"name": "arora_zanette", "alpha": -0.1}, "alpha must be >= 0"),
    ({"name": "arora_zanette", "alpha": 1.0}, r"alpha must be in \[0, 1\)"),
    ({"name": "arora_zanette", "alpha": "big"}, "alpha must be a finite number"),
    ({"name": "arora_zanette", "beta": 1}, r"unknown parameter\(s\) \['beta'\]"),
    ({"name": "cosine"}, "max_len"),
    ({"name": "cosine", "max_len": 0}, "max_len must be >= 1"),
    ({"name": "dapo_overlong", "max_len": 100, "cache_len": 200}, "must not exceed max_len"),
    ({"name": "dapo_overlong", "max_len": 100.5, "cache_len": 20}, "max_len must be an integer"),
    ({"name": "kimi", "weight": -1}, "weight must be >= 0"),
    ({"name": "correctness", "eos_token_id": "eos"}, "eos_token_id must be an integer"),
])
def test_build_rewards_rejects_bad_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        R.build_rewards([spec])


def test_build_rewards_rejects_duplicates_and_non_lists():
    with pytest.raises(ValueError, match="appears twice"):
        R.build_rewards([{"name": "kimi"}, {"name": "kimi"}])
    with pytest.raises(ValueError, match="non-empty list"):
        R.build_rewards({"name": "kimi"})  # type: ignore[arg-type]


def test_check_group_size():
    funcs, _ = R.build_rewards([{"name": "correctness"}, {"name": "arora_zanette"}])
    R.check_group_size(funcs[:1], 1)  # per-sample rewards are fine with one generation
    with pytest.raises(ValueError, match=r"\['arora_zanette'\].*num_generations >= 2"):
        R.check_group_size(funcs, 1)
    with pytest.raises(ValueError, match="num_generations must be an integer"):
        R.check_group_size(funcs, 2.0)  # type: ignore[arg-type]
    R.check_group_size(funcs, 4)
    assert funcs[1].expected_group_size == 4 and funcs[0].expected_group_size is None


def test_split_group_is_reported(caplog):
    az = R.AroraZanette(eos_token_id=EOS)
    R.check_group_size([az], 4)
    with caplog.at_level(logging.WARNING, logger=R.__name__):
        az(prompts=["a", "a", "b", "b", "b", "b"], completions=[RIGHT] * 6, completion_ids=[ids(5)] * 6,
           answer=["4"] * 6)
    assert "not multiples of num_generations=4" in caplog.text


# ---------------------------------------------------------------- golds


def test_validate_dataset_golds_names_bad_rows():
    from datasets import Dataset

    R.validate_dataset_golds([{"answer": "4"}, {"answer": 7}, {"answer": "\\frac{1}{2}"}])
    with pytest.raises(ValueError, match=r"row 1: missing gold None.*row 2: missing gold '  '"):
        R.validate_dataset_golds([{"answer": "4"}, {"answer": None}, {"answer": "  "}])
    with pytest.raises(ValueError, match="row 1: unparseable gold"):
        R.validate_dataset_golds(Dataset.from_dict({"answer": ["4", "\\frac{"]}))
    with pytest.raises(ValueError, match="no 'gold' column"):
        R.validate_dataset_golds(Dataset.from_dict({"answer": ["4"]}), "gold")
    with pytest.raises(ValueError, match="row 0 has no 'answer' field"):
        R.Correctness().check_gold([{"solution": "4"}])

