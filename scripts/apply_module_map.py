"""Rewrite old-layout tracewise module paths to the new layout (issue 14), using MODULE_MAP.txt.

    python scripts/apply_module_map.py FILE...        # rewrites the files in place, prints what changed

For code written against the old layout (before the stage packages) while the layout changed. One
pass, longest name first, so ``tracewise.curate.mix_teacher`` is not first turned into
``tracewise.curate.stage.mix_teacher``; safe to run on files that already use the new layout (a
name that exists in the new tree is left alone). ``from OLD import a, b`` is split per name when the
names went to different modules (e.g. ``tracewise.controls``). Delete this script with MODULE_MAP.txt.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_map() -> dict[str, str]:
    pairs = [line.split() for line in (ROOT / "MODULE_MAP.txt").read_text().splitlines() if line.strip()]
    return {old: new for old, new in pairs}


def new_modules() -> dict[str, set[str]]:
    """``{module: names in its __all__}`` for every module of the new tree (empty set: no __all__)."""
    out = {}
    for path in (ROOT / "tracewise").rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names: set[str] = set()
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in node.targets):
                names = {e.value for e in node.value.elts}
        out[".".join(parts)] = names
    return out


MAP = load_map()
MODULES = new_modules()


def rename(dotted: str) -> str:
    """The new name of an old dotted name (module or module.symbol); unchanged if it is not old."""
    if dotted in MODULES:  # already a module of the new tree
        return dotted
    parts = dotted.split(".")
    for i in range(len(parts), 1, -1):
        head = ".".join(parts[:i])
        if head in MODULES and i < len(parts) and parts[i] in MODULES[head]:
            return dotted  # a name the new package exports
        if head in MAP:
            return ".".join([MAP[head], *parts[i:]])
        if head in MODULES:  # a new-layout prefix: leave the rest alone
            return dotted
    return dotted


FROM = re.compile(r"^(?P<indent>[ \t]*)from (?P<mod>tracewise(?:\.\w+)*) import (?P<names>\([^)]*\)|[^\n#]*?)(?P<tail>[ \t]*(#[^\n]*)?)$",
                  re.M)


def fix_from(m: re.Match) -> str:
    mod, indent = m.group("mod"), m.group("indent")
    raw = m.group("names").strip().strip("()")
    items = [n.strip() for n in raw.replace("\n", " ").split(",") if n.strip()]
    groups: dict[str, list[str]] = {}
    for item in items:
        name, _, alias = (p.strip() for p in item.partition(" as "))
        target_mod, target_name = mod, name
        if f"{mod}.{name}" in MODULES or name in MODULES.get(mod, set()):
            pass  # a submodule of the new tree, or a name the new package exports
        elif f"{mod}.{name}" in MAP:  # a module or symbol that moved on its own
            target_mod, _, target_name = MAP[f"{mod}.{name}"].rpartition(".")
        elif mod in MAP:
            target_mod = MAP[mod]
        alias = alias or (name if target_name != name else "")
        groups.setdefault(target_mod, []).append(target_name + (f" as {alias}" if alias and alias != target_name else ""))
    if list(groups) == [mod] and groups[mod] == items:
        return m.group(0)
    lines = [f"{indent}from {target} import {', '.join(names)}" for target, names in groups.items()]
    return "\n".join(lines) + m.group("tail")


DOTTED = re.compile(r"(?<![\w.])tracewise(?:\.\w+)+(?![\w/])")
PATH = re.compile(r"(?<![\w/.])tracewise(?:/\w+)+\.py\b")


def fix_path(m: re.Match) -> str:
    dotted = m.group(0)[:-3].replace("/", ".")
    new = rename(dotted)
    if new == dotted:
        return m.group(0)
    return new.replace(".", "/") + ("/__init__.py" if (ROOT / new.replace(".", "/")).is_dir() else ".py")


def rewrite(text: str) -> str:
    text = FROM.sub(fix_from, text)
    lines = []
    for line in text.split("\n"):
        if FROM.match(line):  # already handled (and may be new-layout now)
            lines.append(line)
            continue
        line = PATH.sub(fix_path, line)
        lines.append(DOTTED.sub(lambda m: rename(m.group(0)), line))
    return "\n".join(lines)


if __name__ == "__main__":
    for f in sys.argv[1:]:
        p = Path(f)
        old = p.read_text(encoding="utf-8")
        new = rewrite(old)
        if new != old:
            p.write_text(new, encoding="utf-8")
            print(f"rewrote {f}")
