"""records: JSONL round-trips, validation errors that name file:line, atomic writes."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from tracewise.core.records import (
    SCHEMA_VERSION,
    EvalSummary,
    Problem,
    Sample,
    Trace,
    Verdict,
    iter_jsonl,
    read_records,
    to_json_line,
    write_records,
)

PROBLEM = Problem(id="p1", question="Ann has 3 pens. How many?", answer="3", level=2, meta={"steps": [["+", 1, 2, 3]]})
TRACE = Trace(
    problem_id="p1", teacher="r1", text="<think>x</think>3", thinking="x", answer_text="3",
    n_tokens=7, n_thinking_tokens=5, n_answer_tokens=2, sample_idx=3, meta={"teacher_error": False},
)
VERDICT = Verdict(problem_id="p1", teacher="r1", method="judge", correct=True, reason="correct", pred=None,
                  gold="3", raw="Verdict: CORRECT")
SAMPLE = Sample(
    experiment="e", benchmark="world", problem_id="p1", sample_idx=0, text="t", thinking="th", answer_text="3",
    pred="3", correct=True, reason="correct", n_tokens=4, n_thinking_tokens=3, n_answer_tokens=1, budget=None,
)
ALL = [PROBLEM, TRACE, VERDICT, SAMPLE]


def _line(rec, **changes) -> str:
    d = json.loads(to_json_line(rec))
    for k, v in changes.items():
        if v is _DELETE:
            del d[k]
        else:
            d[k] = v
    return json.dumps(d) + "\n"


_DELETE = object()


@pytest.mark.parametrize("rec", ALL, ids=lambda r: type(r).__name__)
def test_round_trip_every_record_type(tmp_path: Path, rec) -> None:
    other = dataclasses.replace(rec, **({"problem_id": "p2"} if hasattr(rec, "problem_id") else {"id": "p2"}))
    path = write_records(tmp_path / "r.jsonl", [rec, other])
    back = read_records(path, type(rec))
    assert back == [rec, other]
    # canonical bytes: writing what was read gives the same file
    before = path.read_bytes()
    write_records(path, back)
    assert path.read_bytes() == before
    first = json.loads(before.splitlines()[0])
    assert first["_schema"] == SCHEMA_VERSION and first["_kind"] in ("problem", "trace", "verdict", "sample")


def test_non_ascii_survives_round_trip(tmp_path: Path) -> None:
    p = Problem(id="ü", question="Ünïcødé 🍎 — 3 + 4?", answer="7")
    assert read_records(write_records(tmp_path / "u.jsonl", [p]), Problem) == [p]


def test_keys_and_summary_row() -> None:
    assert TRACE.key == "r1|p1|3"
    assert VERDICT.key == "judge|r1|p1|0"
    assert SAMPLE.key == "p1|0"
    s = EvalSummary("e", "b", 10, 0.5, 0.8, 0.6, 100.0, 90.0, 10.0, extra={"note": 1})
    row = s.to_row()
    assert row["pass@1"] == 0.5 and row["pass@8"] == 0.8 and row["maj@8"] == 0.6 and row["note"] == 1


def _write(tmp_path: Path, lines: list[str | bytes]) -> Path:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"".join(x if isinstance(x, bytes) else x.encode() for x in lines))
    return path


GOOD = _line(PROBLEM)


@pytest.mark.parametrize(
    "bad, needle",
    [
        ('{"id": "p2", "question": \n', "malformed JSON"),
        (b'{"id": "p\xff\xfe"}\n', "UTF-8"),
        ("[1, 2]\n", "expected a JSON object"),
        (_line(PROBLEM, answer=_DELETE), "missing required field 'answer'"),
        (_line(PROBLEM, level="2"), "field 'level'"),  # a string where an int is expected
        (_line(PROBLEM, level=True), "field 'level'"),  # a bool is not an int
        (_line(PROBLEM, level=2.5), "field 'level'"),
        (_line(PROBLEM, question=None), "field 'question'"),
        (_line(PROBLEM, meta=[1]), "field 'meta'"),
        (_line(PROBLEM, colour="red"), "unknown field(s) ['colour']"),
        (_line(PROBLEM, _schema=SCHEMA_VERSION + 1), "unknown schema version"),
        (_line(PROBLEM, _kind="trace"), "expected a 'problem' record"),
    ],
    ids=["json", "utf8", "not-object", "missing", "str-for-int", "bool-for-int", "float-for-int", "none-for-str",
         "list-for-dict", "unknown-field", "schema", "kind"],
)
def test_read_records_errors_name_file_and_line(tmp_path: Path, bad, needle: str) -> None:
    path = _write(tmp_path, [GOOD, "\n", bad, GOOD])  # blank line 2 is skipped but still counted
    with pytest.raises(ValueError) as ei:
        read_records(path, Problem)
    msg = str(ei.value)
    assert msg.startswith(f"{path}:3: "), msg
    assert needle in msg, msg


def test_wrong_kind_for_whole_file(tmp_path: Path) -> None:
    path = write_records(tmp_path / "traces.jsonl", [TRACE])
    with pytest.raises(ValueError, match=r"traces\.jsonl:1: expected a 'verdict' record, found '_kind'='trace'"):
        read_records(path, Verdict)


def test_optional_fields_accept_none_and_value(tmp_path: Path) -> None:
    path = _write(tmp_path, [_line(SAMPLE, budget=128), _line(SAMPLE, budget=None, pred=None)])
    a, b = read_records(path, Sample)
    assert a.budget == 128 and b.budget is None and b.pred is None
    with pytest.raises(ValueError, match="field 'budget'"):
        read_records(_write(tmp_path, [_line(SAMPLE, budget="128")]), Sample)


def test_missing_file_is_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="file not found"):
        read_records(tmp_path / "nope.jsonl", Problem)


def test_iter_jsonl_line_numbers(tmp_path: Path) -> None:
    path = _write(tmp_path, [GOOD, "\n", "   \n", GOOD])
    assert [n for n, _ in iter_jsonl(path)] == [1, 4]


def test_write_records_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "problems.jsonl"
    old = [Problem(id=f"old{i}", question="q", answer="1") for i in range(3)]
    write_records(path, old)
    old_bytes = path.read_bytes()
    seen_during_write = []

    def records():
        for i in range(5):
            # a reader looking while the writer is mid-way sees the complete old file, never a mix
            seen_during_write.append(path.read_bytes())
            yield Problem(id=f"new{i}", question="q", answer="2")

    write_records(path, records())
    assert seen_during_write and all(b == old_bytes for b in seen_during_write)
    assert [p.id for p in read_records(path, Problem)] == [f"new{i}" for i in range(5)]
    assert sorted(x.name for x in path.parent.iterdir()) == ["problems.jsonl"]  # no .tmp left


def test_failed_write_keeps_old_file_and_leaves_no_tmp(tmp_path: Path) -> None:
    path = tmp_path / "problems.jsonl"
    write_records(path, [PROBLEM])
    old_bytes = path.read_bytes()

    def records():
        yield Problem(id="new", question="q", answer="2")
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        write_records(path, records())
    assert path.read_bytes() == old_bytes
    assert sorted(x.name for x in tmp_path.iterdir()) == ["problems.jsonl"]


def test_deeply_nested_line_is_a_file_line_error_not_a_recursion_error(tmp_path: Path) -> None:
    path = _write(tmp_path, [GOOD, '{"meta": ' + "[" * 100_000 + "]" * 100_000 + "}\n"])
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: JSON nested too deeply"):
        read_records(path, Problem)


def test_write_records_never_writes_through_a_planted_temp_symlink(tmp_path: Path) -> None:
    """The old fixed temp name ``<file>.tmp`` could be a symlink to any file the user can write."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    path = tmp_path / "problems.jsonl"
    (tmp_path / "problems.jsonl.tmp").symlink_to(victim)
    write_records(path, [PROBLEM])
    assert victim.read_text() == "precious\n"
    assert [p.id for p in read_records(path, Problem)] == ["p1"] and not path.is_symlink()


