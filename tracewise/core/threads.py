"""CPU thread counts that do not change results.

Two things make a run's bytes independent of how many torch threads it gets:

* ``MKL_CBWR=AVX2,STRICT`` (set in ``tracewise/__init__.py`` before torch's first MKL call; a value
  the user exported wins). In strict conditional-numerical-reproducibility mode MKL's GEMMs give
  the same bits for any thread count and on any AVX2-capable CPU. Without it, a linear layer's
  weight gradient (a GEMM that reduces over batch x sequence) is split across threads and rounds
  differently: measured here, a 30-step pretraining of the tiny student gave different weights with
  1 and 2 threads; with it, identical weights. The other ops the tiny Llama uses (softmax, norms,
  cross-entropy, embedding backward, SDPA) gave identical bits with 1 and 2 threads.
* ``threads=0`` (auto) is resolved to a concrete number (``resolve_threads``) that every stage
  writes into the ``config.yaml`` of its run, so a run says what it ran with.

Because the thread count cannot change a result, it stays out of the run hash (``hash=False``):
the same run reused under another load is the same result. ``thread_count_changes_results()``
checks that this holds in the running process (it does not when torch ran an MKL GEMM before
tracewise was imported, or when the user exported another ``MKL_CBWR``); stages warn if not.
"""

from __future__ import annotations

import logging
import math
import os
from functools import lru_cache

log = logging.getLogger(__name__)

THREADS_HELP = ("torch CPU threads; 0 = auto: the cores this process may use minus the current load "
                "(resolved to a number and saved in the run's config.yaml). Results do not depend on it.")


def available_cores() -> int:
    """Cores this process may run on (CPU affinity / cgroup cpusets), not all cores of the machine."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def auto_threads() -> int:
    """Cores actually free: the usable cores minus the whole part of the 1-minute load average, >= 1."""
    cores = available_cores()
    try:
        busy = math.floor(os.getloadavg()[0])
    except (AttributeError, OSError):
        busy = 0
    return max(1, min(cores, cores - busy))


def resolve_threads(threads: int) -> int:
    """``threads`` itself when > 0, else ``auto_threads()``."""
    if threads < 0:
        raise ValueError(f"threads must be >= 0 (0 = auto), got {threads}")
    return threads if threads > 0 else auto_threads()


def use_threads(threads: int) -> int:
    """Resolve ``threads`` and set torch to it; returns the number (store it in the run's config)."""
    import torch

    n = resolve_threads(threads)
    torch.set_num_threads(n)
    if n > 1 and thread_count_changes_results():
        log.warning("torch results depend on the thread count in this process (MKL_CBWR=%r; it must be "
                    "AVX2,STRICT before torch's first matrix product: import tracewise before using torch); "
                    "runs with other thread counts will not be byte-identical to this one",
                    os.environ.get("MKL_CBWR"))
    return n


@lru_cache(maxsize=1)
def thread_count_changes_results() -> bool:
    """True when a GEMM that reduces over a long axis gives other bits with 1 and 2 threads here."""
    import torch

    before = torch.get_num_threads()
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(64, 4096, generator=g), torch.randn(4096, 64, generator=g)
    try:
        torch.set_num_threads(1)
        one = a @ b
        torch.set_num_threads(2)
        two = a @ b
    finally:
        torch.set_num_threads(before)
    return not torch.equal(one, two)
