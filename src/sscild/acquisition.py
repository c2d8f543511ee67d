"""An acquisition model: what a different scanner, kernel, slice and dose would have made of the same chest.

Training and test data for the learned stages are real volumes (with or without inserted patterns) passed
through :func:`simulate`, which applies, in this order, to the image and to its label fractions together:

1. breath-hold: a shallower inspiration (free breathing, the CT of a PET/CT) raises the density of the whole
   lung parenchyma by up to ~150 HU; gravity: dependent density (0 to 260 HU at the dependent border, reaching
   20-60 mm in, the stronger the deeper) in each lung, posterior for a supine and anterior for a prone patient (the
   labels stay "normal": hard negatives); the real scans of ../shared/data hold +40 to +80 HU at the border, the
   PET/CT of a free-breathing patient +235 HU with +55 HU still 30-50 mm in;
2. the reconstruction kernel in-plane, as a Gaussian MTF (smooth kernels) or an unsharp mask (sharp kernels);
3. quantum noise, Gaussian with a correlation length (noise grain) of its own;
4. the slice profile along z (Gaussian of the requested FWHM, combined with the native one) and the slice
   interval (contiguous, or sparse HRCT: 1 mm every 10 mm);
5. the pixel size (bilinear for the image, area fractions for the labels).

A real scan already carries its own acquisition, so slices can only get thicker and pixels larger than the
native ones; a sharper kernel is approximated by unsharp masking (it adds edge overshoot and noise, as a real
sharp kernel does). Labels are carried as per-class fractions and thresholded at 0.5 at the end, so the exact
scores of a simulated slice are those of what a reader would see on it.

Examples
--------
>>> import numpy as np
>>> from sscild.acquisition import Acquisition, simulate
>>> hu = np.full((20, 32, 32), -850.0, np.float32); lung = np.ones(hu.shape, bool)
>>> acq = Acquisition(slice_thickness_mm=5.0, slice_interval_mm=5.0, pixel_mm=2.0)
>>> out = simulate(hu, (1.0, 1.0, 1.0), acq, np.random.default_rng(0), lung=lung)
>>> out.hu.shape, out.spacing
((4, 16, 16), (5.0, 2.0, 2.0))
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from .domain import LesionClass

_FWHM = 2.0 * np.sqrt(2.0 * np.log(2.0))


@dataclass(frozen=True)
class Acquisition:
    """One simulated acquisition (all lengths in mm, HU for densities).

    ``kernel_mm`` > 0 smooths in-plane (Gaussian sigma); ``sharpen`` > 0 adds an unsharp mask of that amount
    (sharp kernels); ``noise_hu`` is the added noise SD and ``noise_grain_mm`` its correlation length;
    ``dependent_hu`` the gravity-dependent density added at the dependent lung border, fading over
    ``dependent_depth_mm``; ``aeration_hu`` the
    density added to all lung parenchyma by a shallower inspiration.
    """

    slice_thickness_mm: float = 1.0
    slice_interval_mm: float = 1.0
    pixel_mm: float = 0.7
    kernel_mm: float = 0.0
    sharpen: float = 0.0
    noise_hu: float = 0.0
    noise_grain_mm: float = 0.5
    prone: bool = False
    dependent_hu: float = 0.0
    dependent_depth_mm: float = 25.0
    aeration_hu: float = 0.0

    def describe(self) -> str:
        k = f"sharpen {self.sharpen:.1f}" if self.sharpen > 0 else f"smooth {self.kernel_mm:.1f} mm"
        return (f"{self.slice_thickness_mm:.1f} mm every {self.slice_interval_mm:.1f} mm, {self.pixel_mm:.2f} mm "
                f"pixels, {k}, noise {self.noise_hu:.0f} HU, {'prone' if self.prone else 'supine'}"
                + (f", lung +{self.aeration_hu:.0f} HU (shallow inspiration)" if self.aeration_hu > 0 else ""))


@dataclass(frozen=True)
class Simulated:
    """A simulated volume (z, y, x) with its spacing, lung mask and lesion labels (0 outside, 1 normal, 2 GG,
    3 RET) on the new grid."""

    hu: np.ndarray
    spacing: tuple[float, float, float]
    lung: np.ndarray | None
    labels: np.ndarray | None


#: HU: the strongest gravity-dependent density drawn at the dependent lung border
DEPENDENT_MAX_HU = 260.0


def random_acquisition(rng: np.random.Generator, native_spacing: tuple[float, float, float], *,
                       sparse: float = 0.15, prone: float = 0.15, shallow: float = 0.0) -> Acquisition:
    """A plausible acquisition no finer than the native one: slices 0.6-8 mm (contiguous or, with chance
    ``sparse``, 1 mm every 10 mm), pixels 0.4-1.4 mm, kernels very smooth to very sharp, noise 0-60 HU; with
    chance ``shallow`` a shallow inspiration (lung parenchyma +30..150 HU; drawn last, so 0 keeps the other draws
    of a seed as they were)."""
    dz, dy = float(native_spacing[0]), float(native_spacing[1])
    if rng.random() < sparse and dz <= 2.5:
        th, step = max(1.0, dz), 10.0
    else:
        th = max(dz, float(rng.choice([0.6, 1.0, 1.25, 2.0, 2.5, 3.0, 5.0, 8.0])))
        step = th if rng.random() < 0.8 else max(dz, th * float(rng.uniform(0.5, 1.0)))
    px = max(dy, float(rng.uniform(0.4, 1.4)))
    kind = rng.random()
    kernel, sharpen = (float(rng.uniform(0.3, 1.2)), 0.0) if kind < 0.45 else \
        ((0.0, float(rng.uniform(0.3, 1.5))) if kind < 0.8 else (0.0, 0.0))
    noise, grain, is_prone = float(rng.uniform(0.0, 60.0)), float(rng.uniform(0.3, 1.0)), bool(rng.random() < prone)
    g = float(rng.uniform(0.0, 1.0))          # gravity: one draw sets both, a stronger density reaches deeper
    return Acquisition(slice_thickness_mm=th, slice_interval_mm=step, pixel_mm=px, kernel_mm=kernel,
                       sharpen=sharpen, noise_hu=noise, noise_grain_mm=grain, prone=is_prone,
                       dependent_hu=DEPENDENT_MAX_HU * g ** 1.5, dependent_depth_mm=20.0 + 40.0 * g,
                       aeration_hu=float(rng.uniform(30.0, 150.0)) if shallow > 0 and rng.random() < shallow else 0.0)


def dependent_density(hu: np.ndarray, lung: np.ndarray, spacing, amount_hu: float, *, prone: bool = False,
                      depth_mm: float = 25.0) -> np.ndarray:
    """Add gravity-dependent density: ``amount_hu`` at the dependent lung border, fading over ``depth_mm``.

    The dependent side is posterior (y large in LPS) for a supine patient and anterior for a prone one; only
    parenchyma (< -500 HU) is changed, vessels keep their density.
    """
    if amount_hu <= 0 or lung is None or not lung.any():
        return hu
    ys = np.nonzero(lung.any(axis=(0, 2)))[0]
    edge = (ys.max() if not prone else ys.min()) * spacing[1]
    y_mm = np.arange(hu.shape[1], dtype=np.float32) * spacing[1]
    w = np.exp(-np.abs(edge - y_mm) / (depth_mm / 2.0)).astype(np.float32)[None, :, None]
    add = (amount_hu * w) * (lung & (hu < -500))
    return (hu + add).astype(np.float32)


def apply_kernel(hu: np.ndarray, spacing, kernel_mm: float, sharpen: float) -> np.ndarray:
    """In-plane reconstruction kernel: Gaussian smoothing of sigma ``kernel_mm`` or an unsharp mask."""
    sy, sx = float(spacing[1]), float(spacing[2])
    if kernel_mm > 0:
        return ndi.gaussian_filter(hu, (0, kernel_mm / sy, kernel_mm / sx)).astype(np.float32)
    if sharpen > 0:
        blur = ndi.gaussian_filter(hu, (0, 0.8 / sy, 0.8 / sx))
        return (hu + sharpen * (hu - blur)).astype(np.float32)
    return hu


def add_correlated_noise(hu: np.ndarray, spacing, sd_hu: float, grain_mm: float, rng: np.random.Generator
                         ) -> np.ndarray:
    """Gaussian noise of SD ``sd_hu`` correlated in-plane over ``grain_mm`` (finer grain: sharper kernel)."""
    if sd_hu <= 0:
        return hu
    n = rng.standard_normal(hu.shape, dtype=np.float32)
    sig = grain_mm / float(spacing[1])
    if sig > 0.3:
        n = ndi.gaussian_filter(n, (0, sig, sig))
    return (hu + sd_hu * n / (n.std() + 1e-6)).astype(np.float32)


def _z_resample(vol: np.ndarray, dz: float, thickness: float, interval: float, order: int = 1) -> np.ndarray:
    """Slice profile (Gaussian, FWHM combined with the native ``dz``) then sampling every ``interval`` mm."""
    extra = np.sqrt(max(0.0, thickness ** 2 - dz ** 2)) / _FWHM / dz
    v = ndi.gaussian_filter1d(vol, extra, axis=0) if extra > 0.3 else vol
    n = max(1, int(np.floor((vol.shape[0] - 1) * dz / interval)) + 1)
    pos = np.arange(n) * interval / dz
    lo = np.clip(np.floor(pos).astype(int), 0, vol.shape[0] - 1)
    hi = np.clip(lo + 1, 0, vol.shape[0] - 1)
    if order == 0:
        return v[np.clip(np.round(pos).astype(int), 0, vol.shape[0] - 1)]
    f = (pos - lo).astype(np.float32)[:, None, None]
    return (v[lo] * (1 - f) + v[hi] * f).astype(np.float32)


def _xy_resample(vol: np.ndarray, factor: float, order: int) -> np.ndarray:
    if abs(factor - 1.0) < 1e-3:
        return vol
    return ndi.zoom(vol, (1.0, factor, factor), order=order, prefilter=False)


def _labels_to_fractions(labels: np.ndarray) -> np.ndarray:
    return np.stack([(labels == c).astype(np.float32) for c in (LesionClass.GG, LesionClass.RET)])


def _fractions_to_labels(frac: np.ndarray, lung: np.ndarray) -> np.ndarray:
    gg, ret = frac
    lab = np.where(lung, int(LesionClass.NORMAL), 0).astype(np.uint8)
    les = (gg + ret) >= 0.5
    lab[les & (ret >= gg) & lung] = int(LesionClass.RET)
    lab[les & (gg > ret) & lung] = int(LesionClass.GG)
    return lab


def simulate(hu: np.ndarray, spacing, acq: Acquisition, rng: np.random.Generator, *,
             lung: np.ndarray | None = None, labels: np.ndarray | None = None) -> Simulated:
    """Pass a volume (z, y, x) of HU, its lung mask and lesion labels through the acquisition ``acq``.

    Parameters
    ----------
    hu : (z, y, x) array of HU; spacing : its (dz, dy, dx) in mm
    acq : the acquisition to simulate (:class:`Acquisition`, e.g. from :func:`random_acquisition`)
    lung, labels : optional masks on the same grid (labels 0 outside, 1 normal, 2 GG, 3 RET)

    Returns
    -------
    Simulated
        image, spacing, lung and labels on the new grid (labels by area fraction >= 0.5, RET over GG).
    """
    dz, dy = float(spacing[0]), float(spacing[1])
    v = np.asarray(hu, np.float32)
    if acq.aeration_hu > 0 and lung is not None:
        v = v + acq.aeration_hu * (lung & (v < -500))
    v = dependent_density(v, lung, spacing, acq.dependent_hu, prone=acq.prone, depth_mm=acq.dependent_depth_mm)
    v = apply_kernel(v, spacing, acq.kernel_mm, acq.sharpen)
    v = add_correlated_noise(v, spacing, acq.noise_hu, acq.noise_grain_mm, rng)
    th, step = max(acq.slice_thickness_mm, dz), max(acq.slice_interval_mm, dz)
    factor = dy / max(acq.pixel_mm, dy)
    out = _xy_resample(_z_resample(v, dz, th, step), factor, 1)
    new_sp = (step, dy / factor, float(spacing[2]) / factor)
    lu = lab = None
    if lung is not None:
        lu = _xy_resample(_z_resample(lung.astype(np.float32), dz, th, step), factor, 1) >= 0.5
    if labels is not None and lu is not None:
        fr = np.stack([_xy_resample(_z_resample(f, dz, th, step), factor, 1) for f in _labels_to_fractions(labels)])
        lab = _fractions_to_labels(fr, lu)
    return Simulated(out.astype(np.float32), (round(new_sp[0], 4), round(new_sp[1], 4), round(new_sp[2], 4)),
                     lu, lab)
