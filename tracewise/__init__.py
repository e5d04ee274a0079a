"""tracewise: train LLMs to reason efficiently — accuracy next to token cost, stage by stage."""

import os as _os

__version__ = "0.1.0"
# Same bits for any torch thread count (see tracewise/core/threads.py): MKL reads this at its first call,
# so it is set on import, before any stage runs torch. A value the user exported wins.
_os.environ.setdefault("MKL_CBWR", "AVX2,STRICT")
# Part of every stage's run-dir hash: bump it when a change alters what a stage writes, so old
# run dirs are not silently reused.
ARTIFACT_VERSION = "1"
