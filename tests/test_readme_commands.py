"""Every command line shown in README.md and docs/*.md parses: its subcommand and ``--options`` exist, every
``KEY=VALUE`` names a config key of that command, every ``-c`` file, script and benchmark it runs is in the repo.

Nothing runs: options are parsed by the CLI's own click commands, keys are looked up in the config dataclasses
(values are not checked: the docs use placeholders such as ``model=PATH``).
"""

from __future__ import annotations

import dataclasses
import importlib
import re
import shlex
import typing
from pathlib import Path

import pytest
import typer

from tracewise.cli import STAGES, app

REPO = Path(__file__).resolve().parents[1]
DOCS = ["README.md", *sorted(p.relative_to(REPO).as_posix() for p in (REPO / "docs").glob("*.md"))]
EXTRA = {"quickstart": ("tracewise.studies.quickstart", "QuickstartConfig")}


def _commands(doc: str) -> list[tuple[str, list[str]]]:
    """(``doc:line``, words) of each command in the doc's ```bash blocks (continuation lines joined)."""
    out, in_block, pending, start = [], False, "", 0
    for i, line in enumerate((REPO / doc).read_text(encoding="utf-8").splitlines(), 1):
        if line.strip().startswith("```"):
            in_block = line.strip() == "```bash"
            continue
        if not in_block:
            continue
        if not pending:
            start = i
        pending += line.rstrip().removesuffix("\\") + " "
        if line.rstrip().endswith("\\"):
            continue
        text, pending = pending.split("  #")[0].split(" # ")[0].strip(), ""
        if text and not text.startswith("#"):
            for part in re.split(r"\s*(?:&&|;)\s*", text):
                out.append((f"{doc}:{start}", shlex.split(part)))
    return out


ALL = [c for doc in DOCS for c in _commands(doc)]


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _key_exists(cls: type, key: str) -> bool:
    """Whether dotted ``key`` names a field of ``cls`` (descending into dataclass sections; a dict or list
    field takes any sub-key)."""
    head, _, rest = key.partition(".")
    f = _fields(cls).get(head)
    if f is None:
        return False
    if not rest:
        return True
    hint = typing.get_type_hints(cls)[head]
    section = next((t for t in (hint, *typing.get_args(hint)) if dataclasses.is_dataclass(t)), None)
    return _key_exists(section, rest) if section else True


def _tracewise_args(words: list[str]) -> list[str] | None:
    if words[:1] == ["tracewise"]:
        return words[1:]
    if "tracewise.cli" in words:
        return words[words.index("tracewise.cli") + 1:]
    return None


