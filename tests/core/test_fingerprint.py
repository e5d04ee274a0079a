"""Run dirs keyed on model content (tracewise.core.fingerprint): a retrained model never brings back old results."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

import tracewise
import tracewise.core.fingerprint as fp
import tracewise.verify.stage as vs
from tracewise.backends.base import SamplingParams
from tracewise.generate import GenerateConfig
from tracewise.generate import run as generate
from tracewise.verify.llm_judge import LLMJudgeConfig
from tracewise.data.sources import ProblemsConfig
from tracewise.core.records import Trace, read_records
from tracewise.core.store import is_done, stage_dir
from tracewise.world.problems import WorldConfig


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(fp.CACHE_ENV, str(tmp_path / "cache"))


@pytest.fixture()
def model(student_path: str, tmp_path: Path) -> Path:
    """A private copy of the tiny student (the session fixture must stay untouched)."""
    return Path(shutil.copytree(student_path, tmp_path / "model"))


def flip_weight_byte(model: Path) -> None:
    """Change one low mantissa byte of the last weight in place: same size, same file, new bytes."""
    weights = model / "model.safetensors"
    with open(weights, "r+b") as fh:
        fh.seek(-4, 2)
        b = fh.read(1)
        fh.seek(-4, 2)
        fh.write(bytes([b[0] ^ 1]))


def _generate_cfg(out: Path, model: Path, tokenizer: str) -> GenerateConfig:
    # The student tokenizer is another directory than the model (else its digest would cover the weights).
    return GenerateConfig(out=str(out), backend="hf", model=str(model), tokenizer=tokenizer,
                          problems=ProblemsConfig(world=WorldConfig(seed=1, n_train=2, n_test=0)),
                          sampling=SamplingParams(n=1, max_tokens=4), batch_size=2)


def test_generate_with_a_retrained_model_gets_a_new_run_dir(model: Path, tmp_path: Path, student_path: str) -> None:
    first = generate(_generate_cfg(tmp_path / "out", model, student_path))
    assert is_done(first) and len(read_records(first / "traces.jsonl", Trace)) == 2
    assert generate(_generate_cfg(tmp_path / "out", model, student_path)) == first  # same bytes: reused
    flip_weight_byte(model)  # "retrained" into the same path
    second = generate(_generate_cfg(tmp_path / "out", model, student_path))
    assert second != first and is_done(second)
    flip_weight_byte(model)  # the original bytes again: the original run
    assert generate(_generate_cfg(tmp_path / "out", model, student_path)) == first


def test_verify_with_a_retrained_local_judge_gets_a_new_run_dir(model: Path, tmp_path: Path, monkeypatch) -> None:
    gen = generate(GenerateConfig(out=str(tmp_path / "out"), tokenizer=str(model),
                                  problems=ProblemsConfig(world=WorldConfig(seed=1, n_train=3, n_test=0))))
    # The procedural judge stands in for the model's answers: only which run dir is used is tested here.
    monkeypatch.setattr(vs, "make_judge", lambda spec, cfg: _embedded(cfg))

    def cfg():
        return vs.VerifyConfig(out=str(tmp_path / "out"), generations=[str(gen)], methods=["judge"],
                               judge=LLMJudgeConfig(backend="hf", model=str(model)))

    first = vs.run(cfg())
    assert is_done(first) and vs.run(cfg()) == first
    flip_weight_byte(model)
    assert vs.run(cfg()) != first


def _embedded(cfg):
    from tracewise.verify.llm_judge import JudgeResult
    from tracewise.world.judge import procedural_judge

    return lambda items: [JudgeResult(*procedural_judge(i.key, i.pred, i.gold, cfg)) for i in items]


def test_hub_model_is_keyed_on_its_commit(tmp_path: Path, monkeypatch) -> None:
    """A hub id resolves to the commit of its revision (here from the local hub cache, offline)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    ref = tmp_path / "hub" / "models--org--tiny" / "refs" / "main"
    ref.parent.mkdir(parents=True)
    ref.write_text("a" * 40)
    assert fp.model_input("org/tiny") == [fp.HubModel("org/tiny")]
    assert fp.input_digest(fp.HubModel("org/tiny")) == "hub:org/tiny@" + "a" * 40
    before = stage_dir(tmp_path, "eval", {"model": "org/tiny"}, inputs=fp.model_input("org/tiny"))
    ref.write_text("b" * 40)  # the hub's main moved to a new commit
    after = stage_dir(tmp_path, "eval", {"model": "org/tiny"}, inputs=fp.model_input("org/tiny"))
    assert before != after
    assert fp.hub_commit("org/tiny", "c" * 40) == "c" * 40  # a pinned commit is its own identity
    assert fp.model_input("") == [] and fp.model_input(str(tmp_path / "missing")) == []


@dataclass
class _Cfg:
    a: int = 1
    b: str = "x"


