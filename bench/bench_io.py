"""Load time and peak memory of load_ct, beside the floor (reading the files' bytes)."""
from __future__ import annotations

import os
import time

from common import SHARED_DATA, full_phantom_dicom, measure, rss_mb, write_section

from sscild.io import load_ct


def read_bytes(folder):
    n = 0
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            n += len(f.read_bytes())
    return n


def bench(name, folder, lines):
    read_bytes(folder)                       # warm the page cache: both timings read from memory
    nbytes, t_floor, _ = measure(lambda: read_bytes(folder), repeat=3)
    base = rss_mb()
    cpu = []

    def load():
        c0 = time.process_time()
        scan = load_ct(folder)
        cpu.append(time.process_time() - c0)
        return scan

    scan, t_load, peak = measure(load, repeat=3)
    lines.append(f"| {name} | {'x'.join(map(str, scan.shape[::-1]))} | {nbytes / 1e6:.0f} | {t_floor:.3f} | "
                 f"{t_load:.3f} | {min(cpu):.3f} | {t_load / t_floor:.1f} | {peak - base:.0f} |")


def main():
    lines = ["| scan | voxels (x*y*z) | MB on disk | floor: read bytes (s) | load_ct (s) | load_ct CPU (s) | "
             "load / floor | peak memory added (MB) |", "|---|---|---|---|---|---|---|---|"]
    real = SHARED_DATA / "chest-ct-lung-pet-ct-dx-a0001"
    if real.exists():
        bench("real series Lung-PET-CT-Dx A0001 (64 DICOM files)", real, lines)
    else:
        lines.append(f"| real series | not available ({real.name} missing from the shared data) | | | | | | |")
    bench("phantom 512x512x300 written as DICOM (300 files)", full_phantom_dicom(), lines)
    load = os.getloadavg()[0]
    lines += ["", "Best of 3 runs each, page cache warm (the floor is then a memory copy). CPU = this process's own "
              "time (less sensitive to other processes than the wall time).",
              "Peak memory added = highest resident memory during load_ct minus the resident memory before.",
              f"Load average when the run ended: {load:.1f} on {os.cpu_count()} cores."]
    write_section("io", "Reading scans (issue: foundation)", "python bench/run_all.py io", lines)


if __name__ == "__main__":
    main()
