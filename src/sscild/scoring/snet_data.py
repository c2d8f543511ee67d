"""S-Net data: prepared slice sets (:class:`SliceSet`), healthy backgrounds for synthesis (:class:`Backgrounds`),
phantom level slices with exact scores, users' scored scans from a CSV, synthetic slices, and the data sections of a
training config (:func:`load_data_spec`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from scipy import ndimage as ndi

from ..domain import LEVELS, PATTERNS
from ..errors import ConfigError, NoLungsError
from .snet_input import SNetConfig, _cut, lung_crop, prepare_grid, to_input
from ..config import resolve
from .synthesis import NORMAL, PatternSource, insert_patterns, scores_from_labels

# --------------------------------------------------------------------------------------------
# datasets
# --------------------------------------------------------------------------------------------
class SliceArrays:
    """For dataclasses of per-slice arrays (every field has one row per slice): length, subset, concatenation."""

    def __len__(self) -> int:
        return len(getattr(self, next(iter(self.__dataclass_fields__))))

    def subset(self, idx):
        idx = np.asarray(idx)
        return type(self)(*(getattr(self, f)[idx] for f in self.__dataclass_fields__))

    @classmethod
    def concat(cls, sets: Sequence):
        sets = [s for s in sets if len(s)]
        if not sets:
            raise ConfigError("no slices to train or test on")
        return cls(*(np.concatenate([getattr(s, f) for s in sets]) for f in cls.__dataclass_fields__))


@dataclass
class SliceSet(SliceArrays):
    """Prepared slices: ``hu`` (N, S, S) float32 on the S-Net grid, ``lung`` bool, ``labels`` uint8 (0 outside,
    1 normal, 2 GG, 3 RET; all-normal for healthy backgrounds), ``scores`` (N, 3), ``pixel_mm`` (N,), ``group``
    (patient / scan id, for grouped splits), ``synthetic`` (N,) bool, ``tex`` (N, S, S) float32 local SD in HU
    computed at the scan's own resolution (:func:`local_std`)."""

    hu: np.ndarray
    lung: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    pixel_mm: np.ndarray
    group: np.ndarray
    synthetic: np.ndarray
    tex: np.ndarray

    def inputs(self, cfg: SNetConfig) -> np.ndarray:
        return to_input(self.hu, self.lung, cfg, self.tex)

    def save(self, path: str | Path) -> None:
        from ..util import atomic_path

        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, **{f: getattr(self, f) for f in self.__dataclass_fields__})

    @staticmethod
    def load(path: str | Path) -> "SliceSet":
        d = np.load(path, allow_pickle=False)
        missing = [f for f in SliceSet.__dataclass_fields__ if f not in d]
        if missing:
            raise ConfigError(f"{path}: prepared slices without {missing} (made by an older sscild); delete it to "
                              "rebuild")
        return SliceSet(*(d[f] for f in SliceSet.__dataclass_fields__))


@dataclass
class Backgrounds:
    """Healthy slices (TOT = 0) kept at their own resolution, cropped to their lung box, for synthesis: inserting
    patterns before resampling keeps the texture as a scanner of that resolution would show it. ``weight``: how
    often a slice is drawn relative to the others (e.g. to give a few real slices the weight of many phantoms)."""

    hu: list[np.ndarray] = field(default_factory=list)
    lung: list[np.ndarray] = field(default_factory=list)
    pixel_mm: list[float] = field(default_factory=list)
    group: list[str] = field(default_factory=list)
    weight: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.hu)

    def add(self, hu: np.ndarray, lung: np.ndarray, pixel_mm: float, group: str, margin: float = 0.06,
            weight: float = 1.0) -> None:
        lung = np.asarray(lung, bool)
        if not lung.any():
            return
        c = lung_crop(lung, margin)
        self.hu.append(_cut(np.asarray(hu, np.float32), c, -1000.0))
        self.lung.append(_cut(lung, c, False))
        self.pixel_mm.append(float(pixel_mm))
        self.group.append(str(group))
        self.weight.append(float(weight))

    def extend(self, other: "Backgrounds") -> "Backgrounds":
        for f in ("hu", "lung", "pixel_mm", "group", "weight"):
            getattr(self, f).extend(getattr(other, f))
        return self


