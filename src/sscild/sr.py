"""DICOM Structured Report (TID 1500 Imaging Measurement Report) of one analysis, beside ``seg.dcm``.

Written with highdicom as a Comprehensive 3D SR in the source study:

- one volumetric measurement group (TID 1411) per segment of ``seg.dcm`` (right lung, left lung, ground glass,
  reticulation), referencing the segment (``ReferencedSegment``): volume, mean lung attenuation (MLA) and its SD,
  HAA, and the lesion volumes and % of lung inside each lung;
- one group (TID 1501) for both lungs together (no single segment holds them);
- one group per Goh level slice: S-Net's TOT, GG and RET (and the lesion U-Net's area ratios), each measurement
  pointing at its CT image (``SourceImageForMeasurement``);
- one group with the derived measurements: Goh extent (mean TOT), fibrotic extent (mean RET), the number of levels,
  FVC when given, and the Goh stage as a qualitative evaluation.

Every measurement names the algorithm (sscild and its version; the model and its weights hash for learned values).
Concepts without a standard code use the private coding scheme ``99SSCILD``. :func:`read_sr` reads the numbers
back with highdicom. The tree also suits OHIF's SR reader: the root is 126000 with an image library group
(126200), every group has a tracking identifier and UID (112039/112040), and every numeric item has a concept
modifier as its first child (OHIF treats a first INFERRED FROM child as a graphic).
"""
from __future__ import annotations

import os
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from . import __version__
from .dicomseg import no_person_name_advice
from .domain import LEVEL_NAMES, LEVELS, PATTERNS
from .errors import InputError
from .util import atomic_path

SCHEME = "99SSCILD"
#: Units (UCUM).
UNITS = {"ml": ("ml", "UCUM", "milliliter"), "HU": ("[hnsf'U]", "UCUM", "Hounsfield unit"),
         "%": ("%", "UCUM", "percent"), "1": ("1", "UCUM", "no units")}
#: Concept names: standard where one exists (SNOMED CT, DCM), else private.
NAMES = {
    "volume": ("118565006", "SCT", "Volume"),
    "attenuation": ("112031", "DCM", "Attenuation Coefficient"),
    "HAA": ("HAA", SCHEME, "High attenuation area, % of lung volume"),
    "GG_ml": ("GGVOL", SCHEME, "Ground glass volume"), "GG_pct": ("GGPCT", SCHEME, "Ground glass, % of lung"),
    "RET_ml": ("RETVOL", SCHEME, "Reticulation volume"), "RET_pct": ("RETPCT", SCHEME, "Reticulation, % of lung"),
    "lesion_ml": ("LESVOL", SCHEME, "Lesion volume (ground glass + reticulation)"),
    "involvement_pct": ("INVPCT", SCHEME, "Lung involvement, % of lung"),
    "pct_of_lung": ("PCTLUNG", SCHEME, "Volume, % of lung"),
    "TOT": ("TOT", SCHEME, "Total disease extent, % of level lung area"),
    "GG": ("GG", SCHEME, "Ground glass extent, % of level lung area"),
    "RET": ("RET", SCHEME, "Reticulation extent, % of level lung area"),
    "goh_extent": ("GOHEXT", SCHEME, "Goh extent (mean TOT of the Goh levels)"),
    "fibrotic_extent": ("FIBEXT", SCHEME, "Fibrotic extent (mean RET of the Goh levels)"),
    "n_levels": ("NLEVELS", SCHEME, "Number of Goh levels scored"),
    "fvc_pct": ("FVCPCT", SCHEME, "FVC, % predicted (given)"),
    "goh_stage": ("GOHSTAGE", SCHEME, "Goh stage"),
}
DERIVATIONS = {"mean": ("373098007", "SCT", "Mean"), "sd": ("386136009", "SCT", "Standard Deviation")}
METHODS = {"S-Net": ("SNET", SCHEME, "S-Net regression of the level slice"),
           "lesion U-Net": ("UNETAREA", SCHEME, "Lesion U-Net area ratio of the level slice")}
STAGES = {s: (s.upper(), SCHEME, s) for s in ("limited", "extensive", "indeterminate", "unknown")}
SITES = {"right": ("3341006", "SCT", "Right lung"), "left": ("44029006", "SCT", "Left lung"),
         "both": ("39607008", "SCT", "Lung")}
