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

import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .errors import ConfigError, LabelMapError, NoLungsError
from .scan import CTScan

CLASSES = {"background": 0, "normal": 1, "GG": 2, "RET": 3}
DEFAULT_DIR = Path(__file__).resolve().parent / "models" / "lesions"
# segment names annotators use, mapped to classes (case-insensitive regular expressions); override per dataset
DEFAULT_NAME_MAP = {
    r"^(ggo?|ground[ -]?glass.*)$": 2,
    r"^(ret|reticulation.*|.*fibrosis.*|honeycomb.*|ef)$": 3,
    r"^(normal.*|healthy.*|lung.*)$": 1,
}


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


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------
@dataclass
class SegSet:
    """Prepared slices on the U-Net grid: ``hu`` (N, S, S) float32, ``lung`` bool, ``labels`` uint8 0..3,
    ``pixel_mm`` (N,), ``group`` (patient/scan id for grouped splits)."""

    hu: np.ndarray
    lung: np.ndarray
    labels: np.ndarray
    pixel_mm: np.ndarray
    group: np.ndarray

    def __len__(self) -> int:
        return len(self.hu)

    def subset(self, idx) -> "SegSet":
        idx = np.asarray(idx)
        return SegSet(*(getattr(self, f)[idx] for f in self.__dataclass_fields__))

    @staticmethod
    def concat(sets: Sequence["SegSet"]) -> "SegSet":
        sets = [s for s in sets if len(s)]
        if not sets:
            raise ConfigError("no slices to train or test on")
        return SegSet(*(np.concatenate([getattr(s, f) for s in sets]) for f in SegSet.__dataclass_fields__))


def scan_crop(lung: np.ndarray, margin: float = 0.04):
    """One square crop box (``sscild.scoring.snet.Crop``) around the lungs of all slices."""
    from .scoring.snet import lung_crop

    return lung_crop(np.asarray(lung, bool).any(0), margin)


def prepare_volume(hu: np.ndarray, lung: np.ndarray, pixel_mm: float, cfg: UNetConfig,
                   labels: np.ndarray | None = None, slices: Sequence[int] | None = None, group: str = ""
                   ) -> tuple[SegSet, Any]:
    """Crop slices of a volume (z, y, x) to the scan's lung box and resample; returns (SegSet, crop)."""
    from .scoring.snet import crop_resample

    crop = scan_crop(lung, cfg.margin)
    ks = list(range(len(hu))) if slices is None else list(slices)
    h, lu, lab, f = crop_resample(np.asarray(hu, np.float32)[ks], np.asarray(lung, bool)[ks], cfg.size, crop=crop,
                                  labels=None if labels is None else np.asarray(labels)[ks])
    lab = np.where(lu, 1, 0).astype(np.uint8) if lab is None else np.where(lu, np.maximum(lab, 1), 0).astype(np.uint8)
    return SegSet(h, lu, lab, np.full(len(ks), pixel_mm * f, np.float32), np.array([group] * len(ks))), crop


def phantom_segset(seeds: Sequence[int], cfg: UNetConfig, *, size: str = "small", every: int = 2,
                   extent: Callable[[int], float] | None = None, quiet: bool = True) -> SegSet:
    """Every ``every``-th lung slice of phantoms with their exact lesion labels (extent 0-70 %)."""
    from .phantom import make_phantom
    from .util import progress

    extent = extent or (lambda s: 0.0 if s % 5 == 0 else float((s * 37) % 71))
    sets = []
    for s in progress(list(seeds), "phantoms", quiet=quiet):
        scan, truth = make_phantom(int(s), size=size, extent=extent(int(s)))
        lung = truth.lungs > 0
        ks = [k for k in range(0, scan.shape[0], every) if lung[k].sum() > 50]
        ss, _ = prepare_volume(scan.hu, lung, float(scan.spacing[1]), cfg, labels=truth.lesions, slices=ks,
                               group=f"phantom{s}")
        sets.append(ss)
    return SegSet.concat(sets)


def synthetic_segset(backgrounds: SegSet, n: int, rng: np.random.Generator, source=None) -> SegSet:
    """GG/RET inserted into randomly drawn healthy background slices, with exact masks."""
    from .scoring.synthesis import insert_patterns

    healthy = np.flatnonzero([(backgrounds.labels[i] >= 2).sum() == 0 for i in range(len(backgrounds))])
    if healthy.size == 0:
        raise ConfigError("no healthy background slices to insert patterns into")
    idx = rng.choice(healthy, size=int(n))
    hus, labs = [], []
    for i in idx:
        r = insert_patterns(backgrounds.hu[i], backgrounds.lung[i], rng, pixel_mm=float(backgrounds.pixel_mm[i]),
                            source=source, axis_mm=(3.0, 70.0))
        hus.append(r.image)
        labs.append(r.labels)
    return SegSet(np.stack(hus), backgrounds.lung[idx], np.stack(labs), backgrounds.pixel_mm[idx],
                  backgrounds.group[idx])


