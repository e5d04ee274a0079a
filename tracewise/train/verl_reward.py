"""tracewise rewards as a verl custom reward function (the multi-node scale-out path).

verl loads a custom reward from a file: ``custom_reward_function.path`` (``reward.custom_reward_function``
in newer verl) points at this file and ``name`` picks the function; ``reward_kwargs`` there are
passed to every call. Two entry points, matching verl's two calling conventions:

* ``compute_score(data_source, solution_str, ground_truth, extra_info=None, **reward_kwargs)`` —
  verl's per-sample contract (``naive`` and ``dapo`` reward managers, the reward loop). It can only
  run rewards that need one sample: ``correctness``, ``cosine``, ``dapo_overlong``.
* ``compute_score_batch(data_sources, solution_strs, ground_truths, extra_infos, **reward_kwargs)`` —
  verl's ``batch`` reward manager contract. The group-normalised rewards (``arora_zanette``,
  ``kimi``) need every sample of a prompt together; verl does not pass its group ``uid`` to reward
  functions, so the group is read from ``extra_info[group_key]`` (default ``index``: a per-prompt id
  that verl's data preprocessing scripts and :func:`export_parquet` write). verl versions whose
  reward loop scores one sample at a time (it calls the batch manager with one row) cannot compute
  these rewards: pass ``num_generations`` and a split group is reported as a warning.

``reward_kwargs`` (all optional): ``rewards`` — a spec list exactly as in ``tracewise train rl``
(``[{name: arora_zanette, alpha: 0.1}]``, weights combine them); ``tokenizer`` — the policy's
tokenizer path, to count lengths in tokens; ``max_resp_len`` — verl's ``data.max_response_length``,
a response of that many tokens counts as truncated (never correct); ``group_key``;
``num_generations`` (``actor_rollout_ref.rollout.n``). Length is never counted in characters: it
comes from ``extra_info["response_length"]`` when a reward manager provides it, else from the
tokenizer, else it is an error for a reward that needs it.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from collections.abc import Mapping, Sequence
from typing import Any

from tracewise.train.rewards import _gold_text, _is_correct, build_rewards, check_group_size, validate_dataset_golds

log = logging.getLogger(__name__)

_DEFAULT = ({"name": "correctness"},)
_LENGTH_FREE = {"correctness"}
# verl's reward loop adds these when a reward model is served; a rule-based reward ignores them.
_VERL_EXTRAS = ("reward_router_address", "reward_model_tokenizer")


@functools.lru_cache(maxsize=32)
def _built(specs_json: str, num_generations: int | None):
    funcs, weights = build_rewards(json.loads(specs_json))
    if num_generations is not None:
        check_group_size(funcs, num_generations)
    return funcs, weights


def _plain(value: Any) -> Any:
    """OmegaConf DictConfig/ListConfig (verl's reward_kwargs) as plain dicts and lists."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [_plain(v) for v in value]
    return value


@functools.lru_cache(maxsize=4)
def _tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, trust_remote_code=False)  # only counts tokens: never run model code


def _lengths(texts: Sequence[str], infos: Sequence[dict], tokenizer: Any, needed: bool) -> list[int | None]:
    """Token lengths: verl's own count when given, else the text re-tokenised (verl decodes without
    special tokens, so this misses the EOS token: the same offset for every sample of a group)."""
    out: list[int | None] = []
    tok = _tokenizer(str(tokenizer)) if isinstance(tokenizer, (str, Path)) else tokenizer
    for text, info in zip(texts, infos):
        if isinstance(info.get("response_length"), int):
            out.append(int(info["response_length"]))
        elif tok is not None:
            out.append(len(tok(text, add_special_tokens=False)["input_ids"]))
        elif needed:
            raise ValueError("a length reward needs token lengths: set reward_kwargs.tokenizer to the policy's "
                             "tokenizer path (or pass extra_info['response_length']); characters are never used")
        else:
            out.append(None)
    return out


