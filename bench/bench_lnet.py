"""L-Net (shipped weights) beside the anatomical level finder on held-out phantoms; speed of training and inference.

``python bench/bench_lnet.py --record-card`` (after training): the held-out phantom figures written into the shipped
card as its ``test`` split, with the predictions they are recomputed from."""
from __future__ import annotations

import sys

import numpy as np
from common import SHARED_DATA, measure, record_test_split, write_section

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
        lungs = segment_lungs(scan)
        out, dt, _ = measure(lambda: predict_levels(model, scan, cfg, lung=lungs.mask))
        t_inf.append(dt)
        g = find_levels(scan, lungs)
        truth.append([tr.levels_z[n] for n in LEVELS])
        lnet.append([np.nan if out.z_mm[n] is None else out.z_mm[n] for n in LEVELS])
        anat.append([np.nan if g.z_mm[n] is None else g.z_mm[n] for n in LEVELS])
    truth, lnet, anat = (np.array(a, float) for a in (truth, lnet, anat))
    if "--record-card" in sys.argv:
        record_card(card, lnet, truth)
        return
    tr_card = card["training"]
    lines += [f"Shipped weights `src/sscild/models/lnet` ({card['version']}: {tr_card['description']}; "
              f"{tr_card.get('train_cases')} training cases, "
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
        lungs = segment_lungs(s)
        out, dt, _ = measure(lambda: predict_levels(model, s, cfg, lung=lungs.mask))
        g = find_levels(s, lungs)
        lines += ["", f"Real series A0001 (by-eye ranges only, tests/data/real_levels.json; "
                  f"{'in the training set of the shipped weights' if tr_card.get('label_kind') != 'synthetic exact' else 'not trained on'}"
                  f"; inference {dt:.2f} s): L-Net vs anatomical method (world z mm): " +
                  "; ".join(f"{n} {out.z_mm[n]:.1f} vs {g.z_mm[n]:.1f}" if out.z_mm[n] is not None and
                            g.z_mm[n] is not None else f"{n} -" for n in LEVELS) +
                  ". On real scans it has not seen: bench/results/lnet_real.md."]
    write_section("lnet", "L-Net beside the anatomical method (issue: learned scoring)", "python bench/run_all.py lnet",
                  lines)


def record_card(card: dict, pred: np.ndarray, truth: np.ndarray) -> None:
    """The held-out phantom figures as the shipped card's ``test`` split, with their predictions."""
    from sscild.bundle import metric_set
    from sscild.scoring.lnet import DEFAULT_DIR, level_metrics

    metric = metric_set("test", level_metrics(pred, truth), n=len(pred), predictions="test", recompute="levels",
                        description=f"{len(pred)} held-out phantoms (seeds {SEEDS.start}-{SEEDS.stop - 1}) of "
                                    "`python bench/run_all.py lnet`")
    record_test_split(DEFAULT_DIR, card, metric, {"pred": pred.tolist(), "truth": truth.tolist()})


if __name__ == "__main__":
    main()
