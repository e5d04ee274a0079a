"""Decide whether a completion's final answer matches the gold answer, without ever raising.

Extraction (which substring is the answer) is ours, because the formats are ours: the answer
span from :mod:`tracewise.core.text`, then ``\\boxed{}``, ``Answer:`` lines and "the answer is"
phrases. Equivalence (is ``0.5`` the same as ``\\frac{1}{2}``) is math-verify's.

Where tracewise and math-verify differ, deliberately (each has a test in tests/test_verify.py;
tests/fixtures/verify_regression.jsonl is the regression table, scripts/verify_agreement.py
measures both against it and buckets every disagreement over GSM8K, MATH-500, AIME and R1 traces):

* **Self-correction: the last box is the answer.** ``\\boxed{5}. That is wrong; ... the answer is
  \\boxed{7}`` is right for gold 7 and wrong for gold 5. (math-verify puts every box of the text
  in one set, so it marks gold 7 wrong.)
* **Multi-part gold: the set of the final run of boxes.** When the gold is a set of two or more
  answers (math-verify parses it to a set: ``(2, 2), (6, 2)``, ``\\{1,2,3\\}``, ``\\pm 2``) and the
  output boxes each part on its own (``\\boxed{(2, 2)} \\quad and \\quad \\boxed{(6, 2)}``,
  ``\\boxed{1},\\boxed{2},\\boxed{3}``, ``x = \\boxed{2} or x = \\boxed{-2}``), the boxes of the last
  run -- boxes joined only by spacing, punctuation, "and"/"or", ``\\quad``, ``$`` or "x =" -- are
  compared as one set. A box earlier in the text, separated by prose, is not part of the run.
* **Hedge: no credit for any gold that is not the last box.** ``\\boxed{3} or \\boxed{4}`` against
  a one-part gold is judged by its last box: right for gold 4, wrong for gold 3.
* **Identical text is the same answer.** A prediction equal to the gold up to whitespace is
  correct even where math-verify reads nonsense into it (``12:00`` parses to complex infinity,
  which math-verify will not compare).
* **Sums and products stay usable** when their range is symbolic or at most MAX_SUM_RANGE terms
  (``F_n = \\sum_{k=0}^{n-1} F_k F_{n-k-1}`` is a valid gold); integrals, limits and derivatives
  are refused (see below).
* **Answer sets written with "or"/"and"** (``21,16 or 11``, ``19, 46, and 82``) are sets, as for
  math-verify.
* **No marker, no answer.** Text with no box, ``Answer:`` line or "the answer is" phrase (and no
  bare answer after ``</think>``) has no answer; math-verify falls back to the last expression.
* **Names and [lists]** of the embedded world's domains are compared as text (see _SYMBOLIC_GOLD).

math-verify bounds its own run time with ``signal.alarm``, which only works in the main thread,
and verify is called from worker threads (trainer reward functions, thread-pool eval). So its
timeouts are switched off and the time is bounded here instead, by refusing inputs that could
blow up: long strings, deep nesting, runs of signs, expressions whose value has an astronomical
number of digits, and products of powers whose expansion has a high degree. Measured with
math-verify 0.9: ``10^{10^{10}}``, ``(10^{10})!`` and ``\\Gamma(10^9)`` parse in ~0.1 s but never
finish comparing; ``\\binom{10^8}{5\\cdot10^7}`` written with literal digits never finishes parsing;
``2^{10^8}`` (30M digits) compares in 0.7 s, so MAX_DIGITS = 10^5 leaves a wide margin. Each
refusal below names the input that motivated it. These guards bound sizes; they cannot prove
that every sympy simplification is fast, so every caller that scores model text (eval, the verify
stage, RL rewards) goes through :mod:`tracewise.verify.pool`, which adds a hard per-comparison
deadline.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from functools import lru_cache

import math_verify
import sympy
from math_verify import ExprExtractionConfig, LatexExtractionConfig

from tracewise.core.text import ParsedTrace, parse_completion
# The size bounds live in verify.size; re-exported here, where the guards are documented.
from tracewise.verify.size import (  # noqa: F401
    MAX_DIGITS, MAX_EXPANDED_DEGREE, MAX_POWER_DEGREE, MAX_SUM_RANGE, refused_size,
)

logger = logging.getLogger(__name__)

MAX_ANSWER_CHARS = 2000  # longer "answers" are not final answers and slow latex parsing down
# Bracket depth. latex parsing slows with depth ((((x+1)))) nested 20 deep took 6 s, 49 deep never
# finished), while no gold in GSM8K, MATH (train + test) or AIME 2024 nests deeper than 3.
MAX_NESTING = 12
MAX_BARE_ANSWER_CHARS = 100  # an answer span this short, on one line, is taken as the answer itself

_EXTRACTION = (LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig())
# These are evaluated eagerly inside the latex parser (\binom{10^8}{5\cdot10^7} never finished
# parsing, \operatorname{zeros}(10^5,10^5) allocates 10^10 cells), so they are refused on the string
# when anything large could feed them: a power, a factorial, a long literal or a matrix.
_EAGER_OPS = re.compile(
    r"\\(?:[dt]?binom|choose|det|gcd|lcm)\b"
    r"|\\operatorname\s*\{\s*(?:eye|zeros|ones|diag|rank|trace|tr|rref|nullspace|norm|cols|rows"
    r"|eig\w*|diagonalize|svd|SVD|hstack|vstack|orth\w*|gcd|lcm)\s*\}"
)
_LARGE_INPUT = re.compile(r"\^|!|\d{5,}|\\begin")

# A run of signs nests unary minus: 1900 of them took the latex parser 2 s (8 s under load).
_SIGN_RUN = re.compile(r"(?:[-+][ \t]*){50}")

# What may stand between the boxes of one multi-part answer: spacing, punctuation, math delimiters,
# "and"/"or" (plain or in \text{}), alignment, line breaks, and a variable named before a box ("x = ").
MAX_CONNECTOR_CHARS = 60
MAX_BOX_RUN = 32  # no answer has more parts; a longer run is cut to its last 32 boxes
_CONNECTOR = re.compile(
    r"(?:\s|[,;$&~]|\\[,;:! ]|\\q?quad\b|\\\\|\\[()\[\]]|\band\b|\bor\b|\b[a-zA-Z](?:_\{?\w{1,3}\}?)?\s*="
    r"|\\(?:text|mathrm|textrm|mbox)\s*\{\s*(?:and|or|,)?\s*\})*",
    re.IGNORECASE,
)
_LIST_WORD = re.compile(r"\b(?:and|or)\b", re.IGNORECASE)
_TEXT_LIST_WORD = re.compile(r"\\(?:text|mathrm|textrm|mbox)\s*\{\s*(?:and|or)\s*\}", re.IGNORECASE)

_CURRENCY = re.compile(r"^(-?)\\\$\s*(?=[-\d.])")
_THOUSANDS = re.compile(r"(?<=\d)(?:,\\!|\{,\})(?=\d{3}(?!\d))")
_MATH_DELIMITED = re.compile(r"(?<!\\)\$|\\boxed|\\\(|\\\[")  # an escaped \$ is a dollar sign

_BOXED_OR_BRACE = re.compile(r"\\(?:boxed|fbox)\s*\{|[{}]")
# [ \t]* rather than \s*: \s would let every line start scan ahead over all following newlines.
_ANSWER_LINE = re.compile(
    r"^[ \t]*(?:\*\*)?(?:final[ \t]+)?answer(?:\*\*)?[ \t]*[:\uff1a][ \t]*(?P<value>[^\n]*\S)[ \t]*$",
    re.IGNORECASE | re.MULTILINE,
)
# The value ends at a sentence end or line end; no \s* inside the lazy loop (quadratic on spaces).
_ANSWER_PHRASE = re.compile(r"answer\s+is\s*:?[ \t]*(?P<value>[^\n]+?)(?:\.\s|\.$|\n|$)", re.IGNORECASE)
_HARMONY_FINAL = re.compile(
    r"<\|channel\|>final[^<]*<\|message\|>(?P<content>.*?)(?:<\|end\|>|<\|return\|>|\Z)", re.DOTALL
)


class _DropTimeoutDisabledWarning(logging.Filter):
    """math-verify warns once that its timeout is off; that is deliberate here (see module doc)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_DropTimeoutDisabledWarning())


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of one verification; ``reason`` is one of records.VERDICT_REASONS."""

    correct: bool
    reason: str
    pred: str | None
    timed_out: bool = False  # set by tracewise.verify.pool when the comparison missed its deadline


def _boxes(text: str) -> list[tuple[int, int, str]]:
    """``(start, end, content)`` of every complete outermost ``\\boxed{...}`` / ``\\fbox{...}``, in order.

    One linear pass with a stack, so unbalanced or adversarial input cannot make it quadratic.
    """
    stack: list[tuple[int, int] | None] = []  # per open brace: (box start, content start) if it opened a box
    found: list[tuple[int, int, str]] = []
    for m in _BOXED_OR_BRACE.finditer(text):
        tok = m.group()
        if tok == "}":
            if stack:
                opened = stack.pop()
                if opened is not None:
                    start, content = opened
                    while found and found[-1][0] > start:  # boxes nested in this one are not outermost
                        found.pop()
                    found.append((start, m.end(), text[content : m.start()]))
        else:
            stack.append((m.start(), m.end()) if tok != "{" else None)
    return found


def _last_boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed{...}`` / ``\\fbox{...}``, braces balanced."""
    boxes = _boxes(text)
    return boxes[-1][2] if boxes else None


