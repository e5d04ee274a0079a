"""Decide whether a completion's final answer matches the gold answer, without ever raising.

Extraction (which substring is the answer) is ours, because the formats are ours: the answer
span from :mod:`tracewise.traces`, then ``\\boxed{}``, ``Answer:`` lines and "the answer is"
phrases. Equivalence (is ``0.5`` the same as ``\\frac{1}{2}``) is math-verify's.

math-verify bounds its own run time with ``signal.alarm``, which only works in the main thread,
and verify is called from worker threads (trainer reward functions, thread-pool eval). So its
timeouts are switched off and the time is bounded here instead, by refusing inputs that could
blow up: long strings, deep nesting, and expressions whose value has an astronomical number of
digits. Measured with math-verify 0.9: ``10^{10^{10}}``, ``(10^{10})!`` and ``\\Gamma(10^9)`` parse
in ~0.1 s but never finish comparing; ``\\binom{10^8}{5\\cdot10^7}`` written with literal digits
never finishes parsing; ``2^{10^8}`` (30M digits) compares in 0.7 s, so MAX_DIGITS = 10^5 leaves
a wide margin. Each refusal below names the input that motivated it. These guards bound sizes; they
cannot prove that every sympy simplification is fast, but every refused shape is one that no
benchmark uses as a final answer.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from functools import lru_cache

import math_verify
import sympy
from math_verify import ExprExtractionConfig, LatexExtractionConfig

from tracewise.traces import ParsedTrace, parse_completion

logger = logging.getLogger(__name__)

MAX_ANSWER_CHARS = 2000  # longer "answers" are not final answers and slow latex parsing down
# Bracket depth. latex parsing slows with depth ((((x+1)))) nested 20 deep took 6 s, 49 deep never
# finished), while no gold in GSM8K, MATH (train + test) or AIME 2024 nests deeper than 3.
MAX_NESTING = 12
MAX_DIGITS = 100_000  # an expression whose value needs more digits is refused before comparing
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
    timed_out: bool = False  # set by tracewise.verify_pool when the comparison missed its deadline


def _last_boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed{...}`` / ``\\fbox{...}``, braces balanced.

    One linear pass with a stack, so unbalanced or adversarial input cannot make it quadratic.
    """
    stack: list[int | None] = []  # per open brace: content start if it opened a box, else None
    last: str | None = None
    for m in _BOXED_OR_BRACE.finditer(text):
        tok = m.group()
        if tok == "}":
            if stack:
                start = stack.pop()
                if start is not None:
                    last = text[start : m.start()]
        else:
            stack.append(m.end() if tok != "{" else None)
    return last


def _clean(value: str) -> str:
    """Strip decoration that surrounds an answer: markdown bold, $...$, \\(...\\), a final period."""
    v = value.strip()
    for _ in range(3):  # decorations nest, e.g. **$5$.**
        before = v
        v = re.sub(r"(?i)I hope it is correct\.?$", "", v)
        v = v.strip().strip("*").strip().rstrip(".").strip()
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
    if not isinstance(text, str) or not text:
        return None
    final = None
    matches = list(_HARMONY_FINAL.finditer(text))
    if matches:
        # The final channel is what the user sees; boxes inside the analysis are drafts.
        final = matches[-1].group("content")
        text = final
    candidates = (
        _last_boxed(text),
        next((m.group("value") for m in reversed(list(_ANSWER_LINE.finditer(text)))), None),
        next((m.group("value") for m in reversed(list(_ANSWER_PHRASE.finditer(text)))), None),
        final,
    )
    for raw in candidates:
        if raw is not None and raw is not final:
            # "Final Answer: The final answer is $5$." (Minerva style) nests a phrase in the line.
            inner = list(_ANSWER_PHRASE.finditer(raw))
            raw = inner[-1].group("value") if inner else raw
        if raw is not None:
            value = _clean(raw)
            if value:
                return value
    return None


def _nesting_depth(s: str) -> int:
    depth = best = 0
    for ch in s:
        if ch in "{([":
            depth += 1
            best = max(best, depth)
        elif ch in "})]":
            depth = max(0, depth - 1)
    return best


