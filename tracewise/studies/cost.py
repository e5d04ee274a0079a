"""Study ``cost``: what fewer tokens save in seconds and machines, measured behind a real server.

The paper's claim that ≈4× fewer tokens "directly translates to lower latency and operational costs"
is a prediction; this study measures it. Every student is put behind its own ``tracewise serve``
(students given the same model path share one server) (or an OpenAI-compatible endpoint the user runs, e.g. vLLM, via ``endpoints``) and receives the same
chat requests (same problems, same per-request seeds) at each concurrency, ``repeats`` times. Repeats
are interleaved across students (repeat 1 of every student, then repeat 2, …) so slow drift of the
machine does not land on one student. Per repeat: p50/p99 latency, time to first token, requests/s
and output tokens/s; across repeats: mean and a t-interval for each student's ratio to the baseline
student, next to the token ratio. Prices are inputs (``price_*``, ``gpu_hour``), never defaults.

Latency ≈ TTFT + output tokens × per-token decode time: if both students had the same TTFT and decode
speed, the latency ratio would equal the token ratio. The section reports both terms so the reader can
see which one makes "4× fewer tokens" differ from "4× faster".
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tracewise.core.config import doc
from tracewise.evaluate.latency import load_stats, money, run_load, timings_to_rows
from tracewise.data.sources import ProblemsConfig, load_problems
from tracewise.studies.common import discover_students, parse_models, quickstart_test_problems
from tracewise.studies.cost_report import write_cost_section

log = logging.getLogger(__name__)

@dataclass
class CostStudyConfig:
    """Latency and throughput of each student behind the same server under a fixed load (``tracewise study cost``)."""

    out: str = doc("Directory for timings, summary and cost_section.json.", "runs/study-cost", hash=False)
    run_dir: str = doc("Quickstart run dir whose finished students (sft-*) are served.", "runs/quickstart")
    students: list[str] = doc("Only these students (default: all found).", factory=list)
    models: list[str] = doc("Extra students as NAME=MODEL_PATH (served with `tracewise serve`).", factory=list)
    endpoints: list[str] = doc("Students already served elsewhere, as NAME=BASE_URL|MODEL (e.g. a vLLM server); "
                               "no server is started for them.", factory=list)
    baseline: str = doc("Student the ratios are relative to.", "r1")
    problems: ProblemsConfig = doc("Problems sent as requests (default: the quickstart's test split).",
                                   factory=quickstart_test_problems)
    n_problems: int = doc("Requests per load run (the first N problems).", 48)
    concurrency: list[int] = doc("Concurrent requests in flight, one load run each.", factory=lambda: [1, 16])
    repeats: int = doc("Load runs per (student, concurrency), interleaved across students.", 3)
    max_tokens: int = doc("max_tokens per request.", 400)
    temperature: float = doc("Sampling temperature.", 0.6)
    seed: int = doc("Request i carries seed + i.", 0)
    stream: bool = doc("Stream responses (measures time to first token).", True)
    threads: int = doc("torch threads of each started server.", 2)
    max_batch: int = doc("Started servers' --max-batch.", 64)
    price_in_per_mtok: float = doc("$ per 1M prompt tokens (0 = no token price line).", 0.0)
    price_out_per_mtok: float = doc("$ per 1M output tokens.", 0.0)
    gpu_hour: float = doc("$ per machine-hour, divided by the measured throughput (0 = no line).", 0.0)
    timeout_s: float = doc("Per-request timeout.", 600.0)

    def validate(self) -> None:
        if self.repeats < 1 or self.n_problems < 1 or not self.concurrency or min(self.concurrency) < 1:
            raise ValueError("study.cost: repeats, n_problems and every concurrency must be >= 1")
        if min(self.price_in_per_mtok, self.price_out_per_mtok, self.gpu_hour) < 0:
            raise ValueError("study.cost: prices must be >= 0")
        parse_models(self.models, "study.cost.models")
        for name, spec in parse_models(self.endpoints, "study.cost.endpoints").items():
            if "|" not in spec:
                raise ValueError(f"study.cost.endpoints: {name}: expected BASE_URL|MODEL, got {spec!r}")

    def served(self) -> tuple[dict[str, str], dict[str, tuple[str, str]]]:
        """({name: model path to serve}, {name: (base_url, model) already served})."""
        local = {k: str(v) for k, v in discover_students(self.run_dir).items()
                 if not k.startswith("rl")} if self.run_dir and Path(self.run_dir).is_dir() else {}
        local.update(parse_models(self.models, "study.cost.models"))
        remote = {k: tuple(v.split("|", 1)) for k, v in parse_models(self.endpoints, "study.cost.endpoints").items()}
        names = set(local) | set(remote)
        if self.students:
            missing = sorted(set(self.students) - names)
            if missing:
                raise ValueError(f"study.cost.students: {missing} not found; students: {sorted(names)}")
            local = {k: v for k, v in local.items() if k in self.students}
            remote = {k: v for k, v in remote.items() if k in self.students}
        if self.baseline not in set(local) | set(remote):
            raise ValueError(f"study.cost.baseline: {self.baseline!r} is not among {sorted(set(local) | set(remote))}")
        return local, remote


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(model: str, threads: int, max_batch: int, log_path: Path) -> tuple[subprocess.Popen, str]:
    import httpx

    port = _free_port()
    cmd = [sys.executable, "-m", "tracewise.cli", "serve", "--model", model, "--port", str(port),
           "--threads", str(threads), "--max-batch", str(max_batch), "--log-level", "WARNING"]
    proc = subprocess.Popen(cmd, stdout=log_path.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"tracewise serve for {model} exited ({proc.returncode}); log: {log_path}")
        try:
            if httpx.get(base + "/models", timeout=2).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    _stop(proc)
    raise RuntimeError(f"tracewise serve for {model} did not come up in 180 s; log: {log_path}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def run(cfg: CostStudyConfig) -> Path:
    """Serve every student, run the interleaved load, write summary.json and the section; returns the section path."""
    cfg.validate()
    local, remote = cfg.served()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    problems = load_problems(cfg.problems)[: cfg.n_problems]
    prompts = [p.question for p in problems]
    servers: dict[str, subprocess.Popen] = {}
    endpoints: dict[str, tuple[str, str]] = dict(remote)
    stats: dict[str, dict[int, list[dict]]] = {}
    try:
        started: dict[str, str] = {}  # model path -> base URL: students with the same model share one server
        for name, model in local.items():
            key = str(Path(model).resolve())
            if key not in started:
                servers[name], started[key] = _start_server(model, cfg.threads, cfg.max_batch,
                                                            out / f"serve-{name}.log")
            endpoints[name] = (started[key], Path(model).name)
        stream: dict[str, bool] = {}
        for name, (base, model) in endpoints.items():  # warm-up: first-request costs are not the student's
            warm, _ = run_load(base, model, prompts[:2], 2, cfg.max_tokens, cfg.temperature, cfg.seed, cfg.stream,
                               cfg.timeout_s)
            stream[name] = cfg.stream and any(t.ok for t in warm)
            if cfg.stream and not stream[name]:  # a server that cannot stream: time whole responses (no TTFT)
                log.warning("cost: %s refused streaming (%s); measuring without time to first token", name,
                            warm[0].error[:120])
                run_load(base, model, prompts[:2], 2, cfg.max_tokens, cfg.temperature, cfg.seed, False, cfg.timeout_s)
        for rep in range(cfg.repeats):
            for conc in cfg.concurrency:
                for name, (base, model) in endpoints.items():
                    timings, wall = run_load(base, model, prompts, conc, cfg.max_tokens, cfg.temperature, cfg.seed,
                                             stream[name], cfg.timeout_s)
                    s = load_stats(timings, wall)
                    s.update(money(s, cfg.price_in_per_mtok, cfg.price_out_per_mtok, cfg.gpu_hour))
                    stats.setdefault(name, {}).setdefault(conc, []).append(s)
                    with (out / "timings.jsonl").open("a") as f:
                        for row in timings_to_rows(timings):
                            f.write(json.dumps({"student": name, "concurrency": conc, "repeat": rep, **row}) + "\n")
                    log.info("cost: %s c=%d rep %d: p50 %.2fs, %.1f req/s, %.0f tok/s", name, conc, rep,
                             s["p50_latency_s"], s["requests_per_s"], s["output_tokens_per_s"])
    finally:
        for proc in servers.values():
            _stop(proc)
    summary = {"config": {"n_problems": len(prompts), "repeats": cfg.repeats, "concurrency": cfg.concurrency,
                          "baseline": cfg.baseline, "max_tokens": cfg.max_tokens, "stream": all(stream.values()),
                          "threads": cfg.threads, "cpu_count": os.cpu_count()},
               "stats": {n: {str(c): v for c, v in d.items()} for n, d in stats.items()}}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return write_cost_section(summary, out)