def _final_box_group(text: str) -> list[str]:
    """Contents of the last run of boxes joined only by connectors (``\\boxed{1}, \\boxed{2} and \\boxed{3}``)."""
    boxes = _boxes(text)
    group: list[str] = []
    for i in range(len(boxes) - 1, -1, -1):
        group.append(boxes[i][2])
        if i == 0 or len(group) >= MAX_BOX_RUN:
            break
        gap = text[boxes[i - 1][1] : boxes[i][0]]
        if len(gap) > MAX_CONNECTOR_CHARS or not _CONNECTOR.fullmatch(gap):
            break
    return group[::-1]


def _one_part(value: str) -> bool:
    """Whether ``value`` is one answer, not a list: no comma, semicolon, "and" or "or" outside brackets."""
    depth = 0
    top: list[str] = []  # the characters outside any bracket
    for ch in value:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth = max(0, depth - 1)
        elif depth == 0:
            if ch in ",;":
                return False
            top.append(ch)
    return not (_LIST_WORD.search("".join(top)) or _TEXT_LIST_WORD.search(value))


def _clean(value: str) -> str:
    """Strip decoration that surrounds an answer: markdown bold, $...$, \\(...\\), a final period."""
    v = value.strip()
    for _ in range(3):  # decorations nest, e.g. **$5$.**
        before = v
        v = re.sub(r"(?i)I hope it is correct\.?$", "", v)
        v = v.strip().strip("*").strip().rstrip(".").strip()
        v = _CURRENCY.sub(r"\1", v)  # \$18: math-verify parses nothing from it
        for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
            if len(v) >= len(left) + len(right) and v.startswith(left) and v.endswith(right):
                v = v[len(left) : len(v) - len(right)].strip()
        if v == before:
            break
    return v


