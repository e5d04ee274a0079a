"""Kill -9, rerun the same command: the artifacts equal an uninterrupted run's.

Every pipeline stage (generate with the embedded, the hf and the openai backend, verify, curate,
train sft, train rl, eval) runs as the real CLI command in a child process, is SIGKILLed, and is
rerun until it finishes. The default suite kills at chosen points through the
``TRACEWISE_TEST_KILL_AFTER`` hook (after the N-th record of a given file, the N-th training step or
checkpoint, the N-th curated dataset), so every kill lands whatever the machine's load; ``-m slow``
adds kills at random moments of the run time. Then:

* record stages: every file of the run directory is byte-identical to the uninterrupted run's
  (so no record is duplicated, lost or changed);
* training stages: the same steps were trained (none repeated or skipped: resumed from the last
  complete checkpoint with the same data order), and losses/rewards and final weights agree
  within a small tolerance.

After a kill, the append log's last line is also cut at a random byte (what a kill in the middle
of a multi-syscall write, or a power cut, leaves behind), so torn-line recovery is exercised on
every seed rather than only when the kill happens to land inside ``write()``.

The openai backend runs against a local OpenAI-compatible server (``tests/fault_server.py``) that
answers a chosen number of requests and then holds the rest: the child has exactly that many records
on disk when it is killed, however fast or loaded the machine is.

Speed: children are forked from one warm server that has already imported torch, transformers,
TRL and tracewise, so a kill/rerun costs the stage's own work, not 10 s of imports.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from fault_server import FaultServer

SERVER = textwrap.dedent(
    """
    import json, os, sys, time, traceback
    import torch
    torch.set_num_threads(1)
    import datasets, transformers, trl  # noqa: F401  (the slow imports, paid once)
    import tracewise.cli, tracewise.generate.stage, tracewise.verify.stage, tracewise.curate.stage, tracewise.evaluate.stage
    import tracewise.train.sft, tracewise.train.rl, tracewise.backends.hf, tracewise.backends.embedded  # noqa
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        t0 = time.monotonic()
        pid = os.fork()
        if pid == 0:
            os.environ.update(job.get("env", {}))  # e.g. the TRACEWISE_TEST_KILL_AFTER kill hook
            fd = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            code = 0
            try:
                tracewise.cli.app(args=job["argv"], prog_name="tracewise")
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except BaseException:
                traceback.print_exc()
                code = 1
            sys.stdout.flush(); sys.stderr.flush()
            os._exit(code)
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"status": status, "secs": time.monotonic() - t0}), flush=True)
    """
)


class Server:
    """Forks CLI commands from a warm interpreter; the test can SIGKILL a command by pid."""

    def __init__(self, log_dir: Path):
        env = {**os.environ, "TRACEWISE_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=env, text=True, bufsize=1)
        self.log_dir = log_dir
        self.n = 0

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"kill-resume server died (exit code {self.proc.poll()})")
        return json.loads(line)

    def wait_ready(self) -> None:
        assert self._read() == {"ready": True}

    def run(self, argv: list[str], kill_after: float | None = None, kill_when=None,
            max_wait: float = 300.0, env: dict[str, str] | None = None) -> tuple[int | None, float, Path]:
        """Run ``tracewise *argv`` (with ``env`` added to its environment); SIGKILL it after ``kill_after`` s
        or once ``kill_when()`` is true.

        Returns (exit code, or None if it was SIGKILLed; seconds; log file).
        """
        self.n += 1
        log = self.log_dir / f"{self.n:03d}-{argv[0]}.log"
        self.proc.stdin.write(json.dumps({"argv": argv, "log": str(log), "env": env or {}}) + "\n")
        self.proc.stdin.flush()
        pid = self._read()["pid"]
        if kill_after is not None or kill_when is not None:
            t0 = time.monotonic()
            if kill_after is not None:
                time.sleep(kill_after)
            else:
                while not kill_when() and time.monotonic() - t0 < max_wait and _alive(pid):
                    time.sleep(0.002)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        res = self._read()
        status = res["status"]
        if os.WIFSIGNALED(status):
            assert os.WTERMSIG(status) == signal.SIGKILL
            return None, res["secs"], log
        return os.WEXITSTATUS(status), res["secs"], log

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _alive(pid: int) -> bool:
    try:  # a zombie (exited, not yet reaped by the server) still counts as alive here; harmless
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("logs"))
    yield s
    s.close()


class GatedServer(FaultServer):
    """An OpenAI-compatible server that, after ``hold_after(n)``, answers n completions and holds every
    later one until ``release()``: a client generating through it stalls with exactly n answers."""

    def __init__(self) -> None:
        super().__init__(model="gated-model")
        self.allow: int | None = None
        self.answered = 0

    def hold_after(self, n: int) -> None:
        self.answered, self.allow = 0, n

    def release(self) -> None:
        self.allow = None

    async def _respond(self, method: str, path: str, headers: dict, raw: bytes, writer) -> bool:
        if method == "POST" and path.endswith("/completions"):
            while self.allow is not None and self.answered >= self.allow:
                await asyncio.sleep(0.005)
            self.answered += 1  # no await between the check and this: one event loop, no race
        return await super()._respond(method, path, headers, raw, writer)


@pytest.fixture(scope="module")
def openai_server():
    with GatedServer() as s:
        _ENDPOINT["url"] = s.url
        yield s


_ENDPOINT: dict[str, str] = {}
STAGE_ORDER = ["generate", "generate_hf", "generate_openai", "verify", "curate", "sft", "rl", "eval"]
TRAINING = {"sft", "rl"}


def _argv(stage: str, out: Path, student: str, dirs: dict[str, Path]) -> list[str]:
    world = ["problems.world.seed=3", "problems.world.n_train=60", "problems.world.n_test=8"]
    if stage == "generate":
        return ["generate", f"out={out}", f"tokenizer={student}", "teacher.style=r1", *world]
    if stage == "generate_gptoss":  # a second teacher for verify/curate (not itself under test)
        return ["generate", f"out={out}", f"tokenizer={student}", "teacher.style=gpt-oss", *world]
    if stage == "generate_hf":
        return ["generate", f"out={out}", f"tokenizer={student}", "backend=hf", f"model={student}", "name=tiny",
                *world, "problems.limit=24", "sampling.max_tokens=24", "sampling.temperature=1.0", "batch_size=4"]
    if stage == "generate_openai":
        return ["generate", f"out={out}", f"tokenizer={student}", "backend=openai", "model=gated-model",
                "name=served", *world, "problems.limit=24", "sampling.n=2", f"openai.base_url={_ENDPOINT['url']}",
                "openai.api_key_env=TW_KILL_TEST_KEY", "openai.concurrency=16"]
    if stage == "verify":
        return ["verify", f"out={out}", f"generations=[{dirs['generate']},{dirs['generate_gptoss']}]",
                "verify_workers=1"]
    if stage == "curate":
        return ["curate", f"out={out}", f"generations=[{dirs['generate']},{dirs['generate_gptoss']}]",
                f"verdicts={dirs['verify']}"]
    if stage == "sft":
        return ["train", "sft", f"out={out}", "experiment=r1", f"model={student}",
                f"dataset={dirs['curate'] / 'datasets' / 'r1'}", "max_steps=8", "batch_size=4", "save_steps=2",
                "logging_steps=1", "learning_rate=1e-2", "threads=1"]
    if stage == "rl":
        return ["train", "rl", f"out={out}", f"model={dirs['sft'] / 'model'}", *world, "problems.limit=16",
                "num_generations=4", "per_device_train_batch_size=8", "max_steps=4", "save_steps=1",
                "max_completion_length=12", "learning_rate=1e-3", "threads=1"]
    if stage == "eval":
        return ["eval", f"out={out}", f"model={dirs['sft'] / 'model'}", "problems.split=test", *world,
                "sampling.n=4", "sampling.max_tokens=24", "batch_size=4", "n_boot=50", "threads=1",
                "verify_workers=1"]
    raise KeyError(stage)


@pytest.fixture(scope="module")
def chain(server, student_path, tmp_path_factory, openai_server):
    """Every stage once, uninterrupted, in pipeline order: the references (and each stage's input)."""
    server.wait_ready()
    out = tmp_path_factory.mktemp("runs")
    dirs: dict[str, Path] = {}
    secs: dict[str, float] = {}
    for stage in ["generate", "generate_gptoss", "generate_hf", "generate_openai", "verify", "curate", "sft", "rl",
                  "eval"]:
        before = set(out.iterdir())
        code, secs[stage], log = server.run(_argv(stage, out, student_path, dirs))
        assert code == 0, log.read_text()[-3000:]
        (new,) = set(out.iterdir()) - before
        dirs[stage] = new
    return out, dirs, secs


def _progress_trigger(stage: str, run_dir: Path, ref: Path, rng: random.Random):
    """A predicate that turns true once the stage is a random part of the way through its work."""
    logs = {"generate": "traces", "generate_hf": "traces", "generate_openai": "traces", "verify": "verdicts",
            "eval": "samples"}
    if stage in logs:
        name = logs[stage]
        total = (ref / f"{name}.jsonl").read_bytes().count(b"\n")
        partial = run_dir / f"{name}.partial.jsonl"
        have = partial.read_bytes().count(b"\n") if partial.exists() else 0
        if have >= total - 1:
            return None
        target = rng.randrange(have + 1, total)

        def records_written() -> bool:
            try:
                return partial.read_bytes().count(b"\n") >= target
            except FileNotFoundError:
                return False
        records_written.target, records_written.new_records = target, target - have  # for a gated server
        return records_written
    if stage in TRAINING:
        steps = json.loads((ref / "DONE").read_text())["steps"]
        target = rng.randrange(1, steps)

        def trained() -> bool:
            ckpts = run_dir / "checkpoints"
            return ckpts.exists() and any(int(p.name.split("-")[1]) >= target for p in ckpts.glob("checkpoint-*"))
        return trained
    return None  # curate: no incremental progress to watch; time-based kills only


def _cut_torn_tail(run_dir: Path, rng: random.Random) -> None:
    """Cut the last line of each append log at a random byte, as a kill mid-write would."""
    for log in run_dir.glob("*.partial.jsonl"):
        data = log.read_bytes()
        if not data:
            continue
        start = data.rstrip(b"\n").rfind(b"\n") + 1  # first byte of the last line
        cut = rng.randrange(start + 1, len(data)) if len(data) - start > 1 else len(data)
        log.write_bytes(data[:cut])


def _files(d: Path, skip=lambda rel: False) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*"))
            if p.is_file() and not skip(p.relative_to(d).as_posix())}


