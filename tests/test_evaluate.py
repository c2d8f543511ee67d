"""Statistics against values computed by hand on small examples."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sscild.evaluate import (auc_ci, bland_altman, dice, dice_per_class, icc, mae, paired_tests,
                             per_level_table, score_categories, spearman, weighted_kappa)


def test_mae_and_bland_altman():
    m, sd = mae([10, 20, 30], [12, 17, 30])
    assert m == pytest.approx(5 / 3) and sd == pytest.approx(np.std([2, 3, 0], ddof=1))
    ba = bland_altman([10, 20, 30], [12, 17, 30])          # differences -2, 3, 0
    assert ba["mean_diff"] == pytest.approx(1 / 3)
    assert ba["loa_high"] - ba["loa_low"] == pytest.approx(2 * 1.96 * np.std([-2, 3, 0], ddof=1))


def test_categories_and_linear_weighted_kappa_by_hand():
    assert list(score_categories([0, 2.4, 2.5, 7.6, 97.6, 100])) == [0, 0, 5, 10, 100, 100]
    # two raters on categories 0, 5, 10 (indices 0, 1, 2 of 21): observed pairs
    truth = [0, 0, 5, 10]
    pred = [0, 5, 5, 10]
    # by hand with linear weights w_ij = 1 - |i-j|/20 over the 21 categories:
    # observed agreement p_o = mean w = (1 + 0.95 + 1 + 1)/4 = 0.9875
    # expected: marginals truth {0:.5, 1:.25, 2:.25}, pred {0:.25, 1:.5, 2:.25}
    rows = {0: .5, 1: .25, 2: .25}
    cols = {0: .25, 1: .5, 2: .25}
    p_e = sum(rows[i] * cols[j] * (1 - abs(i - j) / 20) for i in rows for j in cols)
    expected = (0.9875 - p_e) / (1 - p_e)
    assert weighted_kappa(pred, truth) == pytest.approx(expected)
    assert weighted_kappa(truth, truth) == pytest.approx(1.0)


def test_icc21_against_the_anova_formula():
    x = np.array([[9, 2], [6, 1], [8, 4], [7, 1], [10, 5]], float)   # 5 targets x 2 raters
    n, k = x.shape
    gm = x.mean()
    msr = k * ((x.mean(1) - gm) ** 2).sum() / (n - 1)
    msc = n * ((x.mean(0) - gm) ** 2).sum() / (k - 1)
    sse = ((x - x.mean(1, keepdims=True) - x.mean(0, keepdims=True) + gm) ** 2).sum()
    mse = sse / ((n - 1) * (k - 1))
    icc21 = (msr - mse) / (msr + (k - 1) * mse + k * (msc - mse) / n)
    r = icc(x[:, 0], x[:, 1])
    assert r.value == pytest.approx(icc21)
    assert r.ci_low < r.value < r.ci_high


def test_dice_by_hand():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[0, :3] = True          # 3 pixels
    b[0, 1:] = True          # 3 pixels, overlap 2
    assert dice(a, b) == pytest.approx(2 * 2 / 6)
    assert dice(np.zeros(3, bool), np.zeros(3, bool)) == 1.0
    lab_t = np.array([0, 1, 2, 2, 3, 3])
    lab_p = np.array([0, 1, 2, 3, 3, 3])
    d = dice_per_class(lab_p, lab_t, voxel_ml=0.5)
    assert d["ground_glass"] == pytest.approx(2 * 1 / 3) and d["reticulation"] == pytest.approx(2 * 2 / 5)
    assert d["total_lesion"] == 1.0 and d["reticulation_volume_error_ml"] == 0.5


def test_spearman_by_hand():
    rho, p, n = spearman([1, 2, 3, 4, 5], [10, 20, 30, 40, 50])
    assert rho == pytest.approx(1.0) and n == 5
    rho, _, _ = spearman([1, 2, 3, 4, 5], [5, 4, 3, 2, 1])
    assert rho == pytest.approx(-1.0)
    rho, _, n = spearman([1, 2, 3, np.nan], [1, 3, 2, 4])    # NaN pairs dropped; d^2 = 0+1+1 -> 1 - 6*2/(3*8)
    assert n == 3 and rho == pytest.approx(0.5)


def test_auc_ci():
    y = np.r_[np.zeros(30), np.ones(30)]
    auc, lo, hi = auc_ci(y, np.r_[np.zeros(30), np.ones(30)], n_boot=200)
    assert (auc, lo, hi) == (1.0, 1.0, 1.0)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    s = y * 1.0 + rng.normal(0, 1.2, 400)       # true AUC = Phi(1 / (1.2 * sqrt 2)) ~ 0.72
    auc, lo, hi = auc_ci(y, s, n_boot=500)
    assert lo < 0.72 < hi and hi - lo < 0.15


def test_paired_tests_and_level_table():
    rng = np.random.default_rng(1)
    truth = pd.DataFrame({"scan_id": np.repeat([f"s{i}" for i in range(8)], 5), "level": ["L1", "L2", "L3", "L4", "L5"] * 8})
    for p in ("TOT", "GG", "RET"):
        truth[p] = rng.uniform(0, 60, len(truth)).round()
    pred = truth.copy()
    for p in ("TOT", "GG", "RET"):
        pred[p] = (truth[p] + rng.normal(0, 3, len(truth))).clip(0, 100)
    t = per_level_table(pred, truth)
    assert set(t["level"]) == {"L1", "L2", "L3", "L4", "L5", "all"}
    row = t[(t.level == "all") & (t.pattern == "TOT")].iloc[0]
    assert row["n"] == 40 and row["MAE"] == pytest.approx(mae(pred["TOT"], truth["TOT"])[0])
    assert row["ICC"] > 0.9
    r = paired_tests(np.abs(pred["TOT"] - truth["TOT"]), np.abs(pred["TOT"] + 10 - truth["TOT"]))
    assert r["wilcoxon_p"] < 0.01 and r["mean_diff"] < 0
