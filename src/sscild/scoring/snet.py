"""S-Net: a 2D regression network that scores a Goh level slice (TOT, GG, RET in % of lung area).

After Jia et al. (Sci Rep 2024), sized for a CPU:

- **Input.** The level slice cropped to the lungs (square box around the lung mask with a margin) and resampled
  to ``size`` x ``size`` (default 96; 512 supported). Two channels: HU mapped from ``hu_min..hu_max`` to 0..1
  (air = 0, so zero padding is air), the lung mask (the score is a share of the lung area, so the network is
  told where the lung is) and, with ``texture`` (default), the local standard deviation of HU inside the lung
  computed from the slice at its *own* resolution (:func:`local_std`). Reticulation is a network of lines ~1-2 mm
  thick; resampling a 0.7 mm slice to a ~3 mm grid averages them into a haze that looks like ground glass, while
  on a 2.8 mm scan the same pattern survives. The variance channel keeps that texture energy whatever the scan's
  pixel size (it is the variance of the native pixels in a ~3-grid-pixel window: within-pixel plus
  between-pixel variance), so the GG/RET split no longer depends on the scanner's resolution.
- **Backbones** from MONAI: ``resnet18`` (default, ``width`` scales the channels), ``resnet10``, ``densenet121``,
  ``efficientnet-b0``.
- **Outputs** three numbers trained with MSE against score / 100; at inference they are clamped to 0..100 and made
  consistent: ``max(GG, RET) <= TOT <= min(100, GG + RET)``. Training ends with a per-pattern linear
  calibration fitted on the validation slices (:func:`fit_calibration`, stored in the card's config): with
  balanced sampling the network regresses towards the balanced set's higher mean and over-calls low scores
  (the shipped net: RET +3.5, TOT +2 points on healthy and mild slices before calibration).
- **Training** Adam (lr 1e-4 .. 1e-3, weight decay 1e-4), augmentation rotation +-30 deg, scale 95-105 %,
  shift +-10 px at 512 (scaled to ``size``), balanced sampling over 5 % TOT bins (:mod:`.sampling`), synthetic
  images from :mod:`.synthesis`.
- **Pretraining** without labels (no ImageNet weights can be downloaded here): :func:`pretrain` fits the same
  network to density proxies computed from each image itself (share of lung pixels in the ground-glass band and
  in the dense band, and mean lung HU), which any unlabelled slice provides; ``init`` loads a user's checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from scipy import ndimage as ndi

from ..errors import ConfigError, NoLungsError
from .synthesis import NORMAL, PatternSource, insert_patterns, scores_from_labels

PATTERNS = ("TOT", "GG", "RET")
LEVELS = ("L1", "L2", "L3", "L4", "L5")
DEFAULT_DIR = Path(__file__).resolve().parents[1] / "models" / "snet"
BACKBONES = ("resnet18", "resnet10", "densenet121", "efficientnet-b0")


@dataclass(frozen=True)
class SNetConfig:
    """Network and preprocessing of an S-Net; stored in its card so weights and preprocessing match."""

    backbone: str = "resnet18"
    size: int = 96
    width: float = 0.5
    hu_min: float = -1000.0
    hu_max: float = 200.0
    margin: float = 0.06
    texture: bool = True
    denoise_mm: float = 0.7
    calibration: tuple | None = None     # (a_TOT, b_TOT, a_GG, b_GG, a_RET, b_RET): score = a * output + b

    def __post_init__(self):
        if self.calibration is not None:
            object.__setattr__(self, "calibration", tuple(float(v) for v in self.calibration))
            if len(self.calibration) != 6:
                raise ConfigError("S-Net calibration needs 6 numbers: a, b for TOT, GG and RET")

    @property
    def in_channels(self) -> int:
        return 3 if self.texture else 2


# --------------------------------------------------------------------------------------------
# preprocessing
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Crop:
    """Square lung box of a slice: rows/cols ``y0:y0+side, x0:x0+side`` (may extend past the image)."""

    y0: int
    x0: int
    side: int


def lung_crop(lung: np.ndarray, margin: float = 0.06) -> Crop:
    ys, xs = np.nonzero(lung)
    if ys.size == 0:
        raise NoLungsError("the slice has no lung pixels to score; check the lung mask or the level position")
    h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    side = int(np.ceil(max(h, w) * (1 + 2 * margin))) + 2
    cy, cx = (ys.max() + ys.min()) / 2, (xs.max() + xs.min()) / 2
    return Crop(int(round(cy - side / 2)), int(round(cx - side / 2)), side)


def _cut(a: np.ndarray, c: Crop, fill: float) -> np.ndarray:
    out = np.full(a.shape[:-2] + (c.side, c.side), fill, dtype=a.dtype)
    H, W = a.shape[-2:]
    ys, xs = max(0, c.y0), max(0, c.x0)
    ye, xe = min(H, c.y0 + c.side), min(W, c.x0 + c.side)
    if ye > ys and xe > xs:
        out[..., ys - c.y0:ye - c.y0, xs - c.x0:xe - c.x0] = a[..., ys:ye, xs:xe]
    return out


def crop_resample(images: np.ndarray, lungs: np.ndarray, size: int, crop: Crop | None = None,
                  labels: np.ndarray | None = None, margin: float = 0.06):
    """Crop (N, H, W) slices to one lung box (from ``crop`` or the first mask) and resample to ``size``.

    Returns HU (N, size, size) float32, masks (N, size, size) bool, labels (or None) and the scale factor
    ``side / size`` (output pixel = factor x input pixel).
    """
    import torch
    import torch.nn.functional as F

    images = np.asarray(images, np.float32)
    lungs = np.asarray(lungs, bool)
    crop = crop or lung_crop(lungs.reshape(-1, *lungs.shape[-2:]).any(0), margin)
    im = torch.from_numpy(_cut(images, crop, -1000.0))[:, None]
    lm = torch.from_numpy(_cut(lungs.astype(np.float32), crop, 0.0))[:, None]
    with torch.no_grad():
        hu = F.interpolate(im, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[:, 0]
        lu = F.interpolate(lm, size=(size, size), mode="nearest")[:, 0] > 0.5
        lab = None
        if labels is not None:
            lt = torch.from_numpy(_cut(np.asarray(labels, np.float32), crop, 0.0))[:, None]
            lab = F.interpolate(lt, size=(size, size), mode="nearest")[:, 0].numpy().astype(np.uint8)
    return hu.numpy(), lu.numpy(), lab, crop.side / size


def local_std(images: np.ndarray, lungs: np.ndarray, size: int, crop: Crop, hu_min: float = -1000.0,
              hu_max: float = 200.0, pixel_mm: float | None = None, denoise_mm: float = 0.7) -> np.ndarray:
    """Local standard deviation of HU inside the lung, (N, size, size) float32, computed from the slices at their
    own resolution: HU clipped to ``hu_min..hu_max`` are first smoothed inside the lung with a Gaussian of
    ``denoise_mm`` (needs ``pixel_mm``; it takes pixel noise out, which depends on the scanner's kernel and dose,
    and keeps lines of ~1 mm and more); then the lung-weighted first and second moments of the native pixels are
    area-averaged onto the ``size`` grid of ``crop`` and smoothed there (Gaussian, sigma one grid pixel); the
    variance is second moment minus squared mean. By the law of total variance this is the variance of the native
    pixels in the window, whatever the native pixel size. 0 where there is no lung. ``lungs`` is one mask per
    image, or a single mask (1, H, W) shared by all of them (the occluded copies of a slice)."""
    import torch
    import torch.nn.functional as F

    mc = _cut(np.asarray(lungs, bool), crop, False).astype(np.float32)   # (1 or N, side, side), 0/1
    x = _cut(np.asarray(images, np.float32), crop, hu_min)
    np.clip(x, hu_min, hu_max, out=x)
    x -= hu_min
    x *= mc / 1000.0                               # lung pixels only, scaled to keep float32 moments exact
    sig = denoise_mm / pixel_mm if (pixel_mm and denoise_mm > 0) else 0.0
    if sig > 0.3:                                  # normalised convolution inside the lung (scipy: fast here)
        r = int(np.ceil(3 * sig))
        kw = dict(sigma=(0, sig, sig), radius=(0, r, r), mode="constant")
        sw = ndi.gaussian_filter(mc, **kw)
        x = ndi.gaussian_filter(x, **kw)
        x *= mc / np.maximum(sw, 1e-6)
    g = np.exp(-0.5 * np.arange(-2, 3) ** 2).astype(np.float32)
    k = torch.from_numpy(np.outer(g, g) / np.outer(g, g).sum())[None, None]
    with torch.no_grad():
        xt = torch.from_numpy(x)[:, None]
        t = F.interpolate(torch.cat([xt, xt * xt], 1), size=(size, size), mode="bilinear", antialias=True,
                          align_corners=False)
        w = F.interpolate(torch.from_numpy(mc)[:, None], size=(size, size), mode="bilinear", antialias=True,
                          align_corners=False)
        n = t.shape[0]
        t = F.conv2d(t.reshape(2 * n, 1, size, size), k, padding=2).reshape(n, 2, size, size)
        w = F.conv2d(w, k, padding=2)[:, 0]
        ok = w > 0.05
        mean = t[:, 0] / w.clamp(min=1e-6)
        var = (t[:, 1] / w.clamp(min=1e-6) - mean ** 2).clamp(min=0.0)
        sd = torch.where(ok, var.sqrt() * 1000.0, torch.zeros_like(var))
    return sd.numpy().astype(np.float32)


TEXTURE_SCALE_HU = 300.0


def to_input(hu: np.ndarray, lung: np.ndarray, cfg: SNetConfig, tex: np.ndarray | None = None) -> np.ndarray:
    """(N, S, S) HU + masks (+ local SD in HU) -> (N, C, S, S) float32 network input: HU 0..1 with air 0, lung
    mask and, with ``cfg.texture``, the local SD / 300 HU (0..1) inside the lung."""
    x0 = (np.clip(hu, cfg.hu_min, cfg.hu_max) - cfg.hu_min) / (cfg.hu_max - cfg.hu_min)
    ch = [x0.astype(np.float32), lung.astype(np.float32)]
    if cfg.texture:
        if tex is None:
            raise ConfigError("this S-Net takes a texture channel: prepare the slices with prepare_slices")
        ch.append((np.clip(tex / TEXTURE_SCALE_HU, 0.0, 1.0) * lung).astype(np.float32))
    return np.stack(ch, axis=1)


def prepare_grid(images: np.ndarray, lungs: np.ndarray, cfg: SNetConfig, crop: Crop | None = None,
                 labels: np.ndarray | None = None, pixel_mm: float | None = None):
    """Crop + resample slices sharing one lung box; returns ``(hu, lung, labels, factor, tex)`` with ``tex``
    the native-resolution local SD (:func:`local_std`) on the same grid (None without ``cfg.texture``).
    ``pixel_mm`` (the slices' in-plane pixel size) is needed with ``cfg.texture``. ``lungs`` may be one mask
    (1, H, W) for all images: it is then resampled once and ``lung`` has length 1."""
    if cfg.texture and not pixel_mm:
        raise ConfigError("this S-Net's texture channel needs the slice's pixel size (pixel_mm)")
    lungs = np.asarray(lungs, bool)
    crop = crop or lung_crop(lungs.reshape(-1, *lungs.shape[-2:]).any(0), cfg.margin)
    hu, lu, lab, f = crop_resample(images, lungs, cfg.size, crop=crop, labels=labels, margin=cfg.margin)
    tex = local_std(images, lungs, cfg.size, crop, cfg.hu_min, cfg.hu_max, pixel_mm, cfg.denoise_mm) \
        if cfg.texture else None
    return hu, lu, lab, f, tex


def fit_calibration(pred: np.ndarray, truth: np.ndarray) -> tuple:
    """Per pattern the least-squares line ``truth = a * pred + b`` (validation slices; at least 20); a network
    trained with balanced sampling regresses towards the balanced set's mean (over-calling low scores), and
    this takes that bias out. Returns ``(a_TOT, b_TOT, a_GG, b_GG, a_RET, b_RET)``."""
    pred, truth = np.asarray(pred, float), np.asarray(truth, float)
    if len(pred) < 20:
        raise ConfigError(f"calibration needs at least 20 validation slices; got {len(pred)}")
    out: list[float] = []
    for j in range(3):
        a, b = np.polyfit(pred[:, j], truth[:, j], 1)
        out += [float(a), float(b)]
    return tuple(out)


def calibrated(scores: np.ndarray, cfg: SNetConfig) -> np.ndarray:
    """Consistent scores with the config's calibration applied (then made consistent again)."""
    s = consistent(scores)
    if cfg.calibration is None:
        return s
    c = np.asarray(cfg.calibration, float).reshape(3, 2)
    return consistent(s * c[:, 0] + c[:, 1])


def consistent(scores: np.ndarray) -> np.ndarray:
    """Clamp (N, 3) TOT, GG, RET to 0..100 and make ``max(GG, RET) <= TOT <= min(100, GG + RET)``.

    >>> consistent(np.array([[5.0, 30.0, 10.0], [90.0, 20.0, 10.0]])).tolist()
    [[30.0, 30.0, 10.0], [30.0, 20.0, 10.0]]
    """
    s = np.clip(np.asarray(scores, np.float64), 0.0, 100.0)
    gg, ret = s[:, 1], s[:, 2]
    tot = np.clip(s[:, 0], np.maximum(gg, ret), np.minimum(100.0, gg + ret))
    return np.stack([tot, gg, ret], axis=1)


# --------------------------------------------------------------------------------------------
# network
# --------------------------------------------------------------------------------------------
def build_snet(cfg: SNetConfig = SNetConfig()):
    """A MONAI 2D backbone with ``cfg.in_channels`` input channels (HU, lung mask, texture) and 3 outputs."""
    from monai.networks import nets

    if cfg.backbone in ("resnet18", "resnet10"):
        layers = [2, 2, 2, 2] if cfg.backbone == "resnet18" else [1, 1, 1, 1]
        return nets.ResNet("basic", layers, [64, 128, 256, 512], spatial_dims=2, n_input_channels=cfg.in_channels,
                           num_classes=3, widen_factor=cfg.width, conv1_t_size=7, conv1_t_stride=2)
    if cfg.backbone == "densenet121":
        return nets.DenseNet121(spatial_dims=2, in_channels=cfg.in_channels, out_channels=3)
    if cfg.backbone == "efficientnet-b0":
        return nets.EfficientNetBN("efficientnet-b0", pretrained=False, spatial_dims=2, in_channels=cfg.in_channels,
                                   num_classes=3)
    raise ConfigError(f"unknown S-Net backbone {cfg.backbone!r}; choose one of {', '.join(BACKBONES)}")


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


# --------------------------------------------------------------------------------------------
# datasets
# --------------------------------------------------------------------------------------------
@dataclass
class SliceSet:
    """Prepared slices: ``hu`` (N, S, S) float32 on the S-Net grid, ``lung`` bool, ``labels`` uint8 (0 outside,
    1 normal, 2 GG, 3 RET; all-normal for healthy backgrounds), ``scores`` (N, 3), ``pixel_mm`` (N,), ``group``
    (patient / scan id, for grouped splits), ``synthetic`` (N,) bool, ``tex`` (N, S, S) float32 local SD in HU
    computed at the scan's own resolution (:func:`local_std`)."""

    hu: np.ndarray
    lung: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    pixel_mm: np.ndarray
    group: np.ndarray
    synthetic: np.ndarray
    tex: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)

    def subset(self, idx) -> "SliceSet":
        idx = np.asarray(idx)
        return SliceSet(*(getattr(self, f)[idx] for f in self.__dataclass_fields__))

    @staticmethod
    def concat(sets: Sequence["SliceSet"]) -> "SliceSet":
        sets = [s for s in sets if len(s)]
        if not sets:
            raise ConfigError("no slices to train or test on")
        return SliceSet(*(np.concatenate([getattr(s, f) for s in sets]) for f in SliceSet.__dataclass_fields__))

    def inputs(self, cfg: SNetConfig) -> np.ndarray:
        return to_input(self.hu, self.lung, cfg, self.tex)

    def save(self, path: str | Path) -> None:
        from ..util import atomic_path

        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, **{f: getattr(self, f) for f in self.__dataclass_fields__})

    @staticmethod
    def load(path: str | Path) -> "SliceSet":
        d = np.load(path, allow_pickle=False)
        missing = [f for f in SliceSet.__dataclass_fields__ if f not in d]
        if missing:
            raise ConfigError(f"{path}: prepared slices without {missing} (made by an older sscild); delete it to "
                              "rebuild")
        return SliceSet(*(d[f] for f in SliceSet.__dataclass_fields__))


