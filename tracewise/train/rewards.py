"""Correctness and length-penalty rewards for RL on reasoning traces (TRL ``GRPOTrainer``, verl).

Each reward is a picklable callable object with TRL's signature ``reward(prompts, completions,
completion_ids, **dataset_columns) -> list[float | None]`` and a ``__name__`` (TRL logs
``rewards/<__name__>``). Shared conventions:

* **Length is tokens**: ``L = len(completion_ids[i])``, never characters (in TRL it includes the EOS
  token of a sample that stopped).
* **Truncation** (did not end with EOS; TRL strips EOS from the text): a ``truncated`` keyword list
  wins; else, if built with ``eos_token_id`` (an id or a list, e.g. EOS and pad as TRL's clip metric
  uses), ``truncated = completion_ids[i][-1] not in eos ids``; else every sample counts as complete
  and a warning is logged once. A truncated sample is never correct.
* **Groups**: GRPO passes a prompt's G samples together; group rewards group by identical
  (prompt, gold), prompts compared as canonical JSON so chat prompts work, in order of first
  appearance. Each process scores only its own slice, so keep ``per_device_train_batch_size *
  steps_per_generation`` a multiple of ``num_generations``; ``check_group_size`` records G so a
  split group is reported.
* **Gold** is the dataset column ``answer`` (``answer_field``); check it at load time with
  ``validate_dataset_golds`` so no row is silently scored 0.

``correctness``, ``arora_zanette`` and ``cosine`` are complete rewards; ``kimi`` and
``dapo_overlong`` are shaping terms to add to ``correctness`` with a weight. The verl adapter
(``compute_score`` / ``compute_score_batch``) is :mod:`tracewise.train.verl_reward`.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import math
import statistics
from typing import Any, Sequence

logger = logging.getLogger(__name__)

_VERDICT_CACHE_SIZE = 8192
# Several rewards score the same batch and math-verify parsing dominates their cost, so verdicts
# are shared through a small digest-keyed cache (digests keep long completions out of memory).
_verdict_cache: dict[bytes, bool] = {}


def clear_verdict_cache() -> None:
    """Forget cached verify() verdicts (tests, or after changing the verifier)."""
    _verdict_cache.clear()


def _key(text: str, gold: str) -> bytes:
    return hashlib.blake2b(f"{len(gold)}:{gold}{text}".encode(), digest_size=16).digest()


def _correct_many(texts: Sequence[str], golds: Sequence[str]) -> list[bool]:
    """verify() verdicts for complete (not truncated) texts, one batch through the deadline-bounded pool.

    Model text can make sympy run for minutes (``(x+1)^{199}(x+2)^{199}``); the pool
    (:mod:`tracewise.verify.pool`) runs each comparison in a worker process that is killed at its
    deadline, so a reward call never hangs training. A comparison that misses it scores 0.
    """
    keys = [_key(t, g) for t, g in zip(texts, golds)]
    todo = [i for i, k in enumerate(keys) if k not in _verdict_cache]
    if todo:
        from tracewise.verify.pool import verify_many  # lazy: math-verify and sympy are slow to import

        results = verify_many([(texts[i], golds[i], False) for i in todo])
        for i, res in zip(todo, results):
            _verdict_cache[keys[i]] = bool(res.correct)
    out = [_verdict_cache[k] for k in keys]
    while len(_verdict_cache) > _VERDICT_CACHE_SIZE:  # FIFO eviction; a batch is reused at once
        _verdict_cache.pop(next(iter(_verdict_cache)), None)
    return out


def _is_correct(text: str, gold: str) -> bool:
    return _correct_many([text], [gold])[0]


def completion_text(completion: Any) -> str:
    """Text of a TRL completion: a string, or the assistant messages of a conversational one."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):  # conversational: the generated assistant turn(s)
        return "".join(m["content"] for m in completion if isinstance(m, dict)
                       and m.get("role", "assistant") == "assistant" and isinstance(m.get("content"), str))
    raise ValueError(f"a completion must be a string or a list of chat messages, got {type(completion).__name__}")