def extract_answer(text: str) -> str | None:
    """The final answer written in ``text``, or None.

    Rules, first that applies: harmony text is narrowed to its final channel; then the last
    ``\\boxed{}``/``\\fbox{}``; then the last ``Answer:`` / ``Final Answer:`` line; then the last
    "the answer is X" phrase; for harmony, the whole final message. Surrounding ``$``, ``**`` and a
    trailing period are removed.
    """
    return _extract(text)[0]


def _extract(text: str) -> tuple[str | None, tuple[str, ...]]:
    """``(answer, parts)``: :func:`extract_answer`, and when that answer is the last of a run of
    one-part boxes joined by connectors (``\\boxed{(2, 2)} and \\boxed{(6, 2)}``), every box of the run."""
    if not isinstance(text, str) or not text:
        return None, ()
    final = None
    matches = list(_HARMONY_FINAL.finditer(text))
    if matches:
        # The final channel is what the user sees; boxes inside the analysis are drafts.
        final = matches[-1].group("content")
        text = final
    group = _final_box_group(text)
    candidates = (
        group[-1] if group else None,
        next((m.group("value") for m in reversed(list(_ANSWER_LINE.finditer(text)))), None),
        next((m.group("value") for m in reversed(list(_ANSWER_PHRASE.finditer(text)))), None),
        final,
    )
    for i, raw in enumerate(candidates):
        if raw is not None and raw is not final:
            # "Final Answer: The final answer is $5$." (Minerva style) nests a phrase in the line.
            inner = list(_ANSWER_PHRASE.finditer(raw))
            raw = inner[-1].group("value") if inner else raw
        if raw is not None:
            value = _clean(raw)
            if value:
                parts: tuple[str, ...] = ()
                if i == 0 and len(group) > 1:
                    parts = tuple(p for p in (_clean(g) for g in group) if p)
                    if len(parts) < 2 or not all(_one_part(p) for p in parts):
                        parts = ()
                return value, parts
    return None, ()


def _nesting_depth(s: str) -> int:
    depth = best = 0
    for ch in s:
        if ch in "{([":
            depth += 1
            best = max(best, depth)
        elif ch in "})]":
            depth = max(0, depth - 1)
    return best


