"""Benchmark loaders on the real shared data, local files of other shapes, gold checks, prompts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tracewise.data import benchmarks
from tracewise.data.benchmarks import (
    BENCHMARKS,
    DEFAULT_TEMPLATE,
    data_dir,
    format_prompt,
    gsm8k_gold,
    load_benchmark,
    normalize_gold,
    parse_level,
)
from tracewise.data.sources import ProblemsConfig, load_problems
from tracewise.core.records import Problem
from tracewise.verify.answer import parse_gold_ok, verify


def _shared_data() -> bool:
    try:
        return (data_dir() / "math500_test.jsonl").is_file()
    except ValueError:
        return False


needs_data = pytest.mark.skipif(not _shared_data(), reason="shared benchmark data not present")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@needs_data
def test_gsm8k():
    problems = load_benchmark("gsm8k")
    assert len(problems) == 1319 and len({p.id for p in problems}) == 1319
    first = problems[0]
    assert (first.id, first.answer, first.split, first.source) == ("gsm8k-test-0000", "18", "test", "gsm8k")
    assert first.question.startswith("Janet’s ducks lay 16 eggs per day.")
    assert all(p.answer.lstrip("-").isdigit() for p in problems)  # commas gone, integers only


@needs_data
def test_math500_keeps_level_and_subject_and_reads_every_gold():
    problems = {p.id: p for p in load_benchmark("math500")}
    assert len(problems) == 500
    p = problems["test/precalculus/807.json"]
    assert (p.answer, p.level, p.meta["subject"]) == ("\\left( 3, \\frac{\\pi}{2} \\right)", 2, "Precalculus")
    assert {q.level for q in problems.values()} == {1, 2, 3, 4, 5}
    # A currency gold math-verify cannot read ('\$32,\!348') is normalized; the original is kept.
    money = problems["test/algebra/2626.json"]
    assert (money.answer, money.meta["answer_raw"]) == ("32348", "\\$32,\\!348")
    assert verify("So it costs \\boxed{32,348}.", money.answer).correct


@needs_data
def test_aime24_integer_golds():
    problems = load_benchmark("aime24")
    assert len(problems) == 30
    assert (problems[0].id, problems[0].answer) == ("aime2024-I-01", "204")
    assert all(str(int(p.answer)) == p.answer for p in problems)  # '025' was stored as '25'


@needs_data
def test_training_pools_and_limit():
    train = load_benchmark("gsm8k_train", limit=5)
    assert [p.id for p in train] == [f"gsm8k-train-{i:04d}" for i in range(5)] and train[0].split == "train"
    math = load_benchmark("math_train", limit=3)
    assert len(math) == 3 and all(1 <= p.level <= 5 for p in math) and math[0].meta["subject"] == "Algebra"


@needs_data
def test_problems_config_accepts_benchmark_names():
    cfg = ProblemsConfig(source="aime24", limit=4)
    cfg.validate()
    assert [p.id for p in load_problems(cfg)] == ["aime2024-I-01", "aime2024-I-02", "aime2024-I-03", "aime2024-I-04"]
    assert cfg.input_files() == [str(data_dir() / "aime2024.jsonl")]
    with pytest.raises(ValueError, match="aime25: file not found"):
        ProblemsConfig(source="aime25").validate()


def test_gsm8k_rationale_rows_from_a_local_file(tmp_path):
    # The original HF layout: no id, 'question', and 'answer' holding the rationale.
    path = write_jsonl(tmp_path / "gsm_raw.jsonl", [
        {"question": "How many?", "answer": "3 + 4 = <<3+4=7>>7\n#### 7"},
        {"question": "How much?", "answer": "She pays 1,000 + 250 = 1,250\n#### 1,250"},
    ])
    problems = load_benchmark(str(path))
    assert [(p.id, p.answer) for p in problems] == [("gsm_raw-0000", "7"), ("gsm_raw-0001", "1250")]
    assert problems[1].meta["answer_raw"].endswith("#### 1,250")
    assert gsm8k_gold("no marker") is None


def test_solution_only_rows_and_field_map(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [
        {"uid": "a", "text": "Half of one?", "solution": "It is $\\boxed{\\frac{1}{2}}$.", "level": "Level 3"},
    ])
    [p] = load_benchmark(str(path), field_map={"id": "uid", "question": "text"})
    assert (p.id, p.question, p.answer, p.level) == ("a", "Half of one?", "\\frac{1}{2}", 3)
    assert p.meta["answer_from"] == "solution"
    with pytest.raises(ValueError, match=r"m\.jsonl:1: missing gold answer field 'ans'"):
        load_benchmark(str(path), field_map={"id": "uid", "question": "text", "answer": "ans"})
    with pytest.raises(ValueError, match=r"m\.jsonl:1: missing or empty question field"):
        load_benchmark(str(path), field_map={"id": "uid"})


def test_parquet_file(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"id": "x", "problem": "1+1?", "answer": "2", "level": 1}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "b.parquet")
    [p] = load_benchmark(str(tmp_path / "b.parquet"))
    assert (p.id, p.answer, p.level, p.source) == ("x", "2", 1, "b")


def test_bad_golds_are_reported_with_ids_unless_allowed(tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl", [
        {"id": "ok", "problem": "q", "answer": "5"},
        {"id": "bad1", "problem": "q", "answer": "\\frac{1}{"},
        {"id": "bad2", "problem": "q", "answer": "\\begin{bogus"},
    ])
    with pytest.raises(ValueError, match=r"g: 2 of 3 gold answers cannot be parsed.*bad1.*bad2.*allow_bad_gold"):
        load_benchmark(str(path))
    problems = load_benchmark(str(path), allow_bad_gold=True)
    assert [p.meta.get("bad_gold", False) for p in problems] == [False, True, True]


def test_row_errors_name_file_and_line(tmp_path, monkeypatch):
    dup = write_jsonl(tmp_path / "d.jsonl", [{"id": "a", "problem": "q", "answer": "1"}] * 2)
    with pytest.raises(ValueError, match=r"d\.jsonl:2: duplicate problem id 'a' \(first at .*d\.jsonl:1\)"):
        load_benchmark(str(dup))
    write_jsonl(tmp_path / "aime2024.jsonl", [{"id": "a", "problem": "q", "answer": "1.5"}])
    with monkeypatch.context() as mp:
        mp.setenv("TRACEWISE_DATA", str(tmp_path))
        with pytest.raises(ValueError, match=r"aime2024\.jsonl:1: gold answer '1\.5' is not an integer"):
            load_benchmark("aime24")
    with pytest.raises(ValueError, match="nope.jsonl: file not found"):
        load_benchmark(str(tmp_path / "nope.jsonl"))
    with pytest.raises(ValueError, match="limit must be >= 1"):
        load_benchmark(str(dup), limit=0)


def test_hf_dataset_name_offline_is_a_clear_error(monkeypatch):
    import datasets.config
    import huggingface_hub.constants

    # Offline mode makes the failure immediate instead of five network retries.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match=r"openai/gsm8k: not a local file.*needs network access.*local copy"):
        load_benchmark("openai/gsm8k", subset="main")


def test_data_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("TRACEWISE_DATA", str(tmp_path))
    assert data_dir() == tmp_path
    with pytest.raises(ValueError, match=r"'math500': .*math500_test\.jsonl not found.*HuggingFaceH4/MATH-500"):
        load_benchmark("math500")
    write_jsonl(tmp_path / "aime2024.jsonl", [{"id": "aime2024-I-01", "problem": "q", "answer": "025"}])
    assert [(p.id, p.answer) for p in load_benchmark("aime24")] == [("aime2024-I-01", "25")]
    monkeypatch.setenv("TRACEWISE_DATA", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="TRACEWISE_DATA=.*missing: directory not found"):
        data_dir()


def test_data_dir_lists_what_it_tried(tmp_path, monkeypatch):
    monkeypatch.delenv("TRACEWISE_DATA", raising=False)
    monkeypatch.setattr(benchmarks, "__file__", str(tmp_path / "a" / "pkg" / "data" / "benchmarks.py"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"tried \$TRACEWISE_DATA \(unset\), .*shared/data, .*/data"):
        data_dir()


def test_normalize_gold_and_levels():
    assert normalize_gold("\\$18.90") == "18.90"
    assert normalize_gold("\\dfrac{1}{29,\\!322,\\!216}") == "\\dfrac{1}{29322216}"
    assert normalize_gold("\\$23{,}000") == "23000"
    assert normalize_gold("11,\\! 111,\\! 111,\\! 100") == "11111111100"
    assert normalize_gold("(1,234)") == "(1,234)"  # a bare comma may separate list items: untouched
    assert normalize_gold("\\text{(E)},") == "\\text{(E)}"
    assert all(parse_gold_ok(normalize_gold(g)) for g in ("\\$36", "\\$32,\\!348", "-\\$0.50"))
    assert [parse_level(v) for v in (3, "Level 5", "level 2", None, "Level ?", True)] == [3, 5, 2, 0, 0, 0]


def test_format_prompt():
    p = Problem(id="x", question="What is 1+1?", answer="2", source="math500")
    assert format_prompt(p) == "What is 1+1?\nPlease reason step by step, and put your final answer within \\boxed{}."
    assert DEFAULT_TEMPLATE == BENCHMARKS["gsm8k"].template
    assert format_prompt(p, "Q: {question}\nA:") == "Q: What is 1+1?\nA:"
    assert format_prompt(p, {"math500": "[{question}]", "gsm8k": "no"}) == "[What is 1+1?]"
    assert format_prompt(p, {"gsm8k": "{question}!"}).endswith("\\boxed{}.")  # other benchmarks' templates ignored
    with pytest.raises(ValueError, match="no '\\{question\\}' placeholder"):
        format_prompt(p, "Solve it.")