def _assert_same_records(ref: Path, got: Path) -> None:
    a, b = _files(ref), _files(got)
    assert sorted(a) == sorted(b), (sorted(a), sorted(b))
    if "timings.jsonl" in a:  # eval's measured times differ run to run: the same samples must have one row each
        keys = [[json.loads(ln)["key"] for ln in d.pop("timings.jsonl").splitlines()] for d in (a, b)]
        assert keys[0] == keys[1] and len(set(keys[1])) == len(keys[1])
    for name in a:
        if name.endswith(".jsonl"):  # explicit: no duplicated or missing records
            la, lb = a[name].splitlines(), b[name].splitlines()
            assert len(lb) == len(set(lb)) == len(la), name
        assert a[name] == b[name], f"{name} differs after kill/resume"


def _close(a: list[float], b: list[float], rtol: float = 1e-3, atol: float = 1e-4) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= atol + rtol * abs(x) for x, y in zip(a, b))


def _assert_same_training(ref: Path, got: Path, stage: str) -> None:
    import torch
    from safetensors.torch import load_file

    skip = lambda rel: rel.startswith(("checkpoints/", "model/")) or rel in ("log_history.json", "DONE")  # noqa: E731
    a, b = _files(ref, skip), _files(got, skip)
    assert a == b  # config.yaml, experiment.txt
    da, db = (json.loads((d / "DONE").read_text()) for d in (ref, got))
    assert da["steps"] == db["steps"]
    ha, hb = (json.loads((d / "log_history.json").read_text()) for d in (ref, got))
    metric = "loss" if stage == "sft" else "reward"
    sa = [h["step"] for h in ha if metric in h]
    sb = [h["step"] for h in hb if metric in h]
    assert sb == sa and len(set(sb)) == len(sb), (sa, sb)  # no step trained twice, none skipped
    assert _close([h[metric] for h in ha if metric in h], [h[metric] for h in hb if metric in h]), (ha, hb)
    wa, wb = (load_file(str(d / "model" / "model.safetensors")) for d in (ref, got))
    assert wa.keys() == wb.keys()
    worst = max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)
    assert worst < 1e-4, f"final weights differ by {worst}"
    assert torch.is_tensor(next(iter(wa.values())))


