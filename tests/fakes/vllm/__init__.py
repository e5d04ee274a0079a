"""A CPU stand-in for the ``vllm`` package: the parts of its offline API that
``tracewise.backends.vllm`` uses (``LLM``, ``LLM.generate``, ``LLM.llm_engine.add_request/step``,
``SamplingParams``, ``model_config.max_model_len``), with vLLM's behaviours that matter there:

* ``LLM()`` starts a child process, as vLLM's engine does (its EngineCore process), so an ``LLM``
  built inside a daemonic process fails exactly as the real one does;
* a prompt of ``max_model_len`` tokens or more is refused with vLLM's ValueError; ``LLM.generate``
  refuses the WHOLE call when any prompt is too long (vLLM validates every request first);
* ``step()`` advances every request in flight by one token; a sample's length is
  ``min(max_tokens, len(prompt ids))`` (so a test controls lengths with prompt lengths), and its
  tokens and text depend only on its seed.

Environment knobs (read in ``LLM()``, inherited by spawned replicas):
``FAKE_VLLM_MAX_MODEL_LEN`` (default 64), ``FAKE_VLLM_DIE_ON_GPUS`` (a ``CUDA_VISIBLE_DEVICES``
value: that replica SIGKILLs itself on its first step, as the OOM killer would).
Tests put ``tests/fakes`` first on ``sys.path`` (spawned children inherit it) to use this package.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
from dataclasses import dataclass, field

STARTED_CHILDREN: list[int] = []


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int | None = 16
    skip_special_tokens: bool = True
    seed: int | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None


@dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool


@dataclass
class ModelConfig:
    max_model_len: int


@dataclass
class _Running:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    length: int
    done: int = 0


def _sample_tokens(seed: int, n: int) -> list[int]:
    return [5 + (seed * 31 + 7 * i) % 50 for i in range(n)]


def _engine_core() -> None:  # what vLLM's EngineCore process would run
    return None


@dataclass
class LLMEngine:
    model_config: ModelConfig
    running: dict = field(default_factory=dict)
    steps: int = 0

    def add_request(self, request_id, prompt, params, *args, **kwargs) -> None:
        ids = list(prompt["prompt_token_ids"])
        limit = self.model_config.max_model_len
        if len(ids) >= limit:
            raise ValueError(f"The decoder prompt (length {len(ids)}) is longer than the maximum model length "
                             f"of {limit}. Make sure that `max_model_len` is no smaller than the number of text tokens.")
        want = params.max_tokens if params.max_tokens is not None else limit - len(ids)
        length = max(1, min(want, len(ids), limit - len(ids)))
        self.running[request_id] = _Running(request_id, ids, params, length)

    def has_unfinished_requests(self) -> bool:
        return bool(self.running)

    def step(self) -> list[RequestOutput]:
        self.steps += 1
        die = os.environ.get("FAKE_VLLM_DIE_ON_GPUS")
        if die is not None and die == os.environ.get("CUDA_VISIBLE_DEVICES"):
            os.kill(os.getpid(), signal.SIGKILL)
        out = []
        for rid, r in list(self.running.items()):
            r.done += 1
            if r.done >= r.length:
                del self.running[rid]
                out.append(_output(r))
        return out


def _output(r: _Running) -> RequestOutput:
    ids = _sample_tokens(r.params.seed or 0, r.length)
    text = "".join(f"<{t}>" for t in ids)
    finish = "length" if r.length == r.params.max_tokens else "stop"
    return RequestOutput(r.request_id, r.prompt_ids, [CompletionOutput(0, text, ids, finish)], True)


class LLM:
    def __init__(self, model: str, max_model_len: int | None = None, **kwargs) -> None:
        # vLLM's engine lives in a child process: a daemonic parent cannot start one.
        child = mp.get_context("fork").Process(target=_engine_core)
        child.start()
        child.join()
        STARTED_CHILDREN.append(child.pid)
        limit = max_model_len or int(os.environ.get("FAKE_VLLM_MAX_MODEL_LEN", "64"))
        self.llm_engine = LLMEngine(ModelConfig(limit))
        self.kwargs = dict(model=model, max_model_len=max_model_len, **kwargs)

    def generate(self, prompts, sampling_params, use_tqdm=True):
        params = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(prompts)
        names = [f"g{i}" for i in range(len(prompts))]
        limit = self.llm_engine.model_config.max_model_len
        for prompt in prompts:  # vLLM validates every request first: one bad prompt fails the whole call
            if len(prompt["prompt_token_ids"]) >= limit:
                raise ValueError(f"The decoder prompt (length {len(prompt['prompt_token_ids'])}) is longer than the "
                                 f"maximum model length of {limit}.")
        for name, prompt, p in zip(names, prompts, params):
            self.llm_engine.add_request(name, prompt, p)
        done = {}
        while self.llm_engine.has_unfinished_requests():
            for o in self.llm_engine.step():
                done[o.request_id] = o
        return [done[n] for n in names]
