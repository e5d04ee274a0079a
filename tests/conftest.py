"""Shared fixtures: a session-wide tiny embedded student, and no progress bars in tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The machine is shared: torch (imported lazily, by whichever test needs it) must not grab every
# core. OMP_NUM_THREADS covers a torch imported later; fixtures that use torch also set it directly.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Small enough to build in a few seconds, large enough for the BPE merges the ratio tests need.
TINY_STUDENT = dict(vocab_size=300, hidden_size=32, num_heads=2, num_layers=1, intermediate_size=64,
                    max_position_embeddings=512)


@pytest.fixture(autouse=True)
def _no_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACEWISE_NO_PROGRESS", "1")


@pytest.fixture(scope="session")
def student_run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``init-student`` run directory of a tiny embedded student (built once per session)."""
    import torch

    from tracewise.world.init_stage import InitStudentConfig, run
    from tracewise.world.student import StudentConfig

    torch.set_num_threads(1)

    # pretrain_steps=0: the shared fixture needs a loadable student, not a trained one (test_pipeline
    # covers pretraining).
    return run(InitStudentConfig(out=str(tmp_path_factory.mktemp("student")), student=StudentConfig(**TINY_STUDENT),
                                 pretrain_steps=0))


@pytest.fixture(scope="session")
def student_path(student_run_dir: Path) -> str:
    """Path of the tiny student's model + tokenizer directory (loadable with ``from_pretrained``)."""
    from tracewise.world.init_stage import model_path

    return str(model_path(student_run_dir))


@pytest.fixture(scope="session")
def student_tokenizer(student_path: str):
    from tracewise.core.tokens import load_tokenizer

    return load_tokenizer(student_path)



@pytest.fixture(scope="module")
def backend(student_path: str):
    """HFBackend on the tiny student, on CPU, one thread. Module-scoped, not session-scoped: tests patch
    its methods (slow steps, spies), so each module gets a fresh one. (Modules that define their own
    ``backend``, e.g. test_backend_hf.py, override it.) It lives here, not in tests/backends/conftest.py:
    a second conftest module shadows this one for ``from conftest import ...`` in other test files."""
    import torch

    from tracewise.backends.hf import HFBackend

    torch.set_num_threads(1)
    return HFBackend(student_path, device="cpu")


def save_pens_dataset(path: Path, repeats: int) -> str:
    """A tiny prompt/completion SFT dataset ("Ann has a pens" -> "<think>a+0=a.</think>Answer: a") on disk."""
    from datasets import Dataset

    rows = [
        {"prompt": [{"role": "user", "content": f"Ann has {a} pens. How many pens now?"}],
         "completion": [{"role": "assistant", "content": f"<think>{a}+0={a}.</think>Answer: {a}"}]}
        for a in range(1, 10)
    ] * repeats
    Dataset.from_list(rows).save_to_disk(str(path))
    return str(path)


@pytest.fixture(scope="module")
def backend_calls() -> list[tuple[str, str]]:
    """(name, class) of every backend the real ``tracewise.backends.get_backend`` builds while this module
    runs. The real registry still decides (the call is wrapped, not replaced), so a test can show that a
    stage resolved its backend by name itself. Module-scoped, for module-scoped fixtures that generate."""
    import tracewise.backends

    calls: list[tuple[str, str]] = []
    real = tracewise.backends.get_backend

    def get_backend(name, **kwargs):
        backend = real(name, **kwargs)
        calls.append((name, type(backend).__name__))
        return backend

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tracewise.backends, "get_backend", get_backend)
        yield calls


# A child process that takes a run dir's lock (argv[1]) and holds it until the test closes its stdin: "another
# process holds this run dir" without a second tracewise run.
HOLD_LOCK = """
import fcntl, os, sys
os.makedirs(os.path.dirname(sys.argv[1]), exist_ok=True)
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
os.ftruncate(fd, 0)
os.pwrite(fd, f"{os.getpid()}\\n".encode(), 0)
print("locked", flush=True)
sys.stdin.read()  # hold it until the test closes our stdin
"""
