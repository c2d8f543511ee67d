"""House rules of the code that a reader relies on: short functions, and every shipped model covered by the card
tests."""
from __future__ import annotations

import ast
import textwrap
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "sscild"
MAX_LINES = 80


def function_lengths(source: str) -> list[tuple[str, int, int]]:
    """(name, first line, number of lines from ``def`` to the last line of the body) of every function and method,
    nested ones included."""
    return [(n.name, n.lineno, n.end_lineno - n.lineno + 1) for n in ast.walk(ast.parse(source))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def test_the_length_check_counts_def_to_last_line_and_sees_nested_functions():
    code = textwrap.dedent('''
        def outer():
            """doc"""
            def inner():
                return 1
            return inner
        ''')
    assert sorted(function_lengths(code)) == [("inner", 4, 2), ("outer", 2, 5)]
    long = "def f():\n" + "    x = 1\n" * MAX_LINES
    assert function_lengths(long) == [("f", 1, MAX_LINES + 1)]


def test_no_function_in_src_is_over_80_lines():
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 50
    too_long = [f"{f.relative_to(SRC.parent)}:{line} {name} ({n} lines)"
                for f in files for name, line, n in function_lengths(f.read_text(encoding="utf-8")) if n > MAX_LINES]
    assert too_long == [], "split these into named steps: " + "; ".join(too_long)


def test_every_shipped_model_has_its_card_checked():
    """tests/test_bundle.py checks the schema and recomputes the metrics of the models it lists: that list is every
    folder with a card under src/sscild/models."""
    import test_bundle

    shipped = {d.name for d in (SRC / "models").iterdir() if (d / "card.json").exists()}
    assert shipped and shipped == set(test_bundle.SHIPPED)
