"""Conservative size estimates of parsed answers, so that verify refuses what sympy cannot compare quickly.

math-verify's comparison runs sympy (``doit``, ``simplify``, ``expand``, ``factor``) with no time
bound of its own in threads. :func:`refused_size` looks at a parsed expression *before* any of that
and names the reason it is too large: a value with more than MAX_DIGITS digits, unevaluated calculus
over a huge range, or a polynomial whose expansion reaches a high degree. Each bound names the
input that motivated it (timings with math-verify 0.9 and sympy 1.14).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import sympy

MAX_DIGITS = 100_000  # an expression whose value needs more digits is refused before comparing

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
# of sums: (x+1)^{199}(x+2)^{199} against (x+1)^{199} took 11 s on an idle machine and a third such
# factor never finished. Measured on a loaded shared machine (2-5x slower than idle): (x+1)^{199}
# against (x+2)^{199} 1.3 s, (x+1)^{30}(x+2)^{30} against (x+1)^{199} 4 s, (x+1)^{100}(x+2)^{100}
# against (x+1)^{199} 7-8 s. So the degree one power of a sum reaches is bounded, the degree a
# product of expanding factors reaches more tightly (a monomial factor such as 7z^{96} in the MATH
# gold 7z^{96}(4z+1) does not count), and so is the number of monomials that degree allows in its
# variables, C(degree + vars, vars). The largest expanded degree among the MATH (train + test) and
# AIME 2024 golds is 10, (x^2+x+1)(x^8-x^7+x^5-x^4+x^3-x+1); GSM8K golds are integers.
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
        # (x+1)(x+2), (x+1)^{30}(x+2)^{30}: factors that expand multiply out; a monomial (7z^{96}) or a
        # number only shifts or scales the result, so its degree does not count.
        expanding = [a.degree for e, a in zip(expr.args, args) if a.degree > 0 and _needs_expansion(e, a)]
        if len(expanding) > 1:
            expanded = max(expanded, sum(expanding))
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


def refused_size(expr) -> str | None:
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
