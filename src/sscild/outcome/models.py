"""Mortality models and their evaluation: tabular models on radiomics/clinical features, late fusion with deep
models, AUC with bootstrap CI, ROC and calibration plots, Cox proportional hazards with C-index, and
Kaplan-Meier curves by Goh stage.

Everything is cross-validated on patient-grouped folds (:func:`sscild.outcome.cohort.grouped_folds`): one fold
assignment per cohort, shared by every horizon and model, so a patient's scans are never on both sides and the
out-of-fold predictions of different models can be fused. Imputation, scaling and feature selection are steps of
the fitted pipeline, so they are learned inside each training fold only.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from ..errors import ConfigError
from ..evaluate import auc_ci
from ..figures import save_png
from .cohort import HORIZONS, label_column

TABULAR_KINDS = ("logistic", "gbm")


# --------------------------------------------------------------------------------------------
# tabular models
# --------------------------------------------------------------------------------------------
def make_tabular(kind: str = "logistic", *, k_best: int = 20, C: float = 0.1, class_weight: str | None = None,
                 seed: int = 0, n_features: int | None = None, n_keep: int = 0):
    """A scikit-learn pipeline: median imputation, constant-feature removal, scaling, the ``k_best`` features
    by ANOVA F (fitted on the training data it is given), then an L2-penalised logistic regression (``C``) or
    gradient boosting (shallow trees, L2 leaf penalty).

    With ``n_keep`` the last ``n_keep`` of ``n_features`` columns (e.g. clinical ones) skip the selection and
    are always used; only the others compete for the ``k_best`` places.
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.feature_selection import SelectKBest, VarianceThreshold, f_classif
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "logistic":
        clf = LogisticRegression(C=C, class_weight=class_weight, max_iter=5000)
    elif kind == "gbm":
        clf = HistGradientBoostingClassifier(max_iter=150, learning_rate=0.05, max_depth=3, min_samples_leaf=10,
                                             l2_regularization=1.0, class_weight=class_weight, random_state=seed)
    else:
        raise ConfigError(f"model kind {kind!r} is not one of {TABULAR_KINDS}")
    selected = Pipeline([("impute", SimpleImputer(strategy="median")), ("var", VarianceThreshold()),
                         ("scale", StandardScaler()), ("select", SelectKBest(f_classif, k=k_best))])
    if not n_keep:
        return Pipeline([*selected.steps, ("clf", clf)])
    if n_features is None or not 0 < n_keep <= n_features:
        raise ConfigError(f"n_keep={n_keep} needs n_features >= n_keep (got {n_features})")
    kept = Pipeline([("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
                     ("scale", StandardScaler())])
    parts = [("keep", kept, list(range(n_features - n_keep, n_features)))]
    if n_keep < n_features:
        parts.insert(0, ("select", selected, list(range(n_features - n_keep))))
    return Pipeline([("features", ColumnTransformer(parts)), ("clf", clf)])


def _clean(X) -> np.ndarray:
    a = np.asarray(X, float)
    return np.where(np.isfinite(a), a, np.nan)


def out_of_fold(make_model: Callable[[], object], X, y, folds) -> np.ndarray:
    """Out-of-fold probabilities: for each fold, ``make_model()`` fitted on the labelled rows of the other folds
    predicts the labelled rows of that fold. Unlabelled rows (NaN) stay NaN."""
    X, y, folds = _clean(X), np.asarray(y, float), np.asarray(folds)
    if X.ndim == 1:
        X = X[:, None]
    out = np.full(len(y), np.nan)
    lab = ~np.isnan(y)
    for k in np.unique(folds[folds >= 0]):
        tr, te = lab & (folds != k), lab & (folds == k)
        if not te.any():
            continue
        if len(np.unique(y[tr])) < 2:
            raise ConfigError(f"fold {k}: the training folds hold one class only; use fewer folds or a longer "
                              "follow-up (too few deaths for this horizon)")
        m = make_model()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is greater than n_features.*")
            warnings.filterwarnings("ignore", category=RuntimeWarning)
            m.fit(X[tr], y[tr].astype(int))
            out[te] = m.predict_proba(X[te])[:, 1]
    return out


def late_fusion(probabilities: Sequence[np.ndarray], weights: Sequence[float] | None = None) -> np.ndarray:
    """Weighted mean of the models' log-odds, back to a probability (NaN where any input is NaN).

    >>> late_fusion([np.array([0.5, 0.9]), np.array([0.5, 0.1])]).round(3).tolist()
    [0.5, 0.5]
    """
    P = np.clip(np.column_stack([np.asarray(p, float) for p in probabilities]), 1e-6, 1 - 1e-6)
    w = np.ones(P.shape[1]) if weights is None else np.asarray(weights, float)
    z = np.log(P / (1 - P)) @ (w / w.sum())
    return 1 / (1 + np.exp(-z))


# --------------------------------------------------------------------------------------------
# metrics and plots
# --------------------------------------------------------------------------------------------
def calibration(y, p) -> dict[str, float]:
    """Brier score, calibration-in-the-large (mean predicted - observed) and the logistic calibration
    intercept and slope (1 and 0 when perfectly calibrated)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import brier_score_loss

    y, p = np.asarray(y, int), np.clip(np.asarray(p, float), 1e-6, 1 - 1e-6)
    lr = LogisticRegression(C=np.inf if _sk_allows_inf() else 1e6, max_iter=1000)
    lr.fit(np.log(p / (1 - p))[:, None], y)
    return {"brier": float(brier_score_loss(y, p)), "mean_pred_minus_obs": float(p.mean() - y.mean()),
            "cal_intercept": float(lr.intercept_[0]), "cal_slope": float(lr.coef_[0, 0])}


def _sk_allows_inf() -> bool:
    import sklearn

    major, minor = (int(v) for v in sklearn.__version__.split(".")[:2])
    return (major, minor) >= (1, 2)


def binary_metrics(y, p, *, n_boot: int = 1000, seed: int = 0) -> dict[str, float]:
    """n, positives, AUC with stratified bootstrap 95 % CI (:func:`sscild.evaluate.auc_ci`) and calibration,
    over the rows where both ``y`` and ``p`` are finite."""
    y, p = np.asarray(y, float), np.asarray(p, float)
    ok = np.isfinite(y) & np.isfinite(p)
    y, p = y[ok].astype(int), p[ok]
    auc, lo, hi = auc_ci(y, p, n_boot=n_boot, seed=seed)
    return {"n": int(len(y)), "positives": int(y.sum()), "auc": auc, "auc_lo": lo, "auc_hi": hi, **calibration(y, p)}


def _subplots(figsize: tuple[float, float], dpi: int = 100):
    """A figure and its axes without pyplot (the user's matplotlib backend is left alone)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi)
    return fig, fig.subplots()


def _usable_curves(curves: Mapping[str, tuple[np.ndarray, np.ndarray]]):
    """(name, y, p) of each model with its non-finite pairs left out; models whose outcomes are all one class
    are skipped (no curve to draw)."""
    for name, (y, p) in curves.items():
        y, p = np.asarray(y, float), np.asarray(p, float)
        ok = np.isfinite(y) & np.isfinite(p)
        if len(np.unique(y[ok])) >= 2:
            yield name, y[ok], p[ok]


def plot_roc(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path, title: str = "") -> Path:
    """ROC curves of several models (name -> (y, p)) with their AUC in the legend, as a PNG."""
    from sklearn.metrics import roc_auc_score, roc_curve

    fig, ax = _subplots((4.5, 4.5))
    for name, y, p in _usable_curves(curves):
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(y, p):.2f})")
    ax.plot([0, 1], [0, 1], ls=":", c="grey")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=title, xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return save_png(fig, path)


