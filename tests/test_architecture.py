"""The package's layout is its pipeline: each part imports only the parts below it, no module imports itself back
through others, and no module grows past ~300 lines (docs/architecture.md draws the picture)."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "nni_mrs_plugin"

# lowest first: a part may import itself and the parts before it, never one after it
LAYERS = ["host.fixes", "host.compat", "host.registry", "device", "models", "data", "attacks", "bounds", "checkpoint",
          "host.diagnose", "host.graph", "host.hidden", "host.masks", "host.blocks", "host.speedup", "evaluate", "roofline", "deploy", "budget", "mrs", "train",
          "harp", "job"]
FACADES = {"nni_mrs_plugin", "nni_mrs_plugin.__main__"}  # the public API: loads anything, by name, on first use
MAX_LINES = 300


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


def _imports(name: str, path: Path):
    """Every module of this package that ``name`` imports, at any depth of its code (lazy imports count)."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("nni_mrs_plugin"):
                submodules = {f"{target}.{alias.name}" for alias in node.names} & set(KNOWN)
                found.update(submodules or {target})  # "from . import compat" imports the module compat
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("nni_mrs_plugin"))
    return found


KNOWN = [name for name, _ in _modules()]
MODULES = dict(_modules())
GRAPH = {name: {t for t in _imports(name, path) if t in MODULES and t != name} for name, path in MODULES.items()}


def _layer(module: str) -> int:
    short = module[len("nni_mrs_plugin."):]
    for index, part in enumerate(LAYERS):
        if short == part or short.startswith(part + "."):
            return index
    if short in ("host", "nni"):  # the host package and its old name: compat and registry, nothing heavier
        return LAYERS.index("host.registry")
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS and docs/architecture.md")


def test_every_module_has_a_layer():
    for name in MODULES:
        if name not in FACADES:
            _layer(name)


def test_no_upward_import():
    upward = [f"{source} -> {target}" for source, targets in GRAPH.items() if source not in FACADES
              for target in targets if target not in FACADES and _layer(target) > _layer(source)]
    assert not upward, "imports against the pipeline's order:\n" + "\n".join(sorted(upward))


def test_no_import_cycle():
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in GRAPH[node]:
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for name in MODULES:
        if name not in state:
            visit(name)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_is_short(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines; split it by concept"


def test_the_walker_sees_lazy_and_relative_imports():
    """The checks above are only as good as this parser: a function-level relative import must be found."""
    assert "nni_mrs_plugin.job.report" in GRAPH["nni_mrs_plugin.job.pipeline"]  # imported inside Pipeline.report
    assert "nni_mrs_plugin.host.compat" in GRAPH["nni_mrs_plugin.host.registry"]  # "from . import compat"
