"""L-Net (shipped weights) beside the anatomical level finder on held-out phantoms; speed of training and inference."""
from __future__ import annotations

import json
import time

import numpy as np
from common import REPO, SHARED_DATA, measure, write_section

from sscild.anatomy import segment_lungs
from sscild.errors import ModelError
from sscild.evaluate import icc
from sscild.levels import LEVELS, find_levels
from sscild.phantom import make_phantom
from sscild.scoring.lnet import LevelCase, build_lnet, load_lnet, predict_levels, train_lnet

SEEDS = range(7000, 7030)          # held out: training used 5000-5159, validation 6000-6029


def main():
    lines = []
    try:
        model, cfg, card = load_lnet()
    except ModelError as err:
        write_section("lnet", "L-Net (issue: learned scoring)", "python bench/run_all.py lnet", [f"Not measured: {err}"])
        return
    truth, lnet, anat, t_inf = [], [], [], []
    for s in SEEDS:
        scan, tr = make_phantom(s, extent=float((s * 13) % 71))
        out, dt, _ = measure(lambda: predict_levels(model, scan, cfg))
        t_inf.append(dt)
        g = find_levels(scan, segment_lungs(scan))
        truth.append([tr.levels_z[n] for n in LEVELS])
        lnet.append([np.nan if out.z_mm[n] is None else out.z_mm[n] for n in LEVELS])
        anat.append([np.nan if g.z_mm[n] is None else g.z_mm[n] for n in LEVELS])
    truth, lnet, anat = (np.array(a, float) for a in (truth, lnet, anat))
    tr_card = card["training"]
    lines += [f"Shipped weights `src/sscild/models/lnet` ({tr_card.get('train_cases')} training phantoms, "
              f"{tr_card.get('steps')} steps of batch {tr_card.get('batch_size', 4)}, {cfg.head} head, {cfg.z_mm:g} mm "
              f"slices, windows of {cfg.window} slices, {tr_card.get('loss', 'mse')} loss; "
              f"{tr_card.get('training_seconds')} s on this "
              f"CPU). Held-out phantoms: "
              f"{len(SEEDS)} seeds ({SEEDS.start}-{SEEDS.stop - 1}), 128x128 px, 3 mm slices, ILD extent 0-70 %.", "",
              "| level | L-Net MAE (mm) | L-Net max (mm) | L-Net ICC(2,1) | anatomy MAE (mm) | anatomy max (mm) | "
              "anatomy ICC(2,1) | acceptance (L-Net) |", "|---|---|---|---|---|---|---|---|"]
    for j, n in enumerate(LEVELS):
        el, ea = np.abs(lnet[:, j] - truth[:, j]), np.abs(anat[:, j] - truth[:, j])
        il, ia = icc(lnet[:, j], truth[:, j]).value, icc(anat[:, j], truth[:, j]).value
        lines.append(f"| {n} | {np.nanmean(el):.2f} | {np.nanmax(el):.1f} | {il:.3f} | {np.nanmean(ea):.2f} | "
                     f"{np.nanmax(ea):.1f} | {ia:.3f} | MAE <= 5, ICC >= 0.9 |")
    # training throughput: a few steps on one case of the shipped size
    scan, tr = make_phantom(SEEDS.start, extent=10)
    case = LevelCase.from_scan("x", scan, tr.levels_z, cfg)
    _, dt, _ = measure(lambda: train_lnet([case], cfg=cfg, steps=10, batch_size=4, quiet=True, model=build_lnet(cfg)))
    lines += ["", f"Training throughput: {40 / dt:.1f} windows/s (batch 4, {cfg.window}x{cfg.in_plane}x{cfg.in_plane}, CPU). "
              f"Inference per scan (preprocessing + sliding windows): median {np.median(t_inf):.2f} s on 128x128 phantoms."]
    real = SHARED_DATA / "chest-ct-lung-pet-ct-dx-a0001"
    if real.exists():
        from sscild.io import load_ct

        s = load_ct(real)
        out, dt, _ = measure(lambda: predict_levels(model, s, cfg))
        g = find_levels(s, segment_lungs(s))
        lines += ["", f"Real series A0001 (no labels; inference {dt:.2f} s): L-Net vs anatomical method (world z mm): " +
                  "; ".join(f"{n} {out.z_mm[n]:.1f} vs {g.z_mm[n]:.1f}" if out.z_mm[n] is not None and
                            g.z_mm[n] is not None else f"{n} -" for n in LEVELS) +
                  ". L-Net has seen phantoms only: on real anatomy it is not to be trusted yet."]
    write_section("lnet", "L-Net beside the anatomical method (issue: learned scoring)", "python bench/run_all.py lnet",
                  lines)


if __name__ == "__main__":
    main()
