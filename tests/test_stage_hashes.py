"""Run directories made before the package layout changed stay valid (issue 14).

A stage's run dir is ``<out>/<stage>-<hash>`` with the hash over the artifact version, the stage name,
the config's field values and the input bytes: never a module path or class name. The names below
were computed on the old layout (commit 6875cbe, before any file moved) and are pinned: moving a
config class, renaming its module or sharing a config section between stages must not change them.
A change that *should* alter what a stage writes bumps ``tracewise.ARTIFACT_VERSION`` instead (and
then these pins, deliberately). Adding a config field changes the hash of every run of that stage
unless the field is marked ``hash=False``.

Deliberate changes since the pins were taken: ``train sft`` gained ``batch_order`` (random by default,
replacing length-grouped batches that skewed mixed-dataset students, issue 12), so its three pins were
recomputed once when that landed; likewise ``verify`` (the judge's ``retry_max_tokens``), ``train rl``
(GRPO/RLOO loss settings passed explicitly) and ``ingest`` (``reasoning`` filter, ``gold`` join) gained
fields that change what they write (issue 18). Every other stage's pin is still the old layout's.
"""

from __future__ import annotations

import pytest

from tracewise.backends.base import SamplingParams
from tracewise.core.store import stage_dir
from tracewise.curate import CurateConfig
from tracewise.evaluate import EvalConfig
from tracewise.generate import GenerateConfig
from tracewise.generate.ingest import IngestConfig
from tracewise.train.rl import RLRunConfig
from tracewise.train.sft import SFTRunConfig
from tracewise.verify import VerifyConfig
from tracewise.world.init_stage import InitStudentConfig


@pytest.mark.parametrize("stage, make, expected", [
    ("student", InitStudentConfig, "student-f9dd7776df0d"),
    ("generate", GenerateConfig, "generate-ff35c4b8718b"),
    ("verify", VerifyConfig, "verify-73aedd304599"),
    ("curate", CurateConfig, "curate-458e98515dfd"),
    ("sft", SFTRunConfig, "sft-71c70c3acbdb"),
    ("rl", RLRunConfig, "rl-70e009647d85"),
    ("eval", EvalConfig, "eval-9de188b89b40"),
    ("ingest", IngestConfig, "ingest-7946fb0a881e"),
    ("generate", lambda: GenerateConfig(backend="hf", model="some/model",
                                        sampling=SamplingParams(n=4, temperature=0.7, max_tokens=256)),
     "generate-fd898137226f"),
    ("eval", lambda: EvalConfig(model="runs/sft-x/model", sampling=SamplingParams(n=8, temperature=0.6, max_tokens=512)),
     "eval-e9936a0b74cc"),
    ("sft", lambda: SFTRunConfig(max_steps=7), "sft-8ac4e3ba25cd"),
])
def test_stage_dir_names_are_those_of_the_old_layout(stage, make, expected):
    assert stage_dir("runs", stage, make()).name == expected


def test_shared_training_section_builds_the_old_sft_configs():
    """Quickstart and the studies now build their SFT configs from one ``TrainSettings``; the run dirs
    (old layout: quickstart's own TrainSettings, transfer's SmallTrain, the studies' StudyTrain) stay."""
    from tracewise.studies.curation_ablation import CurationStudyConfig
    from tracewise.studies.quickstart import QuickstartConfig
    from tracewise.studies.transfer import TransferConfig

    from dataclasses import replace

    # micro_batches=1: the settings before the micro-batch lever (issue 19), which then became the default
    # (same examples and gradient per step, other float rounding, so its own run dirs).
    q = QuickstartConfig()
    old_q = replace(q.train, micro_batches=1)
    assert stage_dir("runs", "sft", old_q.sft_config("runs", "r1", "base", "ds", q.seed)).name == "sft-14c78820d0e1"
    assert stage_dir("runs", "sft", q.train.sft_config("runs", "r1", "base", "ds", q.seed)).name != "sft-14c78820d0e1"
    t = replace(TransferConfig().train, micro_batches=1)
    assert stage_dir("runs", "sft", t.sft_config("runs", "r1", "base", "ds", 0, threads=0)).name == "sft-0044b9340328"
    c = replace(CurationStudyConfig().train, micro_batches=1)
    assert stage_dir("runs", "sft", c.sft_config("runs", "random", "base", "ds", 0, threads=1)).name == "sft-71b2a00b2dba"