#: SEG segment label -> (finding site, what of ``lesions.json`` ``whole`` it holds).
SEGMENT_ROLES = {"Right lung": "right", "Left lung": "left", "Ground glass opacity": "GG",
                 "Reticulation/fibrosis": "RET"}
BOTH_LUNGS = "Both lungs"
GOH_GROUP = "Goh staging"


@dataclass(frozen=True)
class Measure:
    """One numeric measurement: a :data:`NAMES` key, value, unit key, optional derivation/method, algorithm."""

    name: str
    value: float
    unit: str
    derivation: str | None = None
    method: str | None = None
    algorithm: str = "sscild"

    @property
    def key(self) -> str:
        """The name a reader uses: concept meaning, with derivation and method when present."""
        k = NAMES[self.name][2]
        if self.derivation:
            k += f" ({DERIVATIONS[self.derivation][2]})"
        return k + (f" [{self.method}]" if self.method else "")


@dataclass(frozen=True)
class Group:
    """One measurement group: its tracking label, the SEG segment or level it refers to, and its measures."""

    label: str
    measures: tuple[Measure, ...]
    site: str = "both"
    segment: str | None = None
    level: str | None = None
    stage: str | None = None


def _m(name: str, value: Any, unit: str, **kw) -> list[Measure]:
    """A one-item list, or empty when the value is missing or not finite."""
    if value is None or not np.isfinite(float(value)):
        return []
    return [Measure(name, float(value), unit, **kw)]


def _lesion_measures(amounts: Mapping[str, Any] | None) -> list[Measure]:
    a = amounts or {}
    out: list[Measure] = []
    for k in ("GG_ml", "GG_pct", "RET_ml", "RET_pct", "lesion_ml", "involvement_pct"):
        out += _m(k, a.get(k), "ml" if k.endswith("_ml") else "%", algorithm="lesion U-Net")
    return out


def _lung_measures(analysis: Mapping[str, Any], side: str) -> list[Measure]:
    vol = ((analysis.get("lungs") or {}).get("volumes_ml") or {}).get("total" if side == "both" else side)
    d = (analysis.get("density") or {}).get("whole" if side == "both" else side) or {}
    les = (analysis.get("lesions") or {}).get("whole" if side == "both" else side)
    return (_m("volume", vol, "ml") + _m("attenuation", d.get("MLA_HU"), "HU", derivation="mean")
            + _m("attenuation", d.get("SD_HU"), "HU", derivation="sd") + _m("HAA", d.get("HAA_pct"), "%")
            + _lesion_measures(les))


def _level_groups(analysis: Mapping[str, Any]) -> list[Group]:
    snet = ((analysis.get("scores") or {}).get("levels")) or {}
    unet = ((analysis.get("lesions") or {}).get("levels")) or {}
    out = []
    for n in LEVELS:
        ms: list[Measure] = []
        for method, src in (("S-Net", snet), ("lesion U-Net", unet)):
            for p in PATTERNS:
                ms += _m(p, (src.get(n) or {}).get(p), "%", method=method, algorithm=method)
        if ms:
            out.append(Group(f"Goh level {n} ({LEVEL_NAMES[n]})", tuple(ms), level=n))
    return out


def _goh_group(analysis: Mapping[str, Any], fvc_pct: float | None) -> Group | None:
    from .report import goh_summary

    scores = analysis.get("scores") or {}
    if not scores.get("levels"):
        return None
    s = goh_summary(scores["levels"], lesion_summary=analysis.get("lesions"), fvc_pct=fvc_pct)
    ms = (_m("goh_extent", s.extent, "%", derivation="mean", algorithm="S-Net")
          + _m("fibrotic_extent", s.fibrotic_extent, "%", derivation="mean", algorithm="S-Net")
          + _m("n_levels", s.n_levels, "1") + _m("fvc_pct", fvc_pct, "%"))
    return Group(GOH_GROUP, tuple(ms), stage=s.stage)


