"""The bad-input corpus (tests/badinput) and the reader fuzz, run as tests; their outcomes as a table; and the
batch acceptance of issue 16: ``sscild batch`` killed with SIGKILL at random points 10 times (``--no-kill`` skips it).

Every row is one test of ``tests/badinput`` (one case each, see tests/badinput/README.md): its docstring gives the
case and the expected outcome, the ``outcome`` fixture records what was observed. Nothing here is typed by hand.
A test that fails with an assertion is a "wrong outcome"; one that fails with any other exception a "traceback".
"""
from __future__ import annotations

import collections
import sys
import time

import pytest
from common import REPO, WORK, write_section


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


def corpus_section() -> int:
    """Run the corpus and the fuzz; write bench/results/reliability.md; return the number of bad outcomes."""
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
    frows, fdt = run([str(REPO / "tests" / "test_fuzz_readers.py")])
    lines += ["", f"Reader fuzz (`tests/test_fuzz_readers.py`, hypothesis, {fdt:.0f} s):", "",
              "| test | result | examples and outcomes |", "|---|---|---|"]
    for nodeid, r in sorted(frows.items()):
        lines.append(f"| `{nodeid.split('::')[-1]}` | {r['status']} | "
                     f"{_cell(r.get('fuzz_summary', r.get('observed', '')))} |")
    write_section("reliability", "Reliability: the bad-input corpus (issue 16)", "python bench/run_all.py reliability",
                  lines)
    return counts.get("TRACEBACK", 0) + counts.get("WRONG OUTCOME", 0) + sum(
        r["status"] == "failed" for r in frows.values())


def main(argv: list[str]) -> int:
    """``--no-kill``: only the corpus and the fuzz; ``--kill-only``: only the SIGKILL acceptance."""
    bad = corpus_section() if "--kill-only" not in argv else 0
    if "--no-kill" not in argv:
        lines = [f"`run_batch` ({N_SCANS} phantoms of 96x96x56; lungs, levels, density, every output and the report; "
                 "1 worker, in its own process) killed with SIGKILL "
                 f"(the whole process group) at random times {N_KILLS} times; after each kill the folder is checked "
                 "(every scan folder complete with its analysis.json, cohort rows matching analysis.json, the table "
                 "holding every scan once, no scan done twice):", ""] + sigkill_trials()
        write_section("reliability_kill", "Reliability: a batch killed with SIGKILL 10 times (issue 16)",
                      "python bench/run_all.py reliability", lines)
    return 1 if bad else 0


# --------------------------------------------------------------------------------------------
# acceptance: a batch killed with SIGKILL at random points, 10 times
# --------------------------------------------------------------------------------------------
N_SCANS, N_KILLS = 12, 10


def _kill_phantoms(folder):
    """Small phantoms (NIfTI) of different sizes and disease, with their true lung volumes."""
    import json

    import SimpleITK as sitk

    from sscild.phantom import make_phantom

    folder.mkdir(parents=True, exist_ok=True)
    rows, truth = [], {}
    for i in range(N_SCANS):
        f = folder / f"k{i}.nii.gz"
        t = folder / f"k{i}.truth.json"
        if not (f.exists() and t.exists()):
            scan, tr = make_phantom(500 + i, extent=float(5 * i), shape=(56, 96, 96), spacing=(5.0, 3.6, 3.6))
            sitk.WriteImage(scan.to_sitk(), str(f))
            t.write_text(json.dumps({k: tr.volumes_ml[k] for k in ("right", "left")}))
        truth[f"s{i}"] = sum(json.loads(t.read_text()).values())
        rows.append({"scan_id": f"s{i}", "path": str(f)})
    return rows, truth


