"""What an analysis is asked to do: one frozen, validated :class:`AnalysisSettings`.

The command line, the batch and Python callers all build one of these; :func:`sscild.analyze` reads nothing else.

Examples
--------
>>> from sscild.settings import AnalysisSettings
>>> s = AnalysisSettings(heatmaps=True, fvc_pct=65)
>>> s.heatmaps, s.fvc_pct, s.device
(True, 65.0, 'cpu')
>>> AnalysisSettings.from_mapping({"lnet": True, "fvc": 80}).fvc_pct
80.0
>>> AnalysisSettings.from_mapping({"hetamaps": True})
Traceback (most recent call last):
...
sscild.errors.ConfigError: unknown analysis option(s) ['hetamaps']; known: ...
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError

#: Old option names still accepted by :meth:`AnalysisSettings.from_mapping`.
ALIASES = {"fvc": "fvc_pct"}


@dataclass(frozen=True)
class AnalysisSettings:
    """Options of one analysis (every field has a default that runs on a CPU without a GPU).

    Parameters
    ----------
    levels : bool
        Place the five Goh levels from anatomy (needed by the scores).
    vessels : bool
        Segment the lung vessels model-free (``vessels.nii.gz``); their voxels count as normal lung in the lesion map.
    quality : bool
        Check the scan's quality from the image (calibration, coverage, sharpness, noise, inspiration).
    regions : bool
        Regional distribution (zones, ventral/dorsal, subpleural/core; ``regions.json``, ``regions.png``).
    scores : bool
        Score the level slices with S-Net (TOT, GG, RET % of lung).
    lesions : bool
        Segment ground glass and reticulation with the lesion U-Net.
    heatmaps : bool
        Explain the scores with occlusion heat maps (slower).
    lnet : bool
        Also place the levels with L-Net; the levels scored are then both methods combined
        (:func:`sscild.levels.combine_levels`), each method's own kept in the analysis.
    weights : Path or None
        Folder whose ``snet/``, ``lnet/``, ``lesions/`` subfolders replace the shipped models.
    patch_mm, stride_mm : float
        Occluding patch size and stride of the heat maps (mm).
    device : str
        ``cpu`` or ``cuda``.
    quiet : bool
        No progress bars.
    show_phi : bool
        Put patient name, id, dates and the free-text DICOM descriptions into ``analysis.json`` and the report.
    fvc_pct : float or None
        Forced vital capacity (% predicted); decides the Goh stage of an extent between 10 and 30 %.
    report : bool
        Write ``report.html`` with the outputs.
    dicom_seg : bool or None
        Write ``seg.dcm``; None: when the input is a DICOM series.
    deidentify : bool
        Write ``seg.dcm`` with the DICOM basic de-identification profile (:func:`sscild.dicomseg.deidentify_file`).
    """

    levels: bool = True
    vessels: bool = True
    quality: bool = True
    regions: bool = True
    scores: bool = True
    lesions: bool = True
    heatmaps: bool = False
    lnet: bool = True
    weights: Path | None = None
    patch_mm: float = 45.0
    stride_mm: float = 11.0
    device: str = "cpu"
    quiet: bool = True
    show_phi: bool = False
    fvc_pct: float | None = None
    report: bool = True
    dicom_seg: bool | None = None
    deidentify: bool = False

    def __post_init__(self) -> None:
        if self.weights is not None and not isinstance(self.weights, Path):
            object.__setattr__(self, "weights", Path(self.weights))
        for name in ("patch_mm", "stride_mm"):
            v = _number(name, getattr(self, name))
            if not 0 < v <= 500:
                raise ConfigError(f"{name} must be a length in mm between 0 and 500, got {v}")
            object.__setattr__(self, name, v)
        if self.fvc_pct is not None:
            v = _number("fvc_pct", self.fvc_pct)
            if not 5 <= v <= 200:
                raise ConfigError(f"FVC must be given in % predicted (5-200), got {v}")
            object.__setattr__(self, "fvc_pct", v)
        if not isinstance(self.device, str) or not self.device:
            raise ConfigError(f"device must be 'cpu' or 'cuda', got {self.device!r}")

    @classmethod
    def known(cls) -> tuple[str, ...]:
        """The option names, in order."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any] | None = None, **overrides: Any) -> "AnalysisSettings":
        """Settings from an options mapping (e.g. a batch's options) plus keyword overrides.

        Unknown keys raise :class:`~sscild.errors.ConfigError` listing the known ones.
        """
        merged = {ALIASES.get(k, k): v for k, v in {**dict(options or {}), **overrides}.items()}
        unknown = sorted(k for k in merged if k not in cls.known())
        if unknown:
            raise ConfigError(f"unknown analysis option(s) {unknown}; known: {', '.join(cls.known())}")
        return cls(**merged)

    @property
    def model_names(self) -> tuple[str, ...]:
        """The learned models these settings run (names of :data:`sscild.modelset.MODEL_NAMES`)."""
        return tuple(n for n, wanted in (("lnet", self.lnet), ("snet", self.scores), ("lesions", self.lesions))
                     if wanted)

    def replace(self, **changes: Any) -> "AnalysisSettings":
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy (paths as strings)."""
        d = asdict(self)
        d["weights"] = str(self.weights) if self.weights is not None else None
        return d


def _number(name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    return v
