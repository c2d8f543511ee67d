"""Fine-tuning S-Net on new labels (an S-Net config with a ``finetune:`` section, e.g. the one
``sscild review export`` writes for a reader study's consensus) without losing what the initial weights could do.

Fine-tuning on a few dozen labelled level slices alone moves every weight and the batch-norm statistics towards
those slices, and the net gets worse on the data it was trained on (measured in bench/results/review.md). Here:

- **replay**: ``replay_share`` of every batch comes from the original training distribution (the ``finetune.replay``
  data section plus synthetic slices as the config's ``synthetic:`` section says), the rest from the new labels;
- **low rate, few steps** (``TRAIN_DEFAULTS["snet_finetune"]``), no weight decay;
- **L2-SP**: ``l2sp / 2 * sum((w - w_init) ** 2)`` pulls the weights towards the initial ones;
- **frozen batch norm**: the running statistics stay those of the initial weights;
- **calibration refitted** on a validation split: the config's ``validation:`` section (original distribution)
  plus ``val_share`` of the new labels' patients, held out from training (never the test set);
- **guard**: the initial and the fine-tuned net on the original-distribution validation; when the fine-tuned one's
  MAE is worse by more than ``tolerance`` points on TOT, GG or RET, a warning says so, the card notes it and (with
  ``on_worse: keep_init``) ``out`` gets the initial weights and ``out/rejected`` the fine-tuned ones.

Settings: :class:`sscild.config.FinetuneSettings`; training: :func:`sscild.engine.fit`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
import warnings
from pathlib import Path

import numpy as np

from ..domain import PATTERNS
from ..errors import ConfigError
from .snet import build_snet, evaluation_table, predict_prepared, save_snet, snet_card
from .snet_data import SliceSet
from .snet_input import SNetConfig, fit_calibration
from .snet_train import _augment, _training_data, _validation_set

REJECTED = "rejected"


class FinetuneWarning(UserWarning):
    """Fine-tuning made S-Net worse on its original-distribution validation than the initial weights."""


# --------------------------------------------------------------------------------------------
# the training step
# --------------------------------------------------------------------------------------------
def _pool(data: SliceSet, k: int, cfg: SNetConfig, balanced: bool):
    """(inputs, targets / 100, sampling probabilities, slices per batch) of one source of a mixed batch."""
    import torch

    from .sampling import balanced_weights

    p = balanced_weights(data.scores[:, 0]) if balanced else np.full(len(data), 1.0 / len(data))
    return torch.from_numpy(data.inputs(cfg)), torch.from_numpy(np.asarray(data.scores, np.float32) / 100.0), p, k


def freeze_batchnorm(model) -> None:
    """Batch-norm layers in eval mode: their running statistics stay as they are (their scale and shift train)."""
    import torch

    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()


def finetune_snet(new: SliceSet, replay: SliceSet | None, *, cfg: SNetConfig, settings, ft, model,
                  device: str = "cpu", quiet: bool = True, out: str | Path | None = None, resume: bool = False,
                  stop_after: int | None = None):
    """Fine-tune ``model`` (holding the initial weights) with :func:`sscild.engine.fit`; returns ``(model, log)``.

    Each batch of ``settings.batch_size`` draws ``round(ft.replay_share * batch_size)`` slices from ``replay`` and
    the rest from ``new`` (balanced over TOT bins within each when ``settings.balanced``); loss = MSE on score / 100
    + ``ft.l2sp / 2 * sum((w - w_init) ** 2)`` with ``w_init`` the weights ``model`` has when called (a resumed run
    pulls towards the same ones); ``ft.freeze_bn`` keeps the batch-norm statistics."""
    import torch

    from ..engine import fit

    b = settings.batch_size
    n_rep = min(b - 1, int(round(ft.replay_share * b))) if ft.replay_share > 0 else 0
    if n_rep and (replay is None or len(replay) == 0):
        raise ConfigError("finetune: replay_share > 0 but the replay set has no slices; check finetune.replay")
    if b - n_rep < 1 or len(new) == 0:
        raise ConfigError("finetune: no new labelled slices in a batch; lower replay_share or raise batch_size")
    pools = [_pool(d, k, cfg, settings.balanced) for d, k in ((new, b - n_rep), (replay, n_rep)) if k > 0]
    anchor = [q.detach().clone().to(device) for q in model.parameters()]

    def step_fn(m, step, rng):
        if ft.freeze_bn:
            freeze_batchnorm(m)
        xs, ys = [], []
        for x, y, p, k in pools:
            idx = rng.choice(len(p), size=k, replace=True, p=p)
            xs.append(x[idx])
            ys.append(y[idx])
        xb = torch.cat(xs).to(device)
        if settings.augment:
            xb = _augment(xb, rng, cfg.size)
        loss = torch.mean((m(xb) - torch.cat(ys).to(device)) ** 2)
        if ft.l2sp:
            loss = loss + ft.l2sp / 2 * sum(((q - a) ** 2).sum() for q, a in zip(m.parameters(), anchor))
        return loss

    log = fit(model, step_fn, settings, out=out, resume=resume, device=device, quiet=quiet, desc="fine-tune S-Net",
              stop_after=stop_after)
    return log.model, log


# --------------------------------------------------------------------------------------------
# data: new labels (train / validation split by patient), replay set, original validation
# --------------------------------------------------------------------------------------------
def split_by_patient(data: SliceSet, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices: ``share`` of the patients (``data.group``, at least one when there are two or
    more and ``share`` > 0, never all) go to validation.

    >>> d = SliceSet(*(np.zeros(4) for _ in range(8)))
    >>> d.group = np.array(["a", "a", "b", "c"])
    >>> tr, va = split_by_patient(d, 0.3, 0)
    >>> len(set(d.group[tr]) & set(d.group[va])), len(tr) + len(va)
    (0, 4)
    """
    groups = np.array(sorted(set(data.group.tolist())))
    n_val = int(round(share * len(groups)))
    if share > 0 and len(groups) >= 2:
        n_val = min(max(1, n_val), len(groups) - 1)
    else:
        n_val = 0
    val_groups = np.random.default_rng(seed).permutation(groups)[:n_val]
    is_val = np.isin(data.group, val_groups)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def _cached(tc, name: str, key, build):
    """``build()`` (a SliceSet or None), kept in ``out/cache`` under a hash of ``key`` when ``finetune.cache``."""
    if not tc.finetune.cache:
        return build()
    cfg = {k: v for k, v in dataclasses.asdict(tc.network).items() if k != "calibration"}
    h = hashlib.sha256(json.dumps([name, key, cfg], sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = tc.out / "cache" / f"{name}-{h}.npz"
    if path.exists():
        return SliceSet.load(path)
    data = build()
    if data is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        data.save(path)
    return data


def finetune_data(tc, quiet: bool = True) -> dict[str, SliceSet | None]:
    """``new_train``, ``new_val`` (the config's data section split by patient), ``replay`` and ``original_val``
    (the config's validation section)."""
    from .snet_data import load_data_spec

    ft = tc.finetune
    new, _ = load_data_spec(tc.data, tc.network, tc.path.parent, quiet=quiet)
    if new is None:
        raise ConfigError(f"{tc.path}: the data section gives no labelled slices to fine-tune on")
    tr, va = split_by_patient(new, ft.val_share, tc.train.seed)
    replay = (_cached(tc, "replay", [ft.replay, tc.synthetic, tc.train.seed],
                      lambda: _training_data(tc, quiet, spec=ft.replay)) if ft.replay_share > 0 else None)
    val = _cached(tc, "validation", [tc.validation, tc.synthetic], lambda: _validation_set(tc, quiet))
    return {"new_train": new.subset(tr), "new_val": new.subset(va) if len(va) else None, "replay": replay,
            "original_val": val}


# --------------------------------------------------------------------------------------------
# calibration, guard, saving
# --------------------------------------------------------------------------------------------
def _initial(tc):
    """(model, config with its calibration, card or None, folder) of the weights to fine-tune."""
    from .snet import load_init, load_snet

    path = Path(tc.init)
    if (path / "card.json").exists():
        model, cfg, card = load_snet(path)
        arch = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "calibration"}
        mine = {k: v for k, v in dataclasses.asdict(tc.network).items() if k != "calibration"}
        if arch != mine:
            diff = sorted(k for k in arch if arch[k] != mine[k])
            raise ConfigError(f"{tc.path}: config: differs from the init weights' in {', '.join(diff)}; fine-tuning "
                              "keeps the network of the init weights (copy their card's config)")
        return model, cfg, card, path
    model, _ = load_init(build_snet(tc.network), path)
    return model, tc.network, None, path


def _mae(model, data: SliceSet | None, cfg: SNetConfig) -> dict[str, float] | None:
    if data is None or len(data) == 0:
        return None
    tab = evaluation_table(predict_prepared(model, data, cfg), data.scores)
    return {p: round(float(tab[p]["MAE"]), 3) for p in PATTERNS}


def refit_calibration(model, cfg: SNetConfig, val: SliceSet | None, enabled: bool) -> tuple[SNetConfig, str]:
    """``cfg`` with the output calibration refitted on ``val`` (>= 20 slices); else the initial calibration."""
    if not enabled or val is None or len(val) < 20:
        return cfg, "kept from the init weights (calibration off or under 20 validation slices)"
    raw = predict_prepared(model, val, dataclasses.replace(cfg, calibration=None))
    return (dataclasses.replace(cfg, calibration=fit_calibration(raw, val.scores)),
            f"refitted on {len(val)} validation slices (original-distribution validation + held-out new labels)")


def guard(init_mae: dict | None, tuned_mae: dict | None, tolerance: float) -> dict:
    """Whether the fine-tuned net stays within ``tolerance`` MAE points of the initial one on every pattern.

    >>> guard({"TOT": 2.0, "GG": 2.0, "RET": 2.0}, {"TOT": 2.4, "GG": 3.1, "RET": 1.0}, 0.5)["worse"]
    {'GG': 1.1}
    """
    if init_mae is None or tuned_mae is None:
        return {"passed": True, "checked": False, "worse": {},
                "note": "no validation section: the guard could not compare the fine-tuned and the initial net"}
    worse = {p: round(tuned_mae[p] - init_mae[p], 3) for p in PATTERNS if tuned_mae[p] - init_mae[p] > tolerance}
    return {"passed": not worse, "checked": True, "worse": worse, "tolerance": tolerance,
            "init_MAE": init_mae, "finetuned_MAE": tuned_mae}


def _predictions(model, cfg: SNetConfig, val: SliceSet | None) -> dict | None:
    if val is None:
        return None
    raw = predict_prepared(model, val, dataclasses.replace(cfg, calibration=None))
    common = {"truth": val.scores, "group": val.group.tolist(), "synthetic": val.synthetic}
    return {"validation": {"pred": predict_prepared(model, val, cfg), **common},
            "validation_uncalibrated": {"pred": raw, **common}}


def _tuned_card(tc, model, cfg: SNetConfig, data: dict, report: dict, seconds: float) -> dict:
    from ..bundle import metric_set

    metrics = []
    for key, what in (("original_val", "the config's validation section (original distribution)"),
                      ("new_val", "the new labels' held-out patients")):
        d = data[key]
        if d is not None and len(d):
            metrics.append(metric_set("validation", evaluation_table(predict_prepared(model, d, cfg), d.scores),
                                      n=len(d), in_sample=True,
                description=f"{len(d)} slices of {what}, after the calibration refitted on the validation "
                            "split (in-sample for the calibration; not a test set)"))
    return snet_card(cfg, description=tc.description, label_kind=tc.label_kind, metrics=metrics,
                     notes={"finetune": report},
                     training={"config_file": tc.path.name, "train_slices": int(len(data["new_train"])),
                               "replay_slices": int(len(data["replay"])) if data["replay"] is not None else 0,
                               "synthetic_slices": 0, "steps": tc.train.steps, "batch_size": tc.train.batch_size,
                               "lr": tc.train.lr, "balanced_sampling": tc.train.balanced,
                               "training_seconds": round(seconds, 1)})


def _keep_initial(tc, init_model, init_cfg, init_card, init_path, report: dict, allow_package: bool) -> None:
    """``out`` gets the initial weights with their card (a note and a changelog line about the rejected run)."""
    import datetime as _dt

    from ..bundle import read_predictions

    card = dict(init_card or snet_card(init_cfg, description=f"initial weights {init_path.name}"))
    card["notes"] = {**card.get("notes", {}), "finetune_rejected": report}
    card["changelog"] = list(card.get("changelog", [])) + [
        {"version": card.get("version", "1.0.0"), "date": _dt.date.today().isoformat(),
         "change": f"fine-tuning by {tc.path.name} rejected by its guard (worse on the original-distribution "
                   f"validation); these are the unchanged initial weights, the fine-tuned ones are in {REJECTED}/"}]
    preds = read_predictions(init_path) if init_card is not None else None
    save_snet(init_model, init_cfg, tc.out, card, predictions=preds or None, allow_package=allow_package)


def finetune_from_config(tc, *, resume: bool = False, device: str = "cpu", quiet: bool = False,
                         allow_package: bool = True) -> Path:
    """Fine-tune the config's ``init`` S-Net as its ``finetune:`` section says (module docstring); returns ``out``
    (the fine-tuned bundle, or the initial weights when the guard rejected the fine-tuned ones)."""
    import copy

    t0 = time.perf_counter()
    ft = tc.finetune
    init_model, init_cfg, init_card, init_path = _initial(tc)
    data = finetune_data(tc, quiet)
    model, log = finetune_snet(data["new_train"], data["replay"], cfg=dataclasses.replace(init_cfg, calibration=None),
                               settings=tc.train, ft=ft, model=copy.deepcopy(init_model), device=device,
                               quiet=quiet, out=tc.out, resume=resume)
    vals = [d for d in (data["original_val"], data["new_val"]) if d is not None and len(d)]
    cfg, cal_note = refit_calibration(model, init_cfg, SliceSet.concat(vals) if vals else None, tc.calibrate)
    g = guard(_mae(init_model, data["original_val"], init_cfg), _mae(model, data["original_val"], cfg),
              ft.tolerance)
    kept = "finetuned" if g["passed"] or ft.on_worse == "keep_finetuned" else "init"
    report = {"init": init_path.name, "replay_share": ft.replay_share, "l2sp": ft.l2sp, "freeze_bn": ft.freeze_bn,
              "val_share": ft.val_share, "new_train_slices": int(len(data["new_train"])),
              "new_validation_patients": sorted(set(data["new_val"].group.tolist())) if data["new_val"] else [],
              "new_validation_MAE": {"init": _mae(init_model, data["new_val"], init_cfg),
                                     "finetuned": _mae(model, data["new_val"], cfg)},
              "calibration": cal_note, "final_loss": float(np.mean(log.losses[-20:])) if log.losses else None,
              "guard": g, "kept": kept}
    if not g["passed"]:
        warnings.warn(f"fine-tuning made S-Net worse on the original-distribution validation (MAE up by "
                      f"{g['worse']} points, tolerance {ft.tolerance}): " +
                      (f"the initial weights are kept in {tc.out}, the fine-tuned ones are in {tc.out / REJECTED}"
                       if kept == "init" else f"kept anyway in {tc.out} (on_worse: keep_finetuned)"),
                      FinetuneWarning, stacklevel=2)
    card = _tuned_card(tc, model, cfg, data, report, time.perf_counter() - t0)
    save_snet(model, cfg, tc.out / REJECTED if kept == "init" else tc.out, card,
              predictions=_predictions(model, cfg, SliceSet.concat(vals) if vals else None),
              allow_package=allow_package)
    if kept == "init":
        _keep_initial(tc, init_model, init_cfg, init_card, init_path, card["notes"]["finetune"], allow_package)
    else:
        shutil.rmtree(tc.out / REJECTED, ignore_errors=True)          # what an earlier run left there
    return tc.out
