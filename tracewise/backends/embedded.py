"""The embedded backend: procedural teachers from ``tracewise.world`` behind the Backend protocol.

It lets ``generate`` run end to end on CPU with no model at all, producing traces in the exact
formats real teachers emit (R1 ``<think>`` text, gpt-oss harmony), so every later stage runs the
same code path it runs on real traces.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

from tracewise.backends.base import Completion, Request, SamplingParams
from tracewise.world.teachers import TeacherConfig, write_trace


class EmbeddedTeacherBackend:
    """Procedural teacher; ``n_tokens`` is left 0 because token counts are taken in the student tokenizer."""

    name = "embedded"

    def __init__(self, teacher: TeacherConfig | None = None, chunk: int = 256):
        self.teacher = teacher or TeacherConfig()
        self.teacher.validate()
        self.chunk = chunk

    def generate(
        self,
        requests: list[Request],
        sampling: SamplingParams,
        progress: Callable[[int], Any] | None = None,
    ) -> Iterator[list[Completion]]:
        sampling.validate()
        batch: list[Completion] = []
        for req in requests:
            if req.problem is None:
                raise ValueError(f"request {req.id}: the embedded teacher needs the world problem, not just text")
            for idx in req.sample_idxs if req.sample_idxs is not None else range(sampling.n):
                text, erred = write_trace(req.problem, self.teacher, sampling.seed, idx)
                batch.append(Completion(req.id, idx, text, 0, "stop", {"teacher_error": erred}))
                if len(batch) >= self.chunk:
                    if progress:
                        progress(len(batch))
                    yield batch
                    batch = []
        if batch:
            if progress:
                progress(len(batch))
            yield batch
