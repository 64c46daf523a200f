"""docs/architecture.md's layering, checked on the code: no import cycles, imports point down.

The import graph is read with ``ast`` from every ``.py`` under ``serving/``:
every ``import`` and ``from ... import``, at module level or inside a function
(a deferred import is still a dependency). Rules are written by layer and
package, so a new module fits by where it lives; a new *package* under
``serving/`` must be given a layer here and in docs/architecture.md.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVING = ROOT / "serving"
MODELS = ROOT / "models"

#: Layers from the bottom; a module may import its own layer and the ones below.
#: ``core`` is every module directly in serving/ except the entry points.
LAYERS: dict[str, int] = {
    "core": 0,
    "s3refs": 0,       # the S3-reference requests model authors import (a package of core)
    "server": 1,       # the model server: serve supervisor, MMS config, MMS -> handler adapter
    "runners": 2,      # things that start model-server containers (process, Docker)
    "transform": 3,    # a batch transform: spec, split, batching, data plane, predict()
    "sagemaker": 4,    # the SageMaker API client (boto3)
    "local": 4,        # the embedded AWS stack and its SageMaker API
    "localpipeline": 5,
    "check": 5,
    "capacity": 6,     # smserve plan: the capacity model, and a simulated day that drives it all
    "commands": 6,
    "templates": 6,    # package data for smserve new
    "entry": 6,        # cli.py, demo.py
}
#: Modules directly in serving/ that sit on top rather than in core.
ENTRY_MODULES = {"serving.cli", "serving.demo"}
#: Packages of the same layer that must not import each other (either way).
APART = [("sagemaker", "local"), ("localpipeline", "check")]
#: Narrower rules than the layers give: what a module may import of serving.
ONLY: dict[str, set[str]] = {
    # The handler contract is what models see: no server, no AWS.
    "serving.handler": {"serving.errors", "serving.codecs"},
    "serving.errors": set(),
}
#: What a model's own code (models/*/*.py) may import of serving.
MODEL_MAY_IMPORT = {"serving.handler", "serving.codecs", "serving.s3refs", "serving.errors"}


def module_name(path: Path, root: Path = ROOT) -> str:
    """``serving/transform/spec.py`` -> ``serving.transform.spec``; ``__init__`` -> its package."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def serving_modules() -> dict[str, Path]:
    """Every module of the serving package, by dotted name."""
    return {module_name(p): p for p in sorted(SERVING.rglob("*.py"))}


def imported_names(module: str, path: Path) -> set[str]:
    """Every dotted name ``path`` imports anywhere in it (``from a import b`` gives ``a.b``).

    ``b`` may be a module or a name defined in ``a``; :func:`resolve` tells which.
    """
    is_package = path.name == "__init__.py"
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            names.update(f"{prefix}.{alias.name}" for alias in node.names)
    return names


def resolve(names: Iterable[str], modules: dict[str, Path]) -> set[str]:
    """The serving modules ``names`` refer to: the longest module prefix of each.

    ``serving.x.Class`` -> ``serving.x``; ``serving.x.y`` -> ``serving.x.y`` when y is
    a module. (Importing ``serving.x.y`` also runs ``serving/x/__init__.py``; that
    implicit step is left out, as Python copes with a package that is still
    initialising when its own module imports it.)
    """
    found: set[str] = set()
    for name in names:
        if name != "serving" and not name.startswith("serving."):
            continue
        while name not in modules and "." in name:
            name = name.rsplit(".", 1)[0]
        if name in modules:
            found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    """serving's modules and the serving modules each imports (not itself)."""
    modules = serving_modules()
    return {m: resolve(imported_names(m, p), modules) - {m} for m, p in modules.items()}


def layer_of(module: str) -> str:
    """The layer a serving module belongs to, by the package it lives in."""
    parts = module.split(".")
    if len(parts) == 1:
        return "core"
    if len(parts) == 2 and (SERVING / f"{parts[1]}.py").is_file():
        return "entry" if module in ENTRY_MODULES else "core"
    return parts[1]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for dep in sorted(graph.get(node, ())):
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in on_stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def a_cycle(graph: dict[str, set[str]], members: list[str]) -> list[str]:
    """One closed path through ``members`` (start, ..., start) to name in a failure."""
    inside = set(members)
    start = members[0]
    paths = [[start]]
    while paths:
        path = paths.pop(0)
        for dep in sorted(graph[path[-1]] & inside):
            if dep == start:
                return [*path, start]
            if dep not in path:
                paths.append([*path, dep])
    return members


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_the_graph_sees_imports_inside_functions(graph: dict[str, set[str]]) -> None:
    tree = ast.parse((SERVING / "server" / "serve.py").read_text())
    nested = {n.module for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)
              for n in ast.walk(f) if isinstance(n, ast.ImportFrom)}
    assert "serving.package" in nested  # only imported inside resolve_model_dir()
    assert "serving.package" in graph["serving.server.serve"]


