"""Reading scans (DICOM series, NIfTI, MHA/MHD, NRRD) into :class:`~sscild.scan.CTScan`, and writing masks back.

``load_ct`` validates what it reads and raises one of the project's exceptions, with the problem and the remedy
in its message, for inputs the toolkit cannot measure: missing or empty paths, unreadable files, non-CT
series, localizers, single slices, missing slices, uneven spacing, gantry tilt, values that are not HU,
NaN/inf, absurd sizes. DICOM headers are read first (fast); pixels only for the chosen series.
"""
from __future__ import annotations

import os
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from pydicom.multival import MultiValue

from .errors import (AbsurdSizeError, CorruptFileError, GantryTiltError, GeometryError, InputError,
                     InputNotFoundError, InvalidValuesError, LocalizerError, MemoryLimitError, MissingSlicesError,
                     NonAxialError, NonUniformSpacingError, NotCTError, NotHUError, SeriesChoiceError, SingleSliceError,
                     SscildError, TooFewSlicesError, UnreadableInputError)
from .scan import CTScan, scan_from_sitk
from .util import atomic_path

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".nhdr")
PADDING_VALUES = (-3024, -2048, -2000)
SECONDARY_CAPTURE = {"1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.7.1", "1.2.840.10008.5.1.4.1.1.7.2",
                     "1.2.840.10008.5.1.4.1.1.7.3", "1.2.840.10008.5.1.4.1.1.7.4"}
MAX_SLICES = 2000
OBLIQUE_TOLERANCE_DEG = 1.0  # an axis further than this from a patient axis makes the volume oblique (refused)


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def load_ct(path: str | os.PathLike, *, allow_single_slice: bool = False, min_slices: int = 10,
            series_uid: str | None = None) -> CTScan:
    """Read a chest CT and return it in HU, LPS, axes (z, y, x), z toward the head.

    Parameters
    ----------
    path : str or Path
        A folder holding a DICOM series (searched recursively), a single DICOM file, or a
        ``.nii``/``.nii.gz``/``.mha``/``.mhd``/``.nrrd`` file. When a folder holds several CT series, the rule
        is: thinnest slices (to 0.1 mm), then a soft kernel (over unknown, over sharp: density needs the soft
        one), then most slices; the choice and the alternatives are in ``scan.meta["series_note"]``, and two
        series equal on all three keys raise :class:`SeriesChoiceError`. Localizer images inside a series are
        dropped with a note.
    allow_single_slice : bool
        Accept a single 2D slice (for slice-wise uses); otherwise a volume is required.
    min_slices : int
        Fewest slices accepted for a volume.
    series_uid : str, optional
        SeriesInstanceUID of the DICOM series to read (overrides the rule).

    Raises
    ------
    InputError subclasses, each naming the problem and what to do. Geometry is never invented: missing or zero
    spacing, orientation or slice positions raise :class:`GeometryError` (positions only: derived from a complete
    SliceLocation, with a note); coronal, sagittal and oblique volumes raise :class:`NonAxialError`.
    """
    p = Path(path)
    if not p.exists():
        raise InputNotFoundError(f"{p} does not exist: give a DICOM series folder or a .nii.gz/.mha/.nrrd file")
    if p.is_dir():
        if not any(f.is_file() for f in p.rglob("*")):
            raise InputNotFoundError(f"{p} is an empty folder: give the folder that holds the DICOM files")
        files = sorted(f for f in p.rglob("*") if f.is_file())
        scan = _load_dicom_files(files, str(p), allow_single_slice, min_slices, series_uid)
    elif _suffix(p) in IMAGE_SUFFIXES:
        scan = _load_image_file(p, allow_single_slice, min_slices)
    else:
        scan = _load_dicom_files([p], str(p), allow_single_slice, min_slices, series_uid)
    return scan


