"""Content-addressed, append-only stage artifacts.

A stage's output directory is ``<out>/<stage>-<hash>`` where the hash covers the stage name, the
fields of its config that change the result, and the bytes of its inputs. So:

* rerunning a finished stage finds ``DONE`` and is a no-op;
* an interrupted stage finds its ``*.partial.jsonl`` log, drops a torn last line, and skips the
  keys already written (each record is seeded by its own key, so it comes out the same);
* the final file is written sorted by key, so a resumed run is byte-identical to an
  uninterrupted one even when records finished out of order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterable

from tracewise.core.config import field_default
from tracewise.core.fingerprint import input_digest, path_digest  # noqa: F401  (path_digest: re-exported)
from tracewise.core.records import (LOCK_NAME, TEMP_NAME, from_dict, iter_jsonl, kill_point, open_temp, to_json_line,
                                    write_records)

log = logging.getLogger(__name__)


def config_fingerprint(cfg: Any) -> dict:
    """The parts of a config dataclass that affect results (fields with ``metadata['hash']=False`` drop out)."""
    if dataclasses.is_dataclass(cfg):
        out = {}
        for f in dataclasses.fields(cfg):
            mode = f.metadata.get("hash", True)
            if mode == "nondefault" and getattr(cfg, f.name) == field_default(f):
                continue
            if mode:
                out[f.name] = config_fingerprint(getattr(cfg, f.name))
        return out
    if isinstance(cfg, (list, tuple)):
        return [config_fingerprint(x) for x in cfg]
    if isinstance(cfg, dict):
        return {str(k): config_fingerprint(v) for k, v in sorted(cfg.items())}
    if isinstance(cfg, Path):
        return str(cfg)
    return cfg


def stage_dir(out: str | os.PathLike, stage: str, cfg: Any, inputs: Iterable[Any] = ()) -> Path:
    """Directory for this stage run: ``<out>/<stage>-<12 hex of the content hash>``. ``inputs``: paths
    (keyed by their bytes) and ``fingerprint.HubModel`` ids (keyed by id + commit); see ``model_input``."""
    from tracewise import ARTIFACT_VERSION

    payload = {
        "artifact_version": ARTIFACT_VERSION,
        "stage": stage,
        "config": config_fingerprint(cfg),
        "inputs": [input_digest(p) for p in inputs],
    }
    key = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return Path(out) / f"{stage}-{key}"


def link_run(run_dir: str | os.PathLike, name: str) -> Path:
    """Point ``<out>/<name>`` at ``run_dir`` (a relative symlink beside it, replaced atomically), so the
    next stage can take this run by a readable name instead of its hash (``--link NAME`` on the CLI).

    Inputs are keyed by their bytes, so a link and the directory it names feed a stage the same data.
    A name that looks like a run directory (``<stage>-...`` of a stage present in ``<out>``) is refused:
    studies find runs by globbing ``<stage>-*`` and would count the run twice.
    """
    import re

    run_dir = Path(run_dir)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", name or ""):
        raise ValueError(f"--link {name!r}: use letters, digits and . _ + - (a file name in {run_dir.parent})")
    run_pattern = re.compile(r"(?P<stage>[a-z][a-z0-9-]*?)-[0-9a-f]{12}")
    stages = {m.group("stage") for p in [run_dir, *run_dir.parent.iterdir()] if (m := run_pattern.fullmatch(p.name))}
    clash = sorted(s for s in stages if name.startswith(s + "-"))
    if clash or run_pattern.fullmatch(name):
        raise ValueError(f"--link {name!r}: looks like a run directory (<stage>-..., here "
                         f"{clash[0] if clash else 'a hash'}), which studies glob for; pick a name without that prefix")
    link = run_dir.parent / name
    if link.exists() and not link.is_symlink():
        raise ValueError(f"--link {name!r}: {link} exists and is not a link")
    tmp = run_dir.parent / f".{name}.{os.getpid()}.link"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run_dir.name, target_is_directory=True)
    os.replace(tmp, link)
    return link


def is_done(run_dir: Path) -> bool:
    return (Path(run_dir) / "DONE").exists()


_HELD: dict[str, int] = {}  # run dir -> fd of the lock file this process holds


def lock_run_dir(run_dir: str | os.PathLike, *, reopen: bool = False) -> None:
    """Take the exclusive lock of a stage run directory for this process (a no-op if it holds it).

    Two processes writing one run dir lose records and can delete each other's checkpoints, so the
    second is refused: ``ValueError("<dir>: run dir in use by pid N")``. The lock is an ``flock`` on
    ``<run_dir>/.lock``, which the kernel drops when the holder exits, however it dies; ``mark_done``
    releases it. ``save_config`` (every stage's first write) takes it. A finished run dir is refused
    (another process finished it meanwhile) unless ``reopen``: the caller means to reopen it, and
    removes its ``DONE`` only once it holds the lock.
    """
    import fcntl

    run_dir = Path(run_dir)
    key = str(run_dir.resolve())
    if key in _HELD:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(run_dir / LOCK_NAME, flags, 0o644)
    except OSError as e:
        raise ValueError(f"{run_dir}: cannot open its lock file ({e.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        finally:
            os.close(fd)
        raise ValueError(f"{run_dir}: run dir in use by pid {holder} (another tracewise process is running this "
                         "stage with the same config and inputs; wait for it, or stop it)") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _HELD[key] = fd
    for stale in run_dir.rglob(".*.tmp"):  # temp files of a killed writer (nobody else writes here now)
        if TEMP_NAME.fullmatch(stale.name):
            stale.unlink(missing_ok=True)
    if is_done(run_dir) and not reopen:  # finished by another process between our is_done() check and this lock
        unlock_run_dir(run_dir)
        raise ValueError(f"{run_dir}: another process finished this stage while this one was starting; "
                         "run it again to use the finished result")


def unlock_run_dir(run_dir: str | os.PathLike) -> None:
    fd = _HELD.pop(str(Path(run_dir).resolve()), None)
    if fd is not None:
        os.ftruncate(fd, 0)  # a finished run dir holds the same bytes whoever ran it
        os.close(fd)  # closing the only descriptor drops the flock


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic(path: str | os.PathLike, mode: str, write: Callable) -> Path:
    """``write(fh)`` into a unique temp file beside ``path`` (O_EXCL, O_NOFOLLOW), fsync, rename over
    ``path``, fsync the directory: a crash leaves the old file or the new one, never a torn one."""
    path = Path(path)
    tmp, fd = open_temp(path)
    try:
        with open(fd, mode, **({"encoding": "utf-8"} if "b" not in mode else {})) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically and durably (see ``_atomic``)."""
    return _atomic(path, "w", lambda fh: fh.write(text))


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy ``src`` to ``dst`` the way ``atomic_write_text`` writes."""
    import shutil

    def copy(out) -> None:
        with open(src, "rb") as inp:
            shutil.copyfileobj(inp, out, 1 << 20)

    return _atomic(dst, "wb", copy)


def mark_done(run_dir: Path, manifest: dict | None = None) -> None:
    """Write the DONE marker last, atomically and durably (file and directory fsynced): its presence
    means every artifact is complete. Releases the run dir's lock."""
    run_dir = Path(run_dir)
    atomic_write_text(run_dir / "DONE", json.dumps(manifest or {}, sort_keys=True, indent=1) + "\n")
    unlock_run_dir(run_dir)


def save_config(run_dir: Path, cfg: Any) -> None:
    """Lock the run dir for this process (see ``lock_run_dir``), then record the config the stage runs
    with, atomically. Keys come from env vars named in the config, never the config itself; still,
    registered secrets, URL credentials and secret-named keys are masked."""
    from tracewise.core.redact import safe_config_yaml

    lock_run_dir(run_dir)
    atomic_write_text(Path(run_dir) / "config.yaml", safe_config_yaml(cfg))


def last_complete_checkpoint(ckpt_root: str | os.PathLike) -> str | None:
    """The newest ``checkpoint-N`` under ``ckpt_root`` that was saved completely, or None.

    HF Trainer writes a checkpoint's files in place and ``trainer_state.json`` last, so a process
    killed mid-save leaves a directory that ``get_last_checkpoint`` would pick and resuming from it
    would fail (missing optimizer state) forever. A checkpoint counts only when its
    ``trainer_state.json`` parses; newer incomplete ones are deleted so the Trainer's rotation and
    the next save do not trip over them.
    """
    import shutil

    root = Path(ckpt_root)
    if not root.is_dir():
        return None
    found = []
    for d in root.iterdir():
        m = re.fullmatch(r"checkpoint-(\d+)", d.name)
        if m and d.is_dir():
            found.append((int(m.group(1)), d))
    for _step, d in sorted(found, reverse=True):
        try:
            json.loads((d / "trainer_state.json").read_text())
            return str(d)
        except (OSError, ValueError):
            log.warning("%s: incomplete checkpoint (interrupted while saving); deleting it", d)
            shutil.rmtree(d, ignore_errors=True)
    return None


class AppendLog:
    """Append-only JSONL log of records with resume.

    Lines are written whole and fsynced per batch; on open, a torn last line (a crash mid-write)
    is cut off, so what remains is exactly the set of finished records.
    """

    def __init__(self, path: str | os.PathLike, cls: type, key: Callable[[Any], str]):
        self.path = Path(path)
        self.cls = cls
        self.key = key
        self.records: dict[str, Any] = {}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self._recover()

    def _recover(self) -> None:
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            log.warning("%s: dropping a torn last line (%d bytes) left by an interrupted run", self.path, len(data) - end)
            with open(self.path, "r+b") as fh:
                fh.truncate(end)
        for lineno, obj in iter_jsonl(self.path):
            rec = from_dict(self.cls, obj, f"{self.path}:{lineno}")
            self.records[self.key(rec)] = rec

    def done(self, key: str) -> bool:
        return key in self.records

    def append(self, records: Iterable[Any]) -> None:
        lines = []
        for rec in records:
            k = self.key(rec)
            if k in self.records:
                continue  # never duplicate a record, even if a caller retries
            self.records[k] = rec
            lines.append(to_json_line(rec))
        if not lines:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write("".join(lines))
            fh.flush()
            os.fsync(fh.fileno())
        kill_point(self.path.name, len(lines))  # test hook (TRACEWISE_TEST_KILL_AFTER); no-op when unset

    def finalize(self, final_path: str | os.PathLike) -> Path:
        """Write all records sorted by key to ``final_path`` atomically, then drop the log."""
        ordered = [self.records[k] for k in sorted(self.records)]
        out = write_records(final_path, ordered)
        self.path.unlink(missing_ok=True)
        return out