def group_indices(prompts: Sequence[Any], golds: Sequence[Any] | None = None) -> list[list[int]]:
    """Sample indices per (prompt, gold), groups in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for i, prompt in enumerate(prompts):
        gold = golds[i] if golds is not None else None
        key = json.dumps([prompt, gold], sort_keys=True, ensure_ascii=False, default=str)
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def _gold_text(gold: Any) -> str | None:
    """A usable gold as text, or None; numbers are accepted because many datasets store them so."""
    if isinstance(gold, (int, float)) and not isinstance(gold, bool):
        return str(gold) if math.isfinite(gold) else None
    return gold if isinstance(gold, str) and gold.strip() else None


def _number(where: str, value: Any, *, minimum: float | None = None, integer: bool = False) -> Any:
    """Validate a user-given number; bools and non-finite values are rejected."""
    ok_type = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_type) or not math.isfinite(value):
        kind = "an integer" if integer else "a finite number"
        raise ValueError(f"{where} must be {kind}, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{where} must be >= {minimum}, got {value!r}")
    return value if integer else float(value)


class _Reward:
    """Shared plumbing: texts, token lengths, truncation, golds and correctness from TRL's call."""

    requires_group = False  # True: normalised within a prompt's group, needs num_generations >= 2
    needs_gold = True

    def __init__(self, name: str, answer_field: str = "answer", eos_token_id: int | Sequence[int] | None = None):
        if not isinstance(answer_field, str) or not answer_field:
            raise ValueError(f"answer_field must be a non-empty column name, got {answer_field!r}")
        ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or [])
        for tid in ids:
            _number("eos_token_id", tid, minimum=0, integer=True)
        self.__name__ = name
        self.answer_field = answer_field
        self.eos_token_ids = frozenset(ids)
        self.expected_group_size: int | None = None  # set by check_group_size
        self._warned: set[str] = set()

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning("%s: %s", self.__name__, message)

    def _truncation(self, completion_ids: Sequence[Sequence[int]], given: Any) -> list[bool]:
        n = len(completion_ids)
        if given is not None:
            if len(given) != n:
                raise ValueError(f"'truncated' has {len(given)} entries for {n} completions")
            return [bool(t) for t in given]
        if self.eos_token_ids:
            return [len(ids) == 0 or int(ids[-1]) not in self.eos_token_ids for ids in completion_ids]
        self._warn_once("no-eos", "no eos_token_id and no 'truncated' column: counting every sample as complete")
        return [False] * n

    def _golds(self, columns: dict, n: int) -> list[str]:
        if self.answer_field not in columns:
            available = sorted(k for k in columns if not k.startswith(("trainer_", "log_")))
            raise ValueError(f"{self.__name__}: no '{self.answer_field}' column; dataset columns: {available}")
        raw = columns[self.answer_field]
        if len(raw) != n:
            raise ValueError(f"'{self.answer_field}' has {len(raw)} entries for {n} completions")
        golds = [_gold_text(g) for g in raw]
        if None in golds:
            i = golds.index(None)
            raise ValueError(f"{self.__name__}: completion {i} has no usable gold {raw[i]!r}; "
                             "run validate_dataset_golds when loading the dataset")
        return golds  # type: ignore[return-value]

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any],
                 completion_ids: Sequence[Sequence[int]], **columns: Any) -> list[float | None]:
        """Score one batch with TRL's reward-function signature (extra columns arrive as keywords)."""
        n = len(completions)
        if len(prompts) != n or len(completion_ids) != n:
            raise ValueError(f"got {len(prompts)} prompts, {n} completions, {len(completion_ids)} completion_ids")
        lengths = [len(ids) for ids in completion_ids]
        correct: list[bool] = [False] * n
        golds = None
        if self.needs_gold:
            golds = self._golds(columns, n)
            truncated = self._truncation(completion_ids, columns.get("truncated"))
            texts = [completion_text(c) for c in completions]
            complete = [i for i in range(n) if not truncated[i]]
            verdicts = _correct_many([texts[i] for i in complete], [golds[i] for i in complete])
            for i, ok in zip(complete, verdicts):
                correct[i] = ok
        groups = group_indices(prompts, golds) if self.requires_group else [[i] for i in range(n)]
        expected = self.expected_group_size
        if self.requires_group and expected and any(len(g) % expected for g in groups):
            self._warn_once("split", f"group sizes {sorted({len(g) for g in groups})} are not multiples of "
                            f"num_generations={expected}: a prompt's samples are split across processes (or an "
                            "eval uses another G); make the per-process batch divisible by num_generations")
        return list(self.score(lengths, correct, groups))

    def score(self, lengths: Sequence[int], correct: Sequence[bool], groups: list[list[int]]) -> list[float]:
        """Rewards from token lengths, correctness flags (truncated already False) and groups."""
        raise NotImplementedError


