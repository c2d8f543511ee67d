"""Model-free density metrics of the lungs, established for SSc-ILD.

For each region (``whole``, ``right``, ``left``, ``upper``, ``middle``, ``lower``: zones are thirds of the lung
height, from the lowest to the highest lung slice, as :func:`sscild.domain.zone_bounds` rounds them) the metrics
are computed on the lung voxels:

=================  ==========================================================================================
key                meaning
=================  ==========================================================================================
``volume_ml``      lung volume in mL (all lung voxels)
``n_voxels``       lung voxels
``MLA_HU``         mean lung attenuation, of the voxels within -1024..-200 HU (the histogram range)
``SD_HU``          standard deviation of that histogram
``skewness``       skewness of that histogram (scipy.stats.skew, biased estimator)
``kurtosis``       excess kurtosis of that histogram (scipy.stats.kurtosis, Fisher: normal = 0)
``HAA_pct``        high-attenuation area: % of lung voxels within -600..-250 HU
``p10_HU`` ...     percentiles 10, 15, 40, 80 of that histogram (HU)
=================  ==========================================================================================

Keys are stable: other tools read ``density.json`` by them. Values are floats (None when a region is empty).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from . import morph
from .anatomy import Lungs
from .domain import ZONES, LungLabel, zone_bounds
from .scan import CTScan

HIST_RANGE = (-1024.0, -200.0)
HAA_RANGE = (-600.0, -250.0)
PERCENTILES = (10, 15, 40, 80)
REGIONS = ("whole", "right", "left") + ZONES


@dataclass(frozen=True)
class DensityMetrics:
    """Density metrics per region; see the module docstring for the keys."""

    regions: dict[str, dict[str, float | None]]

    def to_dict(self) -> dict[str, Any]:
        return {"histogram_range_HU": list(HIST_RANGE), "HAA_range_HU": list(HAA_RANGE), **self.regions}


def metrics_of(values: np.ndarray, voxel_ml: float) -> dict[str, float | None]:
    """Metrics of the HU values of one region's lung voxels.

    Examples
    --------
    >>> m = metrics_of(np.array([-900, -800, -500, -300, -100]), 1.0)
    >>> m["HAA_pct"], m["MLA_HU"]
    (40.0, -625.0)
    """
    v = np.asarray(values).ravel()
    vals, counts = value_counts(v)
    return metrics_from_counts(vals, counts, v.size, voxel_ml)


def value_counts(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct values (float64, ascending) and how often each occurs; integer data by a bincount (no sort).

    >>> value_counts(np.array([3, -1, 3]))
    (array([-1.,  3.]), array([1, 2]))
    """
    v = np.asarray(values).ravel()
    if v.size == 0:
        return np.zeros(0), np.zeros(0, np.int64)
    if not np.issubdtype(v.dtype, np.integer):
        return np.unique(v.astype(np.float64), return_counts=True)
    lo = int(v.min())
    counts = np.bincount(v.astype(np.int64) - lo)
    nz = np.flatnonzero(counts)
    return (nz + lo).astype(np.float64), counts[nz]


def metrics_from_counts(vals: np.ndarray, counts: np.ndarray, n_all: int, voxel_ml: float
                        ) -> dict[str, float | None]:
    """:func:`metrics_of` from a histogram: distinct HU ``vals`` (ascending) with their ``counts``, of a region of
    ``n_all`` voxels. The moments are the same sums over the voxels grouped by value (equal to scipy's to ~1e-12
    relative), the percentiles numpy's linear method to the bit."""
    out: dict[str, float | None] = {"volume_ml": float(n_all * voxel_ml), "n_voxels": float(n_all)}
    sel = (vals >= HIST_RANGE[0]) & (vals <= HIST_RANGE[1])
    x, c = np.asarray(vals, np.float64)[sel], np.asarray(counts, np.int64)[sel]
    n = int(c.sum())
    if n < 2:
        out.update({k: None for k in ("MLA_HU", "SD_HU", "skewness", "kurtosis", "HAA_pct")})
        out.update({f"p{p}_HU": None for p in PERCENTILES})
        return out
    mean = float(np.dot(c, x)) / n
    d = x - mean
    m2, m3, m4 = (float(np.dot(c, d ** k)) / n for k in (2, 3, 4))
    flat = m2 <= (np.finfo(np.float64).eps * mean) ** 2          # scipy's rule: no shape of a constant histogram
    out["MLA_HU"] = mean
    out["SD_HU"] = float(np.sqrt(m2 * n / (n - 1)))
    out["skewness"] = float("nan") if flat else m3 / m2 ** 1.5
    out["kurtosis"] = float("nan") if flat else m4 / m2 ** 2 - 3.0
    haa = (x >= HAA_RANGE[0]) & (x <= HAA_RANGE[1])
    out["HAA_pct"] = float(int(c[haa].sum()) * 100.0 / n_all)
    for p, q in zip(PERCENTILES, _weighted_percentiles(x, c, PERCENTILES)):
        out[f"p{p}_HU"] = float(q)
    return out


