"""``sscild demo``: a synthetic patient with known truth through the whole pipeline, measured against the truth.

The phantom is written as a DICOM series, read back like any scan, analysed, and the outputs written; the output
folder holds the analysis (as ``sscild analyze`` writes it), the phantom (``phantom/``: the DICOM series and its
truth), ``demo_summary.json`` (measured beside true) and, when the lesion model ran, ``lesions_vs_truth.png``.
Like every output folder it is written all or nothing.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .domain import LEVELS, PATTERNS
from .util import write_json

if TYPE_CHECKING:
    from .phantom import Truth
    from .results import Analysis
    from .settings import AnalysisSettings


def run_demo(outdir: str | Path, *, seed: int = 3, extent: float | None = 25.0, size: str = "medium",
             quiet: bool = True, settings: "AnalysisSettings | None" = None) -> dict[str, Any]:
    """Make a phantom patient, write it as DICOM, read it back, analyse it, compare with the truth.

    Returns the summary (measured vs true) that is also written to ``demo_summary.json``.
    """
    from .io import load_ct
    from .outputs import output_folder, write_files
    from .phantom import make_phantom, write_phantom
    from .pipeline import analyze
    from .settings import AnalysisSettings

    st = settings if settings is not None else AnalysisSettings(quiet=quiet)
    ph_scan, truth = make_phantom(seed, size=size, extent=extent)
    with output_folder(outdir) as (tmp, check):
        write_phantom(ph_scan, truth, tmp / "phantom", fmt="dicom")
        t0 = time.perf_counter()
        scan = load_ct(tmp / "phantom" / "dicom")
        t_read = time.perf_counter() - t0
        a = analyze(scan, st)
        write_files(a, scan, tmp, report=st.report, dicom_seg=st.dicom_seg, show_phi=st.show_phi,
                    warnings=check.warnings)
        summary = demo_summary(a, truth, seed, t_read)
        if a.lesions is not None:
            from .figures import lesions_vs_truth_png

            summary["lesions_png"] = lesions_vs_truth_png(scan, a.levels, a.lesions.labels, truth.lesions,
                                                          tmp / "lesions_vs_truth.png").name
        write_json(tmp / "demo_summary.json", summary)
    return summary


def demo_summary(a: "Analysis", truth: "Truth", seed: int, read_s: float) -> dict[str, Any]:
    """Measured beside true: lung Dice and volumes, level positions, HAA, scores, lesions."""
    from .evaluate import dice

    summary: dict[str, Any] = {
        "seed": seed, "shape_zyx": a.scan_description["shape_zyx"], "read_s": round(read_s, 3),
        "timings_s": a.timings_s,
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
        table = a.scores.table()
        summary["scores"] = {n: {p: {"measured": table[n][p], "true": truth.level_scores[n][p]} for p in PATTERNS}
                             for n in LEVELS}
        summary["goh_extent"] = {"measured": a.scores.goh_extent,
                                 "true": float(np.mean([truth.level_scores[n]["TOT"] for n in LEVELS]))}
    if a.lesions is not None:
        from .lesions import dice_table

        summary["lesions"] = {"dice": dice_table(a.lesions.labels, truth.lesions),
                              "involvement_pct": {"measured": a.lesions.summary["whole"]["involvement_pct"],
                                                  "true": truth.extent["TOT"]}}
    return summary
