"""The layout of the test suite: helpers live in tests/support (or a domain's helper module) and
are imported from there; a conftest.py holds only fixtures and hooks, and nothing imports one.

A helper imported from a conftest makes pytest's plugin file a library: it is imported twice
(once by pytest, once by the import), and a reader looking for a helper has to search every
conftest. Subprocess scripts inside string literals count too: `python -c "from tests.x import"`.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
# `from tests.a.conftest import x`, `import tests.conftest`, `-m tests.conftest`, in code or text.
_CONFTEST_IMPORT = re.compile(r"\b(?:from|import|-m)\s+tests(?:\.\w+)*\.conftest\b")


def conftest_imports(source: str) -> list[str]:
    """Return the lines of `source` (code and string literals alike) that import a conftest."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module:
            modules = [node.module]
        elif isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            found += [m.group(0) for m in _CONFTEST_IMPORT.finditer(node.value)]
            continue
        else:
            continue
        found += [m for m in modules if m.split(".")[-1] == "conftest"]
    return found


def _is_fixture(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    for decorator in node.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if isinstance(target, ast.Attribute) and target.attr == "fixture":
            return True
    return False


def public_helpers(source: str) -> list[str]:
    """Return the public functions and classes of a conftest that are neither a fixture nor a
    pytest hook: helpers that belong in a module of their own."""
    helpers = []
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            if node.name.startswith(("_", "pytest_")) or _is_fixture(node):
                continue
            helpers.append(node.name)
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            helpers.append(node.name)
    return helpers


def _modules() -> list[Path]:
    """The suite's modules but this one (whose own checks hold examples of what they catch)."""
    return sorted(p for p in TESTS.rglob("*.py") if p != Path(__file__).resolve())


def test_no_test_module_imports_a_conftest() -> None:
    offenders = {
        str(path.relative_to(TESTS)): found
        for path in _modules()
        if (found := conftest_imports(path.read_text(encoding="utf-8")))
    }
    assert offenders == {}, "move these helpers to tests/support/ and import them from there"


@pytest.mark.parametrize(
    "path", sorted(TESTS.rglob("conftest.py")), ids=lambda p: str(p.relative_to(TESTS))
)
def test_a_conftest_holds_only_fixtures_and_hooks(path: Path) -> None:
    assert public_helpers(path.read_text(encoding="utf-8")) == []


def test_the_checks_see_imports_of_a_conftest_in_code_and_in_scripts() -> None:
    source = """
import tests.conftest
from tests.jobs.conftest import JOB_SETTINGS
SCRIPT = "from tests.client.conftest import make_login; make_login(url)"
from tests.support.settings import make_settings
"""
    assert conftest_imports(source) == [
        "tests.conftest",
        "tests.jobs.conftest",
        "from tests.client.conftest",
    ]


def test_the_checks_see_a_helper_defined_in_a_conftest() -> None:
    source = """
import pytest

def make_thing(): ...

class Thing: ...

@pytest.fixture
def thing(): ...

@pytest.fixture(scope="session")
async def things(): ...

def _private(): ...

def pytest_configure(config): ...
"""
    assert public_helpers(source) == ["make_thing", "Thing"]
