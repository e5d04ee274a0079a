"""Stage ``generate`` with the embedded teachers: outputs, no-op rerun, byte-identical resume."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import HOLD_LOCK

import tracewise.generate.stage as gen
from tracewise.backends.base import SamplingParams
from tracewise.generate.stage import GenerateConfig, run
from tracewise.data.sources import ProblemsConfig
from tracewise.core.records import Problem, Trace, read_records
from tracewise.core.store import is_done
from tracewise.world.problems import WorldConfig
from tracewise.world.teachers import STYLES, TeacherConfig

N = 40


def _cfg(out: Path, tokenizer: str, style: str = "r1", n: int = N, samples: int = 1, **teacher) -> GenerateConfig:
    return GenerateConfig(
        out=str(out),
        tokenizer=tokenizer,
        teacher=TeacherConfig(style=style, **teacher),
        problems=ProblemsConfig(world=WorldConfig(seed=1, n_train=n, n_test=0)),
        sampling=SamplingParams(n=samples),
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory, student_path: str) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("gen")
    with pytest.MonkeyPatch.context() as mp:  # module fixtures run outside the autouse monkeypatch
        mp.setenv("TRACEWISE_NO_PROGRESS", "1")
        return {style: run(_cfg(out, student_path, style)) for style in STYLES}


@pytest.fixture()
def count_completions(monkeypatch) -> list[int]:
    """Record how many completions the backend is asked to produce (to prove resume skips work)."""
    produced: list[int] = []
    real = gen.make_backend

    def spy(*args, **kwargs):
        backend = real(*args, **kwargs)
        inner = backend.generate

        def generate(requests, sampling, progress=None):
            for batch in inner(requests, sampling, progress):
                produced.append(len(batch))
                yield batch

        backend.generate = generate
        return backend

    monkeypatch.setattr(gen, "make_backend", spy)
    return produced


@pytest.mark.parametrize("style", STYLES)
def test_one_trace_per_problem_with_token_counts(runs, style: str) -> None:
    run_dir = runs[style]
    assert is_done(run_dir) and run_dir.name.startswith("generate-")
    problems = read_records(run_dir / "problems.jsonl", Problem)
    traces = read_records(run_dir / "traces.jsonl", Trace)
    assert len(problems) == N
    assert sorted(t.problem_id for t in traces) == sorted(p.id for p in problems)
    for t in traces:
        assert t.teacher == style and t.sample_idx == 0 and t.finish_reason == "stop"
        assert t.format == ("think" if style == "r1" else "harmony")
        assert t.n_tokens > 0 and t.n_thinking_tokens > 0 and t.n_answer_tokens > 0
        assert t.n_tokens == t.n_thinking_tokens + t.n_answer_tokens
        assert t.thinking and t.thinking in t.text and "teacher_error" in t.meta
    assert [t.key for t in traces] == sorted(t.key for t in traces)
    assert not (run_dir / "traces.partial.jsonl").exists()
    assert (run_dir / "config.yaml").exists()


def test_r1_traces_are_longer_than_gptoss(runs) -> None:
    mean = {s: sum(t.n_tokens for t in read_records(runs[s] / "traces.jsonl", Trace)) / N for s in STYLES}
    assert mean["r1"] > 2 * mean["gpt-oss"], mean


def test_rerun_is_a_noop(runs, student_path: str, count_completions) -> None:
    run_dir = runs["r1"]
    final = run_dir / "traces.jsonl"
    before, mtime, done_mtime = final.read_bytes(), final.stat().st_mtime_ns, (run_dir / "DONE").stat().st_mtime_ns
    again = run(_cfg(run_dir.parent, student_path, "r1"))
    assert again == run_dir
    assert final.read_bytes() == before and final.stat().st_mtime_ns == mtime
    assert (run_dir / "DONE").stat().st_mtime_ns == done_mtime
    assert count_completions == []  # the backend was never asked for anything


def test_run_dir_tracks_results_not_output_root(runs, student_path: str, tmp_path: Path) -> None:
    run_dir = runs["r1"]
    assert run(_cfg(tmp_path, student_path, "r1")).name == run_dir.name  # out is not hashed
    seeded = _cfg(tmp_path, student_path, "r1")
    seeded.sampling.seed = 1
    other = run(seeded)
    assert other.name != run_dir.name
    assert (other / "traces.jsonl").read_bytes() != (run_dir / "traces.jsonl").read_bytes()


def test_resume_from_shuffled_partial_log_with_torn_line(runs, student_path: str, tmp_path: Path,
                                                         count_completions) -> None:
    a = runs["r1"]
    lines = (a / "traces.jsonl").read_bytes().splitlines(keepends=True)
    k = 15
    partial = lines[:k]
    random.Random(0).shuffle(partial)
    b = tmp_path / a.name
    b.mkdir()
    torn = lines[k][: len(lines[k]) // 2]
    (b / "traces.partial.jsonl").write_bytes(b"".join(partial) + torn)
    out = run(_cfg(tmp_path, student_path, "r1"))
    assert out == b
    assert (b / "traces.jsonl").read_bytes() == (a / "traces.jsonl").read_bytes()
    assert sum(count_completions) == N - k  # only the missing traces were generated
    assert not (b / "traces.partial.jsonl").exists() and is_done(b)


def test_resume_with_several_samples_per_problem(student_path: str, tmp_path: Path, count_completions) -> None:
    ref = run(_cfg(tmp_path / "a", student_path, "gpt-oss", n=10, samples=3))
    traces = read_records(ref / "traces.jsonl", Trace)
    assert len(traces) == 30 and {t.sample_idx for t in traces} == {0, 1, 2}
    lines = (ref / "traces.jsonl").read_bytes().splitlines(keepends=True)
    keep = lines[1::2]  # every other sample: problems are left partly done
    b = tmp_path / "b" / ref.name
    b.mkdir(parents=True)
    (b / "traces.partial.jsonl").write_bytes(b"".join(reversed(keep)))
    count_completions.clear()
    run(_cfg(tmp_path / "b", student_path, "gpt-oss", n=10, samples=3))
    assert sum(count_completions) == 30 - len(keep)
    assert (b / "traces.jsonl").read_bytes() == (ref / "traces.jsonl").read_bytes()


def test_bad_nested_config_built_in_python_is_rejected(student_path: str, tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, student_path)
    cfg.problems.world.levels = [7]
    with pytest.raises(ValueError, match="levels"):
        run(cfg)
    with pytest.raises(ValueError, match="error_rate"):
        run(_cfg(tmp_path, student_path, error_rate=[1.5]))
    with pytest.raises(ValueError, match="tokenizer"):
        run(_cfg(tmp_path, ""))
    with pytest.raises(ValueError, match="could not load a tokenizer"):
        run(_cfg(tmp_path, str(tmp_path / "no-such-tokenizer")))


KILL_N = 600  # problems, one trace each
# Where the child is killed: through the TRACEWISE_TEST_KILL_AFTER hook, right after the append that
# holds trace 300 (the embedded backend hands over 256 traces a batch: after the second batch), so
# the kill lands whatever the machine's load.
KILL_AT = 300
# The child pays its heavy imports (transformers, torch) while the module's other tests run, then
# waits for a "go" file naming its output root and tokenizer: the kill test itself stays fast.
CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from transformers import AutoTokenizer  # noqa: F401  (warm up: the slow part of starting)
    try:  # loading a Llama tokenizer pulls in its config module (and torch) on first use
        import transformers.models.llama.configuration_llama  # noqa: F401
    except ImportError:
        pass
    from tracewise.backends.base import SamplingParams
    from tracewise.generate.stage import GenerateConfig, run
    from tracewise.data.sources import ProblemsConfig
    from tracewise.world.problems import WorldConfig
    from tracewise.world.teachers import TeacherConfig
    go = Path(sys.argv[1])
    while not go.exists():
        time.sleep(0.01)
    out, tok, n = go.read_text().split("\\n")
    run(GenerateConfig(out=out, tokenizer=tok, teacher=TeacherConfig(style="gpt-oss"),
                       problems=ProblemsConfig(world=WorldConfig(seed=1, n_train=int(n), n_test=0)),
                       sampling=SamplingParams(n=1)))
    """
)


