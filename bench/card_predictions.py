"""Predictions of the shipped S-Net and lesion U-Net on the bench's held-out test sets (and the U-Net's validation
phantoms), written to card_predictions_<model>.json in the benchmarks' work folder so the model cards' test figures can be recomputed
from stored predictions (``sscild.bundle.recompute_metrics``).

Run: python bench/card_predictions.py [snet] [lnet] [lesions]
"""
from __future__ import annotations

import dataclasses
import json
import sys

import numpy as np
from common import REPO, WORK

from sscild.lesions import load_unet, phantom_segset, predict_prepared as unet_predict, segment_lesions
from sscild.phantom import make_phantom


def confusion(truth: np.ndarray, pred: np.ndarray) -> list[list[int]]:
    """4 x 4 voxel counts, rows truth class 0..3, columns predicted class 0..3."""
    c = np.bincount(truth.astype(np.int64).ravel() * 4 + pred.astype(np.int64).ravel(), minlength=16)
    return c.reshape(4, 4).tolist()


def snet() -> dict:
    from bench_snet import pattern_source_from_spec, test_sets, COVID

    from sscild.scoring.snet import SliceSet, load_snet, predict_prepared

    model, cfg, _ = load_snet()
    source = pattern_source_from_spec({"source": "real_gg", "real_gg": str(COVID)}, REPO)
    sets = test_sets(dataclasses.replace(cfg, texture=True), source)
    names = ["phantom level slices, 128 px (50 new seeds)", "phantom level slices, 256 px (10 new seeds)",
             "inserted patterns on held-out real and phantom healthy slices"]
    test = SliceSet.concat(sets)
    pred = predict_prepared(model, test, cfg)
    subset = sum(([n] * len(s) for n, s in zip(names, sets)), [])
    return {"pred": pred.tolist(), "truth": test.scores.tolist(), "subset": subset}


def lnet() -> dict:
    from sscild.domain import LEVELS
    from sscild.scoring.lnet import load_lnet, predict_levels

    model, cfg, _ = load_lnet()
    pred, truth = [], []
    for s in range(7000, 7030):          # bench_lnet.SEEDS
        scan, tr = make_phantom(s, extent=float((s * 13) % 71))
        out = predict_levels(model, scan, cfg)
        pred.append([np.nan if out.z_mm[n] is None else out.z_mm[n] for n in LEVELS])
        truth.append([tr.levels_z[n] for n in LEVELS])
    return {"pred": pred, "truth": truth}


def lesions() -> dict:
    model, cfg, _ = load_unet()
    test = []
    for s in range(9400, 9424):          # bench_lesions.SEEDS
        scan, truth = make_phantom(s, size="small", extent=float((s * 31) % 71))
        lung = truth.lungs > 0
        pred = segment_lesions(model, cfg, scan, lung)
        test.append({"case": f"phantom{s}", "confusion": confusion(np.where(lung, truth.lesions, 0), pred)})
    val = phantom_segset(range(8500, 8506), cfg, every=3)
    vpred = unet_predict(model, val, cfg)
    vconf = [{"case": g, "confusion": confusion(val.labels[val.group == g], vpred[val.group == g])}
             for g in dict.fromkeys(val.group.tolist())]
    return {"test": test, "validation": vconf}


if __name__ == "__main__":
    WORK.mkdir(parents=True, exist_ok=True)
    for name in sys.argv[1:] or ["snet", "lnet", "lesions"]:
        res = {"snet": snet, "lnet": lnet, "lesions": lesions}[name]()
        (WORK / f"card_predictions_{name}.json").write_text(json.dumps(res))
        print("wrote", WORK / f"card_predictions_{name}.json", flush=True)
