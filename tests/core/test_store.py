"""store: content-addressed run dirs, the resumable append log, deterministic finalize."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tracewise.core.config import doc
from tracewise.core.records import Trace, read_records, to_json_line
from tracewise.core.store import (
    AppendLog,
    config_fingerprint,
    is_done,
    last_complete_checkpoint,
    mark_done,
    path_digest,
    save_config,
    stage_dir,
)


@dataclass
class Inner:
    a: int = doc("a", 1)
    workers: int = doc("not part of the result", 4, hash=False)


@dataclass
class Cfg:
    out: str = doc("root", "runs", hash=False)
    lr: float = doc("lr", 0.1)
    inner: Inner = doc("inner", factory=Inner)
    tags: list[str] = doc("tags", factory=lambda: ["x"])
    extra: dict = field(default_factory=dict)


def _trace(i: int, teacher: str = "r1") -> Trace:
    return Trace(problem_id=f"p{i:03d}", teacher=teacher, text=f"<think>{i}</think>{i}", thinking=str(i),
                 answer_text=str(i), n_tokens=i + 1)


def test_stage_dir_depends_on_config_and_stage_not_on_unhashed_fields(tmp_path: Path) -> None:
    base = stage_dir(tmp_path, "gen", Cfg())
    assert base.parent == tmp_path and base.name.startswith("gen-") and len(base.name) == len("gen-") + 12
    assert stage_dir(tmp_path, "gen", Cfg()) == base  # deterministic
    assert stage_dir(tmp_path, "other", Cfg()).name != base.name
    assert stage_dir(tmp_path, "gen", Cfg(lr=0.2)) != base
    assert stage_dir(tmp_path, "gen", Cfg(inner=Inner(a=2))) != base
    assert stage_dir(tmp_path, "gen", Cfg(tags=["y"])) != base
    assert stage_dir(tmp_path, "gen", Cfg(extra={"k": 1})) != base
    # hash=False fields (output root, worker counts) never change the directory name
    assert stage_dir(tmp_path / "elsewhere", "gen", Cfg(out="elsewhere")).name == base.name
    assert stage_dir(tmp_path, "gen", Cfg(inner=Inner(workers=16))) == base
    fp = config_fingerprint(Cfg())
    assert "out" not in fp and "workers" not in fp["inner"]


@dataclass
class CfgWithOption(Cfg):
    """Cfg after a release added an option (its default = what runs did before it existed)."""

    option: int = doc("new option", 1, hash="nondefault")


def test_an_option_added_later_keeps_old_run_dirs_and_keys_new_values(tmp_path: Path) -> None:
    old = stage_dir(tmp_path, "gen", Cfg())
    assert stage_dir(tmp_path, "gen", CfgWithOption()) == old  # the default: the run dir of before
    assert stage_dir(tmp_path, "gen", CfgWithOption(option=4)) != old
    assert stage_dir(tmp_path, "gen", CfgWithOption(option=4)) != stage_dir(tmp_path, "gen", CfgWithOption(option=2))
    assert config_fingerprint(CfgWithOption(option=4))["option"] == 4


def test_stage_dir_depends_on_input_bytes(tmp_path: Path) -> None:
    f = tmp_path / "in.jsonl"
    f.write_text("one\n")
    d1 = stage_dir(tmp_path, "s", Cfg(), [f])
    assert stage_dir(tmp_path, "s", Cfg(), [f]) == d1
    f.write_text("two\n")
    d2 = stage_dir(tmp_path, "s", Cfg(), [f])
    assert d2 != d1
    f.write_text("one\n")
    assert stage_dir(tmp_path, "s", Cfg(), [f]) == d1  # bytes, not mtime
    assert stage_dir(tmp_path, "s", Cfg()) != d1  # having the input at all matters


def test_path_digest_of_directory(tmp_path: Path) -> None:
    d = tmp_path / "model"
    (d / "sub").mkdir(parents=True)
    (d / "a.txt").write_text("a")
    (d / "sub" / "b.txt").write_text("b")
    h = path_digest(d)
    (d / "train.partial.jsonl").write_text("scratch")  # scratch files do not define the artifact
    (d / "checkpoint-10").mkdir()
    (d / "checkpoint-10" / "w.bin").write_text("w")
    assert path_digest(d) == h
    (d / "sub" / "b.txt").write_text("B")
    assert path_digest(d) != h
    (d / "sub" / "b.txt").write_text("b")
    (d / "sub" / "b.txt").rename(d / "sub" / "c.txt")  # names count too
    assert path_digest(d) != h
    with pytest.raises(ValueError, match="input not found"):
        path_digest(tmp_path / "missing")


def test_done_marker_and_saved_config(tmp_path: Path) -> None:
    run = tmp_path / "gen-abc"
    save_config(run, Cfg(lr=0.5))
    assert not is_done(run)
    assert "lr: 0.5" in (run / "config.yaml").read_text()
    mark_done(run, {"n": 3})
    assert is_done(run) and json.loads((run / "DONE").read_text()) == {"n": 3}
    assert not (run / "DONE.tmp").exists()


def test_append_log_skips_done_keys_and_never_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "traces.partial.jsonl"
    log = AppendLog(path, Trace, key=lambda t: t.key)
    log.append([_trace(1), _trace(2)])
    log.append([_trace(2), _trace(3)])  # a retried record is not written twice
    assert path.read_text().count("\n") == 3
    again = AppendLog(path, Trace, key=lambda t: t.key)
    assert sorted(again.records) == ["r1|p001|0", "r1|p002|0", "r1|p003|0"]
    assert again.done("r1|p002|0") and not again.done("r1|p004|0")
    again.append([_trace(1), _trace(4)])
    assert path.read_text().count("\n") == 4


def test_append_log_drops_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "traces.partial.jsonl"
    whole = "".join(to_json_line(_trace(i)) for i in range(3))
    torn = to_json_line(_trace(3))[:25]
    path.write_text(whole + torn)
    log = AppendLog(path, Trace, key=lambda t: t.key)
    assert sorted(log.records) == [f"r1|p00{i}|0" for i in range(3)]
    assert path.read_text() == whole  # cut back to the last complete line
    log.append([_trace(3)])
    assert read_records(path, Trace) == [_trace(i) for i in range(4)]


def test_append_log_refuses_a_corrupt_complete_line(tmp_path: Path) -> None:
    path = tmp_path / "traces.partial.jsonl"
    path.write_text(to_json_line(_trace(0)) + "{not json}\n" + to_json_line(_trace(1)))
    with pytest.raises(ValueError, match=r"traces\.partial\.jsonl:2: malformed JSON"):
        AppendLog(path, Trace, key=lambda t: t.key)


def test_finalize_is_sorted_and_independent_of_append_order(tmp_path: Path) -> None:
    recs = [_trace(i, t) for i in range(20) for t in ("r1", "gpt-oss")]
    outputs = []
    for seed in range(3):
        order = recs[:]
        random.Random(seed).shuffle(order)
        log = AppendLog(tmp_path / f"run{seed}" / "t.partial.jsonl", Trace, key=lambda t: t.key)
        for i in range(0, len(order), 7):  # uneven batches
            log.append(order[i : i + 7])
        final = log.finalize(tmp_path / f"run{seed}" / "traces.jsonl")
        assert not (tmp_path / f"run{seed}" / "t.partial.jsonl").exists()  # the log is dropped
        outputs.append(final.read_bytes())
        keys = [t.key for t in read_records(final, Trace)]
        assert keys == sorted(keys) and len(keys) == len(recs)
    assert outputs[0] == outputs[1] == outputs[2]


def _ckpt(root: Path, name: str, state: str | None) -> Path:
    """A hand-built HF checkpoint dir; ``state`` is trainer_state.json's text (None: not written yet)."""
    d = root / name
    d.mkdir(parents=True)
    (d / "model.safetensors").write_bytes(b"weights")
    if state is not None:
        (d / "trainer_state.json").write_text(state)
    return d


