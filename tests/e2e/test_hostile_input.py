"""Hostile and broken input, table-driven, through the real CLI.

Each case writes a bad input, runs one ``tracewise`` command, and expects: exit code 2 (the CLI's
promise for bad input; 1 would be a crash), ONE clear ``error:`` line that names the file (and line) or the config field at fault, no
traceback, and no partial output (the output root stays empty).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
from typer.testing import CliRunner

from tracewise.cli import app
from tracewise.core.records import Problem, Trace, Verdict, to_json_line

GOOD = {"id": "p1", "question": "What is 1+1?", "answer": "2"}


def _problem_line(**kw) -> str:
    return to_json_line(Problem(**{**GOOD, **kw}))


def _fake_generate_run(d: Path, problems: list[str], traces: list[str]) -> Path:
    """A finished generate run dir written by hand (so its records can be broken on purpose)."""
    d.mkdir(parents=True)
    (d / "problems.jsonl").write_text("".join(problems))
    (d / "traces.jsonl").write_text("".join(traces))
    (d / "DONE").write_text("{}\n")
    return d


def _trace(pid: str = "p1", teacher: str = "t", idx: int = 0) -> str:
    return to_json_line(Trace(problem_id=pid, teacher=teacher, text="<think>1+1=2</think>Answer: 2",
                              thinking="1+1=2", answer_text="Answer: 2", sample_idx=idx))


@dataclass
class Case:
    name: str
    setup: Callable[[Path], list[str]]  # writes inputs into tmp, returns the CLI argv (out= is added)
    expect: list[str]  # substrings of the error line (file name, line number, field)


def problems_file(content: bytes | str, name: str = "bad.jsonl"):
    """``generate`` reading problems from a JSONL file with ``content``."""
    def setup(tmp: Path) -> list[str]:
        p = tmp / name
        p.write_bytes(content if isinstance(content, bytes) else content.encode())
        return ["generate", "tokenizer=unused-tok", f"problems.source={p}"]
    return setup


def rl_golds(*answers: str):
    """``train rl`` on problems whose gold answers are ``answers`` (gold validation happens at load)."""
    def setup(tmp: Path) -> list[str]:
        p = tmp / "golds.jsonl"
        p.write_text("".join(json.dumps({"id": f"g{i}", "question": "q?", "answer": a}) + "\n"
                             for i, a in enumerate(answers)))
        return ["train", "rl", f"model={_STUDENT['path']}", f"problems.source={p}", "max_steps=1"]
    return setup


def verify_on(problems: list[str], traces: list[str], done: bool = True):
    def setup(tmp: Path) -> list[str]:
        d = _fake_generate_run(tmp / "gen", problems, traces)
        if not done:
            (d / "DONE").unlink()
        return ["verify", f"generations=[{d}]"]
    return setup


def config_file(text: str, stage: str = "generate"):
    def setup(tmp: Path) -> list[str]:
        p = tmp / "cfg.yaml"
        p.write_text(text)
        return [stage, "-c", str(p)]
    return setup


def curate_with_verdicts(verdict_lines: list[str], teacher: str = "t"):
    def setup(tmp: Path) -> list[str]:
        g = _fake_generate_run(tmp / "gen", [_problem_line()], [_trace(teacher=teacher)])
        v = tmp / "ver"
        v.mkdir()
        (v / "verdicts.jsonl").write_text("".join(verdict_lines))
        (v / "DONE").write_text("{}\n")
        return ["curate", f"generations=[{g}]", f"verdicts={v}"]
    return setup


def sft_dataset_without_completion(tmp: Path) -> list[str]:
    from datasets import Dataset

    Dataset.from_dict({"prompt": ["q"], "text": ["a"]}).save_to_disk(str(tmp / "ds"))
    return ["train", "sft", f"model={_STUDENT['path']}", f"dataset={tmp / 'ds'}"]


def a_directory(tmp: Path) -> Path:
    d = tmp / "adir"
    d.mkdir()
    return d


def ok_problems(tmp: Path) -> Path:
    p = tmp / "ok.jsonl"
    p.write_text(_problem_line())
    return p


def tiny_tokenizer(tmp: Path) -> str:
    """A real (tiny) tokenizer, so that the case fails on the input under test and not on the tokenizer."""
    from tracewise.world.student import build_tokenizer

    path = tmp / "tok"
    build_tokenizer(["What is 1+1? <think>1+1=2</think> The answer is 2."] * 3, 300).save_pretrained(path)
    return str(path)


def ingest_rows(*rows: str):
    """``ingest`` of a JSONL file with ``rows`` (the first is good, so a bad later row finds work done)."""
    def setup(tmp: Path) -> list[str]:
        p = tmp / "traces.jsonl"
        p.write_text("".join(rows))
        return ["ingest", f"path={p}", f"tokenizer={tiny_tokenizer(tmp)}"]
    return setup


_STUDENT: dict[str, str] = {}
_VERDICT = Verdict(problem_id="p1", teacher="t", method="math_verify", correct=True, reason="correct", pred="2",
                   gold="2")
DEEP = "{" * 300 + "1" + "}" * 300

CASES = [
    Case("malformed_jsonl_line", problems_file(_problem_line() + '{"id": "p2", "question": \n'), ["bad.jsonl:2", "malformed JSON"]),
    Case("non_utf8_bytes", problems_file(_problem_line().encode() + b'{"id": "p2\xff\xfe"}\n'), ["bad.jsonl:2", "UTF-8"]),
    Case("ten_mb_line", problems_file(_problem_line() + json.dumps({**GOOD, "id": "big", "question": "x" * 10_000_000}) + "\n"),
         ["bad.jsonl:2", "longer than"]),
    Case("missing_field", problems_file(json.dumps({"id": "p1", "question": "q"}) + "\n"), ["bad.jsonl:1", "'answer'"]),
    Case("extra_field", problems_file(_problem_line()[:-2] + ', "bogus": 1}\n'), ["bad.jsonl:1", "bogus"]),
    Case("wrong_type", problems_file(_problem_line()[:-2].replace('"level": 0', '"level": "hard"') + "}\n"),
         ["bad.jsonl:1", "'level'"]),
    Case("json_array_not_object", problems_file("[1, 2, 3]\n"), ["bad.jsonl:1", "JSON object"]),
    Case("duplicate_ids", problems_file(_problem_line() + _problem_line()), ["bad.jsonl:2", "duplicate problem id 'p1'"]),
    Case("empty_file", problems_file(""), ["bad.jsonl", "empty"]),
    Case("unknown_schema_version", problems_file(_problem_line().replace('"_schema": 1', '"_schema": 99')),
         ["bad.jsonl:1", "schema version 99"]),
    Case("unparseable_gold", rl_golds("2", "\\frac{"), ["golds.jsonl", "row 1", "gold"]),
    Case("latex_bomb_gold", rl_golds(DEEP), ["golds.jsonl", "row 0", "gold"]),
    Case("path_traversal_output_name", lambda tmp: ["curate", "generations=[x]", "verdicts=y", "mix_name=../../evil"],
         ["curate.mix_name", "../../evil"]),
    Case("path_traversal_teacher_name", curate_with_verdicts([to_json_line(_VERDICT)], teacher="../../evil"),
         ["../../evil", "cannot name dataset directories"]),
    Case("config_unknown_key", config_file("tokenizer: tok\nbogus_key: 1\n"), ["cfg.yaml", "bogus_key"]),
    Case("config_unknown_nested_key", lambda tmp: ["generate", "tokenizer=tok", "sampling.tempreature=0.5"],
         ["sampling", "tempreature"]),
    Case("config_wrong_type", lambda tmp: ["generate", "tokenizer=tok", "sampling.n=many"], ["sampling.n", "many"]),
    Case("config_not_yaml", config_file("tokenizer: [unclosed\n"), ["cfg.yaml", "YAML"]),
    Case("trace_for_unknown_problem", verify_on([_problem_line()], [_trace(pid="nope")]), ["traces.jsonl:1", "'nope'"]),
    Case("duplicate_trace", verify_on([_problem_line()], [_trace(), _trace()]), ["traces.jsonl:2", "also at"]),
    Case("unfinished_input_run", verify_on([_problem_line()], [_trace()], done=False), ["gen", "DONE"]),
    Case("wrong_record_kind", curate_with_verdicts([_trace()]), ["verdicts.jsonl:1", "'verdict'"]),
    Case("sft_dataset_missing_column", sft_dataset_without_completion, ["ds", "completion"]),
    Case("problems_file_is_a_directory", lambda tmp: ["generate", "tokenizer=tok", f"problems.source={a_directory(tmp)}"],
         ["adir", "is a directory"]),
    Case("config_file_is_a_directory", lambda tmp: ["generate", "-c", str(a_directory(tmp))], ["adir", "is a directory"]),
    Case("config_not_utf8", lambda tmp: (tmp.joinpath("cfg.yaml").write_bytes(b"tokenizer: \xff\xfe\n"),
                                          ["generate", "-c", str(tmp / "cfg.yaml")])[1], ["cfg.yaml", "UTF-8"]),
    Case("eval_problems_file_is_a_directory",
         lambda tmp: ["eval", f"model={_STUDENT['path']}", f"problems.source={a_directory(tmp)}"], ["adir", "is a directory"]),
    Case("generate_not_a_tokenizer",  # problems are fine; the tokenizer fails after they are read
         lambda tmp: ["generate", f"tokenizer={a_directory(tmp)}", f"problems.source={ok_problems(tmp)}"],
         ["adir", "could not load a tokenizer"]),
    Case("ingest_not_a_tokenizer", lambda tmp: ["ingest", f"path={ok_problems(tmp)}", f"tokenizer={a_directory(tmp)}"],
         ["adir", "could not load a tokenizer"]),
    Case("ingest_bad_second_row",
         ingest_rows(json.dumps({"id": "a", "problem": "What is 1+1?", "answer": "2",
                                 "completion": "<think>1+1=2</think>The answer is \\boxed{2}."}) + "\n",
                     json.dumps({"id": "b", "problem": "What is 2+2?", "answer": "4"}) + "\n"),
         ["traces.jsonl:2", "completion"]),
    Case("ingest_empty_file", ingest_rows(), ["traces.jsonl", "empty"]),
]


@pytest.fixture(autouse=True)
def _student(tmp_path: Path) -> None:
    # Inputs are validated before any model is loaded, so an empty directory stands in for one.
    (tmp_path / "model").mkdir()
    _STUDENT["path"] = str(tmp_path / "model")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_input_fails_cleanly(case: Case, tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    out = tmp_path / "out"
    argv = case.setup(inputs)
    result = CliRunner().invoke(app, [*argv, f"out={out}"])
    text = result.output
    assert result.exit_code == 2, (result.exit_code, text)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in text
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, text
    for want in case.expect:
        assert want in errors[0], f"{want!r} not in {errors[0]!r}"
    leftovers = sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) if out.exists() else []
    assert leftovers == [], f"partial output left behind: {leftovers}"


def test_at_least_fifteen_cases() -> None:
    assert len(CASES) >= 15 and len({c.name for c in CASES}) == len(CASES)
