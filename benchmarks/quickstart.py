"""Wall time per quickstart stage, and training / generation tokens per second.

Runs `tracewise quickstart` (default config unless -c is given) into a fresh directory, then reads
the run's own records: stage timings from timings.json, training tokens from the curated datasets
(steps x batch x mean tokenised example length), generated tokens from the eval samples.

Usage: python benchmarks/quickstart.py [--out DIR] [-c CONFIG] [KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

from tracewise.studies import quickstart
from tracewise.core.config import load_config
from tracewise.core.logs import setup_logging
from tracewise.core.records import Sample, read_records


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None)
    ap.add_argument("-c", "--config", default=None)
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    setup_logging("WARNING")
    out = a.out or tempfile.mkdtemp(prefix="tw-bench-")
    cfg = load_config(quickstart.QuickstartConfig, a.config, [*a.overrides, f"out={out}"])
    quickstart.run(cfg)
    report(Path(out), cfg)


def report(out: Path, cfg: quickstart.QuickstartConfig) -> None:
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    timings = json.loads((out / "timings.json").read_text())
    total = sum(timings.values())
    print(f"quickstart wall time: {total:.0f} s")
    for stage, secs in timings.items():
        print(f"  {stage:>12}: {secs:7.1f} s  ({secs / total:5.1%})")
    train_tokens = 0
    for sft_dir in out.glob("sft-*"):
        conf = (sft_dir / "config.yaml").read_text()
        dataset = next(line.split(": ", 1)[1] for line in conf.splitlines() if line.startswith("dataset:"))
        model = next(line.split(": ", 1)[1] for line in conf.splitlines() if line.startswith("model:"))
        tok = AutoTokenizer.from_pretrained(model)
        ds = load_from_disk(dataset)
        mean_len = sum(len(tok.apply_chat_template(r["prompt"] + r["completion"], tokenize=True)) for r in ds) / len(ds)
        train_tokens += cfg.train.max_steps * cfg.train.batch_size * mean_len
    gen_tokens = sum(s.n_tokens for p in out.glob("eval-*/samples.jsonl") for s in read_records(p, Sample))
    print(f"training: {train_tokens:.0f} non-padding tokens, {train_tokens / timings['train']:.0f} tok/s (all students, wall)")
    print(f"generation (eval): {gen_tokens} tokens, {gen_tokens / timings['eval']:.0f} tok/s")


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main()
