"""YAML → dataclass configs with dotted command-line overrides.

Every stage has an ``XConfig`` dataclass whose fields document themselves (``metadata['help']``).
``load_config(XConfig, path, ["train.lr=1e-3"])`` reads YAML, applies overrides, and rejects
unknown keys and wrong types with an error naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

C = TypeVar("C")


def doc(help: str, default: Any = dataclasses.MISSING, *, factory: Any = None, hash: bool | str = True) -> Any:
    """A dataclass field with its documentation; ``hash=False`` keeps it out of the run-dir hash.

    ``hash="nondefault"``: hashed only when it differs from its default. For an option added to a stage
    that already has runs on disk: the runs made before it existed (which ran with the default) keep their
    directory, and a run with the option set gets its own.
    """
    meta = {"help": help, "hash": hash}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(errors[0] if errors else f"{where}: bad value {value!r}")
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        return build(hint, value, where)
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            value = [value]
        inner = args[0] if args else Any
        return [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):  # "flag=1" on the command line parses as YAML int 1
            return bool(value)
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ValueError(f"{where}: expected true/false, got {value!r}")
    if hint in (int, float):
        if isinstance(value, bool):
            raise ValueError(f"{where}: expected {hint.__name__}, got {value!r}")
        try:
            out = hint(value)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: expected {hint.__name__}, got {value!r}") from None
        if hint is int and isinstance(value, float) and value != out:
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        return out
    if hint is str:
        if isinstance(value, (dict, list)):
            raise ValueError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def field_default(f: dataclasses.Field) -> Any:
    """A dataclass field's default value (a fresh one from its factory), or ``dataclasses.MISSING``."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _onto_default(f: dataclasses.Field, value: Any) -> Any:
    """A mapping given for a dataclass-valued field overrides the keys it names on top of the field's own
    default, not on the section class's defaults: ``quickstart train.batch_size=8`` keeps the quickstart's
    1000 steps (its ``train`` factory) instead of resetting them to ``TrainSettings``' 300."""
    if not isinstance(value, dict):
        return value
    default = field_default(f)
    return _merge(to_dict(default), value) if dataclasses.is_dataclass(default) else value


def build(cls: type[C], data: dict, where: str = "config") -> C:
    """Build dataclass ``cls`` from a dict, recursively; unknown keys are an error."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; valid keys: {sorted(names)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {k: _coerce(_onto_default(fields[k], v), hints[k], f"{where}.{k}") for k, v in data.items()}
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=1e-3"`` → (["train", "lr"], 0.001) with the value parsed as YAML."""
    if "=" not in text:
        raise ValueError(f"override {text!r}: expected KEY=VALUE, e.g. train.max_steps=100")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else ""
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for ov in overrides:
        keys, value = parse_override(ov)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {ov!r}: '{k}' is not a section")
        node[keys[-1]] = value
    return data


def load_config(cls: type[C], path: str | Path | None = None, overrides: list[str] | None = None) -> C:
    """Load ``cls`` from YAML ``path`` (optional) plus dotted ``overrides``."""
    data: dict = {}
    where = "config"
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise ValueError(f"{p}: config file not found")
        if p.is_dir():
            raise ValueError(f"{p}: is a directory, expected a YAML config file")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise ValueError(f"{p}: not valid YAML ({e})") from None
        except UnicodeDecodeError as e:
            raise ValueError(f"{p}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ValueError(f"{p}: expected a mapping at top level")
        data = loaded or {}
        where = str(p)
    data = apply_overrides(data, overrides or [])
    return build(cls, data, where)


def to_dict(cfg: Any) -> Any:
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(x) for x in cfg]
    if isinstance(cfg, Path):
        return str(cfg)
    return cfg


def dump_config(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