def test_the_resolver_on_relative_and_from_imports() -> None:
    modules = {"serving", "serving.a", "serving.a.b", "serving.c"}
    paths = {m: Path(m) for m in modules}
    assert resolve({"serving.a.b"}, paths) == {"serving.a.b"}
    assert resolve({"serving.c.SomeClass", "serving.a.b.f"}, paths) == {"serving.c", "serving.a.b"}
    assert resolve({"serving.__version__"}, paths) == {"serving"}
    assert resolve({"numpy", "servingx"}, paths) == set()
    assert cycles({"x": {"y"}, "y": {"z"}, "z": {"x"}, "w": {"x"}}) == [["x", "y", "z"]]
    assert a_cycle({"x": {"y"}, "y": {"x"}}, ["x", "y"]) == ["x", "y", "x"]


def test_serving_has_no_import_cycle(graph: dict[str, set[str]]) -> None:
    found = [" -> ".join(a_cycle(graph, members)) for members in cycles(graph)]
    assert not found, "import cycles (break each: move the shared part down a layer, or " \
        "pass it in):\n  " + "\n  ".join(found)


def test_every_module_has_a_layer(graph: dict[str, set[str]]) -> None:
    unplaced = sorted(m for m in graph if layer_of(m) not in LAYERS)
    assert not unplaced, f"{unplaced}: give the package a layer in LAYERS here and in " \
        "docs/architecture.md"


def test_imports_point_down_the_layers(graph: dict[str, set[str]]) -> None:
    wrong = []
    for module, deps in sorted(graph.items()):
        mine = LAYERS.get(layer_of(module))
        for dep in sorted(deps):
            theirs = LAYERS.get(layer_of(dep))
            if mine is not None and theirs is not None and theirs > mine:
                wrong.append(f"{module} ({layer_of(module)}, layer {mine}) imports {dep} "
                             f"({layer_of(dep)}, layer {theirs})")
    assert not wrong, "imports that point up (docs/architecture.md, 'Layers'):\n  " + \
        "\n  ".join(wrong)


def test_packages_of_one_layer_stay_apart(graph: dict[str, set[str]]) -> None:
    wrong = [f"{m} imports {d}" for m, deps in sorted(graph.items()) for d in sorted(deps)
             for a, b in APART
             if {layer_of(m), layer_of(d)} == {a, b}]
    assert not wrong, "\n".join(wrong)


def test_runners_import_nothing_of_transform(graph: dict[str, set[str]]) -> None:
    # Implied by the layers; named because it is the rule most often broken.
    wrong = [f"{m} imports {d}" for m, deps in graph.items() if layer_of(m) == "runners"
             for d in deps if layer_of(d) == "transform"]
    assert not wrong


def test_runners_import_of_server_is_only_its_markers(graph: dict[str, set[str]]) -> None:
    wrong = [f"{m} imports {d}" for m, deps in graph.items() if layer_of(m) == "runners"
             for d in deps if layer_of(d) == "server" and d != "serving.server.markers"]
    assert not wrong, "runners read the worker's marker files; they do not run the server " \
        "code in-process: " + ", ".join(wrong)


@pytest.mark.parametrize("module", sorted(ONLY))
def test_narrow_modules_import_only_what_they_may(graph: dict[str, set[str]],
                                                  module: str) -> None:
    extra = graph[module] - ONLY[module]
    assert not extra, f"{module} may import only {sorted(ONLY[module])} of serving; " \
        f"it imports {sorted(extra)}"


def test_models_import_only_the_handler_level_of_serving() -> None:
    modules = serving_modules()
    wrong = []
    files = sorted(MODELS.glob("*/*.py"))
    assert files
    for path in files:
        used = resolve(imported_names(f"models.{path.parent.name}.{path.stem}", path), modules)
        wrong += [f"{path.relative_to(ROOT)} imports {m}" for m in sorted(used)
                  if m not in MODEL_MAY_IMPORT]
    assert not wrong, f"a model's code may import only {sorted(MODEL_MAY_IMPORT)} of serving " \
        "(what the container gives it):\n  " + "\n  ".join(wrong)


def test_serving_imports_no_folder_outside_it() -> None:
    wrong = []
    for module, path in serving_modules().items():
        for name in sorted(imported_names(module, path)):
            top = name.split(".")[0]
            if top in ("dags", "smserve_dags", "operators", "config", "tests", "bench"):
                wrong.append(f"{module} imports {name}")
            elif top == "local_test" and layer_of(module) not in ("entry", "capacity"):
                wrong.append(f"{module} imports {name} (only the demo and the simulated day "
                             "may: they make synthetic clips)")
    assert not wrong, "\n".join(wrong)


def test_templates_import_modules_that_exist() -> None:
    # The templates of smserve new are not Python until filled in; their imports are.
    modules = serving_modules()
    wrong = []
    for path in sorted((SERVING / "templates").glob("*.tmpl")):
        for line in path.read_text().splitlines():
            words = line.split()
            if len(words) >= 2 and words[0] in ("from", "import") and \
                    words[1].split(".")[0] == "serving" and words[1] not in modules:
                wrong.append(f"{path.name}: {line.strip()}")
    assert not wrong, "templates import modules serving does not have:\n  " + "\n  ".join(wrong)
