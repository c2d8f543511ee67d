"""Training and test slices made from real scans: 3D insertion, then an acquisition model, with exact truth.

For each real scan (any reader format), the lungs are segmented once; then, per draw, ILD is inserted in 3D
(:func:`sscild.insertion.insert_ild`; a share of draws stays healthy: every lung voxel of a real scan without
ILD is a hard negative), the acquisition is simulated on background and pattern together
(:func:`sscild.acquisition.simulate`), and slices with enough lung are kept with their labels and pixel size.

The result, :class:`RealSlices`, holds native-resolution slices; the S-Net and lesion U-Net preparers crop and
resample them for their own grids. Draws are cached as ``.npz`` (``cache`` folder) keyed by scan, seed and
parameters, so a benchmark or a training run can be repeated without redrawing.
"""
from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .acquisition import Acquisition, random_acquisition, simulate
from .insertion import insert_ild


@dataclass
class RealSlices:
    """Slices (native in-plane grid of each draw): ``hu`` list of (H, W) float32, ``lung`` and ``labels`` likewise,
    ``pixel_mm`` per slice, ``group`` (the real scan's name), ``info`` (draw description) per slice."""

    hu: list = field(default_factory=list)
    lung: list = field(default_factory=list)
    labels: list = field(default_factory=list)
    pixel_mm: list = field(default_factory=list)
    group: list = field(default_factory=list)
    info: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.hu)

    def extend(self, other: "RealSlices") -> None:
        for f in self.__dataclass_fields__:
            getattr(self, f).extend(getattr(other, f))

    def select(self, keep) -> "RealSlices":
        out = RealSlices()
        for i in np.flatnonzero(np.asarray(keep)):
            for f in self.__dataclass_fields__:
                getattr(out, f).append(getattr(self, f)[i])
        return out


@dataclass(frozen=True)
class DrawSpec:
    """One draw: which disease (``extent`` 0 = healthy) and which acquisition, and how many slices to keep."""

    seed: int
    extent: float
    distribution: str
    acquisition: Acquisition
    n_slices: int = 6
    min_lung_fraction: float = 0.04


def random_draw(rng: np.random.Generator, seed: int, native_spacing, *, healthy: float = 0.3,
                n_slices: int = 6, shallow: float = 0.0) -> DrawSpec:
    """A random draw: healthy with chance ``healthy``, else extent 3-70 % NSIP / UIP / patchy; a shallow
    inspiration with chance ``shallow`` (:func:`sscild.acquisition.random_acquisition`)."""
    ext = 0.0 if rng.random() < healthy else float(rng.uniform(0.03, 0.7))
    dist = str(rng.choice(["NSIP", "UIP", "patchy"], p=[0.45, 0.4, 0.15]))
    return DrawSpec(seed, ext, dist, random_acquisition(rng, native_spacing, shallow=shallow), n_slices)


def _key(name: str, spec: DrawSpec) -> str:
    return hashlib.sha256(json.dumps([name, repr(spec), 5]).encode()).hexdigest()[:16]


def draw_slices(name: str, hu: np.ndarray, lung: np.ndarray, spacing, spec: DrawSpec,
                cache: str | Path | None = None) -> RealSlices:
    """Insert (when ``spec.extent`` > 0), simulate, and keep ``spec.n_slices`` slices spread over the lungs."""
    path = Path(cache) / f"{_key(name, spec)}.npz" if cache else None
    if path is not None and path.exists():
        return _load(path)
    rng = np.random.default_rng(spec.seed)
    if spec.extent > 0:
        ins = insert_ild(hu, lung, spacing, rng, extent=spec.extent, distribution=spec.distribution)
        vol, lab = ins.hu, ins.labels
    else:
        vol, lab = np.asarray(hu, np.float32), np.where(lung, 1, 0).astype(np.uint8)
    sim = simulate(vol, spacing, spec.acquisition, rng, lung=lung, labels=lab)
    frac = sim.lung.reshape(len(sim.lung), -1).mean(1)
    ks = np.flatnonzero(frac >= spec.min_lung_fraction)
    if len(ks) > spec.n_slices:
        ks = np.sort(rng.choice(ks, spec.n_slices, replace=False))
    out = RealSlices()
    info = {"scan": name, "extent": spec.extent, "distribution": spec.distribution,
            "acquisition": spec.acquisition.describe()}
    for k in ks:
        out.hu.append(sim.hu[k].astype(np.float32)); out.lung.append(sim.lung[k]); out.labels.append(sim.labels[k])
        out.pixel_mm.append(float(sim.spacing[1])); out.group.append(name); out.info.append(info)
    if path is not None:
        _save(path, out)
    return out


def _save(path: Path, s: RealSlices) -> None:
    from .util import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, hu=np.array(s.hu, dtype=object), lung=np.array(s.lung, dtype=object),
                                labels=np.array(s.labels, dtype=object), pixel_mm=np.array(s.pixel_mm),
                                group=np.array(s.group), info=np.array([json.dumps(i) for i in s.info]))