@pytest.mark.parametrize("where, words", ALL, ids=[f"{w}" for w, _ in ALL])
def test_documented_command_parses(where: str, words: list[str]) -> None:
    if words[:1] == ["nice"]:
        words = words[3:] if words[1:2] == ["-n"] else words[1:]
    if words[0] in ("pytest", "python", "python3") and "pytest" in words:
        paths = [w.split("::")[0] for w in words if w.startswith("tests/")]
        missing = [p for p in paths if not (REPO / p).exists()]
        assert not missing, f"{where}: no such test file(s) {missing}"
        return
    if words[0] in ("python", "python3") and words[1:2] and words[1].endswith(".py"):
        assert (REPO / words[1]).is_file(), f"{where}: {words[1]} does not exist"
        return
    if words[0] == "bash" and words[1:2]:
        assert (REPO / words[1]).is_file(), f"{where}: {words[1]} does not exist"
        return
    if "bash" in words:  # VAR=... bash script.sh
        script = words[words.index("bash") + 1]
        assert (REPO / script).is_file(), f"{where}: {script} does not exist"
        return
    if words[:3] == ["python", "-m", "tracewise.train.verl_launch"] or words[0] in ("pip", "git", "cd"):
        return
    args = _tracewise_args(words)
    if args is None:
        if words[:3] == ["python", "-m"] or words[:3] == ["python3", "-m"]:
            assert importlib.util.find_spec(words[2]) is not None, f"{where}: no module {words[2]}"
        return
    # "..." and "<...>" stand for user input: an option's value stays a placeholder, other ones are dropped.
    args = [a for i, a in enumerate(args) if (a != "..." and not a.startswith("<")) or args[i - 1].startswith("-")]
    group = typer.main.get_command(app)  # typer's own (vendored) click objects
    path: list[str] = []
    ctx = group.context_class(group, info_name="tracewise")
    while hasattr(group, "list_commands"):
        assert args, f"{where}: no subcommand after {' '.join(path)}"
        sub = group.get_command(ctx, args[0])
        assert sub is not None, f"{where}: `tracewise {' '.join(path)} {args[0]}` is not a command"
        path.append(args.pop(0))
        group = sub
    if "--help" in args:
        return
    try:
        sub_ctx = group.make_context(" ".join(path), list(args))
    except Exception as e:  # click's UsageError (unknown option, missing value)
        if not hasattr(e, "format_message"):
            raise
        pytest.fail(f"{where}: `tracewise {' '.join(path)}`: {e.format_message()}")
    config = sub_ctx.params.get("config")
    if config is not None and str(config) != "..." and "<" not in str(config):
        assert (REPO / config).is_file(), f"{where}: -c {config} does not exist"
    overrides = [o for o in (sub_ctx.params.get("overrides") or []) if "=" in o]
    if path == ["serve"]:
        return
    name = path[-1] if path[0] != "study" or path[-1] == "rl-alpha" else f"{path[-1]}-study"
    module, cls_name = STAGES.get(name) or EXTRA[name]
    cls = getattr(importlib.import_module(module), cls_name)
    for o in overrides:
        key = o.split("=", 1)[0]
        assert _key_exists(cls, key), f"{where}: `tracewise {' '.join(path)}` has no config key {key!r}"


def _cited_tests() -> list[tuple[str, str]]:
    """(doc, ``tests/...py[::name]``) for every test file or test the docs cite, in prose or code."""
    out = []
    for doc in DOCS:
        text = (REPO / doc).read_text(encoding="utf-8")
        # a citation may be broken over two lines right after "::" (README: "...py::\ntest_name")
        text = re.sub(r"::\s*\n\s*", "::", text)
        out += [(doc, m) for m in sorted(set(re.findall(r"tests/[\w/]+\.py(?:::\w+)?", text)))]
    return out


@pytest.mark.parametrize("doc, cited", _cited_tests(), ids=[f"{d}:{c}" for d, c in _cited_tests()])
def test_cited_test_exists(doc: str, cited: str) -> None:
    path, _, name = cited.partition("::")
    assert (REPO / path).is_file(), f"{doc} cites {path}, which does not exist"
    if name:
        assert re.search(rf"^(async )?def {name}\(", (REPO / path).read_text(encoding="utf-8"), re.M), \
            f"{doc} cites {cited}: no such test"


def _cited_files() -> list[tuple[str, str]]:
    """(doc, path) for every repo file the docs name: tracewise/, configs/, scripts/, benchmarks/, tests/fixtures/."""
    out = []
    for doc in DOCS:
        text = (REPO / doc).read_text(encoding="utf-8")
        found = [m.group(1) for m in re.finditer(
            r"(?<![\w/.])((?:tracewise|configs|scripts|benchmarks|tests/fixtures)/[\w/.-]*\w)(?![\w<])", text)]
        out += [(doc, p) for p in sorted(set(found)) if "." in p.rsplit("/", 1)[-1] or (REPO / p).is_dir()
                or not p.startswith("tracewise/")]
    return out


@pytest.mark.parametrize("doc, path", _cited_files(), ids=[f"{d}:{p}" for d, p in _cited_files()])
def test_cited_file_exists(doc: str, path: str) -> None:
    assert (REPO / path).exists(), f"{doc} names {path}, which does not exist"
