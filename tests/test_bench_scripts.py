"""Every benchmark writes bench/results/ only when asked: a run to look at figures (a helper's,
CI's, a user's) leaves the committed results as they are."""

import ast
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
SCRIPTS = sorted(p for p in BENCH.glob("*.py") if "write_text(" in p.read_text())


def _writes_guarded_by_write_flag(tree: ast.Module) -> tuple[bool, list[int]]:
    """Whether the parser takes --write, and the lines of write_text calls outside any
    ``if args.write`` (or ``if write``) branch."""
    has_flag = any(
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "add_argument"
        and any(isinstance(a, ast.Constant) and a.value == "--write" for a in node.args)
        for node in ast.walk(tree)
    )
    guarded: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "write" in ast.unparse(node.test):
            guarded |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    loose = [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "write_text"
        and id(node) not in guarded
    ]
    return has_flag, loose


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_bench_writes_results_only_with_write(script):
    has_flag, loose = _writes_guarded_by_write_flag(ast.parse(script.read_text()))
    assert has_flag, f"{script.name} has no --write option"
    assert not loose, f"{script.name} writes outside `if args.write` at lines {loose}"


def test_the_check_finds_an_unguarded_write():
    source = (
        "import argparse\n"
        "parser = argparse.ArgumentParser()\n"
        "parser.add_argument('--write', action='store_true')\n"
        "args = parser.parse_args()\n"
        "if args.write:\n    out.write_text('a')\n"
        "out.write_text('b')\n"
    )
    assert _writes_guarded_by_write_flag(ast.parse(source)) == (True, [7])