# Unevaluated calculus is not a final answer, and sympy's doit() on it has no time bound
# (\sum_{k=1}^{10^5} \sin(k) never finished comparing). Integrals, limits and derivatives are refused
# outright; sums and products are kept when their range is small or symbolic (a MATH-style gold
# such as F_n = \sum_{k=0}^{n-1} F_k F_{n-k-1} must stay usable).
_REFUSED_CALCULUS = (sympy.Integral, sympy.Limit, sympy.Derivative)
_SUM_LIKE = (sympy.Sum, sympy.Product)
MAX_SUM_RANGE = 1000  # a sum or product over more numeric terms than this is refused
_FACTORIAL_LIKE = (sympy.factorial, sympy.gamma, sympy.binomial, sympy.factorial2, sympy.subfactorial)
_EXP_LIKE = (sympy.exp, sympy.sinh, sympy.cosh)  # cosh(10^{10}) never finished comparing
# Polynomial expansion. math-verify's simplify(gold - pred) expands and factors products of powers
# of sums. Measured (idle machine; 2-5x that under load): (x+1)^{199} against (x+2)^{199} ~0.3 s, but
# (x+1)^{199}(x+2)^{199} against (x+1)^{199} 11 s and a third such factor never finished;
# (x+1)^{30}(x+2)^{30} against (x+1)^{199} ~1 s. So the degree that one power of a sum reaches is
# bounded, the degree that a product of sums reaches once expanded more tightly, and so is the
# number of monomials that degree allows in its variables, C(degree + vars, vars). No GSM8K, MATH
# or AIME gold comes near (the largest expanded degree among them is in the single digits).
MAX_POWER_DEGREE = 200  # one power of a sum: (x+1)^{200}
MAX_EXPANDED_DEGREE = 60  # a product that expands: (x+1)^{30}(x+2)^{30}
MAX_EXPANDED_TERMS = 5000


@dataclass(frozen=True)
class _Size:
    """Conservative size estimates of a sympy expression (inf: refused)."""

    log10: float  # upper bound on log10 of its magnitude
    degree: float  # polynomial degree in its free symbols (functions of symbols count as degree 1)
    expanded: float  # degree reached by expanding products of sums (0 when nothing expands)
    power: float = 0.0  # degree reached by expanding one power of a sum, (x+1)^{n}


_SMALL = _Size(1.0, 0.0, 0.0)
_REFUSED = _Size(math.inf, math.inf, math.inf)


def _log10_bound(expr) -> float:
    """Conservative upper bound on log10 of the magnitude of ``expr`` (inf when refused)."""
    return _size(expr, {}).log10


def _needs_expansion(expr, size: _Size) -> bool:
    return size.expanded > 0 or size.power > 0 or (isinstance(expr, sympy.Add) and size.degree > 0)


def _size(expr, env: dict) -> _Size:
    """Size bounds of ``expr``; ``env`` maps a bound summation variable to the log10 of its range.

    Free symbols count as values up to 10 (so ``x^{10^{10}}`` is refused too: comparing it would
    expand it) and as degree 1.
    """
    if isinstance(expr, sympy.Rational):  # Integer included; math.log10 is exact enough on big ints
        top = max(abs(int(expr.p)), int(expr.q))
        return _Size(math.log10(top) if top > 1 else 0.0, 0.0, 0.0)
    if isinstance(expr, sympy.Float):
        _sign, _mantissa, exponent, bitcount = expr._mpf_  # value < 2**(exponent + bitcount)
        return _Size(max(abs(exponent + bitcount) * math.log10(2), 1.0), 0.0, 0.0)
    if isinstance(expr, sympy.MatrixBase):
        parts = [_size(e, env) for e in expr]
        return _Size(*(max((getattr(p, f) for p in parts), default=0.0)
                       for f in ("log10", "degree", "expanded", "power")))
    if isinstance(expr, sympy.Symbol):
        return _Size(env.get(expr, 1.0), 0.0 if expr in env else 1.0, 0.0)
    if isinstance(expr, _REFUSED_CALCULUS):
        return _REFUSED
    if isinstance(expr, _SUM_LIKE):
        return _sum_size(expr, env)
    if not isinstance(expr, sympy.Basic) or not expr.args:
        return _SMALL if not getattr(expr, "free_symbols", None) else _Size(1.0, 1.0, 0.0)
    args = [_size(a, env) for a in expr.args]
    top = max(a.log10 for a in args)
    expanded = max(a.expanded for a in args)
    power = max(a.power for a in args)
    symbolic = bool(expr.free_symbols - set(env))
    # Below, a part's *value* (not its digit count) sets the size; beyond 10^12 nothing built
    # on it is a final answer, and 10**top would overflow a float anyway.
    if isinstance(expr, sympy.Pow):
        base, exp = args
        if exp.log10 > 12:
            return _REFUSED
        log10 = base.log10 * 10**exp.log10
        if expr.exp.is_Integer:
            n = abs(int(expr.exp))
            degree = n * base.degree
            if n >= 2 and _needs_expansion(expr.base, base):
                power = max(power, degree)  # (x+1)^{n}: a sum raised to a power
        else:
            degree = max(base.degree, 1.0 if symbolic else 0.0)
        return _Size(log10, degree, expanded, power)
    if isinstance(expr, sympy.Mul):
        degree = sum(a.degree for a in args)
        symbolic_factors = [(e, a) for e, a in zip(expr.args, args) if a.degree > 0]
        if len(symbolic_factors) > 1 and any(_needs_expansion(e, a) for e, a in symbolic_factors):
            expanded = max(expanded, degree)  # x(x+1), (x+1)(x+2): a product that expands; 2(x+1)^9 does not
        return _Size(sum(a.log10 for a in args), degree, expanded, power)
    if isinstance(expr, _FACTORIAL_LIKE):
        if top > 12:
            return _REFUSED
        n = 10**top
        return _Size(n * max(math.log10(n), 1.0), 1.0 if symbolic else 0.0, expanded, power)
    if isinstance(expr, _EXP_LIKE):
        return _Size(math.log10(math.e) * 10**top if top <= 12 else math.inf, 1.0 if symbolic else 0.0,
                     expanded, power)
    degree = max(a.degree for a in args)
    if isinstance(expr, sympy.Function):
        degree = 1.0 if symbolic else 0.0  # sin(x^2 + 1) is one new generator, not degree 2
    return _Size(top + 1.0, degree, expanded, power)  # Add, Eq, sets, floor, ... within one digit of their largest part


