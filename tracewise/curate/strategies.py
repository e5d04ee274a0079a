"""Curation strategies: which ``target_size`` (problem, teacher trace) pairs to train on.

They run inside ``curate`` on the pool that survived decontamination, dedup and the correctness
filter, and pick one trace per problem:

- ``random``: a seeded random subset; each problem's trace from the teacher the mix would pick.
- ``s1`` (Muennighoff et al. 2025): quality (finished trace with an answer) → difficulty (problems a
  reference student gets wrong, from its eval ``samples.jsonl``; without one, higher level then
  longer traces) → diversity (round-robin over topic × level groups, longer traces first). s1 keeps
  the longest trace, as it favoured long reasoning.
- ``limo`` (Ye et al. 2025): the rule-based trace quality score — length 30%, verification words
  20%, exploratory words 25%, connectives 25%, keyword counts per token, each feature divided by its
  maximum over the candidate traces — best trace per problem, top scores kept.
- ``adaptive``: the same problems as ``random`` (same seed), so only the teacher choice differs:
  the verbose teacher's trace for hard problems (difficulty >= threshold), the concise one's for easy.

Difficulty of a problem is ``1 - accuracy`` of the reference student's samples when given, else its
level scaled to [0, 1] over the pool (the easiest level 0, the hardest 1).
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from tracewise.core.config import doc
from tracewise.core.records import Problem, Sample, Trace, from_dict, iter_jsonl

log = logging.getLogger(__name__)

STRATEGIES = ("all", "random", "s1", "limo", "adaptive")
_WORD = re.compile(r"[a-z]+(?:[-'][a-z]+)*")


@dataclass
class LimoConfig:
    """LIMO's rule-based trace quality score: weights and keyword lists (phrases allowed)."""

    w_length: float = doc("Weight of trace length (tokens).", 0.30)
    w_verification: float = doc("Weight of verification-word frequency.", 0.20)
    w_exploratory: float = doc("Weight of exploratory-word frequency.", 0.25)
    w_connectives: float = doc("Weight of connective frequency.", 0.25)
    verification: list[str] = doc("Self-verification words.", factory=lambda: [
        "check", "checks", "checking", "verify", "verifies", "confirm", "confirms", "re-check", "recheck",
        "double-check", "indeed", "correct", "consistent"])
    exploratory: list[str] = doc("Exploratory words.", factory=lambda: [
        "wait", "perhaps", "maybe", "might", "alternatively", "hmm", "suppose", "what if", "let me try", "or"])
    connectives: list[str] = doc("Logical connectives.", factory=lambda: [
        "so", "therefore", "thus", "hence", "because", "since", "then", "first", "next", "finally"])

    def validate(self) -> None:
        ws = (self.w_length, self.w_verification, self.w_exploratory, self.w_connectives)
        if any(w < 0 for w in ws) or sum(ws) <= 0:
            raise ValueError(f"curate.selection.limo: weights must be >= 0 with a positive sum, got {ws}")


@dataclass
class SelectionConfig:
    """Settings of the curation strategies (``curate.selection.*``)."""

    seed: int = doc("Seed of the random subset (random, adaptive) and of the s1 group order.", 0)
    reference: str = doc("Reference student's eval run dir (or its samples.jsonl) on the training problems; "
                         "s1 and adaptive read difficulty from it. Empty = use problem levels.", "", hash=False)
    s1_hard_accuracy: float = doc("s1: a problem is hard when the reference student's accuracy is <= this.", 0.0)
    s1_fallback_fraction: float = doc("s1 without a reference: keep this hardest fraction (level, then longer "
                                      "traces) before the diversity step.", 0.5)
    adaptive_threshold: float = doc("adaptive: difficulty in [0, 1] at or above which the verbose teacher is used.",
                                    0.5)
    verbose_teacher: str = doc("adaptive: teacher for hard problems (default: longest mean trace).", "")
    concise_teacher: str = doc("adaptive: teacher for easy problems (default: shortest mean trace).", "")
    limo: LimoConfig = doc("LIMO score weights and word lists.", factory=LimoConfig)

    def validate(self) -> None:
        for name in ("s1_hard_accuracy", "s1_fallback_fraction", "adaptive_threshold"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"curate.selection.{name} must be in [0, 1], got {v}")
        if self.reference and not Path(self.reference).exists():
            raise ValueError(f"curate.selection.reference: {self.reference}: not found")
        self.limo.validate()


def reference_file(path: str) -> Path:
    p = Path(path)
    return p / "samples.jsonl" if p.is_dir() else p


