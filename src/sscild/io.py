"""Reading scans (DICOM series, NIfTI, MHA/MHD, NRRD) into :class:`~sscild.scan.CTScan`, and writing masks back.

``load_ct`` validates what it reads and raises one of the project's exceptions, with the problem and the remedy
in its message, for inputs the toolkit cannot measure: missing or empty paths, unreadable files, non-CT
series, localizers, single slices, missing slices, uneven spacing, gantry tilt, values that are not HU,
NaN/inf, absurd sizes. DICOM headers are read first (fast); pixels only for the chosen series.
"""
from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from .errors import (AbsurdSizeError, GantryTiltError, InputError, InputNotFoundError, InvalidValuesError,
                     LocalizerError, MissingSlicesError, NonUniformSpacingError, NotCTError, NotHUError,
                     SingleSliceError, TooFewSlicesError, UnreadableInputError)
from .scan import CTScan, scan_from_sitk
from .util import atomic_path

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".nhdr")
PADDING_VALUES = (-3024, -2048, -2000)
SECONDARY_CAPTURE = {"1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.7.1", "1.2.840.10008.5.1.4.1.1.7.2",
                     "1.2.840.10008.5.1.4.1.1.7.3", "1.2.840.10008.5.1.4.1.1.7.4"}
MAX_SLICES = 2000


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def load_ct(path: str | os.PathLike, *, allow_single_slice: bool = False, min_slices: int = 10) -> CTScan:
    """Read a chest CT and return it in HU, LPS, axes (z, y, x), z toward the head.

    Parameters
    ----------
    path : str or Path
        A folder holding a DICOM series (searched recursively; the CT series with most slices is used), a
        single DICOM file, or a ``.nii``/``.nii.gz``/``.mha``/``.mhd``/``.nrrd`` file.
    allow_single_slice : bool
        Accept a single 2D slice (for slice-wise uses); otherwise a volume is required.
    min_slices : int
        Fewest slices accepted for a volume.

    Raises
    ------
    InputError subclasses, each naming the problem and what to do.
    """
    p = Path(path)
    if not p.exists():
        raise InputNotFoundError(f"{p} does not exist: give a DICOM series folder or a .nii.gz/.mha/.nrrd file")
    if p.is_dir():
        if not any(f.is_file() for f in p.rglob("*")):
            raise InputNotFoundError(f"{p} is an empty folder: give the folder that holds the DICOM files")
        scan = _load_dicom_folder(p, allow_single_slice, min_slices)
    elif _suffix(p) in IMAGE_SUFFIXES:
        scan = _load_image_file(p, allow_single_slice, min_slices)
    else:
        scan = _load_dicom_files([p], str(p), allow_single_slice, min_slices)
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
    end = "<" if struct.unpack("<i", hdr[:4])[0] == 348 else ">"
    if struct.unpack(end + "i", hdr[:4])[0] != 348:
        return  # NIfTI-2 or not NIfTI: ITK decides
    dim = struct.unpack(end + "8h", hdr[40:56])
    datatype, bitpix = struct.unpack(end + "hh", hdr[70:74])
    vox_offset = int(struct.unpack(end + "f", hdr[108:112])[0])
    nvox = int(np.prod([max(int(d), 1) for d in dim[1:1 + max(int(dim[0]), 1)]]))
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


def _load_image_file(p: Path, allow_single: bool, min_slices: int) -> CTScan:
    if p.stat().st_size == 0:
        raise UnreadableInputError(f"{p} is empty (0 bytes): the file was not written completely")
    if _suffix(p) in (".nii", ".nii.gz"):
        _nifti_raw_check(p)
    try:
        img = sitk.ReadImage(str(p))
    except RuntimeError as err:
        first = str(err).strip().splitlines()[-1][:200] if str(err).strip() else ""
        raise UnreadableInputError(f"{p} cannot be read as an image ({first}); is it corrupt or truncated? "
                                   "Re-export it, or give the DICOM series") from None
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise NotCTError(f"{p} has {img.GetNumberOfComponentsPerPixel()} components per pixel (colour/vector "
                         "image): a CT is one grey value per voxel")
    if img.GetDimension() == 4:
        raise AbsurdSizeError(f"{p} is a 4D image {img.GetSize()}: give one 3D CT volume")
    if img.GetDimension() == 2 or img.GetSize()[2] == 1:
        if not allow_single:
            raise SingleSliceError(f"{p} holds a single 2D slice; a volume of the chest is needed (the whole "
                                   "series, lung apex to bases)")
        if img.GetDimension() == 2:
            img = sitk.JoinSeries(img)
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
def _load_dicom_folder(p: Path, allow_single: bool, min_slices: int) -> CTScan:
    files = sorted(f for f in p.rglob("*") if f.is_file())
    return _load_dicom_files(files, str(p), allow_single, min_slices)


