"""Goh levels: accuracy on phantoms, what the confidence means (noise, cut and coarse scans), and the real scans
against the by-eye annotations (anatomy, L-Net and the two combined).

Run: nice -n 10 python bench/run_all.py levels     (about 10 minutes on one busy core)
Raw rows go to the bench work folder (levels_cases.json) so the tables can be re-read without rerunning.
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np
from common import REPO, SHARED_DATA, WORK, write_section

from sscild.anatomy import segment_lungs
from sscild.domain import LEVELS
from sscild.errors import SscildError
from sscild.levels import combine_levels, find_levels
from sscild.phantom import make_phantom
from sscild.scan import CTScan, thick_slices

SEEDS = range(2000, 2008)          # held out: tests and development used other seeds
COARSE_SEEDS = range(2000, 2004)
NOISE_SD = (30.0, 60.0, 100.0)
#: (side, landmark, mm): the scan starts (top) or ends (bottom) this far above (+) the landmark
CUTS = (("top", "apex", -40.0), ("top", "carina", 30.0), ("top", "carina", -15.0),
        ("bottom", "right_dome", -10.0), ("bottom", "right_dome", 15.0))
COARSE_MM = (5, 6, 8)
BINS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.01)
LANDMARK_OF = {"L1": ("great_vessel_origin",), "L2": ("carina",), "L3": ("venous_confluence",),
               "L4": ("venous_confluence", "right_dome"), "L5": ("right_dome",)}


def crop_z(scan: CTScan, k0: int, k1: int) -> CTScan:
    """Slices k0..k1-1 of an axis-aligned scan (array z grows toward the head)."""
    o = list(scan.origin)
    o[2] = scan.z_mm(k0)
    return CTScan(scan.hu[k0:k1].copy(), scan.spacing, tuple(o), scan.direction, dict(scan.meta), scan.source)


def variants(seed: int):
    """(condition, scan, truth) for one seed: clean, noisy, cut at the top or bottom; coarse from a 1 mm phantom."""
    extent = float(np.linspace(0, 70, len(SEEDS))[seed - SEEDS.start])
    scan, truth = make_phantom(seed, extent=extent)
    yield "clean", scan, truth
    rng = np.random.default_rng(seed)
    for sd in NOISE_SD:
        hu = np.clip(scan.hu + rng.normal(0, sd, scan.shape), -1024, 3071)
        yield f"noise {sd:.0f} HU", scan.with_hu(np.rint(hu).astype(np.int16)), truth
    zs = scan.z_positions()
    apex = float(zs[(truth.lungs > 0).any(axis=(1, 2))].max())
    for side, landmark, mm in CUTS:
        z = (apex if landmark == "apex" else truth.landmarks_z[landmark]) + mm
        name = f"cut {side}: {'starts' if side == 'top' else 'ends'} {abs(mm):.0f} mm " \
               f"{'above' if mm > 0 else 'below'} the {landmark.replace('_', ' ')}"
        yield (name, crop_z(scan, 0, int(np.searchsorted(zs, z)) + 1) if side == "top"
               else crop_z(scan, int(np.searchsorted(zs, z)), scan.shape[0]), truth)
    if seed in COARSE_SEEDS:
        fine, truth1 = make_phantom(seed, extent=extent, spacing=(1.0, 2.8, 2.8))
        for n in COARSE_MM:
            yield f"coarse {n} mm", thick_slices(fine, n), truth1


def rows_for(condition, seed, scan, truth, lnet):
    lo, hi = scan.extent_mm()
    half = scan.spacing[0] / 2
    try:
        lungs = segment_lungs(scan)
        results = {"anatomy": find_levels(scan, lungs)}
    except SscildError as e:
        print(seed, condition, "failed:", e, file=sys.stderr)
        return []
    if lnet is not None:
        from sscild.scoring.lnet import predict_levels

        learned = predict_levels(lnet[0], scan, lnet[1], lung=lungs.mask)
        results["lnet"] = learned
        results["combined"] = combine_levels(results["anatomy"], learned, scan=scan)     # as analyze scores
    out = []
    for method, g in results.items():
        for n in LEVELS:
            expected = all(lo - half <= truth.landmarks_z[m] <= hi + half for m in LANDMARK_OF[n]) and \
                lo - half <= truth.levels_z[n] <= hi + half
            z = g.z_mm[n]
            out.append({"condition": condition, "seed": seed, "method": method, "level": n, "expected": expected,
                        "z": z, "truth": truth.levels_z[n], "confidence": float(g.confidence[n]),
                        "error": None if z is None else abs(z - truth.levels_z[n]), "note": g.notes[n]})
    return out


def collect() -> list[dict]:
    try:
        from sscild.scoring.lnet import load_lnet

        model, cfg, _ = load_lnet()
        lnet = (model, cfg)
    except (SscildError, ImportError) as e:
        print("L-Net not available:", e, file=sys.stderr)
        lnet = None
    rows = []
    for seed in SEEDS:
        t = time.perf_counter()
        for condition, scan, truth in variants(seed):
            rows += rows_for(condition, seed, scan, truth, lnet)
        print(f"seed {seed}: {time.perf_counter() - t:.0f} s", flush=True)
    WORK.mkdir(exist_ok=True)
    (WORK / "levels_cases.json").write_text(json.dumps(rows))
    return rows


def accuracy_table(rows, lines):
    lines += ["Clean phantoms (anatomy; the z of the scored slice against the exact level; ILD extent 0-70 %):", "",
              "| level | mean abs error (mm) | max abs error (mm) | not placed | acceptance |", "|---|---|---|---|---|"]
    for n in LEVELS:
        e = np.array([r["error"] if r["error"] is not None else np.nan for r in rows
                      if r["condition"] == "clean" and r["method"] == "anatomy" and r["level"] == n])
        target = "mean <= 5, max <= 8" if n == "L1" else "mean <= 3, max <= 8"
        lines.append(f"| {n} | {np.nanmean(e):.2f} | {np.nanmax(e):.1f} | {int(np.isnan(e).sum())} / {len(e)} | "
                     f"{target} |")
    lines.append("")


def calibration_table(rows, method, lines):
    placed = [r for r in rows if r["method"] == method and r["z"] is not None]
    lines += [f"Confidence calibration, {method} (all conditions; a level placed although its landmark is outside "
              "the scan counts as an error > 5 mm):", "",
              "| confidence | n placed | error <= 5 mm | median error (mm) |", "|---|---|---|---|"]
    for a, b in zip(BINS, BINS[1:]):
        sel = [r for r in placed if a <= r["confidence"] < b]
        ok = [r["expected"] and r["error"] <= 5.0 for r in sel]
        med = np.median([r["error"] for r in sel]) if sel else float("nan")
        lines.append(f"| {a:.1f}-{min(b, 1.0):.1f} | {len(sel)} | "
                     f"{(100 * np.mean(ok)) if sel else float('nan'):.1f} % | {med:.1f} |")
    lines.append("")


def condition_table(rows, method, lines):
    lines += [f"Per condition, {method}:", "",
              "| condition | levels in scan | placed | placed but out of scan | mean confidence | confidence >= 0.8 | "
              "of those error <= 5 mm | mean abs error (mm) |", "|---|---|---|---|---|---|---|---|"]
    conds = list(dict.fromkeys(r["condition"] for r in rows))
    for c in conds:
        sel = [r for r in rows if r["method"] == method and r["condition"] == c]
        placed = [r for r in sel if r["z"] is not None]
        high = [r for r in placed if r["confidence"] >= 0.8]
        good = [r["expected"] and r["error"] <= 5.0 for r in high]
        err = [r["error"] for r in placed if r["expected"]]
        lines.append(f"| {c} | {sum(r['expected'] for r in sel)} / {len(sel)} | {len(placed)} | "
                     f"{sum(not r['expected'] for r in placed)} | {np.mean([r['confidence'] for r in placed]):.2f} | "
                     f"{len(high)} | {(100 * np.mean(good)) if high else float('nan'):.1f} % | "
                     f"{np.mean(err) if err else float('nan'):.2f} |")
    lines.append("")


def real_scans(lines):
    """Anatomy, L-Net and combined against tests/data/real_levels.json."""
    from sscild.io import load_ct

    ann = json.loads((REPO / "tests" / "data" / "real_levels.json").read_text())["scans"]
    try:
        from sscild.scoring.lnet import load_lnet, predict_levels

        model, cfg, _ = load_lnet()
    except (SscildError, ImportError):
        model = None
    lines += ["Real scans against the by-eye ranges (tests/data/real_levels.json): a level is right when it falls "
              "inside its range, or is not placed where the landmark is outside the scan.", "",
              "| scan | anatomy | L-Net | combined | anatomy levels (mm, confidence) |", "|---|---|---|---|---|"]
    totals = np.zeros(3, int)
    for rel, a in ann.items():
        path = SHARED_DATA.joinpath(*rel.split("/"))
        if not path.exists():
            continue
        scan = load_ct(path)
        lungs = segment_lungs(scan)
        g = find_levels(scan, lungs)
        res = [g]
        if model is not None:
            learned = predict_levels(model, scan, cfg, lung=lungs.mask)
            res += [learned, combine_levels(g, learned, scan=scan)]
        right = []
        for r in res:
            ok = 0
            for n in LEVELS:
                want = a["levels"][n]["z_mm"]
                ok += (r.z_mm[n] is None) if want is None else (r.z_mm[n] is not None and
                                                                want[0] <= r.z_mm[n] <= want[1])
            right.append(ok)
        totals[:len(right)] += right
        cells = [f"{v} / 5" for v in right] + ["-"] * (3 - len(right))
        placed = ", ".join(f"{n} {g.z_mm[n]:.0f} ({g.confidence[n]:.2f})" if g.z_mm[n] is not None else f"{n} -"
                           for n in LEVELS)
        lines.append(f"| {rel.split('/')[0]} | {' | '.join(cells)} | {placed} |")
    lines += [f"| total | {totals[0]} | {totals[1]} | {totals[2]} | |", ""]


def main() -> None:
    t = time.perf_counter()
    rows = collect()
    lines = [f"Phantoms: {len(SEEDS)} held-out seeds ({SEEDS.start}-{SEEDS.stop - 1}), 128 x 128 px of 2.8 mm, 3 mm "
             f"slices; conditions: clean, Gaussian noise added ({', '.join(f'{s:.0f}' for s in NOISE_SD)} HU SD), "
             "cut scans (starting 40 mm below the apex, 30 mm above or 15 mm below the carina; ending 10 mm below "
             "or 15 mm above the right dome), and thick slices (5, 6, 8 mm: block means of a "
             f"1 mm phantom, seeds {COARSE_SEEDS.start}-{COARSE_SEEDS.stop - 1}). Error = |z of the scored slice - "
             "exact level z|.", ""]
    accuracy_table(rows, lines)
    for method in ("anatomy", "combined", "lnet"):
        if any(r["method"] == method for r in rows):
            calibration_table(rows, method, lines)
    for method in ("anatomy", "combined", "lnet"):
        if any(r["method"] == method for r in rows):
            condition_table(rows, method, lines)
    real_scans(lines)
    lines.append(f"Bench time {time.perf_counter() - t:.0f} s.")
    write_section("levels", "Goh levels: accuracy and confidence calibration",
                  "nice -n 10 python bench/run_all.py levels", lines)


if __name__ == "__main__":
    main()
