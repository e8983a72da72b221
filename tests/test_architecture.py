"""The codebase's shape, checked: layers, code size, a direct test for every services/ module.

The layers are import-linter's contracts in pyproject.toml (``lint-imports``), the
size and complexity rules are ``.ci/code_shape.py``'s; CI runs both too.
"""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, and every ``package.name`` of a ``from package import
    name`` (which may be a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _services_modules() -> list[str]:
    modules = []
    for path in sorted((ROOT / "services").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] in ("__init__", "__main__"):
            continue
        modules.append(".".join(parts))
    return modules


def test_layers_hold() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.exists():
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    out = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


def test_no_long_or_complex_product_function() -> None:
    spec = importlib.util.spec_from_file_location("code_shape", ROOT / ".ci" / "code_shape.py")
    assert spec is not None and spec.loader is not None
    shape = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shape)
    assert shape.offenders() == []


def test_code_shape_finds_what_it_should(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("code_shape", ROOT / ".ci" / "code_shape.py")
    assert spec is not None and spec.loader is not None
    shape = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shape)
    long = tmp_path / "long.py"
    long.write_text("def f():\n" + "    x = 1\n" * 60)
    assert shape.long_functions(long) == ["f (1): 61 lines, over 60"]
    branchy = tmp_path / "branchy.py"
    branchy.write_text(
        "def g(x):\n" + "".join(f"    if x == {i}:\n        return {i}\n" for i in range(21))
    )
    assert shape.complex_blocks(branchy) == ["g (1): complexity 22, grade D"]


def test_every_services_module_has_a_test_that_imports_it() -> None:
    imported: set[str] = set()
    for path in (ROOT / "tests").rglob("test_*.py"):
        imported |= _imports(path)
    missing = [m for m in _services_modules() if m not in imported]
    assert missing == [], f"services modules no test imports directly: {missing}"


def test_bench_imports_no_test_module() -> None:
    for path in (ROOT / "bench").rglob("*.py"):
        tests = sorted(m for m in _imports(path) if m == "tests" or m.startswith("tests."))
        assert tests == [], f"{path.name} imports {tests}"


def test_api_import_loads_neither_celery_nor_the_pipeline() -> None:
    """The API gets its Dispatcher by name at start-up: importing it loads no queue."""
    probe = (
        "import sys, api.app; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('celery', 'workers') "
        "or m in ('services.jobs.pipeline', 'services.engines.local.tracking')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
