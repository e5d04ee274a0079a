"""Thread counts: ``threads=0`` resolves to a recorded number, and the number never changes a result."""

from __future__ import annotations

import os

import pytest
import yaml

from tracewise.core import threads as th


def test_auto_threads_counts_free_usable_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (3.4, 0.0, 0.0))
    assert th.resolve_threads(0) == 5  # 8 usable cores, 3 busy
    monkeypatch.setattr(os, "getloadavg", lambda: (20.0, 0.0, 0.0))
    assert th.resolve_threads(0) == 1  # overloaded: still one thread
    monkeypatch.setattr(os, "getloadavg", lambda: (0.2, 0.0, 0.0))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {2, 5}, raising=False)
    assert th.resolve_threads(0) == 2  # affinity (a cpuset), not the machine's core count
    assert th.resolve_threads(3) == 3  # an explicit number is kept
    with pytest.raises(ValueError, match="threads must be >= 0"):
        th.resolve_threads(-1)


def test_gemm_bits_do_not_depend_on_the_thread_count():
    """MKL_CBWR=AVX2,STRICT is in effect: a long-reduction GEMM is bitwise equal with 1 and 2 threads."""
    import tracewise  # noqa: F401  (sets MKL_CBWR)

    assert os.environ.get("MKL_CBWR") == "AVX2,STRICT"
    th.thread_count_changes_results.cache_clear()
    assert not th.thread_count_changes_results()


def _pretrain(out, threads: int, steps: int = 3):
    from tracewise.world.init_stage import InitStudentConfig, model_path, run
    from tracewise.world.problems import WorldConfig
    from tracewise.world.student import StudentConfig

    d = run(InitStudentConfig(out=str(out), threads=threads, pretrain_steps=steps,
                              student=StudentConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                                                    vocab_size=300),
                              corpus_world=WorldConfig(seed=1, n_train=40, n_test=0),
                              pretrain_world=WorldConfig(seed=2, n_train=200, n_test=0)))
    return d, (model_path(d) / "model.safetensors").read_bytes()


def test_pretraining_gives_the_same_weights_with_1_and_2_threads(tmp_path):
    import torch

    before = torch.get_num_threads()
    try:
        d1, w1 = _pretrain(tmp_path / "a", 1)
        d2, w2 = _pretrain(tmp_path / "b", 2)
        d0, _ = _pretrain(tmp_path / "c", 0, steps=0)
    finally:
        torch.set_num_threads(before)
    assert d1.name == d2.name  # the thread count is not in the run hash: it cannot change the result
    assert w1 == w2
    # The count each run used is recorded; auto (0) is saved as the number it resolved to.
    assert yaml.safe_load((d1 / "config.yaml").read_text())["threads"] == 1
    assert yaml.safe_load((d2 / "config.yaml").read_text())["threads"] == 2
    assert yaml.safe_load((d0 / "config.yaml").read_text())["threads"] >= 1
