"""Study ``rl-alpha``: the Arora–Zanette length-penalty sweep on the quickstart's R1-style student.

One ``train rl`` run per α (the ``alpha`` of the ``arora_zanette`` reward; α = 0 is plain
correctness, the RL baseline), each from the same SFT student, then ``eval`` of every policy (and
of the SFT start) on the held-out problems. Writes the "RL length penalty" report section: mean
tokens and pass@1/pass@8 per α, a plot, and a reading computed from the numbers — does some α give
≥ ``target_token_cut`` fewer tokens than α = 0 with pass@1 within ``max_pass1_drop`` points? Every
run is an ordinary stage in the store, so a rerun is a no-op and an interrupted sweep resumes.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from tracewise.backends.base import SamplingParams
from tracewise.core.config import build, doc
from tracewise.data.sources import ProblemsConfig
from tracewise.core.seeds import Replicated, seeds_field
from tracewise.core.threads import THREADS_HELP
from tracewise.evaluate.replicates import Comparison, mean_values
from tracewise.studies.replicated import Replicates
from tracewise.world.problems import WorldConfig

log = logging.getLogger(__name__)
TITLE = "RL length penalty"


def _quickstart_world() -> WorldConfig:
    return WorldConfig(n_train=4000, n_test=100)  # tracewise.studies.quickstart's world


def _rl_defaults() -> dict:
    return {"problems": {"source": "world", "split": "train", "world": {"n_train": 4000, "n_test": 100}},
            "rewards": [{"name": "arora_zanette", "alpha": 0.0}]}


@dataclass
class RLAlphaConfig(Replicated):
    """Sweep the Arora–Zanette α on one SFT student (``tracewise study rl-alpha``)."""

    SEED = "eval_sampling.seed"  # replicates count from the eval's sampling seed

    out: str = doc("Where the RL and eval run dirs go (default: the quickstart dir beside the student).", "", hash=False)
    quickstart: str = doc("A quickstart run dir; its SFT student named `student` is the starting policy.",
                          "runs/quickstart")
    student: str = doc("Experiment label of the SFT student to start from (quickstart: r1, gpt-oss, mix).", "r1")
    model: str = doc("An SFT model dir to start from instead of looking it up in `quickstart`.", "")
    alphas: list[float] = doc("α values; 0 must be among them (the reference).", factory=lambda: [0.0, 0.05, 0.1, 0.2, 0.4])
    rl: dict = doc("train rl settings (any RLRunConfig key but out/model/experiment); the alpha of its "
                   "arora_zanette reward spec is set per run.", factory=_rl_defaults)
    eval_problems: ProblemsConfig = doc("Held-out problems (default: the quickstart world's test split).",
                                        factory=lambda: ProblemsConfig(split="test", world=_quickstart_world()))
    eval_sampling: SamplingParams = doc("Eval sampling (default: the quickstart's, 8 samples at T=0.6, 400 tokens).",
                                        factory=lambda: SamplingParams(n=8, temperature=0.6, max_tokens=400, seed=0))
    seeds: int | list[int] = seeds_field(
        "With several seeds, replicate s trains every α's `train rl` run with seed s (so rl.seed is refused) from "
        "the SFT student trained with seed s when the quickstart trained several (else its one student) and "
        "evaluates it with sampling seed s; one seed keeps rl.seed and eval_sampling.seed as given. Rows are means "
        "± seed SD [hierarchical 95% CI]; the reading's α is compared with α = 0 by paired intervals.")
    target_token_cut: float = doc("Token saving the reading tests for, as a fraction of α=0's tokens.", 0.30)
    max_pass1_drop: float = doc("Largest pass@1 loss vs α=0 (points) the reading accepts.", 2.0)
    section: str = doc("Section JSON path (default <out>/sections/rl_length_penalty.json).", "", hash=False)
    threads: int = doc(THREADS_HELP, 0, hash=False)

    def validate(self) -> None:
        if not self.alphas or 0.0 not in [float(a) for a in self.alphas]:
            raise ValueError(f"study.rl_alpha.alphas must include 0 (the reference run), got {self.alphas}")
        if len(set(self.alphas)) != len(self.alphas):
            raise ValueError(f"study.rl_alpha.alphas has duplicates: {self.alphas}")
        for key in ("out", "model", "experiment"):
            if key in self.rl:
                raise ValueError(f"study.rl_alpha.rl.{key} is set by the study; use the study's own keys")
        specs = self.rl.get("rewards", _rl_defaults()["rewards"])
        if not isinstance(specs, list) or sum(isinstance(s, dict) and s.get("name") == "arora_zanette"
                                              for s in specs) != 1:
            raise ValueError("study.rl_alpha.rl.rewards must hold exactly one arora_zanette spec (its alpha is swept)")
        if not 0 < self.target_token_cut < 1 or self.max_pass1_drop < 0:
            raise ValueError("study.rl_alpha: target_token_cut must be in (0, 1) and max_pass1_drop >= 0")
        self.eval_problems.validate()
        self.validate_seeds("study.rl_alpha")
        if len(self.seed_values()) > 1 and "seed" in self.rl:
            raise ValueError("study.rl_alpha.rl.seed: with several seeds each replicate's RL seed is its own; "
                             "drop rl.seed (or use seeds=1)")
        for alpha in self.alphas:  # every run's config is checked before the first one trains
            self.rl_config(alpha, self.model or "gpt2")

    def start_models(self) -> list[str]:
        """The SFT student's model dir per replicate seed: ``model``, or the quickstart run labelled ``student``
        (the one of seed s when the quickstart trained several seeds; exactly one run per seed)."""
        seeds = self.seed_values()
        if self.model:
            return [self.model] * len(seeds)
        import yaml

        root = Path(self.quickstart)
        found = sorted(d for d in root.glob("sft-*") if (d / "DONE").exists() and (d / "experiment.txt").is_file()
                       and (d / "experiment.txt").read_text().strip() == self.student)
        by_seed: dict = {}
        for d in found:
            by_seed.setdefault(yaml.safe_load((d / "config.yaml").read_text()).get("seed"), []).append(d)
        several = len(by_seed) > 1
        picks = [by_seed.get(s, []) if several else found for s in seeds]
        if not all(len(p) == 1 for p in picks):
            where = [d.name for d in found] or "none"
            raise ValueError(f"study.rl_alpha: expected one finished SFT run labelled {self.student!r}"
                             + (f" per seed {seeds}" if several else "") + f" in {root} (found: {where}); run "
                             f"`tracewise quickstart --out {root}` or set model=")
        return [str(p[0] / "model") for p in picks]

    def out_dir(self) -> str:
        return self.out or (str(Path(self.model).parent.parent) if self.model else self.quickstart)

    def rl_config(self, alpha: float, model: str, seed: int | None = None):
        """The ``train rl`` config of one α; ``seed`` (a replicate of several) sets its RL seed."""
        from tracewise.train.rl import RLRunConfig

        settings = json.loads(json.dumps(self.rl))  # deep copy
        if seed is not None and len(self.seed_values()) > 1:
            settings["seed"] = seed
        specs = settings.setdefault("rewards", _rl_defaults()["rewards"])
        for spec in specs:
            if spec.get("name") == "arora_zanette":
                spec["alpha"] = float(alpha)
        settings.setdefault("threads", self.threads)
        return build(RLRunConfig, {**settings, "out": self.out_dir(), "model": model,
                                   "experiment": f"{self.student}-rl-a{alpha:g}"}, "study.rl_alpha.rl")


def _evaluate(cfg: RLAlphaConfig, label: str, models: list[str]) -> list[Path]:
    """``models[i]`` evaluated with sampling seed ``seeds[i]``; returns the eval run dirs."""
    from dataclasses import replace

    from tracewise import evaluate

    return [evaluate.run(evaluate.EvalConfig(out=cfg.out_dir(), experiment=label, model=model,
                                             problems=cfg.eval_problems, sampling=replace(cfg.eval_sampling, seed=seed),
                                             threads=cfg.threads))
            for model, seed in zip(models, cfg.seed_values())]


def _row(reps: Replicates, label: str) -> dict:
    """The label's row over seeds, with its group mix (mean over seeds)."""
    mixes = [_group_mix(d / "samples.jsonl") for d in reps.runs[label]]
    return {**reps.row(label), **{k: mean_values([m[k] for m in mixes]) for k in mixes[0]}}


