"""The optional extras pin what the installed TRL supports (its own extras), so `pip install
'tracewise[vllm,deepspeed,qlora]'` never resolves to versions TRL refuses at import."""

from __future__ import annotations

from importlib.metadata import requires
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]


def _extras() -> dict[str, dict[str, Requirement]]:
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    return {k: {Requirement(r).name: Requirement(r) for r in v}
            for k, v in data["project"]["optional-dependencies"].items()}


def _trl(name: str, extra: str) -> Requirement:
    for r in map(Requirement, requires("trl") or []):
        if r.name == name and r.marker is not None and r.marker.evaluate({"extra": extra}):
            return r
    raise AssertionError(f"trl declares no {name} in its {extra!r} extra")


def test_extras_match_what_trl_supports():
    ours = _extras()
    # vLLM: exactly TRL's window (it raises at import outside it).
    assert ours["vllm"]["vllm"].specifier == _trl("vllm", "vllm").specifier
    # DeepSpeed: no lower bound below TRL's, and the transformers release TRL excludes is excluded too.
    trl_ds = _trl("deepspeed", "deepspeed")
    floor = lambda spec: max(Version(s.version) for s in spec if s.operator in (">=", ">"))  # noqa: E731
    assert floor(ours["deepspeed"]["deepspeed"].specifier) >= floor(trl_ds.specifier)
    assert ours["deepspeed"]["transformers"].specifier == _trl("transformers", "deepspeed").specifier
    assert floor(ours["qlora"]["bitsandbytes"].specifier) >= floor(_trl("bitsandbytes", "quantization").specifier)
    for version in ("0.22.0", "0.31.0"):
        assert ours["vllm"]["vllm"].specifier.contains(version)
    assert not ours["vllm"]["vllm"].specifier.contains("0.10.2")