# --------------------------------------------------------------------------------------------
# image files
# --------------------------------------------------------------------------------------------
def _nifti_raw_check(p: Path) -> None:
    """Checks ITK's NIfTI reader skips: it zero-fills a truncated .nii.gz and turns NaN into 0 without a word.

    The gzip trailer's size is compared with the size the header promises; float data is scanned for
    NaN/inf in the raw bytes. NIfTI-1 only (NIfTI-2 headers are left to ITK).
    """
    import gzip
    import struct

    gz = p.name.lower().endswith(".gz")
    opener = gzip.open if gz else open
    try:
        with opener(p, "rb") as f:
            hdr = f.read(348)
    except (OSError, EOFError) as err:
        raise UnreadableInputError(f"{p} cannot be read as NIfTI ({err}); is it corrupt or truncated?") from None
    if len(hdr) < 348:
        raise UnreadableInputError(f"{p} is truncated (header incomplete): re-export the image")
    end = "<" if struct.unpack("<i", hdr[:4])[0] in (348, 540) else ">"
    size = struct.unpack(end + "i", hdr[:4])[0]
    if size == 540:
        return  # NIfTI-2: ITK decides
    if size != 348:
        raise UnreadableInputError(f"{p}: not a NIfTI header (sizeof_hdr {size}, expected 348 or 540); the file is "
                                   "corrupt or not NIfTI: re-export the image")
    if hdr[344:348] not in (b"n+1\0", b"ni1\0"):
        raise GeometryError(f"{p}: an Analyze 7.5 header (no NIfTI magic): the orientation is unknown and ITK would "
                            "invent one. Convert it to NIfTI with its orientation first")
    dim = struct.unpack(end + "8h", hdr[40:56])
    if not 1 <= dim[0] <= 7 or min(dim[1:1 + dim[0]]) < 1:
        raise UnreadableInputError(f"{p}: the NIfTI header's dim {list(dim)} is not a valid image size; the file is "
                                   "corrupt: re-export the image")
    _nifti_geometry_check(p, hdr, end, dim)
    datatype, bitpix = struct.unpack(end + "hh", hdr[70:74])
    offset = float(struct.unpack(end + "f", hdr[108:112])[0])
    if not (np.isfinite(offset) and 0 <= offset < 2**40) or bitpix <= 0 or bitpix % 8:
        raise UnreadableInputError(f"{p}: the NIfTI header's vox_offset ({offset:g}) or bitpix ({bitpix}) is not "
                                   "valid; the file is corrupt: re-export the image")
    vox_offset = int(offset)
    nvox = int(np.prod([max(int(d), 1) for d in dim[1:1 + max(int(dim[0]), 1)]]))
    check_memory(nvox, str(p), bytes_per_voxel=bitpix // 8, copies=2)
    expected = max(vox_offset, 348) + nvox * bitpix // 8
    if gz:
        with open(p, "rb") as f:
            f.seek(-4, os.SEEK_END)
            isize = struct.unpack("<I", f.read(4))[0]
        complete = isize == expected % 2**32
    else:
        complete = p.stat().st_size >= expected
    if datatype in (16, 64) or not complete:  # float32/float64: scan for NaN/inf; or confirm truncation
        dtype = np.dtype(end + ("f4" if datatype == 16 else "f8")) if datatype in (16, 64) else None
        try:
            with opener(p, "rb") as f:
                f.seek(max(vox_offset, 348))
                raw = f.read(nvox * bitpix // 8)
        except (OSError, EOFError) as err:
            raise UnreadableInputError(f"{p} is truncated or corrupt ({err}): re-export the image") from None
        if len(raw) < nvox * bitpix // 8:
            raise UnreadableInputError(f"{p} is truncated: {len(raw)} of {nvox * bitpix // 8} bytes of voxel data; "
                                       "re-export the image")
        if dtype is not None:
            bad = int((~np.isfinite(np.frombuffer(raw, dtype))).sum())
            if bad:
                raise InvalidValuesError(f"{p} holds {bad} NaN or infinite voxels: re-export the image without "
                                         "them (e.g. replace them by -1024)")


def _nifti_geometry_check(p: Path, hdr: bytes, end: str, dim: tuple[int, ...]) -> None:
    """What ITK would silently fix: a zero, negative or non-finite voxel size becomes 1 mm, and a header with
    neither qform nor sform gets an invented orientation. Both are refused."""
    import struct

    pixdim = struct.unpack(end + "8f", hdr[76:108])
    for i in range(1, min(int(dim[0]), 3) + 1):
        if not (np.isfinite(pixdim[i]) and pixdim[i] > 0):
            axis = "slice spacing" if i == 3 else "pixel size"
            raise GeometryError(f"{p}: pixdim[{i}] = {pixdim[i]:g} in the NIfTI header: the {axis} is unknown (ITK "
                                "would silently use 1 mm). Fix the header (e.g. nibabel's set_zooms) or re-export")
    qform, sform = struct.unpack(end + "hh", hdr[252:256])
    if qform <= 0 and sform <= 0:
        raise GeometryError(f"{p}: the NIfTI header has neither qform nor sform (both codes 0): the orientation is "
                            "unknown (ITK would invent one). Re-export the image with its orientation")
    quatern = np.asarray(struct.unpack(end + "6f", hdr[256:280]), float)
    srow = np.asarray(struct.unpack(end + "12f", hdr[280:328]), float).reshape(3, 4)
    bad_q = qform > 0 and (not np.isfinite(quatern).all() or quatern[:3] @ quatern[:3] > 1.0 + 1e-4)
    bad_s = sform > 0 and (not np.isfinite(srow).all() or abs(np.linalg.det(srow[:, :3])) < 1e-6)
    if bad_q or bad_s:
        which = "qform (quatern_b/c/d, qoffset)" if bad_q else "sform (srow_x/y/z)"
        raise GeometryError(f"{p}: the NIfTI header's {which} is not a valid orientation (non-finite or "
                            "degenerate): re-export the image with its orientation")


def _header_text_check(p: Path) -> None:
    """MetaImage and NRRD headers without a voxel size get 1 mm from ITK without a word: refused."""
    with open(p, "rb") as f:
        head = f.read(8192).decode("latin-1", "replace")
    if _suffix(p) in (".mha", ".mhd"):
        head = head.split("ElementDataFile")[0]
        if "ElementSpacing" not in head and "ElementSize" not in head:
            raise GeometryError(f"{p}: the MetaImage header has no ElementSpacing: the voxel size is unknown (ITK "
                                "would use 1 mm). Add it to the header or re-export the image")
    elif "space directions" not in head and "spacings" not in head:
        raise GeometryError(f"{p}: the NRRD header has neither 'space directions' nor 'spacings': the voxel size is "
                            "unknown (ITK would use 1 mm). Add it to the header or re-export the image")


def _read_image(p: Path) -> sitk.Image:
    """SimpleITK read after checking the header's size against the available memory."""
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(p))
        reader.ReadImageInformation()
        check_memory(int(np.prod([int(v) for v in reader.GetSize()])), str(p),
                     bytes_per_voxel=max(int(reader.GetNumberOfComponents()), 1) * 4, copies=2)
        return reader.Execute()
    except RuntimeError as err:
        first = str(err).strip().splitlines()[-1][:200] if str(err).strip() else ""
        raise UnreadableInputError(f"{p} cannot be read as an image ({first}); is it corrupt or truncated? "
                                   "Re-export it, or give the DICOM series") from None


def _load_image_file(p: Path, allow_single: bool, min_slices: int) -> CTScan:
    if p.stat().st_size == 0:
        raise UnreadableInputError(f"{p} is empty (0 bytes): the file was not written completely")
    if _suffix(p) in (".nii", ".nii.gz"):
        _nifti_raw_check(p)
    else:
        _header_text_check(p)
    img = _read_image(p)
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise NotCTError(f"{p} has {img.GetNumberOfComponentsPerPixel()} components per pixel (colour/vector "
                         "image): a CT is one grey value per voxel")
    if img.GetDimension() > 3:
        raise AbsurdSizeError(f"{p} is a {img.GetDimension()}D image {img.GetSize()}: give one 3D CT volume")
    if img.GetDimension() == 2 or img.GetSize()[2] == 1:
        if not allow_single:
            raise SingleSliceError(f"{p} holds a single 2D slice; a volume of the chest is needed (the whole "
                                   "series, lung apex to bases)")
        if img.GetDimension() == 2:
            img = sitk.JoinSeries(img)
    check_axial(np.asarray(img.GetDirection(), float).reshape(3, 3), str(p))
    arr = sitk.GetArrayViewFromImage(img)
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        n = int((~np.isfinite(arr)).sum())
        raise InvalidValuesError(f"{p} holds {n} NaN or infinite voxels: re-export the image without them")
    _check_geometry(img.GetSize(), img.GetSpacing(), str(p), allow_single, min_slices)
    meta = {"format": _suffix(p).lstrip("."), "modality": "CT (assumed: image files carry no modality)",
            "n_slices": int(img.GetSize()[2])}
    scan = scan_from_sitk(img, meta, source=str(p))
    hu = scan.hu.copy()
    hu[hu < -1024] = -1024  # padding outside the field of view (-3024, -2048, -2000) -> air
    _check_hu(hu, str(p))
    return scan.with_hu(hu)


def _check_geometry(size, spacing, src: str, allow_single: bool, min_slices: int) -> None:
    nx, ny, nz = (int(v) for v in size[:3])
    sx, sy, sz = (float(v) for v in spacing[:3])
    if nz > MAX_SLICES:
        raise AbsurdSizeError(f"{src} has {nz} slices (> {MAX_SLICES}): not a single chest CT; split or resample it")
    if min(nx, ny) < 16 or max(nx, ny) > 4096:
        raise AbsurdSizeError(f"{src} has slices of {nx} x {ny} pixels: a chest CT slice is 16..4096 pixels a side")
    if not (0.1 <= sx <= 10 and 0.1 <= sy <= 10):
        raise AbsurdSizeError(f"{src} has pixels of {sx:.3g} x {sy:.3g} mm: outside 0.1..10 mm; check the header's "
                              "spacing")
    if nz > 1 and not (0.1 <= sz <= 20):
        raise AbsurdSizeError(f"{src} has a slice spacing of {sz:.3g} mm: outside 0.1..20 mm; check the header")
    if nz == 1 and not allow_single:
        raise SingleSliceError(f"{src} holds a single slice; a volume is needed")
    if 1 < nz < min_slices:
        raise TooFewSlicesError(f"{src} has only {nz} slices; at least {min_slices} are needed to cover the lungs "
                                "(give the whole series)")


def _check_hu(hu: np.ndarray, src: str) -> None:
    sample = hu[:, ::4, ::4]
    p01 = float(np.percentile(sample, 1))
    if p01 > -500:
        lo = int(sample.min())
        raise NotHUError(
            f"{src}: values do not look like Hounsfield units (1st percentile {p01:.0f}, minimum {lo}; air should "
            "be near -1000). The file may hold raw detector values without RescaleSlope/RescaleIntercept, or not "
            "be a CT; convert it to HU (value * slope + intercept) first")


# --------------------------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------------------------
# Series choice (documented in load_ct): among the CT series of a folder, the thinnest slices win (to 0.1 mm),
# then a soft kernel over an unknown one over a sharp one (density measures need the soft kernel), then most
# slices. Two series equal on all three keys are refused (SeriesChoiceError): --series UID decides.
_SHARP_WORDS = ("LUNG", "BONE", "SHARP", "DETAIL", "EDGE", "HIGH", "HR", "ULTRA")
_SOFT_WORDS = ("SOFT", "STANDARD", "STND", "SMOOTH", "BODY", "ABDOMEN", "MEDIASTIN")


_HEADER_TAGS = ["SeriesInstanceUID", "SOPInstanceUID", "Modality", "SOPClassUID", "ImageType", "Rows", "Columns",
                "ImageOrientationPatient", "ImagePositionPatient", "SliceLocation", "PixelSpacing", "SliceThickness",
                "GantryDetectorTilt", "ConvolutionKernel", "SeriesNumber", "Manufacturer", "ManufacturerModelName",
                "KVP", "SeriesDescription"]


@dataclass(frozen=True)
class SliceHeader:
    """What sscild reads from one DICOM image's header (parsed once; ``None`` = tag absent)."""

    path: Path
    series_uid: str
    sop_uid: str
    modality: str
    sop_class: str
    image_type: tuple[str, ...]
    rows: int
    cols: int
    iop: tuple[float, ...] | None
    ipp: tuple[float, ...] | None
    slice_location: float | None
    pixel_spacing: tuple[float, ...] | None
    thickness: float | None
    tilt: float | None
    kernel: str
    series_number: str
    text: dict[str, Any]


def _tag(ds, keyword: str, f: Path, n: int | None = None):
    """Finite float(s) of tag ``keyword``, or ``None`` when absent/empty; GeometryError when malformed."""
    try:
        if keyword not in ds or ds[keyword].value in (None, "", b""):
            return None
        v = ds[keyword].value
        vals = [float(x) for x in (v if isinstance(v, (list, tuple, MultiValue)) else [v])]
    except Exception as err:  # pydicom converts lazily: any malformed value surfaces here
        raise GeometryError(f"{f.name}: {keyword} is malformed ({type(err).__name__}): fix or re-export the "
                            "file") from None
    if (n is not None and len(vals) != n) or (n is None and len(vals) != 1) or not np.all(np.isfinite(vals)):
        raise GeometryError(f"{f.name}: {keyword} = {vals[:6]} is not {n or 1} finite number(s): fix or re-export "
                            "the file")
    return tuple(vals) if n is not None else vals[0]


def _header(f: Path, ds) -> SliceHeader:
    def text(keyword: str) -> str:
        try:
            v = ds.get(keyword, "")
            v = " ".join(str(x) for x in v) if isinstance(v, (list, tuple, MultiValue)) else v
            return str(v or "").strip()
        except Exception:  # a malformed free-text tag carries nothing sscild needs
            return ""

    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        itype = tuple(str(v).upper() for v in (ds.get("ImageType") or []))
    except Exception as err:
        raise UnreadableInputError(f"{f.name}: Rows/Columns/ImageType are malformed ({type(err).__name__}); "
                                   "the file is corrupt") from None
    return SliceHeader(
        path=f, series_uid=text("SeriesInstanceUID") or "unknown", sop_uid=text("SOPInstanceUID"),
        modality=text("Modality").upper(), sop_class=text("SOPClassUID"), image_type=itype, rows=rows, cols=cols,
        iop=_tag(ds, "ImageOrientationPatient", f, 6), ipp=_tag(ds, "ImagePositionPatient", f, 3),
        slice_location=_tag(ds, "SliceLocation", f), pixel_spacing=_tag(ds, "PixelSpacing", f, 2),
        thickness=_tag(ds, "SliceThickness", f), tilt=_tag(ds, "GantryDetectorTilt", f),
        kernel=text("ConvolutionKernel"), series_number=text("SeriesNumber"),
        text={k: text(k) for k in ("Manufacturer", "ManufacturerModelName", "KVP", "SeriesDescription")})


def _read_headers(files: list[Path]):
    """Parsed headers of the image files; unreadable files as (path, error); non-image DICOM skipped."""
    import pydicom

    headers, bad = [], []
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
            if "Rows" not in ds:
                if len(ds) == 0 or "Image Storage" in _storage_class(ds):  # cut off after its file meta
                    bad.append((f, EOFError("the file ends before its image attributes")))
                continue  # otherwise not an image (SR, presentation state, DICOMDIR...)
            headers.append(_header(f, ds))
        except SscildError:
            raise
        except Exception as err:  # pydicom raises many types on damaged files: all mean "cannot read"
            bad.append((f, err))
    return headers, bad


def _storage_class(ds) -> str:
    try:
        return str(ds.file_meta.MediaStorageSOPClassUID.name)
    except Exception:  # no or damaged file meta
        return ""


def _looks_dicom(f: Path) -> bool:
    try:
        with open(f, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _normal(h: SliceHeader) -> np.ndarray | None:
    return None if h.iop is None else np.cross(np.asarray(h.iop[:3]), np.asarray(h.iop[3:]))


def _split_localizers(items: list[SliceHeader]) -> tuple[list[SliceHeader], list[SliceHeader]]:
    """(images, localizers) of one series: localizers by ImageType, or up to 3 images whose plane is
    perpendicular to the series' own (a scout inside the axial series)."""
    loc = [h for h in items if {"LOCALIZER", "SCOUT", "TOPOGRAM"} & set(h.image_type)]
    rest = [h for h in items if h not in loc]
    normals = [(h, _normal(h)) for h in rest if _normal(h) is not None]
    if len(normals) > 3:
        keys = [tuple(np.round(np.abs(n), 1)) for _, n in normals]
        major = np.asarray(max(set(keys), key=keys.count))
        odd = [h for h, n in normals if abs(float(np.abs(n) @ major)) / (np.linalg.norm(major) + 1e-9) < 0.5]
        if 0 < len(odd) <= 3:
            loc += odd
            rest = [h for h in rest if h not in odd]
    return rest, loc


def _kind(items: list[SliceHeader]) -> str:
    h = items[0]
    # a secondary capture is judged by its SOP class: CT reformats are often DERIVED\\SECONDARY yet real HU
    if h.sop_class in SECONDARY_CAPTURE:
        return "secondary capture"
    if h.modality != "CT":
        return h.modality or "unknown modality"
    return "CT"


def _kernel_class(kernel: str) -> int:
    """0 soft, 1 unknown, 2 sharp (from the ConvolutionKernel name: words, or Siemens' number, e.g. B70f)."""
    k = kernel.upper()
    m = re.search(r"\b[A-Z]{1,2}(\d{2})[A-Z]?\b", k)
    if any(w in k for w in _SHARP_WORDS) or (m and int(m.group(1)) >= 50):
        return 2
    if any(w in k for w in _SOFT_WORDS) or (m and int(m.group(1)) < 50):
        return 0
    return 1


def _series_key(items: list[SliceHeader]) -> tuple[float, int, int]:
    th = items[0].thickness
    if th is None:
        zs = sorted({round(float(h.ipp[2]), 3) for h in items if h.ipp is not None})
        th = float(np.median(np.diff(zs))) if len(zs) > 1 else 0.0
    return (round(float(th), 1), _kernel_class(items[0].kernel), -len(items))


def _describe_series(uid: str, items: list[SliceHeader]) -> str:
    t, _, n = _series_key(items)
    return (f"series {uid} (number {items[0].series_number or '?'}, {-n} slices, {t:g} mm, kernel "
            f"{items[0].kernel or 'unknown'})")


def _choose_series(headers: list[SliceHeader], src: str, series_uid: str | None, min_slices: int):
    """The CT series to read (by ``series_uid`` or the documented rule) and the notes on what was left out."""
    series: dict[str, list[SliceHeader]] = defaultdict(list)
    for h in headers:
        series[h.series_uid].append(h)
    notes, kinds, images = [], {}, {}
    for uid, items in series.items():
        rest, loc = _split_localizers(items)
        images[uid] = rest
        kinds[uid] = _kind(rest) if rest else "localizer"
        if loc and rest:
            notes.append(f"{len(loc)} localizer image(s) inside series {uid} dropped ({loc[0].path.name})")
    if series_uid is not None:
        if series_uid not in series:
            raise SeriesChoiceError(f"{src}: no series {series_uid}; found: " + "; ".join(
                f"{kinds[u]} {_describe_series(u, images[u] or series[u])}" for u in series))
        if kinds[series_uid] != "CT":
            raise NotCTError(f"{src}: series {series_uid} holds {kinds[series_uid]} images, not axial CT")
        return series_uid, images[series_uid], notes + [f"series {series_uid} chosen with --series"]
    ct = {u: v for u, v in images.items() if kinds[u] == "CT"}
    if not ct:
        found = sorted(set(kinds.values()))
        if found == ["localizer"]:
            raise LocalizerError(f"{src} holds only a localizer/scout image, not an axial CT series: export the "
                                 "axial reconstruction")
        if "secondary capture" in found:
            raise NotCTError(f"{src} holds a secondary capture (a screenshot-like derived image), not CT "
                             "slices: export the original axial CT series")
        raise NotCTError(f"{src} holds {', '.join(found)} images, not CT: sscild measures chest CT only")
    full = {u: v for u, v in ct.items() if len(v) >= min_slices} or ct
    ranked = sorted(full, key=lambda u: _series_key(full[u]))
    uid = ranked[0]
    if len(ranked) > 1 and _series_key(full[ranked[1]]) == _series_key(full[uid]):
        raise SeriesChoiceError(
            f"{src}: {len(ranked)} CT series could be the scan and two have the same slice thickness, kernel and "
            f"slice count: {_describe_series(uid, full[uid])} and {_describe_series(ranked[1], full[ranked[1]])}. "
            "Choose one with --series UID (or the manifest column series_uid)")
    others = [u for u in series if u != uid]
    if others:
        notes.append(f"chose {_describe_series(uid, ct[uid])} (rule: thinnest slices, then soft kernel, then most "
                     "slices); also present: " + "; ".join(f"{kinds[u]} {_describe_series(u, images[u] or series[u])}"
                                                           for u in others) + ". Use --series UID to choose another")
    return uid, ct[uid], notes


def _orientation(items: list[SliceHeader], src: str) -> np.ndarray:
    """The series' 3x3 direction (columns: row, column, normal), checked complete, consistent and axial."""
    missing = [h for h in items if h.iop is None]
    if missing:
        raise GeometryError(f"{src}: ImageOrientationPatient is missing in {len(missing)} of {len(items)} files (e.g. "
                            f"{missing[0].path.name}): the slice orientation is unknown and sscild does not guess it. "
                            "Re-export the series with its geometry tags (from the scanner or PACS)")
    iop = np.asarray(items[0].iop)
    row, col = iop[:3], iop[3:]
    if abs(np.linalg.norm(row) - 1) > 0.01 or abs(np.linalg.norm(col) - 1) > 0.01 or abs(row @ col) > 0.01:
        raise GeometryError(f"{src}: ImageOrientationPatient {list(iop)} is not two orthogonal unit vectors: fix "
                            "or re-export the series")
    for h in items:
        if np.abs(np.asarray(h.iop) - iop).max() > 1e-3:
            raise InputError(f"{src}: slices have different orientations; the series mixes several stacks")
    direction = np.column_stack([row, col, np.cross(row, col)])
    if abs(direction[2, 2]) < 0.5 and len(items) <= 3:
        raise LocalizerError(f"{src}: {len(items)} non-axial slice(s) (a localizer/scout?): export the axial series")
    check_axial(direction, src)
    return direction


def check_axial(direction: np.ndarray, src: str) -> None:
    """Refuse coronal, sagittal and oblique volumes (direction: 3x3, columns = the image axes in LPS).

    sscild measures axial series: the third image axis must run head-foot and every axis must lie within
    ``OBLIQUE_TOLERANCE_DEG`` of a patient axis. Raises :class:`NonAxialError` saying to resample first.
    """
    d = np.asarray(direction, float).reshape(3, 3)
    normal = d[:, 2] / (np.linalg.norm(d[:, 2]) + 1e-12)
    plane = {0: "sagittal", 1: "coronal", 2: "axial"}[int(np.argmax(np.abs(normal)))]
    if plane != "axial":
        raise NonAxialError(f"{src}: the slices are {plane}, not axial: sscild measures axial series. Resample "
                            "to axial slices first (e.g. 3D Slicer's Resample Scalar Volume, or export the axial "
                            "reconstruction from the scanner)")
    cos = np.abs(d / (np.linalg.norm(d, axis=0, keepdims=True) + 1e-12)).max(axis=0)
    angle = float(np.rad2deg(np.arccos(np.clip(cos.min(), 0, 1))))
    if angle > OBLIQUE_TOLERANCE_DEG:
        raise NonAxialError(f"{src}: the volume is oblique ({angle:.1f} deg off the patient axes): sscild measures "
                            "axial series aligned with the patient. Resample to an axial grid first (e.g. "
                            "3D Slicer's Resample Scalar Volume or SimpleITK.Resample)")


def _positions(items: list[SliceHeader], normal: np.ndarray, src: str, notes: list[str]) -> np.ndarray:
    """ImagePositionPatient of every slice; derived from a complete SliceLocation (with a note) when missing."""
    missing = [h for h in items if h.ipp is None]
    if not missing:
        return np.array([h.ipp for h in items], float)
    if any(h.slice_location is None for h in items):
        raise GeometryError(
            f"{src}: ImagePositionPatient is missing in {len(missing)} of {len(items)} files (e.g. "
            f"{missing[0].path.name}) and SliceLocation is not complete either: the slice order and spacing are "
            "unknown and sscild does not guess them. Re-export the series with its geometry tags")
    known = [h.ipp for h in items if h.ipp is not None]
    base = np.asarray(known[0], float) if known else np.zeros(3)
    base = base - (base @ normal) * normal
    notes.append(f"ImagePositionPatient missing in {len(missing)} of {len(items)} files: slice positions taken from "
                 "SliceLocation" + ("" if known else "; the in-plane origin is unknown (x, y world positions are "
                                    "relative)"))
    return np.array([base + h.slice_location * normal for h in items], float)


def _pixel_spacing(items: list[SliceHeader], src: str) -> tuple[float, float]:
    missing = [h for h in items if h.pixel_spacing is None]
    if missing:
        raise GeometryError(f"{src}: PixelSpacing is missing in {len(missing)} of {len(items)} files (e.g. "
                            f"{missing[0].path.name}): the pixel size is unknown and sscild does not assume 1 mm. "
                            "Re-export the series with its geometry tags")
    ps = items[0].pixel_spacing
    if min(ps) <= 0:
        raise GeometryError(f"{src}: PixelSpacing is {list(ps)} mm: not a size; fix or re-export the series")
    if any(np.abs(np.subtract(h.pixel_spacing, ps)).max() > 1e-4 for h in items):
        raise InputError(f"{src}: PixelSpacing differs between slices: the folder mixes series; give one series")
    return float(ps[0]), float(ps[1])


def _slice_stack(items: list[SliceHeader], src: str, bad: list) -> tuple[list[SliceHeader], np.ndarray, float,
                                                                          np.ndarray, list[str]]:
    """Sorted slices, their positions, the slice spacing, the direction and notes; every geometry check."""
    notes: list[str] = []
    direction = _orientation(items, src)
    normal = direction[:, 2]
    tilt = [h.tilt for h in items if h.tilt is not None]
    if tilt and abs(tilt[0]) > 0.01:
        raise GantryTiltError(f"{src} was acquired with a gantry tilt of {tilt[0]:.1f} deg: the volume is sheared. "
                              "Export a reconstruction without tilt or resample it first (e.g. with dcm2niix)")
    ipp = _positions(items, normal, src, notes)
    proj = ipp @ normal
    order = np.argsort(proj, kind="stable")
    items, proj, ipp = [items[i] for i in order], proj[order], ipp[order]
    if len(items) == 1:
        if items[0].thickness is None or items[0].thickness <= 0:
            raise GeometryError(f"{src}: a single slice without a SliceThickness: its thickness is unknown")
        return items, ipp, float(items[0].thickness), direction, notes
    steps = np.diff(proj)
    if np.any(steps < 1e-3):
        raise InputError(f"{src}: {int((steps < 1e-3).sum())} slice(s) share a position: the folder mixes "
                         "acquisitions or repeats files; give one series")
    med = float(np.median(steps))
    span = ipp[-1] - ipp[0]
    cos = abs(float(span @ normal)) / (np.linalg.norm(span) + 1e-9)
    if cos < np.cos(np.deg2rad(0.5)):
        ang = float(np.rad2deg(np.arccos(min(cos, 1.0))))
        raise GantryTiltError(f"{src}: slices are stacked {ang:.1f} deg off their normal (gantry tilt): the "
                              "volume is sheared. Export a reconstruction without tilt or resample it first")
    big = np.nonzero(steps > 1.5 * med)[0]
    if len(big):
        corrupt = [f for f, _ in bad if _looks_dicom(f)]
        if corrupt:
            raise CorruptFileError(f"{src}: corrupt file {corrupt[0].name} ({len(corrupt)} unreadable DICOM file(s)); "
                                   "its slice is missing from the series. Re-export the series or replace the file")
        i = int(big[0])
        raise MissingSlicesError(
            f"{src}: slices are missing between z = {ipp[i][2]:.1f} and {ipp[i + 1][2]:.1f} mm (gap "
            f"{steps[i]:.1f} mm, usual spacing {med:.2f} mm; {len(big)} gap(s)): export the complete series")
    dev = np.abs(steps - med)
    if dev.max() > max(0.1 * med, 0.05):
        raise NonUniformSpacingError(
            f"{src}: slice spacing varies from {steps.min():.2f} to {steps.max():.2f} mm: sscild needs evenly "
            "spaced slices; resample the series to a uniform spacing first")
    return items, ipp, med, direction, notes


def check_memory(n_voxels: int, src: str, bytes_per_voxel: int = 2, copies: int = 3) -> None:
    """Refuse an image whose reading would need more memory than is available (checked before allocating).

    ``copies`` working copies of ``bytes_per_voxel`` per voxel are counted (read, reorient, HU). Raises
    :class:`MemoryLimitError` naming the size; does nothing when the available memory cannot be read.
    """
    need = float(n_voxels) * bytes_per_voxel * copies
    avail = _available_memory()
    if avail is not None and need > avail:
        raise MemoryLimitError(f"{src}: reading it needs about {need / 2**30:.1f} GiB ({n_voxels:,} voxels), only "
                               f"{avail / 2**30:.1f} GiB are available. Check the header's image size; crop or "
                               "resample the image, or use a machine with more memory")


def _available_memory() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def _rescale(ds, f: Path, src: str, notes: set[str]) -> tuple[float, float]:
    """RescaleSlope and RescaleIntercept of one file: a missing slope is 1 and a missing intercept 0 (with a
    note); a zero, negative or non-finite slope is refused."""
    slope, icpt = _tag(ds, "RescaleSlope", f), _tag(ds, "RescaleIntercept", f)
    if slope is None:
        notes.add("RescaleSlope missing: 1 assumed (the values were checked to look like HU)")
        slope = 1.0
    if icpt is None:
        notes.add("RescaleIntercept missing: 0 assumed (the values were checked to look like HU)")
        icpt = 0.0
    if slope <= 0:
        raise NotHUError(f"{src}: RescaleSlope is {slope:g} in {f.name}: Hounsfield units cannot be computed "
                         "(HU = value x slope + intercept). Fix the header or re-export the series")
    return slope, icpt


def _read_pixels(items: list[SliceHeader], src: str, notes: list[str]) -> np.ndarray:
    """The series' pixels as HU int16 (z, y, x) in the order of ``items``; padding to air."""
    import pydicom

    vol = np.empty((len(items), items[0].rows, items[0].cols), np.int16)
    rescale_notes: set[str] = set()
    for k, h in enumerate(items):
        try:
            ds = pydicom.dcmread(h.path)
            px = ds.pixel_array
        except Exception as err:  # corrupt pixel data of any kind
            raise CorruptFileError(f"{src}: corrupt file {h.path.name}: its pixel data cannot be decoded "
                                   f"({type(err).__name__}: {str(err)[:120]}); the file is truncated or uses an "
                                   "unsupported compression. Re-export the series or replace the file") from None
        if px.shape != vol.shape[1:]:
            raise InputError(f"{src}: {h.path.name} is {px.shape[-1]}x{px.shape[0]} pixels, the others "
                             f"{vol.shape[2]}x{vol.shape[1]}: the folder mixes series")
        slope, icpt = _rescale(ds, h.path, src, rescale_notes)
        hu = px.astype(np.float32) * slope + icpt
        pad, lim = _tag(ds, "PixelPaddingValue", h.path), _tag(ds, "PixelPaddingRangeLimit", h.path)
        if pad is not None:
            lo, hi = sorted((pad, lim if lim is not None else pad))
            hu[(px >= lo) & (px <= hi)] = -1024
        hu[hu < -1024] = -1024
        vol[k] = np.clip(np.rint(hu), -1024, 32767).astype(np.int16)
    notes.extend(sorted(rescale_notes))
    _check_hu(vol, src)
    return vol


def _load_dicom_files(files: list[Path], src: str, allow_single: bool, min_slices: int,
                      series_uid: str | None = None) -> CTScan:
    headers, bad = _read_headers(files)
    if not headers:
        if bad:
            raise UnreadableInputError(
                f"{src}: no readable DICOM image among {len(files)} file(s) (e.g. {bad[0][0].name}: "
                f"{type(bad[0][1]).__name__}); are the files corrupt or not DICOM?")
        raise UnreadableInputError(f"{src}: no DICOM images found (only non-image DICOM objects)")
    uid, items, notes = _choose_series(headers, src, series_uid, min_slices)
    if len(items) == 1 and not allow_single:
        raise SingleSliceError(f"{src} holds a single CT slice; a volume of the chest is needed (give the folder "
                               "with the whole series)")
    if 1 < len(items) < min_slices:
        raise TooFewSlicesError(f"{src}: the CT series has only {len(items)} slices; at least {min_slices} are "
                                "needed to cover the lungs (is the export complete?)")
    if len(items) > MAX_SLICES:
        raise AbsurdSizeError(f"{src}: {len(items)} slices in one series (> {MAX_SLICES}); not a single chest CT")
    if len({(h.rows, h.cols) for h in items}) > 1:
        raise InputError(f"{src}: the series' images have different sizes "
                         f"{sorted({(h.cols, h.rows) for h in items})[:3]}: the folder mixes series")
    check_memory(len(items) * items[0].rows * items[0].cols, src)
    items, ipp, sz, direction, geo_notes = _slice_stack(items, src, bad)
    notes += geo_notes
    ps = _pixel_spacing(items, src)
    _check_geometry((items[0].cols, items[0].rows, len(items)), (ps[1], ps[0], sz), src, allow_single, min_slices)
    vol = _read_pixels(items, src, notes)
    if bad:
        notes.append(f"{len(bad)} unreadable file(s) ignored (e.g. {bad[0][0].name})")
    img = sitk.GetImageFromArray(vol)
    img.SetSpacing((ps[1], ps[0], float(sz)))
    img.SetOrigin(tuple(float(v) for v in ipp[0]))
    img.SetDirection(tuple(float(v) for v in direction.ravel()))
    t = items[0].text
    meta: dict[str, Any] = {
        "format": "dicom", "modality": "CT", "n_slices": len(items),
        "manufacturer": t["Manufacturer"], "model": t["ManufacturerModelName"], "kernel": items[0].kernel,
        "slice_thickness_mm": items[0].thickness or None, "kvp": _float_or_none(t["KVP"]),
        "series_description": t["SeriesDescription"], "series_uid": uid,
        "sop_instance_uids": [h.sop_uid for h in items],
        "series_note": "; ".join(notes), "unreadable_files": len(bad),
    }
    return scan_from_sitk(img, meta, source=src)


def _float_or_none(text: str) -> float | None:
    try:
        v = float(text)
    except ValueError:
        return None
    return v if np.isfinite(v) and v > 0 else None


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------
def save_like(array: np.ndarray, scan: CTScan, path: str | os.PathLike) -> Path:
    """Write ``array`` (on ``scan``'s LPS grid) in the geometry of the file ``scan`` was read from, atomically.

    Masks (bool/uint8), int16 and float32 volumes keep their type (bool is written as uint8). A DICOM input gets
    a NIfTI/MHA/NRRD file (by ``path``'s suffix) on the DICOM grid, which 3D Slicer and ITK-SNAP overlay on the
    series.
    """
    arr = np.asarray(array)
    if arr.shape != scan.shape:
        raise ValueError(f"array shape {arr.shape} differs from the scan's {scan.shape}")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    img = scan.to_sitk(arr)
    g = scan.input_geometry
    if g is not None:
        if g.orientation != "LPS":
            img = sitk.DICOMOrient(img, g.orientation)
        if tuple(img.GetSize()) == tuple(g.size):
            img.SetOrigin(g.origin)
            img.SetDirection(g.direction)
            img.SetSpacing(g.spacing)
    path = Path(path)
    with atomic_path(path) as tmp:
        sitk.WriteImage(img, str(tmp), useCompression=True)
    return path