@contextlib.contextmanager
def _reference_set_aside(chain, stage: str, tag: str):
    """Move the stage's uninterrupted run aside while the test reruns it at the same path (config.yaml
    records the path); yield (run dir, saved reference); put the reference back afterwards, so later
    stages read exactly what they were built on."""
    out, dirs, _secs = chain
    ref = dirs[stage]
    saved = out.parent / f"ref-{stage}-{tag}"
    shutil.move(str(ref), saved)
    try:
        yield ref, saved
    finally:
        shutil.rmtree(ref, ignore_errors=True)
        shutil.move(str(saved), ref)


def _finish_and_compare(server, argv: list[str], stage: str, ref: Path, saved: Path,
                        expect: str | None = None) -> None:
    """Rerun the interrupted command to the end (logging ``expect`` as it resumes, if given), then
    compare its run directory with the uninterrupted run's."""
    code, _secs, log = server.run(argv)
    assert code == 0, log.read_text()[-3000:]
    assert expect is None or _resumed(log, expect), (expect, log.read_text()[-3000:])
    assert (ref / "DONE").exists()
    assert not list(ref.glob("*.partial.jsonl")) and not list(ref.glob("*.tmp"))
    if stage in TRAINING:
        _assert_same_training(saved, ref, stage)
    else:
        _assert_same_records(saved, ref)


