"""Fixtures shared by the serve tests (test_serve*.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def backend(student_path: str):
    """HFBackend on the tiny student, on CPU, one thread. Module-scoped, not session-scoped: tests patch
    its methods (slow steps, spies), so each module gets a fresh one. (test_backend_hf.py defines its
    own ``backend`` on another tiny model; pytest's module-level fixture wins there.)"""
    import torch

    from tracewise.backends.hf import HFBackend

    torch.set_num_threads(1)
    return HFBackend(student_path, device="cpu")
