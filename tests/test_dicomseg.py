"""DICOM-SEG export reads back, with highdicom, to the same masks."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from sscild.dicomseg import lung_segments, masks_equal, read_dicom_seg, write_dicom_seg
from sscild.scan import scan_from_sitk

sys.path.insert(0, str(Path(__file__).parent / "badinput"))  # the bad-input corpus's small inputs (badinputs.py)


def _read_series(folder):
    r = sitk.ImageSeriesReader()
    r.SetFileNames(r.GetGDCMSeriesFileNames(str(folder)))
    return scan_from_sitk(r.Execute(), source=str(folder))


@pytest.mark.realdata
def test_dicom_seg_round_trip_on_real_series(lung_series_dir, tmp_path):
    scan = _read_series(lung_series_dir)
    # labels with structure in every direction: left/right halves of the dark region, a lesion blob
    dark = scan.hu < -500
    lungs = np.zeros(scan.shape, np.uint8)
    half = scan.shape[2] // 2
    lungs[:, :, :half][dark[:, :, :half]] = 1
    lungs[:, :, half:][dark[:, :, half:]] = 2
    lesions = np.zeros(scan.shape, np.uint8)
    lesions[lungs > 0] = 1
    lesions[20:30, 200:260, 100:180][lungs[20:30, 200:260, 100:180] > 0] = 2
    lesions[40:44, 300:320, 300:340][lungs[40:44, 300:320, 300:340] > 0] = 3
    segs = lung_segments(lungs, lesions)
    out = write_dicom_seg(lung_series_dir, scan, segs, tmp_path / "seg.dcm")
    back = read_dicom_seg(out, lung_series_dir, scan)
    assert masks_equal(back, {s.label: s.mask for s in segs})
    import pydicom
    ds = pydicom.dcmread(out)
    assert ds.Modality == "SEG" and len(ds.SegmentSequence) == 4
    # the SEG references the source instances, so viewers show it beside the series
    refs = {r.ReferencedSOPInstanceUID for s in ds.ReferencedSeriesSequence for r in s.ReferencedInstanceSequence}
    assert len(refs) == scan.shape[0]


def _small_dicom_scan(tmp_path):
    from sscild.io import load_ct
    from sscild.phantom import write_dicom_series

    from badinputs import small_scan  # the bad-input corpus's tiny chest

    d = tmp_path / "ct"
    write_dicom_series(small_scan(), d, patient_name="DOE^JANE",
                       extra={"PatientID": "MRN-12345", "PatientBirthDate": "19610203", "AccessionNumber": "ACC9"})
    return d, load_ct(d)


def test_dicom_seg_carries_identifiers_unless_deidentified(tmp_path):
    import pydicom

    from sscild.dicomseg import deidentify_dataset

    d, scan = _small_dicom_scan(tmp_path)
    lungs = (scan.hu < -500).astype(np.uint8)
    segs = lung_segments(lungs)
    plain = pydicom.dcmread(write_dicom_seg(d, scan, segs, tmp_path / "seg.dcm"))
    assert str(plain.PatientName) == "DOE^JANE" and plain.PatientID == "MRN-12345"  # made for PACS: identified
    anon = pydicom.dcmread(write_dicom_seg(d, scan, segs, tmp_path / "anon.dcm", deidentify=True))
    text = str(anon)
    for phi in ("DOE", "JANE", "MRN-12345", "19610203", "ACC9", "20000101"):
        assert phi not in text, phi
    assert anon.PatientIdentityRemoved == "YES" and anon.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    assert anon.StudyInstanceUID != plain.StudyInstanceUID
    # the segmentation itself is unchanged: same frames
    assert np.array_equal(anon.pixel_array, plain.pixel_array) and anon.Modality == "SEG"
    # the function other DICOM writers reuse leaves non-identifying attributes alone
    ds = pydicom.Dataset()
    ds.PatientName, ds.Modality, ds.SliceThickness = "X^Y", "SR", "1.5"
    assert deidentify_dataset(ds).Modality == "SR" and str(ds.PatientName) != "X^Y"


def test_dicom_seg_skips_a_localizer_inside_the_series(tmp_path):
    from badinputs import add_localizer

    from sscild.io import load_ct

    d, _ = _small_dicom_scan(tmp_path)
    add_localizer(d, "scout.dcm")

    scan = load_ct(d)
    segs = lung_segments((scan.hu < -500).astype(np.uint8))
    out = write_dicom_seg(d, scan, segs, tmp_path / "seg.dcm")
    back = read_dicom_seg(out, d, scan)
    assert masks_equal(back, {s.label: s.mask for s in segs})
