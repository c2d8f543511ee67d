"""The five Goh scoring levels from anatomy alone (no model).

Landmarks, each with a confidence and a note saying why when it is low or missing (a landmark outside the scan
is reported as missing, never invented):

- ``carina`` (L2): where the tracked trachea splits into the two main bronchi and stays split for >= 12 mm
  (from :func:`sscild.anatomy.segment_lungs`).
- ``right_dome``: the highest point of the right hemidiaphragm = the highest point of the right lung's lower
  surface, over the columns where the lung ends on the abdomen (lower half of the lung; not within 30 mm of
  its medial edge, where it ends on the heart; median-filtered, 98th percentile, to ignore spurs). L5 = dome + 10 mm.
- ``great_vessel_origin`` (L1): estimated as the top of the aortic arch. Above the carina, in the
  mediastinum (lung outline, or a box round the trachea when the lungs are cut off), the arch is the one vessel
  structure (blood, > -20 HU, bone excluded) that runs from in front of the trachea, round its left side, to
  behind it; the left brachiocephalic vein crosses in front only and the branches are small and round. L1 is the
  top of the highest slice that shows it. Known limit: the brachiocephalic trunk arises where the arch begins,
  which in an unfolded aorta lies 2-3 cm below the arch's top (see bench/RESULTS.md).
- ``venous_confluence`` (L3): the left atrium is the most posterior heart chamber, just in front of the
  esophagus and descending aorta; where the pulmonary veins enter it from both hila it is the widest soft-tissue
  structure crossing the midline in the band 10-32 mm in front of the vertebral bodies (the ventricles lie
  farther forward; the vertebral bodies are the bone behind the trachea, never the sternum or contrast-filled
  blood in front of it). Below the carina, the middle of the slices within 5 % of the widest. Without it a prior (35 mm below the carina) is used, with low
  confidence.
- L4 is halfway between L3 and L5.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from .anatomy import Lungs
from .errors import NoLungsError
from .scan import CTScan

LEVELS = ("L1", "L2", "L3", "L4", "L5")
LANDMARKS = ("great_vessel_origin", "carina", "venous_confluence", "right_dome")


@dataclass(frozen=True)
class Landmark:
    """A landmark's world z (mm, LPS), its slice, a confidence (0..1) and a note."""

    z_mm: float | None
    slice_index: int | None
    confidence: float
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"z_mm": self.z_mm, "slice_index": self.slice_index, "confidence": round(self.confidence, 3),
                "note": self.note}


@dataclass(frozen=True)
class GohLevels:
    """The five Goh levels of one scan: world z (mm, LPS), slice index as read, confidence, note."""

    z_mm: dict[str, float | None]
    slice_index: dict[str, int | None]
    confidence: dict[str, float]
    notes: dict[str, str]
    landmarks: dict[str, Landmark] = field(default_factory=dict)
    method: str = "anatomy"

    def array_index(self, scan: CTScan, name: str) -> int | None:
        """Array slice (z index of ``scan.hu``) of a level, or None."""
        z = self.z_mm.get(name)
        return None if z is None else scan.slice_at_z(z)

    def to_dict(self) -> dict[str, Any]:
        """The fixed schema of levels.json."""
        return {"method": self.method,
                "levels": [{"name": n, "z_mm": self.z_mm[n], "slice_index": self.slice_index[n],
                            "confidence": round(float(self.confidence[n]), 3), "note": self.notes[n]}
                           for n in LEVELS],
                "landmarks": {k: v.to_dict() for k, v in self.landmarks.items()}}


