"""The transfer study's report section: tables, one plot, and a reading computed from the numbers."""

from __future__ import annotations

from pathlib import Path

from tracewise.report.sections import write_section_file

VERBOSE, CONCISE = "r1", "gpt-oss"


def _pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f}"


def teacher_table(teachers: list[dict], min_ratio: float, parity_points: float) -> str:
    lines = [
        f"| domain | problems | {VERBOSE} tokens | {CONCISE} tokens | ratio | ratio ≥ {min_ratio:g}× | "
        f"{VERBOSE} acc % | {CONCISE} acc % | Δ acc (pts) [95% CI] | parity (≤ {parity_points:g} pts) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t in teachers:
        lo, hi = t["acc_diff"] - t["acc_diff_ci"], t["acc_diff"] + t["acc_diff_ci"]
        lines.append(
            f"| {t['domain']} | {t['n']} | {t[f'tokens_{VERBOSE}']:.0f} | {t[f'tokens_{CONCISE}']:.0f} | "
            f"{t['ratio']:.2f}× | {'yes' if t['ratio_holds'] else 'no'} | {_pct(t[f'acc_{VERBOSE}'])} | "
            f"{_pct(t[f'acc_{CONCISE}'])} | {100 * t['acc_diff']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] | "
            f"{'yes' if t['parity_holds'] else 'no'} |")
    return "\n".join(lines)


def _pct_cell(e: dict) -> str:
    """pass@1 in %: mean over seeds, ± seed SD with several seeds, [95% CI] when known."""
    sd, ci = (e.get("sd") or {}).get("pass@1"), (e.get("ci95") or {}).get("pass@1")
    return (_pct(e["pass@1"]) + (f" ± {100 * sd:.1f}" if sd is not None else "")
            + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else ""))


def _gain_cell(e: dict, base: dict, gain: dict | None) -> str:
    """ΔR in points: the paired estimate with its 95% interval when computed, else the plain difference."""
    if gain is None:
        return f"{100 * (e['pass@1'] - base['pass@1']):+.1f}"
    lo, hi = gain["ci95"]
    return f"{100 * gain['estimate']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def student_table(result: dict, math_domain: str) -> str:
    evals, ti = result["students"], {(r["student"], r["domain"]): r for r in result["ti"]}
    gains = {(g["a"], g["domain"]): g for g in result.get("gains", [])}
    models = list(next(iter(evals.values())))
    lines = ["| model | domain | pass@1 % | ΔR vs base (pts) [95% CI] | on number answers % | on name/list answers % | "
             "answered % | mean tokens | TI |", "|---|---|---|---|---|---|---|---|---|"]
    for m in models:
        for d, per_model in evals.items():
            e, base = per_model[m], per_model["base"]
            gain = "–" if m == "base" else _gain_cell(e, base, gains.get((m, d)))
            if m == "base":
                ti_cell = "–"
            elif d == math_domain:
                ti_cell = "(math)"
            else:
                r = ti[(m, d)]
                ti_cell = f"{r['ti']:+.1f}" if r["ti"] is not None else f"n/a ({r['note']})"
            lines.append(f"| {m} | {d} | {_pct_cell(e)} | {gain} | {_pct(e.get('pass@1_number'))} | "
                         f"{_pct(e.get('pass@1_symbolic'))} | {_pct(e['answered'], 0)} | "
                         f"{e['mean_tokens']:.0f} | {ti_cell} |")
    return "\n".join(lines)


def student_style_table(result: dict) -> str:
    """Student-level ratio and parity per domain (only when both style students were evaluated)."""
    evals = result["students"]
    if not all(VERBOSE in e and CONCISE in e for e in evals.values()):
        return ""
    lines = [f"| domain | {VERBOSE} student tokens | {CONCISE} student tokens | ratio | Δ pass@1 (pts) |",
             "|---|---|---|---|---|"]
    for d, e in evals.items():
        v, c = e[VERBOSE], e[CONCISE]
        ratio = v["mean_tokens"] / c["mean_tokens"] if c["mean_tokens"] else float("nan")
        lines.append(f"| {d} | {v['mean_tokens']:.0f} | {c['mean_tokens']:.0f} | {ratio:.2f}× | "
                     f"{100 * (v['pass@1'] - c['pass@1']):+.1f} |")
    return "\n".join(lines)


