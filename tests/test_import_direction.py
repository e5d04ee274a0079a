"""Imports point down the stage chain, and no two modules import each other (issue 14).

Modelled on torchtune's ``test_import_recipes`` (components must never import recipes): every module
under ``tracewise/`` is parsed with ``ast`` and every import it makes, at module level AND inside
functions, is checked, so a function-level import cannot hide an upward dependency or a cycle.
Imports through strings count too: a ``"tracewise.x.y:Name"`` registry entry and a literal
``importlib.import_module("tracewise.x.y")``.

The chain, lowest first (a module may import its own layer and the layers below it):

    core -> world -> backends -> verify -> data -> generate -> curate -> train -> evaluate -> report
    -> studies -> cli

``verify`` sits below ``data`` because the benchmark loaders check every gold answer with the
verifier (``tracewise.data.benchmarks.check_golds`` -> ``tracewise.verify.answer.parse_gold_ok``);
the verify package needs nothing from ``data``. Lazy imports of heavy optional third-party packages
(vllm, deepspeed, fastapi) are not tracewise imports and are not checked.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import tracewise

LAYERS: list[tuple[str, ...]] = [
    ("tracewise", "tracewise.core"),  # the root package only holds version constants
    ("tracewise.world",),
    ("tracewise.backends",),
    ("tracewise.verify",),
    ("tracewise.data",),
    ("tracewise.generate",),
    ("tracewise.curate",),
    ("tracewise.train",),
    ("tracewise.evaluate",),
    ("tracewise.report",),
    ("tracewise.studies",),
    ("tracewise.cli",),
]


def module_names(root: Path) -> dict[str, Path]:
    """``{dotted module name: file}`` for every ``.py`` under ``root/tracewise``."""
    out = {}
    for path in sorted((root / "tracewise").rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[int, str]]:
    """``(line, imported tracewise module)`` for every import in the file, wherever it stands."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                found.append((node.lineno, sub if sub in modules else base))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and ":" in node.value:
            target = node.value.split(":")[0]
            if target in modules and target.startswith("tracewise."):
                found.append((node.lineno, target))
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.append((node.lineno, node.args[0].value))
    return [(line, target) for line, target in found if target == "tracewise" or target.startswith("tracewise.")]


def layer_of(module: str) -> int:
    best, rank = -1, None
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, rank = len(p), i
    assert rank is not None, f"{module} is in no layer: add its package to LAYERS"
    return rank


def upward_imports(root: Path) -> list[str]:
    modules = module_names(root)
    bad = []
    for name, path in modules.items():
        for line, target in imports_of(name, path, modules):
            if layer_of(target) > layer_of(name):
                bad.append(f"{path.relative_to(root)}:{line}: {name} imports {target}, a higher layer "
                           f"({LAYERS[layer_of(target)][0]} is above {LAYERS[layer_of(name)][-1]})")
    return bad


def import_cycles(root: Path) -> list[list[str]]:
    """Strongly connected components of more than one module (or a module importing itself)."""
    modules = module_names(root)
    graph = {name: sorted({t for _, t in imports_of(name, path, modules) if t in modules and t != name})
             for name, path in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return cycles


ROOT = Path(tracewise.__file__).resolve().parents[1]


def test_every_import_points_down_the_chain():
    assert upward_imports(ROOT) == []


def test_no_import_cycles():
    assert import_cycles(ROOT) == []


def test_domain_base_imports_only_core():
    modules = module_names(ROOT)
    targets = {t for _, t in imports_of("tracewise.world.domains.base", modules["tracewise.world.domains.base"], modules)}
    assert all(t.startswith("tracewise.core") for t in targets), targets


@pytest.fixture
def fake_tree(tmp_path: Path) -> Path:
    pkg = tmp_path / "tracewise"
    for sub in ("core", "verify", "report", "studies"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "core" / "config.py").write_text("import json\n")
    (pkg / "verify" / "answer.py").write_text("from tracewise.core.config import json\n")
    (pkg / "report" / "stage.py").write_text("def run():\n    from tracewise.studies import quick\n")
    (pkg / "studies" / "quick.py").write_text("from tracewise.report.stage import run\n")
    return tmp_path


def test_checker_catches_a_function_level_upward_import_and_its_cycle(fake_tree: Path):
    assert upward_imports(fake_tree) == [
        "tracewise/report/stage.py:2: tracewise.report.stage imports tracewise.studies.quick, a higher layer "
        "(tracewise.studies is above tracewise.report)"]
    assert import_cycles(fake_tree) == [["tracewise.report.stage", "tracewise.studies.quick"]]


def test_checker_sees_registry_strings_and_relative_imports(fake_tree: Path):
    (fake_tree / "tracewise" / "core" / "config.py").write_text('REG = {"x": "tracewise.verify.answer:Thing"}\n')
    (fake_tree / "tracewise" / "verify" / "pool.py").write_text("from ..report import stage\n")
    bad = upward_imports(fake_tree)
    assert len(bad) == 3  # these two and report -> studies
    assert set(bad) >= {
        "tracewise/core/config.py:1: tracewise.core.config imports tracewise.verify.answer, a higher layer "
        "(tracewise.verify is above tracewise.core)",
        "tracewise/verify/pool.py:1: tracewise.verify.pool imports tracewise.report.stage, a higher layer "
        "(tracewise.report is above tracewise.verify)"}
