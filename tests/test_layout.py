"""The package layout stays true: stages import one way along the pipeline, no cycles.

Walks every module of `scaling/` with `ast` (nothing is imported), so a new import
against the pipeline's direction or a new module-level cycle fails here, with the
offending modules named.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "scaling"

#: The pipeline, first stage first: a module may import its own stage and those before it.
STAGES = ("base", "sweep", "models", "plan", "train", "run", "report", "cli")
BASE = {"scaling._exports", "scaling.enums", "scaling.errors", "scaling.rundir"}
#: The facade (`scaling.__init__` re-exports every stage) and `python -m scaling` sit with the CLI.
ENTRY = {"scaling", "scaling.__main__"}
#: A module past this many lines is a prompt to look for a second concept in it (the
#: formatter decides line breaks: a module is never squeezed under this)
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def stage(module: str) -> int:
    if module in BASE:
        return 0
    if module in ENTRY:
        return STAGES.index("cli")
    return STAGES.index(module.split(".")[1])


def _target(module: str, name: str | None) -> str:
    """`from module import name`: the submodule when `name` is one, else the module."""
    if name and f"{module}.{name}" in MODULES:
        return f"{module}.{name}"
    return module


def _imports(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "scaling"]
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        if node.module.split(".")[0] == "scaling":
            return [_target(node.module, a.name) for a in node.names]
    return []


def imports_of(path: Path) -> tuple[set[str], set[str]]:
    """(imports run when the module loads, imports inside functions)."""
    tree = ast.parse(path.read_text())
    eager: set[str] = set()
    every: set[str] = set()
    for node in ast.walk(tree):
        every.update(_imports(node))

    def visit(body: list[ast.stmt]) -> None:  # module level, through if/try, not into defs
        for stmt in body:
            eager.update(_imports(stmt))
            if isinstance(stmt, ast.If | ast.Try | ast.With):
                for field in ("body", "orelse", "finalbody", "handlers"):
                    for child in getattr(stmt, field, []):
                        visit(child.body if isinstance(child, ast.ExceptHandler) else [child])

    visit(tree.body)
    return eager, every


GRAPH = {name: imports_of(path) for name, path in MODULES.items()}


def test_every_module_is_in_a_stage() -> None:
    for name in MODULES:
        if name not in BASE | ENTRY:
            assert name.split(".")[1] in STAGES, f"{name} is in no stage; stages: {STAGES}"


def test_imports_point_one_way_along_the_pipeline() -> None:
    wrong = [
        f"{name} ({STAGES[stage(name)]}) imports {dep} ({STAGES[stage(dep)]})"
        for name, (_, every) in GRAPH.items()
        for dep in sorted(every)
        if dep in MODULES and stage(dep) > stage(name)
    ]
    assert not wrong, "imports against the pipeline's direction:\n" + "\n".join(wrong)


def test_nothing_imports_the_cli() -> None:
    users = [
        f"{name} imports {dep}"
        for name, (_, every) in GRAPH.items()
        if not name.startswith("scaling.cli") and name not in ENTRY
        for dep in every
        if dep.startswith("scaling.cli")
    ]
    assert not users


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep) :] + [dep]
            if dep not in state and (found := dfs(dep)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := dfs(node)):
            return found
    return None


def _eager_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, (eager, _) in GRAPH.items():
        deps = {d for d in eager if d in MODULES}
        for dep in list(deps):  # importing a.b.c runs a.b's __init__ first
            parts = dep.split(".")
            deps.update(".".join(parts[:i]) for i in range(2, len(parts)))
        graph[name] = deps - {name}
    return graph


def test_no_import_cycle_at_module_level() -> None:
    assert _cycle(_eager_graph()) is None, f"import cycle: {' -> '.join(_cycle(_eager_graph()))}"


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize(
    "package", sorted(n for n, p in MODULES.items() if p.name == "__init__.py")
)
def test_every_package_says_what_it_holds(package: str) -> None:
    doc = ast.get_docstring(ast.parse(MODULES[package].read_text()))
    assert doc and len(doc) > 60, f"{package} needs a docstring: what it holds, what it imports"


def test_modules_stay_small() -> None:
    long = {n: len(p.read_text().splitlines()) for n, p in MODULES.items()}
    assert not {n: k for n, k in long.items() if k > MAX_LINES}


def test_public_names_resolve() -> None:
    import scaling

    for name in scaling.__all__:
        assert getattr(scaling, name) is not None
    for package in ("sweep", "models", "plan", "train", "run", "report"):
        module = __import__(f"scaling.{package}", fromlist=["__all__"])
        for name in module.__all__:
            assert getattr(module, name) is not None, f"scaling.{package}.{name}"


#: import name -> distribution name, where they differ
DISTRIBUTIONS = {"PIL": "pillow", "yaml": "pyyaml", "sklearn": "scikit-learn"}


def _declared() -> dict[str, str]:
    """Every requirement of pyproject.toml (dependencies and extras): name -> specifier."""
    import re

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        reqs += extra
    out = {}
    for req in reqs:
        name, spec = re.match(r"([A-Za-z0-9_.-]+)(?:\[[^]]*\])?\s*(.*)", req).groups()
        out[name.lower()] = spec
    return out


def test_every_third_party_import_is_declared_with_a_range() -> None:
    import sys

    imported = set()
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"scaling"}
    declared = _declared()
    missing = sorted(m for m in third_party if DISTRIBUTIONS.get(m, m).lower() not in declared)
    assert not missing, f"imported but not in pyproject.toml: {missing}"
    unbounded = sorted(m for m in third_party if not declared[DISTRIBUTIONS.get(m, m).lower()])
    assert not unbounded, f"declared without a version range: {unbounded}"
