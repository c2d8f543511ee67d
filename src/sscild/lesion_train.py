"""Lesion U-Net training with :func:`sscild.engine.fit` and ``sscild train lesions`` (:func:`train_from_config`)."""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from .errors import ConfigError
from .lesion_data import (SegSet, pairs_segset, phantom_segset, real_background_segset, real_draw_segset,
                          synthetic_segset)
from .lesions import (UNetConfig, _inputs, build_unet, confusion, dice_from_confusion, dice_table, load_unet,
                      predict_prepared, save_unet, unet_card)

def train_unet(data: SegSet, *, cfg: UNetConfig = UNetConfig(), settings=None, device: str = "cpu", model=None,
               quiet: bool = True, lesion_weighted: bool = True, out: str | Path | None = None,
               resume: bool = False, stop_after: int | None = None, slice_weight: np.ndarray | None = None,
               **overrides):
    """Train the U-Net (Dice + CE) with :func:`sscild.engine.fit`; slices with lesions are drawn as often as healthy
    ones when ``lesion_weighted``, and ``slice_weight`` (one value per slice) multiplies each slice's chance;
    ``augment`` flips and rotates by 90 degrees. ``settings`` default to the lesion trainer's
    (:data:`sscild.config.TRAIN_DEFAULTS`), keyword overrides of its fields (``steps``, ``lr``, ...).
    Returns ``(model, TrainLog)``."""
    import torch
    from monai.losses import DiceCELoss

    from .config import settings_for
    from .engine import fit

    s = settings_for("lesions", settings, **overrides)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    x_all = torch.from_numpy(_inputs(data.hu, data.lung, cfg))
    y_all = torch.from_numpy(data.labels.astype(np.int64))[:, None]
    has = np.array([(data.labels[i] >= 2).any() for i in range(len(data))])
    p = np.where(has, 0.5 / max(has.sum(), 1), 0.5 / max((~has).sum(), 1)) if lesion_weighted and has.any() \
        and (~has).any() else np.full(len(data), 1.0 / len(data))
    p = p * (np.asarray(slice_weight, float) if slice_weight is not None else 1.0)
    p = p / p.sum()

    def step_fn(m, step, rng):
        idx = rng.choice(len(data), size=s.batch_size, p=p)
        xb, yb = x_all[idx].to(device), y_all[idx].to(device)
        if s.augment:
            k = int(rng.integers(4))
            if rng.random() < 0.5:
                xb, yb = xb.flip(-1), yb.flip(-1)
            xb, yb = torch.rot90(xb, k, (-2, -1)), torch.rot90(yb, k, (-2, -1))
        return loss_fn(m(xb), yb)

    log = fit(model if model is not None else build_unet(cfg), step_fn, s, out=out, resume=resume, device=device,
              quiet=quiet, desc="train U-Net", stop_after=stop_after)
    return log.model, log


def _real_draws(spec: dict, cfg: UNetConfig, quiet: bool) -> SegSet | None:
    """``data.real_draws`` (:func:`sscild.realdata.from_spec`) as U-Net slices, None when no scan is there."""
    from .realdata import from_spec

    rs = from_spec(spec, quiet)
    return real_draw_segset(rs, cfg) if len(rs) else None


def _train_data(tc, quiet: bool) -> tuple[SegSet, np.ndarray]:
    """The training slices a config names (phantoms, users' label maps, inserted patterns on healthy slices, real
    draws) and each slice's sampling weight (``real_draws.weight`` for real draws, else 1)."""
    from .scoring.snet import pattern_source_from_spec

    d, cfg = tc.data, tc.network
    sets = []
    phs = d.get("phantoms") or []
    for ph in (phs if isinstance(phs, list) else [phs]):
        sets.append(phantom_segset(range(int(ph["seed0"]), int(ph["seed0"]) + int(ph["n"])), cfg,
                                   size=ph.get("size", "small"), every=int(ph.get("every", 2)), quiet=quiet))
    if d.get("pairs_csv"):
        sets.append(pairs_segset(d["pairs_csv"], cfg, d.get("name_map")))
    bgs = list(sets)
    for rb in d.get("real_backgrounds", []) or []:
        if Path(rb["path"]).exists():
            bgs.append(real_background_segset(rb["path"], cfg, tuple(rb.get("keep", (0.0, 1.0)))))
        elif not rb.get("optional", True):
            raise ConfigError(f"real background scan {rb['path']} does not exist")
    n_syn = int(tc.synthetic.get("n", 0))
    if n_syn:
        source = pattern_source_from_spec(tc.synthetic, tc.path.parent)
        sets.append(synthetic_segset(SegSet.concat(bgs), n_syn, np.random.default_rng(tc.train.seed), source))
    weights = [np.ones(len(x)) for x in sets]
    real = _real_draws(d["real_draws"], cfg, quiet) if d.get("real_draws") else None
    if real is not None:
        sets.append(real)
        weights.append(np.full(len(real), float(d["real_draws"].get("weight", 1.0))))
    return SegSet.concat(sets), np.concatenate(weights)


