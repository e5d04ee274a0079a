"""Issue 9: the ``openai`` backend against a server that fails on purpose, through ``tracewise generate``.

A 2,000-sample job meets 500s, 429 + Retry-After, hangs past the timeout, bodies cut mid-way,
malformed JSON, empty choice lists and dropped connections. Every sample must end either stored
(with the text the server gave *that* request) or recorded failed with its reason, none twice, in
bounded time; ``--retry-failed`` then completes the failed ones once the server recovers. The API
key travels to the server but never into a log line, a saved config or a stored failure reason,
even when the server echoes it back.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections import defaultdict
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fault_server import FaultServer, FaultServerProcess, answer_for
from tracewise.core.seeding import sample_seed
from tracewise.cli import app
from tracewise.core.records import Trace, read_records

N_PROBLEMS, N_SAMPLES = 1000, 2  # 2,000 requests
SECRET = "sk-tw-test-7f3a9c1e55d04b2b"
RATES = {"500": 0.06, "429": 0.02, "hang": 0.01, "close_mid_body": 0.04, "malformed": 0.04, "empty": 0.04,
         "reset": 0.02}
MAX_RETRIES, TIMEOUT, RETRY_AFTER, BACKOFF_MAX = 2, 3.0, 1.0, 0.05
# What the client must say for the server's last outcome of a failed sample.
REASON_OF = {"500": "HTTP 500", "429": "HTTP 429", "hang": "timeout", "close_mid_body": "RemoteProtocolError",
             "malformed": "malformed JSON", "empty": "no choices", "reset": "RemoteProtocolError"}

runner = CliRunner()


def _args(url: str, tokenizer: str, out: Path, *extra: str) -> list[str]:
    return ["generate", "backend=openai", "model=fault-model", f"tokenizer={tokenizer}", f"out={out}",
            f"problems.world.n_train={N_PROBLEMS}", "problems.world.n_test=0", f"sampling.n={N_SAMPLES}",
            "sampling.max_tokens=64", f"openai.base_url={url}", "openai.api_key_env=TW_TEST_KEY",
            f"openai.max_retries={MAX_RETRIES}", f"openai.timeout={TIMEOUT}", "openai.backoff_base=0.01",
            f"openai.backoff_max={BACKOFF_MAX}", "openai.concurrency=32", *extra]


def _all_files_text(run_dir: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in run_dir.rglob("*") if p.is_file())


def test_2000_requests_under_faults_then_retry_failed(student_path: str, tmp_path: Path, monkeypatch, caplog) -> None:
    monkeypatch.setenv("TW_TEST_KEY", SECRET)
    caplog.set_level(logging.DEBUG, logger="tracewise")
    with FaultServerProcess(RATES, retry_after=str(int(RETRY_AFTER)), hang_s=TIMEOUT + 2, api_key=SECRET,
                            echo_key=True) as server:
        t0 = time.monotonic()
        res = runner.invoke(app, _args(server.url, student_path, tmp_path))
        elapsed = time.monotonic() - t0
        assert res.exit_code == 0, res.output
        (run_dir,) = tmp_path.glob("generate-*")
        traces = read_records(run_dir / "traces.jsonl", Trace)
        failed = read_records(run_dir / "failed.jsonl", Trace)

        # Every sample exactly once: stored or failed, never both, never twice.
        want = {f"fault-model|arith-train-{i:05d}|{j}" for i in range(N_PROBLEMS) for j in range(N_SAMPLES)}
        ok_keys, bad_keys = [t.key for t in traces], [t.key for t in failed]
        assert len(ok_keys) == len(set(ok_keys)) and len(bad_keys) == len(set(bad_keys))
        assert set(ok_keys).isdisjoint(bad_keys) and set(ok_keys) | set(bad_keys) == want
        assert not list(run_dir.glob("*.partial.jsonl"))
        # Each stored text is the answer to its own request, not a neighbour's.
        for t in traces:
            assert t.text == answer_for(sample_seed(0, t.problem_id, t.sample_idx)), t.key
            assert t.finish_reason == "stop" and t.n_tokens > 0
        # The faults really happened, and some samples ran out of retries.
        outcomes = defaultdict(list)
        events = server.events
        for seed, _key, attempt, outcome, at in sorted(events, key=lambda e: (e[0], e[2])):
            outcomes[seed].append((outcome, at))
        seen = {o for evs in outcomes.values() for o, _ in evs}
        assert set(RATES) <= seen, seen
        assert 5 <= len(failed) <= 150, len(failed)
        for t in failed:
            evs = outcomes[sample_seed(0, t.problem_id, t.sample_idx)]
            assert t.meta["attempts"] == MAX_RETRIES + 1, (t.key, evs, t.meta)
            # On a starved machine a request can time out client-side before the server reads it
            # (then the server saw fewer attempts), or while a healthy answer is on its way.
            assert all(o != "ok" for o, _ in evs) or "timeout" in t.meta["error"], (t.key, evs, t.meta)
            assert "timeout" in t.meta["error"] or REASON_OF[evs[-1][0]] in t.meta["error"], (evs, t.meta["error"])
            assert len(evs) == MAX_RETRIES + 1 or "timeout" in t.meta["error"], (evs, t.meta)
        # Retry-After was honoured; no sample took longer than its retries allow.
        gaps = [b[1] - a[1] for evs in outcomes.values() for a, b in zip(evs, evs[1:]) if a[0] == "429"]
        assert gaps and min(gaps) >= RETRY_AFTER - 0.05, min(gaps)
        per_sample_bound = (MAX_RETRIES + 1) * TIMEOUT + MAX_RETRIES * max(RETRY_AFTER, BACKOFF_MAX) + 5
        assert max(evs[-1][1] - evs[0][1] for evs in outcomes.values()) < per_sample_bound
        assert elapsed < 120, elapsed
        first_lines = set((run_dir / "traces.jsonl").read_text().splitlines())
        assert json.loads((run_dir / "DONE").read_text())["n_failed"] == len(failed)

        # A plain rerun is a no-op (the run is finished, failures and all) ...
        assert runner.invoke(app, _args(server.url, student_path, tmp_path)).exit_code == 0
        assert len(server.events) == len(events)
        # ... and --retry-failed, once the server has recovered, completes exactly the failed ones
        # (with a patient timeout: timeouts are not part of the run's identity, so same run dir).
        server.set_rates({})
        res = runner.invoke(app, [*_args(server.url, student_path, tmp_path, "openai.timeout=30"), "--retry-failed"])
        assert res.exit_code == 0, res.output
        retried = {e[0] for e in server.events[len(events):]}
        assert retried == {sample_seed(0, t.problem_id, t.sample_idx) for t in failed}
        assert not (run_dir / "failed.jsonl").exists()
        traces = read_records(run_dir / "traces.jsonl", Trace)
        assert sorted(t.key for t in traces) == sorted(want)
        assert first_lines <= set((run_dir / "traces.jsonl").read_text().splitlines())  # old lines untouched
        assert json.loads((run_dir / "DONE").read_text())["n_failed"] == 0

    # The key reached the server (it answered) but nothing we wrote or logged holds it.
    for where, text in [("logs", caplog.text), ("cli output", res.output), ("run dir", _all_files_text(run_dir))]:
        assert SECRET not in text, where
    assert "api_key_env: TW_TEST_KEY" in (run_dir / "config.yaml").read_text()


def test_unreachable_endpoint_is_one_clear_error_and_no_run_dir(student_path: str, tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = runner.invoke(app, ["generate", "backend=openai", "model=m", f"tokenizer={student_path}", f"out={tmp_path}",
                              "problems.world.n_train=3", f"openai.base_url=http://127.0.0.1:{port}/v1"])
    assert res.exit_code == 2
    assert "cannot reach the OpenAI-compatible endpoint" in " ".join(res.output.split())
    assert not list(tmp_path.glob("generate-*"))


def test_rejected_key_is_a_clear_error(student_path: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TW_TEST_KEY", "sk-wrong-key-000000")
    with FaultServer({}, api_key=SECRET) as server:
        res = runner.invoke(app, _args(server.url, student_path, tmp_path))
    assert res.exit_code == 2
    out = " ".join(res.output.split())
    assert "rejected the API key (HTTP 401)" in out and "$TW_TEST_KEY" in out
    assert "sk-wrong-key-000000" not in out


@pytest.mark.parametrize("value", ["sk-abc123def456", "my key"])
def test_a_key_pasted_where_its_variable_name_belongs_is_refused(student_path: str, tmp_path: Path, value: str) -> None:
    res = runner.invoke(app, ["generate", "backend=openai", "model=m", f"tokenizer={student_path}", f"out={tmp_path}",
                              f"openai.api_key_env={value}"])
    assert res.exit_code == 2
    assert "NAME of an environment variable" in " ".join(res.output.split())
    assert value not in res.output
