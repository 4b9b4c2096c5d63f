"""Packages import only downwards, no module imports itself back through others, and every import
names the installed package ``babelgate``.

Layers, bottom up: ``paths`` and ``refusal`` (leaves: nothing of babelgate), ``gate`` (the method;
only ``gate/hf/``, which loads models, may read ``paths`` for the cache root), ``server``,
``evaluation``, ``cli``. Every import counts, function-level ones included (a lazy import must
not hide a cycle). Read from the source's AST: nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAYERS = {"paths": 0, "refusal": 0, "gate": 1, "server": 2, "evaluation": 3, "cli": 4}


def _modules() -> dict[str, Path]:
    """Every babelgate module by its import name (``babelgate.gate.estimator``): the folders
    ``gate/``, ``server/``, ... install as subpackages of ``babelgate`` (pyproject.toml)."""
    out = {}
    for package in LAYERS:
        for path in (REPO / package).rglob("*.py"):
            parts = ("babelgate", *path.relative_to(REPO).with_suffix("").parts)
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(path: Path) -> list[str]:
    """The absolute module names a source file imports (``from pkg import name`` as pkg.name)."""
    targets = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            targets += [f"{node.module}.{a.name}" for a in node.names]
    return targets


def _edges(modules: dict[str, Path]) -> set[tuple[str, str]]:
    """(importer, imported module) for every import of a babelgate module."""
    edges = set()
    for name, path in modules.items():
        for target in _imports(path):
            while target and target not in modules:  # "from pkg import name" -> pkg
                target = target.rpartition(".")[0]
            if target and target != name:
                edges.add((name, target))
    return edges


def _layer(module: str) -> str:
    return module.split(".")[1]


def test_packages_import_only_downwards() -> None:
    modules = _modules()
    assert {"babelgate.cli.main", "babelgate.refusal.judge", "babelgate.paths",
            "babelgate.evaluation.sweep"} <= set(modules)
    wrong = []
    for a, b in _edges(modules):
        pa, pb = _layer(a), _layer(b)
        if pa == pb:
            continue
        if LAYERS[pb] >= LAYERS[pa] or (pa == "gate" and not a.startswith("babelgate.gate.hf.")):
            wrong.append(f"{a} imports {b}")
    assert not wrong, wrong


def test_no_import_cycle_between_modules() -> None:
    graph: dict[str, set[str]] = {}
    for a, b in _edges(_modules()):
        graph.setdefault(a, set()).add(b)
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError(" -> ".join([*path[path.index(nxt) :], nxt]))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_nothing_imports_the_old_top_level_names() -> None:
    """``gate``, ``server``, ... are folders of the checkout, not installed modules: an import of
    one works only from the repository root and would load a second copy of the module."""
    sources = [*REPO.glob("*/**/*.py")]
    wrong = [f"{path.relative_to(REPO)} imports {target}"
             for path in sources if ".venv" not in path.parts
             for target in _imports(path) if target.split(".")[0] in LAYERS]  # fmt: skip
    assert sources and not wrong, wrong
