"""Local Hugging Face causal LMs as a generation backend, with batch-independent sampling.

Why not ``model.generate``: it draws every row's next token from the one global RNG, so a sample
depends on which other samples share its batch, on the batch size and on the order of requests,
and a resumed run would not regenerate what an interrupted one produced. Here each sample owns a
``torch.Generator`` seeded by ``sample_seed(seed, request.id, sample_idx)``; its uniforms (one per
step, drawn in small chunks as the row grows, never max_tokens of them up front) are turned into
tokens by inverse-CDF sampling, so the random stream a sample sees never depends on its neighbours.
The decode loop is otherwise what ``generate`` does:
left-padded prefill, 2D attention mask + explicit position ids, a ``DynamicCache``, one token per
step; rows that finish are dropped from the batch and from the KV cache.

Batching is fixed batches of similar prompt length with finished rows pruned. Refilling freed
slots with new prompts (prefill them, left-pad and merge their KV cache into the running one) was
measured on CPU (benchmarks/backends.py setting, 256 prompts, outputs 1..128 tokens): 17-28%
slower with mixed output lengths and no faster when most rows run to max_tokens, because merged
rows pad to the widest cache and a CPU step's cost already shrinks with the rows left. It also
needs cache-layer internals that sliding-window layers do not share, so it was not kept.
"""

from __future__ import annotations

import inspect
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    DynamicCache,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from tracewise.backends.base import Completion, Request, SamplingParams
from tracewise.core.seeding import sample_seed
from tracewise.core.model_files import resolve_model_file

logger = logging.getLogger(__name__)

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


_UNIFORM_CHUNK = 64  # uniforms drawn per refill: a row never holds max_tokens of them up front


@dataclass
class _Row:
    """One sample being generated: its prompt, its private random stream and its tokens so far.

    ``max_tokens``/``temperature``/``top_p`` are the row's own (``tracewise serve`` batches
    requests with different settings); ``owner`` is whatever the caller attached (serve: its request).
    """

    request: Request
    sample_idx: int
    prompt_ids: list[int]
    seed: int  # sample_seed(...): the only source of this row's randomness
    tokens: list[int] = field(default_factory=list)
    max_tokens: int = 0
    temperature: float = 0.0
    top_p: float = 1.0
    finish_reason: str = ""  # set when the row finishes: "stop" (EOS or the caller's stop) or "length"
    owner: Any = None
    _generator: torch.Generator | None = field(default=None, repr=False)
    _uniforms: list[float] = field(default_factory=list, repr=False)

    def next_uniform(self) -> float:
        """The uniform for this row's next step. Drawn in chunks from the row's own CPU generator: the
        stream is the same as drawing max_tokens at once (torch's CPU generator is sequential), but
        memory is one chunk per row whatever max_tokens a caller asks for."""
        if not self._uniforms:
            if self._generator is None:
                self._generator = torch.Generator().manual_seed(self.seed)
            self._uniforms = torch.rand(_UNIFORM_CHUNK, generator=self._generator).tolist()[::-1]
        return self._uniforms.pop()


def _resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from e


def _resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        # bf16 halves memory and is what GPUs run fast; CPUs lack fast bf16 matmuls, so float32 there.
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use 'auto' or one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]


def _load_model(path: str, dtype: torch.dtype, trust_remote_code: bool) -> PreTrainedModel:
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"cannot load a model config from {path!r}: {e}") from e
    auto_map = getattr(config, "auto_map", None) or {}
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and "AutoModelForCausalLM" not in auto_map:
        raise ValueError(
            f"{path!r} holds a {config.model_type!r} model, which is not a causal language model"
        )
    try:
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"cannot load a causal language model from {path!r}: {e}") from e


def _pick_tokens(logits: torch.Tensor, sampling: SamplingParams, uniforms: torch.Tensor | None) -> torch.Tensor:
    """Next token per row: argmax at temperature 0, else inverse-CDF sampling with each row's uniform.

    Inverse CDF needs exactly one uniform per row and step, which is what lets every row carry its
    own pre-drawn random stream; the result is a valid sample from the (top-p truncated) softmax.
    """
    if sampling.temperature == 0 or uniforms is None:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / sampling.temperature, dim=-1)
    order = None
    if sampling.top_p < 1.0:
        # Same nucleus as transformers' TopPLogitsWarper: keep a token while the mass ranked
        # above it is below top_p (the top token always survives).
        probs, order = probs.sort(dim=-1, descending=True, stable=True)
        mass_before = probs.cumsum(dim=-1) - probs
        probs = probs.masked_fill(mass_before >= sampling.top_p, 0.0)
    cdf = probs.cumsum(dim=-1)
    # Scale into [0, total) and stay strictly below the total so rounding can never select a
    # zero-probability tail token; right=True skips zero-probability tokens (flat CDF steps).
    target = (uniforms[:, None] * cdf[:, -1:]).clamp(max=cdf[:, -1:] * (1 - 1e-6))
    idx = torch.searchsorted(cdf, target, right=True).clamp(max=cdf.shape[-1] - 1)
    if order is not None:
        idx = order.gather(-1, idx)
    return idx.squeeze(-1)


