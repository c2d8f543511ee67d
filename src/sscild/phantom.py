"""Synthetic chest CT with exact truth: anatomy, the Goh landmarks, and ILD patterns of a chosen extent.

The phantom is built in world millimetres (LPS: x toward the patient's left, y posterior, z toward the head)
and sampled on any grid, so "small" test volumes and "full" 512x512 scans share one anatomy model:

- body: an elliptic cylinder of soft tissue (~45 HU) under a subcutaneous fat layer (~-100 HU); a scanner
  table below the back;
- chest wall: ribs (cortical bone ~700 HU) as oblique bands on the ring inside the muscles, the spine
  (vertebral bodies ~250 HU with a cortical rim, discs), the sternum;
- lungs (~-850 HU, denser posteriorly): inside the rib cage, apart from the mediastinum, heart and spine,
  tapering to the apices and ending on two diaphragm domes (the right one higher) over the liver (~60 HU) and,
  on the left, spleen/stomach (with a gas bubble, which is not lung);
- mediastinum (fat ~-90 HU) with the heart, the left atrium (its posterior chamber) and four pulmonary veins
  entering it, the pulmonary trunk and arteries, the aorta (ascending part, arch, descending part) and the
  three great-vessel branches leaving the top of the arch; blood ~40 HU, or contrast-enhanced for some seeds;
- airways: the trachea down the midline to the carina and the two main bronchi (air with a soft-tissue wall);
- a branching vessel tree inside each lung;
- ILD: a smooth probability field favouring basal, posterior and subpleural lung is thresholded to the
  requested extent; inside it ground glass (a hazy rise to -750..-450 HU keeping the vessels) and
  reticulation (fine irregular lines and, at high extent, subpleural honeycomb cysts);
- a slight blur (scanner point-spread) and Gaussian noise.

Landmark truth (world z, mm), each on axial planes as a reader sees it: ``great_vessel_origin`` = the highest plane
where the brachiocephalic trunk's lumen still meets the aorta's (it arises at the start of the arch, below the arch's
apex; the TotalSegmentator reference masks define it the same way, where the two masks touch); ``carina`` = the
tracheal bifurcation (the lowest plane where the two main bronchi's lumens still meet); ``venous_confluence`` = the
level where the pulmonary veins enter the left atrium; ``right_dome`` = the highest point of the right hemidiaphragm. Levels: L1..L3 those
landmarks, L5 = right dome + 10 mm, L4 halfway between L3 and L5.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple

import numpy as np
from scipy import ndimage as ndi

from .scan import CTScan

LEVELS = ("L1", "L2", "L3", "L4", "L5")
SIZES = {
    # shape (z from the scan length), in-plane pixels, in-plane spacing, slice spacing
    "small": (128, 2.8, 3.0),
    "medium": (256, 1.4, 2.0),
    "full": (512, 0.7, 1.5),
}


@dataclass(frozen=True)
class Truth:
    """Exact truth of a phantom (arrays on the scan grid, (z, y, x))."""

    lungs: np.ndarray          # uint8: 0 outside, 1 right lung, 2 left lung (airways excluded)
    airways: np.ndarray        # bool: trachea + main bronchi lumen
    lesions: np.ndarray        # uint8: 0 outside lung, 1 normal lung, 2 ground glass, 3 reticulation
    landmarks_z: dict[str, float]
    levels_z: dict[str, float]
    level_scores: dict[str, dict[str, float]]
    extent: dict[str, float]
    volumes_ml: dict[str, float]
    seed: int
    params: dict[str, Any] = field(default_factory=dict)
    vessels: np.ndarray | None = None   # bool: the vessel tree inside the lungs (blood-filled tubes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary (no arrays)."""
        return {"seed": self.seed, "landmarks_z": self.landmarks_z, "levels_z": self.levels_z,
                "level_scores": self.level_scores, "extent": self.extent, "volumes_ml": self.volumes_ml,
                "params": self.params}


# --------------------------------------------------------------------------------------------
# geometry helpers
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Grid:
    z: np.ndarray  # (nz,) world z of slices (increasing)
    y: np.ndarray  # (ny,)
    x: np.ndarray  # (nx,)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.z), len(self.y), len(self.x))

    def index(self, p: np.ndarray) -> np.ndarray:
        """Continuous (z, y, x) index of world points (x, y, z)."""
        p = np.atleast_2d(p)
        return np.stack([(p[:, 2] - self.z[0]) / (self.z[1] - self.z[0]),
                         (p[:, 1] - self.y[0]) / (self.y[1] - self.y[0]),
                         (p[:, 0] - self.x[0]) / (self.x[1] - self.x[0])], axis=1)


def _draw_tubes(grid: _Grid, segments: list[tuple[np.ndarray, np.ndarray, float, float]], out: np.ndarray,
                value: float | None = None, mask: np.ndarray | None = None) -> None:
    """Rasterise capsules (p0, p1, r0, r1) (world mm, radii tapering r0->r1) into ``out`` (set to ``value``)
    and/or ``mask`` (set True), each inside its own bounding box."""
    dz, dy, dx = grid.z[1] - grid.z[0], grid.y[1] - grid.y[0], grid.x[1] - grid.x[0]
    nz, ny, nx = grid.shape
    for p0, p1, r0, r1 in segments:
        rmax = max(r0, r1)
        lo = np.minimum(p0, p1) - rmax - 1
        hi = np.maximum(p0, p1) + rmax + 1
        k0, k1 = max(int(np.floor((lo[2] - grid.z[0]) / dz)), 0), min(int(np.ceil((hi[2] - grid.z[0]) / dz)) + 1, nz)
        j0, j1 = max(int(np.floor((lo[1] - grid.y[0]) / dy)), 0), min(int(np.ceil((hi[1] - grid.y[0]) / dy)) + 1, ny)
        i0, i1 = max(int(np.floor((lo[0] - grid.x[0]) / dx)), 0), min(int(np.ceil((hi[0] - grid.x[0]) / dx)) + 1, nx)
        if k0 >= k1 or j0 >= j1 or i0 >= i1:
            continue
        Z = grid.z[k0:k1, None, None]
        Y = grid.y[None, j0:j1, None]
        X = grid.x[None, None, i0:i1]
        d = p1 - p0
        L2 = float(d @ d) or 1e-9
        t = ((X - p0[0]) * d[0] + (Y - p0[1]) * d[1] + (Z - p0[2]) * d[2]) / L2
        t = np.clip(t, 0.0, 1.0)
        dist2 = (X - p0[0] - t * d[0]) ** 2 + (Y - p0[1] - t * d[1]) ** 2 + (Z - p0[2] - t * d[2]) ** 2
        r = r0 + (r1 - r0) * t
        inside = dist2 <= r * r
        if value is not None:
            out[k0:k1, j0:j1, i0:i1][inside] = value
        if mask is not None:
            mask[k0:k1, j0:j1, i0:i1] |= inside


