"""DICOM-SEG export reads back, with highdicom, to the same masks."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from sscild.dicomseg import lung_segments, masks_equal, read_dicom_seg, write_dicom_seg
from sscild.scan import scan_from_sitk


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
