"""Lesion U-Net (shipped weights): Dice per class and lung-involvement error on held-out phantoms (extent 0-70 %),
inference time and peak memory on the real 64-slice series and on a 512x512x300 phantom."""
from __future__ import annotations

import sys

import numpy as np
from common import SHARED_DATA, full_phantom_dicom, measure, record_test_split, write_section

import torch

from sscild.errors import ModelError
from sscild.io import load_ct
from sscild.lesions import confusion, dice_from_confusion, load_unet, segment_lesions
from sscild.phantom import make_phantom

SEEDS = range(9400, 9424)          # held out: training 8000-8059, validation 8500-8505


def main():
    try:
        model, cfg, card = load_unet()
    except ModelError as err:
        write_section("lesions", "Lesion segmentation (issue: lesion segmentation)", "python bench/run_all.py lesions",
                      [f"Not measured: {err}"])
        return
    torch.set_num_threads(2)
    inter = {"GG": 0, "RET": 0, "lesion": 0}
    sums = {"GG": 0, "RET": 0, "lesion": 0}
    per = {"GG": [], "RET": [], "lesion": []}
    inv_err, rows, cases = [], [], []
    sel = {"GG": lambda a: a == 2, "RET": lambda a: a == 3, "lesion": lambda a: a >= 2}
    for s in SEEDS:
        ext = float((s * 31) % 71)
        scan, truth = make_phantom(s, size="small", extent=ext)
        lung = truth.lungs > 0
        pred = segment_lesions(model, cfg, scan, lung)
        tl = np.where(lung, truth.lesions, 0)
        cases.append({"case": f"phantom{s}", "confusion": confusion(tl, pred)})
        for k, f in sel.items():
            a, b = f(pred), f(tl)
            inter[k] += int((a & b).sum())
            sums[k] += int(a.sum() + b.sum())
            if b.sum() > 0:
                per[k].append(2 * (a & b).sum() / (a.sum() + b.sum()))
        pi = 100 * (pred >= 2).sum() / lung.sum()
        ti = 100 * (tl >= 2).sum() / lung.sum()
        inv_err.append(abs(pi - ti))
        rows.append((ext, ti, pi))
    pooled = {k: 2 * inter[k] / sums[k] if sums[k] else float("nan") for k in inter}
    tr = card["training"]
    lines = [f"Shipped U-Net (`src/sscild/models/lesions`; {tr.get('train_slices')} training slices, "
             f"{tr.get('steps')} steps of batch {tr.get('batch_size')}, {tr.get('training_seconds')} s on this "
             f"CPU; {cfg.size} px on the scan's lung box). Held-out phantoms: {len(SEEDS)} seeds "
             f"({SEEDS.start}-{SEEDS.stop - 1}), 128x128 px, 3 mm slices, extent 0-70 %, truth lung masks.", "",
             "| class | Dice (pooled over all voxels) | Dice (median per phantom) | acceptance |", "|---|---|---|---|",
             f"| ground glass | {pooled['GG']:.3f} | {np.median(per['GG']):.3f} | >= 0.80 |",
             f"| reticulation | {pooled['RET']:.3f} | {np.median(per['RET']):.3f} | >= 0.80 |",
             f"| total lesion | {pooled['lesion']:.3f} | {np.median(per['lesion']):.3f} | >= 0.85 |", "",
             f"Whole-lung involvement error |predicted - true| (% points): mean {np.mean(inv_err):.2f}, max "
             f"{np.max(inv_err):.2f} (acceptance: mean <= 2). Examples (true -> predicted %): " +
             ", ".join(f"{t:.1f} -> {p:.1f}" for _, t, p in rows[:6]) + ".", ""]
    lines += ["| scan | slices | inference (s) | peak RSS |", "|---|---|---|---|"]
    real = SHARED_DATA / "chest-ct-lung-pet-ct-dx-a0001"
    from sscild.anatomy import segment_lungs

    for name, path in ((("real series A0001, 512x512x64", real),) if real.exists() else ()) + \
            (("phantom 512x512x300", full_phantom_dicom()),):
        scan = load_ct(path)
        lung = segment_lungs(scan).mask
        lab, dt, peak = measure(lambda: segment_lesions(model, cfg, scan, lung))
        extra = ""
        if "real" in name:
            extra = f" (predicted involvement {100 * (lab >= 2).sum() / lung.sum():.1f} % on a scan without known ILD)"
        lines.append(f"| {name}{extra} | {scan.shape[0]} | {dt:.1f} | {peak / 1000:.2f} GB |")
    write_section("lesions", "Lesion segmentation (issue: lesion segmentation)", "python bench/run_all.py lesions",
                  lines)
    if "--record-card" in sys.argv:
        record_test(card, cases)


def record_test(card: dict, cases: list[dict]) -> None:
    """Write these held-out figures into the shipped card as its ``test`` split, with the per-phantom confusion
    counts they are recomputed from (``python bench/bench_lesions.py --record-card``, after training)."""
    from sscild.bundle import metric_set
    from sscild.lesions import DEFAULT_DIR

    total = np.sum([c["confusion"] for c in cases], axis=0)
    test = metric_set("test", dice_from_confusion(total), n=len(cases), predictions="test", recompute="confusion",
                      description=f"Dice pooled over all voxels of {len(cases)} held-out phantoms (seeds "
                                  f"{SEEDS.start}-{SEEDS.stop - 1}, whole volumes, truth lung masks) of "
                                  "`python bench/run_all.py lesions`")
    record_test_split(DEFAULT_DIR, card, test, {"cases": cases})


if __name__ == "__main__":
    main()
