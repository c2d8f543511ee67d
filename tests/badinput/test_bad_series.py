"""Bad-input cases: which series, localizers, corrupt files, absurd sizes (issue 16 item 2; README.md here)."""
from __future__ import annotations

import numpy as np
import pydicom
from badinputs import add_localizer, dicom_series, small_scan

from sscild.errors import CorruptFileError, MemoryLimitError, SeriesChoiceError
from sscild.io import load_ct


def _uid(folder) -> str:
    return str(pydicom.dcmread(next(iter(sorted(folder.iterdir()))), stop_before_pixels=True).SeriesInstanceUID)


def test_lung_and_soft_kernel_series(tmp_path, outcome):
    """Lung- and soft-kernel series of one scan in a folder: the soft kernel read, the choice and alternative noted"""
    scan = small_scan()
    sharp = scan.with_hu(np.clip(scan.hu.astype(np.int32) * 2 + 1000, -1024, 3000).astype(np.int16))
    dicom_series(tmp_path / "ct" / "lung", sharp, extra={"ConvolutionKernel": "B70f"})
    dicom_series(tmp_path / "ct" / "soft", scan, extra={"ConvolutionKernel": "B30f"})
    back = load_ct(tmp_path / "ct")
    assert np.array_equal(back.hu, scan.hu)
    assert back.meta["series_uid"] == _uid(tmp_path / "ct" / "soft")
    outcome.warning(back.meta["series_note"], match=r"chose series .*B30f.*also present: CT series .*B70f")


def test_thin_series_preferred(tmp_path, outcome):
    """A 5 mm and a 2.5 mm series of one scan: the thin one read, the choice noted"""
    scan = small_scan(nz=24)
    thick = small_scan(nz=12, spacing=(5.0, 1.5, 1.5))
    dicom_series(tmp_path / "ct" / "thin", scan)
    dicom_series(tmp_path / "ct" / "thick", thick)
    back = load_ct(tmp_path / "ct")
    assert back.shape == scan.shape and back.spacing[0] == 2.5
    outcome.warning(back.meta["series_note"], match=r"2\.5 mm.*rule: thinnest")


def test_edited_copy_same_geometry(tmp_path, outcome):
    """Two series with identical geometry and kernel (an edited +300 HU copy): SeriesChoiceError asking for --series"""
    scan = small_scan()
    dicom_series(tmp_path / "ct" / "a", scan)
    dicom_series(tmp_path / "ct" / "b", scan.with_hu(scan.hu + 300))
    with outcome.error(SeriesChoiceError, match="--series UID"):
        load_ct(tmp_path / "ct")


def test_series_option_picks_the_copy(tmp_path, outcome):
    """Two identical series and series_uid= given: that series read"""
    scan = small_scan()
    dicom_series(tmp_path / "ct" / "a", scan)
    dicom_series(tmp_path / "ct" / "b", scan.with_hu(scan.hu + 300))
    uid = _uid(tmp_path / "ct" / "b")
    back = load_ct(tmp_path / "ct", series_uid=uid)
    assert np.array_equal(back.hu, scan.hu + 300) and back.meta["series_uid"] == uid
    outcome.correct(f"series {uid[-12:]} read as asked")


def test_series_option_unknown_uid(tmp_path, outcome):
    """series_uid= naming no series of the folder: SeriesChoiceError listing the series found"""
    d = dicom_series(tmp_path / "d")
    with outcome.error(SeriesChoiceError, match="no series 1.2.3; found: CT series"):
        load_ct(d, series_uid="1.2.3")


def test_localizer_inside_series(tmp_path, outcome):
    """A localizer image inside the axial series (sorted first): dropped with a note, the series read"""
    scan = small_scan()
    d = dicom_series(tmp_path / "d", scan)
    add_localizer(d, "a_scout.dcm")
    back = load_ct(d)
    assert np.array_equal(back.hu, scan.hu)
    outcome.warning(back.meta["series_note"], match="1 localizer image.*dropped.*a_scout.dcm")


def test_truncated_mid_series_file(tmp_path, outcome):
    """One mid-series file cut to 300 bytes: CorruptFileError naming that file (not 'missing slices')"""
    d = dicom_series(tmp_path / "d")
    f = sorted(d.iterdir())[5]
    f.write_bytes(f.read_bytes()[:300])
    with outcome.error(CorruptFileError, match=f"corrupt file {f.name}"):
        load_ct(d)


def test_truncated_pixel_data(tmp_path, outcome):
    """One mid-series file cut inside its pixel data: CorruptFileError naming that file"""
    d = dicom_series(tmp_path / "d")
    f = sorted(d.iterdir())[5]
    f.write_bytes(f.read_bytes()[:-700])
    with outcome.error(CorruptFileError, match=f"corrupt file {f.name}"):
        load_ct(d)


def test_huge_declared_size(tmp_path, outcome):
    """1500 files declaring 4096x4096 pixels: MemoryLimitError before allocating (no numpy MemoryError)"""
    import shutil

    d = dicom_series(tmp_path / "one", small_scan(nz=10, n=16))
    ds = pydicom.dcmread(sorted(d.iterdir())[0])
    ds.Rows = ds.Columns = 4096
    del ds.PixelData  # headers only: the reader must refuse before touching pixels
    (tmp_path / "d").mkdir()
    ds.save_as(tmp_path / "d" / "0000.dcm")
    for k in range(1, 1500):  # byte copies: the size check comes before the slice positions are looked at
        shutil.copyfile(tmp_path / "d" / "0000.dcm", tmp_path / "d" / f"{k:04d}.dcm")
    with outcome.error(MemoryLimitError, match="GiB"):
        load_ct(tmp_path / "d")