def _polyline(points: list[tuple[float, float, float]], r0: float, r1: float | None = None
              ) -> list[tuple[np.ndarray, np.ndarray, float, float]]:
    pts = [np.asarray(p, float) for p in points]
    r1 = r0 if r1 is None else r1
    n = len(pts) - 1
    return [(pts[i], pts[i + 1], r0 + (r1 - r0) * i / n, r0 + (r1 - r0) * (i + 1) / n) for i in range(n)]


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Zero-mean, unit-SD Gaussian-smoothed noise (sigma in voxels)."""
    f = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return (f - f.mean()) / (f.std() + 1e-9)


def _coarse_field(rng: np.random.Generator, shape: tuple[int, int, int], spacing: tuple[float, float, float],
                  feature_mm: float) -> np.ndarray:
    """Smooth random field with features of about ``feature_mm``, made on a coarse grid and upsampled."""
    step = feature_mm / 3.0
    cshape = tuple(max(4, int(np.ceil(s * sp / step)) + 1) for s, sp in zip(shape, spacing))
    coarse = _smooth_noise(rng, cshape, 1.5)
    zoom = [s / c for s, c in zip(shape, cshape)]
    f = ndi.zoom(coarse, zoom, order=1)
    return f[: shape[0], : shape[1], : shape[2]].astype(np.float32)


# --------------------------------------------------------------------------------------------
# parameters
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Params:
    """Everything one phantom is made from: the anatomy drawn from the seed (mm and HU; heights relative to the
    carina, which lies at world z ``z_offset``), the disease asked for, the scan range and the options."""

    body_a: float                   # body half-axes (x, y)
    body_b: float
    fat: float                      # subcutaneous fat thickness
    apex: float                     # lung apex above the carina
    arch_top: float                 # outer top of the aortic arch above the carina
    arch_rise: float                # rise of the arch's centre line above its two limbs
    bt_origin_t: float              # where along the arch (0..1) the brachiocephalic trunk arises
    venous: float                   # venous confluence (below the carina: negative)
    dome_r: float                   # right hemidiaphragm dome
    dome_l: float                   # left dome (lower)
    recess: float                   # depth of the costophrenic recesses below the domes
    z_offset: float                 # world z of the carina (scanner table position)
    x_shift: float                  # body centre shift
    y_shift: float
    contrast: bool                  # contrast-enhanced blood
    blood_hu: float
    lung_hu: float
    noise_sd: float
    margin_top: float               # scan range above the apex, below the recesses
    margin_bottom: float
    heart_x: float                  # heart centre (x) and half-axes
    heart_rx: float
    heart_ry: float
    heart_rz: float
    trachea_r: float
    extent_target: float = 0.0      # ILD, % of lung volume
    gg_fraction: float = 0.5        # share of the lesion volume that is ground glass
    size: str = "small"
    cut: str | None = None
    neck: bool = False
    table: str = "flat"
    bowel_gas: bool = False
    prone: bool = False

    def as_truth(self, bt_origin_z: float, carina_split_z: float) -> dict[str, Any]:
        """The parameters as ``Truth.params`` lists them, with the two landmark heights found while drawing."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        options = {k: d.pop(k) for k in ("neck", "table", "bowel_gas", "prone")}
        return {**d, "bt_origin_z": bt_origin_z, "carina_split_z": carina_split_z, **options}


def _draw_params(rng: np.random.Generator) -> _Params:
    """The anatomy of one phantom, drawn in a fixed order (the random stream after it depends on that order)."""
    u = lambda a, b: float(rng.uniform(a, b))  # noqa: E731
    body_a, body_b = u(140, 175), u(100, 128)
    fat, apex, arch_top, arch_rise, bt_origin_t = u(8, 22), u(70, 95), u(32, 48), u(24, 32), u(0.10, 0.18)
    venous, dome_r = -u(25, 45), -u(100, 145)
    dome_l = dome_r - u(8, 22)
    recess, z_offset = u(30, 50), u(-260, -120)
    x_shift, y_shift = u(-8, 8), u(-6, 6)
    contrast = bool(rng.random() < 0.5)
    blood_hu = u(160, 300) if contrast else u(35, 50)
    lung_hu, noise_sd = u(-875, -830), u(12, 25)
    margin_top, margin_bottom = u(10, 30), u(50, 80)
    heart_x, heart_rx, heart_ry, heart_rz = u(14, 25), u(44, 56), u(40, 50), u(45, 56)
    return _Params(body_a=body_a, body_b=body_b, fat=fat, apex=apex, arch_top=arch_top, arch_rise=arch_rise,
                   bt_origin_t=bt_origin_t, venous=venous, dome_r=dome_r, dome_l=dome_l, recess=recess,
                   z_offset=z_offset, x_shift=x_shift, y_shift=y_shift, contrast=contrast, blood_hu=blood_hu,
                   lung_hu=lung_hu, noise_sd=noise_sd, margin_top=margin_top, margin_bottom=margin_bottom,
                   heart_x=heart_x, heart_rx=heart_rx, heart_ry=heart_ry, heart_rz=heart_rz, trachea_r=u(8, 10))


# --------------------------------------------------------------------------------------------
# the phantom
# --------------------------------------------------------------------------------------------
def make_phantom(seed: int = 0, *, size: str = "small", extent: float | None = None,
                 shape: tuple[int, int, int] | None = None, spacing: tuple[float, float, float] | None = None,
                 gg_fraction: float | None = None, cut: str | None = None, neck: bool = False,
                 table: str = "flat", bowel_gas: bool = False, prone: bool = False) -> tuple[CTScan, Truth]:
    """Make a synthetic chest CT and its exact truth.

    Parameters
    ----------
    seed : int
        Anatomy, disease and noise are deterministic for a seed.
    size : {"small", "medium", "full"}
        "small": 128 x 128 pixels of 2.8 mm, 3 mm slices (~100 slices); "medium": 256 px of 1.4 mm, 2 mm slices;
        "full": 512 x 512 of 0.7 mm, 1.5 mm slices (~300 slices).
    extent : float, optional
        Volumetric ILD extent, % of lung volume (0 = healthy). Default: drawn from the seed (0-60 %).
    shape, spacing : optional
        Override the grid: shape (nz, ny, nx) and spacing (z, y, x) mm. With only ``spacing`` the field of view
        of ``size`` is kept; ``nz`` centres the scan on the thorax.
    gg_fraction : float, optional
        Share of the lesion volume that is ground glass (rest reticulation); default drawn (0.3-0.85).
    cut : {"apex", "base", "arch"}, optional
        Start or stop the scan range early: "apex" cuts the top 40 mm of the lungs, "base" ends the scan above
        the right dome, "arch" starts the scan below the aortic arch.
    neck : bool
        Reach >= 45 mm above the lung apices into the lower neck (the trachea, the thyroid lobes beside it and the
        neck vessels inside a neck narrower than the chest).
    table : {"flat", "curved"}
        "curved": a curved PET-style table with an air-filled cushion between it and the patient (outside the
        body, so never lung).
    bowel_gas : bool
        Add gas pockets in the bowel under the diaphragm domes (not lung).
    prone : bool
        The patient lies prone: the table (and cushion) in front, the dependent (denser) lung anterior. The image
        stays LPS (right is still at smaller x).

    The options draw from their own random stream, so the default anatomy, disease and truth of a seed are the
    same with or without them (the truth arrays match wherever the options add only air or tissue outside the
    lungs).

    Returns
    -------
    (CTScan, Truth)

    Examples
    --------
    >>> scan, truth = make_phantom(1, extent=20)
    >>> scan.hu.dtype, set(np.unique(truth.lungs)) <= {0, 1, 2}
    (dtype('int16'), True)
    """
    rng = np.random.default_rng(seed)
    p = _draw_params(rng)
    if extent is None:
        extent = float(rng.choice([0.0, rng.uniform(2, 60)], p=[0.2, 0.8]))
    if not 0 <= extent <= 90:
        raise ValueError(f"extent must be within 0..90 %, got {extent}")
    gg_fraction = float(rng.uniform(0.3, 0.85)) if gg_fraction is None else float(gg_fraction)
    if table not in ("flat", "curved"):
        raise ValueError(f"table must be 'flat' or 'curved', got {table!r}")
    p = replace(p, extent_target=float(extent), gg_fraction=gg_fraction, size=size, cut=cut, neck=neck, table=table,
                bowel_gas=bowel_gas, prone=prone)
    grid, sz, px = _grid_for(p, shape, spacing)
    hu, built = _build(grid, p, rng)
    _add_options(hu, grid, p, built.lungs, np.random.default_rng([seed, 14]))
    hu = _acquire(hu, grid, p, rng)

    spacing_zyx = (float(sz), float(px), float(px))
    scan = CTScan(hu, spacing=spacing_zyx, origin=(float(grid.x[0]), float(grid.y[0]), float(grid.z[0])),
                  meta={"modality": "CT", "source": "sscild phantom", "seed": seed,
                        "patient_position": "HFP" if prone else "HFS"}, source=f"phantom:{seed}")
    return scan, _make_truth(scan, p, seed, built)