def sr_groups(analysis: Mapping[str, Any], segment_labels: Iterable[str], *, fvc_pct: float | None = None
              ) -> list[Group]:
    """The measurement groups the SR holds for an ``analysis.json`` dict and the SEG's segment labels."""
    groups = []
    whole = (analysis.get("lesions") or {}).get("whole") or {}
    for label in segment_labels:
        role = SEGMENT_ROLES.get(label)
        if role in ("right", "left"):
            groups.append(Group(label, tuple(_lung_measures(analysis, role)), site=role, segment=label))
        elif role in ("GG", "RET"):
            ms = _m("volume", whole.get(f"{role}_ml"), "ml", algorithm="lesion U-Net") + \
                _m("pct_of_lung", whole.get(f"{role}_pct"), "%", algorithm="lesion U-Net")
            groups.append(Group(label, tuple(ms), segment=label))
    groups.append(Group(BOTH_LUNGS, tuple(_lung_measures(analysis, "both"))))
    groups += _level_groups(analysis)
    goh = _goh_group(analysis, fvc_pct)
    return groups + ([goh] if goh is not None else [])


def sr_values(groups: Sequence[Group]) -> dict[str, dict[str, Any]]:
    """Group label -> measure key -> value (and ``Goh stage`` -> stage): what :func:`read_sr` should return."""
    out: dict[str, dict[str, Any]] = {}
    for g in groups:
        d: dict[str, Any] = {m.key: m.value for m in g.measures}
        if g.stage is not None:
            d[NAMES["goh_stage"][2]] = g.stage
        out[g.label] = d
    return out


# --------------------------------------------------------------------------------------------
# highdicom
# --------------------------------------------------------------------------------------------
def _code(t: tuple[str, str, str]):
    import highdicom as hd

    return hd.sr.CodedConcept(value=t[0], scheme_designator=t[1], meaning=t[2])


def _algorithms(analysis: Mapping[str, Any], weights: str | os.PathLike | None) -> dict[str, Any]:
    """AlgorithmIdentification per algorithm: sscild itself, and each model with its weights hash."""
    import highdicom as hd

    from .provenance import run_facts

    algos = {"sscild": hd.sr.AlgorithmIdentification(name="sscild", version=__version__)}
    for m in run_facts(analysis, weights=weights)["models"]:
        params = [f"weights sha256 {m['weights_sha256']}"] if m.get("weights_sha256") else None
        algos[m["name"]] = hd.sr.AlgorithmIdentification(name=f"sscild {m['name']}", version=__version__,
                                                         parameters=params)
    return algos


def _measurement(m: Measure, algos: Mapping[str, Any], image) -> Any:
    import highdicom as hd

    algo = algos.get(m.algorithm) or algos["sscild"]
    refs = [hd.sr.SourceImageForMeasurement.from_source_image(image)] if image is not None else None
    return hd.sr.Measurement(
        name=_code(NAMES[m.name]), value=m.value, unit=_code(UNITS[m.unit]),
        derivation=_code(DERIVATIONS[m.derivation]) if m.derivation else None,
        method=_code(METHODS[m.method]) if m.method else None, referenced_images=refs, algorithm_id=algo)


def _hd_group(g: Group, seg, algos: Mapping[str, Any], level_images: Mapping[str, Any]):
    """A highdicom measurement group: volumetric (TID 1411) on a SEG segment, else image-level (TID 1501)."""
    import highdicom as hd

    tid = hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=g.label)
    ms = [_measurement(m, algos, level_images.get(g.level) if m.method else None) for m in g.measures]
    sites = [hd.sr.FindingSite(_code(SITES[g.site]))]
    if g.segment is not None:
        item = next(s for s in seg.SegmentSequence if str(s.SegmentLabel) == g.segment)
        return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tid,
            referenced_segment=hd.sr.ReferencedSegment.from_segmentation(seg, int(item.SegmentNumber)),
            finding_type=hd.sr.CodedConcept.from_dataset(item.SegmentedPropertyTypeCodeSequence[0]),
            finding_sites=sites, measurements=ms)
    quals = [hd.sr.QualitativeEvaluation(_code(NAMES["goh_stage"]), _code(STAGES[g.stage]))] \
        if g.stage is not None else None
    return hd.sr.MeasurementsAndQualitativeEvaluations(tracking_identifier=tid, finding_sites=sites,
                                                      measurements=ms or None, qualitative_evaluations=quals)


