"""Local Hugging Face causal LMs as a generation backend, with batch-independent sampling.

Why not ``model.generate``: it draws every row's next token from the one global RNG, so a sample
depends on which other samples share its batch, on the batch size and on the order of requests,
and a resumed run would not regenerate what an interrupted one produced. Here each sample owns a
``torch.Generator`` seeded by ``sample_seed(seed, request.id, sample_idx)``; its uniforms are drawn
up front (one per step) and turned into tokens by inverse-CDF sampling, so the random stream a
sample sees never depends on its neighbours. The decode loop is otherwise what ``generate`` does:
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

from tracewise.backends.base import Completion, Request, SamplingParams, sample_seed
from tracewise.backends.model_files import resolve_model_file

logger = logging.getLogger(__name__)

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


@dataclass
class _Row:
    """One sample being generated: its prompt, its private random stream and its tokens so far."""

    request: Request
    sample_idx: int
    prompt_ids: list[int]
    seed: int  # sample_seed(...): the only source of this row's randomness
    tokens: list[int] = field(default_factory=list)


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
                rows.append(_Row(request, idx, prompt_ids, sample_seed(sampling.seed, request.id, idx)))
        return rows

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
        if sampling.n < 1:
            raise ValueError(f"sampling.n must be >= 1, got {sampling.n}")
        if sampling.max_tokens < 1:
            raise ValueError(f"sampling.max_tokens must be >= 1, got {sampling.max_tokens}")
        if sampling.temperature < 0:
            raise ValueError(f"sampling.temperature must be >= 0, got {sampling.temperature}")
        if not 0 < sampling.top_p <= 1:
            raise ValueError(f"sampling.top_p must be in (0, 1], got {sampling.top_p}")
        rows = self._make_rows(requests, sampling)
        batches = self._plan_batches(rows, sampling.max_tokens)
        logger.info("%s: %d samples in %d batches", self.name, len(rows), len(batches))
        for batch in batches:
            yield self._decode_batch(batch, sampling, progress)

    @torch.inference_mode()
    def _decode_batch(
        self, rows: list[_Row], sampling: SamplingParams, progress: Callable[[int], Any] | None
    ) -> list[Completion]:
        dev = self.device
        width = max(len(r.prompt_ids) for r in rows)
        # Any id works as padding: padded positions are masked out and never attended to.
        pad_id = self.tokenizer.pad_token_id
        pad_id = min(self.eos_ids) if pad_id is None else pad_id
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, width - len(row.prompt_ids) :] = torch.tensor(row.prompt_ids)
            mask[i, width - len(row.prompt_ids) :] = 1
        input_ids, mask = input_ids.to(dev), mask.to(dev)
        # Positions count real tokens only, so a row's positions do not depend on its padding.
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        uniforms = None
        if sampling.temperature > 0:
            # Drawn per batch, not per request list: max_tokens floats per row add up over 10k rows.
            # CPU generators give the same stream on every device.
            uniforms = torch.stack(
                [torch.rand(sampling.max_tokens, generator=torch.Generator().manual_seed(r.seed)) for r in rows]
            ).to(dev)
        cache = DynamicCache(config=self.model.config)
        active = list(rows)
        done: list[Completion] = []
        extra = {"logits_to_keep": 1} if self._keeps_last_logits else {}
        for step in range(sampling.max_tokens):
            out = self.model(
                input_ids=input_ids,
                attention_mask=mask,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
                **extra,
            )
            step_uniforms = uniforms[:, step] if uniforms is not None else None
            next_ids = _pick_tokens(out.logits[:, -1, :], sampling, step_uniforms)
            keep: list[int] = []
            finished = 0
            # .tolist() is the one host sync per step; it is needed anyway to test for EOS.
            for i, (row, tok) in enumerate(zip(active, next_ids.tolist())):
                row.tokens.append(tok)
                if tok in self.eos_ids or len(row.tokens) >= sampling.max_tokens:
                    done.append(self._completion(row))
                    finished += 1
                else:
                    keep.append(i)
            if finished and progress is not None:
                progress(finished)
            if not keep:
                break
            next_pos = positions[:, -1:] + 1
            if finished:
                # Prune finished rows everywhere, KV cache included, so later steps cost less.
                idx = torch.tensor(keep, device=dev)
                cache.batch_select_indices(idx)
                active = [active[i] for i in keep]
                next_ids, mask, next_pos = next_ids[idx], mask[idx], next_pos[idx]
                uniforms = uniforms[idx] if uniforms is not None else None
            input_ids = next_ids[:, None]
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
            positions = next_pos
        return done

    def _completion(self, row: _Row) -> Completion:
        stopped = row.tokens[-1] in self.eos_ids
        body = row.tokens[:-1] if stopped else row.tokens
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
