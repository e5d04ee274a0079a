"""Split a model completion into its thinking span and its visible answer span.

Token cost is reported separately for thinking and answer, and curated training text is
re-rendered in the student's own format, so every stage needs the same split. This module is
pure text: token counting happens later, in the student tokenizer, on the spans returned here.

Three completion formats are understood:

* ``think``   -- ``<think>...</think>answer`` (R1 style). R1-distill chat templates put the opening
  ``<think>`` in the prompt, so the completion may start mid-thought and only hold ``</think>``.
* ``harmony`` -- gpt-oss: ``<|channel|>analysis<|message|>...<|end|>`` messages followed by a
  ``final`` channel message; ``commentary`` (tool preambles) counts as thinking.
* ``plain``   -- no markers at all: the whole text is the answer (an ordinary CoT with ``\\boxed``).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

logger = logging.getLogger(__name__)

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
FORMATS = ("think", "harmony", "plain")

# End-of-turn markers that generation servers may leave at the end of the text. They are not
# part of the answer and would otherwise be counted as answer tokens twice (once as EOS).
END_MARKERS = (
    "<|end|>",
    "<|im_end|>",
    "</s>",
    "<|return|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<\uff5cend\u2581of\u2581sentence\uff5c>",  # DeepSeek-R1's "<｜end▁of▁sentence｜>"
)

# A rendered harmony message: header up to <|message|>, then content up to a terminator. The
# terminator is optional at the very end because servers usually strip the stop token
# (<|return|>) from the returned text; a final message cut off that way is still complete.
_HARMONY_MESSAGE = re.compile(
    r"<\|channel\|>(?P<header>[^<]*(?:<\|constrain\|>[^<]*)?)<\|message\|>"
    r"(?P<content>.*?)(?P<term><\|end\|>|<\|return\|>|<\|call\|>|\Z)",
    re.DOTALL,
)
# What harmony looks like after a server decoded it with skip_special_tokens=True: the
# channel names survive, glued to the text ("analysis...assistantfinal...").
_HARMONY_STRIPPED = re.compile(r"\A\s*analysis(?P<thinking>.*?)assistantfinal(?P<answer>.*)\Z", re.DOTALL)


@dataclass
class ParsedTrace:
    """A completion split into spans. ``truncated`` means the answer span never started."""

    thinking: str
    answer: str
    format: str  # one of FORMATS
    truncated: bool


def strip_end_markers(text: str) -> str:
    """Remove trailing end-of-turn markers (and the whitespace around them) from ``text``."""
    out = text.rstrip()
    changed = True
    while changed:
        changed = False
        for marker in END_MARKERS:
            if out.endswith(marker):
                out = out[: -len(marker)].rstrip()
                changed = True
    return out


def detect_format(text: str) -> str:
    """Guess which of FORMATS ``text`` is written in, from the markers it contains."""
    if "<|channel|>" in text or _HARMONY_STRIPPED.match(text):
        return "harmony"
    if THINK_OPEN in text or THINK_CLOSE in text:
        return "think"
    return "plain"


def _parse_think(text: str) -> ParsedTrace:
    close = text.find(THINK_CLOSE)
    if close < 0:
        open_at = text.find(THINK_OPEN)
        if open_at < 0:
            raise ValueError(f"expected format 'think' (a {THINK_OPEN} or {THINK_CLOSE} tag), found neither")
        # The model was still thinking when generation stopped: everything is thinking.
        thinking = text[:open_at] + text[open_at + len(THINK_OPEN) :]
        return ParsedTrace(strip_end_markers(thinking).strip(), "", "think", True)
    before, after = text[:close], text[close + len(THINK_CLOSE) :]
    # Without an opening tag (R1-distill: it was in the prompt) the whole prefix is thinking.
    # Text before an opening tag is kept in the thinking span so no generated tokens vanish.
    thinking = before.replace(THINK_OPEN, "", 1)
    return ParsedTrace(thinking.strip(), strip_end_markers(after).strip(), "think", False)


def _parse_harmony(text: str) -> ParsedTrace:
    # The header is the channel name, possibly followed by " to=functions.x <|constrain|>json".
    messages = [
        {"channel": (m.group("header").split() or [""])[0], "content": m.group("content")}
        for m in _HARMONY_MESSAGE.finditer(text)
    ]
    if not messages:
        stripped = _HARMONY_STRIPPED.match(text)
        if stripped is None:
            raise ValueError("expected format 'harmony' (<|channel|>...<|message|> messages), found none")
        thinking, answer = stripped.group("thinking"), stripped.group("answer")
        return ParsedTrace(thinking.strip(), strip_end_markers(answer).strip(), "harmony", False)
    return _spans_from_channels(messages)


def _spans_from_channels(messages: list[dict]) -> ParsedTrace:
    """Join analysis/commentary messages into thinking; the last final message is the answer."""
    thinking_parts: list[str] = []
    final: str | None = None
    for msg in messages:
        content = strip_end_markers(msg["content"]).strip()
        if msg["channel"] == "final":
            final = content
        elif content:
            thinking_parts.append(content)
    thinking = "\n".join(thinking_parts)
    if final is None:
        return ParsedTrace(thinking, "", "harmony", True)
    return ParsedTrace(thinking, final, "harmony", False)


def parse_harmony_messages(msgs: list[dict]) -> ParsedTrace:
    """Split harmony messages in structured form (``{"role", "channel", "content"}`` dicts).

    Only assistant messages are used. An assistant message without a channel is taken as the
    final answer (plain chat APIs omit it). ``content`` may be a string or a list of
    ``{"type": "text", "text": ...}`` parts as openai-harmony emits. No final message means the
    generation stopped while thinking, so the result is marked truncated.
    """
    if not isinstance(msgs, list):
        raise ValueError(f"harmony messages must be a list of dicts, got {type(msgs).__name__}")
    flat: list[dict] = []
    for i, msg in enumerate(msgs):
        if not isinstance(msg, dict):
            raise ValueError(f"harmony message {i} must be a dict, got {type(msg).__name__}")
        if msg.get("role", "assistant") != "assistant":
            continue
        content = msg.get("content", "")
        if isinstance(content, list):
            content = "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
        if not isinstance(content, str):
            kind = type(content).__name__
            raise ValueError(f"harmony message {i} has content of type {kind}, expected str")
        flat.append({"channel": msg.get("channel") or "final", "content": content})
    return _spans_from_channels(flat)


def _parse_plain(text: str) -> ParsedTrace:
    return ParsedTrace("", strip_end_markers(text).strip(), "plain", False)


_PARSERS = {"think": _parse_think, "harmony": _parse_harmony, "plain": _parse_plain}


def parse_completion(text: str, fmt: str = "auto") -> ParsedTrace:
    """Split ``text`` into thinking and answer spans.

    ``fmt`` is ``"auto"`` (detect from markers) or one of FORMATS; an explicit format that the
    text does not match raises ValueError naming it. Both spans are whitespace-stripped and the
    answer loses any trailing end-of-turn marker. A thinking span that never closed (unclosed
    ``<think>``, harmony without a final message) yields ``truncated=True`` and an empty answer.
    Note that an R1-distill completion cut off before ``</think>`` carries no marker at all and
    is therefore indistinguishable from plain text; the caller's finish_reason covers that.
    """
    if not isinstance(text, str):
        raise ValueError(f"completion text must be a str, got {type(text).__name__}")
    if fmt == "auto":
        fmt = detect_format(text)
    elif fmt not in _PARSERS:
        raise ValueError(f"unknown completion format {fmt!r}; expected 'auto' or one of {FORMATS}")
    return _PARSERS[fmt](text)


def render_student(thinking: str, answer: str) -> str:
    """The student completion text (without EOS) for the given spans."""
    if THINK_CLOSE in thinking:
        # A second </think> inside the thinking would make the student's own parse split early.
        raise ValueError(f"thinking span must not contain {THINK_CLOSE!r}")
    return f"{THINK_OPEN}{thinking}{THINK_CLOSE}{answer}"