def real_background_segset(path: str | Path, cfg: UNetConfig, keep: tuple[float, float] = (0.0, 1.0)) -> SegSet:
    """Lung slices of a real scan as healthy backgrounds (all lung labelled normal), a z range ``keep`` (fractions
    of the lung slices) so that train and test use different parts."""
    from .anatomy import segment_lungs
    from .io import load_ct

    scan = load_ct(path)
    lung = segment_lungs(scan).mask
    ks = [k for k in range(scan.shape[0]) if lung[k].sum() > 0.03 * lung[k].size]
    k = np.arange(len(ks)) / max(1, len(ks))
    ks = [ks[i] for i in np.flatnonzero((k >= keep[0]) & (k < keep[1]))]
    ss, _ = prepare_volume(scan.hu, lung, float(scan.spacing[1]), cfg, slices=ks, group=f"real:{Path(path).name}")
    return ss


# --------------------------------------------------------------------------------------------
# users' label maps
# --------------------------------------------------------------------------------------------
def _map_name(name: str, name_map: Mapping[str, int]) -> int | None:
    for pat, v in name_map.items():
        if re.search(pat, name.strip(), flags=re.IGNORECASE):
            return int(v)
    return None


def read_label_map(path: str | Path, reference: CTScan, name_map: Mapping[str, int] | None = None) -> np.ndarray:
    """Read an annotation as sscild classes (0..3) on the reference scan's grid (z, y, x).

    NIfTI/MHA/NRRD label maps are taken as 0..3 already (values outside that fail). 3D Slicer ``.seg.nrrd`` files:
    each segment's name is mapped to a class through ``name_map`` (regular expressions -> class; default
    :data:`DEFAULT_NAME_MAP`); a name that maps to nothing fails with the list of names found.
    """
    import SimpleITK as sitk

    path = Path(path)
    if not path.exists():
        raise LabelMapError(f"label map {path} does not exist")
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise LabelMapError(f"cannot read label map {path}: {str(err).strip().splitlines()[-1]}") from None
    arr = sitk.GetArrayFromImage(sitk.DICOMOrient(img, "LPS"))   # (z, y, x[, layer]), z toward the head
    if tuple(arr.shape[:3]) != tuple(reference.shape):
        raise LabelMapError(f"label map {path} has grid {arr.shape[:3]} but the image has {reference.shape}; "
                            "annotations must be on the image's grid")
    if path.name.endswith(".seg.nrrd"):
        keys = {k: img.GetMetaData(k) for k in img.GetMetaDataKeys()}
        names = {}
        for k, v in keys.items():
            m = re.match(r"Segment(\d+)_Name$", k)
            if m:
                names[int(m.group(1))] = v
        if not names:
            raise LabelMapError(f"{path}: no Segment*_Name entries; is it a 3D Slicer segmentation?")
        name_map = dict(name_map or DEFAULT_NAME_MAP)
        unknown = [n for n in names.values() if _map_name(n, name_map) is None]
        if unknown:
            raise LabelMapError(f"{path}: segment name(s) {unknown} map to no class; names found: "
                                f"{sorted(names.values())}. Add them to the name map (regex -> 1 normal, 2 GG, 3 RET)")
        out = np.zeros(reference.shape, np.uint8)
        for i, n in names.items():
            val = int(keys.get(f"Segment{i}_LabelValue", i + 1))
            layer = int(keys.get(f"Segment{i}_Layer", 0))
            src = arr[..., layer] if arr.ndim == 4 else arr
            cls = _map_name(n, name_map)
            out[(src == val) & (cls > out)] = cls   # higher class wins where segments overlap
        return out
    arr = np.asarray(arr)
    bad = np.setdiff1d(np.unique(arr), [0, 1, 2, 3])
    if bad.size:
        raise LabelMapError(f"{path}: label values {bad.tolist()[:10]} are not sscild classes (0 background, "
                            "1 normal, 2 GG, 3 RET); remap them or use a .seg.nrrd with segment names")
    return arr.astype(np.uint8)


