"""ThinkFree: answer with an empty thinking span inserted at the start of the assistant turn."""

from __future__ import annotations

import dataclasses

from tracewise.backends.base import Request
from tracewise.core.tokens import THINK_CLOSE, THINK_OPEN
from tracewise.evaluate.controls.continuation import _check_text

THINK_FREE_PREFIX = THINK_OPEN + THINK_CLOSE


def think_free(requests: list[Request], *, prefix: str = THINK_FREE_PREFIX) -> list[Request]:
    """ThinkFree: copies of ``requests`` whose assistant turn starts with an empty thinking span.

    Templates that already open ``<think>`` in the generation prompt (R1-distill) take
    ``prefix="</think>"``. A request that already carries a prefix has started thinking: ValueError.
    """
    _check_text(prefix, "prefix", empty_ok=False)
    out = []
    for r in requests:
        if r.prefix:
            raise ValueError(f"request {r.id!r} already has a prefix ({r.prefix[:40]!r}); ThinkFree needs an empty one")
        out.append(dataclasses.replace(r, prefix=prefix))
    return out
