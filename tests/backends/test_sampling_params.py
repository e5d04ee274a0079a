"""One sampling check for every backend and stage config: ``SamplingParams.validate``."""

from __future__ import annotations

import pytest

from tracewise.backends.base import Request, SamplingParams
from tracewise.backends.embedded import EmbeddedTeacherBackend
from tracewise.world.teachers import TeacherConfig


@pytest.mark.parametrize("bad, message", [
    (dict(n=0), "eval.sampling.n must be >= 1, got 0"),
    (dict(max_tokens=0), "eval.sampling.max_tokens must be >= 1, got 0"),
    (dict(temperature=-0.1), "eval.sampling.temperature must be >= 0, got -0.1"),
    (dict(top_p=0.0), r"eval.sampling.top_p must be in \(0, 1\], got 0.0"),
    (dict(top_p=1.5), r"eval.sampling.top_p must be in \(0, 1\], got 1.5"),
])
def test_validate_names_the_field(bad, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**bad).validate("eval.sampling")


def test_edges_are_valid():
    SamplingParams(n=1, max_tokens=1, temperature=0.0, top_p=1.0).validate()


def test_embedded_backend_checks_sampling_before_generating():
    backend = EmbeddedTeacherBackend(TeacherConfig())
    with pytest.raises(ValueError, match="sampling.top_p"):
        next(iter(backend.generate([Request(id="x", prompt="a")], SamplingParams(top_p=0))))
