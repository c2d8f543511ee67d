"""Bad-input cases: geometry that is missing, zero, oblique or non-axial (issue 16 item 1; README.md here)."""
from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import SimpleITK as sitk
from badinputs import dicom_series, small_scan

from sscild.errors import GeometryError, NonAxialError, NotHUError
from sscild.io import load_ct


def _drop(*keys):
    def f(ds, k):
        for key in keys:
            if key in ds:
                delattr(ds, key)
    return f


def test_dicom_without_pixel_spacing(tmp_path, outcome):
    """DICOM without PixelSpacing: GeometryError naming PixelSpacing (no 1 mm assumed)"""
    d = dicom_series(tmp_path / "d", extra=_drop("PixelSpacing"))
    with outcome.error(GeometryError, match="PixelSpacing is missing"):
        load_ct(d)


def test_dicom_zero_pixel_spacing(tmp_path, outcome):
    """DICOM with PixelSpacing 0: GeometryError"""
    d = dicom_series(tmp_path / "d", extra={"PixelSpacing": [0.0, 0.0]})
    with outcome.error(GeometryError, match="PixelSpacing"):
        load_ct(d)


def test_dicom_without_positions_derived_from_slice_location(tmp_path, outcome):
    """DICOM without ImagePositionPatient but with SliceLocation: read in the right order and spacing, note"""
    scan = small_scan()
    d = dicom_series(tmp_path / "d", scan, extra=_drop("ImagePositionPatient"))
    back = load_ct(d)
    assert np.array_equal(back.hu, scan.hu)  # not upside down
    assert back.spacing == pytest.approx(scan.spacing)
    assert back.z_mm(3) == pytest.approx(scan.z_mm(3), abs=1e-3)
    outcome.warning(back.meta["series_note"], match="ImagePositionPatient missing.*SliceLocation")


def test_dicom_without_any_position(tmp_path, outcome):
    """DICOM without ImagePositionPatient and SliceLocation: GeometryError (no 1 mm stack invented)"""
    d = dicom_series(tmp_path / "d", extra=_drop("ImagePositionPatient", "SliceLocation"))
    with outcome.error(GeometryError, match="ImagePositionPatient is missing"):
        load_ct(d)


def test_dicom_without_orientation(tmp_path, outcome):
    """DICOM without ImageOrientationPatient: GeometryError naming the tag"""
    d = dicom_series(tmp_path / "d", extra=_drop("ImageOrientationPatient"))
    with outcome.error(GeometryError, match="ImageOrientationPatient is missing"):
        load_ct(d)


def test_dicom_rescale_slope_zero(tmp_path, outcome):
    """DICOM with RescaleSlope 0: NotHUError (not silently 1)"""
    d = dicom_series(tmp_path / "d", extra={"RescaleSlope": 0.0})
    with outcome.error(NotHUError, match="RescaleSlope is 0"):
        load_ct(d)


def test_dicom_rescale_slope_missing(tmp_path, outcome):
    """DICOM without RescaleSlope: values read with slope 1, a note says it was assumed"""
    scan = small_scan()
    back = load_ct(dicom_series(tmp_path / "d", scan, extra=_drop("RescaleSlope")))
    assert np.array_equal(back.hu, scan.hu)
    outcome.warning(back.meta["series_note"], match="RescaleSlope missing")


def _rotated(scan, axis: str, deg: float):
    img = scan.to_sitk()
    t = sitk.Euler3DTransform()
    a = np.deg2rad(deg)
    t.SetRotation(a if axis == "x" else 0.0, a if axis == "y" else 0.0, a if axis == "z" else 0.0)
    d = np.asarray(img.GetDirection()).reshape(3, 3)
    img.SetDirection(tuple((np.asarray(t.GetMatrix()).reshape(3, 3) @ d).ravel()))
    return img


def test_nifti_oblique_10_degrees(tmp_path, outcome):
    """NIfTI 10 degrees oblique: NonAxialError 'resample first' (README: non-axial refused)"""
    f = tmp_path / "oblique.nii.gz"
    sitk.WriteImage(_rotated(small_scan(), "x", 10.0), str(f))
    with outcome.error(NonAxialError, match="oblique.*10.0 deg.*[Rr]esample"):
        load_ct(f)


