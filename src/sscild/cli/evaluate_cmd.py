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