def _sum_size(expr, env: dict) -> _Size:
    """A Sum or Product: numeric ranges up to MAX_SUM_RANGE terms, or symbolic bounds."""
    inner = dict(env)
    terms = 1
    for limit in expr.limits:
        if len(limit) != 3:
            return _REFUSED
        var, lo, hi = limit
        lo_s, hi_s = _size(lo, env), _size(hi, env)
        if max(lo_s.log10, hi_s.log10) > 12:
            return _REFUSED
        if not (lo.free_symbols or hi.free_symbols):  # numeric bounds, at most 10^12 (checked above)
            try:
                lo_f, hi_f = float(lo.evalf()), float(hi.evalf())  # 10**9 may arrive unevaluated
            except (TypeError, ValueError):
                return _REFUSED
            if not (math.isfinite(lo_f) and math.isfinite(hi_f)):
                return _REFUSED
            count = max(0, math.floor(hi_f) - math.ceil(lo_f) + 1)
            if count > MAX_SUM_RANGE:
                return _REFUSED
            terms *= max(count, 1)
            inner[var] = math.log10(max(abs(lo_f), abs(hi_f), 1.0))
        else:  # symbolic bounds: the variable is as large as the bounds (a symbol counts as up to 10)
            inner[var] = max(lo_s.log10, hi_s.log10, 1.0)
    body = _size(expr.function, inner)
    if math.isinf(body.log10):
        return _REFUSED
    if isinstance(expr, sympy.Product):
        grows = body.degree * terms if terms > 1 else body.degree
        return _Size(body.log10 * terms, grows, max(body.expanded, grows if body.degree else 0.0), body.power)
    return _Size(body.log10 + math.log10(terms) + 1.0, max(body.degree, 1.0), body.expanded, body.power)


def _refused_size(expr) -> str | None:
    """Why ``expr`` is too large to compare within our bounds, or None."""
    size = _size(expr, {})
    if size.log10 > MAX_DIGITS:
        return "value"
    if size.expanded > MAX_EXPANDED_DEGREE or size.power > MAX_POWER_DEGREE:
        return "expansion degree"
    degree = max(size.expanded, size.power)
    n_vars = len(getattr(expr, "free_symbols", ()) or ())
    if degree and n_vars > 1 and math.comb(int(degree) + n_vars, n_vars) > MAX_EXPANDED_TERMS:
        return "expansion terms"
    return None


def _parse_math(s: str) -> tuple | None:
    """math-verify's parse of ``s`` (a bare answer or gold) or None when refused or unparseable."""
    # Checked before the cache so that megabyte-long junk never becomes a cache key.
    if len(s) > MAX_ANSWER_CHARS or _nesting_depth(s) > MAX_NESTING or _SIGN_RUN.search(s):
        logger.debug("refusing oversized answer (%d chars)", len(s))
        return None
    return _parse_math_cached(s)