def score_batch(solution_strs: Sequence[str], ground_truths: Sequence[Any], extra_infos: Sequence[dict | None] | None = None,
                *, rewards: Sequence[dict] = _DEFAULT, tokenizer: Any = None, max_resp_len: int | None = None,
                group_key: str = "index", num_generations: int | None = None, grouped: bool = True) -> list[dict]:
    """Score responses with tracewise reward specs; one dict per response (``score`` = weighted sum)."""
    n = len(solution_strs)
    infos = [dict(i or {}) for i in (extra_infos if extra_infos is not None else [None] * n)]
    if len(ground_truths) != n or len(infos) != n:
        raise ValueError(f"got {n} solution_strs, {len(ground_truths)} ground_truths, {len(infos)} extra_infos")
    funcs, weights = _built(json.dumps(_plain(rewards), sort_keys=True), num_generations)
    group_rewards = [f.__name__ for f in funcs if f.requires_group]
    if group_rewards and not grouped:
        raise ValueError(f"{group_rewards} normalise length within a prompt's group: use compute_score_batch with "
                         "verl's batch reward manager (per-sample compute_score cannot see the group)")
    golds = []
    for i, gt in enumerate(ground_truths):
        gold = _gold_text(gt)
        if gold is None:
            raise ValueError(f"response {i}: unusable ground_truth {gt!r}; check the parquet's "
                             "reward_model.ground_truth (export_parquet validates golds)")
        golds.append(gold)
    needs_length = bool(max_resp_len) or any(f.__name__ not in _LENGTH_FREE for f in funcs)
    lengths = _lengths(solution_strs, infos, tokenizer, needs_length)
    truncated = [bool(info.get("truncated")) or (max_resp_len is not None and L is not None and L >= max_resp_len)
                 for info, L in zip(infos, lengths)]
    correct = [not t and _is_correct(str(s), g) for s, g, t in zip(solution_strs, golds, truncated)]
    groups = [[i] for i in range(n)]
    if group_rewards:
        keyed: dict[str, list[int]] = {}
        for i, info in enumerate(infos):
            if group_key not in info:
                raise ValueError(f"response {i}: extra_info has no '{group_key}' (a per-prompt id) to group samples "
                                 f"for {group_rewards}; keys: {sorted(info)}")
            keyed.setdefault(json.dumps([info[group_key], golds[i]], default=str), []).append(i)
        groups = list(keyed.values())
    lens = [0 if L is None else L for L in lengths]
    parts = {f.__name__: f.score(lens, correct, groups if f.requires_group else [[i] for i in range(n)]) for f in funcs}
    if group_rewards and num_generations and any(len(g) % num_generations for g in groups):
        log.warning("verl reward: group sizes %s are not multiples of num_generations=%d: a prompt's samples were "
                    "scored apart (a per-sample reward loop?), so the length penalty has no group to compare",
                    sorted({len(g) for g in groups}), num_generations)
    out = []
    for i in range(n):
        row = {"score": sum(w * parts[f.__name__][i] for f, w in zip(funcs, weights)), "acc": float(correct[i])}
        if lengths[i] is not None:
            row["response_tokens"] = lengths[i]
        row.update({f"reward_{name}": vals[i] for name, vals in parts.items()})
        out.append(row)
    return out


def compute_score(data_source: Any, solution_str: str, ground_truth: Any, extra_info: dict | None = None,
                  **reward_kwargs: Any) -> dict:
    """verl's per-sample reward (``custom_reward_function.name: compute_score``)."""
    for key in ("num_generations", *_VERL_EXTRAS):
        reward_kwargs.pop(key, None)
    return score_batch([solution_str], [ground_truth], [extra_info], grouped=False, **reward_kwargs)[0]


def compute_score_batch(data_sources: Sequence[Any], solution_strs: Sequence[str], ground_truths: Sequence[Any],
                        extra_infos: Sequence[dict | None] | None = None, **reward_kwargs: Any) -> list[dict]:
    """verl's batch reward (``reward_manager: batch``, ``custom_reward_function.name: compute_score_batch``)."""
    if len(data_sources) != len(solution_strs):
        raise ValueError(f"got {len(data_sources)} data_sources for {len(solution_strs)} solution_strs")
    for key in _VERL_EXTRAS:
        reward_kwargs.pop(key, None)
    reward_kwargs.setdefault("rewards", [{"name": "arora_zanette", "alpha": 0.1}])
    return score_batch(solution_strs, ground_truths, extra_infos, **reward_kwargs)


def export_parquet(problems: Any, path: str | Path, data_source: str = "tracewise") -> Path:
    """Write tracewise problems as a verl RL parquet (prompt, data_source, reward_model.ground_truth,
    extra_info.index); every gold is validated first, so no row is silently scored 0."""
    from datasets import Dataset

    from tracewise.data.sources import ProblemsConfig, load_problems

    rows = load_problems(problems if isinstance(problems, ProblemsConfig) else ProblemsConfig(**problems))
    validate_dataset_golds([{"answer": p.answer} for p in rows])
    ds = Dataset.from_list([{
        "data_source": data_source,
        "prompt": [{"role": "user", "content": p.question}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": str(p.answer)},
        "extra_info": {"index": i, "problem_id": p.id, "level": int(p.level)},
    } for i, p in enumerate(rows)])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.to_parquet(str(path))
    return path


if __name__ == "__main__":  # python -m tracewise.train.verl_reward OUT_DIR: world train/test parquets
    import sys

    from tracewise.data.sources import ProblemsConfig

    out = Path(sys.argv[1] if len(sys.argv) > 1 else "data/verl")
    for split in ("train", "test"):
        print(export_parquet(ProblemsConfig(source="world", split=split), out / f"{split}.parquet"))
