"""Scan quality checks from the image itself: calibration, coverage, resolution, sharpness, noise, inspiration,
orientation. Each failed check is a warning that says what it affects.

``quality_checks(scan, lungs)`` measures:

- tracheal air HU (expect about -1000: the scanner's air calibration, on which HAA and mean lung attenuation rest);
- blood-pool HU (the heart and great vessels between the lungs; 20-70 HU without contrast, higher with it);
- coverage (lung apex and base inside the scan range, from ``lungs.cut_off``);
- slice thickness and spacing (thick or gapped slices blur fine reticulation and shift the levels);
- kernel sharpness estimated from the image: the width of the body's skin edge (rise / steepest slope, mm);
- noise: the SD in the air outside the body and in soft tissue (local SD, corrected for a 3x3 window);
- inspiration proxy: lung share of the chest cross-section at the widest lung slice, and the lung volume;
- orientation sanity: head up (the airways above the lungs' middle, the lung bases ringing the domes).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from . import morph
from .anatomy import Lungs, _bbox, _body_mask, _downsample, _inplane_factor
from .errors import NoLungsError
from .scan import CTScan


@dataclass(frozen=True)
class QualityReport:
    """Measured quality figures and the warnings they raise.

    Attributes
    ----------
    measures : dict name -> value (float, bool, str or None when it could not be measured)
    warnings : list of str, each saying what failed and what it affects
    notes : dict name -> how a figure was measured
    """

    measures: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.warnings

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        conv = {k: (None if v is None else (v if isinstance(v, (bool, str)) else float(v)))
                for k, v in self.measures.items()}
        return {"measures": conv, "warnings": list(self.warnings), "notes": dict(self.notes), "ok": self.ok}


def _tracheal_air(scan: CTScan, lungs: Lungs) -> float | None:
    """Median HU of the airway lumen away from its wall (eroded by ~2 mm)."""
    if not lungs.airways.any():
        return None
    it = max(1, int(round(2.0 / scan.spacing[1])))
    box = _bbox(lungs.airways, margin=0)              # erosion only shrinks the mask: the same result in its box
    air = lungs.airways[box]
    core = morph.erode(air, it, axes=(1, 2))
    vals = scan.hu[box][core if core.sum() >= 20 else air]
    return float(np.median(vals))


def _blood_pool(scan: CTScan, lungs: Lungs) -> float | None:
    """The most common HU in -20..600 of the tissue between the two lungs in the lower-middle lung slices (the heart
    and great vessels' blood: fat is below -20, bone is rarer)."""
    lab = lungs.labels
    zs = np.nonzero(lab.any(axis=(1, 2)))[0]
    if len(zs) < 3 or not (lab == 1).any() or not (lab == 2).any():
        return None
    k0, k1 = int(zs.min() + 0.25 * (zs.max() - zs.min())), int(zs.min() + 0.6 * (zs.max() - zs.min())) + 1
    cols = np.arange(scan.shape[2])
    xr = np.nonzero((lab[k0:k1] == 1).any(axis=(0, 1)))[0].mean()
    xl = np.nonzero((lab[k0:k1] == 2).any(axis=(0, 1)))[0].mean()
    sub = scan.hu[k0:k1][:, :, (cols > xr) & (cols < xl)]
    vals = sub[(sub > -20) & (sub < 600)]
    if vals.size < 100:
        return None
    counts = np.bincount((vals.astype(np.int64) + 20) // 10)
    counts = np.convolve(counts, np.ones(3), mode="same")
    return float(np.argmax(counts) * 10 - 20 + 5)


def _edge_width(scan: CTScan, body: _CoarseMask) -> float | None:
    """Width (mm) of the skin's air-to-tissue edge along x, as (rise) / (steepest slope), which is the 10-90 %
    width of a Gaussian-blurred step; median over the body's outline in the middle slices: ~1 mm or less for
    sharp (lung) kernels, 1.5-3 mm for smooth ones."""
    nz = scan.shape[0]
    widths = []
    for k in range(nz // 3, 2 * nz // 3 + 1, max(1, nz // 12)):
        bk = body[k]
        rows = np.nonzero(bk.any(axis=1))[0]
        for y in rows[len(rows) // 4: 3 * len(rows) // 4: max(1, len(rows) // 20)]:
            xs = np.nonzero(bk[y])[0]
            if len(xs) < 20:
                continue
            for x0, step in ((xs.min(), 1), (xs.max(), -1)):
                idx = np.clip(np.arange(x0 - 12 * step, x0 + 12 * step, step), 0, scan.shape[2] - 1)
                prof = scan.hu[k, y, idx].astype(np.float64)
                grad = np.gradient(prof)
                i = int(np.argmax(grad))
                if not 4 <= i < len(prof) - 4:
                    continue
                rise = float(np.median(prof[i + 2: i + 5]) - np.median(prof[max(i - 6, 0): i - 2]))
                if rise < 500 or grad[i] <= 0:
                    continue
                widths.append(rise / grad[i] * scan.spacing[2])
    return float(np.median(widths)) if len(widths) >= 10 else None


def _noise(scan: CTScan, body: _CoarseMask) -> tuple[float | None, float | None]:
    """Noise SD (HU) in the air outside the body and in soft tissue: the median local SD in 3x3 in-plane windows,
    scaled by sqrt(9/8) (a 3x3 window's SD of white noise is sqrt(8/9) of the true SD)."""
    k = np.linspace(scan.shape[0] * 0.3, scan.shape[0] * 0.7, 5).astype(int)
    hu = scan.hu[k].astype(np.float32)
    m = ndi.uniform_filter(hu, size=(1, 3, 3))
    sd = np.sqrt(np.maximum(ndi.uniform_filter(hu * hu, size=(1, 3, 3)) - m * m, 0)) * np.sqrt(9 / 8)
    far = ~morph.dilate(body[k], 8, axes=(1, 2), box=True)
    air = far & (m > -1020) & (m < -900) & (hu > -1023)
    soft = morph.erode(body[k], 3, axes=(1, 2), box=True) & (m > 0) & (m < 100)
    flat = morph.erode(soft, 2, axes=(1, 2), box=True)
    out_air = float(np.median(sd[air])) if air.sum() > 200 else None
    out_soft = float(np.median(sd[flat])) if flat.sum() > 200 else None
    return out_air, out_soft


def _inspiration(scan: CTScan, lungs: Lungs, body: _CoarseMask) -> float | None:
    """Lung share (0-1) of the body's cross-section at the slice with the largest lung area."""
    area = lungs.mask.sum(axis=(1, 2))
    if area.max() == 0:
        return None
    k = int(np.argmax(area))
    return float(area[k] / max(int(body[k].sum()), 1))


def _fill(mask2d: np.ndarray) -> float:
    """Share of the mask's bounding box that the mask fills (a ring around a dome fills little, an apex much)."""
    ys, xs = np.nonzero(mask2d)
    if len(ys) == 0:
        return np.nan
    return len(ys) / float((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))


def _head_up(scan: CTScan, lungs: Lungs) -> tuple[bool | None, str]:
    """Whether the head is up (toward larger z): the lung bases ring the diaphragm domes (they fill less of their
    box than the apices do), and the trachea lies in the upper half of the lungs."""
    zs = np.nonzero(lungs.mask.any(axis=(1, 2)))[0]
    if len(zs) < 6:
        return None, "too few lung slices"
    n = max(1, len(zs) // 5)
    fills = {}
    for end, ks in (("base", zs[:n]), ("apex", zs[-n:])):
        fills[end] = float(np.nanmean([_fill(lungs.labels[k] == v) for k in ks for v in (1, 2)]))
    votes = [fills["base"] < fills["apex"]]
    why = f"lower lung slices fill {100 * fills['base']:.0f} % of their box, upper ones {100 * fills['apex']:.0f} %"
    if lungs.airways.any():
        az = np.nonzero(lungs.airways.any(axis=(1, 2)))[0]
        arel = float((az.mean() - zs.min()) / max(zs.max() - zs.min(), 1))
        votes.append(arel > 0.5)
        why += f"; airways at {100 * arel:.0f} % of the lung height"
    if all(votes):
        return True, why
    if not any(votes):
        return False, why
    return None, why + " (the cues disagree)"


@dataclass(frozen=True)
class _CoarseMask:
    """A mask on the working grid of ``f`` x ``f`` pixel blocks; ``mask[k]`` (one slice or an index array) gives
    those slices at full resolution (each block repeated, False past the last whole block), so only the few slices
    the checks look at are enlarged."""

    coarse: np.ndarray
    f: int
    shape: tuple[int, int, int]

    def __getitem__(self, k) -> np.ndarray:
        b = self.coarse[k]
        up = np.repeat(np.repeat(b, self.f, axis=-2), self.f, axis=-1) if self.f > 1 else b
        out = np.zeros(b.shape[:-2] + tuple(self.shape[1:]), bool)
        out[..., : up.shape[-2], : up.shape[-1]] = up
        return out


def _coarse_body(scan: CTScan, lungs: Lungs | None = None) -> _CoarseMask:
    """The body outline on the lungs' working grid: the one the lung segmentation found, else found here."""
    f = _inplane_factor(scan)
    grid = (scan.shape[0], scan.shape[1] // f, scan.shape[2] // f)
    if lungs is not None and lungs.body is not None and lungs.body.shape == grid:
        return _CoarseMask(lungs.body, f, scan.shape)
    lo = _downsample(scan.hu, f)
    return _CoarseMask(_body_mask(lo, (scan.spacing[0], scan.spacing[1] * f, scan.spacing[2] * f)), f, scan.shape)


def quality_checks(scan: CTScan, lungs: Lungs) -> QualityReport:
    """Measure the scan's quality from the image and list what fails and what that affects.

    Parameters
    ----------
    scan : CTScan
        The chest CT whose calibration, coverage, resolution, sharpness, noise and orientation are measured.
    lungs : Lungs
        Its lung and airway masks (as :func:`sscild.anatomy.segment_lungs` makes them): the trachea gives the air
        calibration, the space between the lungs the blood pool, ``lungs.cut_off`` the coverage.

    Returns
    -------
    QualityReport
        ``measures`` (one figure per check, None where it could not be measured), ``warnings`` (each naming what
        failed and the results it affects; empty when all passed) and ``notes`` (how figures were measured).

    Raises
    ------
    NoLungsError
        If the lung mask holds no voxel: the checks need the lungs and the trachea.

    Examples
    --------
    A healthy phantom passes the orientation check and its tracheal air reads about -1000 HU:

    >>> from sscild.phantom import make_phantom
    >>> from sscild.anatomy import segment_lungs
    >>> ct, _ = make_phantom(0, extent=0)
    >>> report = quality_checks(ct, segment_lungs(ct))
    >>> report.measures["head_up"], -1100 < report.measures["tracheal_air_hu"] < -900
    (True, True)
    """
    if not lungs.mask.any():
        raise NoLungsError("no lungs to check the scan's quality on: the lung mask is empty")
    body = _coarse_body(scan, lungs)
    up, why = _head_up(scan, lungs)
    m: dict[str, Any] = {}
    w: list[str] = []
    for measures, warnings in (_calibration(scan, lungs), _coverage(scan, lungs), _sharpness_and_noise(scan, body),
                               _filling(scan, lungs, body)):
        m.update(measures)
        w += warnings
    m["head_up"] = up
    if up is False:
        w.append(f"the scan looks upside down ({why}): the slice order may be reversed; levels and zones are wrong")
    notes = {"edge_width_mm": "skin edge along x: rise / steepest slope (= 10-90 % width of a blurred step)", "orientation": why,
             "noise": "median local SD in 3x3 windows x sqrt(9/8); air noise is low when the scanner clips air at "
                      "-1024", "blood_pool_hu": "most common HU of the tissue between the lungs (heart, vessels)"}
    return QualityReport(m, w, notes)


def _calibration(scan: CTScan, lungs: Lungs) -> tuple[dict[str, Any], list[str]]:
    """Tracheal air and blood pool: is the HU scale right, and is there contrast?"""
    m: dict[str, Any] = {"tracheal_air_hu": _tracheal_air(scan, lungs)}
    w: list[str] = []
    if m["tracheal_air_hu"] is not None and not -1050 <= m["tracheal_air_hu"] <= -950:
        w.append(f"tracheal air is {m['tracheal_air_hu']:.0f} HU, not about -1000: the HU calibration (or a "
                 "partial-volume trachea) is off; HAA, mean lung attenuation and the density thresholds are affected")
    m["blood_pool_hu"] = _blood_pool(scan, lungs)
    m["contrast"] = None if m["blood_pool_hu"] is None else bool(m["blood_pool_hu"] > 120)
    if m["blood_pool_hu"] is not None and not 20 <= m["blood_pool_hu"] <= 600:
        w.append(f"blood pool at {m['blood_pool_hu']:.0f} HU (expected 20-70 HU, or higher with contrast): the HU "
                 "calibration may be off; density metrics are affected")
    return m, w


def _coverage(scan: CTScan, lungs: Lungs) -> tuple[dict[str, Any], list[str]]:
    """Lung apex and base inside the scan range; slice spacing and thickness."""
    m: dict[str, Any] = {"apex_in_scan": not lungs.cut_off.get("apex", False),
                         "base_in_scan": not lungs.cut_off.get("base", False)}
    w = [f"the lung {end} is cut off by the scan range: {lv} and whole-lung extents are affected"
         for end, lv in (("apex", "L1 and the upper zone"), ("base", "L4/L5 (the dome) and the lower zone"))
         if not m[f"{end}_in_scan"]]
    m["slice_spacing_mm"] = float(scan.spacing[0])
    thick = scan.meta.get("slice_thickness_mm")
    m["slice_thickness_mm"] = float(thick) if thick else None
    if scan.spacing[0] > 3.0:
        w.append(f"slices {scan.spacing[0]:.1f} mm apart (HRCT: <= 1.5-2 mm): fine reticulation and ground glass are "
                 "blurred between slices and the levels can be off by half a slice")
    if thick and float(thick) < scan.spacing[0] - 0.1:
        w.append(f"gaps between slices (thickness {float(thick):.1f} mm < spacing {scan.spacing[0]:.1f} mm): "
                 "volumes are interpolated and small lesions can be missed")
    return m, w


def _sharpness_and_noise(scan: CTScan, body: _CoarseMask) -> tuple[dict[str, Any], list[str]]:
    """Reconstruction kernel from the skin edge's width; noise in air and soft tissue."""
    m: dict[str, Any] = {"edge_width_mm": _edge_width(scan, body)}
    w: list[str] = []
    if m["edge_width_mm"] is not None and m["edge_width_mm"] > 2.5:
        w.append(f"smooth reconstruction kernel (skin edge {m['edge_width_mm']:.1f} mm wide): fine reticulation is "
                 "blurred, so RET is underestimated and GG overestimated")
    m["noise_air_hu"], m["noise_soft_tissue_hu"] = _noise(scan, body)
    if m["noise_soft_tissue_hu"] is not None and m["noise_soft_tissue_hu"] > 60:
        w.append(f"noisy image (SD {m['noise_soft_tissue_hu']:.0f} HU in soft tissue): texture-based scores "
                 "(GG/RET, heat maps) and density tails (HAA) are affected")
    return m, w


def _filling(scan: CTScan, lungs: Lungs, body: _CoarseMask) -> tuple[dict[str, Any], list[str]]:
    """Lung volume and the lungs' share of the chest section (a proxy of inspiration)."""
    m: dict[str, Any] = {"lung_volume_ml": float(lungs.volume_ml(scan)["total"]),
                         "lung_share_of_chest": _inspiration(scan, lungs, body)}
    w: list[str] = []
    if m["lung_share_of_chest"] is not None and m["lung_share_of_chest"] < 0.35:
        w.append(f"shallow inspiration (the lungs fill {100 * m['lung_share_of_chest']:.0f} % of the chest section, "
                 "expect >= 35 %): dependent lung is denser, so GG extent and HAA are overestimated")
    return m, w
