"""Radiomics of the lungs (and of the ILD lesions when a lesion map is given) with PyRadiomics.

Parameters come from a versioned YAML file, by default ``sscild/data/radiomics_params.yaml`` (bin width 25 HU,
3 mm isotropic resampling, original image; LoG and wavelet images with ``extra_images=True``). Features of one
scan are cached as JSON under a key made of the parameter file, the options and the input files' size and
modification time, so a rerun with the same inputs reads them back and a changed parameter file recomputes.
Scans run in parallel in worker processes (``workers``); a scan that fails is recorded with its reason and
the others go on.

Columns of the feature table (one row per scan, index ``scan_id``):

- ``rad_lung_<image>_<class>_<feature>``: PyRadiomics on the lung mask (both lungs);
- ``rad_lesion_<image>_<class>_<feature>``: on ground glass + reticulation, when a lesion map is given;
- ``lesion_GG_pct``, ``lesion_RET_pct``, ``lesion_extent_pct``: lesion volumes, % of lung (lesion map given);
- ``density_<metric>``: whole-lung density metrics of :func:`sscild.density.density_metrics`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ..errors import ConfigError, InputError, SscildError
from ..scan import CTScan

PARAMS_PATH = Path(__file__).resolve().parents[1] / "data" / "radiomics_params.yaml"
FEATURE_CODE_VERSION = 1          # bump when what this module computes changes (invalidates caches)
DENSITY_KEYS = ("MLA_HU", "SD_HU", "skewness", "kurtosis", "HAA_pct", "p10_HU", "p15_HU", "p40_HU", "p80_HU",
                "volume_ml")
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def load_params(path: str | os.PathLike | None = None, extra_images: bool = False) -> tuple[dict, dict]:
    """Read a parameter file: (PyRadiomics parameters, the ``sscild`` block with ``version``).

    With ``extra_images`` the image types of ``sscild.extra_images`` (LoG, wavelet) are enabled as well.
    """
    import yaml

    p = Path(path) if path is not None else PARAMS_PATH
    if not p.exists():
        raise ConfigError(f"radiomics parameter file {p} does not exist; give a YAML file like {PARAMS_PATH}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"radiomics parameter file {p} is not valid YAML: {err}") from None
    meta = dict(data.pop("sscild", None) or {})
    if "version" not in meta:
        raise ConfigError(f"radiomics parameter file {p} has no sscild.version; add `sscild: {{version: 1}}` so "
                          "cached features can be told apart")
    if extra_images:
        data.setdefault("imageType", {"Original": {}})
        data["imageType"].update(meta.get("extra_images") or {})
    return data, meta


def params_key(path: str | os.PathLike | None = None, extra_images: bool = False) -> str:
    """Short hash of the parameter file text and options (part of every cache key)."""
    p = Path(path) if path is not None else PARAMS_PATH
    h = hashlib.sha1(p.read_bytes() + f"|extra={extra_images}|code={FEATURE_CODE_VERSION}".encode())
    return h.hexdigest()[:12]


def _extractor(params: Mapping[str, Any]):
    from radiomics import featureextractor

    logging.getLogger("radiomics").setLevel(logging.ERROR)    # after the import, which sets it to INFO

    try:
        return featureextractor.RadiomicsFeatureExtractor(dict(params))
    except Exception as err:  # pykwalify SchemaError and friends
        raise ConfigError(f"radiomics parameters rejected by PyRadiomics: {err}") from None


def _execute(extractor, scan: CTScan, mask: np.ndarray, prefix: str) -> dict[str, float]:
    res = extractor.execute(scan.to_sitk(), scan.to_sitk(mask.astype(np.uint8)), label=1)
    out = {}
    for k, v in res.items():
        if k.startswith("diagnostics_"):
            continue
        try:
            out[f"{prefix}{k}"] = float(np.asarray(v))
        except (TypeError, ValueError):
            continue
    return out


def radiomics_features(scan: CTScan, lung_labels: np.ndarray, lesion_labels: np.ndarray | None = None, *,
                       params_path: str | os.PathLike | None = None, extra_images: bool = False) -> dict[str, float]:
    """Radiomics, lesion fractions and density metrics of one scan (see the module docstring for the keys).

    Parameters
    ----------
    scan : CTScan
    lung_labels : array on the scan grid, lung where > 0
    lesion_labels : optional array on the scan grid (2 ground glass, 3 reticulation)

    Raises
    ------
    NoLungsError
        When the lung mask is empty.

    Examples
    --------
    >>> from sscild.phantom import make_phantom
    >>> scan, truth = make_phantom(1, extent=20, spacing=(6.0, 5.6, 5.6))
    >>> f = radiomics_features(scan, truth.lungs)
    >>> -1000 < f["rad_lung_original_firstorder_Mean"] < -300
    True
    """
    from ..anatomy import Lungs
    from ..density import density_metrics
    from ..errors import NoLungsError

    lung = np.asarray(lung_labels) > 0
    if lung.shape != scan.shape:
        raise InputError(f"lung mask shape {lung.shape} differs from the scan's {scan.shape}; give the mask "
                         "made for this scan")
    if not lung.any():
        raise NoLungsError("the lung mask is empty: no radiomics without lungs (is this a chest CT?)")
    params, _ = load_params(params_path, extra_images)
    ex = _extractor(params)
    feats = _execute(ex, scan, lung, "rad_lung_")
    if lesion_labels is not None:
        les = np.asarray(lesion_labels)
        if les.shape != scan.shape:
            raise InputError(f"lesion map shape {les.shape} differs from the scan's {scan.shape}")
        n = max(int(lung.sum()), 1)
        gg, ret = int(((les == 2) & lung).sum()), int(((les == 3) & lung).sum())
        feats.update(lesion_GG_pct=100.0 * gg / n, lesion_RET_pct=100.0 * ret / n,
                     lesion_extent_pct=100.0 * (gg + ret) / n)
        roi = np.isin(les, (2, 3)) & lung
        min_vox = int(params.get("setting", {}).get("minimumROISize") or 1)
        # the ROI must survive resampling: require min_vox voxels at the resampled spacing
        rs = params.get("setting", {}).get("resampledPixelSpacing")
        vox_ratio = float(np.prod(scan.spacing) / np.prod(rs)) if rs else 1.0
        if roi.sum() * vox_ratio >= min_vox:
            feats.update(_execute(ex, scan, roi, "rad_lesion_"))
    lab = np.where(lung, np.asarray(lung_labels).astype(np.uint8), 0)
    dm = density_metrics(scan, Lungs(lab, np.zeros(scan.shape, bool))).regions["whole"]
    for k in DENSITY_KEYS:
        v = dm.get(k)
        feats[f"density_{k}"] = float("nan") if v is None else float(v)
    return feats


def load_mask(path: str | os.PathLike, scan: CTScan, what: str = "mask") -> np.ndarray:
    """Read a label image written on ``scan``'s grid (any orientation) as an array (z, y, x) in LPS."""
    import SimpleITK as sitk

    from ..scan import orientation_of

    p = Path(path)
    try:
        img = sitk.ReadImage(str(p))
    except RuntimeError as err:
        why = ("does not exist: fix the path in the cohort CSV or leave it empty" if not p.exists() else
               f"cannot be read ({str(err).strip().splitlines()[-1][:120]}); is it corrupt?")
        raise InputError(f"{what} {p} {why}") from None
    if orientation_of(img) != "LPS":
        img = sitk.DICOMOrient(img, "LPS")
    arr = sitk.GetArrayFromImage(img)
    if arr.shape != scan.shape:
        raise InputError(f"{what} {p} has shape {arr.shape} (z, y, x) but the scan has {scan.shape}; give the "
                         f"{what} written for this scan (e.g. by `sscild analyze`)")
    sp = tuple(reversed(img.GetSpacing()))
    if not np.allclose(sp, scan.spacing, rtol=1e-3, atol=1e-3):
        raise InputError(f"{what} {p} has spacing {sp} mm but the scan {scan.spacing} mm; give the {what} made "
                         "on this scan's grid")
    return arr