def _make_truth(scan: CTScan, p: _Params, seed: int, built: _Built) -> Truth:
    """Landmarks, levels, level scores, extents and volumes from the drawn anatomy and the truth arrays."""
    lungs, lesions = built.lungs, built.lesions
    zc = p.z_offset
    landmarks = {
        "great_vessel_origin": built.bt_origin_z,
        "carina": built.carina_split_z,
        "venous_confluence": zc + p.venous,
        "right_dome": zc + p.dome_r,
    }
    levels = {"L1": landmarks["great_vessel_origin"], "L2": landmarks["carina"],
              "L3": landmarks["venous_confluence"], "L5": landmarks["right_dome"] + 10.0}
    levels["L4"] = (levels["L3"] + levels["L5"]) / 2
    levels = {k: float(levels[k]) for k in LEVELS}
    level_scores = {}
    for name, z in levels.items():
        k = scan.slice_at_z(z)
        level_scores[name] = _slice_scores(lesions[k]) if k is not None else {"TOT": None, "GG": None, "RET": None}
    vox = scan.voxel_volume_ml
    n_lung = max(int((lungs > 0).sum()), 1)
    ext = {"TOT": float(((lesions >= 2).sum()) * 100.0 / n_lung), "GG": float((lesions == 2).sum() * 100.0 / n_lung),
           "RET": float((lesions == 3).sum() * 100.0 / n_lung)}
    vols = {"right": float((lungs == 1).sum() * vox), "left": float((lungs == 2).sum() * vox),
            "GG": float((lesions == 2).sum() * vox), "RET": float((lesions == 3).sum() * vox)}
    truth = Truth(lungs, built.airways, lesions, {k: float(v) for k, v in landmarks.items()}, levels, level_scores,
                  ext, vols, seed, p.as_truth(built.bt_origin_z, built.carina_split_z), built.vessels)
    return truth


def _grid_for(p: _Params, shape, spacing) -> tuple[_Grid, float, float]:
    """The sampling grid, slice spacing and pixel size: the scan range from the drawn anatomy (cut or reaching into
    the neck), the in-plane field of view of ``size``."""
    n_px, px, sz = SIZES[p.size]
    if spacing is not None:
        sz, px = float(spacing[0]), float(spacing[1])
        if shape is None:
            n_px = int(round(SIZES[p.size][0] * SIZES[p.size][1] / px))
    if shape is not None:
        n_px = int(shape[1])
    zc = p.z_offset
    z_top = zc + p.apex + (max(p.margin_top, 45.0) if p.neck else p.margin_top)
    z_bot = zc + p.dome_r - p.recess - p.margin_bottom
    if p.cut == "apex":
        z_top = zc + p.apex - 40
    elif p.cut == "base":
        z_bot = zc + p.dome_r + 15
    elif p.cut == "arch":
        z_top = zc + p.arch_top - 20
    nz = int(round((z_top - z_bot) / sz)) + 1 if shape is None else int(shape[0])
    if shape is not None:
        mid = (z_top + z_bot) / 2
        z_bot = mid - (nz - 1) * sz / 2
    fov = n_px * px
    grid = _Grid(z=z_bot + sz * np.arange(nz), y=-fov / 2 + px * (np.arange(n_px) + 0.5),
                 x=-fov / 2 + px * (np.arange(n_px) + 0.5))
    return grid, sz, px


def _add_options(hu: np.ndarray, grid: _Grid, p: _Params, lungs: np.ndarray, rng: np.random.Generator) -> None:
    """Neck, curved table with cushion, bowel gas, prone position (in place, before acquisition)."""
    neck, table, bowel_gas, prone = p.neck, p.table, p.bowel_gas, p.prone
    fr = _frame(grid, p)
    X, Y, a, b = fr.X, fr.Y, fr.a, fr.b
    body = (X / a) ** 2 + (Y / b) ** 2 <= 1
    side = -1.0 if prone else 1.0                      # the table's side in y
    if table == "curved" or prone:
        flat = (side * Y > b + 25) & (side * Y < b + 40) & (np.abs(X) < a + 20)
        hu[:, ~body & ((Y > b + 25) & (Y < b + 40) & (np.abs(X) < a + 20))] = -1000.0
        if table == "curved":
            r_t = 3.0 * a                                  # the table's curvature
            d = np.hypot(X, side * Y - (b + 8 - r_t))       # distance from the arc's centre (above the patient)
            shell = (d > r_t + 18) & (d < r_t + 26) & (np.abs(X) < a + 25)
            cushion = (d <= r_t + 18) & ~body & (np.abs(X) < a + 15) & (side * Y > 0)
            skin = cushion & ~((d <= r_t + 16) & (np.abs(X) < a + 13) & (side * Y > 2))
            hu[:, cushion] = -990.0
            hu[:, skin] = 80.0
            hu[:, shell] = 150.0
        else:
            hu[:, flat] = 120.0
    if neck:
        zr = grid.z - p.z_offset
        neck_ell = (X / (0.42 * a)) ** 2 + ((Y - (fr.y_sp - 25)) / (0.62 * b)) ** 2 <= 1
        above = zr > p.apex + 4
        for k in np.nonzero(above)[0]:
            hu[k][body & ~neck_ell] = -1000.0
        thyroid = np.zeros(grid.shape, bool)
        for sgn in (-1, 1):
            c0 = np.array(fr.V(sgn * 17.0, fr.y_tr - 6.0, p.apex + 12))
            _draw_tubes(grid, [(c0, c0 + [sgn * 2.0, 0.0, 28.0], 8.0, 7.0)], hu, mask=thyroid)
        hu[thyroid & (hu > -200)] = 90.0
    if bowel_gas:
        gas = np.zeros(grid.shape, bool)
        for _ in range(5):
            c0 = np.array(fr.V(rng.uniform(-0.6, 0.6) * fr.ac, rng.uniform(-0.5, 0.3) * fr.bc,
                               p.dome_r - p.recess - rng.uniform(5, 35)))
            r = float(rng.uniform(6, 12))
            _draw_tubes(grid, [(c0, c0 + np.array([rng.uniform(-10, 10), 0, 2.0]), r, r)], hu, mask=gas)
        near_lung = ndi.distance_transform_edt(lungs == 0, sampling=(grid.z[1] - grid.z[0], grid.y[1] - grid.y[0],
                                                                      grid.x[1] - grid.x[0])) < 6.0
        hu[gas & ~near_lung & (hu > -200) & (hu < 200)] = -1000.0
    if prone:
        inside = lungs > 0
        grad = np.clip(Y / (fr.bc + 1e-6), -1, 1)[None, :, :] * np.ones((1, 1, len(grid.x)), np.float32)
        hu[inside] -= 50.0 * np.broadcast_to(grad, hu.shape)[inside]