def integer_percentiles(values: np.ndarray, percentiles) -> np.ndarray:
    """``np.percentile(values, percentiles)`` (linear method, to the bit) for integer-valued data, from counts.

    HU values are integers, so the order statistics follow from a histogram without sorting millions of voxels.

    Examples
    --------
    >>> v = np.array([-900.0, -800.0, -500.0, -300.0, -100.0])
    >>> integer_percentiles(v, [10, 50]).tolist() == np.percentile(v, [10, 50]).tolist()
    True
    """
    v = np.asarray(values)
    return _weighted_percentiles(*value_counts(v.astype(np.int64) if v.size else v), percentiles)


def _weighted_percentiles(vals: np.ndarray, counts: np.ndarray, percentiles) -> np.ndarray:
    """numpy's linear-method percentiles of the data that holds ``counts[i]`` copies of ``vals[i]`` (ascending)."""
    cum = np.cumsum(counts)
    n = int(cum[-1])

    def order_stat(i: np.ndarray) -> np.ndarray:     # the i-th smallest value (0-based)
        return np.asarray(vals, np.float64)[np.searchsorted(cum, i, side="right")]

    # numpy's linear method: virtual index q * (n - 1), then a lerp that is exact at both ends
    virtual = (np.asarray(percentiles, np.float64) / 100) * (n - 1)
    prev = np.floor(virtual)
    gamma = virtual - prev
    a = order_stat(prev.astype(np.int64))
    b = order_stat(np.minimum(prev.astype(np.int64) + 1, n - 1))
    diff = b - a
    return np.where(gamma >= 0.5, b - diff * (1 - gamma), a + diff * gamma)


#: The HU of the bins of :func:`hu_histograms`: every integer HU of :data:`HIST_RANGE` and one bin below and one
#: above it (the voxels outside the histogram range, counted for volumes and HAA).
HIST_VALUES = np.arange(int(HIST_RANGE[0]) - 1, int(HIST_RANGE[1]) + 2).astype(np.float64)


def hu_histograms(hu: np.ndarray, group: np.ndarray, n_groups: int) -> np.ndarray:
    """(n_groups, len(HIST_VALUES)) voxel counts of integer HU per group; ``hu`` and ``group`` are the voxels' HU
    and group index (0..n_groups-1). HU that are not integers (a CTScan holds int16) are rounded first.
    ``metrics_from_counts(HIST_VALUES, row, row.sum(), voxel_ml)`` then equals :func:`metrics_of` of a group."""
    h = np.asarray(hu)
    if not np.issubdtype(h.dtype, np.integer):
        h = np.rint(h)
    nb = len(HIST_VALUES)
    b = np.clip(h, HIST_VALUES[0], HIST_VALUES[-1]).astype(np.int64) - int(HIST_VALUES[0])
    idx = np.asarray(group, np.int64) * nb + b
    return np.bincount(idx, minlength=n_groups * nb).reshape(n_groups, nb)


def metrics_of_histogram(counts: np.ndarray, voxel_ml: float) -> dict[str, float | None]:
    """:func:`metrics_of` of one row of :func:`hu_histograms`."""
    return metrics_from_counts(HIST_VALUES, counts, int(np.sum(counts)), voxel_ml)


def density_metrics(scan: CTScan, lungs: Lungs) -> DensityMetrics:
    """Density metrics of the whole lung, each lung and each zone (:func:`sscild.domain.zone_bounds`).

    One histogram per lung and zone (:func:`hu_histograms`); the regions are sums of them.

    Examples
    --------
    >>> from sscild.phantom import make_phantom
    >>> scan, truth = make_phantom(0, extent=10, shape=(60, 96, 96), spacing=(4.0, 3.6, 3.6))
    >>> m = density_metrics(scan, Lungs(truth.lungs, truth.airways))
    >>> sorted(m.regions) == sorted(REGIONS), m.regions["whole"]["n_voxels"] == float((truth.lungs > 0).sum())
    (True, True)
    """
    lab = lungs.labels
    m = lab > 0
    zone = np.zeros(len(lab), np.int64)               # per slice: its zone's index in ZONES
    bounds = zone_bounds(m)
    for i, name in enumerate(ZONES):
        a, b = bounds.get(name, (0, 0))
        zone[a:b] = i
    side = lab[m]
    code = np.select([side == LungLabel.RIGHT, side == LungLabel.LEFT], [1, 2], 0) * len(ZONES) \
        + np.repeat(zone, np.count_nonzero(m.reshape(len(m), -1), axis=1))
    hist = hu_histograms(scan.hu[m], code, 3 * len(ZONES)).reshape(3, len(ZONES), -1)   # side x zone x HU
    rows = {"whole": hist.sum(axis=(0, 1)), "right": hist[1].sum(axis=0), "left": hist[2].sum(axis=0),
            **{name: hist[:, i].sum(axis=0) for i, name in enumerate(ZONES)}}
    return DensityMetrics({k: metrics_of_histogram(rows[k], scan.voxel_volume_ml) for k in REGIONS})


