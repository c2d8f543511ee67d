"""Provenance of one run: the facts (software and model versions, weights hashes, thresholds, stages that ran) and
the methods paragraph a user can paste into a paper; plus how our measures map to the SLS II quantitative scores.

The facts are plain JSON-serialisable values, so the per-scan report and a batch's ``dataset_description.json``
(BIDS-derivatives style) can state the same things from the same function.

Examples
--------
>>> facts = run_facts({"software": {"name": "sscild", "version": "0.1.0"}, "timings_s": {"lungs": 1.0},
...                    "density": {"HAA_range_HU": [-600, -250]}, "models": []})
>>> facts["stages_ran"], facts["thresholds"]["HAA_range_HU"]
(['lungs'], [-600, -250])
>>> "sscild 0.1.0" in methods_paragraph(facts)
True
"""
from __future__ import annotations

import hashlib
import os
import platform
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Mapping, Sequence

from . import __version__
from .domain import COMBINED_LEVELS_RULE, GOH_EXTENSIVE_ABOVE, GOH_FVC_THRESHOLD, GOH_LIMITED_BELOW

#: Shipped model folders; a ``--weights DIR`` folder holds the same sub-folders.
DEFAULT_MODELS = Path(__file__).resolve().parent / "models"
#: Model name (as in ``analysis.json`` ``models``) -> its folder name.
MODEL_FOLDERS = {"S-Net": "snet", "lesion U-Net": "lesions", "L-Net": "lnet"}
#: Third-party libraries whose versions change results.
LIBRARIES = ("numpy", "scipy", "scikit-image", "SimpleITK", "torch", "monai", "highdicom", "pydicom")
#: What each stage does, in words for the methods paragraph (keys as in ``timings_s``).
STAGE_TEXT = {
    "lungs": "lungs and airways segmented model-free (thresholds, connected components, left/right split)",
    "levels": "the five Goh levels placed from anatomy (great-vessel origin, carina, pulmonary venous confluence, "
              "halfway, 1 cm above the right hemidiaphragm dome)",
    "levels_lnet": f"the levels also placed by the L-Net regression network and combined with the anatomical ones "
                   f"({COMBINED_LEVELS_RULE})",
    "density": "density histogram metrics of the whole lung, each lung and thirds of the lung height",
    "scores": "the total extent (TOT), ground glass (GG) and reticulation (RET) of each level slice, in % of its lung "
              "area, regressed by the S-Net network",
    "heatmaps": "replacement-based occlusion heat maps of the S-Net scores",
    "lesions": "every lung voxel classified as normal, ground glass or reticulation by a 2D U-Net (voxels of the "
               "model-free vessel and airway masks counted as normal lung)",
    "vessels": "lung vessels segmented model-free (multi-scale Hessian vesselness of bright tubes inside the lungs)",
    "quality": "scan quality checked from the image (air and blood-pool HU, coverage, slice spacing, kernel "
               "sharpness, noise, inspiration, orientation)",
    "regions": "density and lesion extent measured per region (thirds of the lung height, ventral/dorsal halves, "
               "10 mm subpleural band against the core)",
}


@dataclass(frozen=True)
class Sls2Column:
    """One SLS II quantitative HRCT score and whether (and how) an sscild measure corresponds."""

    name: str
    meaning: str
    sscild: str | None
    correspondence: str


#: SLS II quantitative HRCT scores (Goldin et al., Ann Am Thorac Soc 2018; computer-aided scores, % of the lung
#: volume, whole lung "WL" and the zone of maximal involvement "ZM" of six zones, three per lung).
SLS2_COLUMNS: tuple[Sls2Column, ...] = (
    Sls2Column("QILD-WL", "any ILD pattern (QLF + QGG + QHC), % of whole lung", "lesions.whole.involvement_pct",
               "yes: ground glass + reticulation voxels of the lesion U-Net, % of lung volume"),
    Sls2Column("QGG-WL", "ground glass, % of whole lung", "lesions.whole.GG_pct", "yes"),
    Sls2Column("QLF-WL", "lung fibrosis (reticulation), % of whole lung", "lesions.whole.RET_pct",
               "approximate: our reticulation class includes honeycombing, so it estimates QLF-WL + QHC-WL"),
    Sls2Column("QHC-WL", "honeycombing, % of whole lung", None, "no: there is no separate honeycombing class"),
    Sls2Column("Q*-ZM", "the same scores in the zone of maximal involvement (of 6 zones, 3 per lung)", None,
               "no: lesions.json zones are thirds of both lungs together, not the 6 SLS II zones"),
)


