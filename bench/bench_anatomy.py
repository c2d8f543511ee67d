"""Lungs, levels and density: accuracy on held-out phantoms, behaviour on real scans, speed and memory."""
from __future__ import annotations

import json
import sys

import numpy as np
from common import SHARED_DATA, full_phantom_dicom, measure, rss_mb, write_section

from sscild.anatomy import segment_lungs
from sscild.density import density_metrics
from sscild.errors import SscildError
from sscild.evaluate import dice
from sscild.io import load_ct
from sscild.levels import LEVELS, find_levels
from sscild.phantom import make_phantom

SEEDS = range(1000, 1024)      # held out: tests and development used seeds below 300


def phantom_accuracy(lines):
    rows, errs = [], {n: [] for n in LEVELS}
    for i, seed in enumerate(SEEDS):
        extent = float(np.linspace(0, 70, len(SEEDS))[i])
        scan, truth = make_phantom(seed, extent=extent)
        lungs = segment_lungs(scan)
        g = find_levels(scan, lungs)
        lung_area = (truth.lungs > 0).sum((1, 2))
        frac = (truth.lesions >= 2).sum((1, 2)) / np.maximum(lung_area, 1)
        n = max(1, int(0.1 * (lung_area > 0).sum()))
        dense = np.argsort(frac)[::-1][:n]
        rows.append((seed, extent, dice(lungs.labels > 0, truth.lungs > 0),
                     dice(lungs.labels[dense] > 0, truth.lungs[dense] > 0) if extent > 0 else float("nan"),
                     dice(lungs.airways, truth.airways)))
        for nme in LEVELS:
            errs[nme].append(np.nan if g.z_mm[nme] is None else g.z_mm[nme] - truth.levels_z[nme])
    r = np.array([x[2:] for x in rows], float)
    lines += [f"Phantoms: {len(SEEDS)} held-out seeds ({SEEDS.start}-{SEEDS.stop - 1}), 128x128 px of 2.8 mm, 3 mm "
              "slices, ILD extent spread evenly over 0-70 %.", "",
              "| measure | mean | min | acceptance |", "|---|---|---|---|",
              f"| lung Dice, whole scan | {np.nanmean(r[:, 0]):.4f} | {np.nanmin(r[:, 0]):.4f} | >= 0.97 |",
              f"| lung Dice, the 10 % of lung slices with the densest disease | {np.nanmean(r[:, 1]):.4f} | "
              f"{np.nanmin(r[:, 1]):.4f} | >= 0.95 |",
              f"| airway (trachea + main bronchi) Dice | {np.nanmean(r[:, 2]):.4f} | {np.nanmin(r[:, 2]):.4f} | |", "",
              "| level | mean abs error (mm) | max abs error (mm) | bias (mm) | not placed | acceptance |",
              "|---|---|---|---|---|---|"]
    target = {"L1": "mean <= 5", "L2": "mean <= 3, max <= 8", "L3": "mean <= 3, max <= 8",
              "L4": "mean <= 3, max <= 8", "L5": "mean <= 3, max <= 8"}
    for nme in LEVELS:
        e = np.array(errs[nme])
        lines.append(f"| {nme} | {np.nanmean(np.abs(e)):.2f} | {np.nanmax(np.abs(e)):.1f} | {np.nanmean(e):+.2f} | "
                     f"{int(np.isnan(e).sum())} | {target[nme]} |")
    lines.append("")


def stage(scan):
    lungs = segment_lungs(scan)
    g = find_levels(scan, lungs)
    d = density_metrics(scan, lungs)
    return lungs, g, d


def speed(name, folder, lines):
    scan, t_read, _ = measure(lambda: load_ct(folder), repeat=2)
    base = rss_mb()
    (lungs, g, d), t_stage, peak = measure(lambda: stage(scan), repeat=2)
    _, t_l, _ = measure(lambda: segment_lungs(scan))
    lines.append(f"| {name} | {t_read:.2f} | {t_l:.2f} | {t_stage:.2f} | {t_stage / t_read:.1f} | "
                 f"{(peak - base) / 1000:.2f} | {peak / 1000:.2f} |")
    return scan, lungs, g, d