@dataclass
class Backgrounds:
    """Healthy slices (TOT = 0) kept at their own resolution, cropped to their lung box, for synthesis: inserting
    patterns before resampling keeps the texture as a scanner of that resolution would show it. ``weight``: how
    often a slice is drawn relative to the others (e.g. to give a few real slices the weight of many phantoms)."""

    hu: list = field(default_factory=list)
    lung: list = field(default_factory=list)
    pixel_mm: list = field(default_factory=list)
    group: list = field(default_factory=list)
    weight: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.hu)

    def add(self, hu: np.ndarray, lung: np.ndarray, pixel_mm: float, group: str, margin: float = 0.06,
            weight: float = 1.0) -> None:
        lung = np.asarray(lung, bool)
        if not lung.any():
            return
        c = lung_crop(lung, margin)
        self.hu.append(_cut(np.asarray(hu, np.float32), c, -1000.0))
        self.lung.append(_cut(lung, c, False))
        self.pixel_mm.append(float(pixel_mm))
        self.group.append(str(group))
        self.weight.append(float(weight))

    def extend(self, other: "Backgrounds") -> "Backgrounds":
        for f in ("hu", "lung", "pixel_mm", "group", "weight"):
            getattr(self, f).extend(getattr(other, f))
        return self


def add_noise(hu: np.ndarray, rng: np.random.Generator, noise_hu: tuple[float, float]) -> np.ndarray:
    """Scanner-like noise for augmentation: Gaussian noise of SD drawn from ``noise_hu`` (HU), spatially
    correlated over 0-1 pixel (like a smooth to sharp reconstruction kernel), added to a native slice."""
    sd = float(rng.uniform(*noise_hu))
    if sd <= 0:
        return np.asarray(hu, np.float32)
    n = rng.standard_normal(hu.shape).astype(np.float32)
    c = float(rng.uniform(0.0, 1.0))
    if c > 0.2:
        n = ndi.gaussian_filter(n, c)
    return (np.asarray(hu, np.float32) + sd * n / (n.std() + 1e-6)).astype(np.float32)