def sls2_values(lesions: Mapping[str, Any] | None) -> dict[str, float | None]:
    """The SLS II-named values that correspond to our lesion measures (see :data:`SLS2_COLUMNS`).

    Only the columns with a (possibly approximate) counterpart are returned, named as SLS II names them;
    ``QLF-WL`` carries the suffix ``(incl. QHC)`` because our reticulation includes honeycombing.

    >>> sls2_values({"whole": {"involvement_pct": 20.0, "GG_pct": 15.0, "RET_pct": 5.0}})
    {'QILD-WL': 20.0, 'QGG-WL': 15.0, 'QLF-WL (incl. QHC)': 5.0}
    """
    whole = (lesions or {}).get("whole") or {}
    out: dict[str, float | None] = {}
    for c in SLS2_COLUMNS:
        if c.sscild is None:
            continue
        key = c.name + (" (incl. QHC)" if c.correspondence.startswith("approximate") else "")
        v = whole.get(c.sscild.rsplit(".", 1)[1])
        out[key] = None if v is None else float(v)
    return out


@lru_cache(maxsize=32)
def _sha256(path: str, mtime_ns: int, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_file(path: str | os.PathLike) -> str | None:
    """sha256 of a file (cached per path, modification time and size); None when it does not exist."""
    p = Path(path)
    if not p.is_file():
        return None
    st = p.stat()
    return _sha256(str(p.resolve()), st.st_mtime_ns, st.st_size)


def model_weights_file(name: str, weights: str | os.PathLike | None = None) -> Path | None:
    """The ``model.safetensors`` a model of that name was loaded from: ``weights/<folder>`` when that exists (the
    ``--weights DIR`` override), else the shipped one."""
    folder = MODEL_FOLDERS.get(name)
    if folder is None:
        return None
    if weights is not None and (Path(weights) / folder / "model.safetensors").is_file():
        return Path(weights) / folder / "model.safetensors"
    return DEFAULT_MODELS / folder / "model.safetensors"


_PATH_RE = re.compile(r"(?:\.\./)*(?:shared/data/|src/sscild/models/)([\w.-]+)")


def public_text(text: Any) -> str:
    """A model card's free text without this repository's folder paths (``../shared/data/NAME`` -> ``NAME``).

    >>> public_text("slices of ../shared/data/chest-ct-lung-pet-ct-dx-a0001 (first 60 %)")
    'slices of chest-ct-lung-pet-ct-dx-a0001 (first 60 %)'
    """
    return _PATH_RE.sub(lambda m: m.group(1), "" if text is None else str(text))


def _library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for lib in LIBRARIES:
        try:
            out[lib] = version(lib)
        except PackageNotFoundError:
            continue
    return out


def _models(models: Sequence[Mapping[str, Any]], weights: str | os.PathLike | None) -> list[dict[str, Any]]:
    out = []
    for m in models:
        name = str(m.get("name", "?"))
        f = model_weights_file(name, weights)
        w = m.get("weights") if isinstance(m.get("weights"), Mapping) else {}
        sha = m.get("weights_sha256") or m.get("sha256") or w.get("sha256") or (sha256_file(f) if f else None)
        trained = m.get("trained_on", m.get("training"))
        d = {"name": name, "weights_sha256": sha,
             "trained_on": public_text(trained) if isinstance(trained, str) else trained}
        out.append({**d, "version": m["version"]} if m.get("version") else d)
    return out


def run_facts(analysis: Mapping[str, Any], *, weights: str | os.PathLike | None = None,
              fvc_pct: float | None = None) -> dict[str, Any]:
    """The provenance facts of one analysis (a dict shaped like ``analysis.json``).

    Parameters
    ----------
    analysis : mapping
        ``analysis.json`` content (``software``, ``timings_s``, ``density``, ``scores``, ``models``, ``input``).
    weights : path, optional
        The ``--weights DIR`` the run used (default: ``settings.weights``, else the shipped models); a model
        entry's own ``weights_sha256`` (or ``sha256``) wins over hashing the file.
    fvc_pct : float, optional
        FVC % predicted given for the staging (default: ``settings.fvc_pct``).

    Returns
    -------
    dict
        ``software``, ``libraries``, ``models`` (name, weights_sha256, trained_on, version), ``thresholds``,
        ``stages_ran``,
        ``input`` (non-identifying acquisition facts), ``fvc_pct``.
    """
    settings = analysis.get("settings") or {}
    weights = settings.get("weights") if weights is None else weights
    fvc_pct = settings.get("fvc_pct") if fvc_pct is None else fvc_pct
    density = analysis.get("density") or {}
    scores = analysis.get("scores") or {}
    thresholds: dict[str, Any] = {
        "HAA_range_HU": density.get("HAA_range_HU"), "histogram_range_HU": density.get("histogram_range_HU"),
        "goh_limited_below_pct": GOH_LIMITED_BELOW, "goh_extensive_above_pct": GOH_EXTENSIVE_ABOVE,
        "goh_fvc_threshold_pct_predicted": GOH_FVC_THRESHOLD}
    if scores.get("derived_thresholds"):
        thresholds["heatmap_thresholds"] = scores["derived_thresholds"]
    inp = analysis.get("input") or {}
    keep = ("format", "manufacturer", "kernel", "slice_thickness_mm", "kvp", "spacing_zyx_mm", "n_slices")
    software = dict(analysis.get("software") or {"name": "sscild", "version": __version__})
    return {"software": software, "libraries": _library_versions(),
            "models": _models(analysis.get("models") or [], weights), "thresholds": thresholds,
            "stages_ran": list((analysis.get("timings_s") or {}).keys()),
            "input": {k: inp[k] for k in keep if k in inp}, "fvc_pct": fvc_pct}


def _acquisition(inp: Mapping[str, Any]) -> str:
    bits = []
    if inp.get("slice_thickness_mm"):
        bits.append(f"{float(inp['slice_thickness_mm']):g} mm slices")
    sp = inp.get("spacing_zyx_mm")
    if sp:
        bits.append(f"{float(sp[1]):.2f} mm pixels")
    if inp.get("kernel"):
        bits.append(f"kernel {inp['kernel']}")
    return f" ({', '.join(bits)})" if bits else ""


def methods_paragraph(facts: Mapping[str, Any]) -> str:
    """A methods paragraph generated from :func:`run_facts`: what ran, with which versions, weights and thresholds."""
    sw = facts.get("software") or {}
    libs = facts.get("libraries") or {}
    th = facts.get("thresholds") or {}
    lib_txt = ", ".join(f"{k} {v}" for k, v in libs.items() if k != "python")
    s = [f"Chest CT{_acquisition(facts.get('input') or {})} was analysed with {sw.get('name', 'sscild')} "
         f"{sw.get('version', __version__)} (Python {libs.get('python', '?')}; {lib_txt})."]
    steps = [STAGE_TEXT[k] for k in facts.get("stages_ran") or [] if k in STAGE_TEXT]
    if steps:
        s.append("In order, " + "; ".join(steps) + ".")
    if th.get("HAA_range_HU"):
        lo, hi = th["HAA_range_HU"]
        s.append(f"High-attenuation area (HAA) was the share of lung voxels from {lo:g} to {hi:g} HU.")
    for m in facts.get("models") or []:
        sha = m.get("weights_sha256")
        s.append(f"{m['name']} weights: sha256 {sha}." if sha else f"{m['name']}: weights hash not recorded.")
    s.append(f"The Goh extent is the mean TOT of the scored levels; Goh staging (Goh et al., Am J Respir Crit Care "
             f"Med 2008) calls an extent below {th.get('goh_limited_below_pct', 10):g} % limited and above "
             f"{th.get('goh_extensive_above_pct', 30):g} % extensive, and in between decides by FVC (below "
             f"{th.get('goh_fvc_threshold_pct_predicted', 70):g} % predicted: extensive).")
    if th.get("heatmap_thresholds"):
        s.append("Heat-map derived scores used the thresholds " + ", ".join(
            f"{k} {float(v):g}" for k, v in th["heatmap_thresholds"].items()) + ".")
    s.append("The networks were trained on synthetic data; sscild is research software, not a medical device, "
             "and its measurements need review by a qualified reader.")
    return " ".join(s)
