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

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

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
    v = np.asarray(values, np.float64).ravel()
    out: dict[str, float | None] = {"volume_ml": float(v.size * voxel_ml), "n_voxels": float(v.size)}
    h = v[(v >= HIST_RANGE[0]) & (v <= HIST_RANGE[1])]
    if h.size < 2:
        out.update({k: None for k in ("MLA_HU", "SD_HU", "skewness", "kurtosis", "HAA_pct")})
        out.update({f"p{p}_HU": None for p in PERCENTILES})
        return out
    out["MLA_HU"] = float(h.mean())
    out["SD_HU"] = float(h.std(ddof=1))
    out["skewness"] = float(stats.skew(h))
    out["kurtosis"] = float(stats.kurtosis(h, fisher=True))
    out["HAA_pct"] = float(((v >= HAA_RANGE[0]) & (v <= HAA_RANGE[1])).sum() * 100.0 / v.size)
    for p, q in zip(PERCENTILES, integer_percentiles(h, PERCENTILES)):
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
    lo = int(v.min())
    cum = np.cumsum(np.bincount((v - lo).astype(np.int64)))
    n = int(cum[-1])

    def order_stat(i: np.ndarray) -> np.ndarray:     # the i-th smallest value (0-based)
        return (np.searchsorted(cum, i, side="right") + lo).astype(np.float64)

    # numpy's linear method: virtual index q * (n - 1), then a lerp that is exact at both ends
    virtual = (np.asarray(percentiles, np.float64) / 100) * (n - 1)
    prev = np.floor(virtual)
    gamma = virtual - prev
    a = order_stat(prev.astype(np.int64))
    b = order_stat(np.minimum(prev.astype(np.int64) + 1, n - 1))
    diff = b - a
    return np.where(gamma >= 0.5, b - diff * (1 - gamma), a + diff * gamma)


def density_metrics(scan: CTScan, lungs: Lungs) -> DensityMetrics:
    """Density metrics of the whole lung, each lung and each zone (:func:`sscild.domain.zone_bounds`).

    Examples
    --------
    >>> from sscild.phantom import make_phantom
    >>> scan, truth = make_phantom(0, extent=10, shape=(60, 96, 96), spacing=(4.0, 3.6, 3.6))
    >>> m = density_metrics(scan, Lungs(truth.lungs, truth.airways))
    >>> sorted(m.regions) == sorted(REGIONS), m.regions["whole"]["n_voxels"] == float((truth.lungs > 0).sum())
    (True, True)
    """
    lab = lungs.labels
    vox = scan.voxel_volume_ml
    regions: dict[str, dict[str, float | None]] = {
        "whole": metrics_of(scan.hu[lab > 0], vox),
        "right": metrics_of(scan.hu[lab == LungLabel.RIGHT], vox),
        "left": metrics_of(scan.hu[lab == LungLabel.LEFT], vox)}
    zones = zone_bounds(lab > 0)
    for name in ZONES:
        a, b = zones.get(name, (0, 0))
        regions[name] = metrics_of(scan.hu[a:b][lab[a:b] > 0], vox)
    return DensityMetrics({k: regions[k] for k in REGIONS})
