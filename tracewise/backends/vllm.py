"""Offline ``vllm.LLM`` as a generation backend, with tensor- and data-parallel options.

vLLM is an optional extra (``pip install 'tracewise[vllm]'``), imported only when this backend is
built, so configs that never name it never need it.

* Every sample is its own vLLM request with ``n=1`` and ``seed=sample_seed(seed, request.id, idx)``,
  so a sample does not depend on batching, sharding or resume (vLLM seeds per request).
* Prompts are token ids built here with the model's tokenizer (chat template + ``Request.prefix``),
  so the prompt a sample continues is exactly the one the ``hf`` backend would build, and prefix
  continuation (test-time controls) works: ``supports_prefix = True``.
* ``skip_special_tokens=False``: ``<think>``/``</think>`` are special tokens in several reasoning
  tokenizers and must stay in the text.
* Tensor parallel is vLLM's own ``tensor_parallel_size``. Data parallel runs ``data_parallel_size``
  independent replicas in worker processes, each pinned to its own ``tensor_parallel_size`` GPUs via
  ``CUDA_VISIBLE_DEVICES``; samples are dealt round-robin. Independent replicas (rather than vLLM's
  coordinated DP engine, built for MoE expert parallelism) need no shared rendezvous and give the
  same samples, because each sample carries its own seed.
* Results are handed back in chunks of ``chunk_size`` samples so ``generate`` stores them as they
  finish.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from tracewise.backends.base import Completion, Request, SamplingParams
from tracewise.core.seeding import sample_seed
from tracewise.core.config import doc

log = logging.getLogger(__name__)


@dataclass
class VLLMConfig:
    """Settings of the ``vllm`` backend (``generate.vllm.*``)."""

    tensor_parallel_size: int = doc("GPUs per model replica (vLLM tensor parallel).", 1)
    data_parallel_size: int = doc("Independent replicas, each on its own tensor_parallel_size GPUs.", 1)
    gpu_memory_utilization: float = doc("Fraction of each GPU's memory vLLM may use.", 0.9)
    max_model_len: int | None = doc("Context length cap (None = the model's).", None)
    dtype: str = doc("Weights dtype: auto, bfloat16, float16, float32.", "auto")
    enforce_eager: bool = doc("Disable CUDA graphs (faster start, slower decode).", False)
    chunk_size: int = doc("Samples per vLLM call; each chunk is stored when it finishes.", 1024)

    def validate(self) -> None:
        for name in ("tensor_parallel_size", "data_parallel_size", "chunk_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"vllm.{name} must be an integer >= 1, got {value!r}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"vllm.gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ValueError(f"vllm.max_model_len must be >= 1 or None, got {self.max_model_len}")
        if self.dtype not in ("auto", "bfloat16", "float16", "float32", "half", "float"):
            raise ValueError(f"vllm.dtype: unknown dtype {self.dtype!r}; use auto, bfloat16, float16 or float32")


def import_vllm():
    """``import vllm`` with an actionable error instead of a bare ImportError."""
    try:
        import vllm
    except ImportError as e:
        raise ValueError(
            "the 'vllm' backend needs vLLM, which is not installed: pip install 'tracewise[vllm]' "
            f"(on a machine with a CUDA GPU); or use backend 'hf' or 'openai' ({e})"
        ) from None
    return vllm


def _llm_kwargs(model: str, tokenizer: str | None, cfg: VLLMConfig, trust_remote_code: bool) -> dict:
    kw: dict[str, Any] = dict(model=model, tokenizer=tokenizer or model, tensor_parallel_size=cfg.tensor_parallel_size,
                              gpu_memory_utilization=cfg.gpu_memory_utilization, dtype=cfg.dtype,
                              enforce_eager=cfg.enforce_eager, trust_remote_code=trust_remote_code)
    if cfg.max_model_len is not None:
        kw["max_model_len"] = cfg.max_model_len
    return kw


def _run_llm(llm: Any, jobs: list[tuple[str, int, list[int], dict]]) -> list[Completion]:
    """Generate ``jobs`` = (request id, sample idx, prompt ids, sampling kwargs) on one ``vllm.LLM``."""
    from vllm import SamplingParams as VSamplingParams

    prompts = [{"prompt_token_ids": ids} for _, _, ids, _ in jobs]
    params = [VSamplingParams(**kw) for *_, kw in jobs]
    outs = llm.generate(prompts, params, use_tqdm=False)
    done = []
    for (rid, idx, ids, _), out in zip(jobs, outs):
        o = out.outputs[0]
        done.append(Completion(rid, idx, o.text, len(o.token_ids), "length" if o.finish_reason == "length" else "stop",
                               {"prompt_tokens": len(ids)}))
    return done


def _replica_main(rank: int, gpus: str, llm_kwargs: dict, inbox: Any, outbox: Any) -> None:
    """A data-parallel worker: one LLM on its own GPUs, serving chunks until it gets None."""
    os.environ["CUDA_VISIBLE_DEVICES"] = gpus
    try:
        vllm = import_vllm()
        llm = vllm.LLM(**llm_kwargs)
        outbox.put((rank, "ready", None))
        while (jobs := inbox.get()) is not None:
            outbox.put((rank, "done", _run_llm(llm, jobs)))
    except BaseException as e:  # report, so the parent raises instead of waiting forever
        outbox.put((rank, "error", f"{type(e).__name__}: {e}"))


class VLLMBackend:
    """Generate with offline vLLM; same protocol and sampling identity as the other backends."""

    supports_prefix = True

    def __init__(self, model: str, tokenizer: str | None = None, *, tensor_parallel_size: int = 1,
                 data_parallel_size: int = 1, gpu_memory_utilization: float = 0.9, max_model_len: int | None = None,
                 dtype: str = "auto", enforce_eager: bool = False, chunk_size: int = 1024,
                 trust_remote_code: bool = False, batch_size: int | None = None) -> None:
        if not model:
            raise ValueError("vllm backend: model (a path or HF id) is required")
        self.cfg = VLLMConfig(tensor_parallel_size=tensor_parallel_size, data_parallel_size=data_parallel_size,
                              gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                              dtype=dtype, enforce_eager=enforce_eager, chunk_size=chunk_size)
        self.cfg.validate()
        vllm = import_vllm()  # fail before spending minutes on anything else
        from transformers import AutoTokenizer

        self.name = f"vllm:{model}"
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer or model, trust_remote_code=trust_remote_code)
        kwargs = _llm_kwargs(model, tokenizer, self.cfg, trust_remote_code)
        self._llm = None
        self._workers: list[Any] = []
        if self.cfg.data_parallel_size == 1:
            self._llm = vllm.LLM(**kwargs)
        else:
            self._start_replicas(kwargs)

    def _start_replicas(self, kwargs: dict) -> None:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        devices = visible.split(",") if visible else [str(i) for i in range(_device_count())]
        tp, dp = self.cfg.tensor_parallel_size, self.cfg.data_parallel_size
        if len(devices) < tp * dp:
            raise ValueError(f"vllm: data_parallel_size {dp} x tensor_parallel_size {tp} needs {tp * dp} GPUs, "
                             f"{len(devices)} visible")
        ctx = mp.get_context("spawn")  # CUDA cannot be re-initialised in a forked child
        self._outbox = ctx.Queue()
        for rank in range(dp):
            inbox = ctx.Queue()
            gpus = ",".join(devices[rank * tp:(rank + 1) * tp])
            proc = ctx.Process(target=_replica_main, args=(rank, gpus, kwargs, inbox, self._outbox), daemon=True)
            proc.start()
            self._workers.append((proc, inbox))
        for _ in range(dp):
            self._receive("ready")

    def _receive(self, expected: str) -> list[Completion] | None:
        rank, kind, payload = self._outbox.get()
        if kind == "error":
            self.close()
            raise RuntimeError(f"vllm data-parallel replica {rank} failed: {payload}")
        assert kind == expected, (kind, expected)
        return payload

    def close(self) -> None:
        for proc, inbox in self._workers:
            if proc.is_alive():
                inbox.put(None)
                proc.join(timeout=30)
        self._workers = []

    def __del__(self) -> None:  # pragma: no cover - best effort at interpreter exit
        try:
            self.close()
        except Exception:
            pass

    def encode_prompt(self, request: Request) -> list[int]:
        if request.messages is not None:
            if not self.tokenizer.chat_template:
                raise ValueError(f"request {request.id!r} has messages but {self.name} has no chat template")
            text, add_special = self.tokenizer.apply_chat_template(
                request.messages, add_generation_prompt=True, tokenize=False), False
        elif request.prompt is not None:
            text, add_special = request.prompt, True
        else:
            raise ValueError(f"request {request.id!r} has neither messages nor prompt")
        return list(self.tokenizer(text + request.prefix, add_special_tokens=add_special)["input_ids"])

    def jobs(self, requests: list[Request], sampling: SamplingParams) -> list[tuple[str, int, list[int], dict]]:
        """One (id, idx, prompt ids, vLLM sampling kwargs) per sample; longest prompts first."""
        out = []
        for req in requests:
            ids = self.encode_prompt(req)
            for idx in req.sample_idxs if req.sample_idxs is not None else range(sampling.n):
                if not 0 <= idx < sampling.n:
                    raise ValueError(f"request {req.id!r}: sample_idx {idx} is outside 0..{sampling.n - 1}")
                out.append((req.id, idx, ids, dict(n=1, temperature=sampling.temperature, top_p=sampling.top_p,
                                                    max_tokens=sampling.max_tokens, skip_special_tokens=False,
                                                    seed=sample_seed(sampling.seed, req.id, idx))))
        return out

    def generate(self, requests: list[Request], sampling: SamplingParams,
                 progress: Callable[[int], Any] | None = None) -> Iterator[list[Completion]]:
        sampling.validate(f"{self.name}: sampling")
        jobs = self.jobs(requests, sampling)
        size = self.cfg.chunk_size
        chunks = [jobs[i:i + size] for i in range(0, len(jobs), size)]
        if self._llm is not None:
            for chunk in chunks:
                done = _run_llm(self._llm, chunk)
                if progress:
                    progress(len(done))
                yield done
            return
        # Data parallel: keep every replica busy with one chunk; hand back each as it returns.
        dp = len(self._workers)
        pending = iter(chunks)
        busy = 0
        for rank in range(dp):
            chunk = next(pending, None)
            if chunk is None:
                break
            self._workers[rank][1].put(chunk)
            busy += 1
        while busy:
            rank, kind, payload = self._outbox.get()
            if kind == "error":
                self.close()
                raise RuntimeError(f"vllm data-parallel replica {rank} failed: {payload}")
            busy -= 1
            chunk = next(pending, None)
            if chunk is not None:
                self._workers[rank][1].put(chunk)
                busy += 1
            if progress:
                progress(len(payload))
            yield payload


def _device_count() -> int:
    import torch

    return torch.cuda.device_count()