def _group_mix(samples_path: Path) -> dict:
    """Share of problems with all samples correct / at least two correct. Only groups with >= 2 correct
    samples carry a length signal; in mixed groups it is added to the much larger correct-vs-wrong gap,
    and only in all-correct groups (zero correctness variance) is it the whole advantage."""
    from tracewise.core.records import Sample, read_records

    per: dict[str, list[bool]] = {}
    for s in read_records(samples_path, Sample):
        per.setdefault(s.problem_id, []).append(bool(s.correct))
    n = max(1, len(per))
    return {"all_correct_frac": sum(all(v) for v in per.values()) / n,
            "two_plus_correct_frac": sum(sum(v) >= 2 for v in per.values()) / n}


def _train_stats(run_dir: Path) -> dict:
    done = json.loads((run_dir / "DONE").read_text())
    history = json.loads((run_dir / "log_history.json").read_text())
    kls = [h["kl"] for h in history if isinstance(h.get("kl"), (int, float))]
    return {"steps": done.get("steps"), "train_len_first": done.get("first_mean_length"),
            "train_len_last": done.get("last_mean_length"), "reward_first": done.get("first_reward"),
            "reward_last": done.get("last_reward"), "kl_last": kls[-1] if kls else None}


def run(cfg: RLAlphaConfig) -> Path:
    """Train and evaluate every α (each a no-op when already done); write the section; return its path."""
    from tracewise.train import rl

    cfg.validate()
    starts = cfg.start_models()
    for model in dict.fromkeys(starts):
        if not Path(model).exists():
            raise ValueError(f"study.rl_alpha: starting model {model} not found")
    seeds = cfg.seed_values()
    rl_cfgs = {a: [cfg.rl_config(a, m, s) for m, s in zip(starts, seeds)] for a in cfg.alphas}  # all validated first
    runs = {cfg.student: _evaluate(cfg, cfg.student, starts)}
    rl_dirs = {}
    for alpha, per_seed in rl_cfgs.items():
        rl_dirs[alpha] = [rl.run(c) for c in per_seed]
        runs[per_seed[0].experiment] = _evaluate(cfg, per_seed[0].experiment, [str(rl.model_dir(d))
                                                                               for d in rl_dirs[alpha]])
    reps = Replicates(runs)
    rows = [{"alpha": None, "label": f"{cfg.student} (SFT, no RL)", "experiment": cfg.student,
             **_row(reps, cfg.student)}]
    for alpha, per_seed in rl_cfgs.items():
        row = _row(reps, per_seed[0].experiment)
        stats = [_train_stats(d) for d in rl_dirs[alpha]]
        rows.append({"alpha": float(alpha), "label": f"α = {alpha:g}", "rl_dir": str(rl_dirs[alpha][0]),
                     "rl_dirs": [str(d) for d in rl_dirs[alpha]], **row,
                     **{k: mean_values([st[k] for st in stats]) for k in stats[0]}})
        log.info("rl-alpha: α=%g pass@1 %.3f mean tokens %.1f (%d seed(s))", alpha, row["pass@1"], row["mean_tokens"],
                 len(seeds))
    rows[1:] = sorted(rows[1:], key=lambda r: r["alpha"])  # the run order may put informative α first
    pick = chosen(rows, cfg.target_token_cut, cfg.max_pass1_drop)
    ref = next(r for r in rows if r["alpha"] == 0.0)
    # Every α against α = 0, paired, so that no α's effect is read off point estimates alone; the reading's
    # α is one of them.
    per_alpha = {r["alpha"]: reps.compare(ref["experiment"], r["experiment"]) for r in rows[1:] if r["alpha"]}
    comparisons = [] if pick is None else per_alpha[pick["alpha"]]
    # Does RL on correctness alone hold the start's accuracy? If not, α differences mix the penalty with drift.
    baseline = reps.compare(cfg.student, ref["experiment"])
    section = Path(cfg.section or Path(cfg.out_dir()) / "sections" / "rl_length_penalty.json")
    write_section(cfg, rows, section, comparisons, baseline, per_alpha)
    return section


