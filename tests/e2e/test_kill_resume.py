"""Kill -9 at random moments, rerun the same command: the artifacts equal an uninterrupted run's.

Every pipeline stage (generate with the embedded and the hf backend, verify, curate, train sft,
train rl, eval) runs as the real CLI command in a child process, is SIGKILLed after a random
fraction of its uninterrupted run time, and is rerun until it finishes. Then:

* record stages: every file of the run directory is byte-identical to the uninterrupted run's
  (so no record is duplicated, lost or changed);
* training stages: the same steps were trained (none repeated or skipped: resumed from the last
  complete checkpoint with the same data order), and losses/rewards and final weights agree
  within a small tolerance.

After a kill, the append log's last line is also cut at a random byte (what a kill in the middle
of a multi-syscall write, or a power cut, leaves behind), so torn-line recovery is exercised on
every seed rather than only when the kill happens to land inside ``write()``.

Speed: children are forked from one warm server that has already imported torch, transformers,
TRL and tracewise, so a kill/rerun costs the stage's own work, not 10 s of imports. The default
suite runs one seed per stage; ``-m slow`` runs more seeds with more kills each.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

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
            max_wait: float = 300.0) -> tuple[int | None, float, Path]:
        """Run ``tracewise *argv``; SIGKILL it after ``kill_after`` s or once ``kill_when()`` is true.

        Returns (exit code, or None if it was SIGKILLed; seconds; log file).
        """
        self.n += 1
        log = self.log_dir / f"{self.n:03d}-{argv[0]}.log"
        self.proc.stdin.write(json.dumps({"argv": argv, "log": str(log)}) + "\n")
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


STAGE_ORDER = ["generate", "generate_hf", "verify", "curate", "sft", "rl", "eval"]
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
def chain(server, student_path, tmp_path_factory):
    """Every stage once, uninterrupted, in pipeline order: the references (and each stage's input)."""
    server.wait_ready()
    out = tmp_path_factory.mktemp("runs")
    dirs: dict[str, Path] = {}
    secs: dict[str, float] = {}
    for stage in ["generate", "generate_gptoss", "generate_hf", "verify", "curate", "sft", "rl", "eval"]:
        before = set(out.iterdir())
        code, secs[stage], log = server.run(_argv(stage, out, student_path, dirs))
        assert code == 0, log.read_text()[-3000:]
        (new,) = set(out.iterdir()) - before
        dirs[stage] = new
    return out, dirs, secs


def _progress_trigger(stage: str, run_dir: Path, ref: Path, rng: random.Random):
    """A predicate that turns true once the stage is a random part of the way through its work."""
    logs = {"generate": "traces", "generate_hf": "traces", "verify": "verdicts", "eval": "samples"}
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


def kill_and_resume(server, chain, student: str, stage: str, seed: int, kills: int) -> None:
    out, dirs, secs = chain
    ref = dirs[stage]
    saved = out.parent / f"ref-{stage}-{seed}"
    shutil.move(str(ref), saved)  # the rerun must write the same path (config.yaml records it)
    try:
        rng = random.Random(seed)
        argv = _argv(stage, out, student, dirs)
        interrupted = 0
        for i in range(kills):
            # Alternate: kill once the stage has made a random amount of progress (records written,
            # checkpoints saved), then at a random moment of its run time (startup and saving included).
            trigger = _progress_trigger(stage, ref, saved, rng) if i % 2 == 0 else None
            if trigger is not None:
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
        code, _secs, log = server.run(argv)
        assert code == 0, log.read_text()[-3000:]
        assert interrupted >= 1, "no kill landed before the command finished"
        assert (ref / "DONE").exists()
        assert not list(ref.glob("*.partial.jsonl")) and not list(ref.glob("*.tmp"))
        if stage in TRAINING:
            _assert_same_training(saved, ref, stage)
        else:
            _assert_same_records(saved, ref)
    finally:  # put the reference back so later stages read exactly what they were built on
        shutil.rmtree(ref, ignore_errors=True)
        shutil.move(str(saved), ref)


@pytest.mark.parametrize("stage", STAGE_ORDER)
def test_kill_and_resume(server, chain, student_path, stage) -> None:
    kill_and_resume(server, chain, student_path, stage, seed=0, kills=1)  # a progress-triggered kill (time-based for curate)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3, 4])
@pytest.mark.parametrize("stage", STAGE_ORDER)
def test_kill_and_resume_more_seeds(server, chain, student_path, stage, seed) -> None:
    kill_and_resume(server, chain, student_path, stage, seed=seed, kills=4)
