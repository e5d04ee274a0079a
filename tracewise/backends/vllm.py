"""Offline ``vllm.LLM`` as a generation backend, with tensor- and data-parallel options.

vLLM is an optional extra (``pip install 'tracewise[vllm]'``), imported only when this backend is
built, so configs that never name it never need it.

* Every sample is its own vLLM request with ``n=1`` and ``seed=sample_seed(seed, request.id, idx)``,
  so a sample does not depend on batching, sharding or resume (vLLM seeds per request).
* Prompts are token ids built here with the model's tokenizer (chat template + ``Request.prefix``),
  so the prompt a sample continues is exactly the one the ``hf`` backend would build, and prefix
  continuation (test-time controls) works: ``supports_prefix = True``. A request that carries
  ``prefix_ids`` continues from exactly those ids (no re-tokenisation of ``text + prefix``).
* Each completion reports its generated ids in ``meta["token_ids"]`` (EOS included), so controls
  cut and continue samples on token boundaries instead of re-tokenising text.
* ``skip_special_tokens=False``: ``<think>``/``</think>`` are special tokens in several reasoning
  tokenizers and must stay in the text.
* Streaming, not chunk-and-wait: up to ``chunk_size`` samples are in the engine at once and the
  window is topped up as samples finish (``LLMEngine.add_request`` / ``step``), so a sample never
  waits for the longest sample of "its" chunk and the engine never runs half-empty at a chunk's
  tail. Finished samples are handed back every ``chunk_size // 4`` completions, so ``generate``
  stores them as they finish. (Engines without that API fall back to ``LLM.generate`` per chunk.)
* A prompt the model cannot take (``prompt tokens >= max_model_len``) fails alone: its samples come
  back with ``finish_reason="error"`` and the reason in ``meta["error"]`` (``generate`` lists them in
  ``failed.jsonl``; ``eval`` counts them wrong), and every other prompt is generated. ``max_tokens``
  is capped at what is left of the context, so a sample that runs into it ends as ``"length"``.
* Tensor parallel is vLLM's own ``tensor_parallel_size``. Data parallel runs ``data_parallel_size``
  independent replicas in worker processes, each pinned to its own ``tensor_parallel_size`` GPUs via
  ``CUDA_VISIBLE_DEVICES``; samples are dealt round-robin. Independent replicas (rather than vLLM's
  coordinated DP engine, built for MoE expert parallelism) need no shared rendezvous and give the
  same samples, because each sample carries its own seed. The replicas are NOT daemonic (vLLM's
  engine starts its own worker processes, which a daemonic process may not have); they are stopped
  by ``close()`` and at interpreter exit, and exit on their own when the parent dies. The parent
  never waits on a dead replica: while it waits it checks every ``POLL_S`` seconds that the busy
  replicas are alive, and one that died (e.g. killed by the OOM killer) is an error naming it.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import multiprocessing as mp
import os
import queue
import signal
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from tracewise.backends.base import Completion, Request, SamplingParams
from tracewise.core.seeding import sample_seed
from tracewise.core.config import doc

log = logging.getLogger(__name__)

FAILED = "error"  # finish_reason of a sample that could not be generated (as in tracewise.backends.openai_http)
POLL_S = 2.0  # how often a waiting parent checks that its replicas are alive
Job = tuple[str, int, list[int], dict]  # (request id, sample idx, prompt ids, vLLM sampling kwargs)


@dataclass
class VLLMConfig:
    """Settings of the ``vllm`` backend (``generate.vllm.*``, ``eval.vllm.*``, ``train rl``'s vLLM)."""

    tensor_parallel_size: int = doc("GPUs per model replica (vLLM tensor parallel).", 1)
    data_parallel_size: int = doc("Independent replicas, each on its own tensor_parallel_size GPUs.", 1)
    gpu_memory_utilization: float = doc("Fraction of each GPU's memory vLLM may use.", 0.9)
    max_model_len: int | None = doc("Context length cap, prompt + completion (None = the model's config; set it "
                                    "for models that declare huge contexts, e.g. Mistral-Nemo's 1,024,000, "
                                    "whose KV cache for one sequence would not fit).", None)
    dtype: str = doc("Weights dtype: auto, bfloat16, float16, float32.", "auto")
    enforce_eager: bool = doc("Disable CUDA graphs (faster start, slower decode).", False)
    chunk_size: int = doc("Samples in the engine at once (topped up as samples finish); finished samples are "
                          "stored every chunk_size/4.", 1024)

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


# ---- one engine -------------------------------------------------------------------------------

def _max_len(llm: Any, configured: int | None) -> int | None:
    """The engine's context length (prompt + completion), as vLLM resolved it."""
    try:
        return int(llm.llm_engine.model_config.max_model_len)
    except (AttributeError, TypeError, ValueError):
        return configured


def _params(vllm: Any, kw: dict) -> Any:
    params = vllm.SamplingParams(**kw)
    try:  # only the final output of a request: no per-step detokenised copies while streaming
        from vllm.sampling_params import RequestOutputKind

        params.output_kind = RequestOutputKind.FINAL_ONLY
    except (ImportError, AttributeError):
        pass
    return params


def _failed(job: Job, reason: str) -> Completion:
    rid, idx, ids, _ = job
    return Completion(rid, idx, "", 0, FAILED, {"error": reason, "prompt_tokens": len(ids)})


def _fit(job: Job, max_len: int | None) -> Job | Completion:
    """The job with max_tokens capped at what is left of the context, or a failed completion."""
    if max_len is None:
        return job
    rid, idx, ids, kw = job
    room = max_len - len(ids)
    if room < 1:
        return _failed(job, f"prompt_too_long: {len(ids)} prompt tokens, max_model_len {max_len}")
    return (rid, idx, ids, {**kw, "max_tokens": min(kw["max_tokens"], room)}) if kw["max_tokens"] > room else job


def _completion(job: Job, out: Any) -> Completion:
    rid, idx, ids, _ = job
    o = out.outputs[0]
    token_ids = [int(t) for t in o.token_ids]
    return Completion(rid, idx, o.text, len(token_ids), "length" if o.finish_reason == "length" else "stop",
                      {"prompt_tokens": len(ids), "token_ids": token_ids})


def _stream(vllm: Any, llm: Any, jobs: list[Job], window: int, max_len: int | None) -> Iterator[list[Completion]]:
    """Generate ``jobs`` on one engine, at most ``window`` in flight, topped up as samples finish;
    yield finished completions in batches of about ``window // 4``."""
    flush = max(1, window // 4)
    engine = getattr(llm, "llm_engine", None)
    if engine is None or not all(hasattr(engine, a) for a in ("add_request", "step")):
        yield from _chunked(vllm, llm, jobs, window, max_len)
        return
    pending, in_flight, done = deque(jobs), {}, []
    added: dict[str, float] = {}  # name -> when it entered the engine; first: -> the step with its first token
    first: dict[str, float] = {}
    names = (f"tw{n}|" for n in itertools.count())  # '|' ends the id: a suffix vLLM may add stays matchable
    while pending or in_flight:
        while pending and len(in_flight) < window:
            job = _fit(pending.popleft(), max_len)
            if isinstance(job, Completion):
                done.append(job)
                continue
            name = next(names)
            try:
                engine.add_request(name, {"prompt_token_ids": job[2]}, _params(vllm, job[3]))
            except ValueError as e:  # the engine refused this prompt alone
                done.append(_failed(job, f"{type(e).__name__}: {e}"))
                continue
            in_flight[name] = job
            added[name] = time.perf_counter()
        if in_flight:
            outs = engine.step()
            now = time.perf_counter()
            for out in outs:
                rid = str(out.request_id)
                key = rid if rid in in_flight else rid.split("|", 1)[0] + "|"  # names end at their first '|'
                if key not in in_flight:
                    continue
                finished = getattr(out, "finished", True)
                if not finished and key not in first and out.outputs and len(out.outputs[0].token_ids) > 0:
                    first[key] = now  # only seen when the engine streams partial outputs (not FINAL_ONLY)
                if finished:
                    c = _completion(in_flight.pop(key), out)
                    t_in = added.pop(key)
                    ttft = first.pop(key, None)
                    c.timing = {"latency_s": now - t_in, "ttft_s": _engine_ttft(out) if ttft is None else ttft - t_in,
                                "clock": "engine"}
                    done.append(c)
        if done and (len(done) >= flush or not (pending or in_flight)):
            yield done
            done = []
    if done:
        yield done


def _chunked(vllm: Any, llm: Any, jobs: list[Job], window: int, max_len: int | None) -> Iterator[list[Completion]]:
    """``LLM.generate`` per chunk; a chunk the engine refuses is retried sample by sample, so only the
    samples it refuses alone fail."""
    for start in range(0, len(jobs), window):
        fitted = [_fit(j, max_len) for j in jobs[start:start + window]]
        done = [j for j in fitted if isinstance(j, Completion)]
        todo = [j for j in fitted if not isinstance(j, Completion)]
        t0 = time.perf_counter()
        try:
            done += _timed(_generate_all(vllm, llm, todo), t0)
        except ValueError:
            for job in todo:
                try:
                    done += _timed(_generate_all(vllm, llm, [job]), time.perf_counter())
                except ValueError as e:
                    done.append(_failed(job, f"{type(e).__name__}: {e}"))
        yield done


def _engine_ttft(out: Any) -> float | None:
    """Time to first token as the engine reports it (vLLM V0 ``RequestOutput.metrics``); None when it does
    not (V1 engines with FINAL_ONLY outputs report neither partial outputs nor these metrics)."""
    m = getattr(out, "metrics", None)
    first, arrival = getattr(m, "first_token_time", None), getattr(m, "arrival_time", None)
    if isinstance(first, (int, float)) and isinstance(arrival, (int, float)) and first >= arrival:
        return float(first - arrival)
    return None


def _timed(done: list[Completion], t0: float) -> list[Completion]:
    """One ``LLM.generate`` call's completions, each timed by the call's wall time (no first-token time)."""
    timing = {"latency_s": time.perf_counter() - t0, "ttft_s": None, "clock": "batch"}
    for c in done:
        c.timing = dict(timing)
    return done


def _generate_all(vllm: Any, llm: Any, jobs: list[Job]) -> list[Completion]:
    if not jobs:
        return []
    outs = llm.generate([{"prompt_token_ids": j[2]} for j in jobs], [vllm.SamplingParams(**j[3]) for j in jobs],
                        use_tqdm=False)
    return [_completion(j, o) for j, o in zip(jobs, outs, strict=True)]


# ---- data-parallel replicas -------------------------------------------------------------------

def _replica_main(rank: int, gpus: str, llm_kwargs: dict, window: int, inbox: Any, outbox: Any) -> None:
    """A data-parallel worker: one LLM on its own GPUs; streams each job list it gets back as
    ``(rank, call, "done", completions)`` messages and ``(rank, call, "idle", None)``; stops on None
    or when the parent is gone."""
    os.environ["CUDA_VISIBLE_DEVICES"] = gpus
    parent = mp.parent_process()
    try:
        vllm = import_vllm()
        llm = vllm.LLM(**llm_kwargs)
        max_len = _max_len(llm, llm_kwargs.get("max_model_len"))
        outbox.put((rank, 0, "ready", None))
        while True:
            try:
                msg = inbox.get(timeout=POLL_S)
            except queue.Empty:
                if parent is not None and not parent.is_alive():
                    return  # orphaned: free the GPUs
                continue
            if msg is None:
                return
            call, jobs = msg
            for batch in _stream(vllm, llm, jobs, window, max_len):
                outbox.put((rank, call, "done", batch))
            outbox.put((rank, call, "idle", None))
    except BaseException as e:  # report, so the parent raises instead of waiting
        outbox.put((rank, -1, "error", f"{type(e).__name__}: {e}"))


def _stop(workers: list) -> None:
    """Stop replicas: ask, then terminate, then kill; empties ``workers``. Registered with atexit
    after the processes start, so it runs before multiprocessing joins its non-daemonic children."""
    for proc, inbox in workers:
        if proc.is_alive():
            try:
                inbox.put(None)
            except (OSError, ValueError):
                pass
    for proc, _ in workers:
        proc.join(timeout=30)
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=5)
    workers.clear()


def _death(rank: int, code: int | None) -> str:
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (SIGKILL: often the OOM killer; see dmesg)" if code == -signal.SIGKILL else ""
        return f"vllm data-parallel replica {rank} died: killed by {name}{hint}"
    return f"vllm data-parallel replica {rank} died (exit code {code}) without reporting an error"


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
        self._vllm = vllm
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer or model, trust_remote_code=trust_remote_code)
        kwargs = _llm_kwargs(model, tokenizer, self.cfg, trust_remote_code)
        self._llm = None
        self._workers: list[Any] = []
        self._calls = itertools.count(1)
        if self.cfg.data_parallel_size == 1:
            self._llm = vllm.LLM(**kwargs)
            self._max_len = _max_len(self._llm, self.cfg.max_model_len)
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
            # Not daemonic: vLLM's engine starts its own processes, which a daemonic process may not have.
            proc = ctx.Process(target=_replica_main, args=(rank, gpus, kwargs, self.cfg.chunk_size, inbox,
                                                           self._outbox), daemon=False, name=f"vllm-replica-{rank}")
            proc.start()
            self._workers.append((proc, inbox))
        atexit.register(_stop, self._workers)
        waiting = set(range(dp))
        while waiting:
            rank, _, kind, payload = self._receive(waiting)
            if kind == "ready":
                waiting.discard(rank)

    def _receive(self, busy: set[int]) -> tuple:
        """The next replica message; raises if a replica reports an error or a busy one has died."""
        while True:
            try:
                msg = self._outbox.get(timeout=POLL_S)
            except queue.Empty:
                dead = [(r, self._workers[r][0].exitcode) for r in sorted(busy) if not self._workers[r][0].is_alive()]
                if not dead:
                    continue
                try:  # it may have reported before dying
                    msg = self._outbox.get(timeout=1.0)
                except queue.Empty:
                    self.close()
                    raise RuntimeError(_death(*dead[0])) from None
            rank, _, kind, payload = msg
            if kind == "error":
                self.close()
                raise RuntimeError(f"vllm data-parallel replica {rank} failed: {payload}")
            return msg

    def close(self) -> None:
        _stop(self._workers)

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
        prefix_ids = getattr(request, "prefix_ids", None)
        if prefix_ids is not None:  # continue from exactly the ids generated so far
            return list(self.tokenizer(text, add_special_tokens=add_special)["input_ids"]) + [int(t) for t in prefix_ids]
        return list(self.tokenizer(text + request.prefix, add_special_tokens=add_special)["input_ids"])

    def jobs(self, requests: list[Request], sampling: SamplingParams) -> list[Job]:
        """One (id, idx, prompt ids, vLLM sampling kwargs) per sample, in request order."""
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
        n_failed = 0
        for batch in self._batches(jobs):
            n_failed += sum(c.finish_reason == FAILED for c in batch)
            if progress:
                progress(len(batch))
            yield batch
        if n_failed:
            log.warning("%s: %d sample(s) failed alone (reason in meta['error'], e.g. prompt_too_long)", self.name,
                        n_failed)

    def _batches(self, jobs: list[Job]) -> Iterator[list[Completion]]:
        if self._llm is not None:
            yield from _stream(self._vllm, self._llm, jobs, self.cfg.chunk_size, self._max_len)
            return
        # Data parallel: every replica streams its round-robin share; batches come back as they finish.
        if not self._workers:
            raise RuntimeError(f"{self.name}: the backend is closed")
        call = next(self._calls)
        busy = set()
        for rank, (_, inbox) in enumerate(self._workers):
            share = jobs[rank::len(self._workers)]
            if share:
                inbox.put((call, share))
                busy.add(rank)
        while busy:
            rank, got_call, kind, payload = self._receive(busy)
            if got_call != call:
                continue  # left over from a call whose consumer stopped early
            if kind == "idle":
                busy.discard(rank)
            elif kind == "done":
                yield payload


def _device_count() -> int:
    import torch

    return torch.cuda.device_count()
