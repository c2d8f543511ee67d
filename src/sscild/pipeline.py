"""The analysis of one scan: a plain sequence of stages, their timings, and the files written.

``analyze(scan)`` runs lungs -> levels -> density (-> learned stages when their weights are available) and
returns an :class:`Analysis`; ``write_outputs`` writes the output folder::

    lungs.nii.gz     1 right, 2 left lung (input geometry)     airways.nii.gz   trachea + main bronchi
    levels.json      the five Goh levels (fixed schema)        density.json     density metrics
    analysis.json    everything, with version and timings      levels.png       the five level slices
    report.html      the report (+ report_*.png)               seg.dcm          DICOM-SEG (DICOM input only)

``analysis.json`` keys: ``software`` {name, version}, ``input`` (non-identifying description), ``geometry``,
``lungs`` {volumes_ml, notes, cut_off}, ``levels`` (as levels.json), ``density`` (as density.json),
``scores`` (when S-Net ran), ``lesions`` (when the lesion model ran), ``levels_lnet`` (with ``--lnet``: L-Net's
levels beside the anatomical ones), ``timings_s``, ``warnings``, ``models`` (cards of the models used).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from . import __version__
from .anatomy import Lungs, segment_lungs
from .density import DensityMetrics, density_metrics
from .levels import LEVELS, GohLevels, find_levels
from .scan import CTScan
from .util import atomic_path, draw_contour, write_json


@dataclass(frozen=True)
class Analysis:
    """Everything measured on one scan (arrays included); ``to_dict()`` is the JSON-serialisable summary."""

    scan_description: dict[str, Any]
    lungs: Lungs
    levels: GohLevels | None
    density: DensityMetrics
    volumes_ml: dict[str, float]
    timings_s: dict[str, float]
    warnings: list[str] = field(default_factory=list)
    scores: dict[str, Any] | None = None
    lesions: dict[str, Any] | None = None
    lesion_labels: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    models: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "software": {"name": "sscild", "version": __version__},
            "input": self.scan_description,
            "lungs": {"volumes_ml": self.volumes_ml, "notes": self.lungs.notes, "cut_off": self.lungs.cut_off},
            "levels": self.levels.to_dict() if self.levels is not None else None,
            "density": self.density.to_dict(),
            "scores": self.scores,
            "lesions": self.lesions,
            **{k: v for k, v in self.extra.items() if not k.startswith("_")},
            "timings_s": self.timings_s,
            "warnings": self.warnings,
            "models": self.models,
        }


def describe(scan: CTScan) -> dict[str, Any]:
    """Non-identifying description of a scan: format, scanner, geometry."""
    keep = ("format", "modality", "manufacturer", "model", "kernel", "slice_thickness_mm", "kvp",
            "series_description", "series_note", "n_slices")
    d = {k: scan.meta[k] for k in keep if k in scan.meta and scan.meta[k] not in ("", None)}
    lo, hi = scan.extent_mm()
    d.update({"shape_zyx": list(scan.shape), "spacing_zyx_mm": [round(float(s), 4) for s in scan.spacing],
              "z_range_mm": [round(lo, 2), round(hi, 2)],
              "orientation_as_read": scan.input_geometry.orientation if scan.input_geometry else "LPS"})
    return d


def _warnings(lungs: Lungs, levels: GohLevels | None) -> list[str]:
    w = [v for k, v in lungs.notes.items() if k in ("apex", "base", "airways")]
    if levels is not None:
        for n in LEVELS:
            if levels.z_mm[n] is None:
                w.append(f"{n} not placed: {levels.notes[n]}")
            elif levels.confidence[n] < 0.5:
                w.append(f"{n} has low confidence ({levels.confidence[n]:.2f}): {levels.notes[n]}")
    return w


def analyze(scan: CTScan, *, levels: bool = True, quiet: bool = True, device: str = "cpu",
            options: Mapping[str, Any] | None = None) -> Analysis:
    """Run every available stage on one scan.

    Parameters
    ----------
    scan : CTScan
    levels : bool
        Place the five Goh levels (model-free).
    quiet : bool
        No progress output.
    device : str
        ``cpu`` or ``cuda`` for the learned stages.
    options : mapping
        Stage options for the learned stages: ``lnet`` (also place the levels with L-Net and report both),
        ``weights`` (a folder whose ``lnet/`` etc. override the shipped models), ``heatmaps``.

    Returns
    -------
    Analysis
    """
    t: dict[str, float] = {}
    t0 = time.perf_counter()
    lungs = segment_lungs(scan)
    t["lungs"] = time.perf_counter() - t0
    g = None
    if levels:
        t0 = time.perf_counter()
        g = find_levels(scan, lungs)
        t["levels"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    dens = density_metrics(scan, lungs)
    t["density"] = time.perf_counter() - t0
    extra: dict[str, Any] = {}
    models: list[dict[str, Any]] = []
    opts = dict(options or {})
    if opts.get("lnet"):
        from .scoring.lnet import predict_levels

        t0 = time.perf_counter()
        model, cfg, card = _lnet(opts.get("weights"), device)
        extra["levels_lnet"] = predict_levels(model, scan, cfg, device=device)
        t["levels_lnet"] = time.perf_counter() - t0
        models.append({"name": "L-Net", "trained_on": card.get("trained_on"), "metrics": card.get("metrics")})
    scores = None
    warns = _warnings(lungs, g)
    if g is not None and opts.get("scores", True):
        scores = _score_stage(scan, lungs, g, opts, device, t, extra, models, warns, quiet)
    les_labels, les = None, None
    if opts.get("lesions", True):
        les_labels, les = _lesion_stage(scan, lungs, g, opts, device, t, models, warns, quiet)
    vols = {k: round(v, 2) for k, v in lungs.volume_ml(scan).items()}
    t = {k: round(v, 3) for k, v in t.items()}
    return Analysis(describe(scan), lungs, g, dens, vols, t, warns, scores=scores, lesions=les,
                    lesion_labels=les_labels, extra=extra, models=models)


def _lesion_stage(scan, lungs, g, opts, device, t, models, warns, quiet):
    """Lesion U-Net over the whole scan and its summary; skipped with a warning when no weights exist."""
    from .errors import ModelError
    from .lesions import segment_lesions, summarise

    t0 = time.perf_counter()
    try:
        model, cfg, card = _model("lesions", opts.get("weights"), device)
    except ModelError as err:
        warns.append(f"no lesion segmentation: {err}")
        return None, None
    lab = segment_lesions(model, cfg, scan, lungs.mask, device=device, quiet=quiet)
    ks = {n: scan.slice_at_z(z) if z is not None else None for n, z in (g.z_mm.items() if g else [])}
    summary = summarise(lab, lungs.labels, scan, ks)
    t["lesions"] = time.perf_counter() - t0
    models.append({"name": "lesion U-Net", "trained_on": card.get("trained_on"),
                   "metrics": card.get("validation_dice")})
    return lab, summary


def _score_stage(scan, lungs, g, opts, device, t, extra, models, warns, quiet) -> dict[str, Any] | None:
    """S-Net scores of the five level slices (and heat maps with ``heatmaps``); skipped with a warning when no
    S-Net weights are available."""
    from .errors import ModelError
    from .scoring.snet import SNetScorer, score_levels

    t0 = time.perf_counter()
    try:
        model, cfg, card = _model("snet", opts.get("weights"), device)
    except ModelError as err:
        warns.append(f"no scores: {err}")
        return None
    scores = score_levels(model, cfg, scan, lungs.mask, g.z_mm, device=device)
    scores["goh_stage"] = scores.pop("stage")
    t["scores"] = time.perf_counter() - t0
    models.append({"name": "S-Net", "trained_on": card.get("trained_on"),
                   "metrics": card.get("validation_metrics")})
    if opts.get("heatmaps"):
        from .explain import heatmaps as _heatmaps

        t0 = time.perf_counter()
        ks = {n: v["slice"] for n, v in scores["levels"].items() if v.get("TOT") is not None}
        slices = {n: (scan.hu[k].astype(np.float32), lungs.mask[k]) for n, k in ks.items()}
        scorer = SNetScorer(model, cfg, device, pixel_mm=float(scan.spacing[1]))
        maps = _heatmaps(slices, scorer, spacing_mm=float(scan.spacing[1]),
                         patch_mm=opts.get("patch_mm", 45.0), stride_mm=opts.get("stride_mm", 11.0),
                         quiet=quiet)
        thr = card.get("heatmap_thresholds", {"TOT": -2.0, "GG": -2.0, "RET": -2.0})
        scores["derived"] = {n: m.derived_scores([thr[p] for p in ("TOT", "GG", "RET")]) for n, m in maps.items()}
        scores["derived_thresholds"] = thr
        extra["_heatmaps"] = (maps, ks)
        t["heatmaps"] = time.perf_counter() - t0
    return scores


_MODELS: dict[tuple, Any] = {}
DEFAULT_MODELS = Path(__file__).resolve().parent / "models"


def _model(name: str, weights: str | Path | None, device: str):
    """A shipped model (``lnet``, ``snet``, ``lesions``) loaded once per process (batch workers keep it between
    scans); ``weights`` is a folder whose subfolder ``name`` overrides the shipped weights."""
    from .scoring import lnet, snet

    loaders = {"lnet": lnet.load_lnet, "snet": snet.load_snet}
    if name == "lesions":
        from . import lesions

        loaders["lesions"] = lesions.load_unet
    d = Path(weights) / name if weights else None
    key = (name, str(d), device)
    if key not in _MODELS:
        _MODELS[key] = loaders[name](d, device=device)
    return _MODELS[key]


def _lnet(weights: str | Path | None, device: str):
    return _model("lnet", weights, device)


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------
def levels_png(scan: CTScan, lungs: Lungs, levels: GohLevels, path: Path) -> Path:
    """The five level slices side by side: lung window, lung contours, level name, world z and slice index."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axs = plt.subplots(1, 5, figsize=(17, 3.9), dpi=90)
    sy, sx = scan.spacing[1], scan.spacing[2]
    ext = (0, scan.shape[2] * sx, scan.shape[1] * sy, 0)
    for ax, n in zip(axs, LEVELS):
        k = levels.array_index(scan, n)
        ax.set_axis_off()
        if k is None:
            ax.text(0.5, 0.5, f"{n}: not placed\n{levels.notes[n][:60]}", ha="center", va="center", fontsize=8,
                    transform=ax.transAxes, wrap=True)
            continue
        ax.imshow(scan.hu[k], cmap="gray", vmin=-1350, vmax=150, extent=ext)
        for lab, col in ((1, "#00e5ff"), (2, "#ff4fd8")):
            draw_contour(ax, lungs.labels[k] == lab, (sy, sx), colors=col, linewidths=0.7)
        ax.set_title(f"{n}  z = {levels.z_mm[n]:.1f} mm  slice {levels.slice_index[n]}\n"
                     f"confidence {levels.confidence[n]:.2f}", fontsize=9)
    fig.suptitle("Goh levels (L1 great-vessel origin, L2 carina, L3 venous confluence, L4 halfway, "
                 "L5 1 cm above right dome); cyan = right lung, magenta = left", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.94))      # leave the top for the suptitle (tight_layout ignores it)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def write_outputs(analysis: Analysis, scan: CTScan, outdir: str | Path, *, report: bool = True,
                  dicom_seg: bool | None = None, show_phi: bool = False) -> dict[str, Path]:
    """Write the output folder of one analysis (see the module docstring)."""
    from .io import save_like

    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    files["lungs"] = save_like(analysis.lungs.labels, scan, out / "lungs.nii.gz")
    files["airways"] = save_like(analysis.lungs.airways.astype(np.uint8), scan, out / "airways.nii.gz")
    if analysis.lesion_labels is not None:
        files["lesions"] = save_like(analysis.lesion_labels, scan, out / "lesions.nii.gz")
    if analysis.levels is not None:
        files["levels"] = write_json(out / "levels.json", analysis.levels.to_dict())
        files["levels_png"] = levels_png(scan, analysis.lungs, analysis.levels, out / "levels.png")
    files["density"] = write_json(out / "density.json", analysis.density.to_dict())
    if "_heatmaps" in analysis.extra:
        from .explain import write_heatmap_outputs

        maps, ks = analysis.extra.pop("_heatmaps")
        analysis.extra["heatmap_pngs"] = write_heatmap_outputs(maps, scan, ks, out)
    if analysis.scores is not None:
        files["scores"] = write_json(out / "scores.json", analysis.scores)
    if analysis.lesions is not None:
        files["lesions_json"] = write_json(out / "lesions.json", analysis.lesions)
    files["analysis"] = write_json(out / "analysis.json", analysis.to_dict())
    is_dicom = scan.meta.get("format") == "dicom" and scan.source and Path(scan.source).is_dir()
    if (dicom_seg if dicom_seg is not None else is_dicom) and is_dicom:
        from .dicomseg import lung_segments, write_dicom_seg
        from .errors import SscildError

        try:
            files["dicom_seg"] = write_dicom_seg(scan.source, scan, lung_segments(analysis.lungs.labels,
                                                                                 analysis.lesion_labels),
                                                 out / "seg.dcm")
        except (SscildError, ValueError, AttributeError, TypeError) as err:
            # the NIfTI outputs stand; a viewer export that fails is reported, not fatal
            analysis.warnings.append(f"DICOM-SEG not written: {type(err).__name__}: {err}")
    if report:
        from .report import ReportInput, write_report

        lv = {d["name"]: d for d in analysis.levels.to_dict()["levels"]} if analysis.levels else {}
        sc = analysis.scores or {}
        inp = ReportInput(scan, analysis.lungs.labels, lv, density=analysis.density.to_dict(),
                          volumes_ml=analysis.volumes_ml, scores=sc.get("levels"), goh_extent=sc.get("goh_extent"),
                          derived_scores=sc.get("derived"), lesion_labels=analysis.lesion_labels,
                          lesion_summary=analysis.lesions, heatmap_pngs=analysis.extra.get("heatmap_pngs"),
                          warnings=analysis.warnings, model_cards=analysis.models, timings=analysis.timings_s,
                          title="sscild report")
        files["report"] = write_report(inp, out, show_phi=show_phi)
    return files


