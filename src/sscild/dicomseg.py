"""DICOM-SEG of sscild's masks (lungs, lesions), so they open in PACS viewers and OHIF beside the source series.

Written with highdicom as a BINARY segmentation referencing the source CT instances. Masks are sscild arrays
(z, y, x) in LPS; each source slice is matched through its own ImagePositionPatient and
ImageOrientationPatient, so any axis-aligned storage order of the source series is handled.

Privacy: like any DICOM object made for PACS, ``seg.dcm`` copies the source's patient and study attributes (name,
id, birth date, study date, accession number...) so it files beside the series. With ``deidentify=True``
(``--deidentify``) it is written with the DICOM PS3.15 Basic Application Level Confidentiality Profile applied by
:func:`deidentify_dataset` (Kitware's ``dicom-anonymizer``, whose rules are generated from the standard's table
E.1-1): identifiers removed or emptied, dates replaced, UIDs replaced consistently within the process (so the SEG
then references the de-identified UIDs, not the original series). Other DICOM writers (e.g. ``sscild.sr``) call
:func:`deidentify_dataset` the same way.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np

from . import __version__
from .errors import InputError
from .scan import CTScan
from .util import atomic_path


@dataclass(frozen=True)
class Segment:
    """One segment: its label, SNOMED category and type codes (value, meaning), and the LPS mask."""

    label: str
    category: tuple[str, str]
    kind: tuple[str, str]
    mask: np.ndarray


_ANATOMY = ("91723000", "Anatomical Structure")
_TYPE2 = ("StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName", "PatientName",
          "PatientID", "PatientBirthDate", "PatientSex")
_ABNORMAL = ("49755003", "Morphologically Abnormal Structure")


def lung_segments(lung_labels: np.ndarray, lesion_labels: np.ndarray | None = None) -> list[Segment]:
    """Segments for sscild's label maps: right/left lung (1/2) and, when given, ground glass (2) and
    reticulation/fibrosis (3) of the lesion map."""
    segs = [Segment("Right lung", _ANATOMY, ("3341006", "Right lung structure"), lung_labels == 1),
            Segment("Left lung", _ANATOMY, ("44029006", "Left lung structure"), lung_labels == 2)]
    if lesion_labels is not None:
        segs += [Segment("Ground glass opacity", _ABNORMAL, ("52988006", "Lesion"), lesion_labels == 2),
                 Segment("Reticulation/fibrosis", _ABNORMAL, ("112674009", "Fibrosis"), lesion_labels == 3)]
    return segs


def deidentify_dataset(ds):
    """Apply the DICOM basic de-identification profile (PS3.15 E.1-1) to a pydicom dataset, in place.

    The rules come from Kitware's ``dicom-anonymizer`` (generated from the standard's table, newest edition
    shipped); private tags are removed; ``PatientIdentityRemoved`` is set to ``YES`` and the method recorded
    (code 113100, Basic Application Confidentiality Profile). UIDs are replaced by the same new UID every time
    within one process, so objects that reference each other stay consistent. Returns ``ds``.

    Examples
    --------
    >>> from pydicom.dataset import Dataset
    >>> ds = Dataset()
    >>> ds.PatientName, ds.PatientID, ds.Modality = "Doe^Jane", "12345", "SEG"
    >>> ds = deidentify_dataset(ds)
    >>> str(ds.PatientName) != "Doe^Jane", ds.PatientIdentityRemoved, ds.Modality
    (True, 'YES', 'SEG')
    """
    from dicomanonymizer import anonymize_dataset
    from pydicom.dataset import Dataset

    anonymize_dataset(ds, base_rules_gen=_basic_profile_rules, delete_private_tags=True)
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "DICOM PS3.15 E.1 Basic Profile (dicom-anonymizer)"
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator = "113100", "DCM"
    code.CodeMeaning = "Basic Application Confidentiality Profile"
    ds.DeidentificationMethodCodeSequence = [code]
    return ds


def _basic_profile_rules() -> dict:
    from dicomanonymizer import simpledicomanonymizer as sda
    from dicomanonymizer.dicom_anonymization_databases import __path__ as dbs

    newest = sorted(p.stem for p in Path(dbs[0]).glob("dicomfields_*.py"))[-1]
    return sda.initialize_actions(newest)


def deidentify_file(path: str | os.PathLike) -> Path:
    """De-identify a DICOM file with :func:`deidentify_dataset`, replacing it atomically."""
    import pydicom

    path = Path(path)
    ds = deidentify_dataset(pydicom.dcmread(path))
    with atomic_path(path) as tmp:
        ds.save_as(tmp)
    return path


def _source_datasets(source_dir: str | os.PathLike, n_slices: int, sop_uids: Sequence[str] | None = None) -> list:
    """The CT datasets the scan was read from: those with ``sop_uids`` (from ``scan.meta["sop_instance_uids"]``)
    when given, else the series in ``source_dir`` with ``n_slices`` slices."""
    import pydicom

    groups: dict[str, list] = {}
    wanted = set(sop_uids or ())
    for p in sorted(Path(source_dir).rglob("*")):
        if not p.is_file():
            continue
        try:
            ds = pydicom.dcmread(p)
        except Exception:  # not DICOM: ignore, as the reader does
            continue
        if ds.get("Modality", "") != "CT" or "PixelData" not in ds:
            continue
        if sop_uids is not None and str(ds.get("SOPInstanceUID", "")) not in wanted:
            continue
        groups.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append(ds)
    fitting = [g for g in groups.values() if len(g) == n_slices]
    for g in fitting:  # type-2 attributes some exports omit; highdicom copies them (in memory only)
        for ds in g:
            for key in _TYPE2:
                if key not in ds:
                    setattr(ds, key, "")
    if not fitting:
        raise InputError(f"no CT series of {n_slices} slices in {source_dir}: DICOM-SEG needs the DICOM series "
                         "the masks were computed on")
    return fitting[0]


def _pixel_map(ds, scan: CTScan) -> tuple[int, np.ndarray, np.ndarray]:
    """Slice index k in ``scan`` and the (rows, cols) -> (y, x) index arrays of a source dataset."""
    ipp = np.asarray(ds.ImagePositionPatient, float)
    iop = np.asarray(ds.ImageOrientationPatient, float)
    dr, dc = float(ds.PixelSpacing[0]), float(ds.PixelSpacing[1])
    row_dir, col_dir = iop[:3], iop[3:]  # row_dir: along a row (increasing column index)
    rows, cols = int(ds.Rows), int(ds.Columns)
    r = np.arange(rows)[:, None]
    c = np.arange(cols)[None, :]
    corners = np.stack([ipp, ipp + row_dir * dc, ipp + col_dir * dr])
    idx = scan.world_to_index(corners)  # (3, 3): (z, y, x) of pixel (0,0), (0,1), (1,0)
    d_col, d_row = idx[1] - idx[0], idx[2] - idx[0]
    if abs(d_col[0]) > 0.01 or abs(d_row[0]) > 0.01:
        raise InputError("the source series is not axial on sscild's grid (tilted or oblique); DICOM-SEG export "
                         "supports axial series only")
    k = int(round(idx[0][0]))
    y = np.rint(idx[0][1] + r * d_row[1] + c * d_col[1]).astype(int)
    x = np.rint(idx[0][2] + r * d_row[2] + c * d_col[2]).astype(int)
    return k, y, x


def write_dicom_seg(source_dir: str | os.PathLike, scan: CTScan, segments: Sequence[Segment],
                    path: str | os.PathLike, *, series_description: str = "sscild segmentation",
                    deidentify: bool = False) -> Path:
    """Write ``segments`` (LPS masks on ``scan``'s grid) as a DICOM-SEG referencing the series in ``source_dir``.

    With ``deidentify`` the SEG gets the DICOM basic de-identification profile (:func:`deidentify_dataset`).
    """
    import highdicom as hd
    from pydicom.sr.coding import Code

    datasets = _source_datasets(source_dir, scan.shape[0], scan.meta.get("sop_instance_uids"))
    frames = np.zeros((len(datasets), int(datasets[0].Rows), int(datasets[0].Columns), len(segments)), np.uint8)
    for i, ds in enumerate(datasets):
        k, y, x = _pixel_map(ds, scan)
        if not 0 <= k < scan.shape[0]:
            raise InputError(f"source slice at z = {float(ds.ImagePositionPatient[2]):.1f} mm lies outside the scan")
        for j, s in enumerate(segments):
            frames[i, :, :, j] = s.mask[k][y, x]
    descs = [hd.seg.SegmentDescription(
        segment_number=j + 1, segment_label=s.label,
        segmented_property_category=Code(s.category[0], "SCT", s.category[1]),
        segmented_property_type=Code(s.kind[0], "SCT", s.kind[1]),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="sscild", version=__version__, family=Code("123109", "DCM", "Artificial Intelligence")),
    ) for j, s in enumerate(segments)]
    with no_person_name_advice():
        seg = _segmentation(hd, datasets, frames, descs, series_description)
    if deidentify:
        deidentify_dataset(seg)
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
    return Path(path)


@contextmanager
def no_person_name_advice() -> Iterator[None]:
    """Silence highdicom's advice on the format of the source series' PatientName (copied as it is; the
    user cannot act on it and ``--quiet`` prints only errors)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*person name.*", category=UserWarning)
        yield


def _segmentation(hd, datasets, frames, descs, series_description):
    return hd.seg.Segmentation(
        source_images=datasets, pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descs, series_instance_uid=hd.UID(), series_number=901, sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer="sscild", manufacturer_model_name="sscild",
        software_versions=__version__, device_serial_number="0", series_description=series_description,
        omit_empty_frames=False)


def read_dicom_seg(path: str | os.PathLike, source_dir: str | os.PathLike, scan: CTScan) -> dict[str, np.ndarray]:
    """Read a DICOM-SEG back to LPS masks on ``scan``'s grid, keyed by segment label."""
    import highdicom as hd

    seg = hd.seg.segread(str(path))
    datasets = _source_datasets(source_dir, scan.shape[0], scan.meta.get("sop_instance_uids"))
    uids = [str(ds.SOPInstanceUID) for ds in datasets]
    numbers = [int(s.SegmentNumber) for s in seg.SegmentSequence]
    labels = [str(s.SegmentLabel) for s in seg.SegmentSequence]
    px = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=numbers)
    out = {lab: np.zeros(scan.shape, bool) for lab in labels}
    for i, ds in enumerate(datasets):
        k, y, x = _pixel_map(ds, scan)
        for j, lab in enumerate(labels):
            out[lab][k][y, x] = px[i, :, :, j] > 0
    return out


def masks_equal(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> bool:
    """True when both hold the same labels with identical masks."""
    return set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)