class Correctness(_Reward):
    """1.0 if verify() accepts the completion against the gold, else 0.0; truncated → 0.0."""

    def __init__(self, answer_field: str = "answer", eos_token_id: int | Sequence[int] | None = None):
        super().__init__("correctness", answer_field, eos_token_id)

    def score(self, lengths: Sequence[int], correct: Sequence[bool], groups: list[list[int]]) -> list[float]:
        return [1.0 if c else 0.0 for c in correct]

    def check_gold(self, rows: Any) -> None:
        """Raise ValueError naming the first bad rows if any gold is missing or unparseable."""
        validate_dataset_golds(rows, self.answer_field)


class AroraZanette(_Reward):
    """Arora & Zanette (2025), "Training Language Models to Reason Efficiently".

    ``r = 1[correct] * (1 - alpha * sigmoid((L - mean) / (std + 1e-7)))`` with mean and std over the
    lengths of the *correct* samples of the prompt's group. std is the population std (ddof=0), as
    the authors' reward server computes it (``np.std``); a group with one correct sample has z = 0,
    so r = 1 - alpha/2. alpha must be in [0, 1) (the paper's range; it sweeps 0.05–0.4) so that
    every correct sample still outranks every wrong one.
    """

    requires_group = True

    def __init__(self, alpha: float = 0.1, answer_field: str = "answer",
                 eos_token_id: int | Sequence[int] | None = None):
        super().__init__("arora_zanette", answer_field, eos_token_id)
        self.alpha = _number("alpha", alpha, minimum=0.0)
        if self.alpha >= 1.0:
            raise ValueError(f"alpha must be in [0, 1) so a correct answer always beats a wrong one, got {alpha!r}")

    def score(self, lengths: Sequence[int], correct: Sequence[bool], groups: list[list[int]]) -> list[float]:
        out = [0.0] * len(lengths)
        for group in groups:
            right = [i for i in group if correct[i]]
            if not right:
                continue
            mean = statistics.fmean(lengths[i] for i in right)
            std = statistics.pstdev([float(lengths[i]) for i in right])
            for i in right:
                z = (lengths[i] - mean) / (std + 1e-7)
                out[i] = 1.0 - self.alpha * 0.5 * (1.0 + math.tanh(z / 2.0))  # sigmoid(z), overflow-free
        return out


class KimiLength(_Reward):
    """Kimi k1.5 length reward (Kimi Team 2025, "Scaling RL with LLMs"), a term to add to ``correctness``.

    Per group, with L_min/L_max over *all* its samples: ``lam = 0.5 - (L - L_min) / (L_max - L_min)``;
    correct → lam, wrong (or truncated) → min(0, lam). When every sample has the same length the
    formula is 0/0; we give 0 to all, the convention of the open-r1 reference implementation.
    """

    requires_group = True

    def __init__(self, answer_field: str = "answer", eos_token_id: int | Sequence[int] | None = None):
        super().__init__("kimi", answer_field, eos_token_id)

    def score(self, lengths: Sequence[int], correct: Sequence[bool], groups: list[list[int]]) -> list[float]:
        out = [0.0] * len(lengths)
        for group in groups:
            lo, hi = min(lengths[i] for i in group), max(lengths[i] for i in group)
            for i in group:
                lam = 0.0 if hi == lo else 0.5 - (lengths[i] - lo) / (hi - lo)
                out[i] = lam if correct[i] else min(0.0, lam)
        return out


