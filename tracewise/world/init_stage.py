"""Stage ``init-student``: build the embedded *base* student (tokenizer + tiny Llama) on disk.

The tokenizer is trained on world text written in *both* teacher styles, so neither style gets
cheaper tokens by construction; the token ratio between styles then reflects only their length.

The model is then briefly pretrained, with plain next-token loss, on style-neutral text: each
problem statement written twice, followed by a few arithmetic facts. Why: the paper distils into
*base* models that can already read and add. Measured while sizing the quickstart (600 SFT steps,
concise traces, greedy accuracy on 200 test problems): a random-init student reached 12-19%,
failing mostly at locating the k-th event in the question; the same student after 400 steps of
this pretraining reached 48%. No teacher trace of either style is in the pretraining text.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

from tracewise.core.config import doc
from tracewise.core.store import is_done, mark_done, save_config, stage_dir
from tracewise.core.threads import THREADS_HELP, use_threads
from tracewise.core.tokens import student_completion
from tracewise.core.text import parse_completion
from tracewise.world.problems import WorldConfig, generate_problems
from tracewise.world.student import StudentConfig, init_student, pretrain
from tracewise.world.teachers import STYLES, TeacherConfig, write_trace

log = logging.getLogger(__name__)


def _corpus_world() -> WorldConfig:
    # A separate seed: the tokenizer never sees the training or test problems themselves.
    return WorldConfig(seed=12345, n_train=500, n_test=0)


def _pretrain_world() -> WorldConfig:
    return WorldConfig(seed=777, n_train=20000, n_test=0)


@dataclass
class InitStudentConfig:
    """Build the tiny from-scratch student (``tracewise init-student``)."""

    out: str = doc("Root directory; writes <out>/student-<hash>/model/.", "runs", hash=False)
    student: StudentConfig = doc("Model and tokenizer sizes.", factory=StudentConfig)
    corpus_world: WorldConfig = doc("World used to write the tokenizer's training corpus.", factory=_corpus_world)
    pretrain_steps: int = doc("Steps of style-neutral base pretraining (0 = leave the model random).", 300)
    pretrain_world: WorldConfig = doc("World whose problem statements make the pretraining text.", factory=_pretrain_world)
    pretrain_facts: str = doc("Notation of the pretraining text's arithmetic facts: 'both' (each fact written as "
                              "'7-1=6.' or '7 - 1 = 6.' at random, the two teachers' notations equally often) or "
                              "'compact' (always '7-1=6.', the gpt-oss teacher's notation: a base that already knows "
                              "one student's arithmetic tokens; what runs before this option used).",
                              "compact", hash="nondefault")
    threads: int = doc(THREADS_HELP, 0, hash=False)


def student_corpus(world: WorldConfig) -> list[str]:
    """Questions plus both teachers' traces in the student's completion format."""
    corpus = []
    for p in generate_problems(world, "train"):
        corpus.append(p.question)
        for style in STYLES:
            text, _ = write_trace(p, TeacherConfig(style=style), world.seed)
            parsed = parse_completion(text)
            corpus.append(student_completion(parsed.thinking, parsed.answer))
    return corpus


PRETRAIN_FACTS = ("both", "compact")


def check_pretrain_facts(facts: str, where: str = "init-student") -> None:
    if facts not in PRETRAIN_FACTS:
        raise ValueError(f"{where}.pretrain_facts: expected one of {list(PRETRAIN_FACTS)}, got {facts!r}")


def pretraining_docs(world: WorldConfig, facts: str = "compact") -> list[str]:
    """Style-neutral text: a problem statement twice (so the model learns to read and copy it),
    then four single-digit facts (so it knows the arithmetic a base model would know).

    ``facts="compact"`` writes every fact as the gpt-oss teacher writes its arithmetic ('7-1=6'); the
    r1 teacher writes '7 - 1 = 6', other tokens for this tokenizer. ``"both"`` draws either notation
    per fact, so neither student starts with its own arithmetic tokens already learnt."""
    import random

    check_pretrain_facts(facts)
    rng = random.Random(world.seed)
    docs = []
    for p in generate_problems(world, "train"):
        out = []
        for _ in range(4):
            a, b = rng.randint(1, 9), rng.randint(1, 9)
            x, op, y, r = (a, "+", b, a + b) if rng.random() < 0.5 else (max(a, b), "-", min(a, b), abs(a - b))
            # the compact branch draws nothing more, so its text (and every base built before) is unchanged
            spaced = facts == "both" and rng.random() < 0.5
            out.append(f"{x} {op} {y} = {r}." if spaced else f"{x}{op}{y}={r}.")
        docs.append(f"{p.question} {p.question} {' '.join(out)}")
    return docs


def model_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / "model"


def run(cfg: InitStudentConfig) -> Path:
    """Build and save the student; a no-op when it exists; returns the run dir (model in ``model/``)."""
    cfg.student.validate()
    check_pretrain_facts(cfg.pretrain_facts)  # before the run dir exists
    run_dir = stage_dir(cfg.out, "student", cfg)
    if is_done(run_dir):
        log.info("init-student: %s is complete, nothing to do", run_dir)
        return run_dir
    cfg = replace(cfg, threads=use_threads(cfg.threads))  # the number it ran with, in config.yaml
    save_config(run_dir, cfg)
    path = init_student(model_path(run_dir), student_corpus(cfg.corpus_world), cfg.student)
    if cfg.pretrain_steps:
        docs = pretraining_docs(cfg.pretrain_world, cfg.pretrain_facts)
        history = pretrain(path, docs, cfg.pretrain_steps, seed=cfg.student.seed)
        (run_dir / "pretrain_log.json").write_text(__import__("json").dumps(history))
    mark_done(run_dir, {"model": "model"})
    return run_dir