def cohort_row(analysis: Analysis) -> dict[str, Any]:
    """One flat row of stable columns for the cohort table."""
    row: dict[str, Any] = {f"lung_volume_{k}_ml": v for k, v in analysis.volumes_ml.items()}
    whole = analysis.density.regions["whole"]
    for k in ("MLA_HU", "SD_HU", "skewness", "kurtosis", "HAA_pct", "p10_HU", "p15_HU"):
        row[f"density_{k}"] = whole.get(k)
    if analysis.levels is not None:
        for n in LEVELS:
            row[f"{n}_z_mm"] = analysis.levels.z_mm[n]
            row[f"{n}_confidence"] = analysis.levels.confidence[n]
    for n, e in (analysis.extra.get("levels_lnet") or {}).items():
        row[f"{n}_z_mm_lnet"] = e["z_mm"]
    if analysis.scores:
        for n, s in (analysis.scores.get("levels") or {}).items():
            for p in ("TOT", "GG", "RET"):
                row[f"{n}_{p}"] = s.get(p)
        row["goh_extent"] = analysis.scores.get("goh_extent")
        row["goh_stage"] = analysis.scores.get("goh_stage")
    if analysis.lesions and "whole" in analysis.lesions:
        for k, v in analysis.lesions["whole"].items():
            if isinstance(v, (int, float)):
                row[f"lesions_{k}"] = v
    row["n_warnings"] = len(analysis.warnings)
    for k, v in analysis.timings_s.items():
        row[f"time_{k}_s"] = v
    return row


