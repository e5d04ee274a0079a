"""End-to-end: the whole quickstart pipeline on a tiny config, on CPU, in about a minute.

Asserts that the students really learned (loss fell; the concise student produces well-formed
answers; the equations students write are right far above chance), that the report and summary
contract are produced, and that a rerun is a no-op that reuses every stage. The full-size run is
the ``slow`` test at the bottom.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections import Counter

import pytest

from tracewise.studies import quickstart
from tracewise.core.config import build
from tracewise.core.records import Sample, read_records


def tiny_config(out: str) -> quickstart.QuickstartConfig:
    return build(quickstart.QuickstartConfig, {
        "out": out,
        "world": {"n_train": 160, "n_test": 8, "levels": [1]},
        "student": {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "intermediate_size": 128, "vocab_size": 320},
        "pretrain_steps": 60,
        "train": {"max_steps": 50, "batch_size": 8, "learning_rate": 5e-3, "logging_steps": 5},
        "eval_samples": 2,
        "eval_temperature": 0.0,
        "eval_max_tokens": 150,
        "parallel": 1,
    })


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory):
    import torch

    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("qs")
    t = time.time()
    html = quickstart.run(tiny_config(str(out)))
    return out, html, time.time() - t


def test_pipeline_writes_report_and_summary(quickstart_run):
    out, html, _ = quickstart_run
    assert html.exists() and "data:image/png;base64," in html.read_text()
    assert (out / "report.md").exists()
    rows = json.loads((out / "summary.json").read_text())["rows"]
    assert {r["experiment"] for r in rows} == {"r1", "gpt-oss", "mix"}
    for r in rows:
        assert 0.0 <= r["pass@1"] <= 1.0 and r["mean_tokens"] > 0
        assert r["ci95"]["pass@1"][0] <= r["pass@1"] <= r["ci95"]["pass@1"][1]
    tokens = {r["experiment"]: r["mean_tokens"] for r in rows}
    assert tokens["r1"] > tokens["gpt-oss"], "the verbose student must generate more tokens"
    # the sample viewer is in report.html: every test problem with its question and gold, the students'
    # samples, and one reference trace per teacher (the training traces are on other problems)
    page = html.read_text()
    data = json.loads(page.split('id="tw-viewer-data">', 1)[1].split("</script>", 1)[0])
    assert len(data["problems"]) == 8 and data["experiments"] == ["gpt-oss", "mix", "r1"]
    for p in data["problems"]:
        assert p["q"] and p["gold"] != "?" and len(p["samples"]) == 3 * 2
        assert sorted(t["who"] for t in p["teachers"]) == ["teacher gpt-oss · reference (not trained on)",
                                                           "teacher r1 · reference (not trained on)"]
    # the reference runs are not beside the training pools (other studies read <out>/generate-* as those)
    pools = list(out.glob("generate-*/problems.jsonl"))
    assert len(pools) == 2 and all("-test-" not in f.read_text() for f in pools)


def test_students_learned(quickstart_run):
    out, _, _ = quickstart_run
    for log_path in out.glob("sft-*/log_history.json"):
        losses = [h["loss"] for h in json.loads(log_path.read_text()) if "loss" in h]
        assert losses[-1] < 0.6 * losses[0], f"{log_path}: loss did not fall ({losses[0]} -> {losses[-1]})"
    for samples_path in out.glob("eval-*/samples.jsonl"):
        samples = read_records(samples_path, Sample)
        if samples[0].experiment == "gpt-oss":
            formed = sum(s.pred is not None for s in samples) / len(samples)
            assert formed >= 0.5, f"{samples_path}: only {formed:.0%} of samples end with an answer"
    # Arithmetic is checked on the full-size students (test_full_quickstart_reproduces_the_finding): this
    # 50-step, 64-wide student learns the trace format but not the sums once batches come in random order
    # (the old length-grouped order let it pass a 40% bar here while skewing the full-size students).


def equation_accuracy(out) -> tuple[int, int]:
    """(right, total) single-digit equations "a + b = c" in the students' thinking: a random digit is right
    1 time in 10."""
    equations = right = 0
    for samples_path in out.glob("eval-*/samples.jsonl"):
        for s in read_records(samples_path, Sample):
            for a, op, b, c in re.findall(r"(\d) ?([-+]) ?(\d) ?= ?(\d+)", s.thinking):
                equations += 1
                right += int(c) == (int(a) + int(b) if op == "+" else int(a) - int(b))
    return right, equations


def test_rerun_is_a_noop(quickstart_run):
    out, _, first = quickstart_run
    before = {p: p.stat().st_mtime for p in out.glob("*/DONE")}
    t = time.time()
    quickstart.run(tiny_config(str(out)))
    assert time.time() - t < max(20.0, first / 3)
    assert {p: p.stat().st_mtime for p in out.glob("*/DONE")} == before


def test_seeds_are_replicates_with_intervals(quickstart_run):
    """seeds=[0, 1]: seed 0's stages are reused from the one-seed run, seed 1 retrains and re-evaluates;
    summary rows are the mean over the two seeds' own summaries, with seeds/sd/ci95, and the headline
    readings count both seeds."""
    out, _, _ = quickstart_run
    cfg = tiny_config(str(out))
    cfg.seeds = [0, 1]
    quickstart.run(cfg)
    rows = {r["experiment"]: r for r in json.loads((out / "summary.json").read_text())["rows"]}
    per_seed: dict = {}
    for d in out.glob("eval-*"):
        if (d / "DONE").exists():
            row = json.loads((d / "summary.json").read_text())["rows"][0]
            per_seed.setdefault(row["experiment"], []).append(row["pass@1"])
    for name, r in rows.items():
        assert r["seeds"] == 2 and len(per_seed[name]) == 2
        assert r["pass@1"] == pytest.approx(sum(per_seed[name]) / 2)
        assert set(r["sd"]) >= {"pass@1", "pass@8", "mean_tokens"}
        lo, hi = r["ci95"]["pass@1"]
        assert lo <= r["pass@1"] <= hi
    assert "8 problems × 2 seeds" in (out / "report.md").read_text()


# Files whose bytes legitimately differ between two runs of the same config: the thread count a run
# was given (config.yaml), wall times (the quickstart's stage times, eval's per-sample timings), and
# trainer files that store the output path or the runtime.
NOT_RECORDS = {"config.yaml", "timings.json", "timings.jsonl", "training_args.bin", "log_history.json"}


def record_digests(out) -> Counter:
    """(stage, path inside the run dir, sha256) for every result file under ``out``: the run dirs' hash
    suffixes are dropped (they contain the absolute input paths, which differ between two out dirs)."""
    found: Counter = Counter()
    for p in sorted(q for q in out.rglob("*") if q.is_file()):
        rel = p.relative_to(out)
        if p.name in NOT_RECORDS or "checkpoints" in rel.parts:
            continue
        parts = [re.sub(r"-[0-9a-f]{12}$", "", part) for part in rel.parts[:-1]] + [rel.name]  # also reference/generate-*
        stage = parts[0] if len(parts) > 1 else ""
        found[(stage, "/".join(parts[1:] if stage else parts), hashlib.sha256(p.read_bytes()).hexdigest())] += 1
    return found


def losses(out) -> list:
    return sorted(json.dumps([{k: v for k, v in h.items() if "runtime" not in k and "per_second" not in k}
                              for h in json.loads(p.read_text())]) for p in out.glob("sft-*/log_history.json"))


@pytest.mark.slow
def test_pipeline_from_scratch_is_byte_identical_with_1_and_2_threads(tmp_path):
    """The tiny pipeline, run three times into empty dirs: on 1 thread with students trained one after the
    other; on 2 threads, one after the other; and with students trained (and evaluated) in 2 processes.
    Every record, model, summary and the report must be byte-identical (tracewise.core.threads explains
    why they can be)."""
    import yaml

    base = {"world": {"n_train": 60, "n_test": 4, "levels": [1]},
            "student": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64, "vocab_size": 300},
            "pretrain_steps": 10, "train": {"max_steps": 10, "batch_size": 8, "learning_rate": 5e-3, "logging_steps": 5},
            "eval_samples": 2, "eval_temperature": 0.6, "eval_max_tokens": 60}
    one, two, three = tmp_path / "one", tmp_path / "two", tmp_path / "three"
    quickstart.run(build(quickstart.QuickstartConfig, {**base, "out": str(one), "threads": 1, "parallel": 1}))
    quickstart.run(build(quickstart.QuickstartConfig, {**base, "out": str(two), "threads": 2, "parallel": 1}))
    quickstart.run(build(quickstart.QuickstartConfig, {**base, "out": str(three), "threads": 2, "parallel": 2}))
    a, b, c = record_digests(one), record_digests(two), record_digests(three)
    assert {k[1] for k in a} >= {"summary.json", "report.md", "samples.jsonl", "traces.jsonl", "verdicts.jsonl",
                                 "model/model.safetensors"}
    assert a == b, f"differ: {sorted(set(a) ^ set(b))}"
    assert a == c, f"differ: {sorted(set(a) ^ set(c))}"
    assert losses(one) == losses(two) == losses(three)
    # The thread counts really differed: 1 everywhere; 2 everywhere (one process); 2 for pretraining and 1 in
    # each of the 2 worker processes that train and then evaluate the students.
    for out, expected in ((one, {"student": 1, "sft": 1, "eval": 1}), (two, {"student": 2, "sft": 2, "eval": 2}),
                          (three, {"student": 2, "sft": 1, "eval": 1})):
        for stage, n in expected.items():
            assert {yaml.safe_load(c.read_text())["threads"] for c in out.glob(f"{stage}-*/config.yaml")} == {n}


@pytest.mark.slow
def test_full_quickstart_reproduces_the_finding(tmp_path):
    """The default quickstart (~30 min on 2 loaded cores): concise student >= 3.5x fewer tokens at equal accuracy,
    and full-size students do the arithmetic."""
    quickstart.run(build(quickstart.QuickstartConfig, {"out": str(tmp_path)}))
    rows = {r["experiment"]: r for r in json.loads((tmp_path / "summary.json").read_text())["rows"]}
    assert rows["r1"]["mean_tokens"] / rows["gpt-oss"]["mean_tokens"] >= 3.5
    # Measured (3 seeds, micro_batches=4; README): r1 0.783, gpt-oss 0.923, mix 0.953 pass@1 (seed 0: 0.802 /
    # 0.859 / 0.965). No loss of accuracy with concise traces, not a gap in r1's favour:
    assert rows["gpt-oss"]["pass@1"] >= rows["r1"]["pass@1"] - 0.05 and rows["mix"]["pass@1"] >= 0.9
    right, equations = equation_accuracy(tmp_path)
    assert equations >= 100 and right / equations >= 0.9, (right, equations)
