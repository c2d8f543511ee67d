"""S-Net input: the network's config, the lung crop, resampling, the texture channel and the output calibration.

A slice becomes the network input (:func:`prepare_grid`, :func:`to_input`): cropped to a square box around its lungs,
resampled to ``size`` x ``size``, channels HU (0..1, air 0), lung mask and, with ``texture``, the local HU SD computed
at the slice's own resolution (:func:`local_std`). Outputs are made consistent and calibrated (:func:`calibrated`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from ..errors import ConfigError, NoLungsError

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