def test_concurrent_writers_of_one_file_never_share_a_temp_file(tmp_path: Path) -> None:
    """Two writers (threads here; processes alike) each replace the file whole: it is always one
    writer's complete set, no writer fails, and no temp file is left behind."""
    import threading

    path = tmp_path / "problems.jsonl"
    sets = {w: [Problem(id=f"{w}{i}", question="q" * 2000, answer="1") for i in range(30)] for w in "ab"}
    errors: list[BaseException] = []

    def writer(w: str) -> None:
        try:
            for _ in range(25):
                write_records(path, sets[w])
        except BaseException as e:  # noqa: BLE001 - the test reports it
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(w,)) for w in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert [p.id for p in read_records(path, Problem)] in ([p.id for p in sets["a"]], [p.id for p in sets["b"]])
    assert sorted(x.name for x in tmp_path.iterdir()) == ["problems.jsonl"]


# ---- labels that become directory names (curate/ingest): the whole name must match -------------

@pytest.mark.parametrize("name", ["r1\n", "r1\nx", "mix\n"])
def test_names_with_a_trailing_newline_are_not_plain_names(name: str) -> None:
    from tracewise.curate import CurateConfig
    from tracewise.generate.ingest import IngestConfig

    with pytest.raises(ValueError, match="ingest.teacher"):
        IngestConfig(path="x.jsonl", tokenizer="t", teacher=name).validate()
    with pytest.raises(ValueError, match="curate.mix_name"):
        CurateConfig(generations=["g"], verdicts="v", mix_name=name).validate()
    IngestConfig(path="x.jsonl", tokenizer="t", teacher="r1.v2+x").validate()  # a plain name passes