def chosen(rows: list[dict], token_cut: float = 0.30, max_drop: float = 2.0) -> dict | None:
    """The α row the reading reports: the largest token cut among those that hold, else the largest cut."""
    ref = next(r for r in rows if r["alpha"] == 0.0)
    scored = [(1 - r["mean_tokens"] / ref["mean_tokens"], 100 * (ref["pass@1"] - r["pass@1"]), r)
              for r in rows if r["alpha"]]
    # 0.40 - 0.37 is 3.0000000000000027 points: compare with a tolerance
    hits = [x for x in scored if x[0] >= token_cut - 1e-9 and x[1] <= max_drop + 1e-9]
    pool = hits or scored
    return max(pool, key=lambda x: x[0])[2] if pool else None


def reading(rows: list[dict], token_cut: float = 0.30, max_drop: float = 2.0,
            comparisons: Sequence[Comparison] = ()) -> str:
    """One line, computed from the numbers: does some α cut tokens by ``token_cut`` at ≤ ``max_drop`` points?
    With ``comparisons`` (α = 0 vs the reported α, paired) it says whether each difference is distinguishable."""
    ref = next(r for r in rows if r["alpha"] == 0.0)
    pick = chosen(rows, token_cut, max_drop)
    if pick is None:
        return "Only α = 0 was run: nothing to compare."
    a, cut, drop = pick["alpha"], 1 - pick["mean_tokens"] / ref["mean_tokens"], 100 * (ref["pass@1"] - pick["pass@1"])
    paired = "".join(f" Paired: {c.reading()}" for c in sorted(comparisons, key=lambda c: c.metric != "token_ratio"))
    if cut >= token_cut - 1e-9 and drop <= max_drop + 1e-9:
        return (f"**Holds:** α = {a:g} uses {cut:.0%} fewer tokens than α = 0 ({ref['mean_tokens']:.0f} tokens) with "
                f"pass@1 {-drop:+.1f} points (target: ≥{token_cut:.0%} fewer, within {max_drop:g} points).{paired}")
    return (f"**Does not hold:** no α gives ≥{token_cut:.0%} fewer tokens than α = 0 ({ref['mean_tokens']:.0f} tokens) "
            f"with pass@1 within {max_drop:g} points; the largest cut is {cut:.0%} at α = {a:g} "
            f"(pass@1 {-drop:+.1f} points).{paired}")


