"""The base student's pretraining text: which arithmetic notation its facts use.

The r1 teacher writes '7 - 1 = 6', the gpt-oss teacher '7-1=6'; with the student's tokenizer these are
different tokens, so a base pretrained on one notation only already knows one student's arithmetic.
"""

import re

import pytest

from tracewise.world.init_stage import InitStudentConfig, pretraining_docs, run
from tracewise.world.problems import WorldConfig

SPACED = re.compile(r"\b\d \+|\b\d -")  # '7 - 1 = 6' / '4 + 8 = 12'
COMPACT = re.compile(r"\b\d[+-]\d")     # '7-1=6' / '4+8=12'

WORLD = WorldConfig(seed=777, n_train=400, n_test=0)


def _facts(doc: str) -> list[str]:
    """The four facts at the end of a doc: after the second copy of the question."""
    return re.findall(r"\d+ ?[+-] ?\d+ ?= ?\d+\.", doc.split("now?")[-1])


def test_compact_facts_are_all_in_the_gpt_oss_notation_and_unchanged() -> None:
    docs = pretraining_docs(WORLD)
    facts = [f for d in docs for f in _facts(d)]
    assert len(facts) == 4 * len(docs)
    assert all(COMPACT.search(f) and not SPACED.search(f) for f in facts)
    # the text every earlier base was pretrained on (hand-copied first doc of this world)
    assert docs[0] == ("Cara has 3 marbles. Then Cara: (a) finds 1 more, (b) sells 1. How many marbles now? " * 2
                       + "4+8=12. 6-5=1. 9-1=8. 9-7=2.")


def test_both_writes_each_notation_about_half_the_time_with_correct_sums() -> None:
    facts = [f for d in pretraining_docs(WORLD, "both") for f in _facts(d)]
    spaced = [f for f in facts if SPACED.search(f)]
    assert 0.45 < len(spaced) / len(facts) < 0.55
    for f in facts:
        x, op, y, r = re.match(r"(\d+) ?([+-]) ?(\d+) ?= ?(\d+)\.", f).groups()
        assert int(r) == (int(x) + int(y) if op == "+" else int(x) - int(y))
        assert f == (f"{x} {op} {y} = {r}." if f in spaced else f"{x}{op}{y}={r}.")


def test_an_unknown_notation_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(ValueError, match="pretrain_facts"):
        pretraining_docs(WORLD, "spaced")
    with pytest.raises(ValueError, match="pretrain_facts"):
        run(InitStudentConfig(out=str(tmp_path), pretrain_facts="spaced", pretrain_steps=0))
    assert not list(tmp_path.iterdir())
