"""Property-based fuzz of the readers (issue 16 item 7): DICOM and NIfTI headers with missing, zero, negative,
non-finite, wrongly sized and garbage values. Every example must end in a project error
(:class:`sscild.errors.SscildError`) or a correct result (the geometry the header states, nothing invented);
any other exception fails the test. 500 examples per reader on 16x16x3 images; ``deadline=None``.
"""
from __future__ import annotations

import collections
import copy
import os
import struct
import tempfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from sscild.errors import SscildError
from sscild.io import load_ct
from sscild.phantom import write_dicom_series
from sscild.scan import CTScan

N_EXAMPLES = int(os.environ.get("SSCILD_FUZZ_EXAMPLES", "500"))
# SSCILD_FUZZ_SHRINK=0 reports a failure without minimising it (faster while debugging)
FUZZ = settings(max_examples=N_EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
                phases=[Phase.explicit, Phase.reuse, Phase.generate]
                + ([Phase.shrink] if os.environ.get("SSCILD_FUZZ_SHRINK", "1") == "1" else []))


def _base_scan() -> CTScan:
    rng = np.random.default_rng(1)
    hu = rng.integers(-1000, 200, (3, 16, 16)).astype(np.int16)
    hu[:, :4] = -1000  # enough air to look like HU
    return CTScan(hu, spacing=(2.5, 0.7, 0.7), origin=(-5.0, -5.0, -50.0))


@pytest.fixture(scope="module")
def base_dicom(tmp_path_factory):
    d = tmp_path_factory.mktemp("base")
    write_dicom_series(_base_scan(), d)
    return [f.read_bytes() for f in sorted(d.iterdir())]


finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e4, max_value=1e4)
odd_float = st.one_of(st.just(0.0), st.just(-1.0), st.just(float("nan")), st.just(float("inf")), finite,
                      st.just(1e30))
numbers = st.lists(odd_float, min_size=0, max_size=7)
garbage = st.one_of(st.text(max_size=12), st.binary(max_size=12).map(lambda b: b.decode("latin-1")))
TAGS = {
    "PixelSpacing": numbers, "ImagePositionPatient": numbers, "ImageOrientationPatient": numbers,
    "SliceThickness": odd_float, "SliceLocation": odd_float, "RescaleSlope": odd_float,
    "RescaleIntercept": odd_float, "GantryDetectorTilt": odd_float, "PixelPaddingValue": st.integers(-5000, 70000),
    "Rows": st.integers(0, 70000), "Columns": st.integers(0, 70000), "BitsAllocated": st.sampled_from([0, 1, 8, 12, 16, 32, 64]),
    "PixelRepresentation": st.integers(0, 3), "SamplesPerPixel": st.integers(0, 4),
    "Modality": st.sampled_from(["CT", "MR", "", "ct", "OT"]), "SeriesInstanceUID": st.sampled_from(["1.2.3", "", "x"]),
    "ImageType": st.lists(st.sampled_from(["ORIGINAL", "PRIMARY", "AXIAL", "LOCALIZER", "DERIVED"]), max_size=3),
    "PhotometricInterpretation": st.sampled_from(["MONOCHROME2", "MONOCHROME1", "RGB", "PALETTE COLOR", ""]),
}
# one mutation: (tag, "delete" | value | garbage text, which slices: all or one)
mutation = st.tuples(st.sampled_from(sorted(TAGS)), st.sampled_from(["delete", "value", "garbage"]),
                     st.one_of(st.none(), st.integers(0, 2))).flatmap(
    lambda m: st.tuples(st.just(m[0]), st.just(m[1]), st.just(m[2]),
                        TAGS[m[0]] if m[1] == "value" else garbage))

STATS: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)


def _set(ds, tag: str, value) -> None:
    """Set ``tag``; a value pydicom refuses to convert (garbage in a number tag) is stored as raw bytes, as a
    damaged file would hold it."""
    from pydicom.dataelem import RawDataElement
    from pydicom.datadict import dictionary_VR
    from pydicom.tag import Tag

    try:
        setattr(ds, tag, value)
    except Exception:
        t = Tag(tag)
        raw = str(value).encode("latin-1", "replace")
        raw += b" " * (len(raw) % 2)
        ds._dict[t] = RawDataElement(t, dictionary_VR(t), len(raw), raw, 0, True, True)


def _mutated_series(base: list[bytes], mutations, folder: Path) -> list:
    """Write the base series with the mutations applied; return the datasets as written."""
    import io

    folder.mkdir()
    written = []
    for k, raw in enumerate(base):
        mine = [m for m in mutations if m[2] is None or m[2] == k]
        ds = pydicom.dcmread(io.BytesIO(raw))
        if not mine:
            (folder / f"{k}.dcm").write_bytes(raw)
            written.append(ds)
            continue
        for tag, action, _, value in mine:
            if action == "delete":
                if tag in ds:
                    delattr(ds, tag)
            else:
                _set(ds, tag, value)
        try:
            ds.save_as(folder / f"{k}.dcm", enforce_file_format=True)
        except Exception:  # pydicom cannot write it: such a file cannot reach sscild
            (folder / f"{k}.dcm").unlink(missing_ok=True)
            continue
        written.append(ds)
    return written


def _header_value(ds, tag):
    try:
        if tag not in ds or ds[tag].value in (None, ""):
            return None
        v = ds[tag].value
        return [float(x) for x in v] if isinstance(v, (list, tuple, pydicom.multival.MultiValue)) else float(v)
    except Exception:
        return "malformed"


