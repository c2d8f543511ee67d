"""Run every benchmark and write bench/RESULTS.md.

Each ``bench/bench_<stage>.py`` is run in its own process (so peak memory is per stage) and writes
``bench/results/<stage>.md``; this script then joins those sections into ``bench/RESULTS.md``.
Run one stage with ``python bench/run_all.py io`` (its section is rewritten, the others kept).
Every figure in RESULTS.md comes from these scripts; none is typed by hand.
"""
from __future__ import annotations

import datetime as _dt
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def main(argv: list[str]) -> int:
    scripts = sorted(HERE.glob("bench_*.py"))
    if argv:
        wanted = {a.removeprefix("bench_").removesuffix(".py") for a in argv}
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in wanted]
    RESULTS.mkdir(exist_ok=True)
    failed = []
    for s in scripts:
        print(f"== {s.name}", flush=True)
        r = subprocess.run([sys.executable, str(s)], cwd=HERE.parent)
        if r.returncode != 0:
            failed.append(s.name)
    import os

    head = [
        "# sscild benchmarks",
        "",
        "Written by `make bench` (`python bench/run_all.py`); every figure below is produced by the",
        "script named in its section. Do not edit by hand.",
        "",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}",
        f"- last full or partial run: {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        "",
    ]
    sections = [p.read_text().rstrip() + "\n" for p in sorted(RESULTS.glob("*.md"))]
    (HERE / "RESULTS.md").write_text("\n".join(head) + "\n" + "\n".join(sections))
    if failed:
        print("failed:", ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
