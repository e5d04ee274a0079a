"""sha256 of a file's bytes: one reader for run-dir fingerprints and the GGUF conversion cache.

Its own module because ``fingerprint`` imports ``model_files`` (a GGUF spec is keyed on its file's
bytes) and ``model_files`` needs the same digest (its cache key): neither can import the other.
"""

from __future__ import annotations

import hashlib
import os


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 hex digest of one file's bytes, read in 1 MiB blocks (multi-GB weights never sit in memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