def _parse_math(s: str) -> tuple | None:
    """math-verify's parse of ``s`` (a bare answer or gold) or None when refused or unparseable."""
    parsed = _parse_or_refusal(s)
    return parsed if isinstance(parsed, tuple) else None


def refusal_reason(s: str) -> str | None:
    """Why ``s`` cannot be compared (a guard's name, or "unparseable"), or None when it can."""
    parsed = _parse_or_refusal(s)
    return parsed if isinstance(parsed, str) else None


def _parse_or_refusal(s: str) -> tuple | str:
    # Checked before the cache so that megabyte-long junk never becomes a cache key.
    if len(s) > MAX_ANSWER_CHARS:
        return f"longer than {MAX_ANSWER_CHARS} characters"
    if _nesting_depth(s) > MAX_NESTING:
        return f"brackets nested deeper than {MAX_NESTING}"
    if _SIGN_RUN.search(s):
        return "a run of signs"
    return _parse_math_cached(_normalise(s))


def _normalise(s: str) -> str:
    """Notation math-verify does not read: a currency sign (MATH-500 golds ``\\$18.90``, ``-\\$0.50``) and
    thousands separators inside other LaTeX (``\\frac{12}{5,\\!525}``)."""
    s = _CURRENCY.sub(r"\1", s.strip())
    return _THOUSANDS.sub("", s)


@lru_cache(maxsize=65536)
def _parse_math_cached(s: str) -> tuple | str:
    if _EAGER_OPS.search(s) and _LARGE_INPUT.search(s):
        logger.debug("refusing eagerly evaluated operation on large input: %.80s", s)
        return "an eagerly evaluated operation on large input"
    # math-verify extracts from prose; a bare "1/2" or "\frac{1}{2}" needs math delimiters.
    wrapped = s if _MATH_DELIMITED.search(s) else f"${s}$"
    try:
        parsed = math_verify.parse(
            wrapped, extraction_config=_EXTRACTION, fallback_mode="no_fallback", parsing_timeout=None
        )
        if not parsed:
            parsed = math_verify.parse(
                s, extraction_config=_EXTRACTION, fallback_mode="no_fallback", parsing_timeout=None
            )
        if not parsed:
            return "unparseable"
        for p in parsed:
            why = refused_size(p)
            if why:
                logger.debug("refusing %.80r: its %s is too large to compare in bounded time", s, why)
                return f"{why} too large"
        return tuple(parsed)
    except Exception:  # math-verify / sympy / recursion errors: treat as unparseable
        logger.debug("math-verify could not parse %.80r", s, exc_info=True)
        return "unparseable"


def parse_gold_ok(gold: str) -> bool:
    """Whether ``gold`` can serve as a gold answer (math-verify parses it within our bounds)."""
    return isinstance(gold, str) and _parse_math(gold.strip()) is not None


# Non-math golds of the embedded world's other domains (tracewise.world.domains): a capitalised name
# ("Bob") or a [...] list of 3+ items. math-verify 0.9 reads "Bob" as the product b*b*o (so "Obb"
# verifies as "Bob") and "1, 2, 3" as a set equal to "[3, 1, 2]"; these golds are compared as
# whitespace- and case-normalised strings instead. No GSM8K/MATH/AIME gold has either shape.
_WHITESPACE = re.compile(r"\s+")
_SYMBOLIC_GOLD = re.compile(r"[A-Z][a-z]+|\[[^\[\]\\,]*(?:,[^\[\]\\,]*){2,}\]")


@lru_cache(maxsize=65536)
def _compare(pred: str, gold: str) -> tuple[bool, str]:
    """(correct, reason) for an extracted prediction against a gold answer."""
    if _SYMBOLIC_GOLD.fullmatch(gold):
        ok = re.sub(r"\s+", "", pred).casefold() == re.sub(r"\s+", "", gold).casefold()
        return ok, "correct" if ok else "wrong"
    gold_parsed = _parse_math(gold)
    if gold_parsed is None:
        return False, "unparseable_gold"
    if _WHITESPACE.sub("", pred) == _WHITESPACE.sub("", gold):
        return True, "correct"  # the same text is the same answer, whatever math-verify reads into it
    pred_parsed = _parse_math(pred)
    if pred_parsed is None:
        return False, "wrong"  # an answer was given but it is not a readable math expression
    try:
        ok = math_verify.verify(list(gold_parsed), list(pred_parsed), timeout_seconds=None)
    except Exception:
        logger.debug("math-verify failed comparing %.80r with %.80r", pred, gold, exc_info=True)
        ok = False
    return bool(ok), "correct" if ok else "wrong"