def kill_and_resume(server, chain, student: str, stage: str, seed: int, kills: int,
                    gate: GatedServer | None = None) -> None:
    out, dirs, secs = chain
    with _reference_set_aside(chain, stage, str(seed)) as (ref, saved):
        rng = random.Random(seed)
        argv = _argv(stage, out, student, dirs)
        interrupted = 0
        for i in range(kills):
            # Alternate: kill once the stage has made a random amount of progress (records written,
            # checkpoints saved), then at a random moment of its run time (startup and saving included).
            trigger = _progress_trigger(stage, ref, saved, rng) if i % 2 == 0 else None
            if trigger is not None and gate is not None:
                gate.hold_after(trigger.new_records)  # the child stalls with exactly `target` records on disk
                try:
                    code, _secs, log = server.run(argv, kill_when=trigger)
                finally:
                    gate.release()
                assert code is None, "the gated child cannot finish: it must have been killed"
                assert (ref / "traces.partial.jsonl").read_bytes().count(b"\n") == trigger.target
            elif trigger is not None:
                code, _secs, log = server.run(argv, kill_when=trigger)
            else:
                code, _secs, log = server.run(argv, kill_after=rng.uniform(0.1, 0.9) * secs[stage])
            if code is None:
                interrupted += 1
                if ref.exists():
                    assert not (ref / "DONE").exists() or stage in TRAINING
                    _cut_torn_tail(ref, rng)
            else:
                assert code == 0, log.read_text()[-3000:]
        assert interrupted >= 1, "no kill landed before the command finished"
        _finish_and_compare(server, argv, stage, ref, saved)


KILL_ENV = "TRACEWISE_TEST_KILL_AFTER"
APPEND_LOGS = {"generate": "traces", "generate_hf": "traces", "verify": "verdicts", "eval": "samples"}