def _slice_scores(lesion_slice: np.ndarray) -> dict[str, float]:
    lung = int((lesion_slice > 0).sum())
    if lung == 0:
        return {"TOT": None, "GG": None, "RET": None}  # type: ignore[dict-item]
    return {"TOT": float((lesion_slice >= 2).sum() * 100.0 / lung),
            "GG": float((lesion_slice == 2).sum() * 100.0 / lung),
            "RET": float((lesion_slice == 3).sum() * 100.0 / lung)}


@dataclass(frozen=True)
class _Frame:
    """Derived geometry of one phantom (mm; relative to the body centre, z relative to the carina ``zc``)."""

    zc: float
    X: np.ndarray                   # (1, nx) x of the columns, relative to the body centre
    Y: np.ndarray                   # (ny, 1)
    a: float                        # body half-axes and subcutaneous fat
    b: float
    fat: float
    ac: float                       # rib cage (inner) half-axes
    bc: float
    y_sp: float                     # vertebral body centre
    y_tr: float                     # trachea
    x_tr: float
    spine_front: float
    rx: float                       # heart half-axes and centre
    ry: float
    rz: float
    hx: float
    hy: float
    hz: float
    sx: float                       # body centre shift
    sy: float

    def V(self, x: float, y: float, z: float) -> tuple[float, float, float]:
        """Relative (x, y, z from the carina) -> world."""
        return (x + self.sx, y + self.sy, self.zc + z)


def _frame(grid: _Grid, p: _Params) -> _Frame:
    """The derived geometry from the drawn parameters."""
    nz, ny, nx = grid.shape
    zc = p.z_offset
    X = grid.x[None, :] - p.x_shift            # (1, nx)
    Y = grid.y[:, None] - p.y_shift            # (ny, 1)
    a, b, fat = p.body_a, p.body_b, p.fat
    ac, bc = a - fat - 14, b - fat - 14           # rib cage (inner)
    y_sp = bc - 22                                # vertebral body centre
    y_tr = y_sp - 42                              # trachea
    x_tr = 0.0
    # the heart's posterior wall lies 3-4 cm in front of the vertebral bodies (esophagus and aorta between);
    # only the left atrium reaches back to the esophagus
    spine_front = y_sp - 17.0
    rx, ry, rz = p.heart_rx, p.heart_ry, p.heart_rz
    ry = min(ry, (spine_front - 38.0 + bc - 8.0) / 2.0)
    hx, hy, hz = p.heart_x, spine_front - 38.0 - ry, zc + p.venous - 15.0

    sx, sy = p.x_shift, p.y_shift
    return _Frame(zc, X, Y, a, b, fat, ac, bc, y_sp, y_tr, x_tr, spine_front, rx, ry, rz, hx, hy, hz, sx, sy)


class _Built(NamedTuple):
    """The truth arrays of a phantom and the two landmark heights (world z, mm) found while drawing it."""

    lungs: np.ndarray
    airways: np.ndarray
    lesions: np.ndarray
    vessels: np.ndarray
    bt_origin_z: float
    carina_split_z: float


def _build(grid: _Grid, p: _Params, rng: np.random.Generator) -> tuple[np.ndarray, _Built]:
    """HU before acquisition and the truth: body and organs per slice, mediastinum, airways, lung parenchyma
    with its vessel tree and the ILD (in this order: the random stream depends on it)."""
    fr = _frame(grid, p)
    hu, lungs = _build_slices(grid, p, fr)
    bt_origin_z = _build_mediastinum(grid, p, fr, hu, lungs)
    airways, carina_split_z = _build_airways(grid, p, fr, hu, lungs)
    lesions, vessels = _build_parenchyma(grid, p, fr, hu, lungs, rng)
    return hu, _Built(lungs, airways, lesions, vessels, bt_origin_z, carina_split_z)