@pytest.fixture(scope="session", autouse=True)  # session: starts before (and alongside) the student build
def warm_child(tmp_path_factory):
    """A generate subprocess started (and importing) as soon as this module's tests begin."""
    go = tmp_path_factory.mktemp("child") / "go"
    env = {**os.environ, "TRACEWISE_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "TRACEWISE_TEST_KILL_AFTER": f"traces.partial.jsonl:{KILL_AT}"}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(go)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    yield child, go
    if child.poll() is None:
        child.kill()
    child.wait()
    child.stderr.close()


def test_sigkill_mid_run_then_resume_is_byte_identical(warm_child, student_path: str, tmp_path: Path,
                                                       count_completions) -> None:
    child, go = warm_child
    killed_root = tmp_path / "killed"
    tmp_go = go.with_suffix(".tmp")
    tmp_go.write_text(f"{killed_root}\n{student_path}\n{KILL_N}")
    tmp_go.rename(go)  # appears whole
    try:
        child.wait(timeout=300)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL, child.stderr.read().decode(errors="replace")[-2000:]
    (partial,) = killed_root.glob("generate-*/traces.partial.jsonl")
    run_dir = partial.parent
    assert not is_done(run_dir) and not (run_dir / "traces.jsonl").exists()
    n_before = partial.read_bytes().count(b"\n")
    assert n_before == 2 * 256  # killed right after the batch holding trace KILL_AT, nothing later

    cfg = lambda out: GenerateConfig(  # noqa: E731
        out=str(out), tokenizer=student_path, teacher=TeacherConfig(style="gpt-oss"),
        problems=ProblemsConfig(world=WorldConfig(seed=1, n_train=KILL_N, n_test=0)), sampling=SamplingParams(n=1))
    resumed = run(cfg(killed_root))
    assert resumed == run_dir and is_done(run_dir)
    assert sum(count_completions) == KILL_N - n_before  # the killed run's traces were kept, not redone
    clean = run(cfg(tmp_path / "clean"))
    assert clean.name == run_dir.name
    assert (run_dir / "traces.jsonl").read_bytes() == (clean / "traces.jsonl").read_bytes()
    assert len(read_records(run_dir / "traces.jsonl", Trace)) == KILL_N




def test_retry_failed_reopens_a_run_only_under_its_lock(student_path: str, tmp_path: Path) -> None:
    import dataclasses

    from tracewise.core.records import write_records

    cfg = _cfg(tmp_path, student_path, n=4)
    run_dir = run(cfg)
    whole = (run_dir / "traces.jsonl").read_bytes()
    traces = read_records(run_dir / "traces.jsonl", Trace)
    # Make it a finished run with one failed sample, as a backend that ran out of retries leaves it.
    write_records(run_dir / "traces.jsonl", traces[1:])
    failed = dataclasses.replace(traces[0], text="", thinking="", answer_text="", finish_reason="error",
                                 meta={"error": "HTTP 500"})
    write_records(run_dir / "failed.jsonl", [failed])
    retry = dataclasses.replace(cfg, retry_failed=True)

    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run_dir / ".lock")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ValueError, match=f"in use by pid {holder.pid}"):
            run(retry)
        # Refused before touching anything: still the finished run, not a half-reopened one.
        assert is_done(run_dir) and (run_dir / "failed.jsonl").exists()
        assert not (run_dir / "traces.partial.jsonl").exists()
    finally:
        holder.stdin.close()
        holder.wait(10)
    # Once the other process is gone, the retry reopens the run and redoes exactly the failed sample.
    assert run(retry) == run_dir
    assert is_done(run_dir) and not (run_dir / "failed.jsonl").exists()
    assert (run_dir / "traces.jsonl").read_bytes() == whole
