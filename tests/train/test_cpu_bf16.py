"""bf16 on a CPU without bf16 units: a warning, because it makes training far slower, not faster."""

import logging

from tracewise.train import common

AVX2_ONLY = "flags\t\t: fpu vme sse sse2 avx fma avx2 bmi2 adx sha_ni\n"
ZEN4 = "flags\t\t: fpu sse2 avx2 avx512f avx512dq avx512_bf16 avx512vl\n"
SAPPHIRE = "flags\t\t: fpu sse2 avx2 avx512f amx_bf16 amx_tile amx_int8\n"


def test_native_bf16_is_read_from_the_cpu_flags() -> None:
    assert not common.cpu_has_native_bf16(AVX2_ONLY)
    assert not common.cpu_has_native_bf16("flags: avx512f avx512bw avx512_vnni")  # AVX-512 without bf16
    assert common.cpu_has_native_bf16(ZEN4)
    assert common.cpu_has_native_bf16(SAPPHIRE)


def test_bf16_on_a_cpu_without_bf16_units_warns_and_only_then(monkeypatch, caplog) -> None:
    monkeypatch.setattr(common, "cpu_has_native_bf16", lambda: False)
    with caplog.at_level(logging.WARNING):
        common.warn_if_slow_cpu_bf16(True, cuda=False, where="train.sft")
    assert "train.sft: bf16 on a CPU without avx512_bf16/AMX" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        common.warn_if_slow_cpu_bf16(False, cuda=False, where="train.sft")  # float32: nothing to say
        common.warn_if_slow_cpu_bf16(True, cuda=True, where="train.sft")    # GPU bf16: fine
        monkeypatch.setattr(common, "cpu_has_native_bf16", lambda: True)
        common.warn_if_slow_cpu_bf16(True, cuda=False, where="train.sft")   # CPU with bf16 units: fine
    assert caplog.text == ""


def test_sft_and_rl_resolve_bf16_the_same_way_and_both_warn(monkeypatch, caplog) -> None:
    """None = on exactly when CUDA is there; an explicit value wins; train rl warns as train sft does."""
    monkeypatch.setattr(common, "cpu_has_native_bf16", lambda: False)
    assert common.resolve_bf16(None, cuda=False, where="train.rl") is False
    assert common.resolve_bf16(None, cuda=True, where="train.rl") is True
    assert common.resolve_bf16(False, cuda=True, where="train.rl") is False
    assert caplog.text == ""
    with caplog.at_level(logging.WARNING):
        assert common.resolve_bf16(True, cuda=False, where="train.rl") is True
    assert "train.rl: bf16 on a CPU without avx512_bf16/AMX" in caplog.text