def _build_slices(grid: _Grid, p: _Params, fr: _Frame) -> tuple[np.ndarray, np.ndarray]:
    """Per slice: table, body, fat, ribs, spine, sternum, lungs, liver/spleen, heart, mediastinal fat."""
    nz, ny, nx = grid.shape
    zc, X, Y, a, b, fat, ac, bc, y_sp, y_tr, x_tr, spine_front, rx, ry, rz, hx, hy, hz, sx, sy = (
        fr.zc, fr.X, fr.Y, fr.a, fr.b, fr.fat, fr.ac, fr.bc, fr.y_sp, fr.y_tr, fr.x_tr, fr.spine_front, fr.rx, fr.ry, fr.rz, fr.hx, fr.hy, fr.hz, fr.sx, fr.sy)
    hu = np.full(grid.shape, -1000.0, np.float32)
    lungs = np.zeros(grid.shape, np.uint8)

    # -- per slice: body, fat, ribs, spine, sternum, lungs, liver/spleen, heart, mediastinal fat ---------
    rib_period, rib_h = 24.0, 9.0
    ell_body = (X / a) ** 2 + (Y / b) ** 2
    ell_musc = (X / (a - fat)) ** 2 + (Y / (b - fat)) ** 2
    ell_cage = (X / ac) ** 2 + (Y / bc) ** 2
    ring = (ell_cage > 1.0) & ((X / (ac + 7)) ** 2 + (Y / (bc + 7)) ** 2 <= 1.0)
    spine = (X ** 2 + (Y - y_sp) ** 2) <= 17.0 ** 2
    spine_core = (X ** 2 + (Y - y_sp) ** 2) <= 14.0 ** 2
    canal = (X ** 2 + (Y - (y_sp + 26)) ** 2) <= 8.0 ** 2
    post_el = (np.abs(X) <= 9) & (Y > y_sp + 15) & (Y < bc + 18)
    sternum = (np.abs(X) <= 14) & (Y < -bc + 6) & (Y > -bc - 8)
    table = (Y > b + 25) & (Y < b + 40) & (np.abs(X) < a + 20)
    ang = np.arctan2(Y, X)                         # rib obliquity: lower anteriorly
    rib_phase = (Y / bc) * 12.0
    for k in range(nz):
        z = grid.z[k]
        zr = z - zc
        sl = hu[k]
        sl[table] = 120.0
        sl[ell_body <= 1] = -100.0
        sl[ell_musc <= 1] = 45.0
        # ribs above the lower costal margin
        if zr > p.dome_r - 55:
            phase = ((zr + rib_phase) % rib_period) < rib_h
            sl[ring & phase] = 700.0
        disc = (zr % 28.0) < 5.0
        sl[spine] = 700.0
        sl[spine_core] = 80.0 if disc else 250.0
        sl[canal] = 30.0
        sl[post_el] = 500.0
        if p.dome_r - 40 < zr < p.arch_top + 40:
            sl[sternum] = 400.0
        # thoracic cavity content: mediastinal fat (vessels, heart, esophagus are drawn into it)
        cav = ell_cage <= 1.0
        sl[cav & ~spine & ~canal] = -90.0
        # lungs
        s_ap = 1.0
        top = p.apex - 55.0
        if zr > top:
            s_ap = np.sqrt(max(0.0, 1.0 - ((zr - top) / 55.0) ** 2))
        if s_ap <= 0:
            continue
        cage_s = ((X / (ac * s_ap)) ** 2 + ((Y - 6 * (1 - s_ap)) / (bc * s_ap)) ** 2) <= 1.0
        med_half = 16.0 + (8.0 if zr > p.arch_top - 12 else 0.0)
        not_med = np.abs(X - x_tr) > med_half + np.where(Y < y_tr, 4.0, 0.0)
        not_spine = ~(((X ** 2) / 34.0 ** 2 + ((Y - y_sp) ** 2) / 26.0 ** 2) <= 1.0) & ~((np.abs(X) < 30) & (Y > y_sp))
        heart2d = ((X - hx) / (rx + 3)) ** 2 + ((Y - hy) / (ry + 3)) ** 2 + ((z - hz) / (rz + 3)) ** 2 <= 1.0
        # the aortic arch and descending aorta push the left lung aside
        aorta2d = ((X - 22) ** 2 + (Y - (y_sp - 20)) ** 2) <= 16.0 ** 2
        # diaphragm domes: the lung ends above z_bottom(x, y)
        rr = ((np.abs(X) - 0.58 * ac) / (0.5 * ac)) ** 2 + ((Y - 0.05 * bc) / bc) ** 2
        zb_r = p.dome_r - p.recess * np.clip(rr, 0, 1.6) / 1.6 * 1.0
        zb_l = p.dome_l - p.recess * np.clip(rr, 0, 1.6) / 1.6 * 1.0
        above = np.where(X < 0, zr > zb_r, zr > zb_l)
        lung = cage_s & not_med & not_spine & ~heart2d & ~aorta2d & above
        lungs[k][lung & (X < x_tr)] = 1
        lungs[k][lung & (X >= x_tr)] = 2
        # abdomen below the domes inside the cage
        below = cav & ~above & ~spine & ~canal
        sl[below & (X < 15)] = 60.0                   # liver
        sl[below & (X >= 15)] = 45.0                  # spleen / stomach
        # heart
        heart = ((X - hx) / rx) ** 2 + ((Y - hy) / ry) ** 2 + ((z - hz) / rz) ** 2 <= 1.0
        sl[heart] = 45.0 if not p.contrast else p.blood_hu * 0.8

    return hu, lungs


def _build_mediastinum(grid: _Grid, p: _Params, fr: _Frame, hu: np.ndarray, lungs: np.ndarray) -> float:
    """Stomach gas, left atrium and pulmonary veins, aorta and great vessels, pulmonary arteries, esophagus;
    returns the world z of the brachiocephalic trunk's origin."""
    zc, X, Y, a, b, fat, ac, bc, y_sp, y_tr, x_tr, spine_front, rx, ry, rz, hx, hy, hz, sx, sy = (
        fr.zc, fr.X, fr.Y, fr.a, fr.b, fr.fat, fr.ac, fr.bc, fr.y_sp, fr.y_tr, fr.x_tr, fr.spine_front, fr.rx, fr.ry, fr.rz, fr.hx, fr.hy, fr.hz, fr.sx, fr.sy)
    V = fr.V
    # stomach gas bubble under the left dome (air that is not lung), always below the diaphragm: it is kept
    # >= 6 mm away from the lung
    bubble_c = np.array([p.x_shift + 0.45 * ac, p.y_shift - 0.2 * bc, zc + p.dome_l - p.recess * 0.6 - 14])
    bubble = np.zeros(grid.shape, bool)
    _draw_tubes(grid, [(bubble_c, bubble_c + np.array([0, 0, 4.0]), 13.0, 13.0)], hu, mask=bubble)
    near_lung = ndi.distance_transform_edt(lungs == 0, sampling=(grid.z[1] - grid.z[0], grid.y[1] - grid.y[0],
                                                                  grid.x[1] - grid.x[0])) < 6.0
    hu[bubble & ~near_lung] = -1000.0

    blood = p.blood_hu
    # left atrium and pulmonary veins
    # the left atrium is the most posterior chamber: behind the ventricles, just in front of the esophagus
    la_y = spine_front - 35.0
    la_c = np.array(V(hx - 8, la_y, p.venous))
    hilar = np.zeros(grid.shape, bool)
    _draw_tubes(grid, [(la_c - [22, 0, 0], la_c + [22, 0, 0], 15.0, 15.0)], hu, value=blood, mask=hilar)
    for side in (-1, 1):
        for dzv in (7.0, -7.0):
            start = la_c + np.array([side * 14, 0, dzv * 0.4])
            end = np.array(V(side * 0.45 * ac, la_y, p.venous + dzv * 1.6))
            _draw_tubes(grid, _polyline([tuple(start), tuple(end)], 6.5, 5.0), hu, value=blood, mask=hilar)
    lungs[hilar] = 0      # the atrium and the hilar veins are not lung
    # aorta: ascending, arch, descending; the branches arise from the arch's upper side, the brachiocephalic
    # trunk at its start (where the ascending aorta turns), so the arch's apex lies above the branch origins
    r_ao = 13.0
    rise = p.arch_rise
    arch_c = p.arch_top - r_ao - rise             # centre-line height at the arch ends

    def arch_point(tt):
        return V(-14 + 36 * (1 - np.cos(tt)) / 2, -30 + (y_sp - 20 + 30) * (1 - np.cos(tt)) / 2,
                 arch_c + rise * np.sin(tt))

    asc = [V(-12, -28, p.venous - 25), V(-14, -30, arch_c)]
    arch = [arch_point(tt) for tt in np.linspace(0, np.pi, 13)]
    desc = [V(22, y_sp - 20, arch_c), V(22, y_sp - 18, (grid.z[0] - zc) - 5)]
    aorta_segs = _polyline(asc, r_ao) + _polyline(arch, r_ao) + _polyline(desc, 11.0)
    _draw_tubes(grid, aorta_segs, hu, value=blood)
    top_z = (grid.z[-1] - zc) + 5
    t_bc = p.bt_origin_t * np.pi
    brach = [arch_point(t_bc), V(-20, -22, p.arch_top + 12), V(-30, -10, top_z)]
    brach_segs = _polyline(brach, 7.5, 6.0)
    _draw_tubes(grid, brach_segs, hu, value=blood)
    _draw_tubes(grid, _polyline([arch_point(0.5 * np.pi), V(6, -4, p.arch_top + 25), V(10, 0, top_z)], 4.5),
                hu, value=blood)
    _draw_tubes(grid, _polyline([arch_point(0.72 * np.pi), V(22, 6, p.arch_top + 20), V(40, 8, top_z)], 5.5),
                hu, value=blood)
    # the trunk's origin: the highest axial plane where its lumen still meets the aorta's (where a reader sees it
    # leave the arch, and how the TotalSegmentator reference masks define it: where the two masks touch)
    bt_origin_z = _meeting_plane(brach_segs, aorta_segs, float(brach[0][2]), float(p.arch_top + 12))
    # pulmonary trunk and arteries (bifurcation just below the carina)
    pa_bif = V(2, -8, -12)
    _draw_tubes(grid, _polyline([V(12, -45, p.venous - 20), pa_bif], 13.0, 12.0), hu, value=blood)
    _draw_tubes(grid, _polyline([pa_bif, V(-0.42 * ac, 0, -16)], 9.5, 7.0), hu, value=blood)
    _draw_tubes(grid, _polyline([pa_bif, V(0.42 * ac, 2, -8)], 9.0, 7.0), hu, value=blood)

    # esophagus: behind the trachea, slightly left, down to the stomach
    _draw_tubes(grid, _polyline([(sx + 6, sy + y_sp - 26, grid.z[-1] + 5),
                                 (sx + 10, sy + y_sp - 28, zc + p.dome_l - 10)], 7.0), hu, value=40.0)
    return bt_origin_z