def add_noise(hu: np.ndarray, rng: np.random.Generator, noise_hu: tuple[float, float]) -> np.ndarray:
    """Scanner-like noise for augmentation: Gaussian noise of SD drawn from ``noise_hu`` (HU), spatially
    correlated over 0-1 pixel (like a smooth to sharp reconstruction kernel), added to a native slice."""
    sd = float(rng.uniform(*noise_hu))
    if sd <= 0:
        return np.asarray(hu, np.float32)
    n = rng.standard_normal(hu.shape).astype(np.float32)
    c = float(rng.uniform(0.0, 1.0))
    if c > 0.2:
        n = ndi.gaussian_filter(n, c)
    return (np.asarray(hu, np.float32) + sd * n / (n.std() + 1e-6)).astype(np.float32)


def prepare_slices(images: np.ndarray, lungs: np.ndarray, pixel_mm: float, cfg: SNetConfig, *,
                   labels: np.ndarray | None = None, scores: np.ndarray | None = None, group: str = "",
                   synthetic: bool = False) -> SliceSet:
    """Crop and resample each slice to its own lung box; scores default to those of the (resampled) labels."""
    hus, lus, labs, mms, texs = [], [], [], [], []
    for i in range(len(images)):
        lab_i = None if labels is None else labels[i:i + 1]
        hu, lu, lab, f, tex = prepare_grid(images[i:i + 1], lungs[i:i + 1], cfg, labels=lab_i, pixel_mm=pixel_mm)
        lab = np.where(lu, NORMAL, 0).astype(np.uint8) if lab is None else np.where(lu, lab, 0).astype(np.uint8)
        hus.append(hu[0]); lus.append(lu[0]); labs.append(lab[0]); mms.append(pixel_mm * f)
        texs.append(tex[0] if tex is not None else np.zeros_like(hu[0]))
    labs_a = np.stack(labs)
    sc = np.asarray(scores, np.float32) if scores is not None else \
        np.array([[scores_from_labels(l_)[p] for p in PATTERNS] for l_ in labs_a], np.float32)
    n = len(images)
    return SliceSet(np.stack(hus).astype(np.float32), np.stack(lus), labs_a, sc, np.asarray(mms, np.float32),
                    np.array([group] * n), np.full(n, synthetic), np.stack(texs).astype(np.float32))


def phantom_slices(seeds: Sequence[int], cfg: SNetConfig, *, size: str = "small", neighbours: int = 1,
                   extent: Callable[[int], float] | None = None, quiet: bool = True,
                   backgrounds: Backgrounds | None = None, noise_hu: tuple[float, float] | None = None
                   ) -> SliceSet:
    """The five level slices of phantoms (and ``neighbours`` slices on each side, each with its own exact score),
    ILD extent per seed from ``extent(seed)`` (default 0-70 %, every fourth phantom healthy). Healthy slices
    (TOT = 0) are also added, at the phantom's resolution, to ``backgrounds`` when given. ``noise_hu`` adds
    scanner-like noise (:func:`add_noise`, training augmentation) to the scored slices."""
    from ..phantom import make_phantom
    from ..util import progress

    extent = extent or (lambda s: 0.0 if s % 4 == 0 else float((s * 37) % 71))
    sets = []
    for s in progress(list(seeds), "phantom slices", quiet=quiet):
        scan, truth = make_phantom(int(s), size=size, extent=extent(int(s)))
        ks = set()
        for z in truth.levels_z.values():
            k = scan.slice_at_z(z)
            if k is None:
                continue
            ks.update(j for j in range(k - neighbours, k + neighbours + 1) if 0 <= j < scan.shape[0])
        ks_l = sorted(j for j in ks if truth.lungs[j].any())
        if not ks_l:
            continue
        lab = np.where(truth.lungs[ks_l] > 0, truth.lesions[ks_l], 0)
        # exact scores at the scan's own resolution
        sc = np.array([[scores_from_labels(l_)[p] for p in PATTERNS] for l_ in lab], np.float32)
        img = scan.hu[ks_l].astype(np.float32)
        if noise_hu:
            nrng = np.random.default_rng(int(s) + 7919)
            img = np.stack([add_noise(im, nrng, noise_hu) for im in img])
        sets.append(prepare_slices(img, truth.lungs[ks_l] > 0, float(scan.spacing[1]), cfg, labels=lab,
                                   scores=sc, group=f"phantom{s}"))
        if backgrounds is not None:
            for j, k in enumerate(ks_l):
                if sc[j, 0] == 0:
                    backgrounds.add(scan.hu[k], truth.lungs[k] > 0, float(scan.spacing[1]), f"phantom{s}")
    return SliceSet.concat(sets)


