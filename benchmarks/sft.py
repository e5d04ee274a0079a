"""Non-padding tokens/s of `train sft` vs TRL SFTTrainer at its defaults (same model, data, batch).

Every variant trains exactly one epoch over the same examples, so all of them process the same
non-padding tokens; the ratio of wall times is the ratio of tokens/s. Baselines:
  * trl-defaults: SFTConfig() as shipped (on CPU that includes bf16 autocast and gradient checkpointing);
  * trl-fp32:     the same with bf16 and gradient checkpointing off, to show what our changes add on
                  top of just picking CPU-appropriate precision;
  * tracewise:    tracewise.train.sft (plain loss without per-step metrics, length-grouped batches).

Usage: python benchmarks/sft.py [--examples 512] [--batch 32] [--threads 2]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch

from tracewise.core.tokens import student_completion
from tracewise.core.text import parse_completion
from tracewise.world.problems import WorldConfig, generate_problems
from tracewise.world.student import StudentConfig, init_student
from tracewise.world.teachers import TeacherConfig, write_trace

log = logging.getLogger("bench.sft")


def build_data(tmp: Path, n: int):
    from datasets import Dataset

    probs = generate_problems(WorldConfig(n_train=n, n_test=0), "train")
    rows, corpus = [], []
    for i, p in enumerate(probs):
        style = "r1" if i % 2 else "gpt-oss"  # mixed lengths, as in the 50/50 mix
        parsed = parse_completion(write_trace(p, TeacherConfig(style=style), 0)[0])
        text = student_completion(parsed.thinking, parsed.answer)
        corpus += [p.question, text]
        rows.append({"prompt": [{"role": "user", "content": p.question}], "completion": [{"role": "assistant", "content": text}]})
    student = init_student(tmp / "student", corpus, StudentConfig())
    ds_path = tmp / "ds"
    Dataset.from_list(rows).save_to_disk(str(ds_path))
    return student, ds_path


def count_tokens(student: Path, ds_path: Path) -> int:
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(student)
    ds = load_from_disk(str(ds_path))
    # return_dict=True: transformers 5 returns a BatchEncoding, whose len() is its number of keys
    return sum(len(tok.apply_chat_template(r["prompt"] + r["completion"], tokenize=True, return_dict=True)["input_ids"])
               for r in ds)


def time_trl(student: Path, ds_path: Path, steps: int, batch: int, fp32: bool) -> float:
    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    kw = dict(bf16=False, gradient_checkpointing=False) if fp32 else {}
    args = SFTConfig(output_dir=tempfile.mkdtemp(), max_steps=steps, per_device_train_batch_size=batch,
                     report_to=[], save_strategy="no", logging_steps=10_000, disable_tqdm=True, use_cpu=True, **kw)
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(student), args=args,
                         train_dataset=load_from_disk(str(ds_path)), processing_class=AutoTokenizer.from_pretrained(student))
    t = time.perf_counter()
    trainer.train()
    return time.perf_counter() - t


def time_tracewise(student: Path, ds_path: Path, steps: int, batch: int) -> float:
    from tracewise.train.sft import SFTRunConfig, run

    cfg = SFTRunConfig(out=tempfile.mkdtemp(), experiment="bench", model=str(student), dataset=str(ds_path),
                       max_steps=steps, batch_size=batch, save_steps=10_000, logging_steps=10_000)
    t = time.perf_counter()
    run(cfg)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=512)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(a.threads)
    import os

    os.environ["TRACEWISE_NO_PROGRESS"] = "1"
    tmp = Path(tempfile.mkdtemp())
    student, ds = build_data(tmp, a.examples)
    tokens = count_tokens(student, ds)
    steps = a.examples // a.batch  # one epoch: every variant sees the same tokens
    results = {
        "trl-defaults": time_trl(student, ds, steps, a.batch, fp32=False),
        "trl-fp32": time_trl(student, ds, steps, a.batch, fp32=True),
        "tracewise": time_tracewise(student, ds, steps, a.batch),
    }
    base = results["trl-defaults"]
    print(f"{a.examples} examples, {tokens} non-padding tokens, batch {a.batch}, {steps} steps, {a.threads} threads")
    for name, secs in results.items():
        print(f"{name:>13}: {secs:7.1f} s  {tokens / secs:8.0f} tok/s  {base / secs:5.2f}x trl-defaults")
    print(f"tracewise vs trl-fp32: {results['trl-fp32'] / results['tracewise']:.2f}x")


if __name__ == "__main__":
    main()