def _build_airways(grid: _Grid, p: _Params, fr: _Frame, hu: np.ndarray, lungs: np.ndarray
                   ) -> tuple[np.ndarray, float]:
    """Trachea from the top of the scan to the carina and the two main bronchi; returns the airway lumen and the
    world z of the carina's ridge."""
    zc, X, Y, a, b, fat, ac, bc, y_sp, y_tr, x_tr, spine_front, rx, ry, rz, hx, hy, hz, sx, sy = (
        fr.zc, fr.X, fr.Y, fr.a, fr.b, fr.fat, fr.ac, fr.bc, fr.y_sp, fr.y_tr, fr.x_tr, fr.spine_front, fr.rx, fr.ry, fr.rz, fr.hx, fr.hy, fr.hz, fr.sx, fr.sy)
    V = fr.V
    top_z = (grid.z[-1] - zc) + 5
    # airways: trachea to the carina, main bronchi
    airways = np.zeros(grid.shape, bool)
    walls = np.zeros(grid.shape, bool)
    r_t = p.trachea_r
    car = np.array(V(x_tr, y_tr, 0.0))
    trachea = [(np.array(V(x_tr, y_tr - 4, top_z)), car + [0, 0, r_t * 0.6], r_t, r_t)]
    rb_end = car + np.array([-30.0, 6.0, -22.0])
    lb_end = car + np.array([42.0, 8.0, -24.0])
    bronchi = [(car + [0, 0, r_t * 0.6], rb_end, r_t * 0.8, r_t * 0.65), (car + [0, 0, r_t * 0.6], lb_end, r_t * 0.75, r_t * 0.55)]
    wall = [(p0, p1, r0 + 2.0, r1 + 2.0) for p0, p1, r0, r1 in trachea + bronchi]
    _draw_tubes(grid, wall, hu, value=45.0, mask=walls)
    _draw_tubes(grid, trachea + bronchi, hu, value=-1000.0, mask=airways)
    # the airway lumen and walls are not lung
    lungs[airways | walls] = 0
    return airways, _lumen_split_z(bronchi)


