"""Review outputs: the cohort QA gallery for a large batch, and the regional distribution on a full-size phantom and
a real scan.

The gallery reads each scan's levels.json / analysis.json and links its report PNGs; here 500 stand-in scan
folders (small PNGs) are written once under bench/work, then ``write_gallery`` is timed.
"""
from __future__ import annotations

import json
import os
import time

import numpy as np
import pandas as pd
from common import SHARED_DATA, WORK, measure, write_section

from sscild.gallery import Overrides, write_gallery

N = 500


def stand_in_batch(out, n: int) -> pd.DataFrame:
    from PIL import Image

    rng = np.random.default_rng(0)
    img = (rng.random((96, 96)) * 255).astype(np.uint8)
    rows = []
    for i in range(n):
        d = out / "scans" / f"s{i:03d}"
        d.mkdir(parents=True, exist_ok=True)
        z = [-100.0 - 30 * k + rng.normal(0, 3) for k in range(5)]
        if not (d / "levels.json").exists():
            (d / "levels.json").write_text(json.dumps({"levels": [
                {"name": f"L{k + 1}", "z_mm": z[k], "slice_index": 40 - 10 * k, "confidence": 0.9}
                for k in range(5)]}))
            (d / "analysis.json").write_text(json.dumps({"warnings": [], "input": {"spacing_zyx_mm": [1.0]}}))
            for name in ("coronal", "L1", "L2", "L3", "L4", "L5"):
                Image.fromarray(img).save(d / f"report_{name}.png")
        rows.append({"scan_id": f"s{i:03d}", "status": "done", "lung_volume_total_ml": rng.normal(5000, 800),
                     "density_MLA_HU": rng.normal(-820, 30), "density_HAA_pct": abs(rng.normal(8, 3)),
                     "goh_extent": abs(rng.normal(15, 8)), **{f"L{k + 1}_z_mm": z[k] for k in range(5)}})
    return pd.DataFrame(rows)


def regions_lines() -> list[str]:
    from sscild.anatomy import Lungs, segment_lungs
    from sscild.phantom import make_phantom
    from sscild.regions import regional_metrics

    lines = ["| case | shape | regional_metrics wall s | CPU s | peak RSS MB | pattern |", "|---|---|---|---|---|---|"]
    scan, truth = make_phantom(3, size="full", extent=25)
    c0 = time.process_time()
    m, t, mem = measure(lambda: regional_metrics(scan, Lungs(truth.lungs, truth.airways), truth.lesions))
    lines.append(f"| full phantom, true lesions | {scan.shape} | {t:.2f} | {time.process_time() - c0:.2f} | "
                 f"{mem:.0f} | {', '.join(m.pattern)} |")
    real = SHARED_DATA / "chest-ct-lidc-idri-0001" / "ct.nii.gz"
    if real.exists():
        from sscild.io import load_ct

        scan = load_ct(real)
        lungs = segment_lungs(scan)
        c0 = time.process_time()
        m, t, mem = measure(lambda: regional_metrics(scan, lungs))
        lines.append(f"| real LIDC-IDRI-0001, density only | {scan.shape} | {t:.2f} | {time.process_time() - c0:.2f} | "
                     f"{mem:.0f} | "
                     f"{', '.join(m.pattern) or 'none'} (HAA) |")
    return lines


def main() -> None:
    out = WORK / "gallery_500"
    table = stand_in_batch(out, N)
    page, t, mem = measure(lambda: write_gallery(out, table, Overrides()), repeat=3)
    lines = [f"QA gallery of {N} scans (6 images each, stand-in folders): write_gallery {t:.2f} s (best of 3), "
             f"peak RSS {mem:.0f} MB, index.html {page.stat().st_size / 1e6:.2f} MB (images are linked, not "
             "embedded; rows past the 30th load lazily).", ""]
    lines += ["Regional distribution (zones, ventral/dorsal, 10 mm subpleural band: 3D distance to non-lung, by an "
              "exact separable test):", ""]
    lines += regions_lines()
    lines += ["", f"Load average when the run ended: {os.getloadavg()[0]:.1f} on 2 cores (wall times are inflated by "
              "other processes; the CPU column is this process's own time). Peak RSS includes the scan already "
              "in memory."]
    write_section("gallery", "Review outputs: QA gallery and regional distribution", "python bench/run_all.py gallery",
                  lines)


if __name__ == "__main__":
    main()
