"""The "Cost, measured" report section: latency and throughput ratios next to the token ratio.

Ratios are computed per repeat (student / baseline, both measured in the same interleaved round) and
summarised by their mean and a 95% t-interval across repeats. The reading compares the measured
latency ratio with the token ratio and splits latency into time-to-first-token and decode time per
output token, so "why 4× fewer tokens is not 4× faster" is answered from the numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tracewise.evaluate.latency import t_interval
from tracewise.report import write_section_file


def _fmt_ci(mean: float, ci: list[float] | None, digits: int = 2) -> str:
    return f"{mean:.{digits}f}" + (f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else "")


def ratio_rows(summary: dict) -> list[dict]:
    """One row per (concurrency, student): mean stats and ratios to the baseline with t-intervals."""
    base = summary["config"]["baseline"]
    stats = summary["stats"]
    rows = []
    for conc in [str(c) for c in summary["config"]["concurrency"]]:
        b = stats[base][conc]
        for name, by_conc in stats.items():
            s = by_conc[conc]
            reps = range(min(len(s), len(b)))
            ratio = lambda key: t_interval([s[i][key] / b[i][key] for i in reps])  # noqa: E731
            decode = [(x["mean_latency_s"] - (x["mean_ttft_s"] or 0.0)) / max(x["mean_output_tokens"], 1e-9) for x in s]
            row = {
                "concurrency": int(conc), "student": name, "repeats": len(s),
                "tokens": float(np.mean([x["mean_output_tokens"] for x in s])),
                "p50_latency_s": t_interval([x["p50_latency_s"] for x in s]),
                "p99_latency_s": float(np.mean([x["p99_latency_s"] for x in s])),
                "requests_per_s": t_interval([x["requests_per_s"] for x in s]),
                "output_tokens_per_s": float(np.mean([x["output_tokens_per_s"] for x in s])),
                "ttft_share": float(np.mean([x["ttft_share"] for x in s])) if s[0].get("ttft_share") is not None else None,
                "decode_ms_per_token": 1000 * float(np.mean(decode)),
                "token_ratio": ratio("mean_output_tokens"),
                "latency_ratio": ratio("p50_latency_s"),
                "throughput_ratio": ratio("requests_per_s"),
            }
            for key in ("usd_per_1k_problems_tokens", "usd_per_1k_problems_machine"):
                if key in s[0]:
                    row[key] = float(np.mean([x[key] for x in s]))
            rows.append(row)
    return rows


def reading(row: dict, base: str) -> str:
    """One sentence per non-baseline student: the token ratio, the measured latency ratio, and why they differ."""
    tok, (lat, lat_ci), (thr, thr_ci) = row["token_ratio"][0], row["latency_ratio"], row["throughput_ratio"]
    ci = f" [95% CI {lat_ci[0]:.2f}, {lat_ci[1]:.2f}]" if lat_ci else " (one repeat, no interval)"
    s = (f"At concurrency {row['concurrency']}, {row['student']} writes {tok:.2f}× the tokens of {base} and takes "
         f"{lat:.2f}×{ci} its p50 latency; it serves {thr:.2f}× the requests per second.")
    if lat_ci and lat_ci[0] <= tok <= lat_ci[1]:
        return s + " Latency scales with the token count within the interval."
    gap = "less" if lat > tok else "more"
    why = []
    if row.get("ttft_share") is not None:
        why.append(f"time to first token is {row['ttft_share']:.0%} of its latency")
    why.append(f"decode costs {row['decode_ms_per_token']:.1f} ms per token")
    return s + f" So it saves {gap} time than tokens: {', '.join(why)}."


def write_cost_section(summary: dict, out: Path) -> Path:
    base = summary["config"]["baseline"]
    rows = ratio_rows(summary)
    c = summary["config"]
    lines = [f"{c['n_problems']} requests per load run, {c['repeats']} interleaved repeats, max_tokens "
             f"{c['max_tokens']}, {'streaming' if c['stream'] else 'non-streaming'}, server threads {c['threads']} "
             f"on a {c['cpu_count']}-core machine. Ratios are student / {base} per repeat; [95% t-interval over repeats].",
             "", "| concurrency | student | output tokens | token ratio | p50 latency s | latency ratio | p99 s | "
             "req/s | throughput ratio | out tok/s | TTFT share | decode ms/token |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        share = f"{r['ttft_share']:.0%}" if r["ttft_share"] is not None else "–"
        lines.append(f"| {r['concurrency']} | {r['student']} | {r['tokens']:.0f} | {_fmt_ci(*r['token_ratio'])} | "
                     f"{_fmt_ci(*r['p50_latency_s'])} | {_fmt_ci(*r['latency_ratio'])} | {r['p99_latency_s']:.2f} | "
                     f"{_fmt_ci(*r['requests_per_s'], digits=1)} | {_fmt_ci(*r['throughput_ratio'])} | "
                     f"{r['output_tokens_per_s']:.0f} | {share} | {r['decode_ms_per_token']:.1f} |")
    money_keys = [k for k in ("usd_per_1k_problems_tokens", "usd_per_1k_problems_machine") if k in rows[0]]
    if money_keys:
        lines += ["", "| concurrency | student | " + " | ".join(k.replace("_", " ") for k in money_keys) + " |",
                  "|---|---|" + "---|" * len(money_keys)]
        lines += [f"| {r['concurrency']} | {r['student']} | " + " | ".join(f"${r[k]:.4f}" for k in money_keys) + " |"
                  for r in rows]
    lines += [""] + [f"- {reading(r, base)}" for r in rows if r["student"] != base]
    return write_section_file(out / "cost_section.json", "Cost, measured: latency and throughput", "\n".join(lines))
