"""The layout says what runs where: the system under test never loads the lab's heavy libraries."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SYSTEM = ["comlab.system.server", "comlab.system.worker", "comlab.system.client",
          "comlab.system.worker_host", "comlab.run_server", "comlab.run_client"]


@pytest.mark.parametrize("module", SYSTEM)
def test_system_modules_import_no_pandas_or_matplotlib(module):
    # A fresh interpreter: this test process has imported pandas long ago.
    code = (f"import sys, {module}; "
            "print(','.join(m for m in ('pandas', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout.strip()
    assert out == "", f"importing {module} loaded {out}"


ROOT = Path(__file__).resolve().parents[1]


def test_vulture_finds_no_dead_code():
    """``vulture comlab --min-confidence 80`` (issue 26): what it reports is dead, or is
    explained in a whitelist passed to it here."""
    pytest.importorskip("vulture")
    found = subprocess.run([sys.executable, "-m", "vulture", "comlab", "--min-confidence", "80"],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert found.returncode == 0, found.stdout + found.stderr


LONG_FUNCTION_LINES = 80
# The parts whose long functions were split (issue 26); comlab/system/ is split on its own.
SHORT_FUNCTIONS = ["comlab/plots.py", "comlab/sim", "comlab/lab", "comlab/cli.py",
                   "comlab/notebook.py", "comlab/data.py"]


def _body_lines(fn) -> int:
    """Lines of a function's body, its docstring not counted."""
    first = fn.body[0]
    docstring = (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                 and isinstance(first.value.value, str))
    body = fn.body[1:] if docstring and len(fn.body) > 1 else fn.body
    return fn.end_lineno - body[0].lineno + 1


def test_no_function_has_more_than_80_lines_of_body():
    long = []
    for where in SHORT_FUNCTIONS:
        path = ROOT / where
        for f in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            for node in ast.walk(ast.parse(f.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    if _body_lines(node) > LONG_FUNCTION_LINES:
                        long.append(f"{f.relative_to(ROOT)}:{node.lineno} {node.name} "
                                    f"({_body_lines(node)} lines)")
    assert not long, long
