"""The five Goh scoring levels from anatomy alone (no model), checked against each other, and combined with L-Net.

Landmarks, each with a confidence and a note saying why when it is low or missing (a landmark outside the scan
is reported as missing, never invented):

- ``carina`` (L2): where the tracked trachea splits into the two main bronchi and stays split for >= 12 mm
  (from :func:`sscild.anatomy.segment_lungs`); when that split is implausible, the next split seen in the airway
  mask. A split counts only under a single trachea (a scan starting below the carina shows lobar splits) and at a
  plausible distance below the lung apex (cervical trachea taken for a split is rejected).
- ``right_dome``: the highest point of the right hemidiaphragm = the highest point of the right lung's lower
  surface, over the columns where the lung ends on the abdomen (lower half of the lung; not within 30 mm of
  its medial edge, where it ends on the heart; solid lung columns, not noise specks; median-filtered, 98th
  percentile, to ignore spurs). The surface is interpolated between slices from the partial volume of the lowest
  lung slice and the one below (thick slices). With the base cut off, columns reaching the last slice are left out,
  the dome is not placed when most of the posterior base reaches the last slice (:data:`DOME_SEEN_MIN`: what ends
  above it is then the lung over the heart) nor within 15 mm of the scan's end. L5 = dome + 10 mm.
- ``great_vessel_origin`` (L1): where the brachiocephalic trunk arises from the aorta. Above the carina, in the
  mediastinum (lung outline, or a box round the trachea when the lungs are cut off), the arch's apex is the
  highest slice with one vessel structure (blood, > -20 HU, bone excluded) that runs from in front of the
  trachea, round its left side, to behind it; the left brachiocephalic vein crosses in front only and the
  branches are small and round. From just above the apex the trunk (the artery nearest the trachea on its right
  front) is followed down to where it joins the aorta (:func:`_brachiocephalic_origin`); in an unfolded aorta
  that is 2-3 cm below the apex. When the trunk cannot be followed, the next apex down is tried once (contrast-
  filled veins at the thoracic inlet can look like the arch) and kept when its trunk is followed; else L1 falls
  back to the first apex, with low confidence and a note saying so. Apices are tried from the top down (at least
  20 mm below the lung apex) until the origin lies at a plausible distance from the carina (neck vessels at the
  thoracic inlet are passed over).
- ``venous_confluence`` (L3): the left atrium is the most posterior heart chamber, just in front of the
  esophagus and descending aorta; where the pulmonary veins enter it from both hila it is the widest soft-tissue
  structure crossing the midline in the band 10-32 mm in front of the vertebral bodies (the ventricles lie
  farther forward; the vertebral bodies are the bone behind the trachea, never the sternum or contrast-filled
  blood in front of it). Below the carina, the middle of the slices within 5 % of the widest. When no such
  structure is found, or one is found on most slices (no atrium stands out: :data:`ATRIUM_SHARE_MAX`), a prior
  (:data:`VENOUS_PRIOR_FRACTION` of the way from the carina to the dome) is used, with low confidence.
- L4 is halfway between L3 and L5.

Checks (:data:`PLAUSIBLE_MM`, learned from phantoms and the real scans): landmark pairs at implausible distances
get a low confidence and a note; each level's z_mm is the centre of the slice that is scored; a level outside the
lungs' z-range is not placed; levels out of order (L1 above L2 ... above L5) drop the less confident; noise (above
60 HU SD in the lungs) and slices thicker than 5 mm scale every confidence down. bench/bench_levels.py measures
what the confidence means (>= 0.8: error <= 5 mm in >= 95 % of phantom cases with noise, cuts and thick slices).
:func:`combine_levels` joins these levels with L-Net's.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import ConvexHull, QhullError     # with the module: not first imported beside the model preload

from . import morph
from .anatomy import APEX_CARINA_MIN_MM, Lungs, airway_lumens, lumen_divides
from .domain import LEVEL_NAMES, LEVELS, LEVELS_AGREE_MM
from .errors import NoLungsError
from .scan import CTScan

LANDMARKS = ("great_vessel_origin", "carina", "venous_confluence", "right_dome")

#: Plausible distances (mm, cranio-caudal) between landmarks: (upper, lower) -> (min, max). Measured on 24 phantoms
#: (seeds 100-123: apex-carina 70-93, origin-carina 29-44, carina-confluence 22-41, confluence-dome 63-114,
#: carina-dome 99-141) and by eye on the shared real scans (apex-carina 80-87, origin-carina 32-42, carina-confluence
#: 32-68, confluence-dome 26-62, carina-dome 67-110), widened by about a third. A landmark outside its range is
#: rejected (the next candidate is tried) or kept with a lower confidence and a note.
PLAUSIBLE_MM: dict[tuple[str, str], tuple[float, float]] = {
    ("apex", "carina"): (APEX_CARINA_MIN_MM, 130.0),
    ("apex", "great_vessel_origin"): (20.0, 90.0),
    ("great_vessel_origin", "carina"): (12.0, 70.0),
    ("carina", "venous_confluence"): (15.0, 90.0),
    ("venous_confluence", "right_dome"): (15.0, 130.0),
    ("carina", "right_dome"): (50.0, 180.0),
}
#: The venous confluence without a credible atrium: this fraction of the way from the carina down to the right dome.
#: By eye on the four shared real scans that hold both: 0.47 / 0.57 / 0.67 / 0.52 (middles of the annotated ranges;
#: the confluence is about halfway, carina at T5, confluence T7-T8, dome T10). The phantoms draw it higher (0.17-0.45),
#: where their atrium stands out and is found. Without the dome: ``VENOUS_PRIOR_MM`` below the carina (real 32-68 mm).
VENOUS_PRIOR_FRACTION = 0.55
VENOUS_PRIOR_MM = 50.0
#: Share of the searched slices (carina to dome) on which a structure crosses the midline in the atrial band, above
#: which no slice stands out: on phantoms the atrium is such a structure on 0.22-0.40 of them (seeds 2000-2007, clean,
#: noisy and 5-8 mm slices); on the real scans the esophagus, the aorta or a heart lying on the spine are, on 0.56-1.0
#: (a0001, ACRIN, LIDC and A0002, also with every second or fourth slice).
ATRIUM_SHARE_MAX = 0.5
#: Of a spine-like vessel component (see :func:`_arch_component`), the arch is sought in the part less than this far
#: behind the trachea's centre: the trachea's radius (~9 mm) and the esophagus (~10 mm) lie between it and the front
#: of the vertebral body; the arch's descending end reaches past the trachea's centre (the test needs 2 mm).
ARCH_BEHIND_MM = 20.0
#: Confidence of a level whose landmark broke a plausibility check but was kept (best candidate, no other).
IMPLAUSIBLE_CONFIDENCE = 0.3
#: Above this image noise (HU SD in the lungs) and this slice spacing (mm) the confidences are scaled down.
NOISE_OK_HU = 60.0
SPACING_OK_MM = 5.0
#: From this slice spacing (mm) on, a split seen in one slice is a carina candidate (see _carina_candidates).
THICK_SLICE_MM = 6.0


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


def _slice_entry(scan: CTScan, z: float | None, conf: float, note: str, lung_z: tuple[float, float] | None):
    """(z_mm, slice_index, confidence, note) of the slice that is scored for a level at world ``z``: z_mm is that
    slice's centre. A level outside the scan or outside the lung's z-range is not placed."""
    if z is None:
        return None, None, 0.0, note
    k = scan.slice_at_z(z)
    if k is None:
        return None, None, 0.0, f"{note} (at z = {z:.1f} mm, outside the scan)"
    zk = scan.z_mm(k)
    if lung_z is not None and not lung_z[0] <= zk <= lung_z[1]:
        return None, None, 0.0, (f"{note} (at z = {z:.1f} mm, outside the lungs' z-range "
                                 f"{lung_z[0]:.1f}..{lung_z[1]:.1f} mm: not placed)")
    return zk, scan.input_slice_index(k), float(conf), note


def _enforce_order(entries: dict[str, tuple]) -> dict[str, tuple]:
    """L1 above L2 above ... L5 (world z falls): of two placed levels out of order, the less confident is dropped,
    with a note saying why."""
    out = dict(entries)
    for _ in range(len(LEVELS)):
        placed = [n for n in LEVELS if out[n][0] is not None]
        bad = next(((a, b) for a, b in zip(placed, placed[1:]) if out[a][0] <= out[b][0]), None)
        if bad is None:
            break
        a, b = bad
        drop, keep = (a, b) if out[a][2] < out[b][2] else (b, a)
        out[drop] = (None, None, 0.0, f"{out[drop][3]}; dropped: not in anatomical order with {keep} "
                                      f"(L1 above L2 above L3 above L4 above L5)")
    return out


def levels_from_landmarks(scan: CTScan, lm: dict[str, Landmark], method: str = "anatomy",
                          lung_z: tuple[float, float] | None = None) -> GohLevels:
    """Derive L1..L5 from the four landmarks (L4 halfway L3-L5, L5 = dome + 10 mm).

    Each level's ``z_mm`` is the centre of the slice that is scored (nearest to the landmark's z) and
    ``slice_index`` that slice as read; the landmarks keep their own z. With ``lung_z`` (lowest, highest lung slice
    centre, mm) a level outside the lungs is not placed; levels out of order are dropped (the less confident).
    """
    g, c, v, d = (lm[n] for n in LANDMARKS)
    z5 = d.z_mm + 10.0 if d.z_mm is not None else None
    raw = {"L1": (g.z_mm, g.confidence, f"{LEVEL_NAMES['L1']}: {g.note}"),
           "L2": (c.z_mm, c.confidence, f"carina: {c.note}"),
           "L3": (v.z_mm, v.confidence, f"venous confluence: {v.note}"),
           "L5": (z5, d.confidence, f"10 mm above the right dome: {d.note}" if z5 is not None
                  else f"right dome not found: {d.note}")}
    if v.z_mm is not None and z5 is not None:
        # its error is the mean of the two landmarks' errors, and so is its confidence
        raw["L4"] = ((v.z_mm + z5) / 2, (v.confidence + d.confidence) / 2, "halfway between L3 and L5")
    else:
        raw["L4"] = (None, 0.0, "needs both L3 and L5")
    entries = _enforce_order({n: _slice_entry(scan, *raw[n], lung_z) for n in LEVELS})
    return GohLevels({n: entries[n][0] for n in LEVELS}, {n: entries[n][1] for n in LEVELS},
                     {n: float(entries[n][2]) for n in LEVELS}, {n: entries[n][3] for n in LEVELS}, dict(lm), method)


# --------------------------------------------------------------------------------------------
def _mk(scan: CTScan, z: float | None, conf: float, note: str) -> Landmark:
    """A landmark at world ``z`` (its slice as read when inside the scan)."""
    k = scan.slice_at_z(z) if z is not None else None
    return Landmark(z, scan.input_slice_index(k) if k is not None else None, conf if z is not None else 0.0, note)


def _in_range(pair: tuple[str, str], upper: float | None, lower: float | None) -> str:
    """'' when the distance ``upper - lower`` (mm) lies in :data:`PLAUSIBLE_MM` for ``pair`` (or is unknown), else
    why not."""
    if upper is None or lower is None:
        return ""
    lo, hi = PLAUSIBLE_MM[pair]
    d = upper - lower
    return "" if lo <= d <= hi else (f"{pair[0].replace('_', ' ')} to {pair[1].replace('_', ' ')} {d:.0f} mm, "
                                     f"outside the plausible {lo:.0f}-{hi:.0f} mm")


def _split_slices(lumens: list, min_mm2: float) -> np.ndarray:
    """Per slice (its :func:`sscild.anatomy.airway_lumens`), whether the airway mask shows two bronchi: two
    components of >= ``min_mm2`` whose centres lie >= 8 mm apart left to right."""
    out = np.zeros(len(lumens), bool)
    for k, lu in enumerate(lumens):
        xs = [x for a, x in lu if a >= min_mm2]
        out[k] = len(xs) >= 2 and max(xs) - min(xs) >= 8.0
    return out


def _carina_candidates(scan: CTScan, lungs: Lungs) -> list[tuple[float, str, float]]:
    """(array z index (continuous), note, confidence) where the airways split, top first: the tracked carina of
    :func:`sscild.anatomy.segment_lungs`, then every slice where two bronchi (>= 30 mm^2 each, 20 in thick slices)
    begin and stay apart (>= 5 mm^2 each, at least two thirds of the slices) for >= 12 mm, between it and the slice
    above, and the lumens divide the lumen above (:func:`sscild.anatomy.lumen_divides`: a trachea beside a pocket of
    air is not a split). A split is a carina only under a single trachea: most of the slices up to 15 mm above it
    (at least one, within the scan) show one airway, or one lumen with the others under half its area, not two
    alike (a scan starting below the carina shows the lobar bronchi splitting off the two main ones). When no split
    is found, where the single airway leaves the trachea's axis (:data:`AXIS_EXIT_AREA`)."""
    ys, xs = np.nonzero(lungs.airways.any(axis=0))
    box = np.s_[ys.min():ys.max() + 1, xs.min():xs.max() + 1] if len(ys) else np.s_[:, :]  # the airways' box
    lumens = [airway_lumens(a[box], scan.spacing) if a.any() else [] for a in lungs.airways]
    dz = abs(scan.spacing[0])
    # two bronchi: >= 30 mm^2 each; in slices of 6 mm or more >= 20 (partial volume: ACRIN in 8 mm slabs showed the
    # split with a 29 mm^2 left main bronchus, never more)
    strict = _split_slices(lumens, 30.0 if dz < THICK_SLICE_MM else 20.0)
    loose = _split_slices(lumens, 5.0) | strict
    # one airway, or (split) one lumen with the others under half its area
    single = np.array([bool(lu) and (not lo or lu[1][0] < 0.5 * lu[0][0]) for lu, lo in zip(lumens, loose)])
    # in slices of 6 mm or more the left main bronchus (oblique) fades into the lung by partial volume a slice
    # below the split: one slice with two bronchi (>= 20 mm^2 each there) under a single trachea is a candidate
    run = max(2, int(np.ceil(12.0 / dz))) if dz < THICK_SLICE_MM else 1
    cands = []
    if lungs.carina_index is not None:
        cands.append((float(lungs.carina_index), "first slice where the trachea is split into two bronchi", 0.9))
    for k in range(len(strict) - 2, run - 2, -1):
        divides = bool(lumens[k + 1]) and lumen_divides(lumens[k], lumens[k + 1][0])
        if strict[k] and not loose[k + 1] and divides and loose[max(0, k - run + 1):k + 1].mean() >= 2 / 3:
            if all(abs(k + 0.5 - c[0]) > run for c in cands):
                cands.append((k + 0.5, "first slice where the airways show two main bronchi (candidate from the "
                                       "airway mask)", 0.7))
    exit_ = None if cands else _axis_exit(lumens)
    if exit_ is not None:           # no split seen: where a trachea (midline, between both lungs) turns bronchus
        k, ref, x = exit_
        if _both_lungs(lungs, k, scan.spacing) and _on_midline(lungs, ref, x + xs.min() * scan.spacing[2],
                                                               scan.spacing):
            cands.append((k + 0.5, "no split into two bronchi seen (thick slices: a main bronchus lost to partial "
                                   "volume); placed where the single airway narrows and leaves the trachea's axis "
                                   "(a main bronchus)", AXIS_EXIT_CONFIDENCE))
    out = []
    for idx, note, conf in cands:
        above = single[int(np.ceil(idx)):int(np.ceil(idx)) + max(1, int(round(15.0 / dz)))]
        if len(above) and above.mean() >= 2 / 3:
            out.append((idx, note, conf))
    return out