@lru_cache(maxsize=65536)
def _parse_math_cached(s: str) -> tuple | None:
    if _EAGER_OPS.search(s) and _LARGE_INPUT.search(s):
        logger.debug("refusing eagerly evaluated operation on large input: %.80s", s)
        return None
    # math-verify extracts from prose; a bare "1/2" or "\frac{1}{2}" needs math delimiters.
    wrapped = s if ("$" in s or "\\boxed" in s or "\\(" in s or "\\[" in s) else f"${s}$"
    try:
        parsed = math_verify.parse(
            wrapped, extraction_config=_EXTRACTION, fallback_mode="no_fallback", parsing_timeout=None
        )
        if not parsed:
            parsed = math_verify.parse(
                s, extraction_config=_EXTRACTION, fallback_mode="no_fallback", parsing_timeout=None
            )
        if not parsed:
            return None
        for p in parsed:
            why = _refused_size(p)
            if why:
                logger.debug("refusing %.80r: its %s is too large to compare in bounded time", s, why)
                return None
        return tuple(parsed)
    except Exception:  # math-verify / sympy / recursion errors: treat as unparseable
        logger.debug("math-verify could not parse %.80r", s, exc_info=True)
        return None


def parse_gold_ok(gold: str) -> bool:
    """Whether ``gold`` can serve as a gold answer (math-verify parses it within our bounds)."""
    return isinstance(gold, str) and _parse_math(gold.strip()) is not None


# Non-math golds of the embedded world's other domains (tracewise.world.domains): a capitalised name
# ("Bob") or a [...] list of 3+ items. math-verify 0.9 reads "Bob" as the product b*b*o (so "Obb"
# verifies as "Bob") and "1, 2, 3" as a set equal to "[3, 1, 2]"; these golds are compared as
# whitespace- and case-normalised strings instead. No GSM8K/MATH/AIME gold has either shape.
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
    pred_parsed = _parse_math(pred)
    if pred_parsed is None:
        return False, "wrong"  # an answer was given but it is not a readable math expression
    try:
        ok = math_verify.verify(list(gold_parsed), list(pred_parsed), timeout_seconds=None)
    except Exception:
        logger.debug("math-verify failed comparing %.80r with %.80r", pred, gold, exc_info=True)
        ok = False
    return bool(ok), "correct" if ok else "wrong"


def _predicted_answer(completion_text: str, parsed: ParsedTrace) -> str | None:
    pred = extract_answer(parsed.answer)
    if pred is None and parsed.format != "plain":
        # Only where markers delimit the answer span: a marker-less "no idea" is no answer.
        span = parsed.answer.strip()
        if span and "\n" not in span and len(span) <= MAX_BARE_ANSWER_CHARS:
            pred = _clean(span)  # the student writes the bare answer after </think>
    if not pred:
        pred = extract_answer(completion_text)
    return pred or None


def _clip(pred: str | None) -> str | None:
    return pred if pred is None or len(pred) <= MAX_ANSWER_CHARS else pred[:MAX_ANSWER_CHARS]


def prepare(completion_text: str, gold: str, *, truncated: bool = False) -> tuple[str, str | None, str]:
    """The cheap, in-process half of :func:`verify`: ``(gold, pred, status)`` with no math-verify call.

    Extraction is ours and linear-time (regexes without nested quantifiers, one-pass brace
    matching), so it runs in the caller; only :func:`judge_prepared` (math-verify parsing and
    comparison, whose run time sympy does not bound) needs a deadline. ``status`` is ``compare``,
    ``truncated``, ``no_answer``, ``too_long`` or ``error``. Never raises.
    """
    gold_s = gold.strip() if isinstance(gold, str) else ""
    if not isinstance(completion_text, str):
        return gold_s, None, "no_answer"
    try:
        parsed = parse_completion(completion_text)
        pred = _predicted_answer(completion_text, parsed)
    except Exception:  # e.g. a harmony marker with no message: model text may be any garbage
        logger.debug("could not split completion %.80r", completion_text, exc_info=True)
        return gold_s, None, "error"
    if truncated or parsed.truncated:
        return gold_s, _clip(pred), "truncated"
    if pred is None:
        return gold_s, None, "no_answer"
    if len(pred) > MAX_ANSWER_CHARS:
        # No final answer is this long; refused before math-verify and clipped for the verdict file.
        return gold_s, _clip(pred), "too_long"
    return gold_s, pred, "compare"


def judge_prepared(gold_s: str, pred: str | None, status: str) -> VerifyResult:
    """The math-verify half of :func:`verify`, on the output of :func:`prepare`. Never raises."""
    try:
        if _parse_math(gold_s) is None:
            return VerifyResult(False, "unparseable_gold", None)
        if status == "compare":
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
    caller that needs a hard time bound per comparison) use :func:`tracewise.verify_pool.verify_many`,
    which runs :func:`judge_prepared` in worker processes with a per-task deadline.
    """
    try:
        return judge_prepared(*prepare(completion_text, gold, truncated=truncated))
    except Exception:  # the contract is "never raises": a bug here must not kill a training run
        logger.warning("verify failed unexpectedly; counting as wrong", exc_info=True)
        return VerifyResult(False, "wrong", None)