def _file_stamp(p: str | None) -> str:
    if not p:
        return "-"
    st = Path(p).stat() if Path(p).exists() else None
    if st is None:
        return f"{p}:missing"
    n = len(os.listdir(p)) if Path(p).is_dir() else 0
    return f"{Path(p).resolve()}:{st.st_size}:{st.st_mtime_ns}:{n}"


def _cache_file(cache_dir: Path, scan_id: str) -> Path:
    return cache_dir / f"{_SAFE.sub('_', scan_id)}.json"


def features_for_scan(scan_id: str, path: str, lungs_path: str | None = None, lesions_path: str | None = None, *,
                      cache_dir: str | os.PathLike | None = None, params_path: str | os.PathLike | None = None,
                      extra_images: bool = False) -> dict[str, Any]:
    """Features of one scan from files, read from the cache when the inputs and parameters are unchanged.

    Returns ``{"scan_id", "status": "done"|"failed", "reason", "seconds", "cached", "features": {...}}``;
    project errors (bad input) are recorded as ``failed``, not raised.
    """
    t0 = time.perf_counter()
    key = hashlib.sha1("|".join([params_key(params_path, extra_images), _file_stamp(path),
                                 _file_stamp(lungs_path), _file_stamp(lesions_path)]).encode()).hexdigest()
    cf = _cache_file(Path(cache_dir), scan_id) if cache_dir is not None else None
    if cf is not None and cf.exists():
        try:
            c = json.loads(cf.read_text())
            if c.get("key") == key:
                return {"scan_id": scan_id, "status": "done", "reason": "", "seconds": c.get("seconds"),
                        "cached": True, "features": {k: (np.nan if v is None else v) for k, v in c["features"].items()}}
        except (json.JSONDecodeError, KeyError):
            pass
    from ..io import load_ct

    try:
        scan = load_ct(path)
        if lungs_path:
            lung = load_mask(lungs_path, scan, "lung mask")
        else:
            from ..anatomy import segment_lungs

            lung = segment_lungs(scan).labels
        les = load_mask(lesions_path, scan, "lesion map") if lesions_path else None
        feats = radiomics_features(scan, lung, les, params_path=params_path, extra_images=extra_images)
    except SscildError as err:
        return {"scan_id": scan_id, "status": "failed", "reason": str(err), "seconds": time.perf_counter() - t0,
                "cached": False, "features": {}}
    dt = time.perf_counter() - t0
    if cf is not None:
        from ..util import write_json

        write_json(cf, {"key": key, "scan_id": scan_id, "seconds": dt, "params_version": load_params(params_path)[1]
                        .get("version"), "features": feats})
    return {"scan_id": scan_id, "status": "done", "reason": "", "seconds": dt, "cached": False, "features": feats}