def levels_from_landmarks(scan: CTScan, lm: dict[str, Landmark], method: str = "anatomy") -> GohLevels:
    """Derive L1..L5 from the four landmarks (L4 halfway L3-L5, L5 = dome + 10 mm)."""
    def mk(z, conf, note):
        k = scan.slice_at_z(z) if z is not None else None
        if z is not None and k is None:
            return None, None, 0.0, note + " (outside the scan)"
        return z, (scan.input_slice_index(k) if k is not None else None), conf, note

    g, c, v, d = (lm[n] for n in LANDMARKS)
    entries = {
        "L1": mk(g.z_mm, g.confidence, f"great-vessel origin: {g.note}"),
        "L2": mk(c.z_mm, c.confidence, f"carina: {c.note}"),
        "L3": mk(v.z_mm, v.confidence, f"venous confluence: {v.note}"),
    }
    if d.z_mm is not None:
        entries["L5"] = mk(d.z_mm + 10.0, d.confidence, f"10 mm above the right dome: {d.note}")
    else:
        entries["L5"] = (None, None, 0.0, f"right dome not found: {d.note}")
    if entries["L3"][0] is not None and entries["L5"][0] is not None:
        entries["L4"] = mk((entries["L3"][0] + entries["L5"][0]) / 2, min(entries["L3"][2], entries["L5"][2]),
                           "halfway between L3 and L5")
    else:
        entries["L4"] = (None, None, 0.0, "needs both L3 and L5")
    return GohLevels({n: entries[n][0] for n in LEVELS}, {n: entries[n][1] for n in LEVELS},
                     {n: float(entries[n][2]) for n in LEVELS}, {n: entries[n][3] for n in LEVELS}, dict(lm), method)


# --------------------------------------------------------------------------------------------
def _carina(scan: CTScan, lungs: Lungs) -> Landmark:
    if lungs.carina_index is None:
        why = lungs.notes.get("airways", "the trachea was not seen splitting into two main bronchi")
        return Landmark(None, None, 0.0, why)
    z = scan.z_mm(lungs.carina_index)
    k = scan.slice_at_z(z)
    return Landmark(z, scan.input_slice_index(k) if k is not None else None, 0.9,
                    "first slice where the trachea is split into two bronchi")


def _right_dome(scan: CTScan, lungs: Lungs) -> Landmark:
    right = lungs.labels == 1
    zs = np.nonzero(right.any(axis=(1, 2)))[0]
    if len(zs) == 0:
        return Landmark(None, None, 0.0, "no right lung")
    lo, hi = zs.min(), zs.max()
    has = right.any(axis=0)
    bottom = np.argmax(right, axis=0).astype(float)   # lowest lung slice of each column
    bottom[~has] = np.nan
    # the diaphragm is under the lower half of the lung; higher 'bottoms' are hila or apical curvature. The dome
    # peaks in the mid/lateral hemithorax; medially the lung ends on the heart, which is not diaphragm
    # per row (y), drop the columns within 30 mm of the lung's medial edge (right lung: medial = larger x)
    cols = np.arange(has.shape[1])[None, :]
    x_med = np.where(has.any(axis=1), has.shape[1] - 1 - np.argmax(has[:, ::-1], axis=1), -1)[:, None]
    lateral = cols <= x_med - 30.0 / scan.spacing[2]
    cand = has & lateral & (bottom <= lo + 0.5 * (hi - lo))
    if not cand.any():
        return Landmark(None, None, 0.0, "no lower lung surface found")
    b = np.where(cand, bottom, lo)
    b = ndi.median_filter(b, size=5)
    top = float(np.percentile(b[cand], 98))
    if top <= lo + 0.5 and lungs.cut_off.get("base", False):
        return Landmark(None, None, 0.0, "the scan ends above the right hemidiaphragm (lung base cut off)")
    # the dome top lies between this slice and the one below (the lowest lung voxel's lower edge)
    z = scan.z_mm(top) - 0.5 * abs(scan.spacing[0])
    k = scan.slice_at_z(z)
    conf = 0.9 if not lungs.cut_off.get("base", False) else 0.6
    return Landmark(z, scan.input_slice_index(k) if k is not None else None, conf,
                    "highest point of the right lung's lower surface")