def test_hashes_of_stages_without_models_are_unchanged(tmp_path: Path) -> None:
    """stage_dir's formula, computed by hand: paths still digest exactly as before the cache existed."""
    f = tmp_path / "in.jsonl"
    f.write_bytes(b'{"k": 1}\n')
    d = tmp_path / "dir"
    (d / "sub").mkdir(parents=True)
    (d / "a.txt").write_bytes(b"A")
    (d / "sub" / "b.txt").write_bytes(b"BB")
    (d / "checkpoint-5").mkdir()
    (d / "checkpoint-5" / "x").write_bytes(b"scratch")

    def sha(b: bytes) -> str:
        return hashlib.sha256(b).hexdigest()

    file_digest = sha(sha(b'{"k": 1}\n').encode())
    dir_digest = sha(b"a.txt\0" + sha(b"A").encode() + b"sub/b.txt\0" + sha(b"BB").encode())
    payload = {"artifact_version": tracewise.ARTIFACT_VERSION, "stage": "curate", "config": {"a": 1, "b": "x"},
               "inputs": [file_digest, dir_digest]}
    expected = sha(json.dumps(payload, sort_keys=True).encode())[:12]
    assert stage_dir(tmp_path, "curate", _Cfg(), inputs=[f, d]).name == f"curate-{expected}"


def test_big_files_are_hashed_once_and_any_rewrite_is_seen(tmp_path: Path, monkeypatch) -> None:
    weights = tmp_path / "m" / "model.safetensors"
    weights.parent.mkdir()
    data = bytearray(b"\x01" * (fp.CACHE_MIN_BYTES + 10))
    weights.write_bytes(data)
    reads: list[str] = []
    real = fp.file_sha256
    monkeypatch.setattr(fp, "file_sha256", lambda p: reads.append(Path(p).name) or real(p))

    expected = hashlib.sha256(b"model.safetensors\0" + hashlib.sha256(bytes(data)).hexdigest().encode()).hexdigest()
    # Fresh file (ctime < RACY_S ago): hashed, not cached, so a rewrite in the same clock tick is seen.
    assert fp.path_digest(weights.parent) == expected
    assert not fp.cache_file().exists()
    data[5] ^= 0xFF
    with open(weights, "r+b") as fh:  # same size, same inode, at once (no sleep)
        fh.seek(5)
        fh.write(bytes([data[5]]))
    changed = hashlib.sha256(b"model.safetensors\0" + hashlib.sha256(bytes(data)).hexdigest().encode()).hexdigest()
    assert fp.path_digest(weights.parent) == changed
    assert reads == ["model.safetensors"] * 2

    # Once its ctime is older than RACY_S the digest is cached: the next call reads nothing.
    monkeypatch.setattr(fp, "RACY_S", 0.0)
    time.sleep(0.05)  # past the filesystem's timestamp tick, as a real rewrite minutes later would be
    reads.clear()
    assert fp.path_digest(weights.parent) == changed and reads == ["model.safetensors"]
    assert fp.path_digest(weights.parent) == changed and reads == ["model.safetensors"]
    assert fp.cache_file().exists()
    time.sleep(0.05)
    data[-1] ^= 0xFF
    with open(weights, "r+b") as fh:  # a cached file rewritten in place: its ctime moves, so it is re-read
        fh.seek(len(data) - 1)
        fh.write(bytes([data[-1]]))
    third = hashlib.sha256(b"model.safetensors\0" + hashlib.sha256(bytes(data)).hexdigest().encode()).hexdigest()
    assert fp.path_digest(weights.parent) == third and reads == ["model.safetensors"] * 2


class _Stop(Exception):
    pass


@pytest.mark.parametrize("stage", ["eval", "train sft", "train rl"])
def test_eval_sft_and_rl_with_a_retrained_model_get_a_new_run_dir(stage: str, model: Path, tmp_path: Path,
                                                                   monkeypatch) -> None:
    """README: retraining a model into the same path gives eval, train sft and train rl new run dirs (as for
    generate and verify above). Only the run dir is computed: each stage is stopped right after naming it."""
    import tracewise.evaluate.stage as es
    import tracewise.train.rl as rl
    import tracewise.train.sft as sft

    module = {"eval": es, "train sft": sft, "train rl": rl}[stage]
    named: list[Path] = []

    def record(*args, **kwargs):
        named.append(stage_dir(*args, **kwargs))
        raise _Stop

    monkeypatch.setattr(module, "stage_dir", record)
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    (dataset / "data.jsonl").write_text("{}\n")
    out = str(tmp_path / "out")
    world = ProblemsConfig(world=WorldConfig(seed=1, n_train=2, n_test=2))

    def run_dir() -> Path:
        with pytest.raises(_Stop):
            if stage == "eval":
                es.run(es.EvalConfig(out=out, model=str(model), sampling=SamplingParams(n=1, max_tokens=4)))
            elif stage == "train sft":
                sft.run_dir_of(sft.SFTRunConfig(out=out, model=str(model), dataset=str(dataset)))
            else:
                rl.run(rl.RLRunConfig(out=out, model=str(model), problems=world))
        return named[-1]

    first = run_dir()
    assert run_dir() == first  # same bytes: the same run dir
    flip_weight_byte(model)  # "retrained" into the same path
    assert run_dir() != first
    flip_weight_byte(model)
    assert run_dir() == first