def _worker_init() -> None:
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


def _run(args: tuple) -> dict[str, Any]:
    scan_id, path, lungs, lesions, cache_dir, params_path, extra = args
    return features_for_scan(scan_id, path, lungs, lesions, cache_dir=cache_dir, params_path=params_path,
                             extra_images=extra)


def extract_cohort(cohort: pd.DataFrame, cache_dir: str | os.PathLike, *, workers: int = 1,
                   params_path: str | os.PathLike | None = None, extra_images: bool = False,
                   quiet: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Features of every scan of a cohort table (columns ``scan_id``, ``path``, optional ``lungs_path``,
    ``lesions_path``), ``workers`` processes at a time.

    Returns (features indexed by ``scan_id`` for the scans done, status table ``scan_id, status, reason,
    seconds, cached``).
    """
    from ..util import progress

    for c in ("scan_id", "path"):
        if c not in cohort.columns:
            raise ConfigError(f"the cohort needs a {c} column for radiomics; found {list(cohort.columns)}")
    load_params(params_path, extra_images)          # fail early on a bad parameter file
    Path(cache_dir).mkdir(parents=True, exist_ok=True)

    def opt(r, c):
        v = r.get(c)
        return None if v is None or (isinstance(v, float) and np.isnan(v)) or v == "" else str(v)

    jobs = [(str(r["scan_id"]), str(r["path"]), opt(r, "lungs_path"), opt(r, "lesions_path"), str(cache_dir),
             None if params_path is None else str(params_path), extra_images) for r in cohort.to_dict("records")]
    if workers > 1 and len(jobs) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=mp.get_context("spawn"),
                                 initializer=_worker_init) as ex:
            results = list(progress(ex.map(_run, jobs, chunksize=1), "radiomics", total=len(jobs), quiet=quiet))
    else:
        results = [_run(j) for j in progress(jobs, "radiomics", quiet=quiet)]
    status = pd.DataFrame([{k: r[k] for k in ("scan_id", "status", "reason", "seconds", "cached")} for r in results])
    done = [r for r in results if r["status"] == "done"]
    feats = pd.DataFrame([r["features"] for r in done], index=pd.Index([r["scan_id"] for r in done], name="scan_id"))
    return feats, status


def feature_groups(columns: Sequence[str]) -> dict[str, list[str]]:
    """Split feature column names into ``radiomics``, ``lesion`` and ``density`` groups."""
    cols = list(columns)
    return {"radiomics": [c for c in cols if c.startswith("rad_")],
            "lesion": [c for c in cols if c.startswith("lesion_")],
            "density": [c for c in cols if c.startswith("density_")]}