def real_backgrounds(path: str | Path, *, keep: tuple[float, float] = (0.0, 1.0), min_lung_fraction: float = 0.08,
                     step: int = 1, weight: float = 1.0) -> Backgrounds:
    """Slices of a real scan taken as healthy lung background (TOT = 0) for synthesis, at the scan's resolution:
    every ``step``-th slice whose lungs (segmented) cover at least ``min_lung_fraction`` of the slice, and of those
    the share ``keep`` (e.g. ``(0, 0.6)``: the upper 60 %, to hold the rest out)."""
    from ..anatomy import segment_lungs
    from ..io import load_ct

    scan = load_ct(path)
    lungs = segment_lungs(scan).mask
    frac = lungs.reshape(lungs.shape[0], -1).mean(1)
    ks = [k for k in range(0, scan.shape[0], step) if frac[k] >= min_lung_fraction]
    if not ks:
        raise NoLungsError(f"{path}: no slice with enough lung to use as background")
    r = np.arange(len(ks)) / len(ks)
    bg = Backgrounds()
    for k, rk in zip(ks, r):
        if keep[0] <= rk < keep[1]:
            bg.add(scan.hu[k], lungs[k], float(scan.spacing[1]), f"real:{Path(path).name}", weight=weight)
    return bg


def synthesize(backgrounds: Backgrounds, n: int, rng: np.random.Generator, cfg: SNetConfig, *,
               source: PatternSource | None = None, quiet: bool = True,
               noise_hu: tuple[float, float] | None = None) -> SliceSet:
    """``n`` synthetic slices: GG and RET inserted (:func:`.synthesis.insert_patterns`) into healthy backgrounds
    drawn in proportion to their weights, at their own resolution, then prepared for the network; exact scores
    from the inserted areas (counted on the native pixels). ``noise_hu`` adds scanner-like noise afterwards
    (:func:`add_noise`, training augmentation)."""
    from ..util import progress

    if len(backgrounds) == 0:
        raise ConfigError("no healthy (TOT = 0) background slices to insert patterns into")
    w = np.asarray(backgrounds.weight, float)
    idx = rng.choice(len(backgrounds), size=int(n), p=w / w.sum())
    parts = []
    for i in progress(list(idx), "synthetic slices", quiet=quiet):
        mm = float(backgrounds.pixel_mm[i])
        r = insert_patterns(backgrounds.hu[i], backgrounds.lung[i], rng, pixel_mm=mm, source=source)
        sc = np.array([[r.scores[p] for p in PATTERNS]], np.float32)
        img = add_noise(r.image, rng, noise_hu) if noise_hu else r.image
        parts.append(prepare_slices(img[None], backgrounds.lung[i][None], mm, cfg, labels=r.labels[None],
                                    scores=sc, group=backgrounds.group[i], synthetic=True))
    return SliceSet.concat(parts)