class CosineLength(_Reward):
    """Cosine length-scaled reward of Yeo et al. (2025), "Demystifying Long Chain-of-Thought Reasoning".

    ``r = rL + (r0 - rL) * (1 + cos(pi * L / max_len)) / 2`` — r0 at L = 0, rL at L = max_len — with
    (r0, rL) = (correct_r0, correct_rL) for correct samples and (wrong_r0, wrong_rL) for wrong ones,
    and ``exceed_penalty`` for any sample with L >= max_len, correct or not. Defaults are the paper's
    (correct 2.0 → 1.0, wrong -10 → 0, exceed -10): short correct answers earn most, and a wrong
    answer is penalised less the longer it thought. The authors' code fires the exceed penalty a
    small margin before max_len; lower max_len by that margin to approximate it.
    """

    def __init__(self, max_len: int, correct_r0: float = 2.0, correct_rL: float = 1.0, wrong_r0: float = -10.0,
                 wrong_rL: float = 0.0, exceed_penalty: float = -10.0, answer_field: str = "answer",
                 eos_token_id: int | Sequence[int] | None = None):
        super().__init__("cosine", answer_field, eos_token_id)
        self.max_len = _number("max_len", max_len, minimum=1, integer=True)
        self.correct_r0, self.correct_rL = _number("correct_r0", correct_r0), _number("correct_rL", correct_rL)
        self.wrong_r0, self.wrong_rL = _number("wrong_r0", wrong_r0), _number("wrong_rL", wrong_rL)
        self.exceed_penalty = _number("exceed_penalty", exceed_penalty)

    def score(self, lengths: Sequence[int], correct: Sequence[bool], groups: list[list[int]]) -> list[float]:
        out = []
        for length, ok in zip(lengths, correct):
            if length >= self.max_len:
                out.append(self.exceed_penalty)
                continue
            r0, r_l = (self.correct_r0, self.correct_rL) if ok else (self.wrong_r0, self.wrong_rL)
            out.append(r_l + 0.5 * (r0 - r_l) * (1.0 + math.cos(math.pi * length / self.max_len)))
        return out


class DapoOverlong(_Reward):
    """DAPO soft overlong punishment (Yu et al. 2025), a term to add to ``correctness``.

    0 for L <= max_len - cache_len, then a linear ramp ``(max_len - cache_len - L) / cache_len`` down to
    -1 at L = max_len, and -1 beyond. Needs no gold and ignores correctness.
    """

    needs_gold = False

    def __init__(self, max_len: int, cache_len: int):
        super().__init__("dapo_overlong")
        self.max_len = _number("max_len", max_len, minimum=1, integer=True)
        self.cache_len = _number("cache_len", cache_len, minimum=1, integer=True)
        if self.cache_len > self.max_len:
            raise ValueError(f"cache_len ({cache_len}) must not exceed max_len ({max_len})")

    def score(self, lengths: Sequence[int], correct: Sequence[bool], groups: list[list[int]]) -> list[float]:
        soft = self.max_len - self.cache_len
        return [0.0 if L <= soft else (soft - L) / self.cache_len if L <= self.max_len else -1.0 for L in lengths]


REWARDS: dict[str, type[_Reward]] = {
    "correctness": Correctness,
    "arora_zanette": AroraZanette,
    "kimi": KimiLength,
    "cosine": CosineLength,
    "dapo_overlong": DapoOverlong,
}


