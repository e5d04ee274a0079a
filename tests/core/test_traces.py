"""Splitting completions into thinking and answer spans, for every format the teachers emit."""

from __future__ import annotations

import pytest

from tracewise.core.text import (
    THINK_CLOSE,
    THINK_OPEN,
    ParsedTrace,
    detect_format,
    parse_completion,
    parse_harmony_messages,
    render_student,
    strip_end_markers,
)

HARMONY = (
    "<|channel|>analysis<|message|>3+4=7. 7-2=5.<|end|>"
    "<|start|>assistant<|channel|>final<|message|>Answer: 5<|return|>"
)

# (completion text, expected thinking, expected answer, expected format, expected truncated)
PARSE_CASES = [
    ("<think>3+4=7. 7-2=5.</think>5<|end|>", "3+4=7. 7-2=5.", "5", "think", False),
    ("<think>\nadd them\n</think>\n\nSo the answer is \\boxed{5}.", "add them", "So the answer is \\boxed{5}.", "think", False),
    # R1-distill: the opening <think> was part of the prompt.
    ("Okay, 2+2=4.\n</think>\n\n\\boxed{4}<\uff5cend\u2581of\u2581sentence\uff5c>", "Okay, 2+2=4.", "\\boxed{4}", "think", False),
    ("<think>still working on it", "still working on it", "", "think", True),
    ("<think>still working<|end|>", "still working", "", "think", True),
    ("<think></think>7<|im_end|>", "", "7", "think", False),
    ("<think>a</think>b</think>c", "a", "b</think>c", "think", False),
    (HARMONY, "3+4=7. 7-2=5.", "Answer: 5", "harmony", False),
    ("<|start|>assistant" + HARMONY, "3+4=7. 7-2=5.", "Answer: 5", "harmony", False),
    # Servers usually strip the stop token, so a final message may simply run to the end.
    ("<|channel|>analysis<|message|>think<|end|><|start|>assistant<|channel|>final<|message|>42", "think", "42", "harmony", False),
    (
        "<|channel|>analysis<|message|>need a tool<|end|>"
        "<|start|>assistant<|channel|>commentary to=functions.calc <|constrain|>json<|message|>{\"x\": 1}<|call|>"
        "<|start|>assistant<|channel|>final<|message|>1<|return|>",
        "need a tool\n{\"x\": 1}",
        "1",
        "harmony",
        False,
    ),
    ("<|channel|>analysis<|message|>3+4=7, then", "3+4=7, then", "", "harmony", True),
    ("analysis3+4=7.assistantfinalAnswer: 7", "3+4=7.", "Answer: 7", "harmony", False),
    ("We add 3 and 4 to get \\boxed{7}.", "", "We add 3 and 4 to get \\boxed{7}.", "plain", False),
    ("7</s>", "", "7", "plain", False),
    ("", "", "", "plain", False),
]


@pytest.mark.parametrize("text,thinking,answer,fmt,truncated", PARSE_CASES)
def test_parse_completion_auto(text: str, thinking: str, answer: str, fmt: str, truncated: bool) -> None:
    assert parse_completion(text) == ParsedTrace(thinking, answer, fmt, truncated)


@pytest.mark.parametrize("text,thinking,answer,fmt,truncated", PARSE_CASES)
def test_explicit_format_matches_auto(text: str, thinking: str, answer: str, fmt: str, truncated: bool) -> None:
    assert parse_completion(text, fmt) == parse_completion(text)


@pytest.mark.parametrize(
    "text,fmt",
    [("just an answer", "think"), ("just an answer", "harmony"), ("<think>x</think>y", "harmony")],
)
def test_explicit_format_mismatch_names_the_format(text: str, fmt: str) -> None:
    with pytest.raises(ValueError, match=f"'{fmt}'"):
        parse_completion(text, fmt)


def test_plain_format_takes_everything_as_answer() -> None:
    assert parse_completion("<think>x</think>y", "plain") == ParsedTrace("", "<think>x</think>y", "plain", False)


@pytest.mark.parametrize("bad", ["json", "", "THINK"])
def test_unknown_format_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match="unknown completion format"):
        parse_completion("x", bad)


def test_non_string_text_rejected() -> None:
    with pytest.raises(ValueError, match="must be a str"):
        parse_completion(None)  # type: ignore[arg-type]


def test_detect_format() -> None:
    assert detect_format(HARMONY) == "harmony"
    assert detect_format("a</think>b") == "think"
    assert detect_format("The answer is 5.") == "plain"


def test_strip_end_markers_repeats_and_keeps_inner_markers() -> None:
    assert strip_end_markers("5 <|end|>\n<|endoftext|>  ") == "5"
    assert strip_end_markers("a<|end|>b") == "a<|end|>b"


def test_parse_harmony_messages_structured() -> None:
    msgs = [
        {"role": "user", "content": "What is 3+4-2?"},
        {"role": "assistant", "channel": "analysis", "content": "3+4=7."},
        {"role": "assistant", "channel": "commentary", "content": [{"type": "text", "text": "7-2=5."}]},
        {"role": "assistant", "channel": "final", "content": "Answer: 5"},
    ]
    assert parse_harmony_messages(msgs) == ParsedTrace("3+4=7.\n7-2=5.", "Answer: 5", "harmony", False)


def test_parse_harmony_messages_without_final_is_truncated() -> None:
    msgs = [{"role": "assistant", "channel": "analysis", "content": "thinking..."}]
    assert parse_harmony_messages(msgs) == ParsedTrace("thinking...", "", "harmony", True)


def test_parse_harmony_messages_without_channel_is_final() -> None:
    assert parse_harmony_messages([{"role": "assistant", "content": "5"}]).answer == "5"


@pytest.mark.parametrize(
    "msgs,match",
    [
        ("not a list", "must be a list"),
        (["oops"], "message 0 must be a dict"),
        ([{"role": "assistant", "content": 5}], "content of type int"),
    ],
)
def test_parse_harmony_messages_rejects_bad_input(msgs: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_harmony_messages(msgs)  # type: ignore[arg-type]


def test_render_student_round_trips_through_parse() -> None:
    text = render_student("3+4=7. 7-2=5.", "5")
    assert text == f"{THINK_OPEN}3+4=7. 7-2=5.{THINK_CLOSE}5"
    assert parse_completion(text + "<|end|>") == ParsedTrace("3+4=7. 7-2=5.", "5", "think", False)


def test_render_student_rejects_close_tag_in_thinking() -> None:
    with pytest.raises(ValueError, match="must not contain"):
        render_student("a</think>b", "5")


def test_huge_inputs_parse_quickly() -> None:
    # Unterminated markers repeated many times must not make the regexes quadratic.
    big = "<|channel|>final<|message|>" * 20000
    assert parse_completion(big).format == "harmony"
    assert parse_completion("<think>" + "x" * 1_000_000).truncated
    assert parse_completion("analysis" + "y" * 500_000).format == "plain"