def test_dicom_oblique_10_degrees(tmp_path, outcome):
    """DICOM series 10 degrees oblique (in-plane rotation): NonAxialError 'resample first'"""
    scan = small_scan()
    img = _rotated(scan, "z", 10.0)
    from sscild.scan import CTScan
    rot = CTScan(scan.hu, scan.spacing, scan.origin, tuple(img.GetDirection()))
    with outcome.error(NonAxialError, match="oblique"):
        load_ct(dicom_series(tmp_path / "d", rot))


def test_dicom_coronal_series(tmp_path, outcome):
    """Coronal DICOM series: NonAxialError 'slices are coronal ... resample', not 'no lungs found'"""
    scan = small_scan(nz=32, n=32)
    from sscild.scan import CTScan
    # image rows along x, columns toward the feet, slices stacked toward posterior: a coronal stack
    cor = CTScan(scan.hu, scan.spacing, scan.origin, (1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, -1.0, 0.0))
    with outcome.error(NonAxialError, match="coronal.*[Rr]esample"):
        load_ct(dicom_series(tmp_path / "d", cor))


def test_nifti_coronal(tmp_path, outcome):
    """Coronal NIfTI (third axis anterior-posterior): NonAxialError"""
    img = sitk.PermuteAxes(small_scan(nz=32).to_sitk(), [0, 2, 1])
    f = tmp_path / "cor.nii.gz"
    sitk.WriteImage(img, str(f))
    with outcome.error(NonAxialError, match="coronal"):
        load_ct(f)


def _patch_nifti(f, offset: int, fmt: str, value) -> None:
    raw = bytearray(gzip.decompress(f.read_bytes()))
    struct.pack_into(fmt, raw, offset, value)
    f.write_bytes(gzip.compress(bytes(raw)))


def test_nifti_pixdim3_zero(tmp_path, outcome):
    """NIfTI with pixdim[3] = 0: GeometryError (ITK would silently make it 1 mm)"""
    f = tmp_path / "ct.nii.gz"
    sitk.WriteImage(small_scan().to_sitk(), str(f))
    _patch_nifti(f, 76 + 3 * 4, "<f", 0.0)
    with outcome.error(GeometryError, match=r"pixdim\[3\] = 0"):
        load_ct(f)


def test_nifti_without_orientation(tmp_path, outcome):
    """NIfTI with qform_code = sform_code = 0: GeometryError (orientation unknown)"""
    f = tmp_path / "ct.nii.gz"
    sitk.WriteImage(small_scan().to_sitk(), str(f))
    raw = bytearray(gzip.decompress(f.read_bytes()))
    struct.pack_into("<hh", raw, 252, 0, 0)
    f.write_bytes(gzip.compress(bytes(raw)))
    with outcome.error(GeometryError, match="neither qform nor sform"):
        load_ct(f)


def test_mha_without_spacing(tmp_path, outcome):
    """MetaImage header without ElementSpacing: GeometryError (ITK would use 1 mm)"""
    f = tmp_path / "ct.mha"
    sitk.WriteImage(small_scan().to_sitk(), str(f))
    raw = f.read_bytes()
    head, body = raw.split(b"ElementDataFile", 1)
    head = b"\n".join(ln for ln in head.split(b"\n") if not ln.startswith(b"ElementSpacing"))
    f.write_bytes(head + b"ElementDataFile" + body)
    with outcome.error(GeometryError, match="ElementSpacing"):
        load_ct(f)


def test_cli_coronal_series(tmp_path, outcome):
    """sscild analyze on a coronal DICOM series: exit 2, 'slices are coronal ... resample', no 'no lungs found'"""
    scan = small_scan(nz=32, n=32)
    from sscild.scan import CTScan
    cor = CTScan(scan.hu, scan.spacing, scan.origin, (1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, -1.0, 0.0))
    d = dicom_series(tmp_path / "d", cor)
    out = outcome.cli(["analyze", "-i", str(d), "-o", str(tmp_path / "out"), "--quiet"], exit_code=2,
                      match="slices are coronal")
    assert "no lungs" not in out
