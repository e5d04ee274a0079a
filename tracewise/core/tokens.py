"""Token accounting in the *student* tokenizer (never characters).

Every stage that reports length calls ``span_counts`` so that a teacher trace, an SFT example and a
generated sample of the same text have the same count.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

log = logging.getLogger(__name__)

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


@functools.lru_cache(maxsize=8)
def load_tokenizer(path: str, trust_remote_code: bool = False):
    """Load a tokenizer by local path or HF id; a clear error if it is not one."""
    from transformers import AutoTokenizer

    try:
        from tracewise.core.model_files import resolve_model_file  # a GGUF file/package → its cached HF dir

        return AutoTokenizer.from_pretrained(resolve_model_file(str(path)), trust_remote_code=trust_remote_code)
    except Exception as e:  # transformers raises many types for "not a tokenizer"
        raise ValueError(f"{path}: could not load a tokenizer ({type(e).__name__}: {e})") from None


def n_tokens(tokenizer, text: str) -> int:
    if not text:
        return 0
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def span_counts(tokenizer, thinking: str, answer: str, *, closed: bool = True, eos: bool = True) -> tuple[int, int, int]:
    """``(total, thinking, answer)`` tokens of ``<think>thinking</think>answer<eos>`` in ``tokenizer``.

    The think markers count as thinking tokens and the EOS as an answer token, matching how a
    generated sample is split at the ``</think>`` token.
    """
    think_text = THINK_OPEN + thinking + (THINK_CLOSE if closed else "")
    n_think = n_tokens(tokenizer, think_text)
    n_ans = n_tokens(tokenizer, answer) + (1 if eos and closed else 0)
    return n_think + n_ans, n_think, n_ans


def student_completion(thinking: str, answer: str) -> str:
    """The text a student is trained to produce: thinking span kept, then the visible answer."""
    return f"{THINK_OPEN}{thinking.strip()}{THINK_CLOSE}{answer.strip()}"


def tokenizer_path_ok(path: str | Path) -> bool:
    return Path(path).exists() and any(Path(path).glob("tokenizer*"))
