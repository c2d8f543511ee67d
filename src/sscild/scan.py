"""The CT volume every stage works on, and its geometry.

A :class:`CTScan` is reoriented once, on reading, to LPS and held as a numpy array with axes
``(z, y, x)``: x grows toward the patient's left, y toward posterior, z toward the head. Spacing and
origin stay with the array, and the geometry of the file as it was read is kept so that outputs can
be written back in the input's geometry and slice indices can be reported as the user counts them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import SimpleITK as sitk

_IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


@dataclass(frozen=True)
class InputGeometry:
    """Geometry of the image as it was read, before reorientation (SimpleITK (x, y, z) order)."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    orientation: str  # e.g. "LPS", "RAS", "LPI"

    def world_to_index(self, point_xyz: np.ndarray) -> np.ndarray:
        """Continuous (x, y, z) index in the input image of a world LPS point."""
        d = np.asarray(self.direction, float).reshape(3, 3)
        m = d @ np.diag(self.spacing)
        return np.linalg.solve(m, np.asarray(point_xyz, float) - np.asarray(self.origin, float))

    @property
    def slice_axis(self) -> int:
        """Which input axis (0=x, 1=y, 2=z in SimpleITK order) runs head-foot."""
        d = np.asarray(self.direction, float).reshape(3, 3)
        return int(np.argmax(np.abs(d[2, :])))


@dataclass(frozen=True, eq=False)
class CTScan:
    """A chest CT volume in Hounsfield units, LPS, axes (z, y, x), z toward the head.

    Attributes
    ----------
    hu : numpy.ndarray
        int16 array of HU, shape (nz, ny, nx). Padding outside the field of view is -1024 (air).
    spacing : tuple of float
        Voxel size in mm, in array order (z, y, x).
    origin : tuple of float
        World LPS position (x, y, z) in mm of voxel ``hu[0, 0, 0]``.
    direction : tuple of float
        3x3 direction cosines, row-major, SimpleITK convention (columns are the x, y, z axes).
        After reorientation this is the identity for axis-aligned scans.
    meta : mapping
        Non-identifying metadata (modality, manufacturer, kernel, slice thickness, series notes).
    source : str or None
        Where the scan was read from.
    input_geometry : InputGeometry or None
        Geometry of the file as read; ``None`` for scans made in memory.

    Examples
    --------
    >>> import numpy as np
    >>> scan = CTScan(np.full((4, 8, 8), -1000, np.int16), spacing=(2.0, 1.0, 1.0),
    ...               origin=(0.0, 0.0, -100.0))
    >>> scan.z_mm(3)
    -94.0
    >>> scan.slice_at_z(-95.2)
    2
    """

    hu: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...] = _IDENTITY
    meta: Mapping[str, Any] = field(default_factory=dict)
    source: str | None = None
    input_geometry: InputGeometry | None = None

    # ---- shape and units ----------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.hu.shape)  # type: ignore[return-value]

    @property
    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0

    @property
    def pixel_area_mm2(self) -> float:
        return float(self.spacing[1] * self.spacing[2])

    # ---- geometry ---------------------------------------------------------------------------
    def _matrix(self) -> np.ndarray:
        d = np.asarray(self.direction, float).reshape(3, 3)
        sp_xyz = np.array([self.spacing[2], self.spacing[1], self.spacing[0]], float)
        return d @ np.diag(sp_xyz)

    def index_to_world(self, zyx: np.ndarray) -> np.ndarray:
        """World LPS (x, y, z) mm of continuous array indices ``(z, y, x)`` (last axis of size 3)."""
        zyx = np.asarray(zyx, float)
        ijk = zyx[..., ::-1]
        return ijk @ self._matrix().T + np.asarray(self.origin, float)

    def world_to_index(self, xyz: np.ndarray) -> np.ndarray:
        """Continuous array indices ``(z, y, x)`` of world LPS points ``(x, y, z)``."""
        xyz = np.asarray(xyz, float) - np.asarray(self.origin, float)
        ijk = np.linalg.solve(self._matrix(), xyz.T).T
        return ijk[..., ::-1]

    def _slice_centre(self, k: float) -> np.ndarray:
        nz, ny, nx = self.shape
        return np.array([k, (ny - 1) / 2.0, (nx - 1) / 2.0])

    def z_mm(self, k: float) -> float:
        """World z (mm, LPS: larger is more cranial) of the centre of slice ``k``."""
        return float(self.index_to_world(self._slice_centre(k))[2])

    def z_positions(self) -> np.ndarray:
        """World z of every slice centre, shape (nz,)."""
        return np.array([self.z_mm(k) for k in range(self.shape[0])])

    def slice_at_z(self, z_mm: float) -> int | None:
        """Index of the slice nearest to world ``z_mm``, or ``None`` when outside the scan."""
        zs = self.z_positions()
        half = abs(self.spacing[0]) / 2.0
        if z_mm < zs.min() - half or z_mm > zs.max() + half:
            return None
        return int(np.argmin(np.abs(zs - z_mm)))

    def input_slice_index(self, k: int) -> int:
        """Index of array slice ``k`` counted as in the file as read (0 = first slice of the input).

        For a DICOM series sorted by ImagePositionPatient (feet first) this equals ``k``; for a
        NIfTI stored head first it is ``nz - 1 - k``.
        """
        if self.input_geometry is None:
            return int(k)
        p = self.index_to_world(self._slice_centre(k))
        idx = self.input_geometry.world_to_index(p)
        return int(round(float(idx[self.input_geometry.slice_axis])))

    def extent_mm(self) -> tuple[float, float]:
        zs = self.z_positions()
        return float(zs.min()), float(zs.max())

    # ---- SimpleITK bridges ------------------------------------------------------------------
    def to_sitk(self, array: np.ndarray | None = None) -> sitk.Image:
        """A SimpleITK image of ``array`` (default the HU) on this scan's LPS grid."""
        arr = self.hu if array is None else array
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing((float(self.spacing[2]), float(self.spacing[1]), float(self.spacing[0])))
        img.SetOrigin(tuple(float(v) for v in self.origin))
        img.SetDirection(tuple(float(v) for v in self.direction))
        return img

    def with_hu(self, hu: np.ndarray) -> "CTScan":
        """A copy carrying new voxel values on the same geometry."""
        if hu.shape != self.hu.shape:
            raise ValueError(f"shape {hu.shape} differs from the scan's {self.hu.shape}")
        return CTScan(hu.astype(np.int16, copy=False), self.spacing, self.origin, self.direction,
                      dict(self.meta), self.source, self.input_geometry)


