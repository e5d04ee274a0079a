"""The transferability index (hand-computed tables), the transfer study's config, report and a tiny run."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tracewise.cli import app
from tracewise.studies.transfer import (
    TransferConfig,
    accuracy_gain,
    find_students,
    run,
    ti_table,
    transferability_index,
)
from tracewise.studies.transfer_report import reading
from tracewise.world.problems import WorldConfig

# accuracies (pass@1) by model and domain, chosen so every TI can be checked by hand
ACC = {
    "base": {"arith": 0.10, "ordering": 0.20, "listops": 0.30},
    "r1": {"arith": 0.50, "ordering": 0.30, "listops": 0.20},  # ΔR_math = 0.40
    "gpt-oss": {"arith": 0.10, "ordering": 0.40, "listops": 0.30},  # ΔR_math = 0
    "worse": {"arith": 0.05, "ordering": 0.25, "listops": 0.30},  # ΔR_math < 0
}


def _by(rows):
    return {(r.student, r.domain): r for r in rows}


def test_ti_hand_computed_with_positive_and_negative_transfer() -> None:
    rows = _by(ti_table(ACC, "base", ["r1"], "arith"))
    assert set(rows) == {("r1", "ordering"), ("r1", "listops")}  # the math domain itself has no TI
    assert rows["r1", "ordering"].ti == pytest.approx(25.0)  # 0.10 / 0.40 × 100
    assert rows["r1", "listops"].ti == pytest.approx(-25.0)  # −0.10 / 0.40 × 100: negative transfer
    assert rows["r1", "ordering"].gain == pytest.approx(0.10) and rows["r1", "ordering"].gain_math == pytest.approx(0.40)


def test_ti_undefined_without_a_math_gain() -> None:
    rows = _by(ti_table(ACC, "base", ["gpt-oss", "worse"], "arith"))
    zero = rows["gpt-oss", "ordering"]
    assert zero.ti is None and "no math gain" in zero.note and zero.gain == pytest.approx(0.20)
    # a math *loss* must not turn a loss elsewhere into "positive transfer"
    neg = rows["worse", "ordering"]
    assert neg.ti is None and "ΔR_math = -0.050" in neg.note
    assert transferability_index(0.1, 0.0) == (None, "undefined: no math gain (ΔR_math = +0.000)")


def test_relative_gain_variant() -> None:
    assert accuracy_gain(0.5, 0.1, relative=True) == pytest.approx(4.0)
    assert accuracy_gain(0.5, 0.0, relative=True) is None
    rows = _by(ti_table(ACC, "base", ["r1"], "arith", relative=True))
    assert rows["r1", "ordering"].ti == pytest.approx(100 * 0.5 / 4.0)  # (0.3−0.2)/0.2 over (0.5−0.1)/0.1
    base0 = {"base": {"arith": 0.0, "ordering": 0.0}, "s": {"arith": 0.5, "ordering": 0.1}}
    (row,) = ti_table(base0, "base", ["s"], "arith", relative=True)
    assert row.ti is None and "relative gain" in row.note
    (row,) = ti_table(base0, "base", ["s"], "arith")
    assert row.ti == pytest.approx(20.0)


def test_ti_table_rejects_missing_cells() -> None:
    with pytest.raises(ValueError, match="no accuracy on the math domain"):
        ti_table({"base": {"ordering": 0.1}, "s": {"ordering": 0.2}}, "base", ["s"], "arith")
    with pytest.raises(ValueError, match=r"student 's' has no accuracy on \['listops'\]"):
        ti_table({"base": {"arith": 0.1, "listops": 0.1}, "s": {"arith": 0.2}}, "base", ["s"], "arith")


def _result(ti_rows: list[dict], ratios=(4.0, 3.8, 2.0), parity=(True, False, True)) -> dict:
    teachers = [{"domain": d, "ratio": r, "ratio_holds": r >= 3.5, "parity_holds": p}
                for d, r, p in zip(["arith", "ordering", "listops"], ratios, parity)]
    return {"teachers": teachers, "ti": ti_rows}


def test_reading_is_computed_from_the_numbers() -> None:
    rows = [{"student": "r1", "domain": "ordering", "ti": 25.0, "note": ""},
            {"student": "r1", "domain": "listops", "ti": -3.0, "note": ""}]
    text = reading(_result(rows), "arith")
    assert "holds in 2/3 domains (arith 4.0×, ordering 3.8×, listops 2.0×)" in text
    assert "parity holds in 2/3" in text and "r1→ordering +25" in text and "partly transferred" in text
    small = [dict(r, ti=r["ti"] / 10) for r in rows]
    assert "did not transfer" in reading(_result(small, ratios=(4, 4, 4)), "arith")
    undefined = [{"student": "g", "domain": "ordering", "ti": None, "note": "undefined: no math gain (ΔR_math = +0.000)"}]
    assert "TI undefined for 1" in reading(_result(undefined), "arith")


def test_config_rejects_bad_input_before_work(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="transfer.domains: unknown domain 'chess'"):
        TransferConfig(domains=["arith", "chess"]).validate()
    with pytest.raises(ValueError, match="need the math domain 'arith'"):
        TransferConfig(domains=["ordering", "listops"]).validate()
    with pytest.raises(ValueError, match="not a directory"):
        TransferConfig(from_run=str(tmp_path / "nope")).validate()
    with pytest.raises(ValueError, match="distinct SFT experiment names"):
        TransferConfig(students=["base"]).validate()
    res = CliRunner().invoke(app, ["study", "transfer", f"out={tmp_path}", "domains=[arith,chess]"])
    assert res.exit_code == 2 and "unknown domain 'chess'" in res.output
    assert not any(tmp_path.iterdir())  # nothing was written


def _fake_run(root: Path, base: str, models: dict[str, str]) -> Path:
    """A directory shaped like a finished quickstart: one sft-* dir per student (DONE + config.yaml)."""
    for name, model in models.items():
        _student_dir(root / f"sft-{name}", f"experiment: {name}\nmodel: {base}\n", model)
    return root


def _student_dir(d: Path, config: str, model: str) -> None:
    """One finished sft-* dir: config.yaml, DONE and model/ (a link to ``model``)."""
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(config)
    (d / "DONE").write_text("{}")
    (d / "model").symlink_to(model)


def test_find_students(tmp_path: Path, student_path: str) -> None:
    run_dir = _fake_run(tmp_path / "qs", student_path, {"r1": student_path, "gpt-oss": student_path})
    base, students = find_students(run_dir, ["r1", "gpt-oss"])
    assert base == student_path and set(students) == {"r1", "gpt-oss"}
    with pytest.raises(ValueError, match=r"no finished sft run for \['mix'\]"):
        find_students(run_dir, ["mix"])


def test_tiny_study_end_to_end(tmp_path: Path, student_path: str) -> None:
    """Every stage for real on a tiny scale (the 'students' are the untrained tiny model itself)."""
    run_dir = _fake_run(tmp_path / "qs", student_path, {"r1": student_path, "gpt-oss": student_path})
    cfg = TransferConfig(out=str(tmp_path / "out"), from_run=str(run_dir), world=WorldConfig(n_train=12, n_test=3),
                         eval_samples=1, eval_max_tokens=8)
    t0 = time.time()
    section = run(cfg)
    first = time.time() - t0
    data = json.loads(section.read_text())
    assert data["title"] == "Other domains and transferability" and data["images"] == ["transfer.png"]
    result = json.loads((tmp_path / "out" / "transfer.json").read_text())
    assert [t["domain"] for t in result["teachers"]] == ["arith", "ordering", "listops"]
    for t in result["teachers"]:
        assert t["n"] == 12 and t["ratio"] > 2.5 and 0.5 <= t["acc_r1"] <= 1.0
    assert set(result["students"]["listops"]) == {"base", "r1", "gpt-oss"}
    assert len(result["ti"]) == 4  # 2 students × 2 non-math domains
    # identical untrained models: no gain anywhere, so TI is undefined with the reason written down
    assert all(r["ti"] is None and "no math gain" in r["note"] for r in result["ti"])
    assert "TI undefined for 4" in data["markdown"]
    t0 = time.time()
    run(cfg)  # every stage is done: the rerun only rewrites the report
    assert time.time() - t0 < first


def _seeded_run(root: Path, base: str, seeds: list[int]) -> Path:
    """A quickstart-shaped run that trained r1 and gpt-oss once per seed (sft-<name>-s<seed>)."""
    for name in ("r1", "gpt-oss"):
        for seed in seeds:
            _student_dir(root / f"sft-{name}-s{seed}", f"experiment: {name}\nmodel: {base}\nseed: {seed}\n", base)
    return root


def test_find_students_takes_each_replicate_seeds_own_student(tmp_path: Path, student_path: str) -> None:
    run_dir = _seeded_run(tmp_path / "qs", student_path, [0, 1, 2])
    _, students = find_students(run_dir, ["r1"], [2, 0])
    assert students == {"r1": [str(run_dir / "sft-r1-s2" / "model"), str(run_dir / "sft-r1-s0" / "model")]}
    with pytest.raises(ValueError, match=r"trained with seeds \[0, 1, 2\], not \[5\]"):
        find_students(run_dir, ["r1"], [0, 5])
    one = _fake_run(tmp_path / "one", student_path, {"r1": student_path})  # one student: every replicate samples it
    assert find_students(one, ["r1"], [0, 1])[1] == {"r1": [str(one / "sft-r1" / "model")] * 2}


def test_tiny_study_two_seeds(tmp_path: Path, student_path: str) -> None:
    import yaml

    run_dir = _seeded_run(tmp_path / "qs", student_path, [0, 1])
    cfg = TransferConfig(out=str(tmp_path / "out"), from_run=str(run_dir), domains=["arith", "ordering"],
                         world=WorldConfig(n_train=12, n_test=3), eval_samples=1, eval_max_tokens=8, seeds=2)
    section = json.loads(run(cfg).read_text())
    evals = [yaml.safe_load((d / "config.yaml").read_text()) for d in (tmp_path / "out").glob("eval-*")]
    assert len(evals) == 3 * 2 * 2  # (base, r1, gpt-oss) × 2 domains × 2 seeds
    assert sorted(c["sampling"]["seed"] for c in evals) == [0] * 6 + [1] * 6
    base = [c for c in evals if c["experiment"] == "base" and c["benchmark"] == "world-ordering"]
    assert sorted(c["sampling"].pop("seed") for c in base) == [0, 1] and base[0] == base[1]  # the seed alone
    r1 = {c["sampling"]["seed"]: c["model"] for c in evals if c["experiment"] == "r1" and c["benchmark"] == "world-arith"}
    assert r1 == {s: str(run_dir / f"sft-r1-s{s}" / "model") for s in (0, 1)}  # replicate s: the student of seed s
    result = json.loads((tmp_path / "out" / "transfer.json").read_text())
    assert all(e["seeds"] == 2 and "pass@1" in e["ci95"] for per in result["students"].values() for e in per.values())
    # identical models: every paired gain is exactly 0 with a zero-width interval, so none is distinguishable
    assert {(g["a"], g["domain"]) for g in result["gains"]} == {(s, d) for s in ("r1", "gpt-oss")
                                                              for d in ("arith", "ordering")}
    assert all(g["seeds"] == 2 and g["n_problems"] == 3 and not g["distinguishable"] for g in result["gains"])
    assert "distinguishable from zero in 0/2 student×domain cells outside arith" in section["markdown"]
    assert "ΔR_arith of r1, gpt-oss is not distinguishable from zero at this size (3 problems × 2 seeds)" in \
        section["markdown"]
