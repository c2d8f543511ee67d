"""Reading scans: round trips through DICOM and NIfTI, real data, and a clear error for each bad input."""
from __future__ import annotations

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from sscild.errors import (AbsurdSizeError, GantryTiltError, InputNotFoundError, InvalidValuesError,
                           LocalizerError, MissingSlicesError, NonUniformSpacingError, NotCTError, NotHUError,
                           SingleSliceError, TooFewSlicesError, UnreadableInputError)
from sscild.io import load_ct, save_like
from sscild.phantom import make_phantom, write_dicom_series
from sscild.scan import CTScan


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(7, extent=20, shape=(24, 64, 64), spacing=(4.0, 5.0, 5.0))[0]


def _dicom(tmp_path, scan, name="d", **kw):
    write_dicom_series(scan, tmp_path / name, **kw)
    return tmp_path / name


# --- round trips ---------------------------------------------------------------------------------
def test_dicom_round_trip_is_exact(tmp_path, phantom):
    back = load_ct(_dicom(tmp_path, phantom))
    assert np.array_equal(back.hu, phantom.hu)
    assert back.spacing == pytest.approx(phantom.spacing)
    assert back.origin == pytest.approx(phantom.origin)
    assert back.z_mm(5) == pytest.approx(phantom.z_mm(5))
    assert back.meta["modality"] == "CT" and "PHANTOM" not in str(back.meta)


def test_dicom_files_in_shuffled_order_and_signed_pixels(tmp_path, phantom):
    d = _dicom(tmp_path, phantom, rescale_intercept=0)
    for i, f in enumerate(sorted(d.iterdir())):   # names no longer follow the slice order
        f.rename(d / f"x{(i * 7919) % 1000:04d}")
    assert np.array_equal(load_ct(d).hu, phantom.hu)


@pytest.mark.parametrize("orientation", ["RAS", "LPI", "RPS", "PLS"])
def test_nifti_with_other_orientations_reads_back_to_the_same_lps_volume(tmp_path, phantom, orientation):
    img = sitk.DICOMOrient(phantom.to_sitk(), orientation)
    f = tmp_path / f"{orientation}.nii.gz"
    sitk.WriteImage(img, str(f))
    back = load_ct(f)
    assert back.input_geometry.orientation == orientation
    assert np.array_equal(back.hu, phantom.hu)
    assert back.origin == pytest.approx(phantom.origin, abs=1e-3)
    assert back.z_mm(3) == pytest.approx(phantom.z_mm(3), abs=1e-3)
    # slice numbering as read: a file stored head first counts from the top
    k_in = back.input_slice_index(3)
    expected = 3 if orientation[2] == "S" else phantom.shape[0] - 1 - 3
    assert k_in == expected
    # masks go back in the input's geometry
    mask = np.zeros(phantom.shape, np.uint8)
    mask[3, 10:20, 30:40] = 1
    out = save_like(mask, back, tmp_path / f"m_{orientation}.nii.gz")
    m = sitk.ReadImage(str(out))
    assert m.GetSize() == img.GetSize() and m.GetDirection() == pytest.approx(img.GetDirection())
    assert m.GetOrigin() == pytest.approx(img.GetOrigin())
    assert np.array_equal(sitk.GetArrayFromImage(sitk.DICOMOrient(m, "LPS")), mask)


def test_mha_and_nrrd(tmp_path, phantom):
    for suffix in (".mha", ".nrrd"):
        f = tmp_path / f"ct{suffix}"
        sitk.WriteImage(phantom.to_sitk(), str(f))
        assert np.array_equal(load_ct(f).hu, phantom.hu)


# --- real data -----------------------------------------------------------------------------------
@pytest.mark.realdata
def test_real_series(lung_series_dir):
    s = load_ct(lung_series_dir)
    assert s.shape == (64, 512, 512)
    assert s.spacing == pytest.approx((5.0, 0.842, 0.842), abs=1e-3)
    assert -1024 <= s.hu.min() and s.hu.max() <= 3071
    # head at the top: in the right hemithorax the lowest slices are liver, the middle ones lung
    right = s.hu[:, 180:330, 100:220] < -600
    assert right[:3].mean() < 0.1 and right[30:40].mean() > 0.6
    assert s.z_mm(63) > s.z_mm(0)


@pytest.mark.realdata
def test_real_single_slices_error_and_padding_becomes_air(covid_slices_dir):
    files = sorted(covid_slices_dir.glob("*.dcm"))
    assert files
    raw_min = []
    for f in files:
        with pytest.raises(SingleSliceError, match="single CT slice"):
            load_ct(f)
        ds = pydicom.dcmread(f)
        raw_min.append(float(ds.pixel_array.min()) * float(ds.RescaleSlope) + float(ds.RescaleIntercept))
        s = load_ct(f, allow_single_slice=True)
        assert s.shape[0] == 1 and s.hu.min() >= -1024
    assert min(raw_min) <= -2048  # the data does use padding below air


@pytest.mark.realdata
def test_totalsegmentator_crops_read(aorta_crop_dir):
    s = load_ct(aorta_crop_dir / "ct_cropped.nii.gz")
    assert s.shape[0] > 50 and s.spacing[0] == pytest.approx(1.5)


# --- bad inputs: each names the problem ----------------------------------------------------------
def test_missing_path_and_empty_folder(tmp_path):
    with pytest.raises(InputNotFoundError, match="does not exist"):
        load_ct(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputNotFoundError, match="empty folder"):
        load_ct(tmp_path / "empty")


