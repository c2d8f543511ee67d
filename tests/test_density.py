"""Density metrics against values computed by hand."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from sscild.anatomy import Lungs
from sscild.density import density_metrics, metrics_of
from sscild.scan import CTScan


def test_metrics_by_hand():
    v = np.array([-1000, -900, -850, -700, -500, -300, -100, 50])
    m = metrics_of(v, voxel_ml=0.5)
    h = v[(v >= -1024) & (v <= -200)].astype(float)       # -1000 .. -300: six values
    assert m["volume_ml"] == 4.0
    assert m["MLA_HU"] == pytest.approx(h.mean())
    assert m["SD_HU"] == pytest.approx(h.std(ddof=1))
    assert m["HAA_pct"] == pytest.approx(2 / 8 * 100)     # -500 and -300 lie in -600..-250
    assert m["skewness"] == pytest.approx(stats.skew(h))
    assert m["kurtosis"] == pytest.approx(stats.kurtosis(h))
    assert m["p10_HU"] == pytest.approx(np.percentile(h, 10))


def test_zones_and_lungs():
    rng = np.random.default_rng(0)
    hu = (-900 + rng.integers(-20, 20, (30, 8, 8))).astype(np.int16)
    hu[:10] = -500 + rng.integers(-20, 20, (10, 8, 8))   # lower third dense
    lab = np.zeros(hu.shape, np.uint8)
    lab[:, :, :4] = 1
    lab[:, :, 4:] = 2
    scan = CTScan(hu, (2.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    d = density_metrics(scan, Lungs(lab, np.zeros(hu.shape, bool))).to_dict()
    assert d["lower"]["HAA_pct"] == 100.0 and d["upper"]["HAA_pct"] == 0.0
    assert d["whole"]["HAA_pct"] == pytest.approx(100 / 3)
    assert d["right"]["volume_ml"] == pytest.approx(30 * 8 * 4 * 2 / 1000)
    empty = density_metrics(scan, Lungs(np.zeros_like(lab), np.zeros(hu.shape, bool))).to_dict()
    assert empty["whole"]["MLA_HU"] is None


def test_integer_percentiles_match_numpy_to_the_bit():
    from sscild.density import integer_percentiles

    rng = np.random.default_rng(3)
    for _ in range(300):
        v = rng.integers(-1024, -199, int(rng.integers(2, 3000))).astype(np.float64)
        p = [10, 15, 40, 80, float(rng.uniform(0, 100))]
        assert np.array_equal(integer_percentiles(v, p), np.percentile(v, p))
