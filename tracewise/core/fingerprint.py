"""What an input *is*, for run-directory hashes: files, directories and models by their content.

Every stage keys its run dir on the bytes it reads (``tracewise.core.store.stage_dir``), models included:
retrain a model into the same path and every stage that reads it (generate, verify's LLM judge,
eval, train sft/rl, and the studies built on them) gets a new run dir instead of the old results.

* A local file or directory: sha256 over every file's relative name and bytes (``path_digest``;
  training scratch - ``checkpoint-*``, ``*.partial.jsonl``, ``datasets`` map caches - is left out).
  For a model directory that is its config, tokenizer and weight files: any byte changed, a new digest.
* A hub id (``org/name``): the id and the commit its revision resolves to (``HubModel``), asked of
  the hub when online (the commit ``from_pretrained`` will download), else read from the local hub cache.

Fast on multi-GB models: a file's sha256 is cached in ``file_sha256.json`` under ``$TRACEWISE_CACHE_DIR``
(default ``~/.cache/tracewise``), keyed by its real path and stat (device, inode, size, mtime_ns,
ctime_ns), and read again only when one of them changes. Every write to a file moves its ctime, which
no tool can set back; and a digest is cached only once the file's ctime is ``RACY_S`` seconds old,
so a rewrite within the same timestamp tick as the hashing cannot hide behind an equal stat (git's
"racily clean" rule). Files under ``CACHE_MIN_BYTES`` are simply hashed again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from tracewise.core.hashing import file_sha256
from tracewise.core.records import LOCK_NAME, TEMP_NAME, TIMINGS_NAME, open_temp

log = logging.getLogger(__name__)

CACHE_ENV = "TRACEWISE_CACHE_DIR"
CACHE_MIN_BYTES = 1 << 20
RACY_S = 2.0
# org/name or name: what the hub accepts as a repo id (a path-like string that does not exist is not one).
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def cache_file() -> Path:
    root = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "tracewise")
    return Path(root) / "file_sha256.json"


class _ShaCache:
    """The on-disk stat -> sha256 cache; loaded once per digest, written once if anything was added."""

    def __init__(self) -> None:
        self.path = cache_file()
        self.entries: dict[str, list] = {}
        self.dirty = False
        try:
            data = json.loads(self.path.read_text())
            if isinstance(data, dict):
                self.entries = data
        except (OSError, ValueError):
            pass  # no cache yet, or a torn one: start afresh

    def sha(self, p: Path) -> str:
        st = p.stat()
        if st.st_size < CACHE_MIN_BYTES:
            return file_sha256(p)
        real = os.path.realpath(p)
        key = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
        hit = self.entries.get(real)
        if isinstance(hit, list) and hit[:-1] == key:
            return hit[-1]
        digest = file_sha256(p)
        if time.time() - st.st_ctime >= RACY_S and p.stat().st_ctime_ns == st.st_ctime_ns:
            self.entries[real] = [*key, digest]
            self.dirty = True
        return digest

    def save(self) -> None:
        if not self.dirty:
            return
        live = {k: v for k, v in self.entries.items() if os.path.exists(k)}  # forget deleted files
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp, fd = open_temp(self.path)  # a name of this call's own: two writers never share a temp file
            try:
                with open(fd, "w", encoding="utf-8") as fh:
                    fh.write(json.dumps(live, sort_keys=True))
                os.replace(tmp, self.path)  # concurrent writers: the last one wins; a lost entry is only re-read
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        except OSError as e:
            log.debug("fingerprint cache %s not written (%s)", self.path, e)


def _scratch(rel: str, name: str) -> bool:
    """Training scratch, `datasets` map caches, a run dir's lock and temp files, an eval's per-sample timings
    (measurements that differ run to run): not the artifact."""
    return (rel.startswith("checkpoint-") or "/checkpoint-" in rel or rel.endswith(".partial.jsonl")
            or (name.startswith("cache-") and name.endswith(".arrow")) or name in (LOCK_NAME, TIMINGS_NAME)
            or bool(TEMP_NAME.fullmatch(name)))


def path_digest(path: str | os.PathLike) -> str:
    """sha256 over a file's bytes, or over every file (name + bytes) below a directory."""
    path = Path(path)
    cache = _ShaCache()
    h = hashlib.sha256()
    if path.is_dir():
        for p in sorted(q for q in path.rglob("*") if q.is_file()):
            rel = p.relative_to(path).as_posix()
            if _scratch(rel, p.name):
                continue  # training scratch and `datasets` map caches do not define the artifact
            h.update(rel.encode() + b"\0")
            h.update(cache.sha(p).encode())
    elif path.is_file():
        h.update(cache.sha(path).encode())
    else:
        raise ValueError(f"{path}: input not found")
    cache.save()
    return h.hexdigest()


@dataclass(frozen=True)
class HubModel:
    """A model (or tokenizer) named by its hub id: identified by id + resolved commit."""

    repo_id: str
    revision: str = "main"

    def digest(self) -> str:
        return f"hub:{self.repo_id}@{hub_commit(self.repo_id, self.revision)}"


def hub_commit(repo_id: str, revision: str = "main") -> str:
    """The commit ``revision`` of ``repo_id`` is at: the hub's answer when online, else the local
    hub cache's ref; ``revision`` itself (with a warning) when neither knows."""
    if re.fullmatch(r"[0-9a-f]{40}", revision):
        return revision
    from huggingface_hub import constants

    if not constants.HF_HUB_OFFLINE:
        try:
            from huggingface_hub import HfApi

            sha = HfApi().model_info(repo_id, revision=revision, timeout=10).sha
            if sha:
                return sha
        except Exception as e:  # offline in practice, private, or gone: fall back to the cache
            log.debug("%s: hub not reachable (%s); using the local cache's ref", repo_id, e)
    ref = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "refs" / revision
    try:
        return ref.read_text().strip()
    except OSError:
        log.warning("%s: revision %r not resolved to a commit (hub unreachable, not in the local cache): its run "
                    "dirs are keyed on the name, so a later change of the model on the hub would not be noticed",
                    repo_id, revision)
        return revision


def model_input(model: str) -> list:
    """What keys a run on ``model``: ``[model]`` for an existing local file or directory (its bytes),
    ``[HubModel(id)]`` for a hub id, ``[]`` for '' or a path that does not exist (loading it fails anyway)."""
    if not model:
        return []
    from tracewise.core.model_files import gguf_file  # a GGUF file or a package shipping one: key on its bytes

    gguf = gguf_file(model)
    if gguf is not None:
        return [str(gguf)]
    if Path(model).exists():
        return [model]
    if HUB_ID.fullmatch(model) and not model.startswith((".", "~")):
        return [HubModel(model)]
    return []


def input_digest(item) -> str:
    """Digest of one stage input: a ``HubModel`` by id + commit, anything else as a path."""
    return item.digest() if isinstance(item, HubModel) else path_digest(item)
