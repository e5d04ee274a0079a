"""scripts/reproduce_paper.sh end to end on CPU with tiny stand-ins: a tiny student for both paper
students' recipes, a few local rows shaped like Nemotron-Post-Training-Dataset-v1 (no gold) and like
OpenMathReasoning (the gold join), local gpt-oss harmony traces instead of a vLLM generate, math-verify
instead of the vLLM judge, the hf backend for eval. Each stage takes the previous one by the name
--link gave it (no hashes to paste)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
INSTRUCTION = "Solve the following math problem. Make sure to put the answer (and only answer) inside \\boxed{}."
# problem -> (R1's answer, gpt-oss's answer, the reference); u3 has reasoning off, u4 has no reference.
ROWS = {"u0": ("What is $2+3$?", "5", "5", "5"), "u1": ("Compute $7 \\times 6$.", "42", "42", "42"),
        "u2": ("Find $x<0$ with $x^2=49$.", "-7", "7", "-7"), "u3": ("What is $1+1$?", "2", "2", "2"),
        "u4": ("Name the answer.", "1", "1", None)}


def _write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _inputs(tmp: Path) -> dict:
    from tracewise.core.records import Problem, write_records

    nemotron, gold, oss = [], [], []
    for uid, (problem, r1, gpt, ref) in ROWS.items():
        reasoning = "off" if uid == "u3" else "on"
        nemotron.append({"uuid": uid, "license": "CC BY 4.0", "generator": "DeepSeek-R1-0528", "version": "v1",
                         "category": "math", "reasoning": reasoning, "metadata": "{}",
                         "messages": [{"role": "system", "content": ""},
                                      {"role": "user", "content": f"{INSTRUCTION}\n\n{problem}"},
                                      {"role": "assistant", "content": f"<think>So {r1}.</think>\n\\boxed{{{r1}}}"}]})
        if ref is not None:
            gold.append({"problem": problem, "expected_answer": ref, "problem_type": "has_answer_extracted",
                         "generated_solution": "...", "inference_mode": "cot"})
        oss.append({"uuid": uid, "problem": f"{INSTRUCTION}\n\n{problem}",
                    "completion": f"<|channel|>analysis<|message|>Compute.<|end|><|start|>assistant<|channel|>final"
                                  f"<|message|>\\boxed{{{gpt}}}<|return|>"})
    bench = tmp / "tinybench.jsonl"
    write_records(bench, [Problem(id=f"b{i}", question=f"What is {i}+1?", answer=str(i + 1), domain="math",
                                  source="tinybench") for i in range(2)])
    return dict(R1_DATA=_write(tmp / "nemotron_math.jsonl", nemotron), GOLD_DATA=_write(tmp / "omr.jsonl", gold),
                GPTOSS_TRACES=_write(tmp / "gpt_oss.jsonl", oss), BENCHMARKS=str(bench))


def _run_script(tmp: Path, student: str, **extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OUT=str(tmp / "runs"), TW=f"{sys.executable} -m tracewise.cli", TOKENIZER=student,
               R1_SPLIT="train", R1_LIMIT="100", GOLD_SOURCE="join", STUDENTS="mistral-nemo", TEACHERS="r1 gpt-oss",
               SFT_LAUNCH=f"{sys.executable} -m tracewise.cli",
               VERIFY_ARGS="methods=[math_verify] verify_workers=0", CURATE_ARGS="filter=math_verify",
               SFT_ARGS=f"model={student} max_steps=2 batch_size=2 global_batch=2 max_length=256 bf16=false "
                        "gradient_checkpointing=false logging_steps=1 save_steps=100 threads=1",
               EVAL_ARGS="backend=hf sampling.n=2 sampling.max_tokens=8 batch_size=8 threads=1 n_boot=10 "
                         "verify_workers=0",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1",
               TRACEWISE_NO_PROGRESS="1", COLUMNS="400", CUDA_VISIBLE_DEVICES="", **_inputs(tmp), **extra)
    return subprocess.run(["bash", str(REPO / "scripts/reproduce_paper.sh")], env=env, capture_output=True,
                          text=True, timeout=1200)


def _kept(out: Path, teacher: str) -> list[str]:
    from datasets import load_from_disk

    return sorted(load_from_disk(str(out / "curated" / "datasets" / teacher))["problem_id"])


def test_reproduce_script_through_curation(tmp_path, student_path):
    """The default-suite slice: ingest (gold join, reasoning=on), ingest gpt-oss, verify, curate."""
    res = _run_script(tmp_path, student_path, STOP_AFTER="curate")
    assert res.returncode == 0, res.stderr[-4000:]
    out = tmp_path / "runs"
    for name, stage in [("traces-r1", "ingest"), ("traces-gpt-oss", "ingest"), ("verdicts", "verify"),
                        ("curated", "curate")]:
        link = out / name
        assert link.is_symlink() and os.readlink(link).startswith(f"{stage}-") and (link / "DONE").is_file()
    # u3: reasoning off; u4: no reference answer; u2: gpt-oss wrong. Both teachers right: u0, u1.
    assert _kept(out, "r1") == _kept(out, "gpt-oss") == ["u0", "u1"]
    assert "stopped after curate" in res.stderr


@pytest.mark.slow
def test_reproduce_script_end_to_end(tmp_path, student_path):
    res = _run_script(tmp_path, student_path)
    assert res.returncode == 0, res.stderr[-4000:]
    out = tmp_path / "runs"
    for t in ("r1", "gpt-oss"):
        assert os.readlink(out / f"model-mistral-nemo-{t}").startswith("sft-")
        assert os.readlink(out / f"result-mistral-nemo-{t}-tinybench").startswith("eval-")
    rows = json.loads((out / "report" / "summary.json").read_text())
    rows = rows["rows"] if isinstance(rows, dict) else rows
    assert {r["experiment"] for r in rows} == {"mistral-nemo-r1", "mistral-nemo-gpt-oss"}
    assert (out / "report" / "report.html").is_file()
    # A rerun finds every stage done: same links, nothing retrained.
    before = {p.name: os.readlink(p) for p in out.iterdir() if p.is_symlink()}
    again = _run_script(tmp_path, student_path, STOP_AFTER="sft")
    assert again.returncode == 0, again.stderr[-4000:]
    assert {p.name: os.readlink(p) for p in out.iterdir() if p.is_symlink()} == before
    assert "nothing to do" in again.stderr or "is complete" in again.stderr