def _check_correct_dicom(scan: CTScan, written: list) -> None:
    """A successful read states only what the headers say: every slice had the geometry tags, the pixel size is
    the header's, the values are finite int16 HU."""
    assert scan.hu.dtype == np.int16 and scan.shape[1:] == (16, 16) and 2 <= scan.shape[0] <= 3
    for ds in written:
        if "Rows" not in ds or "LOCALIZER" in str(ds.get("ImageType", "")):
            continue  # not an image (ignored, as any non-image DICOM object), or a localizer (dropped with a note)
        ps = _header_value(ds, "PixelSpacing")
        assert isinstance(ps, list) and len(ps) == 2, f"read without a valid PixelSpacing: {ps}"
        assert scan.spacing[1:] == pytest.approx(ps), (scan.spacing, ps)
        iop = _header_value(ds, "ImageOrientationPatient")
        assert isinstance(iop, list) and len(iop) == 6, f"read without ImageOrientationPatient: {iop}"
        ipp, loc = _header_value(ds, "ImagePositionPatient"), _header_value(ds, "SliceLocation")
        assert isinstance(ipp, list) or isinstance(loc, float), "read without any slice position"
        slope = _header_value(ds, "RescaleSlope")
        assert slope is None or (isinstance(slope, float) and slope > 0), f"read with RescaleSlope {slope}"
    assert all(np.isfinite(scan.spacing)) and min(scan.spacing) > 0


@FUZZ
@given(mutations=st.lists(mutation, min_size=1, max_size=3))
def test_fuzzed_dicom_headers_end_in_a_project_error_or_a_correct_result(base_dicom, mutations):
    with tempfile.TemporaryDirectory() as tmp:
        written = _mutated_series(base_dicom, mutations, Path(tmp) / "d")
        try:
            scan = load_ct(Path(tmp) / "d", min_slices=2)
        except SscildError as err:
            assert len(str(err).split()) >= 4
            STATS["dicom"][type(err).__name__] += 1
            return
        _check_correct_dicom(scan, written)
        STATS["dicom"]["correct result"] += 1


# --------------------------------------------------------------------------------------------
# NIfTI-1 headers
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def base_nifti(tmp_path_factory) -> bytes:
    f = tmp_path_factory.mktemp("nii") / "ct.nii"
    sitk.WriteImage(_base_scan().to_sitk(), str(f))
    return f.read_bytes()


# (offset, struct format) of the header fields fuzzed
FIELDS = {"sizeof_hdr": (0, "i"), "dim": (40, "8h"), "datatype": (70, "h"), "bitpix": (72, "h"),
          "pixdim": (76, "8f"), "vox_offset": (108, "f"), "scl_slope": (112, "f"), "scl_inter": (116, "f"),
          "qform_code": (252, "h"), "sform_code": (254, "h"), "quatern": (256, "6f"), "srow": (280, "12f"),
          "magic": (344, "4s")}
short = st.integers(-40000, 40000).map(lambda v: max(-32768, min(32767, v)))
nii_value = {
    "i": st.integers(-2**31, 2**31 - 1), "h": st.one_of(short, st.sampled_from([0, 1, 2, 4, 8, 16, 64, 256, 512])),
    "f": odd_float, "8h": st.lists(st.one_of(short, st.integers(0, 5)), min_size=8, max_size=8),
    "8f": st.lists(odd_float, min_size=8, max_size=8), "6f": st.lists(odd_float, min_size=6, max_size=6),
    "12f": st.lists(odd_float, min_size=12, max_size=12), "4s": st.sampled_from([b"n+1\0", b"ni1\0", b"xxxx"]),
}
nii_mutation = st.sampled_from(sorted(FIELDS)).flatmap(
    lambda name: st.tuples(st.just(name), nii_value[FIELDS[name][1]]))


def _mutated_nifti(base: bytes, mutations) -> bytes:
    raw = bytearray(base)
    for name, value in mutations:
        off, fmt = FIELDS[name]
        vals = value if isinstance(value, list) else [value]
        struct.pack_into("<" + fmt, raw, off, *vals)
    return bytes(raw)


def _check_correct_nifti(scan: CTScan, raw: bytes) -> None:
    dim = struct.unpack("<8h", raw[40:56])
    pixdim = struct.unpack("<8f", raw[76:108])
    assert scan.hu.dtype == np.int16 and np.prod(scan.shape) == np.prod(dim[1:4])
    stated = sorted(abs(float(v)) for v in pixdim[1:4])
    assert sorted(scan.spacing) == pytest.approx(stated, rel=1e-4), (scan.spacing, pixdim)
    d = np.asarray(scan.direction).reshape(3, 3)
    assert np.allclose(np.abs(d), np.eye(3), atol=0.02), "an oblique volume was accepted"


@FUZZ
@given(mutations=st.lists(nii_mutation, min_size=1, max_size=3))
def test_fuzzed_nifti_headers_end_in_a_project_error_or_a_correct_result(base_nifti, mutations):
    raw = _mutated_nifti(base_nifti, mutations)
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "ct.nii"
        f.write_bytes(raw)
        try:
            scan = load_ct(f, min_slices=2)
        except SscildError as err:
            assert len(str(err).split()) >= 4
            STATS["nifti"][type(err).__name__] += 1
            return
        _check_correct_nifti(scan, raw)
        STATS["nifti"]["correct result"] += 1


@pytest.fixture(autouse=True)
def _summary(request, record_property):
    """Record how the examples ended (for bench/bench_reliability.py's table)."""
    yield
    reader = "dicom" if "dicom" in request.node.name else "nifti"
    counts = STATS.get(reader)
    if counts:
        total = sum(counts.values())
        parts = ", ".join(f"{n} {k}" for k, n in counts.most_common())
        record_property("fuzz_summary", f"{total} examples: {parts}; 0 tracebacks")
