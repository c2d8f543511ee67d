"""The statistics the literature uses to judge CT scoring, level placement, segmentation and outcome models.

Every statistic comes from a library (scikit-learn, pingouin, scipy.stats, statsmodels); this module only
shapes inputs and outputs.

CSV formats read by ``sscild evaluate``:

- scores, long: ``scan_id, level, TOT, GG, RET`` (level "L1".."L5"); or wide: ``scan_id, L1_TOT, L1_GG, ...``
- levels: ``scan_id, L1, L2, L3, L4, L5`` (world z in mm)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from .errors import ConfigError

PATTERNS = ("TOT", "GG", "RET")
LEVELS = ("L1", "L2", "L3", "L4", "L5")
LESION_CLASSES = {"normal": 1, "ground_glass": 2, "reticulation": 3}


def _pair(a: Sequence[float], b: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(a, float).ravel(), np.asarray(b, float).ravel()
    if x.shape != y.shape:
        raise ConfigError(f"predictions ({x.size}) and truth ({y.size}) differ in length")
    ok = np.isfinite(x) & np.isfinite(y)
    return x[ok], y[ok]


def mae(pred: Sequence[float], truth: Sequence[float]) -> tuple[float, float]:
    """Mean absolute error and its standard deviation (ddof=1).

    >>> mae([1, 2, 4], [1, 3, 1])
    (1.3333333333333333, 1.5275252316519468)
    """
    x, y = _pair(pred, truth)
    e = np.abs(x - y)
    return float(e.mean()), float(e.std(ddof=1)) if e.size > 1 else 0.0


def score_categories(x: Sequence[float], step: float = 5.0) -> np.ndarray:
    """Percentages to categories 0, 5, ..., 100 (rounded to the nearest step; 21 classes for step 5)."""
    v = np.clip(np.asarray(x, float), 0, 100)
    return (np.floor(v / step + 0.5) * step).astype(int)


def weighted_kappa(pred: Sequence[float], truth: Sequence[float], step: float = 5.0) -> float:
    """Cohen's linearly weighted kappa on 5 % categories 0..100 (all categories as labels)."""
    from sklearn.metrics import cohen_kappa_score

    x, y = _pair(pred, truth)
    labels = list(range(0, 101, int(step)))
    return float(cohen_kappa_score(score_categories(y, step), score_categories(x, step), weights="linear",
                                   labels=labels))


@dataclass(frozen=True)
class ICC:
    value: float
    ci_low: float
    ci_high: float


def icc(pred: Sequence[float], truth: Sequence[float]) -> ICC:
    """ICC(2,1): two-way random effects, absolute agreement, single rater (pingouin's "ICC2"), with 95 % CI."""
    import pingouin as pg

    x, y = _pair(pred, truth)
    n = x.size
    if n < 3:
        raise ConfigError(f"ICC needs at least 3 paired values, got {n}")
    df = pd.DataFrame({"target": np.r_[np.arange(n), np.arange(n)], "rater": ["pred"] * n + ["truth"] * n,
                       "score": np.r_[x, y]})
    t = pg.intraclass_corr(df, targets="target", raters="rater", ratings="score").set_index("Type")
    # pingouin >= 0.7 names it ICC(A,1) (absolute agreement, single rater); older versions ICC2
    row = t.loc["ICC(A,1)"] if "ICC(A,1)" in t.index else t.loc["ICC2"]
    lo, hi = row["CI95"] if "CI95" in row.index else row["CI95%"]
    return ICC(float(row["ICC"]), float(lo), float(hi))


def paired_tests(err_a: Sequence[float], err_b: Sequence[float]) -> dict[str, float]:
    """Wilcoxon signed-rank and paired t-test between two methods' absolute errors (p-values)."""
    from scipy import stats

    a, b = _pair(err_a, err_b)
    a, b = np.abs(a), np.abs(b)
    w = stats.wilcoxon(a, b) if np.any(a != b) else None
    t = stats.ttest_rel(a, b)
    return {"wilcoxon_p": float(w.pvalue) if w is not None else 1.0, "ttest_p": float(t.pvalue),
            "mean_diff": float((a - b).mean())}


def bland_altman(pred: Sequence[float], truth: Sequence[float]) -> dict[str, float]:
    """Bias (mean pred - truth), SD of the differences and 95 % limits of agreement."""
    x, y = _pair(pred, truth)
    d = x - y
    sd = float(d.std(ddof=1))
    return {"mean_diff": float(d.mean()), "sd": sd, "loa_low": float(d.mean() - 1.96 * sd),
            "loa_high": float(d.mean() + 1.96 * sd)}


