"""S-Net training: augmentation, label-free pretraining, training with :func:`sscild.engine.fit`, patient-grouped
cross-validation, the output calibration of saved weights, and ``sscild train scoring`` (:func:`train_from_config`)."""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from .snet import build_snet, evaluation_table, predict_prepared, snet_card, save_snet
from .snet_data import SliceSet, load_data_spec, pattern_source_from_spec, synthesize
from .snet_input import SNetConfig, calibrated, consistent, fit_calibration

def _augment(x, rng: np.random.Generator, size: int):
    """Random rotation +-30 deg, scale 95-105 %, shift +-10 px at 512 (scaled) on a batch (N, C, S, S).

    The image channels (HU, texture) are resampled bicubically (then clamped to 0..1), the mask (channel 1) by
    nearest neighbour. Bilinear resampling at a random sub-pixel offset low-passes the image (it took about a quarter of the fine-texture energy of
    reticulation on 96 px phantom slices, bicubic about 7 %), so a network trained on bilinearly augmented images
    sees sharper texture at inference than in training and reads it as more reticulation: weights trained with
    bilinear augmentation over-called RET and under-called GG by about 4 points on held-out phantoms, a bias that
    vanished when the test images were passed through the same bilinear augmentation."""
    import torch
    import torch.nn.functional as F

    n = x.shape[0]
    ang = np.deg2rad(rng.uniform(-30, 30, n))
    sc = rng.uniform(0.95, 1.05, n)
    sh = rng.uniform(-10, 10, (n, 2)) / 512 * 2  # normalised coordinates (-1..1)
    theta = np.zeros((n, 2, 3), np.float32)
    theta[:, 0, 0] = np.cos(ang) / sc
    theta[:, 0, 1] = -np.sin(ang) / sc
    theta[:, 1, 0] = np.sin(ang) / sc
    theta[:, 1, 1] = np.cos(ang) / sc
    theta[:, :, 2] = sh
    grid = F.affine_grid(torch.from_numpy(theta).to(x.device), list(x.shape), align_corners=False)
    img = F.grid_sample(torch.cat([x[:, :1], x[:, 2:]], 1), grid, mode="bicubic", padding_mode="zeros",
                        align_corners=False).clamp(0.0, 1.0)
    msk = F.grid_sample(x[:, 1:2], grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return torch.cat([img[:, :1], msk, img[:, 1:]], 1)


def density_proxies(hu: np.ndarray, lung: np.ndarray) -> np.ndarray:
    """Label-free targets for pretraining (N, 3) in %: share of lung pixels in the GG band (-750..-300 HU), in the
    dense band (-300..+100 HU), and the mean lung HU mapped from -1000..0 to 0..100."""
    out = np.zeros((len(hu), 3), np.float32)
    for i in range(len(hu)):
        v = hu[i][lung[i]]
        if v.size == 0:
            continue
        out[i] = [100 * np.mean((v >= -750) & (v < -300)), 100 * np.mean((v >= -300) & (v <= 100)),
                  np.clip((v.mean() + 1000) / 10, 0, 100)]
    return out


def train_snet(data: SliceSet, *, cfg: SNetConfig = SNetConfig(), settings=None, targets: np.ndarray | None = None,
               device: str = "cpu", model=None, quiet: bool = True, out: str | Path | None = None,
               resume: bool = False, stop_after: int | None = None, **overrides):
    """Train (or continue training) an S-Net on a prepared :class:`SliceSet` with :func:`sscild.engine.fit`;
    returns ``(model, TrainLog)``.

    ``settings`` (:class:`sscild.config.TrainSettings`, default the S-Net defaults: warm-up over 100 steps, then a
    cosine decay to 5 % of ``lr``) with keyword overrides of its fields (``steps``, ``lr``, ``balanced``,
    ``augment``, ...). MSE against score / 100; ``balanced`` draws slices by :func:`.sampling.balanced_weights`.
    ``targets`` replaces ``data.scores`` (used by :func:`pretrain`). ``out``/``resume``: checkpoints and
    ``metrics.jsonl`` there, continued when ``resume``.
    """
    import torch

    from ..config import settings_for
    from ..engine import fit
    from .sampling import balanced_weights

    s = settings_for("snet", settings, **overrides)
    y_all = np.asarray(data.scores if targets is None else targets, np.float32)
    if len(y_all) == 0:
        raise ConfigError("no training slices")
    p = balanced_weights(data.scores[:, 0]) if s.balanced else np.full(len(y_all), 1.0 / len(y_all))
    x_all = torch.from_numpy(data.inputs(cfg))
    y_t = torch.from_numpy(y_all / 100.0)

    def step_fn(m, step, rng):
        idx = rng.choice(len(p), size=s.batch_size, replace=True, p=p)
        xb = x_all[idx].to(device)
        if s.augment:
            xb = _augment(xb, rng, cfg.size)
        return torch.mean((m(xb) - y_t[idx].to(device)) ** 2)

    log = fit(model if model is not None else build_snet(cfg), step_fn, s, out=out, resume=resume, device=device,
              quiet=quiet, desc="train S-Net", stop_after=stop_after)
    log.mean_predictor_loss = float(((y_all / 100.0 - (y_all / 100.0).mean(0)) ** 2).mean())
    return log.model, log


def pretrain(data: SliceSet, *, cfg: SNetConfig = SNetConfig(), steps: int = 300, batch_size: int = 16,
             lr: float = 5e-4, seed: int = 100, device: str = "cpu", quiet: bool = True):
    """Self-supervised pretraining on density proxies (:func:`density_proxies`); labels are not used."""
    targets = density_proxies(data.hu, data.lung)
    return train_snet(data, cfg=cfg, steps=steps, batch_size=batch_size, lr=lr, balanced=False, targets=targets,
                      seed=seed, device=device, quiet=quiet)


def cross_validate(data: SliceSet, folds: int, *, cfg: SNetConfig, settings=None, quiet: bool = True,
                   device: str = "cpu", **overrides) -> list[dict[str, Any]]:
    """k-fold cross-validation grouped by patient (``data.group``); synthetic slices are used for training only
    and never for the fold's evaluation. Returns one metrics dict per fold."""
    from sklearn.model_selection import GroupKFold

    from ..config import settings_for

    s = settings_for("snet", settings, **overrides)
    groups = data.group
    n_groups = len(set(groups[~data.synthetic]))
    if n_groups < folds:
        raise ConfigError(f"{folds}-fold cross-validation needs at least {folds} patients; the data have {n_groups}")
    res = []
    real_idx = np.flatnonzero(~data.synthetic)
    for f, (tr, te) in enumerate(GroupKFold(folds).split(real_idx, groups=groups[real_idx])):
        test_groups = set(groups[real_idx[te]])
        train = np.flatnonzero(~np.isin(groups, list(test_groups)))
        model, _ = train_snet(data.subset(train), cfg=cfg, settings=dataclasses.replace(s, seed=s.seed + f),
                              device=device, quiet=quiet)
        pred = predict_prepared(model, data.subset(real_idx[te]), cfg)
        res.append({"fold": f, "n_test": int(len(te)), "test_patients": sorted(test_groups),
                    **evaluation_table(pred, data.scores[real_idx[te]])})
    return res


# --------------------------------------------------------------------------------------------
# calibration of saved weights
# --------------------------------------------------------------------------------------------
def _uncalibrated_validation(sets: dict, cfg: SNetConfig, where: Path) -> tuple[np.ndarray, np.ndarray]:
    if "validation_uncalibrated" in sets:
        v = sets["validation_uncalibrated"]
    elif "validation" in sets and cfg.calibration is None:
        v = sets["validation"]
    else:
        raise ConfigError(f"{where} has no uncalibrated validation predictions: calibration needs those of a "
                          "training run (sscild train scoring writes them)")
    return np.asarray(v["pred"], float), np.asarray(v["truth"], float)


def calibrate_weights(directory: str | Path, *, allow_package: bool = False) -> dict[str, Any]:
    """Fit (or refit) the calibration of saved S-Net weights from their validation predictions made without
    calibration (``validation.json``) and store it in their card, as ``sscild train scoring`` does at the end of
    training. The calibrated validation figures are flagged in-sample (the line was fitted on them). Returns the
    card's calibration notes and figures."""
    from ..bundle import load_state, metric_set, read_card, read_predictions, save_bundle
    from .snet import config_from_card

    directory = Path(directory)
    card = read_card(directory, "S-Net", "sscild train scoring --config ...")
    load_state(directory, card, "S-Net")           # damaged weights are refused before anything is fitted
    sets = read_predictions(directory)
    cfg = config_from_card(card)
    raw, truth = _uncalibrated_validation(sets, cfg, directory / "validation.json")
    cfg = dataclasses.replace(cfg, calibration=fit_calibration(raw, truth))
    pred = calibrated(raw, cfg)
    n = len(truth)
    base = sets.get("validation", {})
    sets = {**sets, "validation": {**base, "pred": pred, "truth": truth},
            "validation_uncalibrated": {"pred": raw, "truth": truth}}
    keep = [m for m in card["metrics"] if m.get("predictions") not in ("validation", "validation_uncalibrated")]
    metrics = keep + [
        metric_set("validation", evaluation_table(consistent(raw), truth), n=n, predictions="validation_uncalibrated",
                   recompute="scores", description=f"{n} validation slices, outputs before the calibration"),
        metric_set("validation", evaluation_table(pred, truth), n=n, in_sample=True, predictions="validation",
                   recompute="scores", description=f"the same {n} validation slices after the calibration fitted on "
                                                    "them: in-sample, optimistic")]
    notes = {**card.get("notes", {}), "calibration": {"fitted_on": f"the {n} validation slices (validation.json)",
                                                      "a_b": list(cfg.calibration)}}
    card = {**card, "config": dataclasses.asdict(cfg), "metrics": metrics, "notes": notes}
    save_bundle(None, directory, card, predictions=sets, allow_package=allow_package)
    return {"calibration": notes["calibration"], "validation_metrics_uncalibrated": metrics[-2]["values"],
            "validation_metrics": metrics[-1]["values"]}


# --------------------------------------------------------------------------------------------
# sscild train scoring
# --------------------------------------------------------------------------------------------
def _training_data(tc, quiet: bool, spec: dict | None = None) -> SliceSet:
    """Scored slices of the config's data section (or of ``spec``, a section in that layout) plus
    ``synthetic.fraction`` of synthetic slices."""
    syn = {"fraction": 0.5, **tc.synthetic}
    scored, backgrounds = load_data_spec(tc.data if spec is None else spec, tc.network, tc.path.parent, quiet=quiet)
    parts = [s for s in (scored,) if s is not None]
    frac = float(syn["fraction"])
    if frac > 0:
        n_scored = len(scored) if scored is not None else 0
        n_syn = int(syn.get("n", int(round(max(n_scored, 1) * frac / max(1e-6, 1 - frac)))))
        parts.append(synthesize(backgrounds, n_syn, np.random.default_rng(tc.train.seed), tc.network,
                                source=pattern_source_from_spec(syn, tc.path.parent), quiet=quiet,
                                noise_hu=tuple(syn["noise_hu"]) if syn.get("noise_hu") else None))
    return SliceSet.concat(parts)


def _start_model(tc, data: SliceSet, resume: bool, device: str, quiet: bool):
    """The network to train: from the config's ``init`` weights, or pretrained on density proxies (not when
    resuming)."""
    from ..engine import has_checkpoint
    from .snet import load_init

    model, notes = build_snet(tc.network), {}
    if tc.init:
        model, skipped = load_init(model, tc.init)
        notes["init"] = {"from": Path(tc.init).name, "skipped_tensors": skipped}
    if tc.pretrain_steps and not (resume and has_checkpoint(tc.out)):
        model, plog = pretrain(data, cfg=tc.network, steps=tc.pretrain_steps, batch_size=tc.train.batch_size,
                               lr=tc.train.lr, device=device, quiet=quiet)
        notes["pretrain"] = {"steps": tc.pretrain_steps, "task": "density proxies (label-free)",
                             "final_loss": float(np.mean(plog.losses[-20:]))}
    return model, notes


def _validation_set(tc, quiet: bool) -> SliceSet | None:
    """The slices of the config's validation section (None without one)."""
    spec = tc.validation
    if not spec:
        return None
    cfg = tc.network
    vs, vbg = load_data_spec({k: v for k, v in spec.items() if k != "synthetic_n"}, cfg, tc.path.parent, quiet=quiet)
    parts = [s for s in (vs,) if s is not None]
    if len(vbg):
        parts.append(synthesize(vbg, int(spec.get("synthetic_n", 2 * len(vbg))), np.random.default_rng(999), cfg,
                                source=pattern_source_from_spec({**tc.synthetic}, tc.path.parent)))
    return SliceSet.concat(parts)


def _validation(model, tc, quiet: bool) -> tuple[list, dict | None]:
    """Metrics on the config's validation section (held out: not in-sample) and the predictions they come from."""
    from ..bundle import metric_set

    val = _validation_set(tc, quiet)
    if val is None:
        return [], None
    cfg = tc.network
    pred = predict_prepared(model, val, cfg)
    sets = {"validation": {"pred": pred, "truth": val.scores, "group": val.group.tolist(),
                           "synthetic": val.synthetic}}
    return [metric_set("validation", evaluation_table(pred, val.scores), n=len(val), predictions="validation",
                       recompute="scores", description=f"{len(val)} validation slices of the config")], sets


def train_from_config(config: str | Path, *, resume: bool = False, device: str = "cpu", quiet: bool = False,
                      init: str | Path | None = None, allow_package: bool = True) -> Path:
    """Train an S-Net as a YAML config says (:mod:`sscild.config` layout, see ``configs/snet_phantoms.yaml``);
    returns the output folder with the bundle (``model.safetensors``, ``card.json``, ``card.md``,
    ``validation.json`` when a validation set is given) and ``metrics.jsonl``. ``resume`` continues from the
    checkpoint in the output folder (safetensors + JSON). With ``calibrate`` (default) and at least 20 validation
    slices the output calibration is fitted at the end (:func:`calibrate_weights`). A config with a ``finetune:``
    section fine-tunes its ``init`` weights instead (:func:`sscild.scoring.snet_finetune.finetune_from_config`:
    replay, L2-SP, a guard against getting worse on the original distribution). ``init`` (weights to start from)
    replaces the config's ``init:``."""
    from ..config import trainer_config
    from ..util import write_json

    tc = trainer_config("snet", config, SNetConfig, "snet_out", init=init)
    if tc.finetune is not None:
        from .snet_finetune import finetune_from_config

        return finetune_from_config(tc, resume=resume, device=device, quiet=quiet,
                                    allow_package=allow_package)
    t0 = time.perf_counter()
    data = _training_data(tc, quiet)
    model, notes = _start_model(tc, data, resume, device, quiet)
    model, log = train_snet(data, cfg=tc.network, settings=tc.train, device=device, model=model, quiet=quiet,
                            out=tc.out, resume=resume)
    metrics, preds = _validation(model, tc, quiet)
    if tc.cv_folds > 1:
        write_json(tc.out / "cv.json", cross_validate(data, tc.cv_folds, cfg=tc.network, settings=tc.train,
                                                      device=device))
        notes["cv_folds"] = tc.cv_folds
    card = snet_card(tc.network, description=tc.description, label_kind=tc.label_kind, metrics=metrics, notes=notes,
                     training={"config_file": tc.path.name, "train_slices": int(len(data)),
                               "synthetic_slices": int(data.synthetic.sum()), "steps": tc.train.steps,
                               "batch_size": tc.train.batch_size, "balanced_sampling": tc.train.balanced,
                               "train_slices_per_s": log.slices_per_s,
                               "training_seconds": round(time.perf_counter() - t0, 1)})
    save_snet(model, tc.network, tc.out, card, predictions=preds, allow_package=allow_package)
    if preds and tc.calibrate and len(preds["validation"]["truth"]) >= 20:
        calibrate_weights(tc.out, allow_package=allow_package)
    return tc.out
