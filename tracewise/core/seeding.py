"""Seeds that depend only on what is being drawn, never on batching, order or worker.

Every sample (a backend's completion, an embedded teacher's trace, a judge's coin flip, a test-time
control's continuation phase) is seeded from its identity, so a resumed or re-batched run draws
exactly what an uninterrupted one would have.
"""

from __future__ import annotations

import hashlib


def sample_seed(seed: int, request_id: str, sample_idx: int) -> int:
    """A 63-bit seed that depends only on the sample's identity, never on batching or order."""
    h = hashlib.sha256(f"{seed}|{request_id}|{sample_idx}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)
