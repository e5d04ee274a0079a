"""Stage ``init-student``: build the embedded student (tokenizer + random tiny Llama) on disk.

The tokenizer is trained on world text written in *both* teacher styles, so neither style gets
cheaper tokens by construction; the token ratio between styles then reflects only their length.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from tracewise.config import doc
from tracewise.store import is_done, mark_done, save_config, stage_dir
from tracewise.tokens import student_completion
from tracewise.traces import parse_completion
from tracewise.world.problems import WorldConfig, generate_problems
from tracewise.world.student import StudentConfig, init_student
from tracewise.world.teachers import STYLES, TeacherConfig, write_trace

log = logging.getLogger(__name__)


def _corpus_world() -> WorldConfig:
    # A separate seed: the tokenizer never sees the training or test problems themselves.
    return WorldConfig(seed=12345, n_train=500, n_test=0)


@dataclass
class InitStudentConfig:
    """Build the tiny from-scratch student (``tracewise init-student``)."""

    out: str = doc("Root directory; writes <out>/student-<hash>/model/.", "runs", hash=False)
    student: StudentConfig = doc("Model and tokenizer sizes.", factory=StudentConfig)
    corpus_world: WorldConfig = doc("World used to write the tokenizer's training corpus.", factory=_corpus_world)


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


def model_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / "model"


def run(cfg: InitStudentConfig) -> Path:
    """Build and save the student; a no-op when it exists; returns the run dir (model in ``model/``)."""
    cfg.student.validate()
    run_dir = stage_dir(cfg.out, "student", cfg)
    if is_done(run_dir):
        log.info("init-student: %s is complete, nothing to do", run_dir)
        return run_dir
    save_config(run_dir, cfg)
    init_student(model_path(run_dir), student_corpus(cfg.corpus_world), cfg.student)
    mark_done(run_dir, {"model": "model"})
    return run_dir
