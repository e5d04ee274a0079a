"""configs/paper/chat_template.jinja with real byte-level BPE tokenizers (built here with `tokenizers`,
using the GPT-2 and Llama-3/Tekken pre-tokenizer regexes of the paper's students' families).

TRL's completion-only loss needs the templated prompt to be a TOKEN prefix of prompt + completion,
and eval prompts end where training prompts ended. A template whose generation prompt ends in a
space ("Assistant: ") breaks both: BPE merges that space into the completion's first word
(" <", " The"), so the prompt alone ends in a lone space token the model never saw in training.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = (REPO / "configs/paper/chat_template.jinja").read_text()
# The pre-tokenizer regexes of GPT-2 and of Llama-3 / Mistral Tekken (Mistral-Nemo) style tokenizers.
GPT2 = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
LLAMA3 = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
          r"""\s*[\r\n]+|\s+(?!\S)|\s+""")
COMPLETIONS = [  # what curate's datasets hold: the student format, R1 and gpt-oss styles, and plain text
    "<think>\nOkay, 2 + 3 = 5. Wait, let me check: yes.\n</think>\n\nThe answer is \\boxed{5}.",
    "<think>2+3=5.</think>\\boxed{5}",
    "The answer is 5.",
    "5",
]
PROMPTS = ["What is 2 + 3?", "Compute $7 \\times 6$.", "How many primes are below 10?"]


def _bpe(pattern: str):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    corpus = [f"User: {p}\n\nAssistant: {c}" for p in PROMPTS for c in COMPLETIONS] * 20
    corpus += ["Assistant: <think> Assistant: The Assistant:\n<think> the answer is"] * 50
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    assert fast(" <", add_special_tokens=False)["input_ids"].__len__() == 1  # the merge that bites exists
    return fast


def _mismatches(tok, template: str) -> list[tuple[str, str]]:
    bad = []
    for prompt in PROMPTS:
        for completion in COMPLETIONS:
            user = [{"role": "user", "content": prompt}]
            p = tok.apply_chat_template(user, chat_template=template, add_generation_prompt=True, tokenize=False)
            full = tok.apply_chat_template(user + [{"role": "assistant", "content": completion}],
                                           chat_template=template, tokenize=False)
            assert full.startswith(p)  # as text it always is
            p_ids = tok(p, add_special_tokens=False)["input_ids"]
            full_ids = tok(full, add_special_tokens=False)["input_ids"]
            if full_ids[:len(p_ids)] != p_ids:
                bad.append((prompt, completion))
    return bad


@pytest.mark.parametrize("pattern", [GPT2, LLAMA3], ids=["gpt2-regex", "llama3-regex"])
def test_the_prompt_is_a_token_prefix_of_prompt_plus_completion(pattern):
    tok = _bpe(pattern)
    assert _mismatches(tok, TEMPLATE) == []
    # The shape of the bug it fixes: a generation prompt ending in a space is not a token prefix.
    spaced = TEMPLATE.replace("Assistant:\\n", "Assistant: ")
    assert spaced != TEMPLATE and _mismatches(tok, spaced)


def test_template_ends_the_assistant_turn_with_eos_and_adds_no_tokens():
    tok = _bpe(GPT2)
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "5"}]
    text = tok.apply_chat_template(msgs, chat_template=TEMPLATE, tokenize=False)
    assert text.startswith("<s>") and text.endswith("5</s>")
    assert "<think>" not in tok.get_vocab()  # no new special tokens: no embedding resize for base models