def _signal_note(rows: list[dict]) -> str:
    """Where the length penalty can act, from the SFT start's held-out samples (computed, not fixed text)."""
    start = rows[0]
    ref = next(r for r in rows if r["alpha"] == 0.0)
    return (f"Length signal available: the starting student solves {start['all_correct_frac']:.0%} of held-out "
            f"problems in all {start['n_samples'] // max(1, start['n'] * start.get('seeds', 1))} samples (groups where the penalty is the whole "
            f"advantage) and {start['two_plus_correct_frac']:.0%} in ≥ 2 (where it is added to the correct-vs-wrong "
            f"gap); RL on correctness alone (α = 0) moved tokens {ref['mean_tokens'] / start['mean_tokens'] - 1:+.0%} "
            f"and pass@1 {100 * (ref['pass@1'] - start['pass@1']):+.1f} points from the SFT start.")


def _fmt(v, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def _sd(row: dict, metric: str, digits: int) -> str:
    """The mean, ± the seed SD when there are several seeds."""
    sd = (row.get("sd") or {}).get(metric)
    return f"{row[metric]:.{digits}f}" + ("" if sd is None else f" ± {sd:.{digits}f}")


def baseline_note(baseline: Sequence[Comparison]) -> str:
    """Whether α = 0 held the SFT start's accuracy, from the paired start − α=0 interval (empty without one)."""
    c = next((c for c in baseline if c.metric == "pass@1"), None)
    if c is None:
        return ""
    verdict = ("**α = 0 lost accuracy**: RL drifted at this horizon and learning rate, so differences between α "
               "are not the penalty's alone" if c.distinguishable and c.estimate > 0 else
               "α = 0 gained accuracy over the SFT start" if c.distinguishable else
               "α = 0 held the SFT start's accuracy (no difference distinguishable)")
    return f"Baseline check, SFT start vs α = 0: {verdict}. Paired: " + " ".join(
        x.reading() for x in sorted(baseline, key=lambda x: x.metric != "token_ratio"))


def paired_table(per_alpha: dict[float, Sequence[Comparison]]) -> list[str]:
    """Markdown rows: each α against α = 0, token ratio and pass@1 difference with paired 95% intervals."""
    lines = ["| α | tokens / α=0 tokens [95% CI] | pass@1 α − (α=0), points [95% CI] | pass@1 difference |",
             "|---|---|---|---|"]
    for alpha, comps in sorted(per_alpha.items()):
        ratio = next(c for c in comps if c.metric == "token_ratio")
        acc = next(c for c in comps if c.metric == "pass@1")
        lo, hi = acc.ci95  # acc is (α=0) − α; the table shows α − (α=0)
        lines.append(f"| {alpha:g} | {ratio.estimate:.2f}× [{ratio.ci95[0]:.2f}, {ratio.ci95[1]:.2f}] | "
                     f"{-acc.estimate * 100:+.1f} [{-hi * 100:+.1f}, {-lo * 100:+.1f}] | "
                     f"{'distinguishable' if acc.distinguishable else 'not distinguishable'} |")
    return lines


def write_section(cfg: RLAlphaConfig, rows: list[dict], path: Path, comparisons: Sequence[Comparison] = (),
                  baseline: Sequence[Comparison] = (), per_alpha: dict | None = None) -> Path:
    """Table + plot + reading as a report section file (``tracewise report section_files=[...]``)."""
    from tracewise.report.sections import write_section_file

    ref = next(r for r in rows if r["alpha"] == 0.0)
    lines = [f"Arora–Zanette reward r = 1[correct]·(1 − α·σ(z(length))) with `train rl` "
             f"({rows[1].get('steps')} steps each) from the {cfg.student} SFT student; eval: "
             f"{cfg.eval_sampling.n} samples/problem at T = {cfg.eval_sampling.temperature:g}, "
             f"{ref['n']} held-out problems, {ref.get('seeds', 1)} seed(s) (mean ± seed SD). Tokens are "
             f"student-tokenizer tokens per sample.", "",
             "| policy | mean tokens | Δ tokens vs α=0 | pass@1 | pass@1 95% CI | pass@8 | train length first→last | KL (last) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ci = r.get("ci95", {}).get("pass@1", [None, None])
        delta = "–" if r["alpha"] is None else f"{r['mean_tokens'] / ref['mean_tokens'] - 1:+.0%}"
        train = ("–" if r.get("train_len_first") is None
                 else f"{r['train_len_first']:.0f} → {r['train_len_last']:.0f}")
        lines.append(f"| {r['label']} | {_sd(r, 'mean_tokens', 1)} | {delta} | {_sd(r, 'pass@1', 3)} | "
                     f"[{_fmt(ci[0], '.3f')}, {_fmt(ci[1], '.3f')}] | {r['pass@8']:.3f} | {train} | "
                     f"{_fmt(r.get('kl_last'), '.4f')} |")
    lines += ["", reading(rows, cfg.target_token_cut, cfg.max_pass1_drop, comparisons), "", _signal_note(rows)]
    if baseline:
        lines += ["", baseline_note(baseline)]
    if per_alpha:
        n = next(iter(per_alpha.values()))[0]
        lines += ["", f"Each α against α = 0, paired over problems within seeds, then seeds ({n.n_problems} problems × "
                  f"{n.n_seeds} seed{'s' if n.n_seeds != 1 else ''}):", "", *paired_table(per_alpha)]
    image = path.with_suffix(".png")
    _plot(rows, image)
    (path.with_name(path.stem + "_rows.json")).write_text(json.dumps(rows, indent=1, default=str))
    return write_section_file(path, TITLE, "\n".join(lines), [image])


def _plot(rows: list[dict], image: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    rl_rows = [r for r in rows if r["alpha"] is not None]
    for key, marker in (("pass@1", "o"), ("pass@8", "s")):
        ax.plot([r["mean_tokens"] for r in rl_rows], [r[key] for r in rl_rows], marker=marker, label=f"RL {key}")
        for r in rl_rows:
            ax.annotate(f"α={r['alpha']:g}", (r["mean_tokens"], r[key]), textcoords="offset points", xytext=(4, 4),
                        fontsize=8)
    sft = [r for r in rows if r["alpha"] is None]
    for r in sft:
        ax.scatter([r["mean_tokens"]] * 2, [r["pass@1"], r["pass@8"]], marker="x", color="black", label="SFT start")
    ax.set_xlabel("mean generated tokens per sample")
    ax.set_ylabel("accuracy")
    ax.set_title("Length penalty α: accuracy vs tokens")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(image, dpi=120)
    plt.close(fig)