def pairs_segset(csv: str | Path, cfg: UNetConfig, name_map: Mapping[str, int] | None = None) -> SegSet:
    """Users' annotations: a CSV with ``image``, ``labels`` (paths, relative to the CSV) and ``patient_id``."""
    import pandas as pd

    from .anatomy import segment_lungs
    from .io import load_ct

    csv = Path(csv)
    df = pd.read_csv(csv)
    if not {"image", "labels"} <= set(df.columns):
        raise ConfigError(f"{csv}: needs columns image, labels (and patient_id); found {list(df.columns)}")
    sets = []
    for _, r in df.iterrows():
        ip, lp = (Path(str(r[c])) for c in ("image", "labels"))
        ip, lp = (p if p.is_absolute() else csv.parent / p for p in (ip, lp))
        scan = load_ct(ip)
        lab = read_label_map(lp, scan, name_map)
        lung = (lab > 0) | segment_lungs(scan).mask
        ks = [k for k in range(scan.shape[0]) if lung[k].sum() > 50]
        ss, _ = prepare_volume(scan.hu, lung, float(scan.spacing[1]), cfg, labels=lab, slices=ks,
                               group=str(r.get("patient_id", ip.name)))
        sets.append(ss)
    return SegSet.concat(sets)


# --------------------------------------------------------------------------------------------
# training and inference
# --------------------------------------------------------------------------------------------
@dataclass
class TrainLog:
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    slices_per_s: float = 0.0


def _inputs(hu: np.ndarray, lung: np.ndarray, cfg: UNetConfig) -> np.ndarray:
    x0 = (np.clip(hu, cfg.hu_min, cfg.hu_max) - cfg.hu_min) / (cfg.hu_max - cfg.hu_min)
    return np.stack([x0.astype(np.float32), lung.astype(np.float32)], 1)