def reading(result: dict, math_domain: str) -> str:
    """One line, every word of it decided by the numbers above."""
    teachers = result["teachers"]
    n = len(teachers)
    ratios = ", ".join(f"{t['domain']} {t['ratio']:.1f}×" for t in teachers)
    n_ratio = sum(t["ratio_holds"] for t in teachers)
    n_parity = sum(t["parity_holds"] for t in teachers)
    parts = [f"Teacher token ratio r1/gpt-oss holds in {n_ratio}/{n} domains ({ratios}); "
             f"accuracy parity holds in {n_parity}/{n}."]
    tis = [r for r in result["ti"] if r["ti"] is not None]
    undefined = [r for r in result["ti"] if r["ti"] is None]
    if tis:
        cells = ", ".join(f"{r['student']}→{r['domain']} {r['ti']:+.0f}" for r in tis)
        best = max(abs(r["ti"]) for r in tis)
        verdict = ("math gains did not transfer (|TI| < 10 everywhere)" if best < 10 else
                   "math gains partly transferred" if best < 50 else "math gains largely transferred")
        parts.append(f"Math-only students: TI {cells} → {verdict}.")
    symbolic = [e[r["student"]].get("pass@1_symbolic") for r in result["ti"]
                for e in [result.get("students", {}).get(r["domain"], {})] if r["student"] in e]
    if symbolic and all(v == 0 for v in symbolic):
        parts.append("Every correct answer in the other domains is a number (0% on names and lists): "
                     "the transfer is of the answer format, not of solving.")
    elif symbolic and all(v is not None for v in symbolic):
        parts.append(f"On name/list answers the students reach up to {100 * max(symbolic):.1f}%.")
    if undefined:
        parts.append(f"TI undefined for {len(undefined)} student×domain pairs ({undefined[0]['note']}).")
    return " ".join(parts + gain_readings(result.get("gains", []), math_domain))


def gain_readings(gains: list[dict], math_domain: str) -> list[str]:
    """What the paired ΔR intervals support: how many gains outside math are distinguishable from zero, and
    whose math gain (TI's denominator) is not, so that their TI is no finding."""
    if not gains:
        return []
    g0 = gains[0]
    size = f"{g0['n_problems']} problems × {g0['seeds']} seed{'s' if g0['seeds'] != 1 else ''}"
    other = [g for g in gains if g["domain"] != math_domain]
    out = [f"Paired ΔR vs base ({size}): distinguishable from zero in {sum(g['distinguishable'] for g in other)}"
           f"/{len(other)} student×domain cells outside {math_domain}."]
    flat = [g["a"] for g in gains if g["domain"] == math_domain and not g["distinguishable"]]
    if flat:
        out.append(f"ΔR_{math_domain} of {', '.join(flat)} is not distinguishable from zero at this size ({size}), "
                   f"so {'its' if len(flat) == 1 else 'their'} TI is not a finding.")
    return out


def plot(result: dict, path: Path, math_domain: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    teachers, evals = result["teachers"], result["students"]
    domains = [t["domain"] for t in teachers]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax1.bar(domains, [t["ratio"] for t in teachers], color="#4477aa")
    ax1.axhline(result["config"]["min_ratio"], color="grey", ls="--", lw=1, label=f"{result['config']['min_ratio']:g}×")
    ax1.set_ylabel("teacher tokens r1 / gpt-oss")
    ax1.set_title("Token ratio per domain")
    ax1.legend()
    models = list(next(iter(evals.values())))
    width = 0.8 / len(models)
    ti = {(r["student"], r["domain"]): r["ti"] for r in result["ti"]}
    for i, m in enumerate(models):
        xs = [j + (i - (len(models) - 1) / 2) * width for j in range(len(domains))]
        ys = [100 * evals[d][m]["pass@1"] for d in domains]
        ax2.bar(xs, ys, width, label=m)
        for x, y, d in zip(xs, ys, domains):
            v = ti.get((m, d))
            if v is not None:
                ax2.annotate(f"TI {v:+.0f}", (x, y), ha="center", va="bottom", fontsize=7)
    ax2.set_xticks(range(len(domains)), domains)
    ax2.set_ylabel("pass@1 (%)")
    ax2.set_title(f"Students trained on {math_domain} only")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(result: dict, out: Path, math_domain: str) -> Path:
    """``transfer.png`` and ``transfer_section.json`` (plus ``transfer.md`` for reading) in ``out``."""
    cfg = result["config"]
    png = plot(result, out / "transfer.png", math_domain)
    style = student_style_table(result)
    gain = "relative gain (R − R_base)/R_base" if cfg["relative_gain"] else "absolute gain R − R_base (pass@1)"
    md = "\n\n".join(p for p in [
        f"**Reading:** {reading(result, math_domain)}",
        f"Teachers on the same {cfg['n_teacher_problems']} training-split problems per domain "
        f"(tokens in the student tokenizer; accuracy by math-verify; Δ = r1 − gpt-oss, paired).",
        teacher_table(result["teachers"], cfg["min_ratio"], cfg["parity_points"]),
        f"Students trained on **{math_domain} only** vs their starting model (base), "
        f"{cfg['n_test']} held-out problems per domain × {cfg['eval_samples']} samples × "
        f"{len(cfg.get('seeds', [0]))} seed(s) (pass@1: mean ± seed SD [95% CI over problems and seeds]). "
        f"TI = ΔR_domain / ΔR_{math_domain} × 100 with ΔR the {gain}; "
        f"'answered' = samples with a parseable final answer.",
        student_table(result, math_domain),
        "Student-level token ratio and accuracy gap per domain:" if style else "",
        style,
        f"Run time of this invocation: {result['seconds']:.0f} s (stages already done are reused).",
    ] if p)
    # The report shows section images after the body; the standalone markdown links it itself.
    (out / "transfer.md").write_text(f"## Other domains and transferability\n\n{md}\n\n![transfer](transfer.png)\n",
                                     encoding="utf-8")
    return write_section_file(out / "transfer_section.json", "Other domains and transferability", md, [png])