def load_reference(path: str) -> dict[str, float]:
    """problem id -> the reference student's accuracy over its samples (eval ``samples.jsonl``)."""
    f = reference_file(path)
    if not f.is_file():
        raise ValueError(f"curate.selection.reference: {f} not found (give an eval run dir or its samples.jsonl)")
    n, ok = Counter(), Counter()
    for lineno, obj in iter_jsonl(f):
        s = from_dict(Sample, obj, f"{f}:{lineno}")
        n[s.problem_id] += 1
        ok[s.problem_id] += s.correct
    return {pid: ok[pid] / n[pid] for pid in n}


def _phrase_count(ws: list[str], phrases: list[str]) -> int:
    total = 0
    for ph in phrases:
        pw = _WORD.findall(ph.lower())
        k = len(pw)
        if k:
            total += sum(1 for i in range(len(ws) - k + 1) if ws[i:i + k] == pw)
    return total


def limo_features(text: str, n_tokens: int, cfg: LimoConfig) -> dict[str, float]:
    """Raw features: length in tokens and keyword counts per token (0 for an empty trace)."""
    ws = _WORD.findall(text.lower())
    per = 1.0 / n_tokens if n_tokens > 0 else 0.0
    return {"length": float(n_tokens), "verification": _phrase_count(ws, cfg.verification) * per,
            "exploratory": _phrase_count(ws, cfg.exploratory) * per,
            "connectives": _phrase_count(ws, cfg.connectives) * per}


def limo_scores(features: dict[str, dict[str, float]], cfg: LimoConfig) -> dict[str, float]:
    """Weighted sum of features, each divided by its maximum over all candidates (0 if that is 0)."""
    weights = {"length": cfg.w_length, "verification": cfg.w_verification, "exploratory": cfg.w_exploratory,
               "connectives": cfg.w_connectives}
    top = {k: max((f[k] for f in features.values()), default=0.0) for k in weights}
    return {key: sum(w * (f[k] / top[k] if top[k] > 0 else 0.0) for k, w in weights.items())
            for key, f in features.items()}


@dataclass
class Selection:
    picks: dict[str, str]  # problem id -> teacher whose trace is used
    info: dict = field(default_factory=dict)


def difficulty(pool: list[str], problems: dict[str, Problem], reference: dict[str, float] | None) -> dict[str, float]:
    """Per problem in [0, 1]: 1 - reference accuracy, else the level scaled over the pool."""
    levels = [problems[p].level for p in pool]
    lo, hi = (min(levels), max(levels)) if levels else (0, 0)
    out = {}
    for pid in pool:
        if reference is not None and pid in reference:
            out[pid] = 1.0 - reference[pid]
        else:
            out[pid] = (problems[pid].level - lo) / (hi - lo) if hi > lo else 0.0
    return out


def topic(p: Problem) -> str:
    """The diversity group: domain plus the benchmark's subject when it has one (MATH), plus level."""
    sub = p.meta.get("subject") or p.meta.get("type") or ""
    return f"{p.domain}/{sub}/L{p.level}" if sub else f"{p.domain}/L{p.level}"


def _quality(tr: Trace) -> bool:
    """s1's quality step, as far as a trace shows it: finished, with a visible answer."""
    return tr.finish_reason == "stop" and bool(tr.answer_text.strip()) and tr.n_tokens > 0


def _s1(pool, problems, teachers, traces, n, cfg: SelectionConfig, reference) -> Selection:
    good = [pid for pid in pool if any(_quality(traces[t][pid]) for t in teachers)]
    if len(good) < n:
        raise ValueError(f"curate.target_size={n} but only {len(good)} problems pass s1's quality step")
    choice = {pid: max((t for t in teachers if _quality(traces[t][pid])), key=lambda t: (traces[t][pid].n_tokens, t))
              for pid in good}
    length = {pid: traces[choice[pid]][pid].n_tokens for pid in good}
    if reference is not None:
        covered = [pid for pid in good if pid in reference]
        hard = [pid for pid in covered if reference[pid] <= cfg.s1_hard_accuracy]
        rank = sorted(good, key=lambda p: (reference.get(p, 1.0), -length[p], p))
    else:
        covered = []
        rank = sorted(good, key=lambda p: (-problems[p].level, -length[p], p))
        hard = rank[:max(1, round(cfg.s1_fallback_fraction * len(rank)))]
    hard_set = set(hard)
    if len(hard) < n:  # s1 had 24k hard problems for 1k slots; a small pool tops up with the next hardest
        log.info("curate[s1]: %d hard problems for %d slots; topping up with the next hardest", len(hard), n)
        hard = hard + [p for p in rank if p not in hard_set][: n - len(hard)]
    groups: dict[str, list[str]] = defaultdict(list)
    for pid in sorted(hard, key=lambda p: (-length[p], p)):
        groups[topic(problems[pid])].append(pid)
    order = sorted(groups)
    random.Random(cfg.seed).shuffle(order)
    chosen: list[str] = []
    while len(chosen) < n:  # round-robin: each group gives its longest remaining trace in turn
        for g in order:
            if groups[g] and len(chosen) < n:
                chosen.append(groups[g].pop(0))
    info = {"quality_pass": len(good), "hard": len(hard_set), "reference_covered": len(covered),
            "groups": len(order)}
    return Selection({pid: choice[pid] for pid in chosen}, info)