def _trachea_xy(lungs: Lungs, k_from: int, k_to: int) -> tuple[float, float] | None:
    ks = [k for k in range(max(k_from, 0), min(k_to, lungs.airways.shape[0])) if lungs.airways[k].any()]
    if not ks:
        return None
    yy, xx = np.nonzero(lungs.airways[ks[len(ks) // 2]])
    return float(yy.mean()), float(xx.mean())


def _hull_2d(mask: np.ndarray) -> np.ndarray:
    from skimage.morphology import convex_hull_image

    return convex_hull_image(mask) if mask.any() else mask


def _bone(hu: np.ndarray) -> np.ndarray:
    """Bone of one slice: what a cortical ring (> 500 HU) encloses, dilated by a pixel (cancellous bone is as bright
    as contrast-filled blood)."""
    return ndi.binary_dilation(ndi.binary_fill_holes(hu > 500), iterations=1)


def _vessel_mask(scan: CTScan, lungs: Lungs, k: int, f: int, tr: tuple[float, float]) -> np.ndarray:
    """Vessel-density soft tissue of slice ``k`` (downsampled by ``f``) in the mediastinum.

    The region is the lungs' convex hull less the lungs, or, where the slice has too little lung for an outline
    (a mediastinal crop), a box round the trachea (80 mm each side, 90 mm in front, 50 mm behind) whose
    edge-touching components (muscles) are dropped.
    """
    sy, sx = scan.spacing[1], scan.spacing[2]
    lung2d = lungs.labels[k, ::f, ::f] > 0
    hu = scan.hu[k, ::f, ::f]
    air = ndi.binary_dilation(lungs.airways[k, ::f, ::f], iterations=max(1, int(round(3.0 / (sx * f)))))
    boxed = lung2d.sum() < 200
    if boxed:
        yy = (np.arange(hu.shape[0]) * sy * f)[:, None]
        xx = (np.arange(hu.shape[1]) * sx * f)[None, :]
        region = (np.abs(xx - tr[1] * sx) < 80) & (yy > tr[0] * sy - 90) & (yy < tr[0] * sy + 50)
    else:
        region = _hull_2d(lung2d)
    ves = ndi.binary_opening(region & ~lung2d & ~air & ~_bone(hu) & (hu > -20) & (hu < 600), iterations=1)
    if boxed:   # box search: muscles run into the box's edges; the arch lies enclosed in mediastinal fat
        lab, _ = ndi.label(ves)
        edge = region & ~ndi.binary_erosion(region)
        ves &= ~np.isin(lab, np.unique(lab[edge & (lab > 0)]))
    return ves


def _arch_in_slice(scan: CTScan, lungs: Lungs, k: int, f: int, tr: tuple[float, float]) -> bool:
    """Whether slice ``k`` cuts the aortic arch: one vessel structure (>= 150 mm^2) that runs from in front of the
    trachea, round its left side, to behind it, over more than 30 mm front to back (the left brachiocephalic vein
    crosses in front only; the branches are small and round; the ascending and descending aorta are two)."""
    sy, sx = scan.spacing[1] * f, scan.spacing[2] * f
    hu = scan.hu[k, ::f, ::f]
    lab, _ = ndi.label(_vessel_mask(scan, lungs, k, f, tr))
    tyy, txx = tr[0] * scan.spacing[1], tr[1] * scan.spacing[2]
    for j, sl in enumerate(ndi.find_objects(lab), start=1):
        comp = lab[sl] == j
        if comp.sum() * sx * sy < 150:
            continue
        yy, xx = np.nonzero(comp)
        yy = (yy + sl[0].start) * sy
        xx = (xx + sl[1].start) * sx
        # spine: the big round bone-density blob behind the trachea at the midline
        if np.median(hu[lab == j]) > 180 and abs(xx.mean() - txx) < 25 and yy.mean() > tyy:
            continue
        at_level = np.abs(yy - tyy) < 6.0      # at the trachea's level the arch lies to its left (larger x)
        if (yy.min() < tyy - 12.0 and yy.max() > tyy + 2.0 and at_level.any() and xx[at_level].max() > txx + 5.0
                and (yy.max() - yy.min()) > 30.0):
            return True
    return False


def _great_vessel_origin(scan: CTScan, lungs: Lungs, carina: Landmark) -> Landmark:
    f = max(1, int(round(1.5 / scan.spacing[2])))
    top_k = scan.shape[0] - 1
    if carina.z_mm is not None:
        kc = scan.slice_at_z(carina.z_mm)
        k_hi = min(top_k, kc + int(np.ceil(90.0 / scan.spacing[0])))
    else:   # no carina in view (e.g. a mediastinal crop): search wherever the trachea is seen
        ks_air = np.nonzero(lungs.airways.any(axis=(1, 2)))[0]
        if len(ks_air) == 0:
            return Landmark(None, None, 0.0, "needs the trachea to find the mediastinum")
        kc, k_hi = int(ks_air.min()) - 1, int(ks_air.max())
    tr = _trachea_xy(lungs, kc + 1, k_hi + 1)
    if tr is None:
        return Landmark(None, None, 0.0, "the trachea is not visible above the carina")
    # from the top down, the first slice that cuts the arch is its apex
    top = next((k for k in range(k_hi, kc, -1) if _arch_in_slice(scan, lungs, k, f, tr)), None)
    if top is None:
        return Landmark(None, None, 0.0, "no aortic arch found above the carina (the scan may start below the arch)")
    if top >= top_k - 1:
        return Landmark(None, None, 0.0, "the aortic arch reaches the top of the scan: the origin of the "
                        "great vessels is out of range")
    z = scan.z_mm(top) + 0.5 * abs(scan.spacing[0])
    k = scan.slice_at_z(z)
    return Landmark(z, scan.input_slice_index(k) if k is not None else None, 0.7,
                    "top of the aortic arch (highest slice where one vessel runs from in front of the trachea round "
                    "its left side to behind it)")


def _spine_front(scan: CTScan, k_from: int, k_to: int, tx: float, f: int, ty: float) -> float | None:
    """y (mm, array frame) of the front of the vertebral bodies near the midline (``tx``) and behind the trachea
    (``ty``; in front of it lie the sternum and, with contrast, blood as bright as bone), median over slices."""
    sy, sx = scan.spacing[1] * f, scan.spacing[2] * f
    fronts = []
    for k in range(max(k_from, 0), min(k_to, scan.shape[0])):
        bone = scan.hu[k, ::f, ::f] > 200
        lab, n = ndi.label(bone)
        best = None
        for j, sl in enumerate(ndi.find_objects(lab), start=1):
            comp = lab[sl] == j
            area = comp.sum() * sx * sy
            yx = np.nonzero(comp)
            xx = (yx[1] + sl[1].start) * sx
            if area < 300 or abs(xx.mean() - tx) > 25 or (yx[0].mean() + sl[0].start) * sy < ty:
                continue
            front = sl[0].start * sy
            if best is None or area > best[0]:
                best = (area, front)
        if best is not None:
            fronts.append(best[1])
    return float(np.median(fronts)) if fronts else None


def _venous_confluence(scan: CTScan, lungs: Lungs, carina: Landmark, dome: Landmark) -> Landmark:
    if carina.z_mm is None:
        return Landmark(None, None, 0.0, "needs the carina")
    kc = scan.slice_at_z(carina.z_mm)
    z_lo = (dome.z_mm + 20.0) if dome.z_mm is not None else carina.z_mm - 90.0
    k_lo = max(scan.slice_at_z(max(z_lo, scan.z_mm(0))) or 0, 0)
    k_hi = kc - max(1, int(round(12.0 / scan.spacing[0])))
    sy, sx = scan.spacing[1], scan.spacing[2]
    f = max(1, int(round(1.5 / sx)))
    tr = _trachea_xy(lungs, kc, kc + int(np.ceil(30 / scan.spacing[0])))
    if tr is None or k_hi <= k_lo:
        return _venous_prior(scan, carina, dome, "no search range below the carina")
    ty, tx = tr[0] * sy, tr[1] * sx
    front = _spine_front(scan, k_lo, k_hi + 1, tx, f, ty)
    if front is None:
        return _venous_prior(scan, carina, dome, "the spine was not found behind the mediastinum")
    # the left atrium is the most posterior chamber, just in front of the esophagus and the descending aorta;
    # with the pulmonary veins entering it from both hila it is the widest structure of that band
    ks = list(range(k_lo, k_hi + 1))
    widths = []
    for k in ks:
        lung2d = lungs.labels[k, ::f, ::f] > 0
        if lung2d.sum() < 20:
            widths.append(0.0)
            continue
        hu = scan.hu[k, ::f, ::f]
        yy = (np.arange(hu.shape[0]) * sy * f)[:, None]
        band = (yy > front - 32.0) & (yy < front - 10.0)
        soft = _hull_2d(lung2d) & ~lung2d & (hu > -50) & (hu < 600) & band
        lab, n = ndi.label(soft)
        best = 0.0
        for j, sl in enumerate(ndi.find_objects(lab), start=1):
            xx = (np.nonzero(lab[sl] == j)[1] + sl[1].start) * sx * f
            if xx.min() < tx - 10 and xx.max() > tx + 10:      # crosses the midline: not the aorta
                best = max(best, float(xx.max() - xx.min()))
        widths.append(best)
    w = ndi.uniform_filter1d(np.asarray(widths), size=3, mode="nearest")
    if w.max() <= 30.0:
        return _venous_prior(scan, carina, dome, "no atrial structure found in front of the spine")
    top = np.nonzero(w >= w.max() - 0.05 * w.max())[0]
    i = int(round(float(top.mean())))
    k = ks[i]
    contrast = float(w.max() / (np.median(w) + 1e-6))
    conf = float(np.clip(0.3 + 0.4 * (contrast - 1.0), 0.3, 0.85))
    return Landmark(scan.z_mm(k), scan.input_slice_index(k), conf,
                    "widest structure just in front of the spine below the carina (left atrium with the veins)")


def _venous_prior(scan: CTScan, carina: Landmark, dome: Landmark, why: str) -> Landmark:
    if carina.z_mm is None:
        return Landmark(None, None, 0.0, why)
    z = carina.z_mm - 35.0
    if dome.z_mm is not None:
        z = max(z, dome.z_mm + 25.0)
    k = scan.slice_at_z(z)
    if k is None:
        return Landmark(None, None, 0.0, why + "; the prior position lies outside the scan")
    return Landmark(z, scan.input_slice_index(k), 0.2, why + "; placed 35 mm below the carina (prior)")


def find_great_vessel_origin(scan: CTScan, lungs: Lungs | None = None) -> Landmark:
    """The great-vessel origin (top of the aortic arch) alone; works on mediastinal crops without lungs.

    Without ``lungs`` the trachea is taken as the internal air tube that spans most slices (from
    :func:`sscild.anatomy.segment_airways_only`) and the search region is a box around it.
    """
    if lungs is None:
        from .anatomy import segment_airways_only

        lungs = segment_airways_only(scan)
    return _great_vessel_origin(scan, lungs, _carina(scan, lungs))


def find_levels(scan: CTScan, lungs: Lungs) -> GohLevels:
    """Place the five Goh levels from anatomy alone.

    Parameters
    ----------
    scan : CTScan
    lungs : Lungs
        From :func:`sscild.anatomy.segment_lungs`.

    Returns
    -------
    GohLevels

    Raises
    ------
    NoLungsError
        When ``lungs`` is empty.
    """
    if not lungs.mask.any():
        raise NoLungsError("no lungs found: the Goh levels are defined on the lungs")
    carina = _carina(scan, lungs)
    dome = _right_dome(scan, lungs)
    gvo = _great_vessel_origin(scan, lungs, carina)
    ven = _venous_confluence(scan, lungs, carina, dome)
    lm = {"great_vessel_origin": gvo, "carina": carina, "venous_confluence": ven, "right_dome": dome}
    return levels_from_landmarks(scan, lm)
