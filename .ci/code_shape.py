"""Product code stays readable: no function over 60 lines, none of cyclomatic grade D or worse.

    python .ci/code_shape.py        # prints each offender; exit code 1 if there is one

Product code is api/, workers/ and services/, except the SVOR stand-in
(services/standin/), which is a test fixture that ships with the CLI. Grades are
radon's: D starts at a complexity of 21.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from radon.complexity import cc_rank, cc_visit

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ("api", "workers", "services")
EXEMPT = ("services/standin/",)
MAX_LINES = 60
WORST_GRADE = "C"


def product_files(root: Path = ROOT) -> list[Path]:
    return sorted(
        path
        for package in PRODUCT
        for path in (root / package).rglob("*.py")
        if not path.relative_to(root).as_posix().startswith(EXEMPT)
    )


def long_functions(path: Path, limit: int = MAX_LINES) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            lines = (node.end_lineno or node.lineno) - node.lineno + 1
            if lines > limit:
                found.append(f"{node.name} ({node.lineno}): {lines} lines, over {limit}")
    return found


def complex_blocks(path: Path, worst: str = WORST_GRADE) -> list[str]:
    found = []
    for block in cc_visit(path.read_text()):
        grade = cc_rank(block.complexity)
        if grade > worst:
            found.append(
                f"{block.name} ({block.lineno}): complexity {block.complexity}, grade {grade}"
            )
    return found


def offenders(root: Path = ROOT) -> list[str]:
    return [
        f"{path.relative_to(root)}: {problem}"
        for path in product_files(root)
        for problem in (*long_functions(path), *complex_blocks(path))
    ]


def main() -> int:
    found = offenders()
    for line in found:
        print(line)
    checked = len(product_files())
    print(f"code shape: {checked} files, {len(found)} offenders", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
