"""configs/verl: each file states the verl it was written for, and verl_launch refuses a mismatch
before verl starts (verl 0.7.1 removed the batch reward path and added the reward: block)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tracewise.train import verl_launch

ROOT = Path(__file__).resolve().parents[2]
BATCH, PER_SAMPLE = ROOT / "configs/verl/arora_zanette_batch.yaml", ROOT / "configs/verl/length_penalty.yaml"


@pytest.mark.parametrize("config, ok, refused", [
    (BATCH, ["0.5.0", "0.6.1", "0.7.0"], ["0.7.1", "0.8.0", "0.4.1"]),
    (PER_SAMPLE, ["0.7.1", "0.8.0"], ["0.7.0", "0.6.1"]),
])
def test_each_verl_config_states_and_checks_its_verl(config, ok, refused):
    for v in ok:
        verl_launch.check(config, installed=v)
    for v in refused:
        with pytest.raises(ValueError, match=rf"written for verl.*but verl {v} is installed"):
            verl_launch.check(config, installed=v)
    # The refusal points at the config that fits.
    with pytest.raises(ValueError, match="use length_penalty.yaml"):
        verl_launch.check(BATCH, installed="0.7.1")
    with pytest.raises(ValueError, match="use arora_zanette_batch.yaml"):
        verl_launch.check(PER_SAMPLE, installed="0.7.0")


def test_every_shipped_verl_config_has_a_requires_line():
    for f in sorted((ROOT / "configs/verl").glob("*.yaml")):
        assert verl_launch.required(f)
        text = f.read_text()
        # verl >= 0.7.1 has no batch reward manager at all: no comment may say it gets one row at a time.
        assert "batch manager then gets one row" not in text


def test_config_file_from_hydra_arguments(tmp_path):
    for argv in (["--config-path", str(ROOT / "configs/verl"), "--config-name", "length_penalty", "a.b=1"],
                 [f"--config-path={ROOT / 'configs/verl'}", "--config-name=length_penalty.yaml"],
                 ["-cp", str(ROOT / "configs/verl"), "-cn", "length_penalty"]):
        assert verl_launch.config_file(argv) == PER_SAMPLE
    with pytest.raises(ValueError, match="--config-name"):
        verl_launch.config_file(["a.b=1"])


def test_launch_without_the_required_verl_is_a_clear_error(tmp_path):
    res = subprocess.run([sys.executable, "-m", "tracewise.train.verl_launch", "--config-path",
                          str(ROOT / "configs/verl"), "--config-name", "length_penalty"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert "verl is not installed" in res.stderr or "written for verl>=0.7.1" in res.stderr