def prepare_slices(images: np.ndarray, lungs: np.ndarray, pixel_mm: float, cfg: SNetConfig, *,
                   labels: np.ndarray | None = None, scores: np.ndarray | None = None, group: str = "",
                   synthetic: bool = False) -> SliceSet:
    """Crop and resample each slice to its own lung box; scores default to those of the (resampled) labels."""
    hus, lus, labs, mms, texs = [], [], [], [], []
    for i in range(len(images)):
        lab_i = None if labels is None else labels[i:i + 1]
        hu, lu, lab, f, tex = prepare_grid(images[i:i + 1], lungs[i:i + 1], cfg, labels=lab_i, pixel_mm=pixel_mm)
        lab = np.where(lu, NORMAL, 0).astype(np.uint8) if lab is None else np.where(lu, lab, 0).astype(np.uint8)
        hus.append(hu[0]); lus.append(lu[0]); labs.append(lab[0]); mms.append(pixel_mm * f)
        texs.append(tex[0] if tex is not None else np.zeros_like(hu[0]))
    labs_a = np.stack(labs)
    sc = np.asarray(scores, np.float32) if scores is not None else \
        np.array([[scores_from_labels(l_)[p] for p in PATTERNS] for l_ in labs_a], np.float32)
    n = len(images)
    return SliceSet(np.stack(hus).astype(np.float32), np.stack(lus), labs_a, sc, np.asarray(mms, np.float32),
                    np.array([group] * n), np.full(n, synthetic), np.stack(texs).astype(np.float32))


