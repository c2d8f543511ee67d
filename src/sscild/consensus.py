"""One answer per level: S-Net's score with its spread under test-time augmentation, the lesion map's area ratio
of the same slice beside it, their disagreement, and which number is the headline.

- **Too little lung**: a slice whose lung area is below :data:`MIN_LUNG_AREA_CM2` is not scored (a slice through
  the trachea, the apex or the dome tips holds a few partial-volume pixels; any % of them is noise).
- **Uncertainty**: the slice is scored as it is, mirrored left-right, and rotated by +-15 degrees (S-Net was
  trained with rotations of +-30 degrees); the standard deviation of the four answers is the score's spread.
- **Agreement**: the lesion U-Net's area ratios (% of the slice's lung area) at the same slice; the absolute
  difference is reported, and a difference above :data:`DISAGREE_POINTS` is a warning.
- **Uncertainty of each score** (:func:`score_uncertainty`): the augmentation spread and half the difference
  from the lesion map, added in quadrature (measured against the error in ``python bench/run_all.py real``).

Examples
--------
>>> import numpy as np
>>> lung = np.zeros((100, 100), bool); lung[20:80, 20:80] = True
>>> round(lung_area_cm2(lung, (1.0, 1.0)), 1)
36.0
>>> enough_lung(lung, (1.0, 1.0)), enough_lung(lung[:30], (1.0, 1.0))
(True, False)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import ndimage as ndi

#: No score on a level slice whose lungs cover less than this (cm^2).
MIN_LUNG_AREA_CM2 = 15.0
#: S-Net and the lesion map disagreeing by more than this (% points of TOT) is a warning.
DISAGREE_POINTS = 10.0


def lung_area_cm2(lung: np.ndarray, pixel_mm: tuple[float, float]) -> float | np.ndarray:
    """Lung area of one slice (y, x) in cm^2, or of each slice of a (z, y, x) mask (an array)."""
    area = np.count_nonzero(lung, axis=(-2, -1)) * float(pixel_mm[0]) * float(pixel_mm[1]) / 100.0
    return float(area) if np.ndim(area) == 0 else area


def enough_lung(lung: np.ndarray, pixel_mm: tuple[float, float]) -> bool:
    """True when the slice holds at least :data:`MIN_LUNG_AREA_CM2` of lung."""
    return lung_area_cm2(lung, pixel_mm) >= MIN_LUNG_AREA_CM2


def _variants(hu: np.ndarray, lung: np.ndarray):
    yield hu, lung
    yield hu[:, ::-1], lung[:, ::-1]
    for ang in (-15.0, 15.0):
        h = ndi.rotate(hu, ang, reshape=False, order=1, mode="nearest")
        m = ndi.rotate(lung.astype(np.uint8), ang, reshape=False, order=0, mode="constant") > 0
        yield h, m


def tta_scores(scorer: Callable[[np.ndarray, np.ndarray], np.ndarray], hu: np.ndarray, lung: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """Score one slice as it is and under three augmentations; returns (the unaugmented TOT/GG/RET, their SD).

    ``scorer(images (N, H, W), lungs (N, H, W)) -> (N, 3)`` (e.g. :class:`sscild.scoring.snet.SNetScorer`).
    """
    hs, ls = zip(*_variants(np.asarray(hu, np.float32), np.asarray(lung, bool)))
    s = np.asarray(scorer(np.ascontiguousarray(np.stack(hs)), np.ascontiguousarray(np.stack(ls))), float)
    return s[0], s.std(axis=0, ddof=1)


def score_uncertainty(sd, snet, lesion=None) -> np.ndarray:
    """The uncertainty of S-Net's scores (TOT, GG, RET; last axis): their test-time-augmentation SD ``sd`` and,
    given the lesion map's area ratios ``lesion`` of the same slice, half the two answers' difference, added in
    quadrature: sqrt(sd^2 + (|snet - lesion| / 2)^2). Two learned answers that disagree say the slice is hard
    even when S-Net alone is steady under augmentation.

    >>> score_uncertainty([3.0, 1.0, 1.0], [20.0, 10.0, 10.0], [12.0, 10.0, 10.0]).round(2).tolist()
    [5.0, 1.0, 1.0]
    """
    u = np.asarray(sd, float)
    if lesion is None:
        return u
    return np.hypot(u, (np.asarray(snet, float) - np.asarray(lesion, float)) / 2.0)


@dataclass(frozen=True)
class LevelAgreement:
    """S-Net and the lesion map on one level slice."""

    snet_tot: float | None
    lesion_tot: float | None
    difference: float | None
    headline: str
    note: str


def level_agreement(snet_tot: float | None, lesion_tot: float | None, headline: str = "S-Net") -> LevelAgreement:
    """Compare the two answers for one slice; ``headline`` names the number the report leads with.

    >>> level_agreement(12.0, 30.0).note
    'S-Net 12.0 % vs lesion map 30.0 %: they disagree by 18.0 points; look at the slice'
    """
    if snet_tot is None or lesion_tot is None:
        return LevelAgreement(snet_tot, lesion_tot, None, headline, "only one method scored this slice")
    d = abs(float(snet_tot) - float(lesion_tot))
    note = f"S-Net {snet_tot:.1f} % vs lesion map {lesion_tot:.1f} %"
    note += f": they disagree by {d:.1f} points; look at the slice" if d > DISAGREE_POINTS else \
        f": agree within {DISAGREE_POINTS:.0f} points"
    return LevelAgreement(float(snet_tot), float(lesion_tot), d, headline, note)
