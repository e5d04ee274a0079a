"""README: "``--help`` lists every key with its meaning" — for every stage, study and the quickstart."""

from __future__ import annotations

import importlib

import pytest

from tracewise.cli import STAGES, _fields_help


def _config_classes() -> list[tuple[str, type]]:
    from tracewise.studies.quickstart import QuickstartConfig

    out = [("quickstart", QuickstartConfig)]
    for stage, (module, cls) in STAGES.items():
        out.append((stage, getattr(importlib.import_module(module), cls)))
    return out


@pytest.mark.parametrize("stage, cls", _config_classes(), ids=lambda v: v if isinstance(v, str) else "")
def test_help_gives_every_config_key_a_meaning(stage: str, cls: type) -> None:
    missing = [line.split(" (default", 1)[0] for line in _fields_help(cls) if line.endswith(": ")]
    assert not missing, f"{stage}: keys without help text: {missing}"
