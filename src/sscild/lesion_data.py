"""Lesion U-Net data: prepared slices on the U-Net grid (:class:`SegSet`) from phantoms with exact masks, patterns
inserted into healthy slices, real healthy backgrounds, and users' label maps (NIfTI, 3D Slicer ``.seg.nrrd``)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .errors import ConfigError, LabelMapError
from .lesions import UNetConfig, scan_crop
from .scan import CTScan
from .scoring.snet_data import SliceArrays

# segment names annotators use, mapped to classes (case-insensitive regular expressions); override per dataset
DEFAULT_NAME_MAP = {
    r"^(ggo?|ground[ -]?glass.*)$": 2,
    r"^(ret|reticulation.*|.*fibrosis.*|honeycomb.*|ef)$": 3,
    r"^(normal.*|healthy.*|lung.*)$": 1,
}


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------
@dataclass
class SegSet(SliceArrays):
    """Prepared slices on the U-Net grid: ``hu`` (N, S, S) float32, ``lung`` bool, ``labels`` uint8 0..3,
    ``pixel_mm`` (N,), ``group`` (patient/scan id for grouped splits)."""

    hu: np.ndarray
    lung: np.ndarray
    labels: np.ndarray
    pixel_mm: np.ndarray
    group: np.ndarray



def prepare_volume(hu: np.ndarray, lung: np.ndarray, pixel_mm: float, cfg: UNetConfig,
                   labels: np.ndarray | None = None, slices: Sequence[int] | None = None, group: str = ""
                   ) -> tuple[SegSet, Any]:
    """Crop slices of a volume (z, y, x) to the scan's lung box and resample; returns (SegSet, crop). The lung
    voxels are shifted to the reference aeration of the whole volume first, as :func:`segment_lesions` does."""
    from .density import aeration, normalise_aeration
    from .scoring.snet import crop_resample

    hu = normalise_aeration(hu, lung, aeration(hu, lung, pixel_mm))
    crop = scan_crop(lung, cfg.margin)
    ks = list(range(len(hu))) if slices is None else list(slices)
    h, lu, lab, f = crop_resample(np.asarray(hu, np.float32)[ks], np.asarray(lung, bool)[ks], cfg.size, crop=crop,
                                  labels=None if labels is None else np.asarray(labels)[ks])
    lab = np.where(lu, 1, 0).astype(np.uint8) if lab is None else np.where(lu, np.maximum(lab, 1), 0).astype(np.uint8)
    return SegSet(h, lu, lab, np.full(len(ks), pixel_mm * f, np.float32), np.array([group] * len(ks))), crop


def phantom_segset(seeds: Sequence[int], cfg: UNetConfig, *, size: str = "small", every: int = 2,
                   extent: Callable[[int], float] | None = None, quiet: bool = True) -> SegSet:
    """Every ``every``-th lung slice of phantoms with their exact lesion labels (extent 0-70 %)."""
    from .phantom import make_phantom
    from .util import progress

    extent = extent or (lambda s: 0.0 if s % 5 == 0 else float((s * 37) % 71))
    sets = []
    for s in progress(list(seeds), "phantoms", quiet=quiet):
        scan, truth = make_phantom(int(s), size=size, extent=extent(int(s)))
        lung = truth.lungs > 0
        ks = [k for k in range(0, scan.shape[0], every) if lung[k].sum() > 50]
        ss, _ = prepare_volume(scan.hu, lung, float(scan.spacing[1]), cfg, labels=truth.lesions, slices=ks,
                               group=f"phantom{s}")
        sets.append(ss)
    return SegSet.concat(sets)


def synthetic_segset(backgrounds: SegSet, n: int, rng: np.random.Generator, source=None) -> SegSet:
    """GG/RET inserted into randomly drawn healthy background slices, with exact masks."""
    from .scoring.synthesis import insert_patterns

    healthy = np.flatnonzero([(backgrounds.labels[i] >= 2).sum() == 0 for i in range(len(backgrounds))])
    if healthy.size == 0:
        raise ConfigError("no healthy background slices to insert patterns into")
    idx = rng.choice(healthy, size=int(n))
    hus, labs = [], []
    for i in idx:
        r = insert_patterns(backgrounds.hu[i], backgrounds.lung[i], rng, pixel_mm=float(backgrounds.pixel_mm[i]),
                            source=source, axis_mm=(3.0, 70.0))
        hus.append(r.image)
        labs.append(r.labels)
    return SegSet(np.stack(hus), backgrounds.lung[idx], np.stack(labs), backgrounds.pixel_mm[idx],
                  backgrounds.group[idx])


def real_draw_segset(rs, cfg: UNetConfig) -> SegSet:
    """Real draws (:class:`sscild.realdata.RealSlices`) as U-Net slices: the slices of one draw share one lung box
    and one aeration reference, as at inference."""
    from .realdata import draw_groups

    return SegSet.concat([prepare_volume(np.stack(rs.hu[i:j]), np.stack(rs.lung[i:j]), rs.pixel_mm[i], cfg,
                                         labels=np.stack(rs.labels[i:j]), group=rs.group[i])[0]
                          for i, j in draw_groups(rs)])


def real_background_segset(path: str | Path, cfg: UNetConfig, keep: tuple[float, float] = (0.0, 1.0)) -> SegSet:
    """Lung slices of a real scan as healthy backgrounds (all lung labelled normal), a z range ``keep`` (fractions
    of the lung slices) so that train and test use different parts."""
    from .anatomy import segment_lungs
    from .io import load_ct

    scan = load_ct(path)
    lung = segment_lungs(scan).mask
    ks = [k for k in range(scan.shape[0]) if lung[k].sum() > 0.03 * lung[k].size]
    k = np.arange(len(ks)) / max(1, len(ks))
    ks = [ks[i] for i in np.flatnonzero((k >= keep[0]) & (k < keep[1]))]
    ss, _ = prepare_volume(scan.hu, lung, float(scan.spacing[1]), cfg, slices=ks, group=f"real:{Path(path).name}")
    return ss


# --------------------------------------------------------------------------------------------
# users' label maps
# --------------------------------------------------------------------------------------------
def _map_name(name: str, name_map: Mapping[str, int]) -> int | None:
    for pat, v in name_map.items():
        if re.search(pat, name.strip(), flags=re.IGNORECASE):
            return int(v)
    return None


def read_label_map(path: str | Path, reference: CTScan, name_map: Mapping[str, int] | None = None) -> np.ndarray:
    """Read an annotation as sscild classes (0..3) on the reference scan's grid (z, y, x).

    NIfTI/MHA/NRRD label maps are taken as 0..3 already (values outside that fail). 3D Slicer ``.seg.nrrd`` files:
    each segment's name is mapped to a class through ``name_map`` (regular expressions -> class; default
    :data:`DEFAULT_NAME_MAP`); a name that maps to nothing fails with the list of names found.
    """
    import SimpleITK as sitk

    path = Path(path)
    if not path.exists():
        raise LabelMapError(f"label map {path} does not exist")
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise LabelMapError(f"cannot read label map {path}: {str(err).strip().splitlines()[-1]}") from None
    arr = sitk.GetArrayFromImage(sitk.DICOMOrient(img, "LPS"))   # (z, y, x[, layer]), z toward the head
    if tuple(arr.shape[:3]) != tuple(reference.shape):
        raise LabelMapError(f"label map {path} has grid {arr.shape[:3]} but the image has {reference.shape}; "
                            "annotations must be on the image's grid")
    if path.name.endswith(".seg.nrrd"):
        keys = {k: img.GetMetaData(k) for k in img.GetMetaDataKeys()}
        names = {}
        for k, v in keys.items():
            m = re.match(r"Segment(\d+)_Name$", k)
            if m:
                names[int(m.group(1))] = v
        if not names:
            raise LabelMapError(f"{path}: no Segment*_Name entries; is it a 3D Slicer segmentation?")
        name_map = dict(name_map or DEFAULT_NAME_MAP)
        unknown = [n for n in names.values() if _map_name(n, name_map) is None]
        if unknown:
            raise LabelMapError(f"{path}: segment name(s) {unknown} map to no class; names found: "
                                f"{sorted(names.values())}. Add them to the name map (regex -> 1 normal, 2 GG, 3 RET)")
        out = np.zeros(reference.shape, np.uint8)
        for i, n in names.items():
            val = int(keys.get(f"Segment{i}_LabelValue", i + 1))
            layer = int(keys.get(f"Segment{i}_Layer", 0))
            src = arr[..., layer] if arr.ndim == 4 else arr
            cls = _map_name(n, name_map)
            out[(src == val) & (cls > out)] = cls   # higher class wins where segments overlap
        return out
    arr = np.asarray(arr)
    bad = np.setdiff1d(np.unique(arr), [0, 1, 2, 3])
    if bad.size:
        raise LabelMapError(f"{path}: label values {bad.tolist()[:10]} are not sscild classes (0 background, "
                            "1 normal, 2 GG, 3 RET); remap them or use a .seg.nrrd with segment names")
    return arr.astype(np.uint8)


def pairs_segset(csv: str | Path, cfg: UNetConfig, name_map: Mapping[str, int] | None = None) -> SegSet:
    """Users' annotations: a CSV with ``image``, ``labels`` (paths, relative to the CSV) and ``patient_id``."""
    import pandas as pd

    from .anatomy import segment_lungs
    from .io import load_ct

    csv = Path(csv)
    df = pd.read_csv(csv)
    if not {"image", "labels"} <= set(df.columns):
        raise ConfigError(f"{csv}: needs columns image, labels (and patient_id); found {list(df.columns)}")
    sets = []
    for _, r in df.iterrows():
        ip, lp = (Path(str(r[c])) for c in ("image", "labels"))
        ip, lp = (p if p.is_absolute() else csv.parent / p for p in (ip, lp))
        scan = load_ct(ip)
        lab = read_label_map(lp, scan, name_map)
        lung = (lab > 0) | segment_lungs(scan).mask
        ks = [k for k in range(scan.shape[0]) if lung[k].sum() > 50]
        ss, _ = prepare_volume(scan.hu, lung, float(scan.spacing[1]), cfg, labels=lab, slices=ks,
                               group=str(r.get("patient_id", ip.name)))
        sets.append(ss)
    return SegSet.concat(sets)
