"""Lesion segmentation: normal lung, ground glass (GG), reticulation/fibrosis (RET) voxel by voxel, with a 2D U-Net.

After the SICCS CNN (normal lung / established fibrosis / GGO) and Esnaashari et al. (U-Net for reticulation and
GGO; lung involvement = lesion area over lung area), sized for a CPU:

- **Input** each axial slice cropped to the *scan's* lung box (one square box for all slices, so the pixel size is
  the same on every slice) and resampled to ``size`` x ``size`` (default 128; 512 supported); two channels, HU
  mapped -1000..200 -> 0..1 and the lung mask.
- **Classes** 0 background (outside the lung), 1 normal lung, 2 GG, 3 RET. Inside the lung mask the label is the
  most likely of 1..3; outside it is 0.
- **Training** Dice + cross-entropy (MONAI ``DiceCELoss``), Adam, on synthetic data with exact masks: phantom
  slices, and GG/RET inserted into healthy slices (:mod:`sscild.scoring.synthesis`), real backgrounds included;
  users' annotations as image + label-map pairs (NIfTI, or 3D Slicer ``.seg.nrrd`` whose segment names map to
  classes through a small config).
- **Outputs** ``lesions.nii.gz`` on the input grid and :func:`summarise`: GG, RET and total lesion volume (mL) and %
  of lung per lung, per zone (upper/middle/lower thirds of the lung height) and whole lung, and per Goh level the
  area ratios (so they sit beside the S-Net scores).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .domain import LesionClass, LungLabel, percent, zone_bounds
from .errors import NoLungsError
from .scan import CTScan

CLASSES = {"background": 0, "normal": 1, "GG": 2, "RET": 3}       # LesionClass as a mapping (names of the label map)
DEFAULT_DIR = Path(__file__).resolve().parent / "models" / "lesions"
#: data and training names, imported on first use from :mod:`.lesion_data` and :mod:`.lesion_train`
_LAZY = {"lesion_data": ("SegSet", "prepare_volume", "phantom_segset", "synthetic_segset",
                         "real_background_segset", "read_label_map", "pairs_segset", "DEFAULT_NAME_MAP"),
         "lesion_train": ("train_unet", "train_from_config")}


def __getattr__(name: str):
    for mod, names in _LAZY.items():
        if name in names:
            import importlib

            return getattr(importlib.import_module(f".{mod}", __package__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class UNetConfig:
    size: int = 128
    channels: tuple[int, ...] = (16, 32, 64, 128)
    hu_min: float = -1000.0
    hu_max: float = 200.0
    margin: float = 0.04


def build_unet(cfg: UNetConfig = UNetConfig()):
    from monai.networks.nets import UNet

    return UNet(spatial_dims=2, in_channels=2, out_channels=4, channels=tuple(cfg.channels),
                strides=(2,) * (len(cfg.channels) - 1), num_res_units=1)


def scan_crop(lung: np.ndarray, margin: float = 0.04):
    """One square crop box (``sscild.scoring.snet.Crop``) around the lungs of all slices."""
    from .scoring.snet import lung_crop

    return lung_crop(np.asarray(lung, bool).any(0), margin)


def _inputs(hu: np.ndarray, lung: np.ndarray, cfg: UNetConfig) -> np.ndarray:
    x0 = (np.clip(hu, cfg.hu_min, cfg.hu_max) - cfg.hu_min) / (cfg.hu_max - cfg.hu_min)
    return np.stack([x0.astype(np.float32), lung.astype(np.float32)], 1)


def predict_prepared(model, data: "SegSet", cfg: UNetConfig, batch_size: int = 16, device: str = "cpu"
                     ) -> np.ndarray:
    """Labels (N, S, S) on the U-Net grid: 0 outside the lung, argmax of classes 1..3 inside."""
    import torch

    x = _inputs(data.hu, data.lung, cfg)
    out = []
    with torch.inference_mode():
        for b in range(0, len(x), batch_size):
            logits = model(torch.from_numpy(x[b:b + batch_size]).to(device))
            out.append((logits[:, 1:].argmax(1) + 1).cpu().numpy().astype(np.uint8))
    lab = np.concatenate(out) if out else np.zeros((0, cfg.size, cfg.size), np.uint8)
    return np.where(data.lung, lab, 0).astype(np.uint8)


def segment_lesions(model, cfg: UNetConfig, scan: CTScan, lung: np.ndarray, *, batch_size: int = 16,
                    device: str = "cpu", quiet: bool = True, aer=None) -> np.ndarray:
    """Lesion labels (z, y, x) uint8 on the scan's grid: 0 outside the lung, 1 normal, 2 GG, 3 RET.

    The lung voxels are first shifted to the reference aeration (``aer``, a :class:`sscild.density.Aeration` the
    caller already measured, else measured here; as in training: an under-inflated lung is not ground glass).
    Slices go through the network in batches on the scan's lung box; the class probabilities are resampled back to the box (bilinear) before the argmax, so the labels follow the
    lung mask at full resolution.
    """
    import torch
    import torch.nn.functional as F

    from .scoring.snet import crop_resample
    from .util import progress

    lung = np.asarray(lung, bool)
    if not lung.any():
        raise NoLungsError("no lung to segment lesions in")
    from .density import aeration, normalise_aeration

    aer = aer if aer is not None else aeration(scan.hu, lung, float(scan.spacing[1]))
    crop = scan_crop(lung, cfg.margin)
    ks = [k for k in range(scan.shape[0]) if lung[k].any()]
    out = np.zeros(scan.shape, np.uint8)
    H, W = scan.shape[1:]
    for b in progress(range(0, len(ks), batch_size), "lesions", quiet=quiet):
        kk = ks[b:b + batch_size]
        hu, lu, _, _ = crop_resample(normalise_aeration(scan.hu[kk], lung[kk], aer), lung[kk], cfg.size, crop=crop)
        with torch.inference_mode():
            logits = model(torch.from_numpy(_inputs(hu, lu, cfg)).to(device)).float()
            up = F.interpolate(logits[:, 1:], size=(crop.side, crop.side), mode="bilinear", align_corners=False)
            # torch.max over the class axis: the first maximum, as argmax, and ~20x faster than argmax here
            prob = torch.max(up, 1).indices.cpu().numpy().astype(np.uint8) + 1
        # paste the box back into the slice grid
        ys, xs = max(0, crop.y0), max(0, crop.x0)
        ye, xe = min(H, crop.y0 + crop.side), min(W, crop.x0 + crop.side)
        out[kk, ys:ye, xs:xe] = prob[:, ys - crop.y0:ye - crop.y0, xs - crop.x0:xe - crop.x0]
    out[~lung] = 0
    return out


# --------------------------------------------------------------------------------------------
# measurements
# --------------------------------------------------------------------------------------------
def _amounts(counts: np.ndarray, voxel_ml: float) -> dict[str, float | None]:
    """Volumes and % of lung from the voxel counts of the lesion classes (index = :class:`LesionClass`)."""
    n, gg, ret = int(counts[1:].sum()), int(counts[LesionClass.GG]), int(counts[LesionClass.RET])
    return {"lung_ml": n * voxel_ml, "GG_ml": gg * voxel_ml, "RET_ml": ret * voxel_ml,
            "lesion_ml": (gg + ret) * voxel_ml, "GG_pct": percent(gg, n), "RET_pct": percent(ret, n),
            "involvement_pct": percent(gg + ret, n)}


def _slice_counts(labels: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Voxel counts (z, group, lesion class) of a (z, y, x) label map (``groups``: the lung labels; at least
    outside / right / left, present or not), slice by slice on a one-byte key (group x 4 + class), so that no
    whole-scan integer copy is made."""
    ng = max(int(np.max(groups, initial=0)), int(LungLabel.LEFT)) + 1
    kind = np.uint8 if ng * 4 <= 256 else np.intp
    out = np.zeros((len(labels), ng, 4), np.int64)
    for k in range(len(labels)):
        key = groups[k].astype(kind) * kind(4) + labels[k].astype(kind)
        out[k] = np.bincount(key.ravel(), minlength=ng * 4).reshape(ng, 4)
    return out