def phantom_slices(seeds: Sequence[int], cfg: SNetConfig, *, size: str = "small", neighbours: int = 1,
                   extent: Callable[[int], float] | None = None, quiet: bool = True,
                   backgrounds: Backgrounds | None = None, noise_hu: tuple[float, float] | None = None
                   ) -> SliceSet:
    """The five level slices of phantoms (and ``neighbours`` slices on each side, each with its own exact score),
    ILD extent per seed from ``extent(seed)`` (default 0-70 %, every fourth phantom healthy). Healthy slices
    (TOT = 0) are also added, at the phantom's resolution, to ``backgrounds`` when given. ``noise_hu`` adds
    scanner-like noise (:func:`add_noise`, training augmentation) to the scored slices."""
    from ..phantom import make_phantom
    from ..util import progress

    extent = extent or (lambda s: 0.0 if s % 4 == 0 else float((s * 37) % 71))
    sets = []
    for s in progress(list(seeds), "phantom slices", quiet=quiet):
        scan, truth = make_phantom(int(s), size=size, extent=extent(int(s)))
        ks = set()
        for z in truth.levels_z.values():
            k = scan.slice_at_z(z)
            if k is None:
                continue
            ks.update(j for j in range(k - neighbours, k + neighbours + 1) if 0 <= j < scan.shape[0])
        ks_l = sorted(j for j in ks if truth.lungs[j].any())
        if not ks_l:
            continue
        lab = np.where(truth.lungs[ks_l] > 0, truth.lesions[ks_l], 0)
        # exact scores at the scan's own resolution
        sc = np.array([[scores_from_labels(l_)[p] for p in PATTERNS] for l_ in lab], np.float32)
        img = scan.hu[ks_l].astype(np.float32)
        if noise_hu:
            nrng = np.random.default_rng(int(s) + 7919)
            img = np.stack([add_noise(im, nrng, noise_hu) for im in img])
        sets.append(prepare_slices(img, truth.lungs[ks_l] > 0, float(scan.spacing[1]), cfg, labels=lab,
                                   scores=sc, group=f"phantom{s}"))
        if backgrounds is not None:
            for j, k in enumerate(ks_l):
                if sc[j, 0] == 0:
                    backgrounds.add(scan.hu[k], truth.lungs[k] > 0, float(scan.spacing[1]), f"phantom{s}")
    return SliceSet.concat(sets)


def real_backgrounds(path: str | Path, *, keep: tuple[float, float] = (0.0, 1.0), min_lung_fraction: float = 0.08,
                     step: int = 1, weight: float = 1.0) -> Backgrounds:
    """Slices of a real scan taken as healthy lung background (TOT = 0) for synthesis, at the scan's resolution:
    every ``step``-th slice whose lungs (segmented) cover at least ``min_lung_fraction`` of the slice, and of those
    the share ``keep`` (e.g. ``(0, 0.6)``: the upper 60 %, to hold the rest out)."""
    from ..anatomy import segment_lungs
    from ..io import load_ct

    scan = load_ct(path)
    lungs = segment_lungs(scan).mask
    frac = lungs.reshape(lungs.shape[0], -1).mean(1)
    ks = [k for k in range(0, scan.shape[0], step) if frac[k] >= min_lung_fraction]
    if not ks:
        raise NoLungsError(f"{path}: no slice with enough lung to use as background")
    r = np.arange(len(ks)) / len(ks)
    bg = Backgrounds()
    for k, rk in zip(ks, r):
        if keep[0] <= rk < keep[1]:
            bg.add(scan.hu[k], lungs[k], float(scan.spacing[1]), f"real:{Path(path).name}", weight=weight)
    return bg


def synthesize(backgrounds: Backgrounds, n: int, rng: np.random.Generator, cfg: SNetConfig, *,
               source: PatternSource | None = None, quiet: bool = True,
               noise_hu: tuple[float, float] | None = None) -> SliceSet:
    """``n`` synthetic slices: GG and RET inserted (:func:`.synthesis.insert_patterns`) into healthy backgrounds
    drawn in proportion to their weights, at their own resolution, then prepared for the network; exact scores
    from the inserted areas (counted on the native pixels). ``noise_hu`` adds scanner-like noise afterwards
    (:func:`add_noise`, training augmentation)."""
    from ..util import progress

    if len(backgrounds) == 0:
        raise ConfigError("no healthy (TOT = 0) background slices to insert patterns into")
    w = np.asarray(backgrounds.weight, float)
    idx = rng.choice(len(backgrounds), size=int(n), p=w / w.sum())
    parts = []
    for i in progress(list(idx), "synthetic slices", quiet=quiet):
        mm = float(backgrounds.pixel_mm[i])
        r = insert_patterns(backgrounds.hu[i], backgrounds.lung[i], rng, pixel_mm=mm, source=source)
        sc = np.array([[r.scores[p] for p in PATTERNS]], np.float32)
        img = add_noise(r.image, rng, noise_hu) if noise_hu else r.image
        parts.append(prepare_slices(img[None], backgrounds.lung[i][None], mm, cfg, labels=r.labels[None],
                                    scores=sc, group=backgrounds.group[i], synthetic=True))
    return SliceSet.concat(parts)


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------
@dataclass
class TrainLog:
    losses: list[float] = field(default_factory=list)
    mean_predictor_loss: float = float("nan")
    seconds: float = 0.0
    slices_per_s: float = 0.0


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


