"""The Goh scoring domain in one place: levels, patterns, label classes, area scores, lung zones, staging.

Every module takes these names and rules from here, so "L1".."L5", the lesion classes, what "% of lung" means on
an empty lung, which slice is "upper", and when a patient is "extensive" are decided once.

Examples
--------
>>> from sscild.domain import LEVELS, LesionClass, goh_stage
>>> LEVELS[1], int(LesionClass.GG)
('L2', 2)
>>> goh_stage(35.0).stage, goh_stage(5.0).stage
('extensive', 'limited')
>>> goh_stage(15.0).stage, goh_stage(15.0, fvc_pct=65.0).stage
('indeterminate', 'extensive')
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Mapping

import numpy as np

#: The five Goh scoring levels, cranial to caudal.
LEVELS: tuple[str, ...] = ("L1", "L2", "L3", "L4", "L5")
#: What anatomy defines each level (Goh et al., AJRCCM 2008).
LEVEL_NAMES: dict[str, str] = {
    "L1": "origin of the great vessels", "L2": "main carina", "L3": "pulmonary venous confluence",
    "L4": "halfway L3-L5", "L5": "1 cm above the right hemidiaphragm"}
#: The scored patterns: total disease extent, ground glass, reticulation (each % of the slice's lung area).
PATTERNS: tuple[str, ...] = ("TOT", "GG", "RET")
#: Lung zones, cranial to caudal (thirds of the lung's height).
ZONES: tuple[str, ...] = ("upper", "middle", "lower")

#: Extent thresholds of the Goh staging (% of lung) and the FVC threshold (% predicted).
GOH_LIMITED_BELOW = 10.0
GOH_EXTENSIVE_ABOVE = 30.0
GOH_SIMPLE_THRESHOLD = 20.0
GOH_FVC_THRESHOLD = 70.0
#: A Goh extent needs at least this many scored levels to be staged.
MIN_LEVELS_FOR_STAGE = 3
#: Levels placed by anatomy and by L-Net within this distance (mm) agree (:func:`sscild.levels.combine_levels`),
#: and the rule of their combination in words (the methods paragraph and the report).
LEVELS_AGREE_MM = 10.0
COMBINED_LEVELS_RULE = (f"where they agree within {LEVELS_AGREE_MM:g} mm the level is their confidence-weighted mean "
                        "at a raised confidence; where they disagree the anatomical landmark is kept unless it is "
                        "only a prior")


class LungLabel(IntEnum):
    """Labels of ``lungs.nii.gz``."""

    OUTSIDE = 0
    RIGHT = 1
    LEFT = 2


class LesionClass(IntEnum):
    """Labels of ``lesions.nii.gz``."""

    OUTSIDE = 0
    NORMAL = 1
    GG = 2
    RET = 3


def area_percent(part: np.ndarray, lung: np.ndarray) -> float | None:
    """Area (or volume) of ``part`` inside ``lung`` in % of ``lung``; None when the lung is empty.

    >>> import numpy as np
    >>> lung = np.ones((4, 4), bool); part = np.zeros((4, 4), bool); part[0] = True
    >>> area_percent(part, lung)
    25.0
    >>> area_percent(part, np.zeros((4, 4), bool)) is None
    True
    """
    return percent(int(np.count_nonzero(np.logical_and(part, lung))), int(np.count_nonzero(lung)))


def percent(count: int, total: int) -> float | None:
    """``count`` in % of ``total``; None when ``total`` is 0 (an empty lung has no percentage).

    >>> percent(1, 4), percent(0, 0)
    (25.0, None)
    """
    return None if total == 0 else 100.0 * count / total


def zone_bounds(lung: np.ndarray) -> dict[str, tuple[int, int]]:
    """Slice ranges ``[a, b)`` of the upper, middle and lower zones: thirds of the lung's height.

    ``lung`` is a (z, y, x) mask with z growing toward the head, so the lowest indices are the lower zone.
    Boundaries are rounded to the nearest slice once, here, so every module agrees which slice is which zone.
    Empty lung -> ``{}``.

    >>> import numpy as np
    >>> m = np.zeros((10, 2, 2), bool); m[1:10] = True
    >>> zone_bounds(m)
    {'upper': (7, 10), 'middle': (4, 7), 'lower': (1, 4)}
    """
    zs = np.flatnonzero(np.asarray(lung).reshape(len(lung), -1).any(1))
    if zs.size == 0:
        return {}
    e = [int(round(v)) for v in np.linspace(zs.min(), zs.max() + 1, 4)]
    return {"upper": (e[2], e[3]), "middle": (e[1], e[2]), "lower": (e[0], e[1])}


@dataclass(frozen=True)
class GohExtent:
    """Mean TOT over the scored levels, with how many levels it rests on."""

    extent: float | None
    n_levels: int
    note: str


def goh_extent(tot_by_level: Mapping[str, float | None]) -> GohExtent:
    """The Goh extent: mean TOT over the levels that were scored; says when fewer than five were.

    >>> goh_extent({"L1": 10.0, "L2": 20.0, "L3": None, "L4": 30.0, "L5": None}).extent
    20.0
    """
    vals = [float(v) for n, v in tot_by_level.items() if n in LEVELS and v is not None and np.isfinite(v)]
    if not vals:
        return GohExtent(None, 0, "no level scored")
    note = "mean TOT of the 5 levels" if len(vals) == len(LEVELS) else \
        f"mean TOT of only {len(vals)} of {len(LEVELS)} levels"
    return GohExtent(float(np.mean(vals)), len(vals), note)


@dataclass(frozen=True)
class GohStage:
    """Goh stage (``limited`` / ``extensive`` / ``indeterminate`` / ``unknown``) and the rule that decided it."""

    stage: str
    rule: str


def goh_stage(extent: float | None, fvc_pct: float | None = None, n_levels: int | None = None) -> GohStage:
    """Goh staging as published (Goh et al., AJRCCM 2008;177:1248).

    Extent < 10 % -> limited; > 30 % -> extensive; 10-30 % is indeterminate and decided by FVC (% predicted):
    < 70 % -> extensive, >= 70 % -> limited. Without FVC in that band the stage is ``indeterminate`` (the rule
    text gives the simplified 20 % threshold's answer beside it). ``n_levels`` below
    :data:`MIN_LEVELS_FOR_STAGE` gives ``unknown``.

    >>> goh_stage(10.0).stage, goh_stage(30.0).stage, goh_stage(30.01).stage, goh_stage(9.99).stage
    ('indeterminate', 'indeterminate', 'extensive', 'limited')
    >>> goh_stage(20.0, fvc_pct=70.0).stage, goh_stage(20.0, fvc_pct=69.9).stage
    ('limited', 'extensive')
    >>> goh_stage(40.0, n_levels=2).stage
    'unknown'
    """
    if extent is None or not np.isfinite(extent):
        return GohStage("unknown", "no extent measured")
    if n_levels is not None and n_levels < MIN_LEVELS_FOR_STAGE:
        return GohStage("unknown", f"only {n_levels} level(s) scored; staging needs at least "
                                   f"{MIN_LEVELS_FOR_STAGE}")
    if extent < GOH_LIMITED_BELOW:
        return GohStage("limited", f"extent {extent:.1f} % < {GOH_LIMITED_BELOW:.0f} %")
    if extent > GOH_EXTENSIVE_ABOVE:
        return GohStage("extensive", f"extent {extent:.1f} % > {GOH_EXTENSIVE_ABOVE:.0f} %")
    band = f"extent {extent:.1f} % is indeterminate ({GOH_LIMITED_BELOW:.0f}-{GOH_EXTENSIVE_ABOVE:.0f} %)"
    if fvc_pct is not None and np.isfinite(fvc_pct):
        ext = fvc_pct < GOH_FVC_THRESHOLD
        return GohStage("extensive" if ext else "limited",
                        f"{band}; FVC {fvc_pct:.0f} % {'<' if ext else '>='} {GOH_FVC_THRESHOLD:.0f} % predicted")
    simple = "extensive" if extent > GOH_SIMPLE_THRESHOLD else "limited"
    return GohStage("indeterminate", f"{band}: FVC needed (the simplified {GOH_SIMPLE_THRESHOLD:.0f} % "
                                     f"threshold alone would say {simple})")
