"""The floors of `src/modelyard`: no module imports a package above its own.

Every `import` and `from ... import` of a modelyard module is read with `ast` (those under
`TYPE_CHECKING` and inside functions too: a hidden import is still a dependency). A package's floor
comes from `FLOORS` (docs/architecture/design.md's target layout, adapted to what exists); a module imports only
packages on its floor or below, except the composition root and the `EXCEPTIONS`, each with its
reason. Run as a script (`python tests/test_layers.py [path/to/src/modelyard]`) it prints the
counts: upward imports, package cycles and module cycles.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "modelyard"

# From the bottom up; a package (or top-level module) imports only its floor and those below.
FLOORS: list[set[str]] = [
    # `deps`: how a route reaches a component of its app (each package names its own)
    {"modelyard", "config", "errors", "schemas", "deps"},
    # the mechanisms: what changed and which cache forgets it, the HTTP edge, storage, the database
    {"db", "artifacts", "changes", "edge", "ratelimit", "polling"},
    {"auth"},
    {"teams"},
    {"observability", "files"},
    {"serving"},
    {"registry"},
    {"predictions", "drift", "webhooks", "experiments", "downloads"},
    {"accounts", "jobs", "compare"},
    {"audit"},
    {"web"},
]
# The composition root: it builds the components and knows every package.
ROOT = {"app", "cli", "__main__", "composition", "state"}

# Imports that go up a floor today, each with its reason; (importing module, imported package).
_STATE = (
    "the dashboard's page context hands its pages the process's components (web/ is the top"
    " floor: every route below it takes the one component it needs)"
)
EXCEPTIONS: dict[tuple[str, str], str] = {
    ("modelyard.web.http", "state"): _STATE,
    ("modelyard.registry.service", "drift"): (
        "registering a version stores its drift reference in the same transaction"
    ),
    ("modelyard.registry.router", "drift"): "the upload route takes the drift reference file",
    ("modelyard.registry.service", "experiments"): (
        "a version logged from a run checks the run belongs to the uploader"
    ),
    ("modelyard.registry.service", "predictions"): (
        "a version's tensor schema names datatypes as the Open Inference Protocol does"
        " (predictions.oip.to_datatype: the pure codec, numpy only)"
    ),
}


@dataclass(frozen=True, slots=True)
class Import:
    module: str  # importing module, e.g. "modelyard.jobs.queue"
    target: str  # imported module, e.g. "modelyard.jobs.service"


def floor_of(package: str) -> int | None:
    """Return the floor of a package or top-level module; None for the composition root."""
    if package in ROOT:
        return None
    for number, floor in enumerate(FLOORS):
        if package in floor:
            return number
    raise AssertionError(f"modelyard.{package} has no floor: add it to FLOORS")


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def module_names() -> dict[str, Path]:
    names: dict[str, Path] = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def imports() -> list[Import]:
    """Return every import of a modelyard module by a modelyard module, once per pair."""
    return sorted(set(_imports()), key=lambda imp: (imp.module, imp.target))


def _imports() -> Iterator[Import]:
    """Yield every import of a modelyard module by a modelyard module, resolved to a module."""
    names = module_names()
    for module, path in names.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative (banned by ruff, resolved anyway)
                    anchor = module.split(".")
                    anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                    base = ".".join([*anchor, base] if base else anchor)
                # `from modelyard.jobs import service` names a module; `from x import Name` not
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in names else base
                    for alias in node.names
                ]
            else:
                continue
            for target in targets:
                if target == "modelyard" or target.startswith("modelyard."):
                    while target not in names:  # `import modelyard.a.b.Name` style leftovers
                        target = target.rsplit(".", 1)[0]
                    if target != module:
                        yield Import(module, target)


def upward(found: list[Import]) -> list[Import]:
    """Return the imports of a package above the importer's floor (the root excepted)."""
    up = []
    for imp in found:
        here, there = floor_of(package_of(imp.module)), floor_of(package_of(imp.target))
        if here is None:
            continue
        if there is None or there > here:
            up.append(imp)
    return up


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Return the strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def graphs(found: list[Import]) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    packages: dict[str, set[str]] = defaultdict(set)
    modules: dict[str, set[str]] = defaultdict(set)
    for imp in found:
        modules[imp.module].add(imp.target)
        src, dst = package_of(imp.module), package_of(imp.target)
        if src != dst:
            packages[src].add(dst)
    return packages, modules


def test_every_package_has_a_floor() -> None:
    for module in module_names():
        floor_of(package_of(module))  # raises for a package nobody placed


def test_no_module_imports_a_package_above_it() -> None:
    undeclared = sorted(
        f"{imp.module} -> {imp.target}"
        for imp in upward(imports())
        if (imp.module, package_of(imp.target)) not in EXCEPTIONS
    )
    assert undeclared == []


def test_every_declared_exception_is_still_needed() -> None:
    used = {(imp.module, package_of(imp.target)) for imp in upward(imports())}
    assert sorted(set(EXCEPTIONS) - used) == []


def test_jobs_modules_import_no_circle() -> None:
    _, modules = graphs(imports())
    jobs = {m: {t for t in ts if t.startswith("modelyard.jobs")} for m, ts in modules.items()}
    assert cycles({m: ts for m, ts in jobs.items() if m.startswith("modelyard.jobs")}) == []


def main() -> None:
    found = imports()
    up = upward(found)
    packages, modules = graphs(found)
    print(f"imports between modelyard modules: {len(found)}")  # noqa: T201 - a report
    print(f"upward imports: {len(up)}")  # noqa: T201 - a report
    for imp in up:
        print(f"  {imp.module} -> {imp.target}")  # noqa: T201 - a report
    package_cycles = cycles(packages)
    print(f"package cycles: {len(package_cycles)}")  # noqa: T201 - a report
    for cycle in package_cycles:
        print("  " + " ".join(cycle))  # noqa: T201 - a report
    module_cycles = cycles(modules)
    print(f"module cycles: {len(module_cycles)}")  # noqa: T201 - a report
    for cycle in module_cycles:
        print("  " + " ".join(cycle))  # noqa: T201 - a report
    # What remains once routes take their components instead of the whole state (item 2).
    found = [
        imp for imp in found if package_of(imp.target) != "state" or package_of(imp.module) in ROOT
    ]
    packages, modules = graphs(found)
    print(  # noqa: T201 - a report
        f"without the state: upward imports {len(upward(found))}, "
        f"package cycles {cycles(packages)}, module cycles {len(cycles(modules))}"
    )


if __name__ == "__main__":
    if len(sys.argv) > 1:
        SRC = Path(sys.argv[1]).resolve()
    main()
