"""Data synthesis for S-Net: ground glass and reticulation inserted into healthy lung, with exact scores.

After Jia et al. (Sci Rep 2024): a healthy level slice (TOT = 0) gets ground glass (GG) and reticulation (RET)
inserted inside 1-3 random ellipses each (semi-axes up to ~150 px at 0.7 mm, i.e. up to ~105 mm; random centre
and angle), cut by the lung mask, edges fading, the pattern randomly rotated (+-180 deg) and scaled (95-105 %).
The scores are recomputed from the inserted areas, so they are exact.

Choices made here (and why):

- **Exact areas.** The blend weight is ``0.5 * erfc(d / (sigma * sqrt 2))`` of the signed distance ``d`` to the
  ellipse outline (negative inside): a Gaussian fade centred on the outline, so the 50 % contour *is* the
  ellipse and the label is simply "inside the ellipse and inside the lung".
- **Overlap of GG and RET.** Labels are exclusive, as in the lesion classes (1 normal, 2 GG, 3 RET). Where a RET
  ellipse overlaps a GG ellipse the pixel is RET (reticulation drawn over the hazy background, as seen in
  fibrotic NSIP), so ``TOT = GG + RET`` exactly and ``TOT >= max(GG, RET)`` holds.
- **Pattern sources are pluggable**: :class:`ProceduralPatterns` (default: haze that keeps vessels visible, and a
  network of thin irregular lines with honeycomb cysts when asked), :class:`PatchPatterns` (texture patches,
  e.g. cut from phantoms with :func:`phantom_patterns` or from real scans with :func:`real_gg_patterns`).

Scores are % of the lung area of the slice, like experts' Goh scores.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np
from scipy import ndimage as ndi
from scipy.special import erfc

from ..errors import ConfigError

NORMAL, GG, RET = 1, 2, 3


@dataclass(frozen=True)
class SynthResult:
    """An image with inserted patterns, its exact label map (0 outside lung, 1 normal, 2 GG, 3 RET) and scores."""

    image: np.ndarray          # float32 HU (H, W)
    labels: np.ndarray         # uint8 (H, W)
    scores: dict[str, float]   # TOT, GG, RET in % of lung area


class PatternSource(Protocol):
    """Anything that fills an (H, W) array with a GG or RET texture in HU for a given background and pixel size."""

    def texture(self, kind: str, background: np.ndarray, pixel_mm: float, rng: np.random.Generator
                ) -> np.ndarray: ...


def scores_from_labels(labels: np.ndarray) -> dict[str, float]:
    """TOT, GG, RET in % of the lung area (labels > 0) of a 2D label map; all 0 when there is no lung."""
    lung = int((labels > 0).sum())
    if lung == 0:
        return {"TOT": 0.0, "GG": 0.0, "RET": 0.0}
    gg, ret = int((labels == GG).sum()), int((labels == RET).sum())
    return {"TOT": 100.0 * (gg + ret) / lung, "GG": 100.0 * gg / lung, "RET": 100.0 * ret / lung}


def _band_noise(rng: np.random.Generator, shape: tuple[int, int], fine_px: float, coarse_px: float) -> np.ndarray:
    n = rng.standard_normal(shape).astype(np.float32)
    b = ndi.gaussian_filter(n, fine_px) - ndi.gaussian_filter(n, coarse_px)
    return b / (b.std() + 1e-6)


class ProceduralPatterns:
    """GG: a haze at -750..-450 HU that keeps vessels (brighter than the haze) visible.
    RET: irregular lines (-250..-50 HU) ~1-2 mm thick enclosing spaces of ~3-8 mm, on a hazy -650 HU background,
    with honeycomb cysts at a chance of ``honeycomb`` per ellipse. Sizes are physical (mm), so the pattern is the
    same on a 0.7 mm and on a 2.8 mm grid, up to what that grid can resolve."""

    def __init__(self, gg_hu: tuple[float, float] = (-750.0, -450.0), honeycomb: float = 0.3):
        self.gg_hu = gg_hu
        self.honeycomb = honeycomb

    def texture(self, kind: str, background: np.ndarray, pixel_mm: float, rng: np.random.Generator) -> np.ndarray:
        shape = background.shape
        if kind == "GG":
            level = float(rng.uniform(*self.gg_hu))
            haze = level + 25.0 * _band_noise(rng, shape, 2.0 / pixel_mm + 0.5, 8.0 / pixel_mm + 1.0)
            return np.maximum(background, haze).astype(np.float32)
        if kind == "RET":
            fine = max(0.6, float(rng.uniform(1.2, 2.2)) / pixel_mm)
            band = _band_noise(rng, shape, fine, 2.2 * fine)
            lines = np.abs(band) < float(rng.uniform(0.25, 0.4))
            out = np.full(shape, -650.0, np.float32) + 30.0 * rng.standard_normal(shape).astype(np.float32)
            out[lines] = float(rng.uniform(-250, -50))
            if rng.random() < self.honeycomb:
                r_px = rng.uniform(2.5, 5.0) / pixel_mm
                n = int(rng.integers(3, 15))
                yy, xx = np.mgrid[:shape[0], :shape[1]]
                for _ in range(n):
                    cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
                    d = np.hypot(yy - cy, xx - cx)
                    out[(d < r_px + max(1.0, 1.0 / pixel_mm))] = -100.0
                    out[d < r_px] = -950.0
            return out
        raise ConfigError(f"unknown pattern kind {kind!r}; use 'GG' or 'RET'")


def _tile_to(patch: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    reps = (int(np.ceil(shape[0] / patch.shape[0])) + 1, int(np.ceil(shape[1] / patch.shape[1])) + 1)
    # mirror tiling avoids seams
    row = np.concatenate([patch if i % 2 == 0 else patch[:, ::-1] for i in range(reps[1])], axis=1)
    full = np.concatenate([row if i % 2 == 0 else row[::-1] for i in range(reps[0])], axis=0)
    return full[:shape[0], :shape[1]]


class PatchPatterns:
    """Textures from square HU patches ``{kind: [(patch, pixel_mm), ...]}``: a random patch is resampled to the
    target pixel size, scaled 95-105 %, rotated +-180 deg and mirror-tiled over the array. Resampling is cubic:
    linear interpolation at sub-pixel offsets blurs fine texture (it took about a third of the local SD of
    reticulation patches), and blurred reticulation looks like ground glass."""

    def __init__(self, patches: dict[str, Sequence[tuple[np.ndarray, float]]]):
        for kind, lst in patches.items():
            if kind not in ("GG", "RET"):
                raise ConfigError(f"pattern patches given for {kind!r}; kinds are 'GG' and 'RET'")
            if not lst:
                raise ConfigError(f"no {kind} patches given")
        self.patches = {k: list(v) for k, v in patches.items()}

    def texture(self, kind: str, background: np.ndarray, pixel_mm: float, rng: np.random.Generator) -> np.ndarray:
        if kind not in self.patches:
            raise ConfigError(f"this pattern source has no {kind} patches (has {sorted(self.patches)})")
        lst = self.patches[kind]
        patch, mm = lst[int(rng.integers(len(lst)))]
        zoom = mm / pixel_mm * rng.uniform(0.95, 1.05)
        p = ndi.zoom(patch.astype(np.float32), zoom, order=3, mode="reflect")
        p = ndi.rotate(p, rng.uniform(-180, 180), reshape=False, order=3, mode="reflect")
        # cut the rotated square's central part (corners are reflected fill)
        m = max(1, int(p.shape[0] * 0.15))
        p = p[m:-m, m:-m] if p.shape[0] > 2 * m + 4 else p
        return _tile_to(p, background.shape).astype(np.float32)


def _ellipse_signed_distance(shape: tuple[int, int], cy: float, cx: float, a: float, b: float,
                             angle: float) -> np.ndarray:
    """Approximate signed distance (px) to an ellipse outline, negative inside (exact sign)."""
    yy, xx = np.mgrid[:shape[0], :shape[1]].astype(np.float32)
    c, s = np.cos(angle), np.sin(angle)
    u = (xx - cx) * c + (yy - cy) * s
    v = -(xx - cx) * s + (yy - cy) * c
    r = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    # first-order distance: (r - 1) / |grad r|
    g = np.sqrt((u / a ** 2) ** 2 + (v / b ** 2) ** 2) / np.maximum(r, 1e-6)
    return ((r - 1.0) / np.maximum(g, 1e-6)).astype(np.float32)


def _noise_stat(image: np.ndarray, mask: np.ndarray) -> float:
    r = image - ndi.gaussian_filter(image, 1.0)
    m = ndi.uniform_filter(r, 5)
    sd = np.sqrt(np.maximum(ndi.uniform_filter(r * r, 5) - m * m, 0.0))
    inner = ndi.binary_erosion(mask, iterations=3)
    v = sd[inner]
    return float(np.percentile(v, 25)) if v.size >= 50 else 0.0


def pixel_noise(image: np.ndarray, mask: np.ndarray) -> float:
    """The pixel noise (HU SD) of an image inside ``mask``: the lower quartile of the local (5 x 5) SD of the image
    minus its 1-pixel Gaussian smoothing, where structure (vessels, edges) does not reach, scaled by what the same
    statistic gives for white noise of SD 1."""
    return _noise_stat(np.asarray(image, np.float32), np.asarray(mask, bool)) / _white_noise_stat()


@functools.lru_cache(maxsize=None)
def _white_noise_stat() -> float:
    n = np.random.default_rng(0).standard_normal((128, 128)).astype(np.float32)
    return _noise_stat(n, np.ones(n.shape, bool))


def insert_patterns(image: np.ndarray, lung: np.ndarray, rng: np.random.Generator, *, pixel_mm: float = 0.7,
                    source: PatternSource | None = None, n_gg: int | None = None, n_ret: int | None = None,
                    axis_mm: tuple[float, float] = (0.7, 105.0), fade_mm: float = 2.0,
                    labels: np.ndarray | None = None, match_noise: bool = True) -> SynthResult:
    """Insert GG and RET into a slice and return the image, the exact labels and the scores.

    Parameters
    ----------
    image : (H, W) HU; lung : (H, W) bool lung mask
    rng : numpy Generator (all randomness comes from it)
    pixel_mm : in-plane pixel size
    source : pattern source; default :class:`ProceduralPatterns`
    n_gg, n_ret : number of ellipses of each pattern; default drawn from 0..3 (1-3 each as in the paper, with a
        chance of none so that pure-GG, pure-RET and healthy slices occur)
    axis_mm : range of the ellipse semi-axes in mm (paper: 1-150 px at ~0.7 mm)
    fade_mm : sigma of the Gaussian edge fade
    labels : existing label map (default: all lung normal); inserted patterns overwrite it
    match_noise : add the background's own pixel noise (:func:`pixel_noise`) to the inserted texture, so that
        inserted regions are as noisy as the rest of the slice (the scanner's noise covers everything; a texture
        from another scan carries that scan's noise, a procedural one none)

    Examples
    --------
    >>> img = np.full((64, 64), -850.0, np.float32); lung = np.zeros((64, 64), bool); lung[8:56, 8:56] = True
    >>> r = insert_patterns(img, lung, np.random.default_rng(0), pixel_mm=2.0, n_gg=1, n_ret=1)
    >>> abs(r.scores["TOT"] - r.scores["GG"] - r.scores["RET"]) < 1e-9
    True
    """
    image = np.asarray(image, np.float32)
    lung = np.asarray(lung, bool)
    if image.shape != lung.shape or image.ndim != 2:
        raise ConfigError(f"image {image.shape} and lung mask {lung.shape} must be the same 2D shape")
    source = source or ProceduralPatterns()
    lab = np.where(lung, NORMAL, 0).astype(np.uint8) if labels is None else np.where(lung, labels, 0).astype(np.uint8)
    out = image.copy()
    if not lung.any():
        return SynthResult(out, lab, scores_from_labels(lab))
    ys, xs = np.nonzero(lung)
    counts = {"GG": int(rng.integers(0, 4)) if n_gg is None else n_gg,
              "RET": int(rng.integers(0, 4)) if n_ret is None else n_ret}
    sigma = max(0.5, fade_mm / pixel_mm)
    noise_sd = pixel_noise(image, lung) if match_noise else 0.0
    for kind, value in (("GG", GG), ("RET", RET)):       # RET last: it wins where the two overlap
        for _ in range(counts[kind]):
            k = int(rng.integers(len(ys)))
            cy, cx = float(ys[k]), float(xs[k])          # centre inside the lung
            a, b = rng.uniform(*axis_mm, size=2) / pixel_mm
            d = _ellipse_signed_distance(image.shape, cy, cx, max(a, 0.5), max(b, 0.5), rng.uniform(0, np.pi))
            inside = (d <= 0) & lung
            if not inside.any():
                continue
            w = (0.5 * erfc(d / (sigma * np.sqrt(2.0)))).astype(np.float32) * lung
            tex = source.texture(kind, out, pixel_mm, rng)
            if noise_sd > 0:
                tex = tex + noise_sd * rng.standard_normal(tex.shape).astype(np.float32)
            out = (1 - w) * out + w * tex
            lab[inside] = value
    return SynthResult(out.astype(np.float32), lab, scores_from_labels(lab))


# --------------------------------------------------------------------------------------------
# pattern sources cut from images
# --------------------------------------------------------------------------------------------
def patches_from_labels(image: np.ndarray, labels: np.ndarray, value: int, size: int, pixel_mm: float,
                        max_patches: int = 20, min_fill: float = 0.95, rng: np.random.Generator | None = None
                        ) -> list[tuple[np.ndarray, float]]:
    """Square ``size`` px patches of ``image`` whose pixels are ``>= min_fill`` labelled ``value``."""
    rng = rng or np.random.default_rng(0)
    m = (labels == value).astype(np.float32)
    if m.shape[0] < size or m.shape[1] < size:
        return []
    fill = ndi.uniform_filter(m, size, mode="constant")
    h = size // 2
    ok = np.argwhere(fill[h:m.shape[0] - size + h + 1, h:m.shape[1] - size + h + 1] >= min_fill)
    if not len(ok):
        return []
    pick = ok[rng.choice(len(ok), size=min(max_patches, len(ok)), replace=False)]
    return [(image[y:y + size, x:x + size].astype(np.float32).copy(), pixel_mm) for y, x in pick]


def phantom_patterns(seeds: Sequence[int] = (777, 778), size_mm: float = 20.0) -> PatchPatterns:
    """GG and RET texture patches cut from high-extent synthetic phantoms (medium size, 1.4 mm pixels)."""
    from ..phantom import make_phantom

    out: dict[str, list] = {"GG": [], "RET": []}
    rng = np.random.default_rng(0)
    for s in seeds:
        scan, truth = make_phantom(s, size="medium", extent=65.0, gg_fraction=0.5)
        px = float(scan.spacing[1])
        size = max(6, int(round(size_mm / px)))
        for z in np.linspace(0.2, 0.6, 5) * scan.shape[0]:
            z = int(z)
            out["GG"] += patches_from_labels(scan.hu[z], truth.lesions[z], GG, size, px, 4, rng=rng)
            out["RET"] += patches_from_labels(scan.hu[z], truth.lesions[z], RET, size, px, 4, rng=rng)
    if not out["GG"] or not out["RET"]:
        raise ConfigError("the phantoms gave no patch fully inside GG/RET; try other seeds or a smaller size_mm")
    return PatchPatterns(out)


def real_gg_patterns(slices: Sequence[tuple[np.ndarray, np.ndarray, float]], size_mm: float = 20.0,
                     band: tuple[float, float] = (-750.0, -300.0), min_fill: float = 0.6,
                     max_per_slice: int = 10, denoise_mm: float = 0.7) -> list[tuple[np.ndarray, float]]:
    """Ground-glass patches from real slices (HU, lung mask, pixel mm), e.g. COVID-19 slices: square windows
    inside the lung where at least ``min_fill`` of the pixels lie in the GG band. The slices are smoothed with a
    Gaussian of ``denoise_mm`` first: the patches keep the opacity's own structure but not that scanner's pixel
    noise (:func:`insert_patterns` adds the receiving slice's). Returns ``[(patch, mm)]`` for
    :class:`PatchPatterns` ``{"GG": ...}``."""
    res: list[tuple[np.ndarray, float]] = []
    rng = np.random.default_rng(0)
    for hu, lung, mm in slices:
        size = max(6, int(round(size_mm / mm)))
        lab = np.where(lung & (hu >= band[0]) & (hu <= band[1]), 1, 0)
        lab[~ndi.binary_erosion(lung, iterations=2)] = 0
        # windows wholly inside the lung and mostly in the GG band
        m = lab.astype(np.float32)
        fill = ndi.uniform_filter(m, size, mode="constant")
        lf = ndi.uniform_filter(lung.astype(np.float32), size, mode="constant")
        h = size // 2
        ok = np.argwhere((fill >= min_fill) & (lf >= 0.999))
        ok = ok[(ok[:, 0] >= h) & (ok[:, 1] >= h) & (ok[:, 0] < hu.shape[0] - size + h)
                & (ok[:, 1] < hu.shape[1] - size + h)]
        if len(ok):
            pick = ok[rng.choice(len(ok), size=min(max_per_slice, len(ok)), replace=False)]
            sm = ndi.gaussian_filter(hu.astype(np.float32), denoise_mm / mm) if denoise_mm > 0 else hu
            res += [(sm[y - h:y - h + size, x - h:x - h + size].astype(np.float32).copy(), mm) for y, x in pick]
    return res