def process_scan(scan_id: str, path: str, outdir: Path, options: Mapping[str, Any]) -> dict[str, Any]:
    """Batch worker: read, analyse, write the folder, return the cohort row (errors propagate to the caller)."""
    from .io import load_ct

    t0 = time.perf_counter()
    scan = load_ct(path)
    t_read = time.perf_counter() - t0
    a = analyze(scan, device=options.get("device", "cpu"), options=options)
    write_outputs(a, scan, outdir, show_phi=bool(options.get("show_phi", False)))
    row = cohort_row(a)
    row["time_read_s"] = round(t_read, 3)
    return row


# --------------------------------------------------------------------------------------------
# the demo
# --------------------------------------------------------------------------------------------
def lesions_vs_truth_png(scan: CTScan, analysis: Analysis, truth_lesions: np.ndarray, path: Path) -> Path:
    """The level slices with the U-Net's lesions (top) and the phantom's true lesions (bottom): GG yellow, RET red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    ks = [(n, scan.slice_at_z(analysis.levels.z_mm[n])) for n in LEVELS
          if analysis.levels is not None and analysis.levels.z_mm[n] is not None]
    ks = [(n, k) for n, k in ks if k is not None]
    cmap = ListedColormap(["#f2c500", "#d7191c"])
    fig, axes = plt.subplots(2, max(1, len(ks)), figsize=(3.2 * max(1, len(ks)), 6.6), squeeze=False)
    for j, (n, k) in enumerate(ks):
        for i, (lab, who) in enumerate(((analysis.lesion_labels, "U-Net"), (truth_lesions, "truth"))):
            ax = axes[i, j]
            ax.imshow(scan.hu[k], cmap="gray", vmin=-1200, vmax=200)
            les = np.ma.masked_where(lab[k] < 2, lab[k] - 2)
            ax.imshow(les, cmap=cmap, vmin=0, vmax=1, alpha=0.55, interpolation="nearest")
            ax.set_title(f"{n} {who}", fontsize=9)
            ax.axis("off")
    fig.suptitle("lesions: ground glass (yellow), reticulation (red)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    return path


def run_demo(outdir: str | Path, *, seed: int = 3, extent: float | None = 25.0, size: str = "medium",
             quiet: bool = True) -> dict[str, Any]:
    """Make a phantom patient, write it as DICOM, read it back, analyse it, compare with the truth.

    Returns a summary dict (measured vs true) and writes the analysis folder into ``outdir`` (the phantom's
    files go to ``outdir/phantom``).
    """
    from .evaluate import dice
    from .io import load_ct
    from .phantom import make_phantom, write_phantom

    out = Path(outdir)
    ph_scan, truth = make_phantom(seed, size=size, extent=extent)
    write_phantom(ph_scan, truth, out / "phantom", fmt="dicom")
    t0 = time.perf_counter()
    scan = load_ct(out / "phantom" / "dicom")
    t_read = time.perf_counter() - t0
    a = analyze(scan, quiet=quiet)
    write_outputs(a, scan, out)
    summary: dict[str, Any] = {
        "seed": seed, "shape_zyx": list(scan.shape), "read_s": round(t_read, 3), "timings_s": a.timings_s,
        "lung_dice": dice(a.lungs.labels > 0, truth.lungs > 0),
        "right_dice": dice(a.lungs.labels == 1, truth.lungs == 1),
        "left_dice": dice(a.lungs.labels == 2, truth.lungs == 2),
        "volumes_ml": {"measured": a.volumes_ml,
                       "true": {"right": truth.volumes_ml["right"], "left": truth.volumes_ml["left"]}},
        "levels_mm": {n: {"measured": a.levels.z_mm[n] if a.levels else None, "true": truth.levels_z[n]}
                      for n in LEVELS},
        "haa_pct": a.density.regions["whole"]["HAA_pct"], "true_extent_pct": truth.extent,
    }
    if a.scores is not None:
        lv = a.scores["levels"]
        true_ext = float(np.mean([truth.level_scores[n]["TOT"] for n in LEVELS]))
        summary["scores"] = {n: {p: {"measured": lv[n].get(p), "true": truth.level_scores[n][p]}
                                 for p in ("TOT", "GG", "RET")} for n in LEVELS}
        summary["goh_extent"] = {"measured": a.scores["goh_extent"], "true": true_ext}
    if a.lesion_labels is not None:
        from .lesions import dice_table

        summary["lesions_png"] = str(lesions_vs_truth_png(scan, a, truth.lesions, out / "lesions_vs_truth.png").name)
        summary["lesions"] = {"dice": dice_table(a.lesion_labels, truth.lesions),
                              "involvement_pct": {"measured": a.lesions["whole"]["involvement_pct"],
                                                  "true": truth.extent["TOT"]}}
    write_json(out / "demo_summary.json", summary)
    return summary