def train_snet(data: SliceSet, *, cfg: SNetConfig = SNetConfig(), steps: int = 500, batch_size: int = 16,
               lr: float = 5e-4, weight_decay: float = 1e-4, balanced: bool = True, augment: bool = True,
               targets: np.ndarray | None = None, seed: int = 0, device: str = "cpu", model=None,
               quiet: bool = True, log_every: int = 0, log_fn: Callable[[dict], None] | None = None,
               start_step: int = 0, optimizer_state: dict | None = None,
               on_checkpoint: Callable[[int, Any, Any], None] | None = None, checkpoint_every: int = 0):
    """Train (or continue training) an S-Net on a prepared :class:`SliceSet`; returns ``(model, TrainLog)``.

    The learning rate warms up over 100 steps and then follows a cosine decay to 5 % of ``lr`` at ``steps``.
    ``targets`` replaces ``data.scores`` (used by :func:`pretrain`). To resume, pass ``start_step``, the model and
    ``optimizer_state``; ``on_checkpoint(step, model, optimizer)`` is called every ``checkpoint_every`` steps
    and at the end.
    """
    import math

    import torch

    from ..util import progress
    from .sampling import BalancedSampler

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    y_all = np.asarray(data.scores if targets is None else targets, np.float32)
    if len(y_all) == 0:
        raise ConfigError("no training slices")
    model = model if model is not None else build_snet(cfg)
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    if optimizer_state:
        opt.load_state_dict(optimizer_state)

    def lr_at(k: int) -> float:
        if k < 100:
            return lr * (k + 1) / 100
        return lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, (k - 100) / max(1, steps - 100)))))
    sampler = BalancedSampler(data.scores[:, 0], balanced=balanced, seed=seed + start_step)
    x_all = torch.from_numpy(data.inputs(cfg))
    y_t = torch.from_numpy(y_all / 100.0)
    log = TrainLog(mean_predictor_loss=float(((y_all / 100.0 - (y_all / 100.0).mean(0)) ** 2).mean()))
    t0 = time.perf_counter()
    todo = max(0, steps - start_step)
    for i, idx in enumerate(progress(sampler.batches(batch_size, todo), "train S-Net", total=todo, quiet=quiet)):
        step = start_step + i
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        xb = x_all[idx].to(device)
        if augment:
            xb = _augment(xb, rng, cfg.size)
        yb = y_t[idx].to(device)
        loss = torch.mean((model(xb) - yb) ** 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        log.losses.append(float(loss.item()))
        if log_fn and log_every and (step + 1) % log_every == 0:
            log_fn({"step": step + 1, "loss": float(np.mean(log.losses[-log_every:])),
                    "mean_predictor_loss": log.mean_predictor_loss, "lr": lr_at(step),
                    "elapsed_s": round(time.perf_counter() - t0, 1)})
        if on_checkpoint and checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < steps:
            on_checkpoint(step + 1, model, opt)
    log.seconds = time.perf_counter() - t0
    log.slices_per_s = todo * batch_size / max(log.seconds, 1e-9)
    if on_checkpoint:
        on_checkpoint(steps, model, opt)
    model.eval()
    return model, log


def pretrain(data: SliceSet, *, cfg: SNetConfig = SNetConfig(), steps: int = 300, batch_size: int = 16,
             lr: float = 5e-4, seed: int = 100, device: str = "cpu", quiet: bool = True):
    """Self-supervised pretraining on density proxies (:func:`density_proxies`); labels are not used."""
    targets = density_proxies(data.hu, data.lung)
    return train_snet(data, cfg=cfg, steps=steps, batch_size=batch_size, lr=lr, balanced=False, targets=targets,
                      seed=seed, device=device, quiet=quiet)


# --------------------------------------------------------------------------------------------
# inference
# --------------------------------------------------------------------------------------------
def predict_prepared(model, data: SliceSet, cfg: SNetConfig, batch_size: int = 64, device: str = "cpu",
                     ) -> np.ndarray:
    """Consistent scores (N, 3) of prepared slices."""
    import torch

    x = data.inputs(cfg)
    out = []
    model.eval()
    with torch.inference_mode():
        for b in range(0, len(x), batch_size):
            out.append(model(torch.from_numpy(x[b:b + batch_size]).to(device)).float().cpu().numpy() * 100.0)
    return calibrated(np.concatenate(out) if out else np.zeros((0, 3)), cfg)


class SNetScorer:
    """S-Net as a scorer for :mod:`sscild.explain`: ``scorer(images (N,H,W) HU, lungs (N,H,W)) -> (N, 3)``.

    All images of a call that share one lung mask (the occluded copies of a slice) share one crop. ``pixel_mm``
    is the in-plane pixel size of the slices it will score (needed by the texture channel).
    """

    def __init__(self, model, cfg: SNetConfig, device: str = "cpu", pixel_mm: float | None = None):
        if cfg.texture and not pixel_mm:
            raise ConfigError("SNetScorer: this S-Net's texture channel needs the slices' pixel size (pixel_mm)")
        self.model, self.cfg, self.device, self.pixel_mm = model, cfg, device, pixel_mm

    def __call__(self, images: np.ndarray, lungs: np.ndarray) -> np.ndarray:
        import torch

        images = np.asarray(images, np.float32)
        lungs = np.asarray(lungs, bool)
        same = all(np.array_equal(lungs[0], lungs[i]) for i in range(1, len(lungs))) if len(lungs) else True
        if same:
            hu, lu, _, _, tex = prepare_grid(images, lungs[:1], self.cfg, pixel_mm=self.pixel_mm)
            lu = np.broadcast_to(lu, hu.shape)
        else:
            parts = [prepare_grid(images[i:i + 1], lungs[i:i + 1], self.cfg, pixel_mm=self.pixel_mm)
                     for i in range(len(images))]
            hu = np.concatenate([p[0] for p in parts]); lu = np.concatenate([p[1] for p in parts])
            tex = np.concatenate([p[4] for p in parts]) if self.cfg.texture else None
        x = torch.from_numpy(to_input(hu, lu, self.cfg, tex)).to(self.device)
        with torch.inference_mode():
            raw = self.model(x).float().cpu().numpy() * 100.0
        return calibrated(raw, self.cfg)


def score_levels(model, cfg: SNetConfig, scan, lung_mask: np.ndarray, levels_z: dict[str, float | None],
                 device: str = "cpu") -> dict[str, Any]:
    """S-Net scores of the level slices of a scan: per level TOT/GG/RET (%) and the Goh extent (mean TOT over
    the levels scored, "extensive" when > 20 %)."""
    scorer = SNetScorer(model, cfg, device, pixel_mm=float(scan.spacing[1]))
    per: dict[str, Any] = {}
    for name in LEVELS:
        z = levels_z.get(name)
        k = scan.slice_at_z(z) if z is not None else None
        if k is None or not lung_mask[k].any():
            per[name] = {"TOT": None, "GG": None, "RET": None, "slice": k,
                         "note": "level not found in the scan" if k is None else "no lung on the level slice"}
            continue
        s = scorer(scan.hu[k][None].astype(np.float32), lung_mask[k][None])[0]
        per[name] = {"TOT": float(s[0]), "GG": float(s[1]), "RET": float(s[2]), "slice": int(k)}
    tots = [v["TOT"] for v in per.values() if v["TOT"] is not None]
    ext = float(np.mean(tots)) if tots else None
    return {"levels": per, "goh_extent": ext, "n_levels_scored": len(tots),
            "stage": None if ext is None else ("extensive" if ext > 20.0 else "limited")}


# --------------------------------------------------------------------------------------------
# weights
# --------------------------------------------------------------------------------------------
def save_snet(model, cfg: SNetConfig, directory: str | Path, card: dict) -> Path:
    from .weights import save_weights

    return save_weights(model, directory, {"name": "S-Net", "config": asdict(cfg), **card})


def config_from_card(card: dict) -> SNetConfig:
    conf = dict(card.get("config", {}))
    conf.setdefault("texture", False)         # weights saved before the texture channel existed
    return SNetConfig(**conf)


def load_snet(directory: str | Path | None = None, device: str = "cpu"):
    """Load an S-Net and its config (default: the shipped weights); ``ModelError`` when missing or unfit."""
    from .weights import load_into, read_card

    directory = Path(directory) if directory is not None else DEFAULT_DIR
    card = read_card(directory, "S-Net", "sscild train scoring --config ...")
    cfg = config_from_card(card)
    model = load_into(build_snet(cfg), directory, "S-Net")
    return model.to(device).eval(), cfg, card


def load_init(model, path: str | Path):
    """``--init PATH``: start from a user's checkpoint (a folder with model.safetensors, or the file itself);
    tensors whose shapes do not match (e.g. another head) are skipped and reported."""
    from safetensors.torch import load_file

    from ..errors import ModelError

    p = Path(path)
    f = p / "model.safetensors" if p.is_dir() else p
    if not f.exists():
        raise ModelError(f"--init {path}: no such checkpoint (a folder with model.safetensors or a .safetensors file)")
    state = load_file(str(f))
    own = model.state_dict()
    keep = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not keep:
        raise ModelError(f"--init {path}: none of its tensors fit this network ({len(state)} tensors); is it an "
                         "S-Net checkpoint of the same backbone?")
    model.load_state_dict(keep, strict=False)
    return model, sorted(set(own) - set(keep))


def evaluation_table(pred: np.ndarray, truth: np.ndarray) -> dict[str, dict[str, float]]:
    """MAE, SD, weighted kappa (5 % categories) and ICC per pattern."""
    from ..evaluate import icc, mae, weighted_kappa

    out = {}
    for j, p in enumerate(PATTERNS):
        m, sd = mae(pred[:, j], truth[:, j])
        out[p] = {"MAE": m, "MAE_SD": sd, "kappa": weighted_kappa(pred[:, j], truth[:, j]),
                  "ICC": icc(pred[:, j], truth[:, j]).value if len(pred) >= 3 else float("nan")}
    return out


# --------------------------------------------------------------------------------------------
# datasets from users' CSVs, cross-validation, training from a config (sscild train scoring)
# --------------------------------------------------------------------------------------------
def slices_from_csv(path: str | Path, cfg: SNetConfig, neighbours: int = 1, quiet: bool = True,
                    backgrounds: Backgrounds | None = None) -> SliceSet:
    """Level slices of scored scans from a CSV, the way such cohorts are kept:

    ``scan_path`` (relative to the CSV's folder or absolute), ``patient_id`` (for grouped splits), ``L1``..``L5``
    (world z of each level in mm) and ``L1_TOT, L1_GG, L1_RET, ..., L5_RET`` (expert scores in %). Levels with an
    empty score are skipped. The ``neighbours`` slices on each side become extra samples with the same score, as in
    Jia et al. Slices scored 0 / 0 / 0 are added to ``backgrounds`` (at the scan's resolution) when given.
    """
    import pandas as pd

    from ..anatomy import segment_lungs
    from ..io import load_ct
    from ..util import progress

    path = Path(path)
    df = pd.read_csv(path)
    col = "scan_path" if "scan_path" in df.columns else "path"
    need = [col, *LEVELS, *(f"{n}_{p}" for n in LEVELS for p in PATTERNS)]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise ConfigError(f"{path}: missing column(s) {missing}; expected scan_path, patient_id, L1..L5 (world z, "
                          "mm) and L1_TOT, L1_GG, L1_RET, ..., L5_RET (scores in %)")
    sets = []
    for _, r in progress(list(df.iterrows()), "scored scans", quiet=quiet):
        p = Path(str(r[col]))
        p = p if p.is_absolute() else path.parent / p
        scan = load_ct(p)
        lungs = segment_lungs(scan).mask
        group = str(r.get("patient_id", p.name))
        for n in LEVELS:
            sc = [r[f"{n}_{q}"] for q in PATTERNS]
            if any(pd.isna(v) for v in sc) or pd.isna(r[n]):
                continue
            k = scan.slice_at_z(float(r[n]))
            if k is None:
                raise ConfigError(f"{path}: {n} at z = {r[n]} mm lies outside {p}")
            ks = [j for j in range(k - neighbours, k + neighbours + 1) if 0 <= j < scan.shape[0] and lungs[j].any()]
            sets.append(prepare_slices(scan.hu[ks].astype(np.float32), lungs[ks], float(scan.spacing[1]), cfg,
                                       scores=np.tile(np.asarray(sc, np.float32), (len(ks), 1)), group=group))
            if backgrounds is not None and all(float(v) == 0 for v in sc):
                for j in ks:
                    backgrounds.add(scan.hu[j], lungs[j], float(scan.spacing[1]), group)
    return SliceSet.concat(sets)


def _resolve(base: Path, p: str) -> Path:
    q = Path(p)
    return q if q.is_absolute() else (base / q)


def load_data_spec(spec: dict, cfg: SNetConfig, base: Path, quiet: bool = True
                   ) -> tuple[SliceSet | None, Backgrounds]:
    """Scored slices and healthy backgrounds from a config's data section (phantoms, dataset_csv,
    real_backgrounds); returns ``(scored, backgrounds)``: the healthy (TOT = 0) scored slices and the real
    background slices, kept at their own resolution for synthesis."""
    from ..util import progress

    scored, bg = [], Backgrounds()
    phs = spec.get("phantoms") or []
    for ph in (phs if isinstance(phs, list) else [phs]):      # one {n, seed0, ...} or a list of them
        seeds = range(int(ph["seed0"]), int(ph["seed0"]) + int(ph["n"]))
        scored.append(phantom_slices(seeds, cfg, size=ph.get("size", "small"),
                                     neighbours=int(ph.get("neighbours", 1)), quiet=quiet, backgrounds=bg,
                                     noise_hu=tuple(ph["noise_hu"]) if ph.get("noise_hu") else None))
    if spec.get("dataset_csv"):
        scored.append(slices_from_csv(_resolve(base, spec["dataset_csv"]), cfg, quiet=quiet, backgrounds=bg))
    for rb in progress(spec.get("real_backgrounds", []) or [], "real backgrounds", quiet=quiet):
        p = _resolve(base, rb["path"])
        if not p.exists():
            if rb.get("optional", True):
                continue
            raise ConfigError(f"real background scan {p} does not exist")
        bg.extend(real_backgrounds(p, keep=tuple(rb.get("keep", [0.0, 1.0])), weight=float(rb.get("weight", 1.0))))
    sc = SliceSet.concat(scored) if scored else None
    if sc is None and len(bg) == 0:
        raise ConfigError("the data section gives no slices: add phantoms {n, seed0}, dataset_csv or "
                          "real_backgrounds")
    return sc, bg


def pattern_source_from_spec(spec: dict | None, base: Path):
    """``synthetic.source``: procedural (default), phantom, or real_gg (GG patches from real slices in a folder of
    DICOM files, e.g. ../shared/data/covid19-ny-sbu-slices, RET procedural)."""
    from .synthesis import PatchPatterns, ProceduralPatterns, phantom_patterns, real_gg_patterns

    spec = spec or {}
    kind = spec.get("source", "procedural")
    if kind == "procedural":
        return ProceduralPatterns()
    if kind == "phantom":
        return phantom_patterns()
    if kind == "real_gg":
        folder = _resolve(base, spec["real_gg"])
        if not folder.exists():     # a fresh clone without ../shared: phantom and procedural textures only
            import warnings

            warnings.warn(f"{folder} not found: GG textures from phantoms and procedural patterns only")
            return MixedPatterns([phantom_patterns(), ProceduralPatterns()])
        slices = real_slices_from_folder(folder)
        gg = real_gg_patterns(slices)
        if not gg:
            raise ConfigError(f"no ground-glass patches found in {folder}")
        return MixedPatterns([PatchPatterns({"GG": gg, "RET": phantom_patterns().patches["RET"]}),
                              ProceduralPatterns()])
    raise ConfigError(f"unknown synthetic.source {kind!r}: procedural, phantom or real_gg")


class MixedPatterns:
    """Pick one of several pattern sources at random for each insertion."""

    def __init__(self, sources: Sequence[PatternSource]):
        self.sources = list(sources)

    def texture(self, kind, background, pixel_mm, rng):
        return self.sources[int(rng.integers(len(self.sources)))].texture(kind, background, pixel_mm, rng)


def real_slices_from_folder(folder: str | Path) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """Single real slices (DICOM files) with their lungs (largest internal air regions), for GG patches.
    Slices without lung (abdominal) are skipped."""
    from scipy import ndimage as ndi

    from ..io import load_ct

    out = []
    for f in sorted(Path(folder).glob("*.dcm")):
        scan = load_ct(f, allow_single_slice=True)
        hu = scan.hu[0].astype(np.float32)
        air = hu < -400
        lab, n = ndi.label(air)
        border = set(np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]])))
        sizes = ndi.sum(np.ones_like(hu), lab, index=range(1, n + 1))
        keep = [i + 1 for i in np.argsort(sizes)[::-1][:2] if (i + 1) not in border and sizes[i] > 0.02 * hu.size]
        lung = np.isin(lab, keep)
        lung = ndi.binary_closing(lung, iterations=6) & (hu < 200)   # keep GG/consolidation inside the outline
        if lung.sum() > 0.03 * hu.size:
            out.append((hu, lung, float(scan.spacing[1])))
    return out


