"""Few-shot exemplars: formats, bad input before generation, the eval option and the study."""

from __future__ import annotations

import json

import pytest
import torch

from tracewise.backends.base import SamplingParams
from tracewise.evaluate.stage import EvalConfig, run
from tracewise.evaluate.few_shot import FewShotConfig, few_shot_messages, load_exemplars
from tracewise.evaluate.metrics import read_summary
from tracewise.data.sources import ProblemsConfig
from tracewise.studies import few_shot as study
from tracewise.world.problems import WorldConfig

R1 = "<think>Okay, let me see. 7 - 1 = 6. Wait, let me double check: 6.</think>So the answer is \\boxed{6}."
OSS = "<think>(a) 7-1=6.</think>Answer: 6"


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def _dataset(path, teacher, completion, n=3):
    from datasets import Dataset

    Dataset.from_list([{"prompt": [{"role": "user", "content": f"Q{i}: 7 take 1?"}],
                        "completion": [{"role": "assistant", "content": completion}], "teacher": teacher,
                        "problem_id": f"p{i}"} for i in range(n)]).save_to_disk(str(path))
    return path


def test_formats_and_teacher_filter(tmp_path):
    rows = [{"prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "q1"}],
             "completion": [{"role": "assistant", "content": R1}], "teacher": "r1"},
            {"messages": [{"role": "user", "content": "q2"}, {"role": "assistant", "content": OSS}], "teacher": "gpt-oss"},
            {"problem": "q3", "completion": OSS, "teacher": "gpt-oss"}]
    (tmp_path / "ex.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    ex = load_exemplars(tmp_path / "ex.jsonl")
    assert [(e["question"], e["completion"], e["teacher"]) for e in ex] == [
        ("q1", R1, "r1"), ("q2", OSS, "gpt-oss"), ("q3", OSS, "gpt-oss")]
    assert [e["question"] for e in load_exemplars(tmp_path / "ex.jsonl", teacher="gpt-oss")] == ["q2", "q3"]
    with pytest.raises(ValueError, match=r"no exemplars with teacher 'mix' \(teachers found: \['gpt-oss', 'r1'\]\)"):
        load_exemplars(tmp_path / "ex.jsonl", teacher="mix")
    ds = load_exemplars(_dataset(tmp_path / "ds", "r1", R1))
    assert len(ds) == 3 and ds[0]["question"] == "Q0: 7 take 1?" and ds[0]["completion"] == R1
    msgs = few_shot_messages("Q9?", ds, 2)
    assert [m["content"] for m in msgs] == ["Q0: 7 take 1?", R1, "Q1: 7 take 1?", R1, "Q9?"]


def test_unknown_and_malformed_formats_name_the_file(tmp_path):
    (tmp_path / "ex.csv").write_text("question,completion\nq,a\n")
    (tmp_path / "plain").mkdir()
    (tmp_path / "bad.jsonl").write_text(json.dumps({"prompt": [{"role": "user", "content": "q"}], "completion": []}) + "\n")
    for path, needle in [(tmp_path / "ex.csv", r"ex.csv: unknown few-shot format '.csv'"),
                         (tmp_path / "plain", "plain: unknown few-shot format: a directory"),
                         (tmp_path / "bad.jsonl", r"bad.jsonl:1: expected a non-empty string 'completion'"),
                         (tmp_path / "missing.jsonl", "cannot read")]:
        with pytest.raises(ValueError, match=needle):
            load_exemplars(path)
    with pytest.raises(ValueError, match="needs few_shot.path"):
        FewShotConfig(k=2).validate()
    with pytest.raises(ValueError, match="k is 0"):
        FewShotConfig(path=str(tmp_path / "ex.csv")).validate()
    with pytest.raises(ValueError, match="fewer than k=5"):
        FewShotConfig(path=str(_dataset(tmp_path / "ds", "r1", R1)), k=5).validate()


def _cfg(out, model, **kw):
    base = dict(out=str(out), experiment="tiny", model=model, threads=1, n_boot=20,
                problems=ProblemsConfig(split="test", world=WorldConfig(n_train=10, n_test=3)),
                sampling=SamplingParams(n=1, temperature=1.0, max_tokens=8, seed=0))
    base.update(kw)
    return EvalConfig(**base)


def test_eval_with_exemplars_and_bad_format_before_generation(tmp_path, student_path, monkeypatch):
    ds = _dataset(tmp_path / "ds", "r1", R1)
    seen = []
    from tracewise.backends.hf import HFBackend

    real = HFBackend.generate

    def spy(self, requests, sampling, progress=None):
        seen.extend(r.messages for r in requests)
        return real(self, requests, sampling, progress)

    monkeypatch.setattr(HFBackend, "generate", spy)
    run_dir = run(_cfg(tmp_path, student_path, few_shot=FewShotConfig(path=str(ds), k=2, label="verbose")))
    row = read_summary(run_dir / "summary.json")[0]
    assert (row["few_shot_k"], row["few_shot_style"], row["control"]) == (2, "verbose", "none")
    assert len(seen) == 3 and all(len(m) == 5 and m[1]["content"] == R1 for m in seen)
    (tmp_path / "ex.txt").write_text("q\ta\n")
    with pytest.raises(ValueError, match="unknown few-shot format"):
        run(_cfg(tmp_path / "bad", student_path, few_shot=FewShotConfig(path=str(tmp_path / "ex.txt"), k=1)))
    assert not (tmp_path / "bad").exists()


def _row(student, tokens, acc, style=None, k=0):
    name = student + (f" +{k}-shot {style}" if k else "")
    row = {"experiment": name, "benchmark": "world", "n": 10, "pass@1": acc, "pass@8": acc, "maj@8": acc,
           "mean_tokens": tokens, "mean_thinking_tokens": tokens, "mean_answer_tokens": 0.0,
           "ci95": {"pass@1": [acc, acc]}, "student": student, "control": "none", "budget": None}
    if k:
        row.update(few_shot_k=k, few_shot_style=style)
    return row


def test_table_and_reading_are_computed():
    rows = [_row("r1", 200.0, 0.40), _row("r1", 150.0, 0.35, "gpt-oss", 1), _row("r1", 210.0, 0.42, "r1", 1),
            _row("gpt-oss", 50.0, 0.45), _row("gpt-oss", 110.0, 0.30, "r1", 1), _row("gpt-oss", 52.0, 0.44, "gpt-oss", 1),
            _row("mix", 60.0, 0.2), _row("mix", 70.0, 0.2, "r1", 1)]
    md = study.table(rows)
    assert "| gpt-oss | 1× r1 (other) | 0.300 | -0.150 | 110 | +60 (+120%) |" in md
    assert "| gpt-oss | 1× gpt-oss (own) | 0.440 | -0.010 | 52 | +2 (+4%) |" in md
    assert "| mix | 1× r1 | 0.200 | +0.000 | 70 | +10 (+17%) |" in md  # the mix has no "own" style
    text = study.reading(rows, 0.25)
    assert text.startswith("Reading: the most concise student zero-shot, gpt-oss (50 tokens): 1× r1 exemplars take it "
                           "to 110 tokens (+120%), pass@1 0.450 → 0.300; its own style gives 52 tokens (+4%)")
    assert text.endswith("→ it does not stay concise (tolerance +25% tokens).")
    rows[4] = _row("gpt-oss", 55.0, 0.45, "r1", 1)
    assert "→ it stays concise" in study.reading(rows, 0.25)
    assert "cannot be assessed" in study.reading(rows[:1], 0.25)


def test_study_uses_the_curated_datasets(tmp_path, student_path):
    qs = tmp_path / "qs"
    for i, name in enumerate(("r1", "gpt-oss")):
        sft = qs / f"sft-00000000000{i}"
        sft.mkdir(parents=True)
        (sft / "model").symlink_to(student_path, target_is_directory=True)
        (sft / "experiment.txt").write_text(name)
        (sft / "DONE").write_text("")
    cur = qs / "curate-000000000000"
    _dataset(cur / "datasets" / "r1", "r1", R1)
    _dataset(cur / "datasets" / "gpt-oss", "gpt-oss", OSS)
    from datasets import Dataset

    Dataset.from_list([{"prompt": [{"role": "user", "content": "q"}], "completion": [{"role": "assistant", "content": R1}],
                        "teacher": t} for t in ("r1", "gpt-oss")]).save_to_disk(str(cur / "datasets" / "mix"))
    (cur / "DONE").write_text("")
    assert sorted(study.curated_styles(qs)) == ["gpt-oss", "r1"]  # the mix is not a style
    cfg = study.FewShotStudyConfig(out=str(tmp_path / "out"), run_dir=str(qs), k=1, threads=1,
                                   problems=ProblemsConfig(split="test", world=WorldConfig(n_train=10, n_test=2)),
                                   sampling=SamplingParams(n=1, temperature=1.0, max_tokens=6, seed=0))
    section = json.loads(study.run(cfg).read_text())
    rows = read_summary(tmp_path / "out" / "summary.json")
    assert sorted((r["student"], r.get("few_shot_style", "")) for r in rows) == [
        ("gpt-oss", ""), ("gpt-oss", "gpt-oss"), ("gpt-oss", "r1"), ("r1", ""), ("r1", "gpt-oss"), ("r1", "r1")]
    assert section["title"] == "Few-shot style transfer" and section["markdown"].startswith("Reading: the most concise")
    with pytest.raises(ValueError, match="unknown few-shot format"):
        study.FewShotStudyConfig(run_dir=str(qs), exemplars=[f"verbose={tmp_path / 'x.csv'}"]).validate()
    with pytest.raises(ValueError, match="NAME=PATH"):
        study.FewShotStudyConfig(run_dir=str(qs), exemplars=["verbose"]).validate()