def train_unet(data: SegSet, *, cfg: UNetConfig = UNetConfig(), steps: int = 500, batch_size: int = 8,
               lr: float = 2e-3, seed: int = 0, device: str = "cpu", model=None, augment: bool = True,
               quiet: bool = True, lesion_weighted: bool = True):
    """Train the U-Net (Dice + CE); slices with lesions are drawn as often as healthy ones when
    ``lesion_weighted``. Returns ``(model, TrainLog)``."""
    import torch
    from monai.losses import DiceCELoss

    from .util import progress

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = model if model is not None else build_unet(cfg)
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    x_all = torch.from_numpy(_inputs(data.hu, data.lung, cfg))
    y_all = torch.from_numpy(data.labels.astype(np.int64))[:, None]
    has = np.array([(data.labels[i] >= 2).any() for i in range(len(data))])
    p = np.where(has, 0.5 / max(has.sum(), 1), 0.5 / max((~has).sum(), 1)) if lesion_weighted and has.any() \
        and (~has).any() else np.full(len(data), 1.0 / len(data))
    p = p / p.sum()
    log = TrainLog()
    t0 = time.perf_counter()
    for _ in progress(range(steps), "train U-Net", quiet=quiet):
        idx = rng.choice(len(data), size=batch_size, p=p)
        xb, yb = x_all[idx].to(device), y_all[idx].to(device)
        if augment:
            k = int(rng.integers(4))
            if rng.random() < 0.5:
                xb, yb = xb.flip(-1), yb.flip(-1)
            xb, yb = torch.rot90(xb, k, (-2, -1)), torch.rot90(yb, k, (-2, -1))
        loss = loss_fn(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        log.losses.append(float(loss.item()))
    log.seconds = time.perf_counter() - t0
    log.slices_per_s = steps * batch_size / max(log.seconds, 1e-9)
    model.eval()
    return model, log


def predict_prepared(model, data: SegSet, cfg: UNetConfig, batch_size: int = 16, device: str = "cpu"
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
                    device: str = "cpu", quiet: bool = True) -> np.ndarray:
    """Lesion labels (z, y, x) uint8 on the scan's grid: 0 outside the lung, 1 normal, 2 GG, 3 RET.

    Slices go through the network in batches on the scan's lung box; the class probabilities are resampled back to
    the box (bilinear) before the argmax, so the labels follow the lung mask at full resolution.
    """
    import torch
    import torch.nn.functional as F

    from .scoring.snet import crop_resample
    from .util import progress

    lung = np.asarray(lung, bool)
    if not lung.any():
        raise NoLungsError("no lung to segment lesions in")
    crop = scan_crop(lung, cfg.margin)
    ks = [k for k in range(scan.shape[0]) if lung[k].any()]
    out = np.zeros(scan.shape, np.uint8)
    H, W = scan.shape[1:]
    for b in progress(range(0, len(ks), batch_size), "lesions", quiet=quiet):
        kk = ks[b:b + batch_size]
        hu, lu, _, _ = crop_resample(scan.hu[kk].astype(np.float32), lung[kk], cfg.size, crop=crop)
        with torch.inference_mode():
            logits = model(torch.from_numpy(_inputs(hu, lu, cfg)).to(device)).float()
            prob = F.interpolate(logits[:, 1:], size=(crop.side, crop.side), mode="bilinear",
                                 align_corners=False).argmax(1).cpu().numpy().astype(np.uint8) + 1
        # paste the box back into the slice grid
        ys, xs = max(0, crop.y0), max(0, crop.x0)
        ye, xe = min(H, crop.y0 + crop.side), min(W, crop.x0 + crop.side)
        out[kk, ys:ye, xs:xe] = prob[:, ys - crop.y0:ye - crop.y0, xs - crop.x0:xe - crop.x0]
    return np.where(lung, out, 0).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# measurements
# --------------------------------------------------------------------------------------------
def _amounts(lab: np.ndarray, voxel_ml: float) -> dict[str, float | None]:
    lung = int((lab > 0).sum())
    gg, ret = int((lab == 2).sum()), int((lab == 3).sum())
    pct = (lambda n: 100.0 * n / lung) if lung else (lambda n: None)
    return {"lung_ml": lung * voxel_ml, "GG_ml": gg * voxel_ml, "RET_ml": ret * voxel_ml,
            "lesion_ml": (gg + ret) * voxel_ml, "GG_pct": pct(gg), "RET_pct": pct(ret),
            "involvement_pct": pct(gg + ret)}


def summarise(labels: np.ndarray, lung_labels: np.ndarray, scan: CTScan,
              level_slices: Mapping[str, int | None] | None = None) -> dict[str, Any]:
    """``lesions.json``: per lung (right/left), per zone (upper/middle/lower thirds of the lung height), whole
    lung; and per Goh level the area ratios TOT/GG/RET in % of the slice's lung area."""
    v = scan.voxel_volume_ml
    res: dict[str, Any] = {"whole": _amounts(labels, v),
                           "right": _amounts(np.where(lung_labels == 1, labels, 0), v),
                           "left": _amounts(np.where(lung_labels == 2, labels, 0), v)}
    zs = np.flatnonzero((labels > 0).reshape(len(labels), -1).any(1))
    zones = {}
    if zs.size:
        edges = np.linspace(zs.min(), zs.max() + 1, 4)
        # z increases toward the head (LPS, index 0 = lowest): the top third is the upper zone
        for name, (a, b) in zip(("lower", "middle", "upper"), zip(edges[:-1], edges[1:])):
            sub = np.zeros_like(labels)
            sub[int(a):int(b)] = labels[int(a):int(b)]
            zones[name] = _amounts(sub, v)
    res["zones"] = zones
    if level_slices:
        lv = {}
        for n, k in level_slices.items():
            if k is None:
                continue
            a = _amounts(labels[k], 1.0)
            lv[n] = {"TOT": a["involvement_pct"], "GG": a["GG_pct"], "RET": a["RET_pct"], "slice": int(k)}
        res["levels"] = lv
    return res


# --------------------------------------------------------------------------------------------
# weights and config training (sscild train lesions)
# --------------------------------------------------------------------------------------------
def save_unet(model, cfg: UNetConfig, directory: str | Path, card: dict) -> Path:
    from .scoring.weights import save_weights

    return save_weights(model, directory, {"name": "lesion U-Net", "config": asdict(cfg), **card})


def load_unet(directory: str | Path | None = None, device: str = "cpu"):
    from .scoring.weights import load_into, read_card

    directory = Path(directory) if directory is not None else DEFAULT_DIR
    card = read_card(directory, "lesion U-Net", "sscild train lesions --config ...")
    c = dict(card.get("config", {}))
    if "channels" in c:
        c["channels"] = tuple(c["channels"])
    cfg = UNetConfig(**c)
    model = load_into(build_unet(cfg), directory, "lesion U-Net")
    return model.to(device).eval(), cfg, card


def dice_table(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Dice of GG, RET, total lesion (GG + RET) and normal lung; NaN where both are empty."""
    from .evaluate import dice

    return {"GG": dice(pred == 2, truth == 2), "RET": dice(pred == 3, truth == 3),
            "lesion": dice(pred >= 2, truth >= 2), "normal": dice(pred == 1, truth == 1)}


def train_from_config(config: str | Path, *, device: str = "cpu", quiet: bool = False) -> Path:
    """Train the lesion U-Net as a YAML config says (see ``configs/lesions_phantoms.yaml``): data from phantoms
    {n, seed0, every}, ``pairs_csv`` (image + label map pairs, ``name_map`` for .seg.nrrd names), real
    backgrounds with inserted patterns; ``folds`` > 1 runs patient-grouped cross-validation first."""
    import yaml

    from .scoring.snet import pattern_source_from_spec
    from .util import write_json

    config = Path(config)
    c = yaml.safe_load(config.read_text()) or {}
    base = config.parent.parent if config.parent.name == "configs" else config.parent
    rel = (lambda p: Path(p) if Path(p).is_absolute() else base / p)
    out = rel(c.get("out", "lesions_out"))
    cc = dict(c.get("config", {}))
    if "channels" in cc:
        cc["channels"] = tuple(cc["channels"])
    cfg = UNetConfig(**cc)
    tr = {"steps": 1000, "batch_size": 8, "lr": 2e-3, "seed": 0, **c.get("train", {})}
    t0 = time.perf_counter()
    d = c.get("data", {})
    sets = []
    if d.get("phantoms"):
        ph = d["phantoms"]
        sets.append(phantom_segset(range(int(ph["seed0"]), int(ph["seed0"]) + int(ph["n"])), cfg,
                                   size=ph.get("size", "small"), every=int(ph.get("every", 2)), quiet=quiet))
    if d.get("pairs_csv"):
        sets.append(pairs_segset(rel(d["pairs_csv"]), cfg, d.get("name_map")))
    bgs = [s for s in sets]
    for rb in d.get("real_backgrounds", []) or []:
        if rel(rb["path"]).exists():
            bgs.append(real_background_segset(rel(rb["path"]), cfg, tuple(rb.get("keep", (0.0, 1.0)))))
    n_syn = int((c.get("synthetic") or {}).get("n", 0))
    if n_syn:
        source = pattern_source_from_spec(c.get("synthetic"), base)
        sets.append(synthetic_segset(SegSet.concat(bgs), n_syn, np.random.default_rng(int(tr["seed"])), source))
    data = SegSet.concat(sets)
    cv = []
    folds = int(c.get("folds", 0))
    if folds > 1:
        from sklearn.model_selection import GroupKFold

        for f, (a, b) in enumerate(GroupKFold(folds).split(np.arange(len(data)), groups=data.group)):
            m, _ = train_unet(data.subset(a), cfg=cfg, steps=int(tr["steps"]), batch_size=int(tr["batch_size"]),
                              lr=float(tr["lr"]), seed=int(tr["seed"]) + f, device=device, quiet=quiet)
            test = data.subset(b)
            cv.append({"fold": f, "patients": sorted(set(test.group)),
                       **dice_table(predict_prepared(m, test, cfg), test.labels)})
        write_json(out / "cv.json", cv)
    init = None
    if c.get("init"):                 # continue from earlier weights (same config), e.g. a second, slower phase
        from .scoring.weights import load_into

        init = load_into(build_unet(cfg), rel(c["init"]), "lesion U-Net")
    model, log = train_unet(data, cfg=cfg, steps=int(tr["steps"]), batch_size=int(tr["batch_size"]),
                            lr=float(tr["lr"]), seed=int(tr["seed"]), device=device, quiet=quiet, model=init)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "metrics.jsonl", "w") as fh:
        for i in range(0, len(log.losses), 50):
            fh.write(json.dumps({"step": i + 50, "loss": float(np.mean(log.losses[i:i + 50]))}) + "\n")
    metrics = {}
    v = c.get("validation", {}).get("phantoms")
    if v:
        val = phantom_segset(range(int(v["seed0"]), int(v["seed0"]) + int(v["n"])), cfg, every=int(v.get("every", 3)))
        metrics = dice_table(predict_prepared(model, val, cfg), val.labels)
    card = {"trained_on": c.get("description", "see config"), "config_file": config.name,
            "train_slices": len(data), "steps": int(tr["steps"]), "batch_size": int(tr["batch_size"]),
            "train_slices_per_s": log.slices_per_s, "validation_dice": metrics,
            "cv": cv or None, "training_seconds": round(time.perf_counter() - t0, 1),
            "initialised_from": str(c["init"]) if c.get("init") else None}
    save_unet(model, cfg, out, card)
    return out