def _load(path: Path) -> RealSlices:
    z = np.load(path, allow_pickle=True)
    # slices of one shape come back as 2D object arrays: give each its own dtype again
    return RealSlices([np.asarray(a, np.float32) for a in z["hu"]], [np.asarray(a, bool) for a in z["lung"]],
                      [np.asarray(a, np.uint8) for a in z["labels"]], [float(v) for v in z["pixel_mm"]],
                      [str(g) for g in z["group"]], [json.loads(str(i)) for i in z["info"]])


def lung_box(hu: np.ndarray, lung: np.ndarray, spacing, margin_mm: float = 20.0) -> tuple[np.ndarray, np.ndarray]:
    """The volume and lung mask cut to the lungs' bounding box plus ``margin_mm`` in-plane (chest wall, pleura and
    mediastinum stay; the air and table around the body go): insertion and acquisition cost a third as much."""
    zs, ys, xs = (np.flatnonzero(lung.any(axis=a)) for a in ((1, 2), (0, 2), (0, 1)))
    if zs.size == 0:
        return hu, lung
    my, mx = (int(np.ceil(margin_mm / float(spacing[i]))) for i in (1, 2))
    box = (slice(zs[0], zs[-1] + 1), slice(max(0, ys[0] - my), ys[-1] + my + 1),
           slice(max(0, xs[0] - mx), xs[-1] + mx + 1))
    return np.asarray(hu)[box], np.asarray(lung)[box]


def real_slices(scans: Sequence[tuple[str, str | Path]], draws_per_scan: int, *, seed: int = 0,
                healthy: float = 0.3, n_slices: int = 6, shallow: float = 0.0, cache: str | Path | None = None,
                quiet: bool = True) -> RealSlices:
    """Draw ``draws_per_scan`` cases from every ``(name, path)`` real scan (read and segmented once each)."""
    from .anatomy import segment_lungs
    from .io import load_ct
    from .util import progress

    out = RealSlices()
    for name, path in scans:
        scan = load_ct(path)
        hu, lung = lung_box(scan.hu, segment_lungs(scan).mask, scan.spacing)
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])     # by name: leaving a scan out keeps the rest
        specs = [random_draw(rng, int(rng.integers(2**31)), scan.spacing, healthy=healthy, n_slices=n_slices,
                             shallow=shallow) for _ in range(draws_per_scan)]
        for spec in progress(specs, f"real draws {name}", quiet=quiet):
            out.extend(draw_slices(name, hu, lung, scan.spacing, spec, cache))
    return out


def draw_groups(rs: RealSlices):
    """``(start, stop)`` of each draw's slices in ``rs`` (one draw: one simulated volume, one grid)."""
    i = 0
    while i < len(rs):
        j = i
        while j < len(rs) and rs.info[j] == rs.info[i] and rs.hu[j].shape == rs.hu[i].shape:
            j += 1
        yield i, j
        i = j


def snet_slices(rs: RealSlices, cfg):
    """Real draws as S-Net training slices (:class:`sscild.scoring.snet_data.SliceSet`) with their exact scores;
    each draw's lung is shifted to the reference aeration (:func:`sscild.density.aeration`) as at inference."""
    from .density import aeration, normalise_aeration
    from .scoring.snet_data import SliceSet, prepare_slices

    sets = []
    for i, j in draw_groups(rs):
        hu, lung = np.stack(rs.hu[i:j]), np.stack(rs.lung[i:j])
        hu = normalise_aeration(hu, lung, aeration(hu, lung, rs.pixel_mm[i]))
        sets.append(prepare_slices(hu, lung, rs.pixel_mm[i], cfg, labels=np.stack(rs.labels[i:j]),
                                   group=f"real:{rs.group[i]}", synthetic=True))
    return SliceSet.concat(sets)


def from_spec(spec: dict, quiet: bool = True) -> RealSlices:
    """The real draws a config's ``data.real_draws`` section names (:data:`sscild.config.REAL_DRAW_KEYS`):
    ``scans`` [{name, path, optional}], ``exclude`` (names left out), ``draws`` per scan, ``healthy`` share,
    ``n_slices`` per draw, ``shallow`` inspiration chance, ``seed``, ``cache`` folder. A missing scan is skipped
    unless ``optional: false``; no scan left gives an empty set."""
    from .errors import ConfigError

    scans = []
    for sc in spec.get("scans") or []:
        if sc["name"] in (spec.get("exclude") or []):
            continue
        if Path(sc["path"]).exists():
            scans.append((sc["name"], sc["path"]))
        elif not sc.get("optional", True):
            raise ConfigError(f"real_draws scan {sc['path']} does not exist")
    if not scans:
        return RealSlices()
    return real_slices(scans, int(spec.get("draws", 8)), seed=int(spec.get("seed", 0)),
                       healthy=float(spec.get("healthy", 0.5)), n_slices=int(spec.get("n_slices", 8)),
                       shallow=float(spec.get("shallow", 0.0)), cache=spec.get("cache"), quiet=quiet)