def main():
    lines: list[str] = []
    phantom_accuracy(lines)
    lines += ["Speed (best of 2; 2-core CPU). Stage = lungs + airways + levels + density.", "",
              "| scan | read (s) | lungs only (s) | whole stage (s) | stage / read | peak memory added (GB) | "
              "process peak (GB) |", "|---|---|---|---|---|---|---|"]
    real = SHARED_DATA / "chest-ct-lung-pet-ct-dx-a0001"
    res = None
    if real.exists():
        res = speed("real series A0001, 512x512x64", real, lines)
    speed("phantom 512x512x300 (DICOM)", full_phantom_dicom(), lines)
    lines += ["", "For scale: lungmask R231 took 74-82 s and 3.4 GB on the real series on this CPU (issue text).", ""]
    if res is not None:
        scan, lungs, g, d = res
        v = lungs.volume_ml(scan)
        lines += ["Real series (no labels): ", "",
                  f"- lung volume {v['total'] / 1000:.2f} L (right {v['right']:.0f} mL, left {v['left']:.0f} mL); "
                  f"right > left: {v['right'] > v['left']}",
                  "- levels (world z mm, slice as read, confidence): " + "; ".join(
                      f"{n} {g.z_mm[n]:.1f} / {g.slice_index[n]} / {g.confidence[n]:.2f}" if g.z_mm[n] is not None
                      else f"{n} not placed" for n in LEVELS),
                  f"- right dome {g.landmarks['right_dome'].z_mm:.1f} mm; L5 - dome = "
                  f"{g.z_mm['L5'] - g.landmarks['right_dome'].z_mm:.1f} mm; L4 halfway: "
                  f"{abs(g.z_mm['L4'] - (g.z_mm['L3'] + g.z_mm['L5']) / 2) < 1e-6}",
                  f"- whole-lung HAA {d.regions['whole']['HAA_pct']:.1f} %, MLA {d.regions['whole']['MLA_HU']:.0f} HU", ""]
    crop_dir = SHARED_DATA / "totalsegmentator-chest-crops" / "aorta"
    if crop_dir.exists():
        import SimpleITK as sitk
        from scipy import ndimage as ndi

        from sscild.levels import find_great_vessel_origin

        c = load_ct(crop_dir / "ct_cropped.nii.gz")

        def mask(name):
            return sitk.GetArrayFromImage(sitk.DICOMOrient(sitk.ReadImage(str(crop_dir / f"{name}.nii.gz")), "LPS")) > 0

        ao, bt = mask("aorta"), mask("brachiocephalic_trunk")
        ks = np.nonzero((ndi.binary_dilation(bt, iterations=1) & ao).any(axis=(1, 2)))[0]
        ref_lo, ref_hi = c.z_mm(ks.min()), c.z_mm(ks.max())
        top = c.z_mm(np.nonzero(ao.any(axis=(1, 2)))[0].max())
        lm = find_great_vessel_origin(c)        # the crop has ~60 mL of lung: the lung-free path
        if lm.z_mm is None:
            lines.append(f"TotalSegmentator aorta crop: L1 not placed ({lm.note}).")
        else:
            err = lm.z_mm - (ref_lo + ref_hi) / 2
            lines += [f"TotalSegmentator aorta crop (contrast, 1.5 mm, lungs cut off by the crop): reference = where the "
                      f"brachiocephalic-trunk mask touches the aorta mask, z {ref_lo:.1f}..{ref_hi:.1f} mm (the aorta "
                      f"mask's top is at {top:.1f} mm). sscild L1 = {lm.z_mm:.1f} mm, {err:+.1f} mm from the reference "
                      f"middle (acceptance: within 10 mm). Note: {lm.note}."]
    write_section("anatomy", "Lungs, airways, Goh levels, density (issue: anatomy)", "python bench/run_all.py anatomy",
                  lines)


if __name__ == "__main__":
    main()