# --------------------------------------------------------------------------------------------
# datasets from users' CSVs, cross-validation, training from a config (sscild train scoring)
# --------------------------------------------------------------------------------------------
def slices_from_csv(path: str | Path, cfg: SNetConfig, neighbours: int = 1, quiet: bool = True,
                    backgrounds: Backgrounds | None = None) -> SliceSet:
    """Level slices of scored scans from a CSV, the way such cohorts are kept:

    ``scan_path`` (relative to the CSV's folder or absolute), ``patient_id`` (for grouped splits), ``L1``..``L5``
    (world z of each level in mm) and ``L1_TOT, L1_GG, L1_RET, ..., L5_RET`` (expert scores in %). Levels with an
    empty score are skipped. The ``neighbours`` slices on each side become extra samples with the same score, as in
    Jia et al. Slices scored 0 / 0 / 0 are added to ``backgrounds`` (at the scan's resolution) when given.
    """
    import pandas as pd

    from ..anatomy import segment_lungs
    from ..io import load_ct
    from ..util import progress

    path = Path(path)
    df = pd.read_csv(path)
    col = "scan_path" if "scan_path" in df.columns else "path"
    need = [col, *LEVELS, *(f"{n}_{p}" for n in LEVELS for p in PATTERNS)]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise ConfigError(f"{path}: missing column(s) {missing}; expected scan_path, patient_id, L1..L5 (world z, "
                          "mm) and L1_TOT, L1_GG, L1_RET, ..., L5_RET (scores in %)")
    sets = []
    for _, r in progress(list(df.iterrows()), "scored scans", quiet=quiet):
        p = Path(str(r[col]))
        p = p if p.is_absolute() else path.parent / p
        scan = load_ct(p)
        lungs = segment_lungs(scan).mask
        group = str(r.get("patient_id", p.name))
        for n in LEVELS:
            sc = [r[f"{n}_{q}"] for q in PATTERNS]
            if any(pd.isna(v) for v in sc) or pd.isna(r[n]):
                continue
            k = scan.slice_at_z(float(r[n]))
            if k is None:
                raise ConfigError(f"{path}: {n} at z = {r[n]} mm lies outside {p}")
            ks = [j for j in range(k - neighbours, k + neighbours + 1) if 0 <= j < scan.shape[0] and lungs[j].any()]
            sets.append(prepare_slices(scan.hu[ks].astype(np.float32), lungs[ks], float(scan.spacing[1]), cfg,
                                       scores=np.tile(np.asarray(sc, np.float32), (len(ks), 1)), group=group))
            if backgrounds is not None and all(float(v) == 0 for v in sc):
                for j in ks:
                    backgrounds.add(scan.hu[j], lungs[j], float(scan.spacing[1]), group)
    return SliceSet.concat(sets)


def load_data_spec(spec: dict, cfg: SNetConfig, base: Path, quiet: bool = True
                   ) -> tuple[SliceSet | None, Backgrounds]:
    """Scored slices and healthy backgrounds from a config's data section (phantoms, dataset_csv,
    real_backgrounds); returns ``(scored, backgrounds)``: the healthy (TOT = 0) scored slices and the real
    background slices, kept at their own resolution for synthesis."""
    from ..util import progress

    scored, bg = [], Backgrounds()
    phs = spec.get("phantoms") or []
    for ph in (phs if isinstance(phs, list) else [phs]):      # one {n, seed0, ...} or a list of them
        seeds = range(int(ph["seed0"]), int(ph["seed0"]) + int(ph["n"]))
        scored.append(phantom_slices(seeds, cfg, size=ph.get("size", "small"),
                                     neighbours=int(ph.get("neighbours", 1)), quiet=quiet, backgrounds=bg,
                                     noise_hu=tuple(ph["noise_hu"]) if ph.get("noise_hu") else None))
    if spec.get("dataset_csv"):
        scored.append(slices_from_csv(resolve(base, spec["dataset_csv"]), cfg, quiet=quiet, backgrounds=bg))
    for rb in progress(spec.get("real_backgrounds", []) or [], "real backgrounds", quiet=quiet):
        p = resolve(base, rb["path"])
        if not p.exists():
            if rb.get("optional", True):
                continue
            raise ConfigError(f"real background scan {p} does not exist")
        bg.extend(real_backgrounds(p, keep=tuple(rb.get("keep", [0.0, 1.0])), weight=float(rb.get("weight", 1.0))))
    if spec.get("real_draws"):
        scored.extend(_real_draws(spec["real_draws"], cfg, quiet))
    sc = SliceSet.concat(scored) if scored else None
    if sc is None and len(bg) == 0:
        raise ConfigError("the data section gives no slices: add phantoms {n, seed0}, dataset_csv or "
                          "real_backgrounds")
    return sc, bg