def plot_calibration(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path, title: str = "",
                     n_bins: int = 5) -> Path:
    """Reliability diagram (quantile bins) of several models, as a PNG."""
    from sklearn.calibration import calibration_curve

    fig, ax = _subplots((4.5, 4.5))
    for name, y, p in _usable_curves(curves):
        obs, pred = calibration_curve(y, p, n_bins=n_bins, strategy="quantile")
        ax.plot(pred, obs, marker="o", label=name)
    ax.plot([0, 1], [0, 1], ls=":", c="grey")
    ax.set(xlabel="predicted risk", ylabel="observed proportion", title=title, xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return save_png(fig, path)


# --------------------------------------------------------------------------------------------
# survival
# --------------------------------------------------------------------------------------------
_MIN_TIME = 1.0 / 365.25        # lifelines wants positive durations: a death on the scan day counts as 1 day


def cox_out_of_fold(X, time_years, event, folds, *, penalizer: float = 0.1, n_components: int | None = 10,
                    n_keep: int = 0) -> np.ndarray:
    """Out-of-fold Cox risk (log partial hazard) per row.

    In each training fold: median imputation, scaling, PCA to ``n_components`` (None: no PCA; never more than
    one component per 5 deaths in the fold) and a penalised Cox model (lifelines ``CoxPHFitter(penalizer)``; the
    penalty is raised 10- and 100-fold when the fit does not converge, and the fold's risks are NaN if it still
    does not). The last ``n_keep`` columns (e.g. clinical) skip the PCA and enter the model as they are.
    """
    from lifelines import CoxPHFitter
    from lifelines.exceptions import ConvergenceError
    from sklearn.decomposition import PCA
    from sklearn.feature_selection import VarianceThreshold
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X = _clean(X)
    if X.ndim == 1:
        X = X[:, None]
    t = np.maximum(np.asarray(time_years, float), _MIN_TIME)
    e = np.asarray(event, int)
    folds = np.asarray(folds)
    out = np.full(len(t), np.nan)
    for k in np.unique(folds[folds >= 0]):
        tr, te = folds != k, folds == k
        nsel = X.shape[1] - n_keep
        # about 5 deaths per covariate at least (a rule of thumb against overfitting and non-convergence)
        budget = max(1, int(e[tr].sum()) // 5 - n_keep)
        parts = []
        if nsel > 0:
            steps = [SimpleImputer(strategy="median"), VarianceThreshold(), StandardScaler()]
            n_var = int(np.sum(np.nanvar(X[tr][:, :nsel], axis=0) > 0))
            n_cov = max(1, min(n_var, n_components or n_var, budget))
            if n_cov < n_var:
                steps.append(PCA(n_components=n_cov, random_state=0))
            parts.append(make_pipeline(*steps).fit(X[tr][:, :nsel]))
        if n_keep:
            parts.append(make_pipeline(SimpleImputer(strategy="median", keep_empty_features=True),
                                       VarianceThreshold(), StandardScaler()).fit(X[tr][:, nsel:]))

        def prep(A):
            out_parts = []
            if nsel > 0:
                out_parts.append(parts[0].transform(A[:, :nsel]))
            if n_keep:
                out_parts.append(parts[-1].transform(A[:, nsel:]))
            return np.hstack(out_parts)

        Ztr, Zte = prep(X[tr]), prep(X[te])
        cols = [f"z{i}" for i in range(Ztr.shape[1])]
        d = pd.DataFrame(Ztr, columns=cols).assign(T=t[tr], E=e[tr])
        for pen in (penalizer, max(penalizer, 0.01) * 10, max(penalizer, 0.01) * 100):
            try:
                cph = CoxPHFitter(penalizer=pen)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    cph.fit(d, duration_col="T", event_col="E")
                break
            except ConvergenceError:
                cph = None
        if cph is not None:            # otherwise this fold's risks stay NaN
            out[te] = np.asarray(cph.predict_log_partial_hazard(pd.DataFrame(Zte, columns=cols)), float).ravel()
    return out


def c_index_ci(time_years, event, risk, groups=None, *, n_boot: int = 1000, seed: int = 0,
               alpha: float = 0.05) -> tuple[float, float, float]:
    """Harrell's C-index of ``risk`` (higher = earlier death) with a bootstrap CI that resamples patients
    (``groups``) with all their scans."""
    from lifelines.utils import concordance_index

    t, e, r = np.asarray(time_years, float), np.asarray(event, int), np.asarray(risk, float)
    ok = np.isfinite(t) & np.isfinite(r)
    t, e, r = t[ok], e[ok], r[ok]
    g = np.arange(len(t)) if groups is None else pd.Series(list(groups)).astype(str).to_numpy()[ok]
    if e.sum() == 0:
        raise ConfigError("C-index needs at least one death")
    c = float(concordance_index(t, -r, e))
    pats, inv = np.unique(g, return_inverse=True)
    rows_of = [np.nonzero(inv == i)[0] for i in range(len(pats))]
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        idx = np.concatenate([rows_of[i] for i in rng.integers(0, len(pats), len(pats))])
        if e[idx].sum() == 0:
            continue
        boots.append(concordance_index(t[idx], -r[idx], e[idx]))
    lo, hi = np.percentile(boots, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return c, float(lo), float(hi)


def fit_cox(table: pd.DataFrame, covariates: Sequence[str], *, cluster_col: str | None = "patient_id",
            penalizer: float = 0.0) -> pd.DataFrame:
    """Cox model on all rows (``time_years``, ``event``) with robust (patient-clustered) standard errors:
    hazard ratio per unit of each covariate with 95 % CI and p."""
    from lifelines import CoxPHFitter

    cols = list(covariates) + ["time_years", "event"] + ([cluster_col] if cluster_col else [])
    d = table[cols].copy()
    d[list(covariates)] = d[list(covariates)].apply(pd.to_numeric, errors="coerce")
    d = d.dropna()
    d["time_years"] = d["time_years"].clip(lower=_MIN_TIME)
    cph = CoxPHFitter(penalizer=penalizer)
    cph.fit(d, duration_col="time_years", event_col="event", cluster_col=cluster_col)
    s = cph.summary
    return pd.DataFrame({"HR": s["exp(coef)"], "HR_lo": s["exp(coef) lower 95%"], "HR_hi": s["exp(coef) upper 95%"],
                         "p": s["p"], "n": len(d), "events": int(d["event"].sum())})


def first_scans(table: pd.DataFrame) -> pd.DataFrame:
    """The earliest scan of each patient (one independent row per patient)."""
    return table.sort_values(["patient_id", "scan_date"]).groupby("patient_id", as_index=False).head(1)


def km_by_goh_stage(table: pd.DataFrame, extent_col: str = "goh_extent", path=None, *,
                    fvc_col: str | None = None, horizons: Sequence[float] = HORIZONS) -> dict:
    """Kaplan-Meier survival by Goh stage on each patient's first scan, with a log-rank test.

    Stage: extensive when the ILD extent is above 20 %, limited otherwise; with ``fvc_col`` an extent of 10-30 % is
    staged by FVC < 70 %, Goh's full rule (:func:`sscild.domain.goh_stage`; its "indeterminate" without FVC falls
    back to the 20 % threshold here, so every patient gets a group). Returns per stage the
    patients, deaths, survival at each horizon with 95 % CI, median survival, the log-rank p; writes a PNG
    when ``path`` is given.
    """
    from lifelines import KaplanMeierFitter
    from lifelines.statistics import logrank_test

    from ..domain import GOH_SIMPLE_THRESHOLD, goh_stage

    def stage(x, f):
        st = goh_stage(x, f).stage
        return ("extensive" if x > GOH_SIMPLE_THRESHOLD else "limited") if st == "indeterminate" else st

    if extent_col not in table.columns:
        raise ConfigError(f"no {extent_col} column: Kaplan-Meier by Goh stage needs the ILD extent (%) per scan")
    d = first_scans(table).copy()
    d["stage"] = [stage(float(x) if pd.notna(x) else None, float(f) if fvc_col and pd.notna(f) else None)
                  for x, f in zip(d[extent_col], d[fvc_col] if fvc_col else [None] * len(d))]
    d = d[d["stage"] != "unknown"]
    out: dict = {"extent_column": extent_col, "rule": "extensive if extent > 20 %" +
                 (" (10-30 %: FVC < 70 %)" if fvc_col else ""), "stages": {}}
    draw = path is not None
    if draw:
        fig, ax = _subplots((5, 4))
    for st in ("limited", "extensive"):
        s = d[d["stage"] == st]
        if s.empty:
            out["stages"][st] = {"patients": 0, "deaths": 0}
            continue
        km = KaplanMeierFitter().fit(s["time_years"], s["event"], label=f"{st} (n={len(s)})")
        rec = {"patients": int(len(s)), "deaths": int(s["event"].sum()),
               "median_survival_years": float(km.median_survival_time_)}
        ci = km.confidence_interval_survival_function_
        for h in horizons:
            sv = float(km.survival_function_at_times(h).iloc[0])
            j = ci.index.searchsorted(h, side="right") - 1
            rec[f"survival_{h:g}y"] = sv
            rec[f"survival_{h:g}y_lo"] = float(ci.iloc[max(j, 0), 0])
            rec[f"survival_{h:g}y_hi"] = float(ci.iloc[max(j, 0), 1])
        out["stages"][st] = rec
        if draw:
            km.plot_survival_function(ax=ax, ci_show=True)
    a, b = d[d["stage"] == "limited"], d[d["stage"] == "extensive"]
    if len(a) and len(b):
        out["logrank_p"] = float(logrank_test(a["time_years"], b["time_years"], a["event"], b["event"]).p_value)
    if draw:
        ax.set(xlabel="years from first scan", ylabel="survival", ylim=(0, 1.02),
               title=f"Kaplan-Meier by Goh stage (log-rank p={out.get('logrank_p', float('nan')):.2g})")
        ax.title.set_fontsize(9)
        fig.tight_layout()
        save_png(fig, path)
        out["png"] = str(path)
    return out


# --------------------------------------------------------------------------------------------
# the whole cross-validated comparison
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OutcomeConfig:
    """Settings of :func:`cross_validate_outcome`."""

    horizons: tuple[float, ...] = HORIZONS
    n_splits: int = 5
    seed: int = 0
    kinds: tuple[str, ...] = TABULAR_KINDS
    k_best: int = 20
    C: float = 0.1
    class_weight: str | None = None
    n_boot: int = 1000
    cox_components: int = 10
    cox_penalizer: float = 0.1
    cox: bool = True
    fusion: tuple[str, ...] = ()          # model names fused with every deep model, e.g. ("radiomics/logistic",)

    @classmethod
    def from_dict(cls, d: Mapping | None) -> "OutcomeConfig":
        d = dict(d or {})
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"unknown outcome settings {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
        for k in ("horizons", "kinds", "fusion"):
            if k in d:
                d[k] = tuple(d[k])
        bad = [k for k in d.get("kinds", ()) if k not in TABULAR_KINDS]
        if bad:
            raise ConfigError(f"unknown model kinds {bad}; known: {TABULAR_KINDS}")
        return cls(**d)


@dataclass
class OutcomeResults:
    """What :func:`cross_validate_outcome` produced."""

    table: pd.DataFrame            # one row per horizon x model: n, positives, censored, AUC + CI, calibration
    predictions: pd.DataFrame      # long: scan_id, patient_id, fold, horizon_years, model, y, p
    cindex: pd.DataFrame           # one row per feature set: C-index + CI (out-of-fold Cox)
    counts: pd.DataFrame           # labels per horizon (positives, negatives, censored)
    folds: np.ndarray
    extras: dict = field(default_factory=dict)


def cross_validate_outcome(table: pd.DataFrame, feature_sets: Mapping[str, Sequence[str]],
                           cfg: OutcomeConfig = OutcomeConfig(), *,
                           deep: Mapping[str, np.ndarray] | None = None, folds: np.ndarray | None = None,
                           label_override: Mapping[float, np.ndarray] | None = None,
                           keep: Sequence[str] = ()) -> OutcomeResults:
    """Cross-validate every feature set x model kind per horizon, add deep models and late fusion.

    Parameters
    ----------
    table : cohort rows (``patient_id``, ``scan_id``, ``time_years``, ``event``) joined with the feature columns
    feature_sets : name -> feature columns (e.g. ``{"radiomics": [...], "clinical": ["age"]}``)
    deep : name -> out-of-fold probabilities (N, len(horizons)) computed on the same ``folds``
    folds : fold per row; default :func:`grouped_folds` by patient, stratified on death within the longest horizon
    label_override : horizon -> labels to use instead of the cohort's (e.g. permuted labels for a null test)
    keep : columns that skip feature selection whenever a feature set holds them (e.g. clinical columns, so
        that 100 correlated radiomics features cannot crowd age out of the ``k_best``)
    """
    from .cohort import grouped_folds, label_horizons

    lab, counts = label_horizons(table, cfg.horizons)
    if folds is None:
        strata = lab[label_column(max(cfg.horizons))].fillna(lab["event"]).astype(int)
        folds = grouped_folds(lab["patient_id"], strata, cfg.n_splits, cfg.seed)
    folds = np.asarray(folds)
    for name, cols in feature_sets.items():
        miss = [c for c in cols if c not in lab.columns]
        if miss or not cols:
            raise ConfigError(f"feature set {name!r}: columns {miss[:5] or 'none'} missing from the table")
    rows, preds = [], []
    for j, h in enumerate(cfg.horizons):
        y = np.asarray(label_override[h], float) if label_override and h in label_override else \
            lab[label_column(h)].to_numpy(float)
        n_cens = int(np.isnan(y).sum())
        n_folds = len(np.unique(folds[folds >= 0]))
        n_pos, n_neg = int(np.nansum(y == 1)), int(np.nansum(y == 0))
        if min(n_pos, n_neg) < n_folds:
            rows.append({"horizon_years": h, "model": "all", "n": n_pos + n_neg, "positives": n_pos,
                         "censored": n_cens, "note": f"skipped: {n_pos} deaths and {n_neg} survivors, fewer than "
                                                     f"{n_folds} folds need; follow longer or add patients"})
            continue
        probs: dict[str, np.ndarray] = {}
        for name, cols in feature_sets.items():
            cols = [c for c in cols if c not in keep] + [c for c in cols if c in keep]
            n_keep = sum(c in keep for c in cols)
            X = lab[cols].apply(pd.to_numeric, errors="coerce").to_numpy(float)
            for kind in cfg.kinds:
                mk = (lambda kind=kind, ncol=len(cols), n_keep=n_keep: make_tabular(
                    kind, k_best=max(1, min(cfg.k_best, ncol - n_keep)), C=cfg.C, class_weight=cfg.class_weight,
                    seed=cfg.seed, n_features=ncol, n_keep=n_keep))
                probs[f"{name}/{kind}"] = out_of_fold(mk, X, y, folds)
        for name, P in (deep or {}).items():
            probs[name] = np.asarray(P, float)[:, j] if np.asarray(P).ndim == 2 else np.asarray(P, float)
            for other in cfg.fusion:
                if other in probs:
                    probs[f"fusion({other}+{name})"] = late_fusion([probs[other], probs[name]])
        for name, p in probs.items():
            m = binary_metrics(y, p, n_boot=cfg.n_boot, seed=cfg.seed)
            rows.append({"horizon_years": h, "model": name, "censored": n_cens, **m})
            ok = ~np.isnan(y)
            preds.append(pd.DataFrame({"scan_id": lab["scan_id"].to_numpy()[ok],
                                       "patient_id": lab["patient_id"].to_numpy()[ok], "fold": folds[ok],
                                       "horizon_years": h, "model": name, "y": y[ok].astype(int), "p": p[ok]}))
    cidx = []
    for name, cols in (feature_sets.items() if cfg.cox else ()):
        cols = [c for c in cols if c not in keep] + [c for c in cols if c in keep]
        X = lab[cols].apply(pd.to_numeric, errors="coerce").to_numpy(float)
        r = cox_out_of_fold(X, lab["time_years"], lab["event"], folds, penalizer=cfg.cox_penalizer,
                            n_components=cfg.cox_components, n_keep=sum(c in keep for c in cols))
        ok = np.isfinite(r)
        if int(lab["event"].to_numpy()[ok].sum()) == 0:
            cidx.append({"features": name, "n": int(ok.sum()), "deaths": 0, "c_index": np.nan, "c_lo": np.nan,
                         "c_hi": np.nan, "note": "no death among the scans with a Cox risk"})
            continue
        c, lo, hi = c_index_ci(lab["time_years"], lab["event"], r, lab["patient_id"], n_boot=cfg.n_boot,
                               seed=cfg.seed)
        cidx.append({"features": name, "n": int(ok.sum()), "deaths": int(lab["event"].to_numpy()[ok].sum()),
                     "c_index": c, "c_lo": lo, "c_hi": hi})
    return OutcomeResults(pd.DataFrame(rows), pd.concat(preds, ignore_index=True) if preds else pd.DataFrame(),
                          pd.DataFrame(cidx), counts, folds)


def predictions_long(pred: pd.DataFrame) -> pd.DataFrame:
    """Predictions as a long table ``scan_id, horizon_years, model, p`` from long or wide (``p_1y`` ...) form."""
    if "scan_id" not in pred.columns:
        raise ConfigError(f"predictions need a scan_id column; found {list(pred.columns)}")
    pred = pred.copy()
    pred["scan_id"] = pred["scan_id"].astype(str)
    if "horizon_years" not in pred.columns:
        wide = [c for c in pred.columns if c.startswith("p_") and c.endswith("y")]
        if not wide:
            raise ConfigError("predictions must be long (scan_id, horizon_years, p[, model]) or wide "
                              f"(scan_id, p_1y, p_3y, ...); found {list(pred.columns)}")
        pred = pred.melt(id_vars=[c for c in pred.columns if c not in wide], value_vars=wide,
                         var_name="horizon_years", value_name="p")
        pred["horizon_years"] = pred["horizon_years"].str[2:-1].astype(float)
    if "p" not in pred.columns:
        raise ConfigError(f"long predictions need a p column; found {list(pred.columns)}")
    if "model" not in pred.columns:
        pred["model"] = "model"
    return pred


def evaluate_predictions(pred: pd.DataFrame, cohort: pd.DataFrame, horizons: Sequence[float] = HORIZONS, *,
                         n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """AUC with CI and calibration of predictions against the cohort's censoring-aware labels.

    ``pred`` is long (``scan_id, horizon_years, p`` and optionally ``model``) or wide (``scan_id, p_1y, p_3y``,
    ...). Scans censored before a horizon are left out of it and counted.
    """
    from .cohort import label_horizons

    pred = predictions_long(pred)
    lab, _ = label_horizons(cohort, horizons)
    unknown = set(pred["scan_id"]) - set(lab["scan_id"])
    if unknown:
        raise ConfigError(f"{len(unknown)} predicted scan_id(s) are not in the cohort, e.g. {sorted(unknown)[:3]}")
    rows = []
    for h in horizons:
        yh = lab.set_index("scan_id")[label_column(h)]
        for model, g in pred[np.isclose(pred["horizon_years"].astype(float), h)].groupby("model", sort=False):
            y = yh.reindex(g["scan_id"]).to_numpy(float)
            n_cens = int(np.isnan(y).sum())
            if len(np.unique(y[~np.isnan(y)])) < 2:
                rows.append({"horizon_years": h, "model": model, "n": int((~np.isnan(y)).sum()), "censored": n_cens,
                             "note": "one class only: no AUC"})
                continue
            rows.append({"horizon_years": h, "model": model, "censored": n_cens,
                         **binary_metrics(y, g["p"].to_numpy(float), n_boot=n_boot, seed=seed)})
    return pd.DataFrame(rows)


def results_markdown(table: pd.DataFrame) -> list[str]:
    """Markdown rows of a results table (horizon, model, n, positives, censored, AUC [CI], Brier, slope)."""
    lines = ["| horizon | model | scans (pos.) | censored | AUC [95 % CI] | Brier | cal. slope |",
             "|---|---|---|---|---|---|---|"]
    for r in table.itertuples():
        if not np.isfinite(getattr(r, "auc", np.nan)):
            continue
        lines.append(f"| {r.horizon_years:g} y | {r.model} | {r.n} ({r.positives}) | {r.censored} | "
                     f"{r.auc:.3f} [{r.auc_lo:.3f}, {r.auc_hi:.3f}] | {r.brier:.3f} | {r.cal_slope:.2f} |")
    return lines
