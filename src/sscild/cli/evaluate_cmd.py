"""`sscild evaluate scores|levels`: compare predictions with truth (CSV) and print/write the statistics."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from . import evaluate_app
from .common import console


def _check(*paths: Path) -> None:
    from ..errors import InputNotFoundError

    for p in paths:
        if p is not None and not p.exists():
            raise InputNotFoundError(f"{p} does not exist; give the path of a CSV file")


@evaluate_app.command("scores")
def evaluate_scores(
    pred: Path = typer.Option(..., "--pred", help="Predicted scores CSV (scan_id, level, TOT, GG, RET; or wide "
                                                   "L1_TOT, ...)."),
    truth: Path = typer.Option(..., "--truth", help="Reference scores CSV, same format."),
    other: Optional[Path] = typer.Option(None, "--other", help="A second method's predictions: Wilcoxon and paired "
                                                                "t-test of the absolute errors."),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="Folder for table.csv and Bland-Altman PNGs."),
) -> None:
    """Per-level MAE +- SD, weighted kappa (5 % categories), ICC(A,1), Bland-Altman, like Jia et al. Table 5."""
    from ..evaluate import bland_altman, bland_altman_plot, paired_tests, per_level_table, read_scores_csv

    _check(pred, truth, other)
    p, t = read_scores_csv(pred), read_scores_csv(truth)
    table = per_level_table(p, t)
    console.print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    m = p.merge(t, on=["scan_id", "level"], suffixes=("_pred", "_true"))
    for pat in ("TOT", "GG", "RET"):
        ba = bland_altman(m[f"{pat}_pred"], m[f"{pat}_true"])
        console.print(f"Bland-Altman {pat}: bias {ba['mean_diff']:.2f}, limits {ba['loa_low']:.2f} .. {ba['loa_high']:.2f}")
    if other is not None:
        o = read_scores_csv(other).merge(t, on=["scan_id", "level"], suffixes=("_pred", "_true"))
        mm = m.merge(o, on=["scan_id", "level"], suffixes=("_a", "_b"))
        for pat in ("TOT", "GG", "RET"):
            ea = (mm[f"{pat}_pred_a"] - mm[f"{pat}_true_a"]).abs()
            eb = (mm[f"{pat}_pred_b"] - mm[f"{pat}_true_b"]).abs()
            console.print(f"{pat} |error| pred vs other: {paired_tests(ea, eb)}")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        table.to_csv(out / "table.csv", index=False)
        for pat in ("TOT", "GG", "RET"):
            bland_altman_plot(m[f"{pat}_pred"], m[f"{pat}_true"], out / f"bland_altman_{pat}.png", title=pat)
        console.print(f"written {out}/table.csv and bland_altman_*.png")


@evaluate_app.command("levels")
def evaluate_levels(
    pred: Path = typer.Option(..., "--pred", help="Predicted levels CSV: scan_id, L1..L5 (world z, mm)."),
    truth: Path = typer.Option(..., "--truth", help="Reference levels CSV, same format."),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="Write table.csv here."),
) -> None:
    """Per level: MAE +- SD (mm), max error, ICC(A,1)."""
    from ..evaluate import levels_table

    _check(pred, truth)
    table = levels_table(pred, truth)
    console.print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        table.to_csv(out / "table.csv", index=False)


@evaluate_app.command("segmentation")
def evaluate_segmentation(
    pred: Path = typer.Option(..., "--pred", help="Predicted lesion label map (lesions.nii.gz: 0..3)."),
    truth: Path = typer.Option(..., "--truth", help="Reference label map (NIfTI 0..3, or 3D Slicer .seg.nrrd)."),
    image: Path = typer.Option(..., "--image", help="The CT (gives the grid and voxel volume)."),
    name_map: Optional[Path] = typer.Option(None, "--names", help="YAML mapping segment-name regex -> class "
                                                                    "(1 normal, 2 GG, 3 RET) for .seg.nrrd."),
) -> None:
    """Dice per class (GG, RET, total lesion, normal lung) and lesion volume error (mL)."""
    import yaml

    from ..io import load_ct
    from ..lesions import dice_table, read_label_map

    _check(pred, truth, image, name_map)
    scan = load_ct(image)
    nm = yaml.safe_load(name_map.read_text()) if name_map else None
    p, t = read_label_map(pred, scan), read_label_map(truth, scan, nm)
    d = dice_table(p, t)
    v = scan.voxel_volume_ml
    for k, val in d.items():
        console.print(f"Dice {k}: {val:.3f}")
    for name, sel in (("GG", lambda a: a == 2), ("RET", lambda a: a == 3), ("lesion", lambda a: a >= 2)):
        vp, vt = sel(p).sum() * v, sel(t).sum() * v
        console.print(f"{name} volume: predicted {vp:.1f} mL, reference {vt:.1f} mL, error {vp - vt:+.1f} mL")


@evaluate_app.command("correlation")
def evaluate_correlation(
    measurements: Path = typer.Option(..., "--measurements", help="CSV with scan_id and measurements (e.g. the "
                                                                  "cohort.csv of `sscild batch`)."),
    pft: Path = typer.Option(..., "--with", help="Lung-function CSV: scan_id and FVC_pct, DLCO_pct, FEV1, "
                                                 "FEV1_FVC (any of them)."),
    columns: Optional[str] = typer.Option(None, "--columns", help="Comma-separated measurement columns (default: "
                                                                   "every numeric column)."),
) -> None:
    """Spearman rho and p of measurements against lung function."""
    import pandas as pd

    from ..errors import ConfigError
    from ..evaluate import spearman

    _check(measurements, pft)
    m = pd.read_csv(measurements, dtype={"scan_id": str})
    f = pd.read_csv(pft, dtype={"scan_id": str})
    if "scan_id" not in m.columns or "scan_id" not in f.columns:
        raise ConfigError("both CSVs need a scan_id column")
    tests = [c for c in ("FVC_pct", "DLCO_pct", "FEV1", "FEV1_FVC") if c in f.columns]
    if not tests:
        raise ConfigError(f"{pft}: no lung-function column; expected any of FVC_pct, DLCO_pct, FEV1, FEV1_FVC")
    j = m.merge(f[["scan_id", *tests]], on="scan_id")
    cols = columns.split(",") if columns else [c for c in m.select_dtypes("number").columns if c not in tests]
    missing = [c for c in cols if c not in j.columns]
    if missing:
        raise ConfigError(f"columns {missing} not in {measurements}")
    rows = []
    for c in cols:
        for t in tests:
            rho, p, n = spearman(j[c], j[t])
            rows.append({"measurement": c, "lung_function": t, "n": n, "rho": rho, "p": p})
    console.print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