def summarise(labels: np.ndarray, lung_labels: np.ndarray, scan: CTScan,
              level_slices: Mapping[str, int | None] | None = None) -> dict[str, Any]:
    """``lesions.json``: per lung (right/left), per zone (upper/middle/lower thirds of the lung height, as
    :func:`sscild.domain.zone_bounds` draws them for every module), whole lung; and per Goh level the area ratios
    TOT/GG/RET in % of the slice's lung area (None on an empty lung, :func:`sscild.domain.percent`)."""
    v = scan.voxel_volume_ml
    c = _slice_counts(np.asarray(labels), np.asarray(lung_labels))      # (z, lung label, lesion class)
    per_slice, per_lung = c.sum(1), c.sum(0)
    res: dict[str, Any] = {"whole": _amounts(per_slice.sum(0), v), "right": _amounts(per_lung[LungLabel.RIGHT], v),
                           "left": _amounts(per_lung[LungLabel.LEFT], v)}
    res["zones"] = {name: _amounts(per_slice[a:b].sum(0), v)
                    for name, (a, b) in zone_bounds(per_slice[:, 1:].sum(1) > 0).items()}
    if level_slices:
        lv = {}
        for n, k in level_slices.items():
            if k is None:
                continue
            a = _amounts(per_slice[k], 1.0)
            lv[n] = {"TOT": a["involvement_pct"], "GG": a["GG_pct"], "RET": a["RET_pct"], "slice": int(k)}
        res["levels"] = lv
    return res


