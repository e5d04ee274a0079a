"""The ``openai`` backend's split: the HTTP half (``openai_transport``: retries, Retry-After, backoff) on its
own, and the public names still importable from ``tracewise.backends.openai_http``."""

from __future__ import annotations

import email.utils
import random
import time
from pathlib import Path

import httpx
import pytest

import tracewise.backends.openai_http as openai_http
from tracewise.backends.openai_http import DEFAULT_BASE_URL, FAILED, OpenAIBackend, OpenAIConfig, is_loopback
from tracewise.backends.openai_transport import Transport

BACKENDS = Path(openai_http.__file__).parent


def test_public_names_stay_in_openai_http() -> None:
    # What tracewise.generate.stage, the backend registry, the tests and the benchmarks import from it.
    assert FAILED == "error"
    assert DEFAULT_BASE_URL == "http://127.0.0.1:8000/v1"
    assert is_loopback("127.0.0.2") and not is_loopback("10.0.0.1")
    assert OpenAIBackend.__module__ == OpenAIConfig.__module__ == "tracewise.backends.openai_http"


@pytest.mark.parametrize("name", ["openai_http.py", "openai_transport.py"])
def test_each_half_fits_the_file_limit(name: str) -> None:
    assert len((BACKENDS / name).read_text(encoding="utf-8").splitlines()) <= 400


def _transport(**cfg) -> Transport:
    return Transport(OpenAIConfig(**cfg), "http://127.0.0.1:1/v1", {}, "openai:test", {"retries": 0, "failed": 0})


def _resp(retry_after: str) -> httpx.Response:
    return httpx.Response(429, headers={"Retry-After": retry_after})


def test_retry_after_takes_seconds_or_an_http_date_and_is_capped() -> None:
    t = _transport(max_retry_after=30.0)
    assert t._retry_after(_resp("5")) == 5.0
    assert t._retry_after(_resp("2.5")) == 2.5
    assert t._retry_after(_resp("999")) == 30.0  # capped at max_retry_after
    assert t._retry_after(_resp("-3")) == 0.0
    assert t._retry_after(_resp("soon")) is None  # neither a number nor a date: the usual backoff
    assert t._retry_after(httpx.Response(429)) is None
    # An HTTP date 20 s ahead (whole seconds on the wire, so 19..20 s are left).
    when = email.utils.formatdate(time.time() + 20, usegmt=True)
    assert 18.0 <= t._retry_after(_resp(when)) <= 20.0


def test_backoff_doubles_with_equal_jitter_up_to_the_cap() -> None:
    t = _transport(backoff_base=1.0, backoff_max=8.0)
    random.seed(0)
    for attempt, full in [(0, 1.0), (1, 2.0), (2, 4.0), (3, 8.0), (9, 8.0)]:
        delays = [t._delay(attempt) for _ in range(200)]
        assert min(delays) >= full / 2 and max(delays) <= full  # half fixed, half random
        assert max(delays) - min(delays) > full / 4  # really jittered
