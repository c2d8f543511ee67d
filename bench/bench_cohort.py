"""Batch processing on dask: throughput with 1 and 2 workers, resume after a kill, broken rows."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time

import pandas as pd
import SimpleITK as sitk
from common import REPO, WORK, write_section

from sscild.cohort import run_batch
from sscild.phantom import make_phantom

N = 20


def make_scans(folder):
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(N):
        f = folder / f"ph{i:02d}.nii.gz"
        if not f.exists():
            scan, _ = make_phantom(2000 + i, extent=float(i * 3))
            sitk.WriteImage(scan.to_sitk(), str(f))
        rows.append({"scan_id": f"s{i:02d}", "path": str(f), "patient_id": f"p{i // 2:02d}",
                     "scan_date": f"{2019 + i % 2}-0{1 + i % 9}-15"})
    return pd.DataFrame(rows)


def status_counts(out):
    st = [json.loads(p.read_text())["status"] for p in (out / "status").glob("*.json")]
    return st.count("done"), st.count("failed")


def stage_means(csv) -> str:
    """Mean seconds per scan and stage of a batch run (its cohort.csv), and what the stages leave (outputs, report,
    worker overhead)."""
    t = pd.read_csv(csv)
    cols = sorted(c for c in t.columns if c.startswith("time_") and c.endswith("_s"))
    means = {c[5:-2]: t[c].mean() for c in cols}
    rest = t["seconds"].mean() - sum(means.values())
    return ("Mean seconds per scan with 1 worker, by stage (from its cohort.csv; the first scan carries the imports "
            "and model loading): " + ", ".join(f"{k} {v:.2f}" for k, v in means.items()) +
            f"; writing outputs and report {rest:.2f}; total {t['seconds'].mean():.2f}.")


def main():
    work = WORK / "cohort"
    df = make_scans(work / "scans")
    manifest = work / "manifest.csv"
    df.to_csv(manifest, index=False)
    lines = [f"{N} phantoms (128x128, ~110 slices of 3 mm), NIfTI; each scan: `sscild batch` defaults (read, lungs, "
             "levels by anatomy and L-Net combined, vessels, quality, density, S-Net scores with TTA, lesion U-Net, "
             "regions), all outputs and report.html. dask LocalCluster, one thread per worker process.", "",
             "| workers | wall time (s) | scans / min | peak memory per worker (MB, max over scans) |",
             "|---|---|---|---|"]
    for workers in (1, 2):
        out = work / f"out_w{workers}"
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        res = run_batch(manifest, out, workers=workers, quiet=True)
        dt = time.perf_counter() - t0
        peak = pd.read_csv(out / "cohort.csv")["peak_rss_mb"].max()
        assert res.n_done == N, res.failures
        lines.append(f"| {workers} | {dt:.1f} | {N / dt * 60:.1f} | {peak:.0f} |")
    lines += ["", stage_means(work / "out_w1" / "cohort.csv")]

    # kill the batch halfway, rerun: only the rest is done
    out = work / "out_kill"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [str(REPO / ".venv" / "bin" / "sscild"), "batch", str(manifest), "-o", str(out), "--workers", "1",
           "--quiet"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while status_counts(out)[0] < N // 2 if (out / "status").exists() else True:
        time.sleep(0.2)
        if proc.poll() is not None:
            break
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(1)
    done_before = status_counts(out)[0]
    # the rerun is the same command (the resume key holds the options as given: a call with other, even equal
    # default, options would rerun every scan)
    rerun = subprocess.run(cmd, capture_output=True, text=True, check=True)
    said = rerun.stdout + rerun.stderr          # the console writes to stderr when it is not a terminal
    n_done, n_failed, n_skipped = map(int, re.search(r"(\d+) done, (\d+) failed, (\d+) skipped", said).groups())
    lines += ["", f"Killed (SIGKILL to the whole process group) after {done_before} of {N} scans were done; the same "
              f"command again skipped {n_skipped}, processed {N - n_skipped} and ended with {n_done} done, "
              f"{n_failed} failed."]

    # two broken rows: a missing file and a corrupt one
    bad = work / "bad.nii.gz"
    bad.write_bytes(b"\x1f\x8b" + os.urandom(500))
    df2 = pd.concat([df, pd.DataFrame([{"scan_id": "missing", "path": str(work / "nope.nii.gz")},
                                       {"scan_id": "corrupt", "path": str(bad)}])], ignore_index=True)
    m2 = work / "manifest_broken.csv"
    df2.to_csv(m2, index=False)
    out = work / "out_broken"
    shutil.rmtree(out, ignore_errors=True)
    res = run_batch(m2, out, workers=2, quiet=True)
    lines += ["", f"Manifest with two broken rows ({len(df2)} rows): {res.n_done} done, {res.n_failed} failed:", ""]
    for r in res.failures.itertuples():
        # paths relative to the project, never this machine's
        lines.append(f"- `{r.scan_id}`: {r.reason}".replace(str(REPO) + os.sep, ""))
    pages = sorted((work / "out_w2" / "patients").glob("*.html"))
    lines += ["", f"Longitudinal pages written: {len(pages)} (patients with two scans each)."]
    write_section("cohort", "Batch on Dask (issue: reports/cohorts)", "python bench/run_all.py cohort", lines)


if __name__ == "__main__":
    main()
