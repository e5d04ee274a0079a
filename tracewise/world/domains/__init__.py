"""Domains of the embedded world beyond arithmetic, and the registry that names them.

``DOMAINS`` maps a domain name (``problems.world.domain``) to a :class:`Domain`: a seeded problem
generator plus the pieces the procedural teachers need (the teacher's own, possibly mistaken,
execution and the r1 / gpt-oss thinking text). ``arith`` is listed for completeness; its problems
and traces keep their original code path in ``world/problems.py`` and ``world/teachers.py`` so that
every existing math run is byte-identical.

Every domain follows the arithmetic world's recipe, so a style comparison means the same thing in
each: a start state, L+1 marked steps ``(a) (b) ...`` at level L, each step a small learnable
operation, and a final question; both teachers carry exactly the same computation (one state per
step), the verbose one only adds words around it.
"""

from __future__ import annotations

from tracewise.world.domains import listops, ordering
from tracewise.world.domains.base import Domain


# None: handled natively by world/problems.py and world/teachers.py (unchanged code path).
DOMAINS: dict[str, Domain | None] = {"arith": None, "ordering": ordering.DOMAIN, "listops": listops.DOMAIN}
DOMAIN_NAMES: tuple[str, ...] = tuple(DOMAINS)


def get_domain(name: str, where: str = "world.domain") -> Domain | None:
    """The registered domain ``name`` (None for the native ``arith``); ValueError naming the valid ones."""
    if name not in DOMAINS:
        raise ValueError(f"{where}: unknown domain {name!r}; valid: {list(DOMAIN_NAMES)}")
    return DOMAINS[name]


__all__ = ["DOMAINS", "DOMAIN_NAMES", "Domain", "get_domain"]
