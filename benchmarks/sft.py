"""Non-padding tokens/s of `train sft` vs TRL's SFTTrainer in its best CPU configuration (same model, data, batch).

Every variant trains exactly one epoch over the same examples, so all of them process the same
non-padding tokens; the ratio of wall times is the ratio of tokens/s. Variants:
  * trl-defaults:        SFTConfig() as shipped (on CPU that includes bf16 autocast and activation checkpointing);
  * trl-fp32-random:     fp32, no activation checkpointing, uniformly random batches;
  * trl-fp32-grouped:    the same with TRL's length-grouped sampler (train_sampling_strategy="group_by_length"):
                         the fastest TRL configuration on CPU, and the baseline to beat;
  * tracewise-random:    `train sft` as shipped (batch_order=random, fast_loss);
  * tracewise-buckets:   `train sft` with batch_order=length_buckets (similar lengths per batch, shuffled batches);
  * tracewise-grouped:   `train sft` with batch_order=group_by_length (the same sampler as trl-fp32-grouped, so
                         the difference is the loss alone).
Each variant runs --repeats times, interleaved (a, b, c, a, b, c, ...) so a slow spell hits all of them;
the table gives the median, the spread (min-max) and the ratio of the best TRL variant's median to each
variant's median (> 1: faster than TRL's best). Timings need an idle machine.

Usage: python benchmarks/sft.py [--examples 512] [--batch 32] [--threads 2] [--repeats 3] [--variants a,b,...]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from tracewise.core.tokens import student_completion
from tracewise.core.text import parse_completion
from tracewise.world.problems import WorldConfig, generate_problems
from tracewise.world.student import StudentConfig, init_student
from tracewise.world.teachers import TeacherConfig, write_trace

TRL = {"trl-defaults": None, "trl-fp32-random": "random", "trl-fp32-grouped": "group_by_length"}
TRACEWISE = {"tracewise-random": "random", "tracewise-buckets": "length_buckets",
             "tracewise-grouped": "group_by_length"}
VARIANTS = [*TRL, *TRACEWISE]


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


def time_trl(student: Path, ds_path: Path, steps: int, batch: int, sampling: str | None, out: str) -> float:
    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    kw = {} if sampling is None else dict(bf16=False, activation_checkpointing=False, train_sampling_strategy=sampling)
    args = SFTConfig(output_dir=out, max_steps=steps, per_device_train_batch_size=batch, report_to=[],
                     save_strategy="no", logging_steps=10_000, disable_tqdm=True, use_cpu=True, **kw)
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(student), args=args,
                         train_dataset=load_from_disk(str(ds_path)), processing_class=AutoTokenizer.from_pretrained(student))
    trainer.remove_callback(PrinterCallback)  # as `train sft` does: no dict printed per log
    t = time.perf_counter()
    trainer.train()
    return time.perf_counter() - t


def time_tracewise(student: Path, ds_path: Path, steps: int, batch: int, batch_order: str, out: str) -> float:
    from tracewise.train.sft import SFTRunConfig, build_trainer

    cfg = SFTRunConfig(out=out, experiment="bench", model=str(student), dataset=str(ds_path), max_steps=steps,
                       batch_size=batch, batch_order=batch_order, save_steps=10_000, logging_steps=10_000)
    trainer = build_trainer(cfg, out)  # the trainer `train sft` runs, timed like the TRL ones: train() only
    t = time.perf_counter()
    trainer.train()
    return time.perf_counter() - t


def measure(name: str, student: Path, ds: Path, steps: int, batch: int) -> float:
    out = tempfile.mkdtemp(prefix=f"bench-{name}-")
    try:
        if name in TRL:
            return time_trl(student, ds, steps, batch, TRL[name], out)
        return time_tracewise(student, ds, steps, batch, TRACEWISE[name], out)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=512, help="training examples (one epoch)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="runs per variant (median and spread are reported)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {VARIANTS}")
    a = ap.parse_args()
    names = [v.strip() for v in a.variants.split(",") if v.strip()]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown or not names or a.repeats < 1 or a.examples < a.batch:
        ap.error(f"unknown variant(s) {unknown}" if unknown else "need variants, --repeats >= 1, --examples >= --batch")
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(a.threads)
    os.environ["TRACEWISE_NO_PROGRESS"] = "1"
    tmp = Path(tempfile.mkdtemp(prefix="bench-sft-"))
    try:
        student, ds = build_data(tmp, a.examples)
        tokens = count_tokens(student, ds)
        steps = a.examples // a.batch  # one epoch: every variant sees the same tokens
        times: dict[str, list[float]] = {n: [] for n in names}
        for r in range(a.repeats):
            for name in names:
                times[name].append(measure(name, student, ds, steps, a.batch))
                print(f"  repeat {r + 1}/{a.repeats} {name}: {times[name][-1]:.2f} s", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med = {n: statistics.median(t) for n, t in times.items()}
    trl_names = [n for n in names if n in TRL]
    best = min(trl_names, key=med.get) if trl_names else None
    print(f"\n{a.examples} examples, {tokens} non-padding tokens, batch {a.batch}, {steps} steps, {a.threads} threads, "
          f"{a.repeats} repeat(s)")
    print(f"{'variant':>18}  {'median s':>9}  {'min-max s':>13}  {'tok/s':>8}  " + (f"vs {best}" if best else ""))
    for n in names:
        ratio = f"{med[best] / med[n]:5.2f}x" if best else ""
        print(f"{n:>18}  {med[n]:9.2f}  {min(times[n]):6.2f}-{max(times[n]):<6.2f}  {tokens / med[n]:8.0f}  {ratio}")
    if best:
        for n in names:
            if n in TRACEWISE:
                print(f"{n} vs best TRL ({best}): {med[best] / med[n]:.2f}x")


if __name__ == "__main__":
    main()
