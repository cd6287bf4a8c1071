"""The package's import graph: no cycle, and the core never reaches up.

Every module of ``larq_esbnn`` is parsed with ``ast`` (nothing is imported), and
every ``import`` / ``from ... import`` counts, at module level and inside
functions alike; relative imports are resolved, and ``from pkg import name``
is an edge to ``pkg.name`` when that is a module, else to ``pkg``. Importing
``a.b`` also runs ``a/__init__``; those implicit edges to parent packages are
not counted (the root ``__init__`` imports the public modules, so counting them
would make every module a cycle).

Layers, bottom up: ``util`` and ``errors`` (import nothing from the package) and
``registry`` (imports ``errors`` only),
``quantizers`` -> ``layers`` -> ``blocks``, then ``torch_import`` and
``weights`` (conversion and loading; they build a model, and find its
checkpoint rules, by name only through ``registry``), then the families in
``models`` (which register their checkpoint rules and weights records into the
layers below), then ``detection`` (detectors on the families' feature maps;
``report`` and ``export`` import it so that the detectors are registered), then
``report``, ``export``, ``inference``, ``train`` and the CLI.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "larq_esbnn"
CORE = ("util", "errors", "registry", "quantizers", "layers", "blocks")
# conversion and loading: below the families, which register their weights and
# checkpoint rules into them
LOADERS = ("torch_import", "weights")


def module_files(root):
    """``{dotted module name: path}`` of every ``.py`` file below package folder ``root``."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def import_graph(root):
    """``{module: set of modules of the same package it imports}``."""
    files = module_files(root)
    top = root.name
    graph = {}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        package = name if is_package else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    base = ".".join(base + ([node.module] if node.module else []))
                else:
                    base = node.module
                found = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            for target in found:
                while target and target not in files:  # import a.b.c where c is a name, not a module
                    target = target.rpartition(".")[0]
                if target and target.split(".")[0] == top and target != name:
                    targets.add(target)
        graph[name] = targets
    return graph


def find_cycle(graph):
    """One cycle as a list of modules (first == last), or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def reachable(graph, start):
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def by_package(graph):
    """The graph with every module of a sub-package (``models``, ``train``) merged into it."""

    def unit(name):
        parts = name.split(".")
        return ".".join(parts[:2])

    merged = {}
    for name, targets in graph.items():
        merged.setdefault(unit(name), set()).update(unit(t) for t in targets if unit(t) != unit(name))
    return merged


@pytest.fixture(scope="module")
def graph():
    return import_graph(PACKAGE)


def test_graph_sees_the_package(graph):
    assert {"larq_esbnn.layers", "larq_esbnn.models.resnet20", "larq_esbnn.train.trainer"} <= set(graph)
    assert "larq_esbnn.layers" in graph["larq_esbnn.blocks"]
    assert "larq_esbnn.models.common" in graph["larq_esbnn.models.resnet20"]


def test_no_import_cycle(graph):
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_cycle_between_subpackages(graph):
    cycle = find_cycle(by_package(graph))
    assert cycle is None, "import cycle between packages: " + " -> ".join(cycle)


@pytest.mark.parametrize("core", CORE)
def test_core_reaches_only_core(graph, core):
    name = f"larq_esbnn.{core}"
    assert name in graph
    above = sorted(m for m in reachable(graph, name) if m.split(".")[1] not in CORE)
    assert not above, f"{name} imports (directly or not) {', '.join(above)}"


def test_detection_sits_between_models_and_the_tools(graph):
    packages = by_package(graph)
    assert "larq_esbnn.models" in packages["larq_esbnn.detection"]
    for tool in ("larq_esbnn.report", "larq_esbnn.export"):
        assert "larq_esbnn.detection" in packages[tool]
    above = {"larq_esbnn.report", "larq_esbnn.export", "larq_esbnn.inference", "larq_esbnn.train",
             "larq_esbnn.cli"}
    assert not reachable(packages, "larq_esbnn.detection") & above
    assert "larq_esbnn.detection" not in reachable(packages, "larq_esbnn.models")


@pytest.mark.parametrize("loader", LOADERS)
def test_loaders_reach_only_core_and_loaders(graph, loader):
    name = f"larq_esbnn.{loader}"
    above = sorted(m for m in reachable(graph, name) if m.split(".")[1] not in CORE + LOADERS)
    assert not above, f"{name} imports (directly or not) {', '.join(above)}"


def test_checker_finds_cycles_and_upward_imports(tmp_path):
    """The checks above on a made-up package: a cycle closed by a relative
    import inside a function, and a core module reaching ``models``."""
    pkg = tmp_path / "pkg"
    (pkg / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from pkg import layers\n")
    (pkg / "layers.py").write_text("import numpy\n\ndef f():\n    from . import weights\n")
    (pkg / "weights.py").write_text("from pkg.models.common import finish\n")
    (pkg / "models" / "__init__.py").write_text("")
    (pkg / "models" / "common.py").write_text("def finish():\n    from ..layers import f\n")
    graph = import_graph(pkg)
    assert graph["pkg.layers"] == {"pkg.weights"}
    assert graph["pkg.models.common"] == {"pkg.layers"}
    assert find_cycle(graph) == ["pkg.layers", "pkg.weights", "pkg.models.common", "pkg.layers"]
    assert "pkg.models.common" in reachable(graph, "pkg.layers")
    (pkg / "models" / "common.py").write_text("def finish():\n    return 1\n")
    graph = import_graph(pkg)
    assert find_cycle(graph) is None
    (pkg / "weights.py").write_text("from pkg.models import common\nimport pkg.layers\n")
    assert find_cycle(by_package(import_graph(pkg))) == ["pkg.layers", "pkg.weights", "pkg.layers"]
