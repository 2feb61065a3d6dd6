"""jaxgen's imports point one way: from the launcher down to the shared modules, never back up,
and without cycles. Read from the source (every import, also those inside functions), so
nothing needs importing."""

from __future__ import annotations

import ast
import os

import jaxgen

PACKAGE = os.path.dirname(os.path.abspath(jaxgen.__file__))

# Bottom to top: a module may import from its own layer or the layers below it.
LAYERS = (
    ("errors", "backend", "config", "log", "data", "losses", "optim", "stability", "sharding",
     "checkpoint", "augment", "image_folder", "diffusion", "sd", "study", "loop", "viz",
     "models", "workdir"),
    ("evaluator",),
    ("grid",),
    ("report",),
    ("trainers",),
    ("experiment",),
    ("cli",),
)
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _modules() -> dict[str, str]:
    """Dotted name (without `jaxgen.`) -> file, for every module of the package."""
    out = {}
    for root, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(root, f), PACKAGE)[:-3].replace(os.sep, ".")
                out[rel.removesuffix(".__init__").removesuffix("__init__")] = os.path.join(root, f)
    return out


def _imports(path: str, modules: dict[str, str]) -> set[str]:
    """The package's modules that the file at `path` imports."""
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name.startswith("jaxgen.") and name[len("jaxgen."):] in modules:
                found.add(name[len("jaxgen."):])
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        # `from jaxgen.models import layers` names both the package and its module: keep the
        # module alone, the package (its __init__) only when nothing below it was named.
        deps = _imports(path, modules) - {name, ""}
        graph[name] = {d for d in deps if not any(o.startswith(d + ".") for o in deps)}
    return graph


def _layer(module: str) -> int:
    top = module.split(".")[0]
    assert top in RANK, f"jaxgen.{module} belongs to no layer: add it to LAYERS"
    return RANK[top]


def test_imports_point_down_the_layers():
    wrong = [f"jaxgen.{m} imports jaxgen.{d}"
             for m, deps in _graph().items() if m for d in sorted(deps)
             if _layer(d) > _layer(m)]
    assert not wrong, "imports pointing up the layers:\n" + "\n".join(wrong)


def test_no_import_cycles():
    graph = _graph()
    cycles, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                cycles.append(" -> ".join(path[path.index(dep):] + [node, dep]))
            elif dep not in state:
                visit(dep, path + [node])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_checks_see_the_imports():
    graph = _graph()
    assert {"grid", "report", "sharding"} <= graph["experiment"]
    assert "cli" not in set().union(*(deps for m, deps in graph.items() if m != "cli"))