def kill_points(stage: str, ref: Path) -> list[tuple[str, str | None]]:
    """The hook kills, in order, for one stage, each with what the next run must log as it resumes
    (training: from which checkpoint; equal final weights cannot tell a resume from a restart).

    Each kill lands in the run the previous one left to resume. Record stages: after the append
    batch holding the fresh run's middle record (verify and the embedded generate append everything
    in one batch here, so that is before finalize; hf generate and eval write batches of 4), then
    halfway through writing the final file. curate (no resume: it
    rebuilds): after its first dataset, then after its last (the mix), before kept.json and the
    table. Training: at the end of step 3 (sft, checkpoints every 2 steps: step 3 is redone from
    checkpoint-2) or step 2 (rl, every step saved: killed before checkpoint-2), then right after the
    resumed run's first checkpoint.
    """
    if stage in APPEND_LOGS:
        name = APPEND_LOGS[stage]
        n = (ref / f"{name}.jsonl").read_bytes().count(b"\n")
        assert n >= 2, f"{stage}: too few records to kill in the middle"
        # Equal bytes prove the resume (work skipped or not: the stages' own tests count that).
        return [(f"{name}.partial.jsonl:{n // 2}", None), (f"{name}.jsonl:{n // 2}", None)]
    if stage == "curate":
        n = len(json.loads((ref / "DONE").read_text())["datasets"])
        return [("datasets:1", None), (f"datasets:{n}", None)]
    if stage == "sft":
        return [("steps:3", "resuming from checkpoint-2"), ("saves:1", "resuming from checkpoint-4")]
    if stage == "rl":
        return [("steps:2", "resuming from checkpoint-1"), ("saves:1", "resuming from checkpoint-2")]
    raise KeyError(stage)


def _resumed(log: Path, marker: str) -> bool:
    """Whether ``log`` says ``marker`` ("resuming from checkpoint-2": the words and the checkpoint's
    name, which the log prints as a path that rich may wrap)."""
    flat = re.sub(r"\s+", "", log.read_text())
    words, _, ckpt = marker.partition(" from ")
    return re.sub(r"\s+", "", words) in flat and (not ckpt or f"/{ckpt}" in flat)


def kill_at_points_and_resume(server, chain, student: str, stage: str) -> None:
    """Deterministic kills through the hook (every one must land), then a clean finish; compare."""
    out, dirs, _secs = chain
    with _reference_set_aside(chain, stage, "hook") as (ref, saved):
        rng = random.Random(0)
        argv = _argv(stage, out, student, dirs)
        expect = None  # what the current run must log as it resumes
        for point, next_expect in kill_points(stage, saved):
            code, _secs, log = server.run(argv, env={KILL_ENV: point})
            assert code is None, f"kill at {point} did not land (exit code {code}): {log.read_text()[-3000:]}"
            assert expect is None or _resumed(log, expect), (expect, log.read_text()[-3000:])
            assert ref.exists() and (not (ref / "DONE").exists() or stage in TRAINING)
            _cut_torn_tail(ref, rng)
            expect = next_expect
        _finish_and_compare(server, argv, stage, ref, saved, expect)


@pytest.mark.parametrize("stage", STAGE_ORDER)
def test_kill_and_resume(server, chain, student_path, stage, openai_server) -> None:
    if stage == "generate_openai":  # deterministic through the gate: the server answers N requests, then holds
        kill_and_resume(server, chain, student_path, stage, seed=0, kills=1, gate=openai_server)
    else:
        kill_at_points_and_resume(server, chain, student_path, stage)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3, 4])
@pytest.mark.parametrize("stage", STAGE_ORDER)
def test_kill_and_resume_more_seeds(server, chain, student_path, stage, seed, openai_server) -> None:
    """The randomised variant: kills at random moments (progress-triggered and time-based)."""
    gate = openai_server if stage == "generate_openai" else None
    kill_and_resume(server, chain, student_path, stage, seed=seed, kills=4, gate=gate)