def thick_slices(scan: CTScan, n: int, offset: int = 0) -> CTScan:
    """The scan in slices ``n`` times as thick, from slice ``offset``: the mean of each block of ``n`` (partial
    volume as a thick slice; an axis-aligned scan, each slab centred on its slices). Benchmarks and tests use it for
    thick-slice cases; :mod:`sscild.acquisition` simulates slice profiles for training."""
    nz = (scan.shape[0] - offset) // n * n
    hu = scan.hu[offset:offset + nz].astype(np.float32).reshape(nz // n, n, *scan.shape[1:]).mean(axis=1)
    o = list(scan.origin)
    o[2] = (scan.z_mm(offset) + scan.z_mm(offset + n - 1)) / 2
    return CTScan(np.rint(hu).astype(np.int16), (scan.spacing[0] * n, *scan.spacing[1:]), tuple(o), scan.direction,
                  dict(scan.meta), scan.source)


def orientation_of(image: sitk.Image) -> str:
    """Three-letter orientation code (e.g. ``"LPS"``) of a SimpleITK image's direction."""
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())


def scan_from_sitk(image: sitk.Image, meta: Mapping[str, Any] | None = None,
                   source: str | None = None) -> CTScan:
    """Reorient a SimpleITK image to LPS and wrap it (values must already be HU).

    Values are rounded and clipped to int16. The geometry of ``image`` is kept as
    :class:`InputGeometry` for writing outputs back and for slice numbering.
    """
    geom = InputGeometry(
        size=tuple(int(v) for v in image.GetSize()),
        spacing=tuple(float(v) for v in image.GetSpacing()),
        origin=tuple(float(v) for v in image.GetOrigin()),
        direction=tuple(float(v) for v in image.GetDirection()),
        orientation=orientation_of(image),
    )
    lps = sitk.DICOMOrient(image, "LPS") if geom.orientation != "LPS" else image
    arr = sitk.GetArrayFromImage(lps)
    if arr.dtype != np.int16:
        arr = np.clip(np.rint(arr), -32768, 32767).astype(np.int16)
    sx, sy, sz = lps.GetSpacing()
    return CTScan(
        hu=arr,
        spacing=(float(sz), float(sy), float(sx)),
        origin=tuple(float(v) for v in lps.GetOrigin()),
        direction=tuple(float(v) for v in lps.GetDirection()),
        meta=dict(meta or {}),
        source=source,
        input_geometry=geom,
    )
