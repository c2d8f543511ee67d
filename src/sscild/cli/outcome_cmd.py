"""`sscild train outcome` and `sscild evaluate outcome`: mortality at 1, 3 and 5 years from CT."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from . import evaluate_app, train_app
from .common import console


def _floats(text: Optional[str]) -> Optional[tuple[float, ...]]:
    from ..errors import ConfigError

    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"--horizons must be numbers separated by commas (years), e.g. 1,3,5; got {text!r}") from None


def _print_table(rows: list[str]) -> None:
    console.print("\n".join(rows), markup=False, highlight=False)


@train_app.command("outcome")
def train_outcome(
    cohort: Optional[Path] = typer.Option(None, "--cohort", help="Cohort CSV: patient_id, scan_id, path, scan_date, "
                                                                 "death_date / last_followup_date (+ lungs_path, "
                                                                 "clinical columns). See sscild.outcome.cohort."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML with optional sections: cohort (path), "
                                                                 "outcome (models, folds, ...), deep (network), "
                                                                 "clinical (column list)."),
    out: Path = typer.Option(Path("outcome_out"), "-o", "--out", help="Output folder."),
    horizons: Optional[str] = typer.Option(None, "--horizons", help="Years, comma separated (default 1,3,5)."),
    folds: Optional[int] = typer.Option(None, "--folds", help="Patient-grouped folds (default 5)."),
    deep: str = typer.Option("none", "--deep", help="Also train a deep model per fold: resnet18, densenet121, swin "
                                                    "or none (slow on CPU: minutes per fold)."),
    clinical: Optional[str] = typer.Option(None, "--clinical", help="Clinical/score columns to use, comma "
                                                                    "separated (default: the known ones present)."),
    extra_images: bool = typer.Option(False, "--extra-images", help="Radiomics on LoG and wavelet images too."),
    radiomics_params: Optional[Path] = typer.Option(None, "--radiomics-params", help="PyRadiomics YAML with an "
                                                    "`sscild: {version: N}` block (default: the shipped "
                                                    "sscild/data/radiomics_params.yaml)."),
    n_boot: Optional[int] = typer.Option(None, "--n-boot", help="Bootstrap resamples of the CIs (default 1000)."),
    workers: int = typer.Option(1, "--workers", help="Processes for radiomics extraction."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the folds, models and bootstraps."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda (deep model)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Cross-validate mortality models per horizon (radiomics + clinical, optional deep model and late fusion);
    write results.csv, predictions.csv, cindex.csv, ROC/calibration/Kaplan-Meier PNGs and summary.json."""
    from ..outcome.models import results_markdown
    from ..outcome.workflow import outcome_run, train_outcome as run_outcome

    run = outcome_run(cohort=cohort, config=config, out=out, deep=deep,
                      overrides={"horizons": _floats(horizons), "n_splits": folds, "seed": seed, "n_boot": n_boot},
                      clinical=[c.strip() for c in clinical.split(",") if c.strip()] if clinical else None,
                      extra_images=extra_images, radiomics_params=radiomics_params, workers=workers, device=device,
                      quiet=quiet)
    done = run_outcome(run)
    for r in done.failed.itertuples():
        console.print(f"  [red]failed[/] {r.scan_id}: {r.reason}")
    for note in done.notes:
        console.print(f"[yellow]{note}[/]")
    res = done.results
    console.print(res.counts.to_string(index=False))
    _print_table(results_markdown(res.table))
    console.print(res.cindex.to_string(index=False))
    console.print(f"written to {out}/ (results.csv, predictions.csv, cindex.csv, PNGs, summary.json)")


@evaluate_app.command("outcome")
def evaluate_outcome(
    pred: Path = typer.Option(..., "--pred", help="Predictions CSV: long (scan_id, horizon_years, p[, model]) or "
                                                 "wide (scan_id, p_1y, p_3y, p_5y); e.g. predictions.csv of "
                                                 "`sscild train outcome`."),
    cohort: Path = typer.Option(..., "--truth", "--cohort", help="Cohort CSV with the dates (labels and censoring "
                                                                 "come from it)."),
    horizons: str = typer.Option("1,3,5", "--horizons", help="Years, comma separated."),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="Folder for results.csv and ROC PNGs."),
    n_boot: int = typer.Option(1000, "--n-boot", help="Bootstrap resamples of the AUC CI."),
) -> None:
    """AUC with bootstrap 95 % CI and calibration of mortality predictions, per horizon and model; scans
    censored before a horizon are left out of it (and counted)."""
    import numpy as np
    import pandas as pd

    from ..errors import ConfigError
    from ..outcome.cohort import prepare_cohort
    from ..outcome.models import evaluate_predictions, plot_roc, predictions_long, results_markdown

    for p in (pred, cohort):
        if not p.exists():
            raise ConfigError(f"{p} does not exist")
    try:
        pr = pd.read_csv(pred, dtype={"scan_id": str})
        co = pd.read_csv(cohort, dtype={"scan_id": str, "patient_id": str})
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        raise ConfigError(f"cannot read the CSVs: {err}") from None
    hz = _floats(horizons)
    co = prepare_cohort(co, where=f"cohort {cohort}")
    res = evaluate_predictions(pr, co, hz, n_boot=n_boot)
    if "auc" in res.columns:
        _print_table(results_markdown(res))
    if "note" in res.columns:
        for r in res[res["note"].notna()].itertuples():
            console.print(f"{r.horizon_years:g} y {r.model}: {r.note}")
    if out is not None:
        from ..outcome.cohort import label_column, label_horizons

        out.mkdir(parents=True, exist_ok=True)
        res.to_csv(out / "results.csv", index=False)
        lab, _ = label_horizons(co, hz)
        pr = predictions_long(pr)
        for h in hz:
            yh = lab.set_index("scan_id")[label_column(h)]
            sub = pr[np.isclose(pr["horizon_years"].astype(float), h)]
            curves = {m: (yh.reindex(g["scan_id"]).to_numpy(float), g["p"].to_numpy(float))
                      for m, g in sub.groupby("model", sort=False)}
            plot_roc(curves, out / f"roc_{h:g}y.png", f"death within {h:g} years")
        console.print(f"written to {out}/ (results.csv, roc_*.png)")
