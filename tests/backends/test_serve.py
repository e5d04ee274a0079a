"""``tracewise serve``: the OpenAI-compatible app on the tiny student, in process; CLI safety defaults."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from tracewise.backends.base import Request, SamplingParams
from tracewise.backends.hf import HFBackend
from tracewise.cli import app as cli_app
from tracewise.backends.serve import build_app, resolve_model_path

NAME = "tiny"
KEY = "serve-test-key-0123456789"


@pytest.fixture(scope="module")
def client(backend: HFBackend):
    with TestClient(build_app(backend, NAME), base_url="http://127.0.0.1") as c:
        yield c


def _complete(client, **body) -> dict:
    resp = client.post("/v1/completions", json={"model": NAME, "prompt": "Eva has 2 apples.", "max_tokens": 8, **body})
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_models_lists_the_served_name(client) -> None:
    data = client.get("/v1/models").json()
    assert [m["id"] for m in data["data"]] == [NAME] and data["object"] == "list"


def test_completions_shape_usage_and_seeding(client, backend: HFBackend) -> None:
    out = _complete(client, n=3, seed=11, temperature=1.0)
    assert out["object"] == "text_completion" and len(out["choices"]) == 3
    assert all(c["finish_reason"] in ("stop", "length") for c in out["choices"])
    # The same seed gives the same samples; the three samples of one request differ from each other.
    again = _complete(client, n=3, seed=11, temperature=1.0)
    texts = [c["text"] for c in out["choices"]]
    assert texts == [c["text"] for c in again["choices"]] and len(set(texts)) == 3
    # What the server returns is exactly HFBackend's sample for (seed -> request id, idx).
    direct = [c for b in backend.generate([Request(id="11", prompt="Eva has 2 apples.", sample_idxs=[0, 1, 2])],
                                          SamplingParams(n=3, temperature=1.0, max_tokens=8, seed=0)) for c in b]
    direct.sort(key=lambda c: c.sample_idx)
    assert texts == [c.text for c in direct]
    assert out["usage"]["completion_tokens"] == sum(c.n_tokens for c in direct) <= 3 * 8
    assert out["usage"]["prompt_tokens"] == direct[0].meta["prompt_tokens"]


def test_chat_completions_apply_the_template(client, backend: HFBackend) -> None:
    messages = [{"role": "user", "content": "What is 2+3?"}]
    resp = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 6, "seed": 3, "temperature": 0})
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["object"] == "chat.completion" and out["choices"][0]["message"]["role"] == "assistant"
    (direct,) = next(backend.generate([Request(id="3", messages=messages)],
                                      SamplingParams(n=1, temperature=0, max_tokens=6, seed=0)))
    assert out["choices"][0]["message"]["content"] == direct.text


def test_concurrent_requests_are_batched_without_changing_any_sample(backend: HFBackend) -> None:
    """Requests decoded together must give what each gives alone (samples depend on seed only)."""
    app = build_app(backend, NAME, batch_wait_ms=200)
    bodies = [{"prompt": f"Problem {i}: add {i} and {i * 7}.", "max_tokens": 6, "seed": 100 + i} for i in range(6)]

    async def run(together: bool) -> list[str]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as c:
            if together:
                resps = await asyncio.gather(*(c.post("/v1/completions", json=b) for b in bodies))
            else:
                resps = [await c.post("/v1/completions", json=b) for b in bodies]
        return [r.json()["choices"][0]["text"] for r in resps]

    batches: list[int] = []
    real = backend.start_batch

    def spy(rows):
        batches.append(len(rows))
        return real(rows)

    backend.start_batch = spy
    try:
        together, alone = asyncio.run(run(True)), asyncio.run(run(False))
    finally:
        del backend.start_batch
        app.state.engine.close()
    assert max(batches) > 1, batches  # they really shared a batch
    assert together == alone


def test_stop_strings_cut_the_text(client) -> None:
    full = _complete(client, seed=5, max_tokens=16, temperature=1.0)["choices"][0]["text"]
    stop = full[4:6]
    cut = _complete(client, seed=5, max_tokens=16, temperature=1.0, stop=[stop])["choices"][0]
    assert cut["text"] == full[: full.find(stop)] and cut["finish_reason"] == "stop"


@pytest.mark.parametrize("path, body, status, needle", [
    ("/v1/completions", {"model": "other", "prompt": "x"}, 404, "does not exist"),
    ("/v1/completions", {"prompt": "x", "stream": "yes"}, 400, "'stream'"),
    ("/v1/completions", {"prompt": [1, 2, 3]}, 400, "'prompt'"),
    ("/v1/completions", {"prompt": "x", "n": 0}, 400, "'n' must be an integer in [1, 16]"),
    ("/v1/completions", {"prompt": "x", "max_tokens": "many"}, 400, "'max_tokens' must be an integer"),
    ("/v1/chat/completions", {"messages": "hi"}, 400, "'messages'"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "stop": [""]}, 400, "'stop'"),
])
def test_bad_requests_get_openai_style_errors(client, path: str, body: dict, status: int, needle: str) -> None:
    resp = client.post(path, json=body)
    assert resp.status_code == status and needle in resp.json()["error"]["message"], resp.text


def test_invalid_json_is_a_400(client) -> None:
    resp = client.post("/v1/completions", content=b"{nope", headers={"content-type": "application/json"})
    assert resp.status_code == 400 and "not valid JSON" in resp.text


def test_api_key_is_required_when_configured(backend: HFBackend) -> None:
    with TestClient(build_app(backend, NAME, api_key=KEY), base_url="http://127.0.0.1") as c:
        assert c.get("/v1/models").status_code == 401
        assert c.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


# ---- the CLI: safe defaults ---------------------------------------------------------------------

@pytest.fixture()
def captured(monkeypatch) -> dict:
    """Stand-ins for uvicorn.run and the model load: record what serve() would have started."""
    import uvicorn

    import tracewise.backends.hf as hf

    seen: dict = {}

    class FakeBackend:
        tokenizer = None

        def __init__(self, path, **kwargs):
            seen["path"], seen["backend_kwargs"] = path, kwargs

    def run(server, *args, **kwargs):
        cfg = server.config
        seen.update(host=cfg.host, port=cfg.port, app=cfg.app, graceful=cfg.timeout_graceful_shutdown)

    monkeypatch.setattr(hf, "HFBackend", FakeBackend)
    monkeypatch.setattr(uvicorn.Server, "run", run)
    return seen


def test_serve_binds_localhost_and_keeps_remote_code_off_by_default(captured: dict, tmp_path: Path) -> None:
    res = CliRunner().invoke(cli_app, ["serve", "--model", str(tmp_path), "--port", "8123"])
    assert res.exit_code == 0, res.output
    assert captured["host"] == "127.0.0.1" and captured["port"] == 8123
    assert captured["backend_kwargs"]["trust_remote_code"] is False


def test_serve_exposes_itself_and_runs_remote_code_only_when_asked(captured: dict, tmp_path: Path,
                                                                   monkeypatch) -> None:
    monkeypatch.setenv("TW_LONG_KEY", KEY)
    res = CliRunner().invoke(cli_app, ["serve", "--model", str(tmp_path), "--port", "8123", "--host", "0.0.0.0",
                                       "--trust-remote-code", "--api-key-env", "TW_LONG_KEY"])
    assert res.exit_code == 0, res.output
    assert captured["host"] == "0.0.0.0" and captured["backend_kwargs"]["trust_remote_code"] is True


def test_serve_api_key_env_must_be_set(captured: dict, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("TW_UNSET_KEY", raising=False)
    res = CliRunner().invoke(cli_app, ["serve", "--model", str(tmp_path), "--api-key-env", "TW_UNSET_KEY"])
    assert res.exit_code == 2 and "TW_UNSET_KEY" in res.output and "not set" in res.output


def test_serve_refuses_a_model_that_is_not_a_causal_lm(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit"}))
    res = CliRunner().invoke(cli_app, ["serve", "--model", str(tmp_path), "--port", "8124"])
    assert res.exit_code == 2 and "not a causal language model" in " ".join(res.output.split())


def test_init_student_run_dirs_resolve_to_their_model(student_run_dir: Path, student_path: str) -> None:
    assert resolve_model_path(str(student_run_dir)) == student_path
    assert resolve_model_path(student_path) == student_path


def test_serve_refuses_a_public_bind_without_a_long_key(captured: dict, tmp_path: Path, monkeypatch) -> None:
    base = ["serve", "--model", str(tmp_path), "--host", "0.0.0.0"]
    res = CliRunner().invoke(cli_app, base)
    assert res.exit_code == 2 and "--insecure" in res.output and "host" not in captured
    monkeypatch.setenv("TW_SHORT_KEY", "short-key")
    res = CliRunner().invoke(cli_app, [*base, "--api-key-env", "TW_SHORT_KEY"])
    assert res.exit_code == 2 and "at least 16" in " ".join(res.output.split()) and "host" not in captured
    res = CliRunner().invoke(cli_app, [*base, "--insecure"])  # said out loud: served to anyone
    assert res.exit_code == 0 and captured["host"] == "0.0.0.0"
    assert getattr(captured["app"], "allowed_hosts", None) is None  # public bind: no Host allow-list (the key guards)


def test_serve_checks_host_on_loopback_and_bounds_shutdown(captured: dict, tmp_path: Path) -> None:
    res = CliRunner().invoke(cli_app, ["serve", "--model", str(tmp_path), "--max-tokens-cap", "100"])
    assert res.exit_code == 0, res.output
    assert "127.0.0.1" in captured["app"].allowed_hosts and "localhost" in captured["app"].allowed_hosts
    assert captured["app"].state.limits.max_tokens_cap == 100 and 0 < captured["graceful"] <= 10