def cross_validate(data: SliceSet, folds: int, *, cfg: SNetConfig, seed: int = 0, quiet: bool = True,
                   **train_kwargs) -> list[dict[str, Any]]:
    """k-fold cross-validation grouped by patient (``data.group``); synthetic slices are used for training only
    and never for the fold's evaluation. Returns one metrics dict per fold."""
    from sklearn.model_selection import GroupKFold

    groups = data.group
    n_groups = len(set(groups[~data.synthetic]))
    if n_groups < folds:
        raise ConfigError(f"{folds}-fold cross-validation needs at least {folds} patients; the data have {n_groups}")
    res = []
    real_idx = np.flatnonzero(~data.synthetic)
    for f, (tr, te) in enumerate(GroupKFold(folds).split(real_idx, groups=groups[real_idx])):
        test_groups = set(groups[real_idx[te]])
        train = np.flatnonzero(~np.isin(groups, list(test_groups)))
        model, log = train_snet(data.subset(train), cfg=cfg, seed=seed + f, quiet=quiet, **train_kwargs)
        pred = predict_prepared(model, data.subset(real_idx[te]), cfg)
        res.append({"fold": f, "n_test": int(len(te)), "test_patients": sorted(test_groups),
                    **{p: m for p, m in evaluation_table(pred, data.scores[real_idx[te]]).items()}})
    return res