# --------------------------------------------------------------------------------------------
# aeration: the scan's own best-aerated lung as the reference of the learned stages
# --------------------------------------------------------------------------------------------
#: 10th percentile of lung HU (after a 2 mm in-plane Gaussian) of a well-inflated healthy lung at full inspiration
AERATION_REFERENCE_HU = -880.0
#: the largest shift applied: beyond it the lung is not under-inflated but diseased or not lung
AERATION_MAX_SHIFT_HU = 150.0


@dataclass(frozen=True)
class Aeration:
    """How inflated the lungs are: ``p10_hu`` is the 10th percentile of the lung's HU after a 2 mm in-plane
    Gaussian (the best-aerated tenth of the lung, beyond the kernel's noise); ``shift_hu`` (>= 0) is what the
    learned stages subtract from lung voxels so that this tenth sits at :data:`AERATION_REFERENCE_HU`.

    A shallow breath-hold, free breathing (the CT of a PET/CT) or an expiratory scan raises the density of all the
    parenchyma by up to ~150 HU, which a density-trained model takes for ground glass; ILD rarely spares less than
    a tenth of the lung, so the best-aerated tenth is normal lung whose density says how inflated the lung is.
    Density metrics (HAA, MLA, ...) stay on the original HU.
    """

    p10_hu: float
    shift_hu: float

    def note(self) -> str | None:
        if self.shift_hu <= 0:
            return None
        return (f"lung under-inflated or very smoothed: its best-aerated tenth is at {self.p10_hu:.0f} HU (a full "
                f"inspiration is at about {AERATION_REFERENCE_HU:.0f} HU); the learned stages saw lung voxels "
                f"{self.shift_hu:.0f} HU lower; density metrics use the original HU")


def aeration(hu: np.ndarray, lung: np.ndarray, pixel_mm: float) -> Aeration:
    """:class:`Aeration` of a volume or stack of slices (z, y, x) with its lung mask and in-plane pixel size.

    Examples
    --------
    >>> import numpy as np
    >>> lung = np.zeros((4, 40, 40), bool); lung[:, 5:35, 5:35] = True
    >>> hu = np.where(lung, -760.0, 40.0)
    >>> a = aeration(hu, lung, 1.0)
    >>> round(a.p10_hu), round(a.shift_hu)
    (-760, 120)
    >>> aeration(hu - 200, lung, 1.0).shift_hu
    0.0
    """
    from scipy import ndimage as ndi

    lung = np.asarray(lung, bool)
    ks = np.flatnonzero(lung.any(axis=(1, 2)))
    if ks.size == 0:
        return Aeration(float("nan"), 0.0)
    # at most 32 lung slices, on a grid of about 1.5 mm: a percentile of the whole lung does not need every voxel
    ks = ks[np.unique(np.linspace(0, ks.size - 1, min(ks.size, 32)).round().astype(int))]
    f = max(1, int(round(1.5 / max(float(pixel_mm), 1e-3))))
    h, w = (lung.shape[1] // f) * f, (lung.shape[2] // f) * f
    img = np.asarray(hu[ks], np.float32)[:, :h, :w].reshape(len(ks), h // f, f, w // f, f).mean(axis=(2, 4))
    lu = lung[ks][:, :h, :w].reshape(len(ks), h // f, f, w // f, f).mean(axis=(2, 4)) >= 0.5
    px = float(pixel_mm) * f
    # erode by ~3 mm in-plane so the chest wall and mediastinum do not bleed into the smoothed lung border
    inner = morph.erode(lu, max(1, int(round(3.0 / px))), axes=(1, 2), box=True)
    sel = inner if inner.sum() >= 0.2 * lu.sum() else lu
    if not sel.any():
        return Aeration(float("nan"), 0.0)
    sm = ndi.gaussian_filter(img, (0, 2.0 / px, 2.0 / px))[sel]
    p10 = float(np.percentile(sm, 10))
    return Aeration(p10, float(np.clip(p10 - AERATION_REFERENCE_HU, 0.0, AERATION_MAX_SHIFT_HU)))


def normalise_aeration(hu: np.ndarray, lung: np.ndarray, a: Aeration) -> np.ndarray:
    """``hu`` (float32) with ``a.shift_hu`` subtracted inside the lung mask (the input the learned stages see)."""
    out = np.asarray(hu, np.float32)
    if a.shift_hu <= 0:
        return out
    return np.where(np.asarray(lung, bool), out - np.float32(a.shift_hu), out).astype(np.float32)


def model_scan(scan: CTScan, lung: np.ndarray) -> tuple[Aeration, CTScan]:
    """The scan as the learned stages see it: its :class:`Aeration` and the scan with the lung voxels (``lung``,
    a mask) shifted to the reference aeration (the same scan when no shift is needed)."""
    a = aeration(scan.hu, lung, float(scan.spacing[1]))
    if a.shift_hu <= 0:
        return a, scan
    hu = np.clip(np.round(normalise_aeration(scan.hu, lung, a)), -32768, 32767).astype(scan.hu.dtype)
    return a, replace(scan, hu=hu)
