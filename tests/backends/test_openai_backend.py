"""The ``openai`` backend against a real ``tracewise serve`` process on a free 127.0.0.1 port."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from tracewise.backends import get_backend
from tracewise.backends.base import Request, SamplingParams
from tracewise.backends.hf import HFBackend
from tracewise.backends.openai_http import FAILED, OpenAIBackend, OpenAIConfig
from tracewise.cli import app
from tracewise.evaluate.controls import supports_prefix
from tracewise.core.records import Trace, read_records

NAME = "tiny-student"
KEY_ENV, KEY = "TW_SERVE_TEST_KEY", "sk-serve-test-5a1b2c3d4e5f"
QUESTIONS = ["What is 2+3?", "Add 17 and 25.", "Hi", "Compute 9*9-1 carefully."]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(student_run_dir: Path):
    """``tracewise serve`` in its own process (an init-student run dir works as --model), key required."""
    port = _free_port()
    env = {**os.environ, KEY_ENV: KEY, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tracewise.cli", "serve", "--model", str(student_run_dir), "--port", str(port),
         "--served-model-name", NAME, "--api-key-env", KEY_ENV, "--threads", "1", "--log-level", "WARNING"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            pytest.fail(f"tracewise serve exited with {proc.returncode}:\n{proc.stdout.read()}")
        try:
            if httpx.get(f"{url}/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("tracewise serve did not come up in 120 s")
        time.sleep(0.3)
    yield url
    proc.terminate()
    proc.wait(30)


@pytest.fixture()
def keyed(monkeypatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)


def _backend(url: str, student_path: str, **kw) -> OpenAIBackend:
    return OpenAIBackend(NAME, base_url=url, api_key_env=KEY_ENV, tokenizer=student_path, **kw)


def _run(backend, requests, sampling) -> dict[tuple[str, int], object]:
    return {(c.request_id, c.sample_idx): c for batch in backend.generate(requests, sampling) for c in batch}


def _chat(i: int, q: str) -> Request:
    return Request(id=f"q{i}", messages=[{"role": "user", "content": q}])


def test_chat_endpoint_samples_counts_and_seeding(server, keyed, student_path: str) -> None:
    requests = [_chat(i, q) for i, q in enumerate(QUESTIONS)]
    sampling = SamplingParams(n=2, temperature=1.0, max_tokens=8, seed=7)
    wide = _run(_backend(server, student_path, concurrency=8), requests, sampling)
    assert sorted(wide) == sorted((f"q{i}", j) for i in range(4) for j in range(2))
    for c in wide.values():
        assert c.finish_reason in ("stop", "length") and 1 <= c.n_tokens <= 8
        assert c.meta["n_tokens_from"] == "usage" and c.meta["prompt_tokens"] > 0
        assert c.finish_reason == "stop" or c.n_tokens == 8
        # timed per request; the response is read whole, so no time to first token
        assert c.timing["clock"] == "request" and c.timing["latency_s"] > 0 and c.timing["ttft_s"] is None
    # Each sample's seed comes from its own identity, not its position: one at a time (so the server
    # decodes each alone and float noise from batch shapes cannot enter), any order, same samples.
    one = _backend(server, student_path, concurrency=1)
    t0 = time.perf_counter()
    forward = _run(one, requests, sampling)
    wall = time.perf_counter() - t0
    backward = _run(one, requests[::-1], sampling)
    # one request in flight at a time: the requests' own times add up to no more than the whole run
    assert sum(c.timing["latency_s"] for c in forward.values()) <= wall
    assert {k: c.text for k, c in forward.items()} == {k: c.text for k, c in backward.items()}
    # Batched on the server or not, the samples agree (up to rare float-noise flips between batch shapes).
    assert sum(forward[k].text == c.text for k, c in wide.items()) >= 7
    # A different stage seed gives different samples.
    other = _run(_backend(server, student_path), requests, SamplingParams(n=2, temperature=1.0, max_tokens=8, seed=8))
    assert {k: c.text for k, c in other.items()} != {k: c.text for k, c in wide.items()}


def test_completions_endpoint_templates_client_side_and_continues_prefixes(server, keyed, student_path: str) -> None:
    chat = _backend(server, student_path)
    comp = _backend(server, student_path, endpoint="completions")
    assert not supports_prefix(chat) and supports_prefix(comp)
    sampling = SamplingParams(n=1, temperature=0.0, max_tokens=10, seed=1)
    req = _chat(0, QUESTIONS[0])
    # The chat template applied here, sent as text, decodes exactly what the server's template gives.
    assert _run(comp, [req], sampling)[("q0", 0)].text == _run(chat, [req], sampling)[("q0", 0)].text
    # A prefix is continued: the server decodes (template + prefix) exactly as the local hf backend does.
    prefixed = Request(id="q0", messages=req.messages, prefix="<think>Let me see")
    greedy = SamplingParams(n=1, temperature=0.0, max_tokens=12, seed=1)
    cont = _run(comp, [prefixed], greedy)[("q0", 0)]
    (local,) = next(HFBackend(student_path, device="cpu").generate([prefixed], greedy))
    assert cont.text == local.text and cont.n_tokens == local.n_tokens
    assert cont.meta["prompt_tokens"] == local.meta["prompt_tokens"]
    with pytest.raises(ValueError, match="cannot continue a prefix"):
        _run(chat, [Request(id="x", messages=req.messages, prefix="<think>")], sampling)


def test_non_retryable_errors_fail_fast_with_the_reason(server, keyed, student_path: str) -> None:
    wrong = OpenAIBackend("no-such-model", base_url=server, api_key_env=KEY_ENV, tokenizer=student_path,
                          report_failures=True, backoff_base=5.0)
    t0 = time.monotonic()
    out = _run(wrong, [_chat(0, "x")], SamplingParams(n=2, max_tokens=4))
    assert time.monotonic() - t0 < 5  # a 404 is not retried (backoff_base=5 would show)
    assert all(c.finish_reason == FAILED and "HTTP 404" in c.meta["error"] and c.meta["attempts"] == 1
               for c in out.values()) and len(out) == 2
    # A caller that did not ask for failures simply does not get those samples (its resume asks again).
    quiet = OpenAIBackend("no-such-model", base_url=server, api_key_env=KEY_ENV, tokenizer=student_path)
    assert _run(quiet, [_chat(0, "x")], SamplingParams(n=2, max_tokens=4)) == {}


def test_registry_and_config_validation(server, keyed, student_path: str) -> None:
    backend = get_backend("openai", model=NAME, base_url=server, api_key_env=KEY_ENV, tokenizer=student_path,
                          batch_size=64)
    assert isinstance(backend, OpenAIBackend) and backend.name == f"openai:{NAME}"
    for bad, needle in [({"endpoint": "responses"}, "openai.endpoint"), ({"concurrency": 0}, "openai.concurrency"),
                        ({"timeout": 0}, "openai.timeout"), ({"base_url": "localhost:8000"}, "http://")]:
        with pytest.raises(ValueError, match=needle):
            OpenAIConfig(**bad).validate()


def test_generate_end_to_end_through_the_cli(server, keyed, student_path: str, tmp_path: Path) -> None:
    args = ["generate", "backend=openai", f"model={NAME}", f"tokenizer={student_path}", f"out={tmp_path}",
            "problems.world.n_train=6", "problems.world.n_test=0", "sampling.n=2", "sampling.max_tokens=16",
            f"openai.base_url={server}", f"openai.api_key_env={KEY_ENV}", "openai.concurrency=4"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    (run_dir,) = tmp_path.glob("generate-*")
    traces = read_records(run_dir / "traces.jsonl", Trace)
    assert len(traces) == 12 and {t.teacher for t in traces} == {NAME}
    assert all(t.n_tokens > 0 and t.finish_reason in ("stop", "length") for t in traces)
    assert not (run_dir / "failed.jsonl").exists()
    assert json.loads((run_dir / "DONE").read_text())["n_failed"] == 0
    config = (run_dir / "config.yaml").read_text()
    assert f"api_key_env: {KEY_ENV}" in config and KEY not in config
    before = (run_dir / "traces.jsonl").read_bytes()
    assert CliRunner().invoke(app, args).exit_code == 0  # a finished run is a no-op
    assert (run_dir / "traces.jsonl").read_bytes() == before


def test_eval_runs_test_time_controls_through_the_openai_backend(server, keyed, student_path: str,
                                                                   tmp_path: Path) -> None:
    """README: every control works on ``openai`` with ``openai.endpoint=completions`` — eval had no openai section,
    so its endpoint, base_url and key could not be set and no control could run there."""
    from tracewise.core.records import Sample

    args = ["eval", "backend=openai", f"model={NAME}", f"out={tmp_path}", "problems.world.n_test=3",
            "sampling.n=2", "sampling.max_tokens=24", f"openai.base_url={server}", f"openai.api_key_env={KEY_ENV}",
            f"openai.tokenizer={student_path}", "control.name=budget_force", "control.budget=8",
            "control.answer_tokens=8", "verify_workers=0"]
    chat = CliRunner().invoke(app, args)
    assert chat.exit_code == 2 and "prefix" in chat.output, chat.output  # chat cannot continue: refused up front
    assert not list(tmp_path.glob("eval-*/samples.jsonl"))
    res = CliRunner().invoke(app, [*args, "openai.endpoint=completions"])
    assert res.exit_code == 0, res.output
    (run_dir,) = tmp_path.glob("eval-*")
    samples = read_records(run_dir / "samples.jsonl", Sample)
    assert len(samples) == 6 and all(s.n_thinking_tokens <= 8 for s in samples)
    assert "endpoint: completions" in (run_dir / "config.yaml").read_text()


# ---- key handling and hostile responses (no tracewise server needed) -------------------------------

def test_a_key_is_never_sent_in_cleartext_to_another_machine(monkeypatch) -> None:
    monkeypatch.setenv("TW_REMOTE_KEY", "sk-remote-0123456789abcdef")
    with pytest.raises(ValueError, match="cleartext"):
        OpenAIBackend("m", base_url="http://10.1.2.3:8000/v1", api_key_env="TW_REMOTE_KEY", check_endpoint=False)
    for ok in ("https://10.1.2.3/v1", "http://127.0.0.1:8000/v1", "http://localhost:8000/v1", "http://[::1]:8/v1"):
        b = OpenAIBackend("m", base_url=ok, api_key_env="TW_REMOTE_KEY", check_endpoint=False)
        assert b._headers() == {"Authorization": "Bearer sk-remote-0123456789abcdef"}


def test_openai_api_key_goes_to_openai_only_unless_named(monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-real-openai-key-0123456789")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    for url in ("", "http://127.0.0.1:8000/v1", "https://some-other-provider.example/v1"):
        assert OpenAIBackend("m", base_url=url, check_endpoint=False)._headers() == {}
    assert OpenAIBackend("m", base_url="https://api.openai.com/v1", check_endpoint=False)._headers() == {
        "Authorization": "Bearer sk-real-openai-key-0123456789"}
    named = OpenAIBackend("m", base_url="https://x.example/v1", api_key_env="OPENAI_API_KEY", check_endpoint=False)
    assert named._headers() == {"Authorization": "Bearer sk-real-openai-key-0123456789"}


_GOOD = json.dumps({"choices": [{"message": {"content": "fine"}, "finish_reason": "stop"}],
                    "usage": {"completion_tokens": 1, "prompt_tokens": 2}}).encode()


@pytest.fixture()
def scripted():
    """A 127.0.0.1 server answering each POST with the next scripted (status, headers, body)."""
    import http.server
    import threading

    script: list[tuple[int, dict, bytes]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers.get("content-length", 0)))
            status, headers, body = script.pop(0) if script else (200, {}, _GOOD)
            self.send_response(status)
            for k, v in {"Content-Type": "application/json", "Content-Length": str(len(body)), **headers}.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", script
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("bad", [
    (200, {"Content-Encoding": "gzip"}, b"this is not gzip"),  # httpx.DecodingError
    (200, {}, b"[" * 200_000 + b"]" * 200_000),  # RecursionError in the JSON parser
    (200, {}, b" " * (2 * 2**20) + _GOOD),  # over max_response_bytes
    (429, {"Retry-After": "nan"}, b"{}"),
    (503, {"Retry-After": "-5"}, b"{}"),
    (429, {"Retry-After": "inf"}, b"{}"),
], ids=["bad-gzip", "deep-json", "huge-body", "retry-after-nan", "retry-after-negative", "retry-after-inf"])
def test_hostile_responses_are_retried_not_fatal(scripted, bad) -> None:
    url, script = scripted
    script.append(bad)
    backend = OpenAIBackend("m", base_url=url, check_endpoint=False, report_failures=True, max_retries=2,
                            backoff_base=0.05, max_response_bytes=2**20)
    t0 = time.monotonic()
    (c,) = _run(backend, [_chat(0, "x")], SamplingParams(n=1, max_tokens=4)).values()
    assert (c.text, c.finish_reason, c.meta["attempts"]) == ("fine", "stop", 2)
    assert time.monotonic() - t0 < 10


def test_redact_is_linear_on_hostile_text() -> None:
    from tracewise.core.redact import redact

    for text in ("a." * 50_000, "a://" * 25_000, "http://" + "a" * 100_000 + ":", "?" + "key" * 30_000,
                 "x" + "&token=v" * 20_000):
        t0 = time.monotonic()
        redact(text)
        assert time.monotonic() - t0 < 0.5, text[:20]


def test_redact_masks_token_keys_query_credentials_and_short_keys() -> None:
    from tracewise.core.redact import check_env_name, redact, redact_obj, register_secret

    cfg = {"token": "abc123secret", "bearer": "xyz789secret", "hf_token": "hf_abcdef", "max_tokens": 16,
           "tokenizer": "Qwen/Qwen3-0.6B", "api_key_env": "OPENAI_API_KEY",
           "base_url": "https://h.example/v1?api_key=sk-zz99&model=m&access_token=t0k3n&sig=abc"}
    out = redact_obj(cfg)
    assert out["token"] == out["bearer"] == out["hf_token"] == "***"
    assert (out["max_tokens"], out["tokenizer"], out["api_key_env"]) == (16, "Qwen/Qwen3-0.6B", "OPENAI_API_KEY")
    assert out["base_url"] == "https://h.example/v1?api_key=***&model=m&access_token=***&sig=***"
    assert redact("GET https://u:pw@h.example/x") == "GET https://***@h.example/x"
    # 4-5 characters: masked as a whole word only; under 4: cannot be masked, and the caller is told.
    assert register_secret("Zq7w") is True and register_secret("ab1") is False
    assert redact("key Zq7w used; Zq7wide is another word") == "key *** used; Zq7wide is another word"
    with pytest.raises(ValueError, match="NAME of an environment variable"):
        check_env_name("OPENAI_API_KEY\n", "openai.api_key_env")