def calibrate_weights(directory: str | Path) -> dict[str, Any]:
    """Fit (or refit) the calibration of saved S-Net weights from their ``validation.json`` (the predictions
    made without calibration) and store it in their card, as ``sscild train scoring`` does at the end of
    training. Returns the card notes."""
    from ..util import write_json
    from .weights import read_card, write_card_md

    directory = Path(directory)
    vpath = directory / "validation.json"
    if not vpath.exists():
        raise ConfigError(f"{vpath} not found: calibration needs the validation predictions of a training run")
    v = json.loads(vpath.read_text())
    card = read_card(directory, "S-Net", "sscild train scoring --config ...")
    cfg = config_from_card(card)
    if "pred_uncalibrated" in v:
        raw = np.asarray(v["pred_uncalibrated"], float)
    elif cfg.calibration is None:
        raw = np.asarray(v["pred"], float)
    else:
        raise ConfigError(f"{vpath} has no uncalibrated predictions to refit the calibration from")
    truth = np.asarray(v["truth"], float)
    cfg = dataclasses.replace(cfg, calibration=fit_calibration(raw, truth))
    pred = calibrated(raw, cfg)
    notes = {"calibration": {"fitted_on": f"the {len(truth)} validation slices (validation.json)",
                             "a_b": list(cfg.calibration)},
             "validation_metrics_uncalibrated": evaluation_table(consistent(raw), truth),
             "validation_metrics": evaluation_table(pred, truth)}     # in-sample for the fit: optimistic
    card["config"] = asdict(cfg)
    card.update(notes)
    write_json(directory / "card.json", card)
    write_json(vpath, {**v, "pred": pred, "pred_uncalibrated": raw, "metrics": card["validation_metrics"]})
    write_card_md(directory)
    return notes