def _real_draws(spec: dict, cfg: SNetConfig, quiet: bool) -> list[SliceSet]:
    """``data.real_draws`` (:func:`sscild.realdata.from_spec`) as scored slices, repeated ``weight`` times."""
    from ..realdata import from_spec, snet_slices

    rs = from_spec(spec, quiet)
    if not len(rs):
        return []
    real = snet_slices(rs, cfg)
    return [real.subset(np.tile(np.arange(len(real)), max(1, int(round(float(spec.get("weight", 1)))))))]


def pattern_source_from_spec(spec: dict | None, base: Path):
    """``synthetic.source``: procedural (default), phantom, or real_gg (GG patches from real slices in a folder of
    DICOM files, e.g. ../shared/data/covid19-ny-sbu-slices, RET procedural)."""
    from .synthesis import PatchPatterns, ProceduralPatterns, phantom_patterns, real_gg_patterns

    spec = spec or {}
    kind = spec.get("source", "procedural")
    if kind == "procedural":
        return ProceduralPatterns()
    if kind == "phantom":
        return phantom_patterns()
    if kind == "real_gg":
        folder = resolve(base, spec["real_gg"])
        if not folder.exists():     # a fresh clone without ../shared: phantom and procedural textures only
            import warnings

            warnings.warn(f"{folder} not found: GG textures from phantoms and procedural patterns only")
            return MixedPatterns([phantom_patterns(), ProceduralPatterns()])
        slices = real_slices_from_folder(folder)
        gg = real_gg_patterns(slices)
        if not gg:
            raise ConfigError(f"no ground-glass patches found in {folder}")
        return MixedPatterns([PatchPatterns({"GG": gg, "RET": phantom_patterns().patches["RET"]}),
                              ProceduralPatterns()])
    raise ConfigError(f"unknown synthetic.source {kind!r}: procedural, phantom or real_gg")


class MixedPatterns:
    """Pick one of several pattern sources at random for each insertion."""

    def __init__(self, sources: Sequence[PatternSource]):
        self.sources = list(sources)

    def texture(self, kind, background, pixel_mm, rng):
        return self.sources[int(rng.integers(len(self.sources)))].texture(kind, background, pixel_mm, rng)


def real_slices_from_folder(folder: str | Path) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """Single real slices (DICOM files) with their lungs (largest internal air regions), for GG patches.
    Slices without lung (abdominal) are skipped."""
    from scipy import ndimage as ndi

    from ..io import load_ct

    out = []
    for f in sorted(Path(folder).glob("*.dcm")):
        scan = load_ct(f, allow_single_slice=True)
        hu = scan.hu[0].astype(np.float32)
        air = hu < -400
        lab, n = ndi.label(air)
        border = set(np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]])))
        sizes = ndi.sum(np.ones_like(hu), lab, index=range(1, n + 1))
        keep = [i + 1 for i in np.argsort(sizes)[::-1][:2] if (i + 1) not in border and sizes[i] > 0.02 * hu.size]
        lung = np.isin(lab, keep)
        lung = ndi.binary_closing(lung, iterations=6) & (hu < 200)   # keep GG/consolidation inside the outline
        if lung.sum() > 0.03 * hu.size:
            out.append((hu, lung, float(scan.spacing[1])))
    return out