def test_corrupt_files(tmp_path, phantom):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.dcm").write_bytes(b"not a dicom file at all" * 10)
    with pytest.raises(UnreadableInputError, match="no readable DICOM"):
        load_ct(tmp_path / "junk")
    f = tmp_path / "trunc.nii.gz"
    sitk.WriteImage(phantom.to_sitk(), str(f))
    f.write_bytes(f.read_bytes()[:300])
    with pytest.raises(UnreadableInputError, match="truncated"):
        load_ct(f)
    d = _dicom(tmp_path, phantom, "pix")
    g = sorted(d.iterdir())[4]
    g.write_bytes(g.read_bytes()[:-5000])   # header fine, pixel data cut short
    with pytest.raises(UnreadableInputError, match="pixel data"):
        load_ct(d)


def test_not_ct(tmp_path, phantom):
    with pytest.raises(NotCTError, match="MR images, not CT"):
        load_ct(_dicom(tmp_path, phantom, "mr", extra={"Modality": "MR"}))
    sc = {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.7", "ImageType": ["DERIVED", "SECONDARY"]}
    with pytest.raises(NotCTError, match="secondary capture"):
        load_ct(_dicom(tmp_path, phantom, "sc", extra=sc))


def test_localizer(tmp_path, phantom):
    with pytest.raises(LocalizerError, match="localizer"):
        load_ct(_dicom(tmp_path, phantom, "loc", extra={"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]}))


def test_single_slice_and_too_few_slices(tmp_path, phantom):
    one = CTScan(phantom.hu[10:11], phantom.spacing, phantom.origin)
    with pytest.raises(SingleSliceError, match="single CT slice"):
        load_ct(_dicom(tmp_path, one, "one"))
    few = CTScan(phantom.hu[10:15], phantom.spacing, phantom.origin)
    with pytest.raises(TooFewSlicesError, match="only 5 slices"):
        load_ct(_dicom(tmp_path, few, "few"))


def test_missing_slices(tmp_path, phantom):
    d = _dicom(tmp_path, phantom, "gap")
    for f in sorted(d.iterdir())[8:10]:
        f.unlink()
    with pytest.raises(MissingSlicesError, match="slices are missing between z ="):
        load_ct(d)


def test_non_uniform_spacing(tmp_path, phantom):
    def stretch(ds, k):   # spacing alternates 4.0 / 4.8 mm
        ds.ImagePositionPatient[2] = float(ds.ImagePositionPatient[2]) + 0.8 * (k // 2) + (0.8 if k % 2 else 0) - 0.4 * k
    d = _dicom(tmp_path, phantom, "uneven", extra=stretch)
    with pytest.raises(NonUniformSpacingError, match="spacing varies"):
        load_ct(d)


def test_gantry_tilt(tmp_path, phantom):
    with pytest.raises(GantryTiltError, match="gantry tilt of 15.0 deg"):
        load_ct(_dicom(tmp_path, phantom, "tilt", extra={"GantryDetectorTilt": 15.0}))

    def shear(ds, k):     # positions drift in y as z rises: a tilted stack without the tag
        ds.ImagePositionPatient[1] = float(ds.ImagePositionPatient[1]) + 1.0 * k
    with pytest.raises(GantryTiltError, match="off their normal"):
        load_ct(_dicom(tmp_path, phantom, "shear", extra=shear))


def test_values_that_are_not_hu(tmp_path, phantom):
    raw = CTScan((phantom.hu.astype(np.int32) + 1024).astype(np.int16), phantom.spacing, phantom.origin)
    with pytest.raises(NotHUError, match="do not look like Hounsfield units"):
        load_ct(_dicom(tmp_path, raw, "raw", rescale_intercept=0))   # 0..4095 stored, no rescale


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".mha"])
def test_nan_in_image_files(tmp_path, phantom, suffix):
    # ITK's NIfTI writer and reader turn NaN into 0, so the NaN are put into the file's bytes directly
    import gzip
    arr = phantom.hu.astype(np.float32)
    arr[5, 5, 5], arr[6, 6, 6] = 12345.0, 23456.0
    f = tmp_path / f"nan{suffix}"
    sitk.WriteImage(phantom.to_sitk(arr), str(f.with_suffix("").with_suffix(".nii") if suffix == ".nii.gz" else f))
    raw_path = f.with_suffix("").with_suffix(".nii") if suffix == ".nii.gz" else f
    b = bytearray(raw_path.read_bytes())
    for v, bad in ((12345.0, np.nan), (23456.0, np.inf)):
        i = b.find(np.float32(v).tobytes())
        b[i:i + 4] = np.float32(bad).tobytes()
    if suffix == ".nii.gz":
        f.write_bytes(gzip.compress(bytes(b)))
    else:
        f.write_bytes(bytes(b))
    with pytest.raises(InvalidValuesError, match="2 NaN or infinite voxels"):
        load_ct(f)


def test_absurd_sizes(tmp_path, phantom):
    img = phantom.to_sitk()
    img.SetSpacing((25.0, 25.0, 4.0))
    f = tmp_path / "big_pixels.nii.gz"
    sitk.WriteImage(img, str(f))
    with pytest.raises(AbsurdSizeError, match="pixels of 25 x 25 mm"):
        load_ct(f)
    thin = sitk.GetImageFromArray(np.full((20, 4, 64), -1000, np.int16))
    f2 = tmp_path / "thin.nii.gz"
    sitk.WriteImage(thin, str(f2))
    with pytest.raises(AbsurdSizeError, match="64 x 4 pixels"):
        load_ct(f2)