def train_from_config(config: str | Path, *, resume: bool = False, device: str = "cpu", quiet: bool = False,
                      init: str | Path | None = None) -> Path:
    """Train an S-Net as a YAML config says (see ``configs/snet_phantoms.yaml``); returns the output folder with
    ``model.safetensors``, ``card.json``, ``metrics.jsonl`` and, when a validation set is given,
    ``validation.json``. ``resume`` continues from ``out/checkpoint.safetensors``."""
    import yaml

    from ..util import write_json

    config = Path(config)
    c = yaml.safe_load(config.read_text()) or {}
    base = config.parent.parent if config.parent.name == "configs" else config.parent
    out = _resolve(base, c.get("out", "snet_out"))
    out.mkdir(parents=True, exist_ok=True)
    cfg = SNetConfig(**c.get("config", {}))
    tr = {"steps": 1000, "batch_size": 16, "lr": 5e-4, "weight_decay": 1e-4, "balanced": True, "augment": True,
          "seed": 0, "checkpoint_every": 250, **c.get("train", {})}
    syn = {"fraction": 0.5, **(c.get("synthetic") or {})}
    rng = np.random.default_rng(int(tr["seed"]))
    t0 = time.perf_counter()
    scored, backgrounds = load_data_spec(c.get("data", {}), cfg, base, quiet=quiet)
    parts = [s for s in (scored,) if s is not None]
    n_scored = len(scored) if scored is not None else 0
    if float(syn["fraction"]) > 0:
        n_syn = int(round(max(n_scored, 1) * float(syn["fraction"]) / max(1e-6, 1 - float(syn["fraction"]))))
        n_syn = int(syn.get("n", n_syn))
        parts.append(synthesize(backgrounds, n_syn, rng, cfg, source=pattern_source_from_spec(syn, base),
                                quiet=quiet, noise_hu=tuple(syn["noise_hu"]) if syn.get("noise_hu") else None))
    data = SliceSet.concat(parts)
    model = build_snet(cfg)
    notes: dict[str, Any] = {}
    init = init or c.get("init")
    if init:
        model, skipped = load_init(model, _resolve(base, str(init)))
        notes["init"] = {"from": str(init), "skipped_tensors": skipped}
    pre_steps = int((c.get("pretrain") or {}).get("steps", 0))
    ck, log_path = out / "checkpoint.pt", out / "metrics.jsonl"
    done, opt_state = 0, None
    if resume and ck.exists():
        import torch

        state = torch.load(ck, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        done, opt_state = int(state["step"]), state["optimizer"]
    else:
        if log_path.exists():
            log_path.unlink()
        if pre_steps:
            model, plog = pretrain(data, cfg=cfg, steps=pre_steps, batch_size=int(tr["batch_size"]),
                                   lr=float(tr["lr"]), device=device, quiet=quiet)
            notes["pretrain"] = {"steps": pre_steps, "task": "density proxies (label-free)",
                                 "final_loss": float(np.mean(plog.losses[-20:]))}

    def checkpoint(step, m, opt):
        import torch

        from ..util import atomic_path

        with atomic_path(ck) as tmp:
            torch.save({"model": m.state_dict(), "optimizer": opt.state_dict(), "step": step}, tmp)

    def log_line(d):
        with open(log_path, "a") as fh:
            fh.write(json.dumps(d) + "\n")

    model, log = train_snet(data, cfg=cfg, steps=int(tr["steps"]), batch_size=int(tr["batch_size"]),
                            lr=float(tr["lr"]), weight_decay=float(tr["weight_decay"]), balanced=bool(tr["balanced"]),
                            augment=bool(tr["augment"]), seed=int(tr["seed"]), device=device, model=model,
                            quiet=quiet, log_every=int(tr.get("log_every", 250)), log_fn=log_line,
                            start_step=done, optimizer_state=opt_state, on_checkpoint=checkpoint,
                            checkpoint_every=int(tr["checkpoint_every"]))
    step = max(done, int(tr["steps"]))
    speed = [log.slices_per_s]
    metrics: dict[str, Any] = {}
    val_spec = c.get("validation") or {}
    if val_spec:
        vs, vbg = load_data_spec(val_spec, cfg, base, quiet=quiet)
        vparts = [s for s in (vs,) if s is not None]
        if len(vbg):
            vparts.append(synthesize(vbg, int(val_spec.get("synthetic_n", 2 * len(vbg))),
                                     np.random.default_rng(999), cfg, source=pattern_source_from_spec(syn, base)))
        val = SliceSet.concat(vparts)
        pred = predict_prepared(model, val, cfg)
        metrics = evaluation_table(pred, val.scores)
        write_json(out / "validation.json", {"pred": pred, "truth": val.scores, "group": val.group.tolist(),
                                             "synthetic": val.synthetic, "metrics": metrics})
    folds = int((c.get("cv") or {}).get("folds", 0))
    if folds > 1:
        cv = cross_validate(data, folds, cfg=cfg, steps=int(tr["steps"]), batch_size=int(tr["batch_size"]),
                            lr=float(tr["lr"]), balanced=bool(tr["balanced"]), augment=bool(tr["augment"]),
                            device=device)
        write_json(out / "cv.json", cv)
        notes["cv_folds"] = folds
    card = {"trained_on": c.get("description", "see config"), "config_file": config.name,
            "train_slices": int(len(data)), "synthetic_slices": int(data.synthetic.sum()),
            "steps": step, "batch_size": int(tr["batch_size"]), "balanced_sampling": bool(tr["balanced"]),
            "input": f"level slice cropped to the lungs, {cfg.size}x{cfg.size}, HU {cfg.hu_min:.0f}..{cfg.hu_max:.0f}"
                     " + lung mask" + (" + local HU SD at the scan's resolution" if cfg.texture else ""),
            "validation_metrics": metrics,
            "train_slices_per_s": float(np.mean(speed)) if speed else None,
            "training_seconds": round(time.perf_counter() - t0, 1), **notes}
    save_snet(model, cfg, out, card)
    if val_spec and bool(c.get("calibrate", True)) and len(val) >= 20:
        calibrate_weights(out)
    return out