def _read_headers(files: list[Path]):
    import pydicom
    from pydicom.errors import InvalidDicomError

    headers, bad = [], []
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except (InvalidDicomError, OSError, EOFError, ValueError, TypeError, AttributeError) as err:
            bad.append((f, err))
            continue
        if "Rows" not in ds:  # not an image (SR, presentation state, DICOMDIR...)
            continue
        headers.append((f, ds))
    return headers, bad


def _load_dicom_files(files: list[Path], src: str, allow_single: bool, min_slices: int) -> CTScan:
    headers, bad = _read_headers(files)
    if not headers:
        if bad:
            raise UnreadableInputError(
                f"{src}: no readable DICOM image among {len(files)} file(s) (e.g. {bad[0][0].name}: "
                f"{type(bad[0][1]).__name__}); are the files corrupt or not DICOM?")
        raise UnreadableInputError(f"{src}: no DICOM images found (only non-image DICOM objects)")
    series: dict[str, list] = defaultdict(list)
    for f, ds in headers:
        series[str(getattr(ds, "SeriesInstanceUID", "unknown"))].append((f, ds))

    def kind(items) -> str:
        ds = items[0][1]
        mod = str(getattr(ds, "Modality", "")).upper()
        itype = [str(v).upper() for v in (getattr(ds, "ImageType", []) or [])]
        # a secondary capture is judged by its SOP class: CT reformats are often DERIVED\\SECONDARY yet real HU
        if str(getattr(ds, "SOPClassUID", "")) in SECONDARY_CAPTURE:
            return "secondary capture"
        if mod != "CT":
            return mod or "unknown modality"
        if "LOCALIZER" in itype or "SCOUT" in itype or "TOPOGRAM" in itype:
            return "localizer"
        return "CT"

    kinds = {uid: kind(items) for uid, items in series.items()}
    ct = {uid: items for uid, items in series.items() if kinds[uid] == "CT"}
    if not ct:
        found = sorted(set(kinds.values()))
        if found == ["localizer"]:
            raise LocalizerError(f"{src} holds only a localizer/scout image, not an axial CT series: export the "
                                 "axial reconstruction")
        if "secondary capture" in found:
            raise NotCTError(f"{src} holds a secondary capture (a screenshot-like derived image), not CT "
                             "slices: export the original axial CT series")
        raise NotCTError(f"{src} holds {', '.join(found)} images, not CT: sscild measures chest CT only")
    ranked = sorted(ct.items(), key=lambda kv: len(kv[1]), reverse=True)
    uid, items = ranked[0]
    note = ""
    if len(series) > 1:
        others = [f"{kinds[u]} series of {len(v)} image(s)" for u, v in series.items() if u != uid]
        note = f"used the CT series with most slices ({len(items)}); also present: " + "; ".join(others)

    if len(items) == 1 and not allow_single:
        raise SingleSliceError(f"{src} holds a single CT slice; a volume of the chest is needed (give the folder "
                               "with the whole series)")
    if 1 < len(items) < min_slices:
        raise TooFewSlicesError(f"{src}: the CT series has only {len(items)} slices; at least {min_slices} are "
                                "needed to cover the lungs (is the export complete?)")
    if len(items) > MAX_SLICES:
        raise AbsurdSizeError(f"{src}: {len(items)} slices in one series (> {MAX_SLICES}); not a single chest CT")

    ds0 = items[0][1]
    iop = np.asarray([float(v) for v in getattr(ds0, "ImageOrientationPatient", [1, 0, 0, 0, 1, 0])])
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    itype = [str(v).upper() for v in (getattr(ds0, "ImageType", []) or [])]
    if abs(normal[2]) < 0.5 and len(items) <= 3:
        raise LocalizerError(f"{src}: {len(items)} non-axial slice(s) (a localizer/scout?): export the axial series")
    tilt = float(getattr(ds0, "GantryDetectorTilt", 0) or 0)
    if abs(tilt) > 0.01:
        raise GantryTiltError(f"{src} was acquired with a gantry tilt of {tilt:.1f} deg: the volume is sheared. "
                              "Export a reconstruction without tilt or resample it first (e.g. with dcm2niix)")
    for _, ds in items:
        o = np.asarray([float(v) for v in getattr(ds, "ImageOrientationPatient", iop)])
        if np.abs(o - iop).max() > 1e-3:
            raise InputError(f"{src}: slices have different orientations; the series mixes several stacks")
    ipp = np.array([[float(v) for v in getattr(ds, "ImagePositionPatient", [0, 0, i])] for i, (_, ds) in
                    enumerate(items)])
    proj = ipp @ normal
    order = np.argsort(proj)
    items = [items[i] for i in order]
    proj, ipp = proj[order], ipp[order]

    if len(items) > 1:
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
            i = int(big[0])
            raise MissingSlicesError(
                f"{src}: slices are missing between z = {ipp[i][2]:.1f} and {ipp[i + 1][2]:.1f} mm (gap "
                f"{steps[i]:.1f} mm, usual spacing {med:.2f} mm; {len(big)} gap(s)): export the complete series")
        dev = np.abs(steps - med)
        if dev.max() > max(0.1 * med, 0.05):
            raise NonUniformSpacingError(
                f"{src}: slice spacing varies from {steps.min():.2f} to {steps.max():.2f} mm: sscild needs evenly "
                "spaced slices; resample the series to a uniform spacing first")
        sz = med
    else:
        sz = float(getattr(ds0, "SliceThickness", 1.0) or 1.0)

    ps = [float(v) for v in getattr(ds0, "PixelSpacing", [1.0, 1.0])]
    _check_geometry((int(ds0.Columns), int(ds0.Rows), len(items)), (ps[1], ps[0], sz), src, allow_single, min_slices)

    # pixels, rescaled to HU, padding to air
    import pydicom

    vol = np.empty((len(items), int(ds0.Rows), int(ds0.Columns)), np.int16)
    raw_min, raw_max = np.inf, -np.inf
    for k, (f, _) in enumerate(items):
        try:
            ds = pydicom.dcmread(f)
            px = ds.pixel_array
        except Exception as err:  # corrupt pixel data of any kind
            raise UnreadableInputError(f"{src}: pixel data of {f.name} cannot be decoded ({type(err).__name__}: "
                                       f"{str(err)[:120]}); the file is corrupt or uses an unsupported compression") from None
        if px.shape != vol.shape[1:]:
            raise InputError(f"{src}: {f.name} is {px.shape[1]}x{px.shape[0]} pixels, the others "
                             f"{vol.shape[2]}x{vol.shape[1]}: the folder mixes series")
        raw_min, raw_max = min(raw_min, float(px.min())), max(raw_max, float(px.max()))
        slope = float(getattr(ds, "RescaleSlope", 1) or 1)
        icpt = float(getattr(ds, "RescaleIntercept", 0) or 0)
        pad = getattr(ds, "PixelPaddingValue", None)
        hu = px.astype(np.float32) * slope + icpt
        if pad is not None:
            lim = getattr(ds, "PixelPaddingRangeLimit", None)
            if lim is not None:
                lo, hi = sorted((float(pad), float(lim)))
                hu[(px >= lo) & (px <= hi)] = -1024
            else:
                hu[px == pad] = -1024
        hu[hu < -1024] = -1024
        vol[k] = np.clip(np.rint(hu), -1024, 32767).astype(np.int16)
    _check_hu(vol, src)

    img = sitk.GetImageFromArray(vol)
    img.SetSpacing((ps[1], ps[0], float(sz)))
    img.SetOrigin(tuple(float(v) for v in ipp[0]))
    img.SetDirection(tuple(float(v) for v in np.column_stack([row, col, normal]).ravel()))
    meta: dict[str, Any] = {
        "format": "dicom", "modality": "CT", "n_slices": len(items),
        "manufacturer": str(getattr(ds0, "Manufacturer", "")),
        "model": str(getattr(ds0, "ManufacturerModelName", "")),
        "kernel": str(getattr(ds0, "ConvolutionKernel", "")),
        "slice_thickness_mm": float(getattr(ds0, "SliceThickness", 0) or 0) or None,
        "kvp": float(getattr(ds0, "KVP", 0) or 0) or None,
        "series_description": str(getattr(ds0, "SeriesDescription", "")),
        "series_note": note,
        "unreadable_files": len(bad),
    }
    return scan_from_sitk(img, meta, source=src)


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
