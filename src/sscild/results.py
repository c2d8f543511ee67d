"""The typed results of one analysis: :class:`LevelScores`, :class:`LesionMaps`, :class:`HeatMaps`, :class:`Analysis`.

Each is a frozen dataclass; ``to_dict()`` gives the JSON written to ``scores.json``, ``lesions.json`` and
``analysis.json`` (the shapes the README documents).

Examples
--------
>>> from sscild.results import LevelScore, LevelScores
>>> s = LevelScores.from_levels({"L1": LevelScore(10.0, 6.0, 5.0, 40), "L2": LevelScore(20.0, 12.0, 9.0, 30),
...                              "L3": LevelScore(30.0, 20.0, 12.0, 20)})
>>> round(s.goh_extent, 1), s.n_levels_scored, s.goh_stage
(20.0, 3, 'indeterminate')
>>> s.extent_note
'mean TOT of only 3 of 5 levels'
>>> s.to_dict()["levels"]["L2"]["TOT"]
20.0
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from .domain import LEVELS, PATTERNS, goh_extent, goh_stage

if TYPE_CHECKING:  # the stage modules import scipy/torch; the types are only needed for annotations
    from .anatomy import Lungs
    from .density import DensityMetrics
    from .explain import HeatMap
    from .levels import GohLevels
    from .quality import QualityReport
    from .regions import RegionalMetrics
    from .scan import CTScan
    from .settings import AnalysisSettings
    from .vessels import Vessels

#: DICOM free-text fields that can hold a name or a note about the patient: only with ``show_phi``.
FREE_TEXT_META = ("series_description", "study_description", "protocol_name", "image_comments")
#: Patient identifiers and dates (read from the DICOM header on demand): only with ``show_phi``.
PHI_META = ("patient_name", "patient_id", "patient_birth_date", "study_date", "accession_number")


@dataclass(frozen=True)
class LevelScore:
    """S-Net's scores of one level slice (% of the slice's lung area); ``slice`` is the array index.

    ``TOT_sd``, ``GG_sd``, ``RET_sd``: the scores' SD under test-time augmentation
    (:func:`sscild.consensus.tta_scores`); ``agreement``: the lesion map's ratio on the same slice beside S-Net
    (:func:`sscild.consensus.level_agreement` as a dict, with the map's ``lesion_GG`` / ``lesion_RET`` ratios and
    each score's ``uncertainty``, :func:`sscild.consensus.score_uncertainty`), when the lesion model ran.
    """

    TOT: float | None
    GG: float | None
    RET: float | None
    slice: int | None
    note: str = ""
    TOT_sd: float | None = None
    GG_sd: float | None = None
    RET_sd: float | None = None
    agreement: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"TOT": self.TOT, "GG": self.GG, "RET": self.RET, "slice": self.slice}
        if self.TOT_sd is not None:
            d.update({"TOT_sd": self.TOT_sd, "GG_sd": self.GG_sd, "RET_sd": self.RET_sd})
        if self.agreement is not None:
            d["agreement"] = self.agreement
        if self.note:
            d["note"] = self.note
        return d


@dataclass(frozen=True)
class LevelScores:
    """The five levels' scores, the Goh extent (mean TOT of the scored levels) and the Goh stage."""

    levels: dict[str, LevelScore]
    goh_extent: float | None
    n_levels_scored: int
    extent_note: str
    goh_stage: str
    stage_rule: str

    @classmethod
    def from_levels(cls, levels: Mapping[str, LevelScore], fvc_pct: float | None = None) -> "LevelScores":
        """Extent and stage from :func:`sscild.domain.goh_extent` / :func:`~sscild.domain.goh_stage`."""
        ext = goh_extent({n: s.TOT for n, s in levels.items()})
        st = goh_stage(ext.extent, fvc_pct=fvc_pct, n_levels=ext.n_levels)
        return cls(dict(levels), ext.extent, ext.n_levels, ext.note, st.stage, st.rule)

    def table(self) -> dict[str, dict[str, float | None]]:
        """Level -> pattern -> score (None where not scored)."""
        return {n: {p: getattr(s, p) for p in PATTERNS} for n, s in self.levels.items()}

    def uncertainty(self) -> dict[str, dict[str, float]]:
        """Level -> pattern -> the score's uncertainty, for the levels that have one (both models ran)."""
        return {n: dict(s.agreement["uncertainty"]) for n, s in self.levels.items()
                if s.agreement and "uncertainty" in s.agreement}

    def to_dict(self) -> dict[str, Any]:
        """The body of ``scores.json``."""
        return {"levels": {n: s.to_dict() for n, s in self.levels.items()}, "goh_extent": self.goh_extent,
                "n_levels_scored": self.n_levels_scored, "goh_extent_note": self.extent_note,
                "goh_stage": self.goh_stage, "goh_stage_rule": self.stage_rule}


@dataclass(frozen=True, eq=False)
class HeatMaps:
    """Occlusion heat maps of the scored level slices and the scores derived from them.

    ``maps`` maps level -> :class:`sscild.explain.HeatMap`; ``slice_index`` level -> array slice;
    ``thresholds`` pattern -> map threshold (% points) that gave ``derived`` (level -> pattern -> %).
    """

    maps: dict[str, "HeatMap"]
    slice_index: dict[str, int]
    thresholds: dict[str, float]
    derived: dict[str, dict[str, float]]
    patch_mm: float
    stride_mm: float

    def to_dict(self) -> dict[str, Any]:
        """The heat-map part of ``scores.json``."""
        return {"derived": self.derived, "derived_thresholds": self.thresholds,
                "heatmap_patch_mm": self.patch_mm, "heatmap_stride_mm": self.stride_mm}


@dataclass(frozen=True, eq=False)
class LesionMaps:
    """Lesion labels (0 outside, 1 normal, 2 ground glass, 3 reticulation; the scan's grid) and their summary."""

    labels: np.ndarray
    summary: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """The body of ``lesions.json``."""
        return self.summary


@dataclass(frozen=True, eq=False)
class Analysis:
    """Everything measured on one scan (arrays included); ``to_dict()`` is ``analysis.json``.

    ``warnings`` are the analysis' own; :func:`sscild.outputs.write_outputs` adds those of writing the files
    to ``analysis.json`` without changing this object.
    """

    scan_description: dict[str, Any]
    lungs: "Lungs"
    levels: "GohLevels | None"
    density: "DensityMetrics"
    volumes_ml: dict[str, float]
    timings_s: dict[str, float]
    settings: "AnalysisSettings"
    warnings: tuple[str, ...] = ()
    scores: LevelScores | None = None
    lesions: LesionMaps | None = None
    heatmaps: HeatMaps | None = None
    levels_lnet: "GohLevels | None" = None
    levels_anatomy: "GohLevels | None" = None     # the anatomical levels alone, when ``levels`` combines them
    models: tuple[dict[str, Any], ...] = field(default_factory=tuple)
    vessels: "Vessels | None" = None
    quality: "QualityReport | None" = None
    regions: "RegionalMetrics | None" = None
    region_map: Any = None          # the regions' partition (sscild.regions.RegionMap), reused by regions.png

    @property
    def lesion_labels(self) -> np.ndarray | None:
        """The lesion label volume, or None when the lesion model did not run."""
        return self.lesions.labels if self.lesions is not None else None

    def scores_dict(self) -> dict[str, Any] | None:
        """``scores.json``: the level scores plus, with heat maps, the derived scores."""
        if self.scores is None:
            return None
        return {**self.scores.to_dict(), **(self.heatmaps.to_dict() if self.heatmaps is not None else {})}

    def to_dict(self) -> dict[str, Any]:
        """``analysis.json`` (without the file-writing warnings; see :func:`sscild.outputs.write_outputs`)."""
        from . import __version__

        d: dict[str, Any] = {
            "software": {"name": "sscild", "version": __version__},
            "input": self.scan_description,
            "settings": self.settings.to_dict(),
            "lungs": {"volumes_ml": self.volumes_ml, "notes": self.lungs.notes, "cut_off": self.lungs.cut_off},
            "levels": self.levels.to_dict() if self.levels is not None else None,
            "density": self.density.to_dict(),
            "scores": self.scores_dict(),
            "lesions": self.lesions.to_dict() if self.lesions is not None else None,
        }
        for key in ("vessels", "quality", "regions"):
            part = getattr(self, key)
            d[key] = part.to_dict() if part is not None else None
        for key in ("levels_lnet", "levels_anatomy"):
            part = getattr(self, key)
            if part is not None:
                d[key] = part.to_dict()
        d.update({"timings_s": self.timings_s, "warnings": list(self.warnings), "models": list(self.models)})
        return d


def describe(scan: "CTScan", show_phi: bool = False) -> dict[str, Any]:
    """Description of a scan for ``analysis.json``: format, scanner, geometry.

    Free-text DICOM fields (series description and the like, which can hold a name) and patient identifiers are
    left out unless ``show_phi``.

    Examples
    --------
    >>> import numpy as np
    >>> from sscild.scan import CTScan
    >>> s = CTScan(np.zeros((4, 8, 8), np.int16), spacing=(2.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
    ...            meta={"format": "dicom", "kernel": "B30f", "series_description": "Smith lung"})
    >>> d = describe(s)
    >>> d["kernel"], "series_description" in d, d["z_range_mm"]
    ('B30f', False, [0.0, 6.0])
    >>> describe(s, show_phi=True)["series_description"]
    'Smith lung'
    """
    # the series note names series UIDs and file names (quasi-identifiers): with show_phi only
    keep = ("format", "modality", "manufacturer", "model", "kernel", "slice_thickness_mm", "kvp",
            "n_slices") + ((FREE_TEXT_META + PHI_META + ("series_note",)) if show_phi else ())
    d = {k: scan.meta[k] for k in keep if k in scan.meta and scan.meta[k] not in ("", None)}
    lo, hi = scan.extent_mm()
    d.update({"shape_zyx": list(scan.shape), "spacing_zyx_mm": [round(float(s), 4) for s in scan.spacing],
              "z_range_mm": [round(lo, 2), round(hi, 2)],
              "orientation_as_read": scan.input_geometry.orientation if scan.input_geometry else "LPS"})
    return d


def level_warnings(lungs: "Lungs", levels: "GohLevels | None") -> list[str]:
    """The lung notes users must see (apex/base cut off, airways, a heart on the image's right) and each missing or
    uncertain level."""
    w = [v for k, v in lungs.notes.items() if k in ("apex", "base", "airways", "right_left")]
    if levels is not None:
        for n in LEVELS:
            if levels.z_mm[n] is None:
                w.append(f"{n} not placed: {levels.notes[n]}")
            elif levels.confidence[n] < 0.5:
                w.append(f"{n} has low confidence ({levels.confidence[n]:.2f}): {levels.notes[n]}")
    return w
