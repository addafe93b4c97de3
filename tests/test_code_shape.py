"""The code's shape (issue 26): no function in comlab/ over 80 lines of body, and the server's
class within 300 lines, so each stays readable in one screen or a few."""

from __future__ import annotations

import ast
from pathlib import Path

import comlab

ROOT = Path(comlab.__file__).parent
MAX_BODY = 80
MAX_SERVER = 300


def body_lines(node) -> int:
    """Lines from the first statement after the docstring to the end of the function."""
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]
    return node.end_lineno - body[0].lineno + 1 if body else 0


def functions():
    for path in sorted(ROOT.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path.relative_to(ROOT).as_posix(), node


def test_body_lines_counts_from_the_first_statement_after_the_docstring():
    f = ast.parse('def f():\n    """Doc\n    string."""\n    a = 1\n\n    return a\n').body[0]
    assert body_lines(f) == 3


def test_no_function_over_80_lines_of_body():
    long = {(rel, f.name): body_lines(f) for rel, f in functions() if body_lines(f) > MAX_BODY}
    assert long == {}, long


def test_server_class_within_300_lines():
    tree = ast.parse((ROOT / "system" / "server.py").read_text())
    server = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Server")
    assert server.end_lineno - server.lineno + 1 <= MAX_SERVER