#: The carina when no split is seen: the first slice (top down) of two in a row where the largest airway lumen is
#: under this share of the trachea's area (the median of the top third of the airway slices) and its centre more
#: than ``AXIS_EXIT_MM`` to the side of the trachea's: a main bronchus (about half the trachea's section, diverging
#: at ~35 degrees). On 8-10 mm slabs of the shared real scans the left main bronchus is often never a lumen of its
#: own; the trachea's own drift along its course stayed within 6 mm, its area above 0.75.
AXIS_EXIT_AREA = 0.75
AXIS_EXIT_MM = 4.0
AXIS_EXIT_CONFIDENCE = 0.35


def _axis_exit(lumens: list[list[tuple[float, float]]]) -> tuple[int, list[int], float] | None:
    """Array slice where the single airway becomes a main bronchus (see :data:`AXIS_EXIT_AREA`), with the
    trachea's slices and centre x (mm, in the frame of ``lumens``), or None."""
    top = [k for k in range(len(lumens) - 1, -1, -1) if lumens[k]]
    if len(top) < 3:
        return None
    ref = top[:max(1, len(top) // 3)]
    area, x = (float(np.median([lumens[k][0][i] for k in ref])) for i in (0, 1))
    off = [lumens[k][0][0] < AXIS_EXIT_AREA * area and abs(lumens[k][0][1] - x) > AXIS_EXIT_MM for k in top]
    k = next((top[i] for i in range(len(ref), len(top) - 1) if off[i] and off[i + 1]), None)
    return None if k is None else (k, ref, x)


def _on_midline(lungs: Lungs, ks: list[int], x_mm: float, spacing: tuple[float, float, float],
                tol_mm: float = 10.0) -> bool:
    """Whether an airway at ``x_mm`` (array frame) in slices ``ks`` lies within ``tol_mm`` of the midline between
    the lungs' medial borders: a trachea does, a main bronchus (a scan starting below the carina) lies 15-30 mm
    to its side."""
    mids = []
    for k in ks:
        r, l = (np.nonzero((lungs.labels[k] == v).any(axis=0))[0] for v in (1, 2))
        if len(r) and len(l):
            mids.append((r.max() + l.min()) / 2 * spacing[2])
    return bool(mids) and abs(float(np.median(mids)) - x_mm) <= tol_mm


def _both_lungs(lungs: Lungs, k: int, spacing: tuple[float, float, float], min_cm2: float = 20.0) -> bool:
    """Whether slice ``k`` holds both lungs, each of at least ``min_cm2`` (the carina lies between them; a trachea
    narrowing at the thoracic inlet or at the edge of a mediastinal crop does not)."""
    px_cm2 = spacing[1] * spacing[2] / 100.0
    return all(np.count_nonzero(lungs.labels[k] == v) * px_cm2 >= min_cm2 for v in (1, 2))


def _carina(scan: CTScan, lungs: Lungs, apex_z: float | None) -> Landmark:
    """The carina: the first candidate (top down) whose distance below the lung apex is plausible."""
    cands = _carina_candidates(scan, lungs)
    if not cands:
        why = lungs.notes.get("airways", "the trachea was not seen splitting into two main bronchi under a single "
                              "trachea (the scan may start below the carina)")
        return Landmark(None, None, 0.0, why)
    rejected = []
    for idx, note, conf in cands:
        z = scan.z_mm(idx)
        why = _in_range(("apex", "carina"), apex_z, z)
        if apex_z is not None and not why and z > apex_z:
            why = "above the lung apex"
        if not why:
            conf = conf if not rejected else min(conf, 0.6)
            return _mk(scan, z, conf, note + ("" if not rejected else "; rejected higher: " + "; ".join(rejected)))
        rejected.append(f"z = {z:.1f} mm ({why})")
    return Landmark(None, None, 0.0, "no plausible carina: " + "; ".join(rejected))


def _first_along_z(mask: np.ndarray) -> np.ndarray:
    """Index of the first True along axis 0 of a 3D mask (0 where none), as ``np.argmax(mask, axis=0)`` but slice by
    slice (argmax across slices strides through memory)."""
    first = np.zeros(mask.shape[1:], np.int64)
    seen = np.zeros(mask.shape[1:], bool)
    for k in range(mask.shape[0]):
        new = mask[k] & ~seen
        first[new] = k
        seen |= mask[k]
    return first


SOFT_TISSUE_HU = 40.0      # the diaphragm and liver under the lung base
#: With the base cut off, the share of the posterior half of the right lung's base (lower half, lateral, solid
#: columns) that must end above the scan's last slice for the dome to count as in view: a scan ending below the
#: dome sees 0.93 of it on A0002 (8 mm), a scan ending at mid-heart 0.17 (pyradiomics lung1).
DOME_SEEN_MIN = 0.5


def _base_surface(scan: CTScan, right: np.ndarray, bottom: np.ndarray, has: np.ndarray) -> np.ndarray:
    """World z (mm) of the right lung's lower surface per column, interpolated between slices from the partial
    volume of the lowest lung slice and the one below it: the share of lung in a voxel is where its HU lies between
    the soft tissue under the base and the lung above it (the median of the lowest 30 mm of the lung)."""
    dz = abs(scan.spacing[0])
    b = np.where(has, bottom, 0).astype(np.int64)
    yy, xx = np.indices(b.shape)
    low = right[: int(b[has].min()) + int(np.ceil(30.0 / dz)) + 1]
    lung_hu = float(np.median(scan.hu[: low.shape[0]][low])) if low.any() else -850.0
    span = max(SOFT_TISSUE_HU - lung_hu, 100.0)

    def share(k):
        return np.clip((SOFT_TISSUE_HU - scan.hu[np.clip(k, 0, None), yy, xx].astype(float)) / span, 0.0, 1.0)

    f_b = np.clip(share(b), 0.5, 1.0)             # the lowest lung slice is at least half lung (it is in the mask)
    f_below = np.where(b > 0, np.clip(share(b - 1), 0.0, 0.5), 0.0)
    z0 = scan.z_mm(0)
    sgn = np.sign(scan.z_mm(1) - z0) if scan.shape[0] > 1 else 1.0
    return z0 + sgn * dz * b + 0.5 * dz - dz * (f_b + f_below)


def _right_dome(scan: CTScan, lungs: Lungs) -> Landmark:
    right = lungs.labels == 1
    zs = np.nonzero(right.any(axis=(1, 2)))[0]
    if len(zs) == 0:
        return Landmark(None, None, 0.0, "no right lung")
    lo, hi = zs.min(), zs.max()
    cut = bool(lungs.cut_off.get("base", False))
    has = right.any(axis=0)
    bottom = _first_along_z(right)      # lowest lung slice of each column
    # the diaphragm is under the lower half of the lung; higher 'bottoms' are hila or apical curvature. The dome
    # peaks in the mid/lateral hemithorax; medially the lung ends on the heart, which is not diaphragm
    # per row (y), drop the columns within 30 mm of the lung's medial edge (right lung: medial = larger x)
    cols = np.arange(has.shape[1])[None, :]
    x_med = np.where(has.any(axis=1), has.shape[1] - 1 - np.argmax(has[:, ::-1], axis=1), -1)[:, None]
    lateral = cols <= x_med - 30.0 / scan.spacing[2]
    # a column of real lung is filled from its lowest to its highest lung voxel and >= 20 mm tall; specks of
    # noise let in at the chest wall are not
    count = right.sum(axis=0)
    top = right.shape[0] - 1 - _first_along_z(right[::-1])
    solid = (count >= 0.7 * (top - bottom + 1)) & (count * abs(scan.spacing[0]) >= 20.0)
    cand = has & lateral & solid & (bottom <= lo + 0.5 * (hi - lo))
    if cut:     # columns where the lung reaches the scan's last slice end below it: their surface is unknown
        # the dome is in view when most of the posterior half of the base (where it peaks, away from the heart)
        # ends above the last slice; else what ends above it is the lung over the heart
        ys = np.nonzero(has.any(axis=1))[0]
        post = cand & (np.arange(has.shape[0]) >= (ys.min() + ys.max()) / 2)[:, None]
        seen = float((post & (bottom > 0)).sum() / max(post.sum(), 1))
        if seen < DOME_SEEN_MIN:
            return Landmark(None, None, 0.0, f"the scan ends above the right hemidiaphragm: the posterior lung base "
                            f"reaches the last slice in {1 - seen:.0%} of its columns (lung base cut off)")
        cand &= bottom > 0
    if not cand.any():
        return Landmark(None, None, 0.0, "no lower lung surface found" if not cut else
                        "the scan ends above the right hemidiaphragm (lung base cut off)")
    surf = _base_surface(scan, right, bottom, has)
    surf = ndi.median_filter(np.where(cand, surf, np.nanmin(surf[cand])), size=5)
    z = float(np.percentile(surf[cand], 98))
    z_end = scan.z_mm(0) - 0.5 * abs(scan.spacing[0])
    if cut and z - z_end < 15.0:
        return Landmark(None, None, 0.0, f"the scan ends {z - z_end:.0f} mm below the highest lung base seen (lung "
                        "base cut off): the right dome may lie below the scan")
    if cut:
        return _mk(scan, z, 0.5, "highest point of the right lung's lower surface; the lung base reaches the "
                   "scan's last slice, so the dome may be missed")
    return _mk(scan, z, 0.9, "highest point of the right lung's lower surface")


def _trachea_xy(lungs: Lungs, k_from: int, k_to: int) -> tuple[float, float] | None:
    ks = [k for k in range(max(k_from, 0), min(k_to, lungs.airways.shape[0])) if lungs.airways[k].any()]
    if not ks:
        return None
    yy, xx = np.nonzero(lungs.airways[ks[len(ks) // 2]])
    return float(yy.mean()), float(xx.mean())


def _hull_2d(mask: np.ndarray) -> np.ndarray:
    """Convex hull of a 2D mask: pixels whose centres lie in the hull of the mask's pixel corners, filled row by row
    (``skimage.morphology.convex_hull_image`` tests every pixel against the polygon, which was most of this
    stage's time; the two can differ only in pixels on the hull's edge)."""
    if not mask.any():
        return mask
    yy, xx = np.nonzero(mask & ~morph.erode(mask))      # the boundary pixels carry the hull
    pts = np.concatenate([np.stack([yy + dy, xx + dx], axis=1) for dy in (-0.5, 0.5) for dx in (-0.5, 0.5)])
    try:
        v = pts[ConvexHull(pts).vertices]
    except QhullError:          # all in one line: the mask is its own hull
        return mask.copy()
    # a convex polygon covers one run of pixels per row: from the leftmost to the rightmost edge crossing
    y0, x0 = v[:, 0], v[:, 1]
    y1, x1 = np.roll(y0, -1), np.roll(x0, -1)
    rows = np.arange(max(0, int(np.ceil(y0.min()))), min(mask.shape[0] - 1, int(np.floor(y0.max()))) + 1)
    r = rows[:, None].astype(float)
    spans = (np.minimum(y0, y1) <= r) & (r <= np.maximum(y0, y1)) & (y0 != y1)
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.where(spans, x0 + (r - y0) * (x1 - x0) / (y1 - y0), np.nan)
    lo = np.ceil(np.nanmin(np.where(spans, x, np.inf), axis=1))
    hi = np.floor(np.nanmax(np.where(spans, x, -np.inf), axis=1))
    cols = np.arange(mask.shape[1])[None, :]
    out = mask.copy()
    out[rows] |= (cols >= lo[:, None]) & (cols <= hi[:, None])
    return out


def _bone(hu: np.ndarray, x_mid: float | None = None, px: float = 1.0) -> np.ndarray:
    """Bone of one slice: what a cortical ring (> 500 HU) encloses, dilated by a pixel (cancellous bone is as bright
    as contrast-filled blood).

    With ``x_mid`` (the trachea's column; ``px`` the pixel size in mm) rings centred 10-60 mm left of it are not
    bone: a calcified aortic wall is a ring too, and the aorta runs there, where the mediastinum has no bone (the
    spine and the sternum sit on the midline; ribs, clavicles and scapulae lie farther out).
    """
    filled = ndi.binary_fill_holes(hu > 500)
    if x_mid is not None:
        lab, n = ndi.label(filled)
        if n:
            cx = np.array([c[1] for c in ndi.center_of_mass(filled, lab, np.arange(1, n + 1))])
            off = (cx - x_mid) * px
            filled = np.isin(lab, 1 + np.nonzero(~((off > 10.0) & (off < 60.0)))[0])
    return morph.dilate(filled, 1)


def _vessel_mask(scan: CTScan, lungs: Lungs, k: int, f: int, tr: tuple[float, float], hu_range=(-20.0, 600.0),
                 aorta_rings: bool = False, air_as_lung: bool = False) -> np.ndarray:
    """Vessel-density soft tissue (``hu_range``) of slice ``k`` (downsampled by ``f``) in the mediastinum.

    The region is the lungs' convex hull less the lungs. Where the lung segmentation has too little of the slice
    (a mediastinal crop, lungs cut off by the field of view) it is a box round the trachea (80 mm each side, 90 mm
    in front, 50 mm behind) whose edge-touching components (muscles) are dropped, or, with ``air_as_lung``, the
    hull of the box's air-density pixels (< -400 HU, not airway) less those pixels, when they are 20 cm^2 or
    more (a structure followed slice by slice may touch others; a whole-slice test needs them apart).
    ``aorta_rings``: calcified rings left of the trachea are vessel, not bone (see :func:`_bone`).
    """
    sy, sx = scan.spacing[1], scan.spacing[2]
    lung2d = lungs.labels[k, ::f, ::f] > 0
    hu = scan.hu[k, ::f, ::f]
    air = morph.dilate(lungs.airways[k, ::f, ::f], max(1, int(round(3.0 / (sx * f)))))
    boxed = False
    if lung2d.sum() < 200:
        yy = (np.arange(hu.shape[0]) * sy * f)[:, None]
        xx = (np.arange(hu.shape[1]) * sx * f)[None, :]
        box = (np.abs(xx - tr[1] * sx) < 80) & (yy > tr[0] * sy - 90) & (yy < tr[0] * sy + 50)
        lung2d = morph.opening(box & (hu < -400) & ~air, 2) if air_as_lung else np.zeros_like(box)
        boxed = lung2d.sum() * (sx * f) * (sy * f) < 2000.0
    region = box if boxed else _hull_2d(lung2d)
    bone = _bone(hu, tr[1] / f, sx * f) if aorta_rings else _bone(hu)
    ves = morph.opening(region & ~lung2d & ~air & ~bone & (hu > hu_range[0]) & (hu < hu_range[1]), 1)
    if boxed:   # box search: muscles run into the box's edges; the arch lies enclosed in mediastinal fat
        lab, _ = ndi.label(ves)
        edge = region & ~morph.erode(region)
        ves &= ~np.isin(lab, np.unique(lab[edge & (lab > 0)]))
    return ves


def _arch_component(scan: CTScan, lungs: Lungs, k: int, f: int, tr: tuple[float, float]) -> np.ndarray | None:
    """The aortic arch in slice ``k`` (mask on the grid downsampled by ``f``), or None when the slice does not cut
    it: one vessel structure (>= 150 mm^2) that runs from in front of the trachea, round its left side, to behind
    it, over more than 30 mm front to back (the left brachiocephalic vein crosses in front only; the branches are
    small and round; the ascending and descending aorta are two).

    A bone-density component behind the trachea at the midline is the spine; with contrast, a descending aorta
    lying against a vertebral body whose cortex is not a closed ring (:func:`_bone`) joins it, so of such a component
    only the part less than ``ARCH_BEHIND_MM`` behind the trachea's centre (in front of the vertebral body) is
    tested: a spine alone has nothing in front of the trachea there."""
    sy, sx = scan.spacing[1] * f, scan.spacing[2] * f
    hu = scan.hu[k, ::f, ::f]
    lab, _ = ndi.label(_vessel_mask(scan, lungs, k, f, tr))
    tyy, txx = tr[0] * scan.spacing[1], tr[1] * scan.spacing[2]
    front = (np.arange(lab.shape[0]) * sy < tyy + ARCH_BEHIND_MM)[:, None]
    for j, sl in enumerate(ndi.find_objects(lab), start=1):
        comp = lab[sl] == j
        if comp.sum() * sx * sy < 150:
            continue
        yy, xx = np.nonzero(comp)
        # spine: the big round bone-density blob behind the trachea at the midline
        if np.median(hu[sl][comp]) > 180 and abs((xx.mean() + sl[1].start) * sx - txx) < 25 and \
                (yy.mean() + sl[0].start) * sy > tyy:
            comp = _largest(comp & front[sl[0]])
            if comp is None:
                continue
            yy, xx = np.nonzero(comp)
        yy, xx = (yy + sl[0].start) * sy, (xx + sl[1].start) * sx
        at_level = np.abs(yy - tyy) < 6.0      # at the trachea's level the arch lies to its left (larger x)
        if (yy.min() < tyy - 12.0 and yy.max() > tyy + 2.0 and at_level.any() and xx[at_level].max() > txx + 5.0
                and (yy.max() - yy.min()) > 30.0):
            out = np.zeros(lab.shape, bool)
            out[sl] = comp
            return out
    return None


def _largest(mask: np.ndarray) -> np.ndarray | None:
    """The largest 2D component of ``mask`` (None when empty)."""
    lab, n = ndi.label(mask)
    if n == 0:
        return None
    return lab == 1 + int(np.argmax(np.bincount(lab.ravel())[1:]))


FAT_HU = -100.0


def _follow(prev: np.ndarray, lab: np.ndarray, step_px: int) -> np.ndarray:
    """What of the components of ``lab`` touching ``prev`` lies within ``step_px`` pixels of it: a structure
    followed from slice to slice, which cannot jump onto a neighbour it touches."""
    near = morph.dilate(prev, max(1, step_px))
    hit = np.unique(lab[morph.dilate(prev) & (lab > 0)])
    return np.isin(lab, hit[hit > 0]) & near


def _trunk_start(lab: np.ndarray, hu: np.ndarray, px: tuple[float, float], tr_mm: tuple[float, float],
                 blood: float) -> tuple[int, int] | None:
    """The brachiocephalic trunk's centre in a slice above the arch: of the vessel centres (peaks of the distance to
    the vessels' edge; touching vessels keep a peak each, 2.5-12 mm thick), the nearest to the trachea (within 60
    mm) on its right front whose blood (with contrast) is like the arch's."""
    (sy, sx), (ty, tx) = px, tr_mm
    edt = ndi.distance_transform_edt(lab > 0, sampling=(sy, sx))
    yy, xx = np.indices(lab.shape)
    best = None
    for c in np.argwhere((edt == ndi.maximum_filter(edt, size=3)) & (edt >= 2.5) & (edt <= 12.0)):
        y, x = c[0] * sy, c[1] * sx
        d = float(np.hypot(y - ty, x - tx))
        if x > tx + 5.0 or y > ty + 5.0 or d > 60.0:
            continue
        r = float(edt[tuple(c)])
        med = float(np.median(hu[((yy - c[0]) * sy) ** 2 + ((xx - c[1]) * sx) ** 2 <= r * r]))
        if blood > 150.0 and not 0.6 * blood <= med <= 1.6 * blood:     # contrast: veins differ from arteries
            continue
        if best is None or d < best[0]:
            best = (d, (int(c[0]), int(c[1])))
    return None if best is None else best[1]


def _brachiocephalic_origin(scan: CTScan, lungs: Lungs, f: int, tr: tuple[float, float], k_top: int,
                            arch: np.ndarray, k_stop: int) -> float | None:
    """World z (mm) where the brachiocephalic trunk joins the aorta, or None when it cannot be followed.

    6 mm above the arch apex ``k_top`` the trunk is the artery nearest the trachea (within 60 mm) on its right
    front: the left common carotid and subclavian arteries lie left of the midline, the veins farther out, and with
    contrast the veins are far brighter or darker than the arch. It is followed down its centre line: in each
    slice, the thickest point (distance to the vessels' edge) within 3 mm + half its radius of its last centre,
    so a vein or branch it touches cannot pull it away; where its own cross-section ends (a branch entering its
    parent: above an unfolded arch's apex the trunk may already have divided) it continues in the nearest vessel
    at least as thick within 15 mm + its radius. The aorta is followed from the apex down, only to what touches
    it within 3 mm of where it was. The origin is the
    highest axial plane where the two meet (as a reader sees the trunk leave the arch, and as the TotalSegmentator
    reference masks define it), between the first slice where they touch and the one above. Vessels are cut half way
    between fat and the arch's blood (the edge of a blurred vessel), so the threshold suits scans with and
    without contrast.
    """
    sy, sx = scan.spacing[1] * f, scan.spacing[2] * f
    dz = abs(scan.spacing[0])
    step = max(1, int(round(3.0 / sx)))
    touch_px = max(1, int(round(dz / 2.0 / sx)))
    # ``arch``: the arch in the apex slice, as the apex search found it. The arch's blood, 8 mm below the apex
    # (the apex slice grazes the vessel's wall), up to 1500 HU (contrast)
    k_b = max(k_stop + 1, k_top - int(np.ceil(8.0 / dz)))
    lab_b = ndi.label(_vessel_mask(scan, lungs, k_b, f, tr, (-20.0, 1500.0), aorta_rings=True,
                                   air_as_lung=True))[0]
    below = np.isin(lab_b, np.unique(lab_b[morph.dilate(arch, step) & (lab_b > 0)])) & (lab_b > 0)
    blood = float(np.median(scan.hu[k_b, ::f, ::f][below if below.any() else arch]))
    hu_range = ((FAT_HU + min(blood, 400.0)) / 2, 1500.0)

    def label(k: int):
        t = _trachea_xy(lungs, k, k + 1) or tr
        return ndi.label(_vessel_mask(scan, lungs, k, f, t, hu_range, aorta_rings=True, air_as_lung=True))[0], t

    k0 = min(scan.shape[0] - 1, k_top + int(np.ceil(6.0 / dz)))
    lab, t = label(k0)
    hu = scan.hu[k0, ::f, ::f]
    ty, tx = t[0] * scan.spacing[1], t[1] * scan.spacing[2]
    yy, xx = np.indices(lab.shape)

    def disc(c, r):
        return ((yy - c[0]) * sy) ** 2 + ((xx - c[1]) * sx) ** 2 <= r * r

    centre = _trunk_start(lab, hu, (sy, sx), (ty, tx), blood)
    if centre is None:
        return None
    edt = ndi.distance_transform_edt(lab > 0, sampling=(sy, sx))
    # follow the trunk's centre line: the thickest point near its last centre, so a neighbour it touches (a vein,
    # the left common carotid) cannot pull it far
    r_mm = float(edt[centre])
    trunk, aorta = (lab == lab[centre]) & disc(centre, r_mm), None
    for k in range(k0 - 1, k_stop, -1):
        lab, _ = label(k)
        if aorta is None and k <= k_top:
            aorta = np.isin(lab, np.unique(lab[arch & (lab > 0)])) & (lab > 0) & ~trunk
        elif aorta is not None:
            aorta = _follow(aorta, lab, step) & ~trunk
        touching = np.unique(lab[morph.dilate(trunk) & (lab > 0)])
        cand = np.isin(lab, touching[touching > 0]) & ~(aorta if aorta is not None else False)
        edt = ndi.distance_transform_edt(cand, sampling=(sy, sx))
        moved = np.sqrt(((yy - centre[0]) * sy) ** 2 + ((xx - centre[1]) * sx) ** 2)
        score = np.where((moved <= 3.0 + 0.5 * r_mm) & (edt >= 0.5 * r_mm), edt - 0.5 * moved, -np.inf)
        if not np.isfinite(score.max()):
            # its own cross-section ended: a branch entering its parent (above the apex the trunk may already have
            # divided, and an oblique junction need not touch in the slice) continues in the nearby vessel, not the
            # aorta, at least as thick as itself
            edt = ndi.distance_transform_edt((lab > 0) & ~(aorta if aorta is not None else False), sampling=(sy, sx))
            cand = lab > 0
            score = np.where((moved <= 3.0 + r_mm + 12.0) & (edt >= r_mm), edt, -np.inf)
        if np.isfinite(score.max()):                       # the thickest point near the last centre
            centre = np.unravel_index(int(np.argmax(score)), score.shape)
            trunk = cand & disc(centre, min(float(edt[centre]), 1.5 * r_mm))
        elif aorta is None or not (morph.dilate(trunk, step) & aorta).any():
            return None                                    # lost, not joined to the aorta
        # touching: within one pixel, or on thick slices within half the slice thickness (partial volume
        # thins the two vessels' walls where they meet inside the slice)
        if aorta is not None and (morph.dilate(trunk, touch_px) & aorta).any():
            return scan.z_mm(k) + 0.5 * dz           # they first meet between this slice and the one above
    return None


#: Confidence of a great-vessel origin where the brachiocephalic trunk was followed down to the aorta, and of the
#: arch apex taken instead when it could not be.
ORIGIN_FOLLOWED_CONF = 0.75
ORIGIN_AT_APEX_CONF = 0.4


def _origin_below_apex(scan: CTScan, lungs: Lungs, f: int, tr: tuple[float, float], top: int, arch: np.ndarray,
                       kc: int) -> Landmark:
    """The great-vessel origin under the arch apex found in slice ``top``: the brachiocephalic trunk followed down
    to the aorta, or the apex itself (low confidence) when it cannot be followed."""
    apex = scan.z_mm(top) + 0.5 * abs(scan.spacing[0])
    z_bt = _brachiocephalic_origin(scan, lungs, f, tr, top, arch, kc)
    if z_bt is None or scan.slice_at_z(z_bt) is None:
        return _mk(scan, apex, ORIGIN_AT_APEX_CONF, "top of the aortic arch (highest slice where one vessel runs from "
                   "in front of the trachea round its left side to behind it); the brachiocephalic trunk could not be "
                   "followed down to the arch, and in an unfolded aorta it arises 2-3 cm lower")
    return _mk(scan, z_bt, ORIGIN_FOLLOWED_CONF, f"where the brachiocephalic trunk, followed down from above the "
               f"aortic arch, joins the aorta (arch apex at {apex:.1f} mm)")


def _after_rejected(lm: Landmark, rejected: list[str]) -> Landmark:
    """``lm`` as it is, or, when higher candidates were rejected, at confidence 0.5 at most with them noted."""
    if not rejected:
        return lm
    return Landmark(lm.z_mm, lm.slice_index, min(lm.confidence, 0.5),
                    f"{lm.note}; rejected higher: {'; '.join(rejected)}")


def _great_vessel_origin(scan: CTScan, lungs: Lungs, carina: Landmark, apex_z: float | None = None) -> Landmark:
    """The great-vessel origin: arch apices from the top down (at most 90 mm above the carina and 20 mm below the
    lung apex), the first whose origin lies at a plausible distance from the carina and the apex."""
    f = max(1, int(round(1.5 / scan.spacing[2])))
    dz = abs(scan.spacing[0])
    top_k = scan.shape[0] - 1
    if carina.z_mm is not None:
        kc = scan.slice_at_z(carina.z_mm)
        k_hi = min(top_k, kc + int(np.ceil(90.0 / dz)))
    else:   # no carina in view (e.g. a mediastinal crop): search wherever the trachea is seen
        ks_air = np.nonzero(lungs.airways.any(axis=(1, 2)))[0]
        if len(ks_air) == 0:
            return Landmark(None, None, 0.0, "needs the trachea to find the mediastinum")
        kc, k_hi = int(ks_air.min()) - 1, int(ks_air.max())
    if apex_z is not None:
        k_hi = min(k_hi, scan.slice_at_z(max(apex_z - PLAUSIBLE_MM[("apex", "great_vessel_origin")][0],
                                             scan.z_mm(0))) or 0)
    tr = _trachea_xy(lungs, kc + 1, k_hi + 1)
    if tr is None:
        return Landmark(None, None, 0.0, "the trachea is not visible above the carina")
    rejected: list[str] = []
    fallback: Landmark | None = None      # an apex whose trunk could not be followed, kept while a lower one is tried
    k = k_hi
    while k > kc and len(rejected) < 3:
        # from the top down, the first slice that cuts the arch is its apex
        top, arch = next(((j, a) for j in range(k, kc, -1)
                          if (a := _arch_component(scan, lungs, j, f, tr)) is not None), (None, None))
        if top is None:
            break
        if (top_k - top) * dz < 10.0:
            return Landmark(None, None, 0.0, "the aortic arch reaches within 10 mm of the top of the scan: the "
                            "origin of the great vessels may lie above it")
        lm = _origin_below_apex(scan, lungs, f, tr, top, arch, kc)
        why = (_in_range(("great_vessel_origin", "carina"), lm.z_mm, carina.z_mm)
               or _in_range(("apex", "great_vessel_origin"), apex_z, lm.z_mm))
        if why:
            rejected.append(f"z = {lm.z_mm:.1f} mm ({why})")
        elif fallback is None and lm.confidence < ORIGIN_FOLLOWED_CONF:
            # no trunk followed from this apex: in contrast-filled veins at the thoracic inlet a vein and an artery
            # can look like the arch; the next apex down is tried once, and kept if its trunk is followed
            fallback = _after_rejected(lm, rejected)
        elif fallback is not None and lm.confidence <= fallback.confidence:
            return fallback           # the lower apex is no better: the first one stays
        else:
            if fallback is not None:
                lm = replace(lm, note=f"{lm.note}; a higher arch-like structure without a trunk passed over: "
                                      f"z = {fallback.z_mm:.1f} mm")
            return _after_rejected(lm, rejected)
        k = top - int(np.ceil(10.0 / dz))
    if fallback is not None:
        return fallback
    if rejected:
        return Landmark(None, None, 0.0, "no plausible great-vessel origin: " + "; ".join(rejected))
    return Landmark(None, None, 0.0, "no aortic arch found above the carina (the scan may start below the arch)")


def _spine_front(scan: CTScan, k_from: int, k_to: int, tx: float, f: int, ty: float) -> float | None:
    """y (mm, array frame) of the front of the vertebral bodies near the midline (``tx``) and behind the trachea
    (``ty``; in front of it lie the sternum and, with contrast, blood as bright as bone), median over slices."""
    sy, sx = scan.spacing[1] * f, scan.spacing[2] * f
    fronts = []
    for k in range(max(k_from, 0), min(k_to, scan.shape[0])):
        bone = scan.hu[k, ::f, ::f] > 200
        lab, n = ndi.label(bone)
        big = np.bincount(lab.ravel(), minlength=n + 1) * sx * sy >= 300     # the specks are most components
        best = None
        for j, sl in enumerate(ndi.find_objects(lab), start=1):
            if not big[j]:
                continue
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
    widths = np.asarray(widths)
    w = ndi.uniform_filter1d(widths, size=3, mode="nearest")
    if w.max() <= 30.0:
        return _venous_prior(scan, carina, dome, "no atrial structure found in front of the spine")
    share = float(np.mean(widths > 0))
    if share > ATRIUM_SHARE_MAX:
        return _venous_prior(scan, carina, dome, f"no atrium stands out: a structure crosses the midline in front of "
                                                 f"the spine on {share:.0%} of the slices searched below the carina")
    note = "widest structure just in front of the spine below the carina (left atrium with the veins)"
    i = _widest(w)
    near = carina.z_mm - np.array([scan.z_mm(j) for j in ks]) < PLAUSIBLE_MM[("carina", "venous_confluence")][0]
    k = ks[i]
    if near[i]:
        # too near the carina (a hilum filled in by dense disease): the next candidate, at a plausible distance
        w[near] = 0
        if w.max() > 30.0:
            k = ks[_widest(w)]
            note += "; the widest, too near the carina, was passed over"
    contrast = float(w.max() / (np.median(w) + 1e-6))
    # at most 0.75: on held-out phantoms the confluence was up to 5-6 mm off even when the atrium stood out
    conf = float(np.clip(0.3 + 0.4 * (contrast - 1.0), 0.3, 0.75))
    return Landmark(scan.z_mm(k), scan.input_slice_index(k), conf, note)


def _widest(w: np.ndarray) -> int:
    """Index of the widest place: the middle of the slices within 5 % of the maximum width."""
    return int(round(float(np.nonzero(w >= 0.95 * w.max())[0].mean())))


def _venous_prior(scan: CTScan, carina: Landmark, dome: Landmark, why: str) -> Landmark:
    if carina.z_mm is None:
        return Landmark(None, None, 0.0, why)
    if dome.z_mm is not None and dome.z_mm < carina.z_mm:
        z = carina.z_mm - VENOUS_PRIOR_FRACTION * (carina.z_mm - dome.z_mm)
        where = f"placed {VENOUS_PRIOR_FRACTION:.0%} of the way from the carina to the right dome (prior)"
    else:
        z, where = carina.z_mm - VENOUS_PRIOR_MM, f"placed {VENOUS_PRIOR_MM:.0f} mm below the carina (prior)"
    k = scan.slice_at_z(z)
    if k is None:
        return Landmark(None, None, 0.0, why + "; the prior position lies outside the scan")
    return Landmark(z, scan.input_slice_index(k), 0.2, f"{why}; {where}")


def find_great_vessel_origin(scan: CTScan, lungs: Lungs | None = None) -> Landmark:
    """The great-vessel origin (top of the aortic arch) alone; works on mediastinal crops without lungs.

    Without ``lungs`` the trachea is taken as the internal air tube that spans most slices (from
    :func:`sscild.anatomy.segment_airways_only`) and the search region is a box around it.
    """
    if lungs is None:
        from .anatomy import segment_airways_only

        lungs = segment_airways_only(scan)
    return _great_vessel_origin(scan, lungs, _carina(scan, lungs, None))


def image_noise_hu(scan: CTScan, lungs: Lungs, n_slices: int = 8) -> float:
    """Robust estimate of the image noise (HU SD) inside the lungs: the median absolute difference of neighbouring
    pixels (1.4826 MAD / sqrt 2) over up to ``n_slices`` lung slices. Lung texture adds little (vessels are rare
    pixels); smooth kernels give less, as they have less noise."""
    ks = np.nonzero(lungs.mask.any(axis=(1, 2)))[0]
    if len(ks) == 0:
        return 0.0
    diffs = []
    for k in ks[np.linspace(0, len(ks) - 1, min(n_slices, len(ks))).astype(int)]:
        m = lungs.mask[k]
        both = m[:, 1:] & m[:, :-1]
        diffs.append(np.diff(scan.hu[k].astype(np.float32), axis=1)[both])
    d = np.concatenate(diffs)
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / np.sqrt(2.0)) if d.size else 0.0


def _quality_factor(scan: CTScan, noise: float) -> tuple[float, str]:
    """Multiplier of every landmark's confidence for image noise and slice spacing, and why (empty when 1)."""
    f, why = 1.0, []
    if noise > NOISE_OK_HU:
        f *= float(np.clip(NOISE_OK_HU / noise, 0.3, 1.0))
        why.append(f"noisy image (about {noise:.0f} HU SD in the lungs)")
    dz = abs(scan.spacing[0])
    if dz > SPACING_OK_MM:
        f *= float(np.clip(SPACING_OK_MM / dz, 0.4, 1.0))
        why.append(f"{dz:.1f} mm slices: a level can be a slice off")
    return f, "; ".join(why)


def _checked(lm: dict[str, Landmark], scan: CTScan, noise: float) -> dict[str, Landmark]:
    """The landmarks after the checks between them: carina to dome, carina to confluence, confluence to dome
    (an implausible pair keeps both landmarks at low confidence, with the reason), then image quality."""
    out = dict(lm)
    for up, low in (("carina", "right_dome"), ("carina", "venous_confluence"), ("venous_confluence", "right_dome")):
        why = _in_range((up, low), out[up].z_mm, out[low].z_mm)
        if why:
            for n in (up, low):
                old = out[n]
                out[n] = Landmark(old.z_mm, old.slice_index, min(old.confidence, IMPLAUSIBLE_CONFIDENCE),
                                  f"{old.note}; implausible: {why}")
    f, why = _quality_factor(scan, noise)
    if f < 1.0:
        out = {n: Landmark(v.z_mm, v.slice_index, v.confidence * f, f"{v.note}; confidence lowered: {why}")
               if v.z_mm is not None else v for n, v in out.items()}
    return out


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
        z_mm is the centre of the slice that is scored for each level; a level whose landmark is outside the scan
        or the lungs, or is not found, is None with a note; the confidences fall where landmarks break the
        distances of :data:`PLAUSIBLE_MM`, with image noise and with thick slices.

    Raises
    ------
    NoLungsError
        When ``lungs`` is empty.
    """
    if not lungs.mask.any():
        raise NoLungsError("no lungs found: the Goh levels are defined on the lungs")
    zl = np.nonzero(lungs.mask.any(axis=(1, 2)))[0]
    lung_z = tuple(sorted((scan.z_mm(zl.min()), scan.z_mm(zl.max()))))
    apex_z = None if lungs.cut_off.get("apex", False) else lung_z[1] + 0.5 * abs(scan.spacing[0])
    carina = _carina(scan, lungs, apex_z)
    dome = _right_dome(scan, lungs)
    gvo = _great_vessel_origin(scan, lungs, carina, apex_z)
    ven = _venous_confluence(scan, lungs, carina, dome)
    lm = {"great_vessel_origin": gvo, "carina": carina, "venous_confluence": ven, "right_dome": dome}
    return levels_from_landmarks(scan, _checked(lm, scan, image_noise_hu(scan, lungs)), lung_z=lung_z)


#: Levels of the two methods within this distance (mm) agree; agreement raises the confidence, and the level is the
#: two positions' mean weighted by their confidences (python bench/run_all.py levels: the phantoms' combined mean
#: error fell in every condition, e.g. clean 1.89 -> 1.56 mm, ends 10 mm below the dome 2.52 -> 1.70, against the
#: more confident one's slice; the real scans' levels stayed inside their by-eye ranges, and LIDC kept every fourth
#: slice no longer took L-Net's carina 6 mm below the range).
AGREE_MM = LEVELS_AGREE_MM
#: Weight of the learned method's own confidence: where the two agree (corroboration) and where they disagree.
#: L-Net is trained on phantoms and its window spread is not calibrated on real scans: on the five shared real
#: scans it reported 0.95-1.0 for levels 20-80 mm off and placed levels whose landmarks are outside the scan
#: (bench/results/levels.md), so against the checked anatomy it wins only over priors and fallbacks.
LEARNED_WEIGHT_AGREE = 0.6
LEARNED_WEIGHT_DISAGREE = 0.2


def _combine_one(name: str, a: tuple, b: tuple, interior: bool, agree_mm: float) -> tuple:
    """(z, slice_index, confidence, note) of one level from the anatomical ``a`` and learned ``b`` entries;
    ``interior``: the learned z lies between two levels the anatomy placed (a gap, not beyond the anatomy's span)."""
    (za, ka, ca, na), (zb, kb, cb, nb) = a, b
    if za is None and zb is None:
        return None, None, 0.0, f"anatomy: {na}; L-Net: {nb}"
    if zb is None:
        return za, ka, ca, f"{na} (L-Net did not place {name}: {nb})"
    if za is None:
        if not interior:
            return None, None, 0.0, (f"{na} (L-Net's {zb:.1f} mm not used: it lies beyond the levels the anatomy "
                                     "placed, where the landmark may be outside the scan)")
        return zb, kb, min(cb * LEARNED_WEIGHT_AGREE, 0.5), f"L-Net only ({nb}); the anatomy did not place it: {na}"
    d = abs(za - zb)
    if d <= agree_mm:
        w = cb * LEARNED_WEIGHT_AGREE
        c = 1.0 - (1.0 - ca) * (1.0 - w) if d <= agree_mm / 2 else max(ca, w)
        # the confidence-weighted mean (its slice index is the more confident one's until snapped to the scan)
        z = (ca * za + w * zb) / (ca + w) if ca + w > 0 else za
        return (z, ka if ca >= w else kb, float(min(c, 0.95)),
                f"anatomy ({za:.1f} mm) and L-Net ({zb:.1f} mm) agree within {d:.1f} mm: their confidence-weighted "
                f"mean ({na})")
    w = cb * LEARNED_WEIGHT_DISAGREE
    pick, who = ((za, ka, ca), "anatomy") if ca >= w else ((zb, kb, w), "L-Net")
    return (pick[0], pick[1], float(min(pick[2], 0.5) * 0.6),
            f"anatomy ({za:.1f} mm, confidence {ca:.2f}: {na}) and L-Net ({zb:.1f} mm, confidence {cb:.2f}) "
            f"disagree by {d:.0f} mm; {who} kept")


def _anatomy_where_lnet_conflicts(entries: dict[str, tuple], anatomical: GohLevels, scan: CTScan | None
                                  ) -> dict[str, tuple]:
    """The combined entries, with ``scan`` each z at the centre of its slice; a level whose L-Net position lies on
    another level's slice or not between its neighbours gets the anatomy's position back (see
    :func:`combine_levels`)."""
    out = {n: (e if e[0] is None or scan is None else _on_slice(scan, scan.slice_at_z(e[0]), e))
           for n, e in entries.items()}
    for n in LEVELS:
        z, za = out[n][0], anatomical.z_mm[n]
        if z is None or za is None or z == za:
            continue
        above, below = _neighbours({m: e[0] for m, e in out.items()}, n)
        if (above is not None and z >= above) or (below is not None and z <= below):
            out[n] = (za, anatomical.slice_index[n], out[n][2],
                      f"{out[n][3]}; L-Net's position is not between the neighbouring levels (or on another "
                      f"level's slice): the anatomy's kept")
    return out


def _on_slice(scan: CTScan, k: int, entry: tuple) -> tuple:
    """``entry`` (z, slice index as read, confidence, note) moved to the centre of the scan's slice ``k``."""
    return (scan.z_mm(k), scan.input_slice_index(k), *entry[2:])


def _neighbours(z_mm: dict[str, float | None], name: str) -> tuple[float | None, float | None]:
    """The z of the nearest placed levels above and below ``name`` (None where there is none)."""
    i = LEVELS.index(name)
    above = [z_mm[n] for n in LEVELS[:i] if z_mm[n] is not None]
    below = [z_mm[n] for n in LEVELS[i + 1:] if z_mm[n] is not None]
    return (min(above) if above else None), (max(below) if below else None)


def _between_anatomical(anatomical: GohLevels, name: str, z: float | None) -> bool:
    """Whether ``z`` lies below a level the anatomy placed above ``name`` and above one it placed below."""
    above, below = _neighbours(anatomical.z_mm, name)
    return z is not None and above is not None and below is not None and above > z > below


def combine_levels(anatomical: GohLevels, learned: GohLevels, *, agree_mm: float = AGREE_MM,
                   scan: CTScan | None = None) -> GohLevels:
    """One set of levels from the anatomical method and a learned one (L-Net), confidence from their agreement.

    Per level: both within ``agree_mm`` -> their confidence-weighted mean (L-Net's confidence weighted by
    :data:`LEARNED_WEIGHT_AGREE`), confidence raised (both within half of it: 1 - (1 - c_a)(1 - w c_l)); apart ->
    the more confident (L-Net weighted by :data:`LEARNED_WEIGHT_DISAGREE`) at a low confidence (<= 0.3) with both
    positions in the note; L-Net alone -> used only inside a gap of the anatomical levels (never beyond them, where
    the landmark may be outside the scan), at most 0.5. The anatomical landmarks and the order check are kept.

    A level taken from L-Net that is not between its neighbours keeps the anatomy's position (rather than being
    dropped by the order check). With ``scan`` (as ``analyze`` combines them) each z_mm is the centre of the slice
    scored (L-Net's positions are continuous, the anatomy's slice centres already), and a level that L-Net's
    position puts on another level's slice (thick slices) keeps the anatomy's too.

    Examples
    --------
    >>> a = GohLevels({n: -100.0 - 30 * i for i, n in enumerate(LEVELS)}, {n: i for i, n in enumerate(LEVELS)},
    ...               {n: 0.6 for n in LEVELS}, {n: "" for n in LEVELS})
    >>> b = GohLevels({n: -103.0 - 30 * i for i, n in enumerate(LEVELS)}, {n: i for i, n in enumerate(LEVELS)},
    ...               {n: 0.9 for n in LEVELS}, {n: "" for n in LEVELS}, method="lnet")
    >>> g = combine_levels(a, b)
    >>> g.method, round(g.z_mm["L1"], 1), round(g.confidence["L1"], 2)
    ('anatomy+lnet', -101.4, 0.82)
    """
    entries = {n: _combine_one(n, (anatomical.z_mm[n], anatomical.slice_index[n], anatomical.confidence[n],
                                   anatomical.notes[n]),
                               (learned.z_mm.get(n), learned.slice_index.get(n), learned.confidence.get(n, 0.0),
                                learned.notes.get(n, "")),
                               _between_anatomical(anatomical, n, learned.z_mm.get(n)), agree_mm) for n in LEVELS}
    entries = _enforce_order(_anatomy_where_lnet_conflicts(entries, anatomical, scan))
    return GohLevels({n: entries[n][0] for n in LEVELS}, {n: entries[n][1] for n in LEVELS},
                     {n: float(entries[n][2]) for n in LEVELS}, {n: entries[n][3] for n in LEVELS},
                     dict(anatomical.landmarks), f"{anatomical.method}+{learned.method}")
