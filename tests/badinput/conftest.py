"""The bad-input corpus's conventions (see README.md here): one test per case, docstring
``"<case>: <expected outcome>"``, and the ``outcome`` fixture recording what was observed.

The recorded outcome goes to the JUnit XML as test properties (``case``, ``expected``, ``kind``, ``observed``),
from which ``bench/bench_reliability.py`` builds the table of cases.
"""
from __future__ import annotations

import re
import traceback
from contextlib import contextmanager
from typing import Iterator, Sequence

import pytest

from sscild.errors import SscildError

KINDS = ("clear error", "correct + warning", "correct result")


def _first_line(text: str, limit: int = 160) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[:limit - 3] + "..."


class Outcome:
    """What one bad-input case observed; exactly one record per test."""

    def __init__(self, record_property, hide: tuple[str, ...] = ()) -> None:
        self._record = record_property
        self._hide = hide
        self.kind: str | None = None

    def _set(self, kind: str, observed: str) -> None:
        assert self.kind is None, "one case per test: record a single outcome"
        assert kind in KINDS
        self.kind = kind
        self._record("kind", kind)
        for h in self._hide:  # no path of this machine in the table
            observed = str(observed).replace(h, "<tmp>")
        self._record("observed", _first_line(observed))

    @contextmanager
    def error(self, exc_type: type[SscildError], match: str | None = None) -> Iterator[None]:
        """The block must raise ``exc_type`` (a project error) whose message matches ``match``."""
        assert issubclass(exc_type, SscildError), f"{exc_type} is not an sscild.errors.SscildError"
        try:
            yield
        except exc_type as err:
            msg = str(err)
            assert len(msg.split()) >= 4, f"error message too short to say what to do: {msg!r}"
            if match is not None:
                assert re.search(match, msg), f"message {msg!r} does not match {match!r}"
            self._set("clear error", f"{type(err).__name__}: {msg}")
            return
        pytest.fail(f"expected {exc_type.__name__}, nothing was raised")

    def warning(self, text: str | Sequence[str], match: str) -> None:
        """The result was correct (asserted by the test) and ``text`` (a warning/note) names the cause."""
        texts = [text] if isinstance(text, str) else list(text)
        hits = [t for t in texts if re.search(match, str(t))]
        assert hits, f"no warning matching {match!r} in {texts!r}"
        self._set("correct + warning", hits[0])

    def correct(self, detail: str) -> None:
        """The result was correct (asserted by the test) and needs no warning."""
        self._set("correct result", detail)

    def cli(self, args: list[str], exit_code: int, match: str | None = None) -> str:
        """Run ``sscild ARGS`` in-process as a user would; return its output (stdout + stderr)."""
        from typer.testing import CliRunner

        from sscild.cli import app

        res = CliRunner().invoke(app, args, catch_exceptions=True)
        output = res.output
        exc = res.exception
        if isinstance(exc, SscildError):  # sscild.cli.main turns these into one line and exit 2
            output += f"\nerror: {exc}"
            code = 2
        elif exc is not None and not isinstance(exc, SystemExit):
            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            pytest.fail(f"sscild {' '.join(args)} ended in a traceback:\n{tb}")
        else:
            code = res.exit_code
        assert "Traceback" not in output, output
        assert code == exit_code, f"exit code {code}, expected {exit_code}; output:\n{output}"
        if match is not None:
            assert re.search(match, output), f"output does not match {match!r}:\n{output}"
        lines = [ln for ln in output.splitlines() if ln.strip()]
        shown = next((ln for ln in lines if match and re.search(match, ln)), lines[-1] if lines else "")
        self._set("clear error" if code else "correct result", f"exit {code}: {shown}")
        return output


def _case(item) -> tuple[str, str]:
    doc = (getattr(item, "function", None).__doc__ or "").strip().splitlines()
    first = doc[0].strip() if doc else ""
    if ": " not in first:
        return "", ""
    case, expected = first.split(": ", 1)
    return case.strip(), expected.strip()


@pytest.fixture(autouse=True)
def outcome(request, record_property) -> Iterator[Outcome]:
    """Records the case's name and expectation (from the docstring) and what was observed."""
    case, expected = _case(request.node)
    if not case:
        pytest.fail(f"{request.node.name}: the docstring's first line must be '<case>: <expected outcome>'")
    record_property("case", case)
    record_property("expected", expected)
    o = Outcome(record_property, (str(request.config._tmp_path_factory.getbasetemp()),))
    yield o
    if o.kind is None and not getattr(request.node, "_sscild_failed", False):
        pytest.fail(f"{request.node.name} recorded no outcome: call outcome.error/warning/correct/cli")


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    rep = (yield).get_result()
    if rep.when == "call" and rep.failed:
        item._sscild_failed = True  # the failure itself is the outcome; don't add a second one
