"""The package's import graph: imports go only downward (or sideways within a layer) and never in a circle.

Every `import` / `from ... import` in every module is read, those inside functions included, so a
late import cannot hide an upward dependency or a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "legend"

# Lowest first. A module may import modules of its own layer or of any layer below it.
LAYERS: list[tuple[str, ...]] = [
    (
        "legend._version",
        "legend.errors",
        "legend.io",
        "legend.metrics",
        "legend.resources",
        "legend.registry",
        "legend.registries",
    ),
    ("legend.data", "legend.models", "legend.testing"),
    ("legend.encoding",),
    ("legend.directions", "legend.margins", "legend.induce"),
    ("legend.annotation", "legend.selection"),
    (
        "legend.engines",
        "legend.quality",
        "legend.report",
        "legend.audit",
        "legend.rewards",
        "legend.align",
        "legend.demo",
    ),
    ("legend.pipeline", "legend"),  # the facade, and the public API that names what the layers below define
    ("legend.cli",),
]

# Inside a package split by mechanism, lowest first: a submodule imports only submodules listed before it
# (its `__init__` re-exports them all). Every submodule must be listed here.
SUBMODULES: dict[str, tuple[str, ...]] = {
    "legend.io": ("paths", "atomic", "locks", "guards", "json_file", "safetensors_file", "formats", "tables"),
    "legend.data": (
        "values",
        "json_values",
        "csv_values",
        "reading",
        "schema",
        "builtin_layouts",
        "layouts",
        "streaming",
        "contrast",
        "pairs",
        "margin_column",
    ),
    "legend.models": ("placement", "embedded", "fingerprint", "loader", "loaded", "spec"),
    "legend.encoding": ("pooling", "config", "templates", "batching", "capture", "sharing", "encoder", "generation"),
    "legend.directions": ("estimators", "card", "artifact", "build"),
    "legend.annotation": ("card", "settings", "metadata", "differences", "finish", "memory"),
    "legend.selection": ("stable", "sweeps", "band", "preferences", "select", "recipes", "files", "cache"),
    "legend.engines": ("store", "outputs", "local", "ray_engine"),
    "legend.report": ("figures", "page", "build"),
    "legend.quality": ("agreement", "floor", "labelled"),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(module: str) -> int:
    """The layer of a module: the longest listed name that is the module or one of its packages (the root
    package `legend` covers only itself: every other module must be listed)."""
    best, rank = -1, None
    for index, names in enumerate(LAYERS):
        for name in names:
            inside = module.startswith(name + ".") and name != "legend"
            if (module == name or inside) and len(name) > best:
                best, rank = len(name), index
    if rank is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS in {__file__}")
    return rank


def imported_modules(source: str, name: str, is_package: bool, modules: set[str]) -> set[str]:
    """The legend modules that the code of module `name` imports, wherever the import statement stands."""
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                stem = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            # `from pkg import sub` imports the submodule sub when there is one.
            targets = [f"{stem}.{alias.name}" if f"{stem}.{alias.name}" in modules else stem for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t == "legend" or t.startswith("legend."))
    found.discard(name)
    return found


def import_graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(f) for f in files}
    return {
        module_name(f): imported_modules(
            f.read_text(encoding="utf-8"), module_name(f), f.name == "__init__.py", modules
        )
        for f in files
    }


def test_every_module_is_in_a_layer():
    for module in import_graph():
        layer_of(module)


def test_imports_only_go_down():
    upward = [
        f"{module} (layer {layer_of(module)}) imports {target} (layer {layer_of(target)})"
        for module, targets in import_graph().items()
        for target in sorted(targets)
        if layer_of(target) > layer_of(module)
    ]
    assert upward == []


def test_submodules_import_only_those_below_them():
    graph = import_graph()
    for package, order in SUBMODULES.items():
        rank = {f"{package}.{name}": index for index, name in enumerate(order)}
        found = {module for module in graph if module.startswith(package + ".")}
        assert found == set(rank), f"list every submodule of {package} in SUBMODULES"
        upward = [
            f"{module} imports {target}"
            for module in sorted(found)
            for target in sorted(graph[module])
            if target == package or (target in rank and rank[target] >= rank[module])
        ]
        assert upward == []


def test_no_import_cycles():
    graph = import_graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                cycles.append(trail[trail.index(target) :] + [target] if target in trail else [node, target])
            elif target not in state:
                visit(target, trail + [target])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


@pytest.mark.parametrize(
    "source, expected",
    [
        ("from .. import pipeline\n", {"legend.pipeline"}),
        ("from ..annotation import Annotation\n", {"legend.annotation"}),
        ("def f():\n    from legend.quality import x\n", {"legend.quality"}),
        ("import legend.cli.app\nimport numpy\n", {"legend.cli.app"}),
    ],
)
def test_the_checker_sees_late_and_relative_imports(source, expected):
    """The checker itself, on code placed as legend/engines/local.py: late and relative imports are found."""
    modules = {"legend.pipeline", "legend.quality", "legend.cli.app", "legend.annotation", "legend.engines.local"}
    assert imported_modules(source, "legend.engines.local", False, modules) == expected
    assert layer_of("legend.engines.local") < layer_of("legend.pipeline")