def _build_parenchyma(grid: _Grid, p: _Params, fr: _Frame, hu: np.ndarray, lungs: np.ndarray,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Lung parenchyma (denser posteriorly), the vessel tree and the ILD; returns the lesions and the vessels."""
    zc, X, Y, a, b, fat, ac, bc, y_sp, y_tr, x_tr, spine_front, rx, ry, rz, hx, hy, hz, sx, sy = (
        fr.zc, fr.X, fr.Y, fr.a, fr.b, fr.fat, fr.ac, fr.bc, fr.y_sp, fr.y_tr, fr.x_tr, fr.spine_front, fr.rx, fr.ry, fr.rz, fr.hx, fr.hy, fr.hz, fr.sx, fr.sy)
    V = fr.V
    blood = p.blood_hu
    # lung parenchyma (denser posteriorly), then vessel tree
    inside = lungs > 0
    grad = p.lung_hu + 25.0 * np.clip((grid.y[None, :, None] - p.y_shift) / (bc + 1e-6), -1, 1)
    tex = _coarse_field(rng, grid.shape, (grid.z[1] - grid.z[0], grid.y[1] - grid.y[0], grid.x[1] - grid.x[0]), 8.0)
    hu[inside] = (np.broadcast_to(grad, grid.shape)[inside] + 12.0 * tex[inside])
    vessels = np.zeros(grid.shape, bool)
    segs = []
    for side in (-1, 1):
        hil = np.array(V(side * 0.38 * ac, -2, -22))
        segs += _tree(rng, hil, side, ac, bc, p, zc, sx, sy)
    _draw_tubes(grid, segs, hu, mask=vessels)
    vessels &= inside
    hu[vessels] = blood

    # ILD
    lesions = np.where(inside, 1, 0).astype(np.uint8)
    if p.extent_target > 0:
        _add_ild(hu, lesions, inside, vessels, grid, p, rng, ac, bc)

    return lesions, vessels & (lungs > 0)


def _acquire(hu: np.ndarray, grid: _Grid, p: _Params, rng: np.random.Generator) -> np.ndarray:
    """Scanner blur and noise, then HU as int16."""
    # scanner blur and noise
    vox = np.array([grid.z[1] - grid.z[0], grid.y[1] - grid.y[0], grid.x[1] - grid.x[0]])
    sig = np.clip(0.6 / vox, 0.15, 0.8)
    hu = ndi.gaussian_filter(hu, sigma=sig)
    hu += rng.normal(0.0, p.noise_sd, grid.shape).astype(np.float32)
    hu = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    return hu


def _in_capsule(pts: np.ndarray, p0: np.ndarray, p1: np.ndarray, r0: float, r1: float) -> np.ndarray:
    """Which points (N, 3) lie inside the capsule from ``p0`` to ``p1`` with radius tapering ``r0`` -> ``r1``."""
    d = p1 - p0
    t = np.clip((pts - p0) @ d / float(d @ d), 0.0, 1.0)
    return ((pts - p0 - t[:, None] * d) ** 2).sum(axis=1) <= (r0 + (r1 - r0) * t) ** 2


def _meeting_plane(a, b, z_meet: float, z_apart: float, step: float = 0.1) -> float:
    """World z of the last axial plane, going from ``z_meet`` (where the lumens of the tube sets ``a`` and ``b``
    meet) toward ``z_apart`` (where they do not), in which they still meet; bisection, to ``step`` mm.

    Landmarks between vessels or airways are defined on axial planes, as a reader (and a slice-wise detector) sees
    them: oblique tubes cut a plane in ellipses drawn out along their tilt, so they part there later than their
    centre lines or their surfaces at equal distance along the tubes do.
    """
    segs = list(a)
    r = max(max(r0, r1) for _, _, r0, r1 in segs)
    lo = np.min([np.minimum(p0, p1) for p0, p1, _, _ in segs], axis=0) - r
    hi = np.max([np.maximum(p0, p1) for p0, p1, _, _ in segs], axis=0) + r
    gx, gy = np.meshgrid(np.arange(lo[0], hi[0], step), np.arange(lo[1], hi[1], step))

    def inside(pts, tubes, z):
        hit = np.zeros(len(pts), bool)
        for p0, p1, r0, r1 in tubes:     # only the tubes that reach this plane
            if min(p0[2], p1[2]) - max(r0, r1) <= z <= max(p0[2], p1[2]) + max(r0, r1):
                hit |= _in_capsule(pts, p0, p1, r0, r1)
        return hit

    def meet(z: float) -> bool:
        pts = np.stack([gx.ravel(), gy.ravel(), np.full(gx.size, z)], axis=1)
        pts = pts[inside(pts, a, z)]
        return bool(len(pts)) and bool(inside(pts, b, z).any())

    if not meet(z_meet):
        return float(z_meet)
    while abs(z_apart - z_meet) > step:
        mid = (z_meet + z_apart) / 2
        z_meet, z_apart = (mid, z_apart) if meet(mid) else (z_meet, mid)
    return float((z_meet + z_apart) / 2)


def _lumen_split_z(bronchi) -> float:
    """World z of the carina's ridge: the lowest axial plane in which the two bronchial lumens (capsules from one
    point) still meet."""
    (s1, e1, _, _), (s2, e2, _, _) = bronchi
    return _meeting_plane([bronchi[0]], [bronchi[1]], float((s1[2] + s2[2]) / 2), float(min(e1[2], e2[2])))


def _tree(rng: np.random.Generator, root: np.ndarray, side: int, ac: float, bc: float, p: _Params, zc: float,
          sx: float, sy: float, depth: int = 6) -> list[tuple[np.ndarray, np.ndarray, float, float]]:
    """A branching vessel tree from a hilum: segments spreading toward the periphery, thinning."""
    segs = []
    stack = []
    for direction in ([side * 0.6, -0.6, 0.55], [side * 0.7, 0.6, 0.35], [side * 0.5, 0.1, -0.85],
                      [side * 0.6, 0.7, -0.5], [side * 0.5, -0.7, -0.4]):
        d = np.asarray(direction, float)
        stack.append((root, d / np.linalg.norm(d), 5.0, 0))
    while stack:
        p0, d, r, lvl = stack.pop()
        length = rng.uniform(18, 32) * (0.85 ** lvl)
        p1 = p0 + d * length
        rel = p1 - np.array([sx, sy, zc])
        # keep the tree inside the chest
        if (rel[0] / ac) ** 2 + ((rel[1]) / bc) ** 2 > 0.9 or rel[2] > p.apex - 5 or rel[2] < p.dome_r - p.recess:
            continue
        r1 = max(r * 0.75, 0.8)
        segs.append((p0, p1, r, r1))
        if lvl + 1 < depth:
            for _ in range(2):
                nd = d + rng.normal(0, 0.45, 3)
                nd[0] = side * abs(nd[0])
                stack.append((p1, nd / np.linalg.norm(nd), r1, lvl + 1))
    return segs


def _add_ild(hu: np.ndarray, lesions: np.ndarray, inside: np.ndarray, vessels: np.ndarray, grid: _Grid,
             p: _Params, rng: np.random.Generator, ac: float, bc: float) -> None:
    """Thresholded basal-posterior-subpleural field -> lesion region; GG haze and reticulation inside it."""
    vox = (grid.z[1] - grid.z[0], grid.y[1] - grid.y[0], grid.x[1] - grid.x[0])
    zc = p.z_offset
    # distance to the pleura (mm), at reduced resolution for speed
    dist = ndi.distance_transform_edt(inside, sampling=vox).astype(np.float32)
    zrel = (grid.z - zc - p.dome_r) / (p.apex - p.dome_r)       # 0 at the dome, 1 at the apex
    basal = np.clip(1.0 - zrel, 0, 1.3)[:, None, None]
    post = np.clip((grid.y - p.y_shift) / bc, -1, 1)[None, :, None]
    field = (1.6 * basal + 0.8 * post - 0.05 * np.minimum(dist, 40.0) / 1.0
             + 0.45 * _coarse_field(rng, hu.shape, vox, 30.0) + 0.15 * _coarse_field(rng, hu.shape, vox, 10.0))
    vals = field[inside]
    target = p.extent_target
    thr = np.percentile(vals, 100.0 - target)
    region = inside & (field > thr)
    # ground glass vs reticulation: RET in the most subpleural/basal part of the region
    split = field - 0.03 * np.minimum(dist, 30.0) + 0.35 * _coarse_field(rng, hu.shape, vox, 20.0)
    rv = split[region]
    t_ret = np.percentile(rv, 100.0 * p.gg_fraction) if rv.size else 0.0
    ret = region & (split > t_ret)
    gg = region & ~ret
    lesions[gg] = 2
    lesions[ret] = 3
    gg_hu = float(rng.uniform(-720, -480))
    par = ~vessels
    hu[gg & par] = gg_hu + 25.0 * _coarse_field(rng, hu.shape, vox, 6.0)[gg & par]
    # reticulation: a network of thin lines on a hazy background
    band = _smooth_noise(rng, hu.shape, 1.6 / min(vox[1], 2.0)) - _smooth_noise(rng, hu.shape, 3.0 / min(vox[1], 2.0))
    lines = np.abs(band) < 0.22
    hu[ret & par] = -640.0
    hu[ret & par & lines] = float(rng.uniform(-250, -50))
    # honeycombing at high extent: subpleural cysts with walls, kept inside the lesion region
    if target >= 35:
        cand = np.argwhere(ret & (dist < 8.0))
        if len(cand):
            pick = cand[rng.choice(len(cand), size=min(int(target * 4), len(cand)), replace=False)]
            walls = np.zeros(hu.shape, bool)
            lumen = np.zeros(hu.shape, bool)
            for c in pick:
                r = rng.uniform(2.5, 5.0)
                ctr = np.array([grid.x[c[2]], grid.y[c[1]], grid.z[c[0]]])
                _draw_tubes(grid, [(ctr, ctr + [0, 0, 0.1], r + 1.2, r + 1.2)], hu, mask=walls)
                _draw_tubes(grid, [(ctr, ctr + [0, 0, 0.1], r, r)], hu, mask=lumen)
            hu[walls & ret] = -100.0
            hu[lumen & ret] = -950.0


def make_nonchest_phantom(seed: int = 0, kind: str = "abdomen", size: str = "small") -> CTScan:
    """A CT with no lungs (for "no lungs found" tests): an abdomen stack or a head.

    The abdomen has bowel gas; the head has air in the sinuses, neither of which is lung.
    """
    rng = np.random.default_rng(seed)
    n_px, px, sz = SIZES[size]
    nz = 60 if size == "small" else 200
    fov = n_px * px
    y = -fov / 2 + px * (np.arange(n_px) + 0.5)
    x = y.copy()
    X, Y = np.meshgrid(x, y)
    hu = np.full((nz, n_px, n_px), -1000.0, np.float32)
    if kind == "abdomen":
        a, b = rng.uniform(130, 170), rng.uniform(100, 125)
        body = (X / a) ** 2 + (Y / b) ** 2 <= 1
        for k in range(nz):
            hu[k][body] = 45.0
            hu[k][(X / (a - 15)) ** 2 + (Y / (b - 15)) ** 2 > 1] = -100.0
            hu[k][~body] = -1000.0
            hu[k][(X ** 2 + (Y - b + 40) ** 2) <= 17 ** 2] = 250.0
            for _ in range(3):  # bowel gas pockets
                cx, cy, r = rng.uniform(-a / 2, a / 2), rng.uniform(-b / 2, b / 3), rng.uniform(5, 15)
                hu[k][((X - cx) ** 2 + (Y - cy) ** 2) <= r ** 2] = -1000.0
    elif kind == "head":
        for k in range(nz):
            r = 85 * np.sqrt(max(0.05, 1 - ((k - nz * 0.4) / (nz * 0.7)) ** 2))
            skull = (X ** 2 + Y ** 2) <= r ** 2
            hu[k][skull] = 700.0
            hu[k][(X ** 2 + Y ** 2) <= (r - 6) ** 2] = 35.0
            if k < nz * 0.3:
                hu[k][((X - 20) ** 2 + (Y + 50) ** 2) <= 10 ** 2] = -1000.0  # sinus air
                hu[k][((X + 20) ** 2 + (Y + 50) ** 2) <= 10 ** 2] = -1000.0
    else:
        raise ValueError(f"kind must be 'abdomen' or 'head', got {kind!r}")
    hu += rng.normal(0, 15, hu.shape).astype(np.float32)
    return CTScan(np.clip(np.rint(hu), -1024, 3071).astype(np.int16), spacing=(sz, px, px),
                  origin=(float(x[0]), float(y[0]), -300.0), meta={"modality": "CT"}, source=f"nonchest:{kind}")


# --------------------------------------------------------------------------------------------
# writers
# --------------------------------------------------------------------------------------------
def write_dicom_series(scan: CTScan, folder: str | os.PathLike, *, series_description: str = "sscild phantom",
                       rescale_intercept: float = -1024.0, patient_name: str = "PHANTOM^SSCILD",
                       extra: Callable[[Any, int], None] | Mapping[str, Any] | None = None) -> list[Path]:
    """Write ``scan`` as a CT DICOM series, one file per slice, in the scan's LPS geometry.

    Pixels are stored unsigned with RescaleIntercept ``rescale_intercept`` (or signed when it is 0).
    ``extra`` tweaks each dataset: a dict of attributes to set, or a callable ``extra(ds, k)`` (used by
    tests to make bad inputs: tilt, MR modality, missing slices...).
    """
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    d = np.asarray(scan.direction, float).reshape(3, 3)
    iop = [float(v) for v in list(d[:, 0]) + list(d[:, 1])]
    signed = rescale_intercept == 0
    paths = []
    for k in range(scan.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality = "CT"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PatientName, ds.PatientID = patient_name, "PHANTOM"
        ds.PatientBirthDate, ds.PatientSex = "", "O"
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20000101"
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
        ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "", ""
        ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
        ds.Manufacturer, ds.ManufacturerModelName = "sscild", "phantom"
        ds.SeriesDescription = series_description
        ds.ConvolutionKernel = "STANDARD"
        ds.KVP = 120
        ds.SliceThickness = float(abs(scan.spacing[0]))
        ds.PixelSpacing = [float(scan.spacing[1]), float(scan.spacing[2])]
        ds.ImageOrientationPatient = iop
        ds.ImagePositionPatient = [float(v) for v in scan.index_to_world(np.array([k, 0.0, 0.0]))]
        ds.SliceLocation = float(ds.ImagePositionPatient[2])
        ds.PatientPosition = "FFS"
        ds.Rows, ds.Columns = scan.shape[1], scan.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 1 if signed else 0
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = float(rescale_intercept), 1.0, "HU"
        raw = scan.hu[k].astype(np.int32) - int(rescale_intercept)
        arr = raw.astype(np.int16) if signed else np.clip(raw, 0, 65535).astype(np.uint16)
        ds.PixelData = arr.tobytes()
        if callable(extra):
            extra(ds, k)
        elif extra:
            for key, v in extra.items():
                setattr(ds, key, v)
        path = folder / f"slice_{k:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_phantom(scan: CTScan, truth: Truth, outdir: str | os.PathLike, fmt: str = "nifti") -> dict[str, Path]:
    """Write a phantom scan (``ct.nii.gz`` or ``dicom/``) and its truth (``truth.json``, ``lungs.nii.gz``,
    ``airways.nii.gz``, ``lesions.nii.gz`` on the scan grid)."""
    import SimpleITK as sitk

    from .util import atomic_path, write_json

    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    if fmt == "dicom":
        write_dicom_series(scan, out / "dicom", series_description=f"sscild phantom seed {truth.seed}")
        written["scan"] = out / "dicom"
    elif fmt == "nifti":
        with atomic_path(out / "ct.nii.gz") as tmp:
            sitk.WriteImage(scan.to_sitk(), str(tmp))
        written["scan"] = out / "ct.nii.gz"
    else:
        raise ValueError(f"format must be 'dicom' or 'nifti', got {fmt!r}")
    for name, arr in (("lungs", truth.lungs), ("airways", truth.airways.astype(np.uint8)), ("lesions", truth.lesions)):
        with atomic_path(out / f"{name}.nii.gz") as tmp:
            sitk.WriteImage(scan.to_sitk(arr.astype(np.uint8)), str(tmp))
        written[name] = out / f"{name}.nii.gz"
    written["truth"] = write_json(out / "truth.json", truth.to_dict())
    return written