def _level_images(analysis: Mapping[str, Any], datasets: Sequence[Any]) -> dict[str, Any]:
    """Level -> the source CT dataset at the level's world z (within half a slice), for axial series."""
    entries = {e["name"]: e for e in ((analysis.get("levels") or {}).get("levels") or [])}
    if not datasets:
        return {}
    zs = np.array([float(ds.ImagePositionPatient[2]) for ds in datasets])
    step = float(np.median(np.abs(np.diff(np.sort(zs))))) if len(zs) > 1 else 1.0
    out = {}
    for n, e in entries.items():
        if e.get("z_mm") is None:
            continue
        i = int(np.argmin(np.abs(zs - float(e["z_mm"]))))
        if abs(zs[i] - float(e["z_mm"])) <= 0.5 * step + 1e-3:
            out[n] = datasets[i]
    return out


def _observation_context():
    import highdicom as hd
    from pydicom.sr.codedict import codes

    device = hd.sr.DeviceObserverIdentifyingAttributes(uid=hd.UID(), name="sscild", manufacturer_name="sscild",
                                                       model_name=f"sscild {__version__}")
    return hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.cid270.Device, observer_identifying_attributes=device))


def build_sr(analysis: Mapping[str, Any], datasets: Sequence[Any], seg, *, fvc_pct: float | None = None,
             weights: str | os.PathLike | None = None, series_number: int = 902):
    """The highdicom ``Comprehensive3DSR`` of an analysis: ``datasets`` are the source CT slices, ``seg`` the
    DICOM-SEG dataset (``highdicom.seg.segread``) whose segments the volumetric groups reference."""
    import highdicom as hd

    groups = sr_groups(analysis, [str(s.SegmentLabel) for s in seg.SegmentSequence], fvc_pct=fvc_pct)
    algos = _algorithms(analysis, weights)
    images = _level_images(analysis, datasets)
    # the image library lists the images measurements point at (the level slices; OHIF needs at least one),
    # the whole series is in the evidence and in the SEG the volumetric groups reference
    library = [images[n] for n in LEVELS if n in images] or [datasets[len(datasets) // 2]]
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(), procedure_reported=_code(("24627-2", "LN", "CT Chest")),
        imaging_measurements=[_hd_group(g, seg, algos, images) for g in groups], referenced_images=library)
    with no_person_name_advice():
        return hd.sr.Comprehensive3DSR(
            evidence=[*datasets, seg], content=report[0], series_instance_uid=hd.UID(),
            series_number=series_number, sop_instance_uid=hd.UID(), instance_number=1, manufacturer="sscild",
            is_complete=True, series_description="sscild measurements (TID 1500)")


def write_sr(analysis: Mapping[str, Any], source_dir: str | os.PathLike, seg_path: str | os.PathLike,
             path: str | os.PathLike, *, fvc_pct: float | None = None, weights: str | os.PathLike | None = None,
             deidentify: bool = False, sop_uids: Sequence[str] | None = None) -> Path:
    """Write ``sr.dcm``: the TID 1500 measurement report of ``analysis`` (the ``analysis.json`` dict).

    Parameters
    ----------
    analysis : mapping
        ``analysis.json`` content; ``settings.fvc_pct`` / ``settings.weights`` are used when the arguments are None.
    source_dir : path
        The DICOM series the analysis was computed on (the CT slices the SR references).
    seg_path : path
        ``seg.dcm`` written by :func:`sscild.dicomseg.write_dicom_seg` for the same series.
    path : path
        Where to write the SR (atomically).
    sop_uids : sequence of str, optional
        The SOP instance UIDs the scan was read from (``scan.meta["sop_instance_uids"]``); default: the instances
        ``seg.dcm`` references, else the series of the scan's slice count.
    deidentify : bool
        De-identify the SR's header (DICOM basic profile, ``sscild.dicomseg.deidentify_dataset``) and file it in
        the de-identified ``seg.dcm``'s pseudonymous patient and study (the SEG must be de-identified already).

    Raises
    ------
    InputError
        When the SEG cannot be read, the series is not found, or ``deidentify`` is asked for an identified SEG.
    """
    import highdicom as hd

    from .dicomseg import _source_datasets

    settings = analysis.get("settings") or {}
    fvc_pct = settings.get("fvc_pct") if fvc_pct is None else fvc_pct
    weights = settings.get("weights") if weights is None else weights
    from pydicom.errors import InvalidDicomError

    try:
        seg = hd.seg.segread(str(seg_path))
    except (OSError, ValueError, AttributeError, KeyError, InvalidDicomError) as err:
        raise InputError(f"cannot read the DICOM-SEG {Path(seg_path).name} ({err}): write seg.dcm first") from None
    refs = [str(r.get("ReferencedSOPInstanceUID", "")) for s in seg.get("ReferencedSeriesSequence", [])
            for r in s.get("ReferencedInstanceSequence", [])]
    sop_uids = sop_uids or (refs if refs and all(refs) else None)
    n = int((analysis.get("input") or {}).get("shape_zyx", [len(refs)])[0])
    datasets = _source_datasets(source_dir, n, sop_uids)
    if deidentify and str(seg.get("PatientIdentityRemoved", "")).upper() != "YES":
        raise InputError("--deidentify: seg.dcm is not de-identified; write it with write_dicom_seg(..., "
                         "deidentify=True) before the SR")
    if deidentify:      # one study while building (the de-identified SEG has a new study UID); fixed after
        build_seg = deepcopy(seg)
        build_seg.StudyInstanceUID = datasets[0].StudyInstanceUID
        sr = _deidentify_header(build_sr(analysis, datasets, build_seg, fvc_pct=fvc_pct, weights=weights), seg)
    else:
        sr = build_sr(analysis, datasets, seg, fvc_pct=fvc_pct, weights=weights)
    with atomic_path(path) as tmp:
        sr.save_as(tmp, enforce_file_format=True)
    return Path(path)


#: Patient and study attributes the SR takes from the de-identified SEG, so both file as the same pseudonymous study.
_STUDY_KEYS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
               "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName")