class HFBackend:
    """Generate with any local HF causal LM; each sample depends only on its own seed and prompt."""

    supports_prefix = True  # continues Request.prefix after the chat template (test-time controls need it)

    def __init__(
        self,
        model: str | PreTrainedModel,
        tokenizer: str | PreTrainedTokenizerBase | None = None,
        *,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "auto",
        batch_size: int = 64,
        max_batch_tokens: int | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_batch_tokens is not None and max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens must be >= 1 or None, got {max_batch_tokens}")
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        model, tokenizer = resolve_model_file(model), resolve_model_file(tokenizer)  # GGUF file/package → HF dir
        if isinstance(model, str):
            self.device = _resolve_device(device)
            self.dtype = _resolve_dtype(dtype, self.device)
            self.model = _load_model(model, self.dtype, trust_remote_code).to(self.device)
            model_name = model
        elif isinstance(model, PreTrainedModel):
            # A model object may be the caller's live model (e.g. a student mid-training), so
            # "auto" leaves its device and dtype alone; only explicit values move or cast it.
            self.device = model.device if str(device) == "auto" else _resolve_device(device)
            self.dtype = model.dtype if str(dtype) == "auto" else _resolve_dtype(dtype, self.device)
            self.model = model.to(device=self.device, dtype=self.dtype)
            model_name = model.name_or_path or type(model).__name__
        else:
            raise ValueError(f"model must be a path or a PreTrainedModel, got {type(model).__name__}")
        self.model.eval()
        if tokenizer is None:
            if not isinstance(model, str) and not model.name_or_path:
                raise ValueError("pass tokenizer= when giving a model object that was not loaded from a path")
            tokenizer = model if isinstance(model, str) else model.name_or_path
        if isinstance(tokenizer, str):
            try:
                tokenizer = AutoTokenizer.from_pretrained(tokenizer, trust_remote_code=trust_remote_code)
            except (OSError, ValueError, KeyError) as e:
                raise ValueError(f"cannot load a tokenizer from {tokenizer!r}: {e}") from e
        self.tokenizer = tokenizer
        self.name = f"hf:{model_name}"
        self.eos_ids = self._collect_eos_ids()
        # Not every model (remote code especially) accepts logits_to_keep; without it prefill
        # materialises logits for every prompt position, which is slower but still correct.
        self._keeps_last_logits = "logits_to_keep" in inspect.signature(self.model.forward).parameters

    def _collect_eos_ids(self) -> set[int]:
        ids: set[int] = set()
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        if gen_eos is not None:
            ids.update(int(i) for i in ([gen_eos] if isinstance(gen_eos, int) else gen_eos))
        if not ids:
            raise ValueError(f"{self.name}: neither the tokenizer nor the generation config names an EOS token")
        return ids

    # ---- prompts -------------------------------------------------------------------------

    def encode_prompt(self, request: Request) -> list[int]:
        """Token ids the model sees: chat-templated messages (or the raw prompt) plus the prefix."""
        if request.messages is not None:
            if not self.tokenizer.chat_template:
                raise ValueError(f"request {request.id!r} has messages but {self.name} has no chat template")
            text = self.tokenizer.apply_chat_template(request.messages, add_generation_prompt=True, tokenize=False)
            # The template already writes any BOS it wants; adding special tokens would double it.
            add_special = False
        elif request.prompt is not None:
            text, add_special = request.prompt, True
        else:
            raise ValueError(f"request {request.id!r} has neither messages nor prompt")
        ids = self.tokenizer(text + request.prefix, add_special_tokens=add_special)["input_ids"]
        if not ids:
            raise ValueError(f"request {request.id!r} encodes to an empty prompt")
        return list(ids)

    def _make_rows(self, requests: list[Request], sampling: SamplingParams) -> list[_Row]:
        rows = []
        for request in requests:
            prompt_ids = self.encode_prompt(request)
            idxs = request.sample_idxs if request.sample_idxs is not None else range(sampling.n)
            for idx in idxs:
                if not 0 <= idx < sampling.n:
                    raise ValueError(f"request {request.id!r}: sample_idx {idx} is outside 0..{sampling.n - 1}")
                rows.append(self.make_row(request, idx, prompt_ids, sampling))
        return rows

    @staticmethod
    def make_row(request: Request, idx: int, prompt_ids: list[int], sampling: SamplingParams,
                 owner: Any = None) -> _Row:
        """One sample to decode: ``prompt_ids`` already encoded, seeded by (sampling.seed, request.id, idx)."""
        return _Row(request, idx, prompt_ids, sample_seed(sampling.seed, request.id, idx),
                    max_tokens=sampling.max_tokens, temperature=sampling.temperature, top_p=sampling.top_p,
                    owner=owner)

    def _plan_batches(self, rows: list[_Row], max_tokens: int) -> list[list[_Row]]:
        """Longest prompts first (an out-of-memory shows up at once), similar lengths together
        (little padding), capped by batch_size rows and max_batch_tokens of KV cache per batch."""
        rows = sorted(rows, key=lambda r: -len(r.prompt_ids))
        batches: list[list[_Row]] = []
        for row in rows:
            batch = batches[-1] if batches else None
            # Left padding makes every row as long as the batch's first (longest) prompt.
            width = (len(batch[0].prompt_ids) if batch else len(row.prompt_ids)) + max_tokens
            fits = batch is not None and len(batch) < self.batch_size
            if fits and self.max_batch_tokens is not None:
                fits = (len(batch) + 1) * width <= self.max_batch_tokens
            if fits:
                batch.append(row)
            else:
                batches.append([row])
        return batches

    # ---- generation ------------------------------------------------------------------------

    def generate(
        self,
        requests: list[Request],
        sampling: SamplingParams,
        progress: Callable[[int], Any] | None = None,
    ) -> Iterator[list[Completion]]:
        """Yield the completions of each batch when it finishes; ``progress(k)`` as rows finish."""
        sampling.validate()
        rows = self._make_rows(requests, sampling)
        batches = self._plan_batches(rows, sampling.max_tokens)
        logger.info("%s: %d samples in %d batches", self.name, len(rows), len(batches))
        for batch in batches:
            yield self._decode_batch(batch, sampling, progress)

    def _decode_batch(
        self, rows: list[_Row], sampling: SamplingParams, progress: Callable[[int], Any] | None
    ) -> list[Completion]:
        t0 = time.perf_counter()
        batch = self.start_batch(rows)
        done: list[Completion] = []
        first_step: float | None = None
        while batch.active:
            finished = batch.step()
            now = time.perf_counter() - t0
            first_step = now if first_step is None else first_step
            for r in finished:
                # Batched decoding: latency runs from the batch's start to this row's last token, and the
                # first token of every row arrives with the batch's first step (prefill included).
                c = self._completion(r)
                c.timing = {"latency_s": now, "ttft_s": first_step, "clock": "batch"}
                done.append(c)
            if finished and progress is not None:
                progress(len(finished))
        return done

    def start_batch(self, rows: list[_Row]) -> "Decoding":
        """Decode ``rows`` together one step at a time (``Decoding.step``), so that a caller can
        interleave batches (``tracewise serve`` steps a long batch and newer short ones in turn)."""
        return Decoding(self, rows)

    def _completion(self, row: _Row) -> Completion:
        body = self.body_tokens(row)
        stopped = len(body) < len(row.tokens)
        # skip_special_tokens=False keeps <think>/</think>, which are special tokens in some tokenizers.
        text = self.tokenizer.decode(body, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        return Completion(
            request_id=row.request.id,
            sample_idx=row.sample_idx,
            text=text,
            n_tokens=len(row.tokens),
            finish_reason="stop" if stopped else "length",
            meta={"prompt_tokens": len(row.prompt_ids)},
        )

    def body_tokens(self, row: _Row) -> list[int]:
        """The row's generated tokens without a final EOS."""
        return row.tokens[:-1] if row.tokens and row.tokens[-1] in self.eos_ids else row.tokens



def _cache_keyword(model) -> str:
    """The forward() keyword of the KV cache: ``cache`` since transformers 5.24 (``past_key_values`` still
    works there but warns on every process), ``past_key_values`` before."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

class Decoding:
    """One batch being decoded: left-padded prefill, 2D attention mask + explicit position ids, a
    ``DynamicCache``, one token per ``step()``; rows that finish are dropped from the batch and from the
    KV cache. Rows may differ in max_tokens, temperature and top_p (each group is sampled as if alone)."""

    def __init__(self, backend: HFBackend, rows: list[_Row]):
        self.backend, self.model, self.eos_ids = backend, backend.model, backend.eos_ids
        dev = self.dev = backend.device
        width = max(len(r.prompt_ids) for r in rows)
        # Any id works as padding: padded positions are masked out and never attended to.
        pad_id = backend.tokenizer.pad_token_id
        pad_id = min(self.eos_ids) if pad_id is None else pad_id
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, width - len(row.prompt_ids) :] = torch.tensor(row.prompt_ids)
            mask[i, width - len(row.prompt_ids) :] = 1
        self.input_ids, self.mask = input_ids.to(dev), mask.to(dev)
        # Positions count real tokens only, so a row's positions do not depend on its padding.
        self.positions = (self.mask.cumsum(-1) - 1).clamp(min=0)
        self.cache = DynamicCache(config=self.model.config)
        self.active = list(rows)
        self.width = width
        self._extra = {"logits_to_keep": 1} if backend._keeps_last_logits else {}
        self._cache_kw = _cache_keyword(self.model)
        self._groups: tuple | None = None  # (rows, {(temperature, top_p): row indices}, index tensors)

    def reserved_tokens(self) -> int:
        """KV-cache positions this batch may still grow to (prompt width + each row's max_tokens)."""
        return sum(self.width + r.max_tokens for r in self.active)

    @torch.inference_mode()
    def step(self, stop: Callable[[_Row], bool] | None = None) -> list[_Row]:
        """Decode one token for every active row; return the rows that finished (``finish_reason``
        set). ``stop(row)``, asked for each row whose new token is not EOS, finishes it now with
        ``finish_reason == "stop"`` when true (a stop string, a cancelled request)."""
        out = self.model(input_ids=self.input_ids, attention_mask=self.mask, position_ids=self.positions,
                         **{self._cache_kw: self.cache}, use_cache=True, **self._extra)
        next_ids = self._pick(out.logits[:, -1, :])
        keep: list[int] = []
        finished: list[_Row] = []
        # .tolist() is the one host sync per step; it is needed anyway to test for EOS.
        for i, (row, tok) in enumerate(zip(self.active, next_ids.tolist())):
            row.tokens.append(tok)
            if tok in self.eos_ids or (stop is not None and stop(row)):
                row.finish_reason = "stop"
            elif len(row.tokens) >= row.max_tokens:
                row.finish_reason = "length"
            else:
                keep.append(i)
                continue
            finished.append(row)
        if not keep:
            self.active = []
            return finished
        next_pos = self.positions[:, -1:] + 1
        mask = self.mask
        if finished:
            # Prune finished rows everywhere, KV cache included, so later steps cost less.
            idx = torch.tensor(keep, device=self.dev)
            self.cache.batch_select_indices(idx)
            self.active = [self.active[i] for i in keep]
            next_ids, mask, next_pos = next_ids[idx], mask[idx], next_pos[idx]
        self.input_ids = next_ids[:, None]
        self.mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
        self.positions = next_pos
        return finished

    def _pick(self, logits: torch.Tensor) -> torch.Tensor:
        rows = self.active
        if self._groups is None or self._groups[0] is not rows:  # rows change only when some finish
            groups: dict[tuple[float, float], list[int]] = {}
            for i, r in enumerate(rows):
                groups.setdefault((r.temperature, r.top_p), []).append(i)
            index = {k: torch.tensor(v, device=self.dev) for k, v in groups.items()} if len(groups) > 1 else {}
            self._groups = (rows, groups, index)
        _, groups, index = self._groups
        # One uniform per sampled row and step, from the row's own stream (greedy rows draw none).
        if len(groups) == 1:
            ((t, p),) = groups
            u = torch.tensor([r.next_uniform() for r in rows], dtype=torch.float32, device=self.dev) if t > 0 else None
            return _pick_tokens(logits, SamplingParams(temperature=t, top_p=p), u)
        # Mixed settings: each group is sampled exactly as it would be alone (the same nucleus, the same CDF).
        out = torch.empty(len(rows), dtype=torch.long, device=self.dev)
        for (t, p), idxs in groups.items():
            u = torch.tensor([rows[i].next_uniform() for i in idxs], dtype=torch.float32, device=self.dev) \
                if t > 0 else None
            idx = index[(t, p)]
            out[idx] = _pick_tokens(logits[idx], SamplingParams(temperature=t, top_p=p), u)
        return out
