"""Generation backends by name, imported only when asked for.

Backends pull in heavy, sometimes optional, dependencies (torch + transformers, vllm, an HTTP
client), so the registry maps names to ``"module:Class"`` strings and imports on demand: a config
that names "hf" never needs vllm installed.
"""

from __future__ import annotations

import importlib
from typing import Any

from tracewise.backends.base import Backend, Completion, Request, SamplingParams
from tracewise.core.seeding import sample_seed

# name -> "module:Class". The integrator adds "embedded", "vllm" and "openai" here as they land.
BACKENDS: dict[str, str] = {
    "embedded": "tracewise.backends.embedded:EmbeddedTeacherBackend",
    "hf": "tracewise.backends.hf:HFBackend",
    "openai": "tracewise.backends.openai_http:OpenAIBackend",
    "vllm": "tracewise.backends.vllm:VLLMBackend",
}


def get_backend(name: str, **kwargs: Any) -> Backend:
    """Import and construct the backend registered as ``name`` with ``kwargs``."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; valid names: {', '.join(sorted(BACKENDS))}")
    module_name, class_name = BACKENDS[name].split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(**kwargs)


__all__ = ["BACKENDS", "Backend", "Completion", "Request", "SamplingParams", "get_backend", "sample_seed"]