def _deidentify_header(sr, seg):
    """De-identify the SR's header as the SEG's was, keeping its content tree.

    The basic profile as ``sscild.dicomseg.deidentify_dataset`` applies it replaces every value inside an SR
    content tree (codes and numbers included), so the header is de-identified without the content, which holds
    no patient data (our codes, numbers and tracking labels, and the instance UIDs the de-identified SEG keeps
    referencing). Patient and study attributes are then copied from the de-identified SEG.
    """
    from .dicomseg import deidentify_dataset

    keep = {k: sr[k].value for k in ("ContentSequence", "CurrentRequestedProcedureEvidenceSequence",
                                      "PertinentOtherEvidenceSequence") if k in sr}
    for k in keep:
        del sr[k]
    deidentify_dataset(sr)
    for k, v in keep.items():
        setattr(sr, k, v)
    for k in _STUDY_KEYS:
        if k in seg:
            setattr(sr, k, seg[k].value)
        elif k in sr:
            setattr(sr, k, "")
    for item in sr.get("CurrentRequestedProcedureEvidenceSequence", []):
        item.StudyInstanceUID = seg.StudyInstanceUID
    return sr


def read_sr(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Read an SR written by :func:`write_sr` back with highdicom: group label -> measure key -> value (as
    :func:`sr_values`), plus ``_segments`` (group label -> (SEG SOP instance UID, segment number)) and ``_images`` (group label ->
    SOP instance UIDs of the images its measurements point at)."""
    import highdicom as hd

    report = hd.sr.srread(str(path)).content
    method_names = {v[2]: k for k, v in METHODS.items()}
    out: dict[str, dict[str, Any]] = {"_segments": {}, "_images": {}}
    groups = list(report.get_volumetric_roi_measurement_groups()) + list(report.get_image_measurement_groups())
    for g in groups:
        label = str(g.tracking_identifier)
        d: dict[str, Any] = {}
        for m in g.get_measurements():
            key = m.name.meaning + (f" ({m.derivation.meaning})" if m.derivation else "")
            key += f" [{method_names.get(m.method.meaning, m.method.meaning)}]" if m.method else ""
            d[key] = float(m.value)
            uids = [str(r.referenced_sop_instance_uid) for r in (m.referenced_images or [])]
            if uids:
                out["_images"].setdefault(label, set()).update(uids)
        for q in g.get_qualitative_evaluations():
            d[q.name.meaning] = q.value.meaning
        if getattr(g, "reference_type", None) is not None and g.referenced_segment is not None:
            rs = g.referenced_segment
            out["_segments"][label] = (str(rs.referenced_sop_instance_uid), int(rs.referenced_segment_numbers[0]))
        out[label] = d
    return out


# --------------------------------------------------------------------------------------------
# heat maps as DICOM Parametric Maps
# --------------------------------------------------------------------------------------------
def build_parametric_map(frames: Sequence[np.ndarray], datasets: Sequence[Any], pattern: str, *,
                         series_number: int = 903):
    """A highdicom ``ParametricMap`` of one pattern's heat maps: one float frame per level slice, each on the
    pixel grid of its source CT image (``datasets``, same order), values in % points of score change."""
    import highdicom as hd

    arr = np.stack([np.asarray(f, np.float32) for f in frames])
    lo, hi = float(np.min(arr)), float(np.max(arr))
    span = max(abs(lo), abs(hi), 1e-3)
    mapping = hd.pm.RealWorldValueMapping(
        lut_label=pattern, lut_explanation=f"S-Net {pattern} score change when the region is replaced (% points)",
        unit=_code(UNITS["%"]), value_range=(lo, hi), slope=1.0, intercept=0.0)
    pm = hd.pm.ParametricMap(
        source_images=list(datasets), pixel_array=arr, series_instance_uid=hd.UID(), series_number=series_number,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="sscild", manufacturer_model_name="sscild",
        software_versions=__version__, device_serial_number="0", contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[hd.VOILUTTransformation(window_center=0.0, window_width=2 * span)],
        content_label=f"SNET_{pattern}"[:16], content_description=f"sscild S-Net {pattern} occlusion heat map")
    # frame anatomy: the thorax, both sides (General Series Laterality is required for paired parts otherwise)
    from pydicom.dataset import Dataset

    anatomy = Dataset()
    anatomy.AnatomicRegionSequence = [_code(("51185008", "SCT", "Thorax"))]
    anatomy.FrameLaterality = "B"
    pm.SharedFunctionalGroupsSequence[0].FrameAnatomySequence = [anatomy]
    return pm


def write_parametric_maps(heatmaps: Mapping[str, Mapping[str, np.ndarray]], scan, source_dir: str | os.PathLike,
                          outdir: str | os.PathLike, *, prefix: str = "heatmap_") -> dict[str, Path]:
    """Write one DICOM Parametric Map per pattern (``heatmap_TOT.dcm`` ...): a frame per level slice.

    ``heatmaps`` maps level -> pattern -> (H, W) float map on ``scan``'s slice grid (LPS, as in
    ``heatmap_<level>_<pattern>.nii.gz``) at the level's array slice ``heatmaps[level]["slice"]`` (an int).
    Each frame is resampled onto its source image's own pixel order (any axis-aligned storage). Returns
    pattern -> path.
    """
    from .dicomseg import _pixel_map, _source_datasets

    datasets = _source_datasets(source_dir, scan.shape[0], scan.meta.get("sop_instance_uids"))
    by_k = {}
    for ds in datasets:
        k, y, x = _pixel_map(ds, scan)
        by_k[k] = (ds, y, x)
    out: dict[str, Path] = {}
    levels = [n for n in LEVELS if n in heatmaps and int(heatmaps[n]["slice"]) in by_k]
    for p in PATTERNS:
        if not levels or any(p not in heatmaps[n] for n in levels):
            continue
        src = [by_k[int(heatmaps[n]["slice"])] for n in levels]
        frames = [np.asarray(heatmaps[n][p])[y, x] for n, (_, y, x) in zip(levels, src)]
        pm = build_parametric_map(frames, [s[0] for s in src], p)
        path = Path(outdir) / f"{prefix}{p}.dcm"
        with atomic_path(path) as tmp:
            pm.save_as(tmp, enforce_file_format=True)
        out[p] = path
    return out