def test_last_complete_checkpoint_skips_and_deletes_torn_newer_ones(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    assert last_complete_checkpoint(root) is None  # no directory yet
    root.mkdir()
    assert last_complete_checkpoint(root) is None  # empty
    _ckpt(root, "checkpoint-1", None)  # torn, but older than a complete one: not looked at
    _ckpt(root, "checkpoint-2", '{"global_step": 2}')
    _ckpt(root, "checkpoint-9", '{"global_step": 9}')
    _ckpt(root, "checkpoint-10", '{"global_step": 10}')  # newest complete: 10 > 9 numerically, not as text
    _ckpt(root, "checkpoint-11", None)  # killed before trainer_state.json
    _ckpt(root, "checkpoint-12", '{"global_step": 12, "log_hist')  # killed while writing it
    (root / "checkpoint-13").write_text("a file, not a checkpoint dir")
    _ckpt(root, "checkpoint-final", '{"global_step": 99}')  # not checkpoint-<N>
    assert last_complete_checkpoint(root) == str(root / "checkpoint-10")
    assert sorted(p.name for p in root.iterdir()) == [
        "checkpoint-1", "checkpoint-10", "checkpoint-13", "checkpoint-2", "checkpoint-9", "checkpoint-final"]
    assert last_complete_checkpoint(root) == str(root / "checkpoint-10")  # idempotent


def test_last_complete_checkpoint_none_when_every_one_is_torn(tmp_path: Path) -> None:
    _ckpt(tmp_path, "checkpoint-3", None)
    _ckpt(tmp_path, "checkpoint-6", "")
    assert last_complete_checkpoint(tmp_path) is None
    assert list(tmp_path.iterdir()) == []  # a fresh start must not trip over them


KILL_CHILD = """
import sys
from tracewise.core.records import Problem, write_records
from tracewise.core.store import AppendLog
log = AppendLog(sys.argv[1] + "/log.partial.jsonl", Problem, key=lambda p: p.id)
for i in range(0, 6, 2):  # three appends of two records
    log.append([Problem(id=f"p{i}", question="q", answer="1"), Problem(id=f"p{i + 1}", question="q", answer="1")])
write_records(sys.argv[1] + "/final.jsonl", [Problem(id=f"f{i}", question="q", answer="1") for i in range(5)])
"""


@pytest.mark.parametrize("point,log_lines,final_tmp_lines", [
    (None, None, None),  # unset: runs to the end
    ("log.partial.jsonl:1", 2, None),  # killed after the first append (of two records)
    ("log.partial.jsonl:3", 4, None),  # the append that holds record 3
    ("final.jsonl:2", 6, 2),  # in the middle of the final file: its .tmp holds 2 records, no final file
    ("steps:1", None, None),  # another point: no effect here
])
def test_kill_hook_kills_right_after_the_chosen_record(tmp_path: Path, point, log_lines, final_tmp_lines) -> None:
    import os
    import signal
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRACEWISE_TEST_KILL_AFTER"}
    if point:
        env["TRACEWISE_TEST_KILL_AFTER"] = point
    proc = subprocess.run([sys.executable, "-c", KILL_CHILD, str(tmp_path)], env=env, capture_output=True, text=True)
    if log_lines is None:
        assert proc.returncode == 0, proc.stderr
        assert len((tmp_path / "final.jsonl").read_text().splitlines()) == 5
        return
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert len((tmp_path / "log.partial.jsonl").read_text().splitlines()) == log_lines
    assert not (tmp_path / "final.jsonl").exists()
    tmps = list(tmp_path.glob(".final.jsonl.*.tmp"))  # records.open_temp's unique name
    assert (len(tmps[0].read_text().splitlines()) if tmps else None) == final_tmp_lines


def test_kill_hook_refuses_a_malformed_spec(monkeypatch) -> None:
    from tracewise.core.records import kill_point

    monkeypatch.setenv("TRACEWISE_TEST_KILL_AFTER", "traces.jsonl")
    with pytest.raises(ValueError, match="TRACEWISE_TEST_KILL_AFTER='traces.jsonl'"):
        kill_point("traces.jsonl")


# ---- one process per run dir: the lock -----------------------------------------------------------

_HOLDER = """
import sys, time
from dataclasses import dataclass
from tracewise.core.store import save_config

@dataclass
class C:
    lr: float = 0.1

save_config(__import__("pathlib").Path(sys.argv[1]), C())
print("locked", flush=True)
time.sleep(120)
"""


def _hold_lock(run_dir: Path):
    """Another process that has started the stage in ``run_dir`` (it holds the lock until killed)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_process_on_one_run_dir_is_refused_until_the_first_exits(tmp_path: Path) -> None:
    run = tmp_path / "gen-abc"
    proc = _hold_lock(run)
    try:
        with pytest.raises(ValueError, match=rf"run dir in use by pid {proc.pid}\b"):
            save_config(run, Cfg())
        # Nothing of ours was written: the holder's config stays.
        assert "lr: 0.1" in (run / "config.yaml").read_text()
    finally:
        proc.kill()
        proc.wait()
    # The kernel drops the lock of a dead holder (however it died): the stage can resume now.
    save_config(run, Cfg(lr=0.5))
    save_config(run, Cfg(lr=0.5))  # this process holds it already: a no-op, not an error
    assert not _free(run)
    mark_done(run, {})  # releases it
    assert _free(run)


def _free(run: Path) -> bool:
    """Whether nobody holds the run dir's lock (flock: another open file description conflicts even in-process)."""
    import fcntl
    import os

    fd = os.open(run / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def test_the_cli_says_which_pid_holds_the_run_dir_and_exits_2(tmp_path: Path, student_path: str) -> None:
    from typer.testing import CliRunner

    from tracewise.cli import app
    from tracewise.core.config import load_config
    from tracewise.generate import GenerateConfig
    from tracewise.generate.stage import _inputs

    args = [f"out={tmp_path}", f"tokenizer={student_path}", "problems.world.n_train=3", "problems.world.n_test=0",
            "sampling.n=1"]
    cfg = load_config(GenerateConfig, None, args)
    run = stage_dir(cfg.out, "generate", cfg, inputs=_inputs(cfg))
    proc = _hold_lock(run)
    try:
        res = CliRunner().invoke(app, ["generate", *args])
    finally:
        proc.kill()
        proc.wait()
    assert res.exit_code == 2 and f"in use by pid {proc.pid}" in " ".join(res.output.split()), res.output
    assert not (run / "traces.jsonl").exists() and not is_done(run)


def test_a_stage_finished_by_another_process_meanwhile_is_not_redone(tmp_path: Path) -> None:
    run = tmp_path / "gen-abc"
    run.mkdir()
    (run / "DONE").write_text("{}\n")  # finished between this process's is_done() and its first write
    with pytest.raises(ValueError, match="another process finished this stage"):
        save_config(run, Cfg())
    assert not (run / "config.yaml").exists()


def test_save_config_is_atomic_and_never_follows_a_symlink(tmp_path: Path) -> None:
    run = tmp_path / "gen-abc"
    run.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (run / "config.yaml").symlink_to(victim)
    save_config(run, Cfg(lr=0.25))
    assert victim.read_text() == "precious\n"
    assert not (run / "config.yaml").is_symlink() and "lr: 0.25" in (run / "config.yaml").read_text()
    mark_done(run, {"n": 1})
    assert sorted(p.name for p in run.iterdir()) == [".lock", "DONE", "config.yaml"]  # no temp files


def test_lock_and_temp_files_do_not_change_a_directory_digest(tmp_path: Path) -> None:
    d = tmp_path / "model"
    d.mkdir()
    (d / "weights.bin").write_bytes(b"w")
    before = path_digest(d)
    (d / ".lock").write_text("123\n")
    (d / ".weights.bin.123.abcd0123.tmp").write_bytes(b"half")
    assert path_digest(d) == before


def test_temp_files_of_a_killed_writer_are_removed_when_the_stage_resumes(tmp_path: Path) -> None:
    run = tmp_path / "gen-abc"
    (run / "datasets").mkdir(parents=True)
    stale = [run / ".traces.jsonl.4242.0badcafe.tmp", run / "datasets" / ".train.jsonl.4242.12345678.tmp"]
    for f in stale:
        f.write_text("half a file")
    (run / "notes.tmp").write_text("not ours")
    save_config(run, Cfg())
    assert not any(f.exists() for f in stale) and (run / "notes.tmp").exists()
    mark_done(run, {})