# --------------------------------------------------------------------------------------------
# weights and config training (sscild train lesions)
# --------------------------------------------------------------------------------------------
def unet_card(cfg: UNetConfig, *, description: str, **kw) -> dict:
    """A model card for lesion U-Net weights (:func:`sscild.bundle.model_card`; ``kw``: label_kind, training,
    metrics)."""
    from .bundle import model_card

    return model_card("lesions", "lesion U-Net", cfg, description=description, **kw,
                      input={"description": f"each lung slice cropped to the scan's lung box, {cfg.size}x{cfg.size}, "
                                            f"HU {cfg.hu_min:.0f}..{cfg.hu_max:.0f} + lung mask",
                             "classes": "0 outside the lung, 1 normal, 2 ground glass, 3 reticulation"})


def save_unet(model, cfg: UNetConfig, directory: str | Path, card: dict | None = None, **kw) -> Path:
    """Write a lesion U-Net bundle (:func:`sscild.bundle.save_model`; ``kw``: predictions, allow_package)."""
    from .bundle import save_model

    return save_model(model, cfg, directory, card or unet_card(cfg, description="not recorded"), **kw)


def config_from_card(card: dict) -> UNetConfig:
    from .bundle import card_config

    return card_config(UNetConfig, card)


def load_unet(directory: str | Path | None = None, device: str = "cpu"):
    """Load the lesion U-Net, its config and card (default: the shipped weights); ``ModelError`` when missing,
    corrupt or unfit."""
    from .bundle import load_bundle

    directory = Path(directory) if directory is not None else DEFAULT_DIR
    model, card = load_bundle(directory, "lesions", lambda c: build_unet(config_from_card(c)),
                              what="lesion U-Net", train_hint="sscild train lesions --config ...", device=device)
    return model, config_from_card(card), card


def confusion(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """4 x 4 voxel counts: rows the true class 0..3, columns the predicted class.

    >>> confusion(np.array([0, 1, 2, 2]), np.array([0, 1, 2, 3])).tolist()[2]
    [0, 0, 1, 1]
    """
    idx = np.asarray(truth, np.int64).ravel() * 4 + np.asarray(pred, np.int64).ravel()
    return np.bincount(idx, minlength=16).reshape(4, 4)


def dice_from_confusion(c: np.ndarray) -> dict[str, float]:
    """Dice of GG, RET, total lesion (GG + RET) and normal lung from a 4 x 4 confusion matrix (NaN where both
    are empty); equals :func:`dice_table` of the voxels it counts."""
    c = np.asarray(c, float)

    def dice(sel):
        inter = c[np.ix_(sel, sel)].sum()
        total = c[sel, :].sum() + c[:, sel].sum()
        return float(2 * inter / total) if total else float("nan")

    return {"GG": dice([2]), "RET": dice([3]), "lesion": dice([2, 3]), "normal": dice([1])}


def dice_table(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Dice of GG, RET, total lesion (GG + RET) and normal lung; NaN where both are empty."""
    return dice_from_confusion(confusion(truth, pred))