def _limo(pool, teachers, traces, n, cfg: LimoConfig) -> Selection:
    feats = {(pid, t): limo_features(traces[t][pid].text, traces[t][pid].n_tokens, cfg) for pid in pool for t in teachers}
    scores = limo_scores(feats, cfg)
    best = {pid: max(teachers, key=lambda t: (scores[(pid, t)], t)) for pid in pool}
    chosen = sorted(pool, key=lambda p: (-scores[(p, best[p])], p))[:n]
    sel = [scores[(p, best[p])] for p in chosen]
    return Selection({p: best[p] for p in chosen}, {"score_min": min(sel, default=None),
                                                    "score_max": max(sel, default=None)})


def mix_teacher(seed: int, problem_id: str, teachers: list[str]) -> str:
    """The teacher whose trace the mix uses for ``problem_id``: depends on nothing but seed and id."""
    h = hashlib.sha256(f"mix|{seed}|{problem_id}".encode()).digest()
    return sorted(teachers)[int.from_bytes(h[:8], "little") % len(teachers)]


def _mean_tokens(teachers, traces, pool) -> dict[str, float]:
    return {t: sum(traces[t][p].n_tokens for p in pool) / max(1, len(pool)) for t in teachers}


def select(strategy: str, n: int, pool: list[str], problems: dict[str, Problem], teachers: list[str],
           traces: dict[str, dict[str, Trace]], cfg: SelectionConfig, mix_seed: int = 0) -> Selection:
    """Pick ``n`` problems (and one teacher each) from ``pool``; ValueError before any output if impossible."""
    if strategy not in STRATEGIES or strategy == "all":
        raise ValueError(f"curate.strategy: unknown strategy {strategy!r}; valid: {list(STRATEGIES)}")
    pool = sorted(pool)
    if n > len(pool):
        raise ValueError(f"curate.target_size={n} is larger than the pool: {len(pool)} problems survive "
                         "decontamination, dedup and the correctness filter")
    reference = load_reference(cfg.reference) if cfg.reference else None
    if strategy in ("random", "adaptive"):
        chosen = sorted(random.Random(cfg.seed).sample(pool, n))
        if strategy == "random":
            sel = Selection({p: mix_teacher(mix_seed, p, teachers) for p in chosen})
        else:
            means = _mean_tokens(teachers, traces, pool)
            verbose = cfg.verbose_teacher or max(teachers, key=lambda t: (means[t], t))
            concise = cfg.concise_teacher or min(teachers, key=lambda t: (means[t], t))
            bad = [t for t in (verbose, concise) if t not in teachers]
            if bad:
                raise ValueError(f"curate.selection: adaptive teacher(s) {bad} not among the teachers {teachers}")
            diff = difficulty(pool, problems, reference)
            picks = {p: verbose if diff[p] >= cfg.adaptive_threshold else concise for p in chosen}
            sel = Selection(picks, {"verbose": verbose, "concise": concise, "threshold": cfg.adaptive_threshold,
                                    "hard": sum(diff[p] >= cfg.adaptive_threshold for p in chosen)})
    elif strategy == "s1":
        sel = _s1(pool, problems, teachers, traces, n, cfg, reference)
    else:
        sel = _limo(pool, teachers, traces, n, cfg.limo)
    picked = [traces[t][p] for p, t in sel.picks.items()]
    sel.info.update({
        "strategy": strategy, "target_size": n, "pool": len(pool), "selected": len(sel.picks),
        "reference": "given" if reference is not None else "none (levels)",
        "teachers": dict(sorted(Counter(sel.picks.values()).items())),
        "levels": {str(k): v for k, v in sorted(Counter(problems[p].level for p in sel.picks).items())},
        "mean_tokens": sum(tr.n_tokens for tr in picked) / len(picked) if picked else None,
    })
    return sel


def render(info: dict) -> list[str]:
    """Markdown bullet lines for the curate table."""
    teachers = ", ".join(f"{n} from {t}" for t, n in info["teachers"].items())
    levels = ", ".join(f"L{k}: {v}" for k, v in info["levels"].items())
    tok = "n/a" if info["mean_tokens"] is None else f"{info['mean_tokens']:.1f}"
    return [f"- Strategy **{info['strategy']}**: {info['selected']} of {info['pool']} problems "
            f"(difficulty from reference: {info['reference']}); traces: {teachers}; levels: {levels}; "
            f"mean trace tokens {tok}. Dataset `selected`."]
