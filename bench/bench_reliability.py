"""The bad-input corpus (tests/badinput) and the reader fuzz, run as tests; their outcomes as a table.

Every row is one test of ``tests/badinput`` (one case each, see tests/badinput/README.md): its docstring gives the
case and the expected outcome, the ``outcome`` fixture records what was observed. Nothing here is typed by hand.
A test that fails with an assertion is a "wrong outcome"; one that fails with any other exception a "traceback".
"""
from __future__ import annotations

import collections
import sys
import time

import pytest
from common import REPO, write_section


class Collect:
    """A pytest plugin keeping each test's recorded properties and how it ended."""

    def __init__(self) -> None:
        self.rows: dict[str, dict] = {}

    def pytest_runtest_logreport(self, report) -> None:
        row = self.rows.setdefault(report.nodeid, {"status": "passed"})
        row.update(dict(report.user_properties))
        if report.failed:
            text = str(report.longrepr)
            crash = getattr(getattr(report.longrepr, "reprcrash", None), "message", text.splitlines()[-1])
            assertion = crash.startswith(("AssertionError", "Failed", "assert"))
            row["status"] = "failed"
            row["kind"] = "WRONG OUTCOME" if assertion else "TRACEBACK"
            row["observed"] = " ".join(crash.split())[:160]
        elif report.skipped and report.when in ("setup", "call"):
            row["status"] = "skipped"
            row["kind"] = "skipped"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def run(paths: list[str]) -> tuple[dict[str, dict], float]:
    plugin = Collect()
    t0 = time.perf_counter()
    pytest.main(["-q", "-p", "no:cacheprovider", *paths], plugins=[plugin])
    return plugin.rows, time.perf_counter() - t0


def main() -> int:
    rows, dt = run([str(REPO / "tests" / "badinput")])
    counts = collections.Counter(r.get("kind", "?") for r in rows.values())
    lines = [f"{len(rows)} cases in `tests/badinput` ({dt:.0f} s): "
             + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
             + f"; tracebacks: {counts.get('TRACEBACK', 0)}, wrong outcomes: {counts.get('WRONG OUTCOME', 0)}.", "",
             "| # | case | expected | outcome | observed (first line of the error or warning) | test |",
             "|---|---|---|---|---|---|"]
    for i, (nodeid, r) in enumerate(sorted(rows.items()), start=1):
        test = nodeid.split("/")[-1]
        lines.append(f"| {i} | {_cell(r.get('case', ''))} | {_cell(r.get('expected', ''))} | {r.get('kind', '?')} "
                     f"| {_cell(r.get('observed', ''))} | `{test}` |")
    fuzz = REPO / "tests" / "test_fuzz_readers.py"
    if fuzz.exists():
        frows, fdt = run([str(fuzz)])
        lines += ["", f"Reader fuzz (`tests/test_fuzz_readers.py`, hypothesis, {fdt:.0f} s):", "",
                  "| test | result | examples and outcomes |", "|---|---|---|"]
        for nodeid, r in sorted(frows.items()):
            lines.append(f"| `{nodeid.split('::')[-1]}` | {r['status']} | {_cell(r.get('fuzz_summary', ''))} |")
    write_section("reliability", "Reliability: the bad-input corpus (issue 16)", "python bench/run_all.py reliability",
                  lines)
    bad = counts.get("TRACEBACK", 0) + counts.get("WRONG OUTCOME", 0)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
