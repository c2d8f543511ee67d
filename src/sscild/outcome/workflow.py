"""``sscild train outcome`` as library steps: settings from the options and a YAML config, features of the cohort,
the optional deep model per fold, cross-validation and the files written. The command line only parses and prints.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

from ..errors import ConfigError
from .models import OutcomeConfig, OutcomeResults

CONFIG_SECTIONS = ("cohort", "outcome", "deep", "clinical")


@dataclass(frozen=True)
class OutcomeRun:
    """Everything one ``train outcome`` run needs, checked."""

    cohort: Path
    out: Path
    cfg: OutcomeConfig
    clinical: Optional[Sequence[str]] = None
    deep: str = "none"
    deep_settings: dict = field(default_factory=dict)
    extra_images: bool = False
    radiomics_params: Optional[Path] = None
    workers: int = 1
    device: str = "cpu"
    quiet: bool = False


def outcome_run(*, cohort: Optional[Path], config: Optional[Path], out: Path, overrides: dict[str, Any],
                deep: str = "none", clinical: Optional[Sequence[str]] = None, **kw) -> OutcomeRun:
    """The run's settings: the YAML ``config`` (sections cohort, outcome, deep, clinical; cohort relative to the
    config file) with the command-line ``overrides`` of the outcome section (horizons, n_splits, seed, n_boot)."""
    from ..config import check_keys, read_yaml

    conf = check_keys(read_yaml(config), CONFIG_SECTIONS, str(config)) if config is not None else {}
    cohort_path = cohort or (Path(config).parent / conf["cohort"] if conf.get("cohort") else None)
    if cohort_path is None:
        raise ConfigError("give --cohort C.csv (or `cohort:` in the --config YAML)")
    ocfg = {**dict(conf.get("outcome") or {}), **{k: v for k, v in overrides.items() if v is not None}}
    if deep != "none":
        ocfg.setdefault("fusion", ["radiomics/logistic"])
    return OutcomeRun(Path(cohort_path), Path(out), OutcomeConfig.from_dict(ocfg),
                      clinical=list(clinical) if clinical else conf.get("clinical"), deep=deep,
                      deep_settings=dict(conf.get("deep") or {}), **kw)


@dataclass
class OutcomeOutput:
    """What a run produced (beside its files)."""

    results: OutcomeResults
    failed: pd.DataFrame
    kaplan_meier: Any = None
    notes: list[str] = field(default_factory=list)


def cohort_features(df: pd.DataFrame, run: OutcomeRun) -> tuple[pd.DataFrame, dict, list, pd.DataFrame]:
    """Radiomics of every scan (cached in ``out/cache``), joined to the cohort; the feature sets to compare."""
    from .cohort import feature_columns
    from .radiomics import extract_cohort, feature_groups

    feats, status = extract_cohort(df, run.out / "cache" / "radiomics", workers=run.workers,
                                   extra_images=run.extra_images, params_path=run.radiomics_params, quiet=run.quiet)
    failed = status[status["status"] != "done"]
    if len(failed):
        failed.to_csv(run.out / "failures.csv", index=False)
    table = df.merge(feats, left_on="scan_id", right_index=True, how="inner")
    if table.empty:
        raise ConfigError("no scan gave features; see failures.csv")
    groups = feature_groups(feats.columns)
    sets = {"radiomics": groups["radiomics"] + groups["density"] + groups["lesion"]}
    cl = feature_columns(table, run.clinical)
    if cl:
        sets["clinical"] = cl
        sets["radiomics+clinical"] = sets["radiomics"] + cl
    return table, sets, cl, failed


def deep_predictions(table: pd.DataFrame, run: OutcomeRun) -> tuple[dict | None, np.ndarray | None]:
    """Out-of-fold probabilities of the deep model (one network per fold) and the folds; the network trained on
    every scan is saved as a bundle in ``out/deep_<arch>``."""
    if run.deep == "none":
        return None, None
    from ..util import pick_device
    from .cohort import grouped_folds, label_column, label_horizons
    from .deep import DeepConfig, deep_out_of_fold, prepare_volumes, save_deep, train_deep

    cfg = run.cfg
    dcfg = DeepConfig.from_dict({**run.deep_settings, "arch": run.deep, "device": pick_device(run.device),
                                 "seed": cfg.seed})
    lab, _ = label_horizons(table, cfg.horizons)
    strata = lab[label_column(max(cfg.horizons))].fillna(lab["event"]).astype(int)
    folds = grouped_folds(lab["patient_id"], strata, cfg.n_splits, cfg.seed)
    vols, _ = prepare_volumes(table, dcfg, run.out / "cache" / "volumes", quiet=run.quiet)
    y = lab[[label_column(h) for h in cfg.horizons]].to_numpy(float)
    oof, _ = deep_out_of_fold(vols, y, folds, dcfg, quiet=run.quiet)
    ok = np.isfinite(vols.reshape(len(vols), -1)).all(axis=1)
    final, hist = train_deep(vols[ok], y[ok], dcfg, quiet=run.quiet)
    save_deep(final, dcfg, run.out / f"deep_{run.deep}", cfg.horizons,
              {"trained_on": f"{int(ok.sum())} scans of {run.cohort.name}", "final_loss": hist[-1]["loss"]})
    return {f"deep/{run.deep}": oof}, folds


def write_outcome_files(res: OutcomeResults, table: pd.DataFrame, run: OutcomeRun, sets: dict,
                        failed: pd.DataFrame) -> Any:
    """results/predictions/cindex/counts CSVs, ROC and calibration PNGs per horizon, Kaplan-Meier by Goh stage
    (when an extent column exists) and summary.json; returns the Kaplan-Meier summary (or None)."""
    from ..util import write_json
    from .models import km_by_goh_stage, plot_calibration, plot_roc

    out, cfg = run.out, run.cfg
    for name in ("table", "predictions", "cindex", "counts"):
        getattr(res, name).to_csv(out / f"{'results' if name == 'table' else name}.csv", index=False)
    for h in cfg.horizons:
        p = res.predictions[res.predictions["horizon_years"] == h] if len(res.predictions) else res.predictions
        if p.empty:
            continue
        curves = {m: (g["y"].to_numpy(), g["p"].to_numpy()) for m, g in p.groupby("model", sort=False)}
        plot_roc(curves, out / f"roc_{h:g}y.png", f"death within {h:g} years")
        plot_calibration(curves, out / f"calibration_{h:g}y.png", f"death within {h:g} years")
    ext_col = next((c for c in ("goh_extent", "lesion_extent_pct") if c in table.columns), None)
    km = km_by_goh_stage(table, ext_col, out / "km_goh_stage.png", horizons=cfg.horizons) if ext_col else None
    write_json(out / "summary.json", {"cohort": run.cohort.name, "config": cfg.__dict__,
                                      "feature_sets": {k: len(v) for k, v in sets.items()},
                                      "counts": res.counts.to_dict("records"), "cindex": res.cindex.to_dict("records"),
                                      "failed_scans": int(len(failed)), "kaplan_meier": km})
    return km


def train_outcome(run: OutcomeRun) -> OutcomeOutput:
    """Cross-validate mortality models per horizon on the cohort (radiomics + clinical, optional deep model and
    late fusion) and write the results into ``run.out``."""
    from .cohort import read_cohort
    from .models import cross_validate_outcome

    df = read_cohort(run.cohort)
    run.out.mkdir(parents=True, exist_ok=True)
    table, sets, cl, failed = cohort_features(df, run)
    deep_probs, folds = deep_predictions(table, run)
    res = cross_validate_outcome(table, sets, run.cfg, deep=deep_probs, folds=folds, keep=cl)
    km = write_outcome_files(res, table, run, sets, failed)
    notes = [] if km is not None else ["no goh_extent column and no lesion maps: Kaplan-Meier by Goh stage skipped"]
    if "note" in res.table.columns:
        notes = [f"{r.horizon_years:g} y: {r.note}" for r in res.table[res.table["note"].notna()].itertuples()] + notes
    return OutcomeOutput(res, failed, km, notes)
