"""The quickstart's base student is pretrained on facts in both teachers' notations by default."""

from __future__ import annotations

import pytest

from tracewise.studies import quickstart as qs


class _Stop(Exception):
    pass


@pytest.mark.parametrize("override, expected", [([], "both"), (["pretrain_facts=compact"], "compact")])
def test_quickstart_passes_its_pretrain_facts_to_init_student(tmp_path, monkeypatch, override, expected) -> None:
    from tracewise.core.config import load_config

    seen = {}

    def fake_init(cfg):
        seen["cfg"] = cfg
        raise _Stop

    monkeypatch.setattr(qs.init_stage, "run", fake_init)
    cfg = load_config(qs.QuickstartConfig, None, [*override, f"out={tmp_path}"])
    with pytest.raises(_Stop):
        qs.run(cfg)
    assert seen["cfg"].pretrain_facts == expected
    assert seen["cfg"].pretrain_steps == 300


def test_the_shipped_quickstart_yaml_matches_the_built_in_default() -> None:
    from pathlib import Path

    import yaml

    shipped = yaml.safe_load((Path(__file__).parents[2] / "configs" / "quickstart.yaml").read_text())
    assert shipped["pretrain_facts"] == qs.QuickstartConfig().pretrain_facts == "both"


def test_an_unknown_pretrain_facts_stops_the_quickstart_before_it_writes_anything(tmp_path) -> None:
    from tracewise.core.config import load_config

    with pytest.raises(ValueError, match=r"quickstart.pretrain_facts: expected one of \['both', 'compact'\]"):
        qs.run(load_config(qs.QuickstartConfig, None, ["pretrain_facts=spaced", f"out={tmp_path / 'qs'}"]))
    assert not (tmp_path / "qs").exists()
