"""Replacement-based heat maps that explain S-Net's level scores, and scores derived from them.

The method (Jia et al., Sci Rep 2024): a square patch of healthy lung slides over the level slice. At each
position the patch, cut by the lung mask and with edges fading by linearly increasing transparency, replaces
the image there, and the change of each predicted score against the original, ``dP``, is recorded:

- ``dP < 0``: the covered area was seen as diseased (replacing it with healthy lung lowers the score);
- ``dP = 0``: seen as healthy;
- ``dP > 0``: replacing it raised the score (a false positive of the healthy patch, or context).

The value of the map at a pixel is the mean of ``dP`` over the positions whose patch covers that pixel,
weighted by how much of the patch is blended in there. One forward pass gives the three outputs, so the three
maps (TOT, GG, RET) come together. Thresholding a map (a threshold between -4 and 0 % points, chosen on
validation data) gives a coarse lesion segmentation whose area over the lung area is a *derived score*.

Speed: only positions whose patch touches the lung are evaluated, in batches, under ``torch.inference_mode``
when the scorer is a torch model; all levels of a scan go through one call. :func:`heatmap_reference` is
the plain one-position-at-a-time loop kept for tests and the benchmark.

A *scorer* is any callable ``scorer(images, lungs) -> scores`` with ``images`` float32 HU of shape
(N, H, W), ``lungs`` bool (N, H, W), returning (N, 3) scores in % (TOT, GG, RET).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Iterable, Mapping, Protocol, Sequence

import numpy as np

from .domain import PATTERNS
from .errors import ConfigError

Scorer = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class HeatMap:
    """Score-change maps of one slice.

    Attributes
    ----------
    dp : numpy.ndarray
        float32 (3, H, W): mean score change in % points per pattern (TOT, GG, RET); 0 outside the lung.
    weight : numpy.ndarray
        float32 (H, W): summed blending weight of the positions covering each pixel (0 = never covered).
    base_scores : numpy.ndarray
        (3,) scores of the unmodified slice.
    lung : numpy.ndarray
        bool (H, W) lung mask the map was computed in.
    patch_px, stride_px : int
        Patch side and stride in pixels of the slice.
    n_positions : int
        Number of patch positions evaluated (forward passes, excluding the base).
    """

    dp: np.ndarray
    weight: np.ndarray
    base_scores: np.ndarray
    lung: np.ndarray
    patch_px: int
    stride_px: int
    n_positions: int
    patterns: tuple[str, ...] = PATTERNS

    def map(self, pattern: str) -> np.ndarray:
        """The (H, W) map of one pattern ("TOT", "GG" or "RET")."""
        return self.dp[self.patterns.index(pattern)]

    def segmentation(self, threshold: float | Sequence[float]) -> np.ndarray:
        """bool (3, H, W): lung pixels whose score change is below ``threshold`` (% points, <= 0)."""
        t = np.broadcast_to(np.asarray(threshold, float), (len(self.patterns),))
        return (self.dp < t[:, None, None]) & self.lung[None]

    def derived_scores(self, threshold: float | Sequence[float]) -> dict[str, float]:
        """Area of the thresholded map over the lung area, in %, per pattern."""
        seg = self.segmentation(threshold)
        area = max(int(self.lung.sum()), 1)
        return {p: float(seg[i].sum()) * 100.0 / area for i, p in enumerate(self.patterns)}


# --------------------------------------------------------------------------------------------
# healthy patches
# --------------------------------------------------------------------------------------------
class PatchSource(Protocol):
    """Gives a square patch of healthy lung in HU, ``size`` pixels at ``spacing_mm`` per pixel."""

    def patch(self, size: int, spacing_mm: float, rng: np.random.Generator) -> np.ndarray: ...


def _resample_square(img: np.ndarray, size: int) -> np.ndarray:
    from scipy.ndimage import zoom

    if img.shape[0] == size:
        return img.astype(np.float32)
    out = zoom(img.astype(np.float32), size / img.shape[0], order=1)
    if out.shape[0] != size:  # zoom can be off by one
        out = np.resize(out, (size, size))
    return out.astype(np.float32)


@dataclass
class SlicePatchSource:
    """Healthy patches cut from lung slices (real scans or phantoms).

    Parameters
    ----------
    slices : sequence of (image HU (H, W), lung mask (H, W), pixel spacing mm)
        Slices of healthy lung. A patch is cut where its whole window lies inside the lung and its mean
        HU is below ``max_mean_hu`` (no dense disease), then resampled to the requested pixel spacing.
    """

    slices: Sequence[tuple[np.ndarray, np.ndarray, float]]
    max_mean_hu: float = -750.0
    _cache: dict = field(default_factory=dict, repr=False)

    def patch(self, size: int, spacing_mm: float, rng: np.random.Generator) -> np.ndarray:
        from scipy.ndimage import minimum_filter

        order = rng.permutation(len(self.slices))
        for idx in order:
            img, lung, sp = self.slices[int(idx)]
            side = int(round(size * spacing_mm / sp))
            if side < 4 or side > min(img.shape):
                continue
            key = (int(idx), side)
            if key not in self._cache:
                inside = minimum_filter(lung.astype(np.uint8), size=side, mode="constant") > 0
                self._cache[key] = np.argwhere(inside)
            centres = self._cache[key]
            if len(centres) == 0:
                continue
            for c in centres[rng.permutation(len(centres))[:50]]:
                y0, x0 = int(c[0]) - side // 2, int(c[1]) - side // 2
                win = img[y0:y0 + side, x0:x0 + side]
                if win.shape == (side, side) and float(win.mean()) <= self.max_mean_hu:
                    return _resample_square(win, size)
        raise ConfigError(
            "no healthy lung patch could be cut from the given slices at this size: give slices with "
            "larger healthy lung regions, or a smaller patch (--patch / --patch-mm)"
        )


@lru_cache(maxsize=4)
def phantom_patch_source(seed: int = 12345, pixel_mm: float = 0.7) -> SlicePatchSource:
    """Healthy-lung patches from a healthy synthetic phantom (the default source).

    A small healthy phantom is generated at ``pixel_mm`` in-plane resolution (deterministic for ``seed``),
    and its mid-lung slices are used. Made once per process and arguments (it takes a few seconds).
    """
    from .phantom import make_phantom

    n = int(round(300.0 / pixel_mm))
    scan, truth = make_phantom(seed, extent=0.0, shape=(24, n, n), spacing=(6.0, pixel_mm, pixel_mm))
    lungs = truth.lungs > 0
    area = lungs.sum(axis=(1, 2))
    ks = np.argsort(area)[::-1][:6]
    return SlicePatchSource([(scan.hu[k].astype(np.float32), lungs[k], float(scan.spacing[1])) for k in ks])


# --------------------------------------------------------------------------------------------
# occlusion geometry
# --------------------------------------------------------------------------------------------
def fade_weights(size: int, fade_fraction: float = 0.25) -> np.ndarray:
    """(size, size) opacity of the patch: 1 in the centre, falling linearly to ~0 over the outer band.

    The outer ``fade_fraction`` of the half-width on each side is the linear ramp (linearly increasing
    transparency toward the edge).
    """
    ramp = max(1, int(round(size / 2 * fade_fraction)))
    d = np.minimum(np.arange(size), np.arange(size)[::-1]).astype(np.float32)  # distance to edge in px
    w1 = np.clip((d + 0.5) / ramp, 0.0, 1.0)
    return np.minimum(w1[:, None], w1[None, :]).astype(np.float32)


def patch_positions(lung: np.ndarray, patch: int, stride: int, only_lung: bool = True) -> np.ndarray:
    """Top-left corners (y, x) of the patch grid, row by row; with ``only_lung`` those touching the lung."""
    h, w = lung.shape
    ys = list(range(0, max(h - patch, 0) + 1, stride))
    xs = list(range(0, max(w - patch, 0) + 1, stride))
    pos = np.array([(y, x) for y in ys for x in xs], dtype=np.int64)
    if not only_lung or len(pos) == 0:
        return pos
    # summed-area table: does the window contain any lung pixel?
    sat = np.pad(lung.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    y, x = pos[:, 0], pos[:, 1]
    y1, x1 = np.minimum(y + patch, h), np.minimum(x + patch, w)
    count = sat[y1, x1] - sat[y, x1] - sat[y1, x] + sat[y, x]
    return pos[count > 0]


def window_changes(image: np.ndarray, lung: np.ndarray, patch_hu: np.ndarray, fade: np.ndarray,
                   positions: np.ndarray) -> tuple[list[tuple[slice, slice]], np.ndarray, np.ndarray]:
    """Where and by how much the healthy patch changes the image at each position: the window (rows, columns,
    cut at the image's edge), the change ``w * (patch - image)`` (float32 HU, zero where ``w`` is) and the weight
    ``w = fade * lung`` under the window, both (N, p, p) with zeros past the image's edge."""
    p = patch_hu.shape[0]
    n = len(positions)
    changes = np.zeros((n, p, p), np.float32)
    wts = np.zeros((n, p, p), np.float32)
    windows = []
    for i, (y, x) in enumerate(positions):
        win = (slice(int(y), min(int(y) + p, image.shape[0])), slice(int(x), min(int(x) + p, image.shape[1])))
        hh, ww = win[0].stop - win[0].start, win[1].stop - win[1].start
        wts[i, :hh, :ww] = fade[:hh, :ww] * lung[win]
        changes[i, :hh, :ww] = wts[i, :hh, :ww] * (patch_hu[:hh, :ww] - image[win])
        windows.append(win)
    return windows, changes, wts


def occluded_batch(image: np.ndarray, lung: np.ndarray, patch_hu: np.ndarray, fade: np.ndarray,
                   positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Images with the healthy patch blended in at each position, and the blending weights.

    Only lung pixels change: the weight is ``fade * lung`` under the window, 0 elsewhere.

    Returns
    -------
    images : float32 (N, H, W)
    weights : float32 (N, p, p) the weight used inside each window
    """
    image = image.astype(np.float32)
    windows, changes, wts = window_changes(image, lung, patch_hu, fade, positions)
    return _apply(image, windows, changes), wts


def _apply(image: np.ndarray, windows, changes: np.ndarray) -> np.ndarray:
    """(N, H, W) copies of ``image`` with ``changes[i]`` added on ``windows[i]``."""
    out = np.broadcast_to(image, (len(windows),) + image.shape).copy()
    for i, win in enumerate(windows):
        out[i][win] += changes[i, :win[0].stop - win[0].start, :win[1].stop - win[1].start]
    return out


# --------------------------------------------------------------------------------------------
# the maps
# --------------------------------------------------------------------------------------------
def _resolve_px(value_px: int | None, value_mm: float | None, spacing_mm: float, default_px: int) -> int:
    if value_mm is not None:
        if value_mm <= 0:
            raise ConfigError(f"patch/stride in mm must be positive, got {value_mm}")
        return max(1, int(round(value_mm / spacing_mm)))
    v = default_px if value_px is None else int(value_px)
    if v <= 0:
        raise ConfigError(f"patch/stride in pixels must be positive, got {v}")
    return v


def _inference():
    """``torch.inference_mode()`` (no autograd bookkeeping), or nothing without torch."""
    try:
        import torch

        return torch.inference_mode()
    except ImportError:  # pragma: no cover
        from contextlib import nullcontext

        return nullcontext()


def _call_scorer(scorer: Scorer, images: np.ndarray, lungs: np.ndarray) -> np.ndarray:
    with _inference():
        s = np.asarray(scorer(images, lungs), dtype=np.float64)
    if s.ndim != 2 or s.shape[0] != len(images):
        raise ConfigError(f"the scorer returned shape {s.shape}; expected ({len(images)}, 3)")
    return s


def _occluded_scores(scorer: Scorer, image: np.ndarray, lung: np.ndarray, windows, changes: np.ndarray,
                     batch_size: int) -> np.ndarray:
    """Scores of the occluded copies: by the scorer's ``occluded`` method when it has one (S-Net: only the
    windows' changes are resampled, :class:`sscild.scoring.snet.OcclusionInputs`), else whole copies in batches."""
    fast = getattr(scorer, "occluded", None)
    if fast is not None:
        with _inference():
            return np.asarray(fast(image, lung, windows, changes, batch_size), np.float64)
    out = []
    for b0 in range(0, len(windows), batch_size):
        batch = _apply(image, windows[b0:b0 + batch_size], changes[b0:b0 + batch_size])
        out.append(_call_scorer(scorer, batch, np.broadcast_to(lung, batch.shape)))
    return np.concatenate(out) if out else np.zeros((0, 3))


def heatmaps(slices: Mapping[str, tuple[np.ndarray, np.ndarray]], scorer: Scorer, *,
             spacing_mm: float | Mapping[str, float] = 1.0, patch: int | None = None,
             stride: int | None = None, patch_mm: float | None = None, stride_mm: float | None = None,
             source: PatchSource | None = None, batch_size: int = 32, seed: int = 0,
             quiet: bool = True) -> dict[str, HeatMap]:
    """Heat maps of several slices (e.g. the five Goh levels of a scan) in one call.

    Parameters
    ----------
    slices : mapping name -> (image HU (H, W), lung mask (H, W))
    scorer : callable
        ``scorer(images (N,H,W) float32 HU, lungs (N,H,W) bool) -> (N, 3)`` scores in %.
    spacing_mm : float or mapping
        In-plane pixel size of each slice (used for ``patch_mm``/``stride_mm`` and the patch source).
    patch, stride : int, optional
        Patch side and stride in pixels (defaults: 64 and 16 at 512 px across, scaled to the slice width,
        i.e. 1/8 and 1/32 of the slice width, as in the paper).
    patch_mm, stride_mm : float, optional
        The same in mm; override the pixel values.
    source : PatchSource, optional
        Healthy-lung patches; default :func:`phantom_patch_source`.
    batch_size : int
        Occluded images per forward pass.

    Returns
    -------
    dict name -> HeatMap

    Examples
    --------
    >>> import numpy as np
    >>> img = np.full((64, 64), -850.0, np.float32); lung = np.ones((64, 64), bool)
    >>> flat = SlicePatchSource([(np.full((64, 64), -850.0, np.float32), lung, 1.0)])
    >>> hm = heatmaps({"L1": (img, lung)}, lambda x, m: np.zeros((len(x), 3)), source=flat)
    >>> float(np.abs(hm["L1"].dp).max())
    0.0
    """
    rng = np.random.default_rng(seed)
    names = list(slices)
    result: dict[str, HeatMap] = {}
    if source is None:
        source = phantom_patch_source()
    from .util import progress

    # base scores of all slices in one pass
    imgs = np.stack([np.asarray(slices[n][0], np.float32) for n in names]) if names else None
    if imgs is None:
        return result
    lungs_all = np.stack([np.asarray(slices[n][1], bool) for n in names])
    base = _call_scorer(scorer, imgs, lungs_all)

    for i, name in enumerate(progress(names, "heat maps", quiet=quiet)):
        image, lung = imgs[i], lungs_all[i]
        sp = float(spacing_mm[name] if isinstance(spacing_mm, Mapping) else spacing_mm)
        width = image.shape[1]
        p = _resolve_px(patch, patch_mm, sp, max(4, int(round(width / 8))))
        s = _resolve_px(stride, stride_mm, sp, max(1, int(round(width / 32))))
        patch_hu = source.patch(p, sp, rng)
        fade = fade_weights(p)
        pos = patch_positions(lung, p, s, only_lung=True)
        windows, changes, wts = window_changes(image, lung, patch_hu, fade, pos)
        dps = _occluded_scores(scorer, image, lung, windows, changes, batch_size)[:, :3] - base[i, :3]
        acc = np.zeros((3,) + image.shape, np.float64)
        wsum = np.zeros(image.shape, np.float64)
        for j, (ys, xs) in enumerate(windows):
            w = wts[j, :ys.stop - ys.start, :xs.stop - xs.start]
            acc[:, ys, xs] += dps[j][:, None, None] * w
            wsum[ys, xs] += w
        dp = np.divide(acc, wsum, out=np.zeros_like(acc), where=wsum > 0) * lung
        result[name] = HeatMap(dp.astype(np.float32), wsum.astype(np.float32), base[i, :3].copy(), lung.copy(),
                               p, s, len(pos))
    return result


def heatmap(image: np.ndarray, lung: np.ndarray, scorer: Scorer, **kwargs) -> HeatMap:
    """Heat maps (TOT, GG, RET) of one slice; see :func:`heatmaps` for the parameters."""
    return heatmaps({"slice": (image, lung)}, scorer, **kwargs)["slice"]


def heatmap_reference(image: np.ndarray, lung: np.ndarray, scorer: Scorer, *, patch: int, stride: int,
                      patch_hu: np.ndarray) -> HeatMap:
    """The naive loop: every grid position, one forward pass at a time. Same maps, for tests and benchmarks."""
    image = np.asarray(image, np.float32)
    lung = np.asarray(lung, bool)
    fade = fade_weights(patch)
    base = np.asarray(scorer(image[None], lung[None]), float)[0, :3]
    acc = np.zeros((3,) + image.shape)
    wsum = np.zeros(image.shape)
    pos = patch_positions(lung, patch, stride, only_lung=False)
    for y, x in pos:
        occ, wts = occluded_batch(image, lung, patch_hu, fade, np.array([[y, x]]))
        dp = np.asarray(scorer(occ, lung[None]), float)[0, :3] - base
        hh, ww = min(patch, image.shape[0] - y), min(patch, image.shape[1] - x)
        w = wts[0, :hh, :ww]
        acc[:, y:y + hh, x:x + ww] += dp[:, None, None] * w
        wsum[y:y + hh, x:x + ww] += w
    dp = np.divide(acc, wsum, out=np.zeros_like(acc), where=wsum > 0) * lung
    return HeatMap(dp.astype(np.float32), wsum.astype(np.float32), base, lung, patch, stride, len(pos))


# --------------------------------------------------------------------------------------------
# derived scores and the threshold search
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ThresholdFit:
    """Per-pattern threshold chosen on validation maps, and how well derived scores explain S-Net's."""

    thresholds: dict[str, float]
    r2: dict[str, float]
    candidates: tuple[float, ...]


def explained_variance(derived: Sequence[float], model_scores: Sequence[float]) -> float:
    """R^2 of a least-squares line of the model scores on the derived scores (scipy.stats.linregress)."""
    from scipy.stats import linregress

    d = np.asarray(derived, float)
    m = np.asarray(model_scores, float)
    if len(d) < 3 or np.ptp(d) == 0 or np.ptp(m) == 0:
        return float("nan")
    return float(linregress(d, m).rvalue ** 2)


def fit_thresholds(maps: Iterable[HeatMap], candidates: Sequence[float] | None = None) -> ThresholdFit:
    """Choose, per pattern, the threshold in [-4, 0] % points whose derived scores best explain S-Net's.

    The criterion is R^2 between the derived scores and the S-Net scores of the unmodified slices
    (``HeatMap.base_scores``) over the validation maps.
    """
    maps = list(maps)
    if len(maps) < 3:
        raise ConfigError(f"threshold search needs at least 3 validation heat maps, got {len(maps)}")
    cands = tuple(candidates) if candidates is not None else tuple(np.round(np.linspace(-4.0, 0.0, 17), 3))
    thresholds, r2 = {}, {}
    for i, p in enumerate(PATTERNS):
        model = [m.base_scores[i] for m in maps]
        best_t, best_r = cands[0], -np.inf
        for t in cands:
            r = explained_variance([m.derived_scores(t)[p] for m in maps], model)
            if np.isfinite(r) and r > best_r:
                best_t, best_r = float(t), r
        thresholds[p], r2[p] = best_t, float(best_r) if np.isfinite(best_r) else float("nan")
    return ThresholdFit(thresholds, r2, cands)


# --------------------------------------------------------------------------------------------
# outputs
# --------------------------------------------------------------------------------------------
def slice_geometry_image(scan, k: int, array2d: np.ndarray):
    """A one-slice SimpleITK image of ``array2d`` placed at slice ``k`` of ``scan`` (world geometry kept)."""
    img = scan.to_sitk(np.asarray(array2d)[None])
    img.SetOrigin(tuple(float(v) for v in scan.index_to_world(np.array([k, 0.0, 0.0]))))
    return img


def overlay_png(image_hu: np.ndarray, dp: np.ndarray, lung: np.ndarray, path, *, title: str = "",
                vmax: float | None = None, spacing_yx: tuple[float, float] = (1.0, 1.0)):
    """Heat-map overlay: lung window underneath, diverging colours centred on 0, legend in % points."""
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.figure import Figure

    from .figures import save_png
    from .util import draw_contour

    lim = vmax if vmax is not None else max(float(np.abs(dp[lung]).max()) if lung.any() else 0.0, 0.5)
    fig = Figure(figsize=(5, 5.4), dpi=110)
    ax = fig.subplots()
    extent = (0, image_hu.shape[1] * spacing_yx[1], image_hu.shape[0] * spacing_yx[0], 0)
    ax.imshow(image_hu, cmap="gray", vmin=-1350, vmax=150, extent=extent)
    shown = np.ma.masked_where(~lung | (dp == 0), dp)
    im = ax.imshow(shown, cmap="RdBu_r", norm=TwoSlopeNorm(0.0, -lim, lim), alpha=0.6, extent=extent)
    draw_contour(ax, lung, spacing_yx, colors="yellow", linewidths=0.6)
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    cb.set_label("score change dP (% points); blue = seen as disease")
    fig.tight_layout()
    save_png(fig, path)


def write_heatmap_outputs(maps: Mapping[str, HeatMap], scan, slice_index: Mapping[str, int], outdir,
                          ) -> dict[str, dict[str, str]]:
    """Write per level and pattern ``heatmap_<level>_<pattern>.nii.gz`` (float % points on the slice grid,
    at its world position) and ``heatmap_<level>_<pattern>.png`` (overlay). ``slice_index`` gives the array
    slice of each level in ``scan``. Returns the written file names."""
    from pathlib import Path

    import SimpleITK as sitk

    from .util import atomic_path

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    written: dict[str, dict[str, str]] = {}
    for name, hm in maps.items():
        k = int(slice_index[name])
        written[name] = {}
        for i, p in enumerate(hm.patterns):
            stem = f"heatmap_{name}_{p}"
            with atomic_path(outdir / f"{stem}.nii.gz") as tmp:
                sitk.WriteImage(slice_geometry_image(scan, k, hm.dp[i].astype(np.float32)), str(tmp))
            overlay_png(scan.hu[k], hm.dp[i], hm.lung, outdir / f"{stem}.png",
                        title=f"{name} {p}: S-Net {hm.base_scores[i]:.1f} %, z = {scan.z_mm(k):.1f} mm",
                        spacing_yx=(scan.spacing[1], scan.spacing[2]))
            written[name][p] = f"{stem}.nii.gz"
    return written


# --------------------------------------------------------------------------------------------
# calibration of an S-Net's thresholds on validation phantoms
# --------------------------------------------------------------------------------------------
def phantom_level_maps(model, cfg, seeds: Iterable[int], *, size: str = "small", patch_mm: float = 45.0,
                       stride_mm: float = 11.0, extent=None, quiet: bool = True) -> list[tuple[HeatMap, np.ndarray]]:
    """Heat maps of the five level slices of phantoms (truth lungs, lung at the reference aeration as
    :func:`sscild.pipeline.analyze` gives S-Net), with each slice's true lesion labels."""
    from .density import model_scan
    from .phantom import make_phantom
    from .scoring.snet import SNetScorer
    from .util import progress

    extent = extent or (lambda s: float(10 + (s * 23) % 55))
    src = phantom_patch_source()
    out = []
    for s in progress(list(seeds), "phantom heat maps", quiet=quiet):
        scan, truth = make_phantom(int(s), size=size, extent=extent(int(s)))
        scan = model_scan(scan, truth.lungs > 0)[1]
        ks = {n: scan.slice_at_z(z) for n, z in truth.levels_z.items()}
        ks = {n: k for n, k in ks.items() if k is not None and truth.lungs[k].any()}
        sl = {n: (scan.hu[k].astype(np.float32), truth.lungs[k] > 0) for n, k in ks.items()}
        scorer = SNetScorer(model, cfg, pixel_mm=float(scan.spacing[1]))
        maps = heatmaps(sl, scorer, spacing_mm=float(scan.spacing[1]), patch_mm=patch_mm, stride_mm=stride_mm,
                        source=src, seed=int(s))
        out += [(maps[n], np.where(truth.lungs[k] > 0, truth.lesions[k], 0)) for n, k in ks.items()]
    return out


def calibrate_thresholds(weights_dir=None, seeds: Iterable[int] = range(7600, 7615), quiet: bool = True, *,
                         out=None, patch_mm: float = 45.0, stride_mm: float = 11.0,
                         allow_package: bool = False) -> ThresholdFit:
    """Fit the heat-map thresholds of an S-Net (``weights_dir``, default the shipped one) on validation phantoms
    and store them, with the patch and stride they were fitted for, in the card (``heatmap``) of ``out``: the
    bundle is copied there first when ``out`` is another folder; ``out`` defaults to ``weights_dir``. The
    installed package (the shipped S-Net) is only changed with ``allow_package``."""
    import shutil
    from pathlib import Path

    from .bundle import PREDICTIONS_FILE, WEIGHTS_FILE, read_predictions, save_bundle
    from .errors import ConfigError
    from .scoring.snet import DEFAULT_DIR, load_snet

    src = Path(weights_dir) if weights_dir else DEFAULT_DIR
    dst = Path(out) if out else (Path(weights_dir) if weights_dir else None)
    if dst is None:
        raise ConfigError("give --out DIR: thresholds of the shipped S-Net are written to a copy of it, not into "
                          "the installed package")
    model, cfg, card = load_snet(src)
    seeds = list(seeds)
    maps = [m for m, _ in phantom_level_maps(model, cfg, seeds, quiet=quiet, patch_mm=patch_mm,
                                             stride_mm=stride_mm)]
    fit = fit_thresholds(maps)
    heat = {"thresholds": fit.thresholds, "patch_mm": patch_mm, "stride_mm": stride_mm, "r2_validation": fit.r2,
            "fitted_on": f"{len(maps)} level slices of phantoms seeds {min(seeds)}-{max(seeds)}"}
    if dst.resolve() != src.resolve():
        dst.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / WEIGHTS_FILE, dst / WEIGHTS_FILE)
        if (src / PREDICTIONS_FILE).exists():
            shutil.copy2(src / PREDICTIONS_FILE, dst / PREDICTIONS_FILE)
    save_bundle(None, dst, {**card, "heatmap": heat}, predictions=read_predictions(src) or None,
                allow_package=allow_package)
    return fit