def bland_altman_plot(pred: Sequence[float], truth: Sequence[float], path, title: str = "") -> None:
    """Bland-Altman plot (statsmodels' mean_diff_plot) as a PNG, written atomically."""
    from matplotlib.figure import Figure
    from statsmodels.graphics.agreement import mean_diff_plot

    from .figures import save_png

    x, y = _pair(pred, truth)
    fig = Figure(figsize=(5, 4), dpi=100)
    ax = fig.subplots()
    mean_diff_plot(x, y, ax=ax)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    save_png(fig, path)


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice coefficient of two masks; 1.0 when both are empty (nothing to find, nothing found)."""
    p, t = np.asarray(pred, bool), np.asarray(truth, bool)
    s = int(p.sum()) + int(t.sum())
    return 1.0 if s == 0 else float(2.0 * np.logical_and(p, t).sum() / s)


def dice_per_class(pred: np.ndarray, truth: np.ndarray, classes: Mapping[str, int] = LESION_CLASSES,
                   total_lesion: Sequence[int] = (2, 3), voxel_ml: float | None = None) -> dict[str, float]:
    """Dice per class, of the total lesion (union of ``total_lesion`` classes), and volume errors (mL)."""
    out = {name: dice(pred == v, truth == v) for name, v in classes.items()}
    out["total_lesion"] = dice(np.isin(pred, total_lesion), np.isin(truth, total_lesion))
    if voxel_ml is not None:
        for name, v in classes.items():
            out[f"{name}_volume_error_ml"] = float(((pred == v).sum() - (truth == v).sum()) * voxel_ml)
    return out


def spearman(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, int]:
    """Spearman rho, p and n over the pairs where both are finite."""
    from scipy import stats

    a, b = _pair(x, y)
    if a.size < 3:
        return float("nan"), float("nan"), int(a.size)
    r = stats.spearmanr(a, b)
    return float(r.statistic), float(r.pvalue), int(a.size)


def auc_ci(y_true: Sequence[int], y_score: Sequence[float], n_boot: int = 2000, seed: int = 0,
           alpha: float = 0.05) -> tuple[float, float, float]:
    """ROC AUC with a stratified bootstrap (1 - alpha) CI (percentile method)."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y_true).astype(int).ravel()
    s = np.asarray(y_score, float).ravel()
    pos, neg = np.nonzero(y == 1)[0], np.nonzero(y == 0)[0]
    if len(pos) == 0 or len(neg) == 0:
        raise ConfigError("AUC needs both classes in y_true")
    auc = float(roc_auc_score(y, s))
    rng = np.random.default_rng(seed)
    boots = np.empty(n_boot)
    for i in range(n_boot):
        idx = np.r_[rng.choice(pos, len(pos)), rng.choice(neg, len(neg))]
        boots[i] = roc_auc_score(y[idx], s[idx])
    lo, hi = np.percentile(boots, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return auc, float(lo), float(hi)


# --------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------
def read_scores_csv(path) -> pd.DataFrame:
    """Scores as a long table ``scan_id, level, TOT, GG, RET`` (long or wide CSV accepted)."""
    df = pd.read_csv(path, dtype={"scan_id": str})
    if "scan_id" not in df.columns:
        raise ConfigError(f"{path}: needs a scan_id column; found {list(df.columns)}")
    if "level" in df.columns:
        missing = [c for c in PATTERNS if c not in df.columns]
        if missing:
            raise ConfigError(f"{path}: long format needs columns {list(PATTERNS)}; missing {missing}")
        return df[["scan_id", "level", *PATTERNS]]
    rows = []
    for n in LEVELS:
        cols = [f"{n}_{p}" for p in PATTERNS]
        if all(c in df.columns for c in cols):
            part = df[["scan_id", *cols]].copy()
            part.columns = ["scan_id", *PATTERNS]
            part.insert(1, "level", n)
            rows.append(part)
    if not rows:
        raise ConfigError(f"{path}: expected long columns scan_id,level,TOT,GG,RET or wide L1_TOT,...; found "
                          f"{list(df.columns)}")
    return pd.concat(rows, ignore_index=True)


def per_level_table(pred: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """MAE +- SD, weighted kappa and ICC(2,1) per level and pattern, and over all levels (like Jia et al. Table 5)."""
    m = pred.merge(truth, on=["scan_id", "level"], suffixes=("_pred", "_true"))
    if m.empty:
        raise ConfigError("no (scan_id, level) pairs in common between predictions and truth")
    rows = []
    for lv in [*sorted(m["level"].unique()), "all"]:
        sub = m if lv == "all" else m[m["level"] == lv]
        for p in PATTERNS:
            a, b = sub[f"{p}_pred"], sub[f"{p}_true"]
            mu, sd = mae(a, b)
            k = weighted_kappa(a, b)
            ic = icc(a, b).value if len(sub) >= 3 else float("nan")
            rows.append({"level": lv, "pattern": p, "n": len(sub), "MAE": mu, "MAE_SD": sd, "kappa": k, "ICC": ic})
    return pd.DataFrame(rows)


def levels_table(pred, truth) -> pd.DataFrame:
    """Level position errors per level (L1..L5): n, MAE +- SD (mm), max, ICC(A,1). Inputs: CSV paths or frames
    with ``scan_id`` and ``L1``..``L5`` (world z, mm)."""
    def _read(x):
        df = x if isinstance(x, pd.DataFrame) else pd.read_csv(x, dtype={"scan_id": str})
        missing = [c for c in ("scan_id", *LEVELS) if c not in df.columns]
        if missing:
            raise ConfigError(f"levels table needs scan_id and L1..L5 (world z, mm); missing {missing}")
        return df
    m = _read(pred).merge(_read(truth), on="scan_id", suffixes=("_pred", "_true"))
    if m.empty:
        raise ConfigError("no scan_id in common between predictions and truth")
    rows = []
    for n in LEVELS:
        sub = m[[f"{n}_pred", f"{n}_true"]].dropna()
        if sub.empty:
            continue
        a, b = sub[f"{n}_pred"], sub[f"{n}_true"]
        mu, sd = mae(a, b)
        rows.append({"level": n, "n": len(sub), "MAE_mm": mu, "SD_mm": sd, "max_mm": float((a - b).abs().max()),
                     "ICC": icc(a, b).value if len(sub) >= 3 else float("nan")})
    return pd.DataFrame(rows)
