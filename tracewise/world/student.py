"""The embedded student: a tiny Llama with a small byte-level BPE tokenizer, saved like any HF model.

Everything downstream (SFT, eval, serve) loads it with ``AutoModelForCausalLM`` /
``AutoTokenizer.from_pretrained(path)``, so the embedded default exercises the same code as a real
base model. Digits are split one per token (as in Llama-3/Qwen tokenizers): a tiny model can learn
digit-wise arithmetic, and token counts of numbers do not depend on merges.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from tracewise.core.config import doc

log = logging.getLogger(__name__)

PAD, BOS, EOS, USER, ASSISTANT = "<|pad|>", "<|begin|>", "<|end|>", "<|user|>", "<|assistant|>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
SPECIAL_TOKENS = [PAD, BOS, EOS, USER, ASSISTANT, THINK_OPEN, THINK_CLOSE]

# The thinking span is part of the assistant content and is kept verbatim (unlike templates that
# strip earlier turns' reasoning): the student must learn to produce it. {% generation %} marks the
# assistant span so TRL's assistant-only loss also works.
CHAT_TEMPLATE = (
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'user' or m['role'] == 'system' -%}<|user|>{{ m['content'] }}<|end|>"
    "{%- elif m['role'] == 'assistant' -%}<|assistant|>{% generation %}{{ m['content'] }}<|end|>{% endgeneration %}"
    "{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)


@dataclass
class StudentConfig:
    """Architecture of the tiny from-scratch student."""

    hidden_size: int = doc("Model width.", 128)
    num_layers: int = doc("Transformer layers.", 2)
    num_heads: int = doc("Attention heads.", 4)
    intermediate_size: int = doc("MLP width.", 512)
    max_position_embeddings: int = doc("Longest sequence the student handles.", 512)
    vocab_size: int = doc("Target BPE vocabulary size (bytes + merges + specials).", 400)
    seed: int = doc("Seed for weight initialisation.", 0)

    def validate(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError("student.hidden_size must be divisible by student.num_heads")
        if self.vocab_size < 300:
            raise ValueError("student.vocab_size must be >= 300 (256 bytes + specials + merges)")


def build_tokenizer(corpus: Iterable[str], vocab_size: int = 400):
    """Train a byte-level BPE tokenizer on ``corpus`` and wrap it as a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[USER, ASSISTANT, THINK_OPEN, THINK_CLOSE],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"  # generation pads on the left; the SFT collator pads itself
    return fast


def build_model(tokenizer, cfg: StudentConfig):
    """A randomly initialised Llama sized by ``cfg`` for ``tokenizer``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(cfg.seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def init_student(out_dir: str | Path, corpus: Iterable[str], cfg: StudentConfig) -> Path:
    """Train the tokenizer, build the model, and ``save_pretrained`` both into ``out_dir``."""
    out_dir = Path(out_dir)
    tokenizer = build_tokenizer(corpus, cfg.vocab_size)
    model = build_model(tokenizer, cfg)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("student: %d parameters, vocab %d, saved to %s", n_params, len(tokenizer), out_dir)
    return out_dir


def pretrain(path: str | Path, docs: list[str], steps: int, *, batch_size: int = 32, lr: float = 3e-3,
             seed: int = 0) -> list[dict]:
    """Plain next-token pretraining of the saved student on ``docs``; saves in place.

    A short hand loop rather than a Trainer: it runs once per world, needs no checkpoints (it
    takes about a minute and the stage reruns it whole), and keeps init-student free of TRL.
    """
    import random

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tracewise.core.logs import progress_bar

    torch.manual_seed(seed)
    rng = random.Random(seed)
    tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)  # our own files: never remote code
    model = AutoModelForCausalLM.from_pretrained(str(path), trust_remote_code=False)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * max(0.05, 1 - s / steps))
    tok.padding_side = "right"
    history = []
    with progress_bar("pretrain base student", steps) as advance:
        for step in range(steps):
            batch = [tok.bos_token + d + tok.eos_token for d in rng.sample(docs, batch_size)]
            enc = tok(batch, return_tensors="pt", padding=True, add_special_tokens=False)
            labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
            loss = model(**enc, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
            if step % 10 == 0 or step == steps - 1:
                history.append({"step": step, "loss": round(loss.item(), 4)})
            advance(1)
    tok.padding_side = "left"
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    log.info("pretrained base student: loss %.3f -> %.3f in %d steps", history[0]["loss"], history[-1]["loss"], steps)
    return history