def _cross_validate(data: SegSet, tc, device: str, quiet: bool) -> list[dict]:
    from sklearn.model_selection import GroupKFold

    cv = []
    for f, (a, b) in enumerate(GroupKFold(tc.cv_folds).split(np.arange(len(data)), groups=data.group)):
        s = dataclasses.replace(tc.train, seed=tc.train.seed + f)
        m, _ = train_unet(data.subset(a), cfg=tc.network, settings=s, device=device, quiet=quiet)
        test = data.subset(b)
        cv.append({"fold": f, "patients": sorted(set(test.group)),
                   **dice_table(predict_prepared(m, test, tc.network), test.labels)})
    return cv


def _validation(model, tc) -> tuple[list, dict | None]:
    """Dice on the config's validation phantoms, with the confusion counts per phantom they come from."""
    from .bundle import metric_set

    v = tc.validation.get("phantoms")
    if not v:
        return [], None
    cfg = tc.network
    val = phantom_segset(range(int(v["seed0"]), int(v["seed0"]) + int(v["n"])), cfg, every=int(v.get("every", 3)))
    pred = predict_prepared(model, val, cfg)
    cases = [{"case": g, "confusion": confusion(val.labels[val.group == g], pred[val.group == g])}
             for g in dict.fromkeys(val.group.tolist())]
    total = np.sum([c["confusion"] for c in cases], axis=0)
    return [metric_set("validation", dice_from_confusion(total), n=len(val), predictions="validation",
                       recompute="confusion",
                       description=f"Dice pooled over {len(val)} slices of validation phantoms seeds "
                                   f"{v['seed0']}-{int(v['seed0']) + int(v['n']) - 1}")], {"validation": {"cases": cases}}


def train_from_config(config: str | Path, *, resume: bool = False, device: str = "cpu", quiet: bool = False,
                      init: str | Path | None = None, allow_package: bool = True) -> Path:
    """Train the lesion U-Net as a YAML config says (:mod:`sscild.config` layout; see
    ``configs/lesions_phantoms.yaml``): data from phantoms {n, seed0, every}, ``pairs_csv`` (image + label map
    pairs, ``name_map`` for .seg.nrrd names), real backgrounds with inserted patterns; ``cv: {folds}`` > 1 runs
    patient-grouped cross-validation first; ``resume`` continues from the checkpoint in ``out``; ``init`` (a U-Net
    bundle to start from) replaces the config's ``init:``."""
    from .config import trainer_config
    from .util import write_json

    tc = trainer_config("lesions", config, UNetConfig, "lesions_out", init=init)
    t0 = time.perf_counter()
    start = None
    if tc.init:                  # e.g. a second, slower phase from earlier weights of the same network
        start, icfg, _ = load_unet(tc.init)
        if icfg != tc.network:
            raise ConfigError(f"{tc.path}: init {tc.init} is a U-Net of another config ({icfg}); it cannot start "
                              f"a {tc.network}")
    data, weight = _train_data(tc, quiet)
    cv = _cross_validate(data, tc, device, quiet) if tc.cv_folds > 1 else []
    if cv:
        write_json(tc.out / "cv.json", cv)
    model, log = train_unet(data, cfg=tc.network, settings=tc.train, device=device, quiet=quiet, model=start,
                            out=tc.out, resume=resume, slice_weight=weight)
    metrics, preds = _validation(model, tc)
    card = unet_card(tc.network, description=tc.description, label_kind=tc.label_kind, metrics=metrics,
                     training={"config_file": tc.path.name, "train_slices": len(data), "steps": tc.train.steps,
                               "batch_size": tc.train.batch_size, "train_slices_per_s": log.slices_per_s,
                               "training_seconds": round(time.perf_counter() - t0, 1),
                               "initialised_from": tc.init.name if tc.init else None,
                               "cv": cv or None})
    save_unet(model, tc.network, tc.out, card, predictions=preds, allow_package=allow_package)
    return tc.out