def _predicted_answer(completion_text: str, parsed: ParsedTrace) -> tuple[str | None, tuple[str, ...]]:
    pred, parts = _extract(parsed.answer)
    if pred is None and parsed.format != "plain":
        # Only where markers delimit the answer span: a marker-less "no idea" is no answer.
        span = parsed.answer.strip()
        if span and "\n" not in span and len(span) <= MAX_BARE_ANSWER_CHARS:
            pred = _clean(span)  # the student writes the bare answer after </think>
    if not pred:
        pred, parts = _extract(completion_text)
    return pred or None, parts if pred else ()


def _clip(pred: str | None) -> str | None:
    return pred if pred is None or len(pred) <= MAX_ANSWER_CHARS else pred[:MAX_ANSWER_CHARS]


def prepare(completion_text: str, gold: str, *,
            truncated: bool = False) -> tuple[str, str | None, str, tuple[str, ...]]:
    """The cheap, in-process half of :func:`verify`: ``(gold, pred, status, parts)``, no math-verify call.

    Extraction is ours and linear-time (regexes without nested quantifiers, one-pass brace
    matching), so it runs in the caller; only :func:`judge_prepared` (math-verify parsing and
    comparison, whose run time sympy does not bound) needs a deadline. ``status`` is ``compare``,
    ``truncated``, ``no_answer``, ``too_long`` or ``error``. ``parts`` holds every box of the final
    run of boxes when there are several (compared as a set against a multi-part gold), else ``()``.
    Never raises.
    """
    gold_s = gold.strip() if isinstance(gold, str) else ""
    if not isinstance(completion_text, str):
        return gold_s, None, "no_answer", ()
    try:
        parsed = parse_completion(completion_text)
        pred, parts = _predicted_answer(completion_text, parsed)
    except Exception:  # e.g. a harmony marker with no message: model text may be any garbage
        logger.debug("could not split completion %.80r", completion_text, exc_info=True)
        return gold_s, None, "error", ()
    if truncated or parsed.truncated:
        return gold_s, _clip(pred), "truncated", ()
    if pred is None:
        return gold_s, None, "no_answer", ()
    if len(pred) > MAX_ANSWER_CHARS:
        # No final answer is this long; refused before math-verify and clipped for the verdict file.
        return gold_s, _clip(pred), "too_long", ()
    if sum(len(p) for p in parts) > MAX_ANSWER_CHARS:
        parts = ()
    return gold_s, pred, "compare", parts


def _multi_part(parsed: tuple) -> bool:
    """Whether a parsed gold is a set of two or more answers: ``(2, 2), (6, 2)``, ``\\{1,2,3\\}``, ``\\pm 3``."""
    return any(isinstance(p, sympy.FiniteSet) and len(p) >= 2 for p in parsed)


def judge_prepared(gold_s: str, pred: str | None, status: str, parts: tuple[str, ...] = ()) -> VerifyResult:
    """The math-verify half of :func:`verify`, on the output of :func:`prepare`. Never raises."""
    try:
        gold_parsed = _parse_math(gold_s)
        if gold_parsed is None:
            return VerifyResult(False, "unparseable_gold", None)
        if status == "compare":
            if len(parts) > 1 and _multi_part(gold_parsed):
                pred = ", ".join(parts)  # each part boxed on its own: the set of boxes is the answer
            correct, reason = _compare(pred, gold_s)
            return VerifyResult(correct, reason, pred)
        return VerifyResult(False, status if status in ("truncated", "no_answer") else "wrong", pred)
    except Exception:  # the contract is "never raises": a bug here must not kill a training run
        logger.warning("verify failed unexpectedly; counting as wrong", exc_info=True)
        return VerifyResult(False, "wrong", None)


def verify(completion_text: str, gold: str, *, truncated: bool = False) -> VerifyResult:
    """Check a completion's final answer against ``gold``. Never raises; safe in any thread.

    ``truncated`` is the caller's knowledge that generation hit its token limit; a completion
    whose thinking never closed is treated the same. Truncated completions are never correct,
    but their predicted answer (if any) is still reported for inspection.

    This runs in the calling process, bounded only by the size guards above. Batches (and any
    caller that needs a hard time bound per comparison) use :func:`tracewise.verify.pool.verify_many`,
    which runs :func:`judge_prepared` in worker processes with a per-task deadline.
    """
    try:
        return judge_prepared(*prepare(completion_text, gold, truncated=truncated))
    except Exception:  # the contract is "never raises": a bug here must not kill a training run
        logger.warning("verify failed unexpectedly; counting as wrong", exc_info=True)
        return VerifyResult(False, "wrong", None)