def build_rewards(specs: list[dict]) -> tuple[list[_Reward], list[float]]:
    """Reward objects and their weights (for ``GRPOConfig.reward_weights``) from config specs.

    Each spec is ``{"name": <one of REWARDS>, "weight": float (default 1.0), ...constructor params}``;
    an optional ``"label"`` renames the reward in TRL's logs (needed when a name is used twice).
    """
    if not isinstance(specs, (list, tuple)) or not specs:
        raise ValueError(f"rewards must be a non-empty list of specs like {{'name': 'correctness'}}, got {specs!r}")
    funcs: list[_Reward] = []
    weights: list[float] = []
    for k, spec in enumerate(specs):
        if not isinstance(spec, dict):
            raise ValueError(f"reward spec {k} must be a mapping, got {spec!r}")
        params = dict(spec)
        name = params.pop("name", None)
        if name not in REWARDS:
            raise ValueError(f"reward spec {k}: unknown name {name!r}; valid names: {sorted(REWARDS)}")
        where = f"reward spec {k} ({name})"
        weight = _number(f"{where}: weight", params.pop("weight", 1.0), minimum=0.0)
        label = params.pop("label", name)
        if not isinstance(label, str) or not label:
            raise ValueError(f"{where}: label must be a non-empty string, got {label!r}")
        allowed = [p for p in inspect.signature(REWARDS[name].__init__).parameters if p != "self"]
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise ValueError(f"{where}: unknown parameter(s) {unknown}; valid: {['weight', 'label', *allowed]}")
        try:
            func = REWARDS[name](**params)
        except (TypeError, ValueError) as err:  # TypeError: a required parameter is missing
            raise ValueError(f"{where}: {err}") from None
        if label in {f.__name__ for f in funcs}:
            raise ValueError(f"{where}: reward '{label}' appears twice; give one a distinct 'label'")
        func.__name__ = label
        funcs.append(func)
        weights.append(weight)
    return funcs, weights


def check_group_size(rewards: Sequence[Any], num_generations: int) -> None:
    """Reject group-normalised rewards with groups of one, and record G so split groups are reported."""
    _number("num_generations", num_generations, minimum=1, integer=True)
    grouped = [r for r in rewards if getattr(r, "requires_group", False)]
    if grouped and num_generations < 2:
        names = [getattr(r, "__name__", type(r).__name__) for r in grouped]
        raise ValueError(f"{names} normalise length within a prompt's samples and need num_generations >= 2, "
                         f"got {num_generations}")
    for reward in grouped:
        reward.expected_group_size = num_generations


def validate_dataset_golds(dataset: Any, answer_field: str = "answer") -> None:
    """Raise ValueError naming the rows whose gold is missing or unparseable (call at load time).

    ``dataset`` is a ``datasets.Dataset`` (one split) or an iterable of dict rows.
    """
    from tracewise.verify.answer import parse_gold_ok  # lazy: math-verify and sympy are slow to import

    columns = getattr(dataset, "column_names", None)
    if isinstance(columns, dict):
        raise ValueError(f"pass one split of the dataset, not a DatasetDict with splits {sorted(columns)}")
    if columns is not None:
        if answer_field not in columns:
            raise ValueError(f"dataset has no '{answer_field}' column; columns: {columns}")
        golds = list(dataset[answer_field])
    else:
        golds = []
        for i, row in enumerate(dataset):
            if not isinstance(row, dict) or answer_field not in row:
                raise ValueError(f"row {i} has no '{answer_field}' field")
            golds.append(row[answer_field])
    bad = []
    for i, raw in enumerate(golds):
        gold = _gold_text(raw)
        if gold is None:
            bad.append(f"row {i}: missing gold {raw!r}")
        elif not parse_gold_ok(gold):
            bad.append(f"row {i}: unparseable gold {gold[:80]!r}")
    if bad:
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise ValueError(f"{len(bad)} row(s) have unusable '{answer_field}' golds: {'; '.join(bad[:5])}{more}")