def _state(out):
    """(done status texts by scan, problems found) of a batch folder after a kill."""
    import json

    import pandas as pd

    problems, done = [], {}
    for f in sorted((out / "status").glob("*.json")) if (out / "status").exists() else []:
        text = f.read_text()
        if json.loads(text)["status"] == "done":
            done[f.stem] = text
    for d in sorted((out / "scans").iterdir()) if (out / "scans").exists() else []:
        if d.name.startswith("."):
            continue  # a temporary folder of the killed run: removed by the next run
        try:
            a = json.loads((d / "analysis.json").read_text())
        except (OSError, ValueError):
            problems.append(f"{d.name}: folder without a complete analysis.json")
            continue
        if d.name in done and json.loads(done[d.name])["row"]["lung_volume_total_ml"] != \
                a["lungs"]["volumes_ml"]["total"]:
            problems.append(f"{d.name}: cohort row and analysis.json disagree")
    if (out / "cohort.csv").exists():
        t = pd.read_csv(out / "cohort.csv", dtype={"scan_id": str})
        if sorted(t["scan_id"]) != sorted(f"s{i}" for i in range(N_SCANS)):
            problems.append("cohort.csv does not hold every scan once")
    return done, problems


def sigkill_trials(seed: int = 16) -> list[str]:
    """Kill ``sscild batch`` (the whole process group) at random times N_KILLS times, check after every kill, then
    let a last run finish and check the end state against the phantoms' true lung volumes."""
    import json
    import os
    import random
    import shutil
    import signal
    import subprocess

    import pandas as pd

    work = WORK / "reliability_kill"
    rows, truth = _kill_phantoms(work / "scans")
    manifest = work / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    # lungs, levels, density, every output file and the report (no learned stages: the batch, not the models, is tested)
    cmd = [sys.executable, "-c", "import sys; from sscild.cohort import run_batch; run_batch(sys.argv[1], sys.argv[2], "
           "workers=1, quiet=True, options={'scores': False, 'lesions': False})", str(manifest), str(out)]
    rng = random.Random(seed)
    seen: dict[str, str] = {}
    lines = ["| kill | killed after (s) | scans done before this run | done by this run | checks after the kill |",
             "|---|---|---|---|---|"]
    redone = 0
    for k in range(1, N_KILLS + 1):
        before = len(seen)
        delay = rng.uniform(12.0, 45.0)
        p = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        done, problems = _state(out)
        for sid, text in done.items():
            if sid in seen and seen[sid] != text:
                redone += 1
                problems.append(f"{sid} done again")
            seen.setdefault(sid, text)
        lines.append(f"| {k} | {delay:.1f} | {before} | {len(seen) - before} | "
                     f"{'; '.join(problems) or 'ok'} |")
    t0 = time.perf_counter()
    final = subprocess.run(cmd, capture_output=True, text=True)
    done, problems = _state(out)
    table = pd.read_csv(out / "cohort.csv", dtype={"scan_id": str}).set_index("scan_id")
    off = {sid: abs(table.loc[sid, "lung_volume_total_ml"] - v) / v for sid, v in truth.items()}
    wrong = [sid for sid in truth if off[sid] > 0.05]
    leftovers = [p.name for p in (out / "scans").iterdir() if p.name.startswith(".")]
    leftovers += [p.name for p in (out / "status").glob(".*")]
    changed = [sid for sid, text in done.items() if sid in seen and seen[sid] != text]
    lines += ["", f"Last run (not killed, {time.perf_counter() - t0:.0f} s, exit {final.returncode}): "
              f"{int((table['status'] == 'done').sum())} of {N_SCANS} done, {len(done) - len(seen)} computed by it; "
              f"scans done before and redone: {len(changed) + redone}; cohort rows {len(table)} "
              f"(unique ids: {table.index.is_unique}); rows whose lung volume is off the phantom's truth by > 5 %: "
              f"{len(wrong)} (largest difference {100 * max(off.values()):.1f} %); leftover temporary files or "
              f"folders: {len(leftovers)}; problems: {'; '.join(problems) or 'none'}."]
    return lines


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
