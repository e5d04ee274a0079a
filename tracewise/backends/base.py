"""The one protocol every generation backend implements.

A backend turns ``Request``s into ``Completion``s. Chat templates are applied by the backend's
own tokenizer (the thinking span is kept), token counts are in that tokenizer, and every sample is
seeded from ``(sampling.seed, request.id, sample_idx)`` so that a resumed run regenerates exactly
what an uninterrupted run would have produced.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol

from tracewise.core.config import doc
from tracewise.core.records import Problem
from tracewise.core.seeding import sample_seed  # noqa: F401  (re-exported: backends seed samples with it)


@dataclass
class SamplingParams:
    n: int = doc("Samples per request (per problem).", 1)
    temperature: float = doc("Sampling temperature (>= 0).", 0.6)
    top_p: float = doc("Nucleus sampling: keep the smallest token set with this much probability, in (0, 1].", 1.0)
    max_tokens: int = doc("New tokens per sample, thinking + answer.", 512)
    seed: int = doc("Sampling seed; each sample is seeded by (seed, request id, sample index).", 0)

    def validate(self, where: str = "sampling") -> None:
        """ValueError naming the first out-of-range field (``where`` prefixes it, e.g. ``eval.sampling``).
        Every backend calls this before generating, and every stage config on its own section."""
        if self.n < 1:
            raise ValueError(f"{where}.n must be >= 1, got {self.n}")
        if self.max_tokens < 1:
            raise ValueError(f"{where}.max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"{where}.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"{where}.top_p must be in (0, 1], got {self.top_p}")


@dataclass
class Request:
    """One prompt. ``messages`` (chat) or ``prompt`` (raw text, no template) must be set.

    ``prefix`` is assistant text already generated (used by test-time controls that continue a
    sample); ``problem`` lets procedural backends (embedded teachers) see the problem structure.
    """

    id: str
    messages: list[dict] | None = None
    prompt: str | None = None
    prefix: str = ""
    problem: Problem | None = None
    sample_idxs: list[int] | None = None  # which of 0..n-1 to produce (resume); None = all
    # Token ids of ``prefix`` in the backend's tokenizer (e.g. a cut of ``meta["token_ids"]``). A backend
    # that reads them (vllm) continues from prompt ids + these ids exactly instead of re-tokenising
    # ``text + prefix``; the others ignore them, so ``prefix`` must still hold the same text.
    prefix_ids: list[int] | None = None


@dataclass
class Completion:
    request_id: str
    sample_idx: int
    text: str  # generated text (without the prompt / prefix)
    n_tokens: int  # generated tokens, in the backend tokenizer
    finish_reason: str  # "stop" (end-of-turn) or "length" (hit max_tokens)
    # Backend extras. ``meta["token_ids"]`` (vllm): the generated ids, EOS included (tracewise.evaluate.controls
    # cuts and continues samples from them instead of re-tokenising the text).
    meta: dict = field(default_factory=dict)
    # How long it took: {"latency_s", "ttft_s" (None when unknown), "clock"} (see core.records.SampleTiming).
    # Kept out of meta (generate copies meta into traces) and out of equality: it is a measurement.
    timing: dict | None = field(default=None, compare=False)


class Backend(Protocol):
    name: str

    def generate(
        self,
        requests: list[Request],
        sampling: SamplingParams,
        progress: Callable[[int], Any] | None = None,
    ) -> Iterator[list[Completion]]:
        """Yield batches of completions as they finish (so callers can append them to the store).

        ``progress(k)`` is called with the number of newly finished completions.
        """
        ...
