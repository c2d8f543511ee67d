"""Scan quality checks against phantoms with known answers: calibration, noise, sharpness, coverage, orientation."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage as ndi

from sscild.anatomy import segment_lungs
from sscild.phantom import make_phantom
from sscild.quality import quality_checks


@pytest.fixture(scope="module")
def healthy():
    scan, truth = make_phantom(3, extent=0)       # no contrast: blood ~49 HU, noise SD ~20 HU
    return scan, truth, quality_checks(scan, segment_lungs(scan))


def test_known_answers_on_a_phantom(healthy):
    scan, truth, q = healthy
    m = q.measures
    assert abs(m["tracheal_air_hu"] + 1000) <= 30             # the phantom's lumen is -1000 HU
    assert abs(m["blood_pool_hu"] - truth.params["blood_hu"]) <= 15
    assert m["contrast"] is False
    assert m["noise_soft_tissue_hu"] == pytest.approx(truth.params["noise_sd"], rel=0.15)
    assert m["head_up"] is True and m["apex_in_scan"] and m["base_in_scan"]
    assert m["slice_spacing_mm"] == pytest.approx(scan.spacing[0])
    assert not any("upside down" in w or "cut off" in w for w in q.warnings)
    json.dumps(q.to_dict())                                  # JSON-serialisable


def test_added_noise_is_measured(healthy):
    scan, truth, _ = healthy
    rng = np.random.default_rng(0)
    noisy = np.clip(scan.hu + rng.normal(0, 40, scan.shape), -1024, 3071).astype(np.int16)
    s2 = replace(scan, hu=noisy)
    q = quality_checks(s2, segment_lungs(s2))
    expected = float(np.hypot(truth.params["noise_sd"], 40.0))
    assert q.measures["noise_soft_tissue_hu"] == pytest.approx(expected, rel=0.15)


def test_smoother_image_has_a_wider_edge(healthy):
    scan, _, q = healthy
    blurred = ndi.gaussian_filter(scan.hu.astype(np.float32), sigma=(0, 1.5, 1.5))
    s2 = replace(scan, hu=np.rint(blurred).astype(np.int16))
    q2 = quality_checks(s2, segment_lungs(s2))
    assert q2.measures["edge_width_mm"] >= 1.5 * q.measures["edge_width_mm"]


def test_flipped_z_is_flagged_upside_down(healthy):
    scan, _, _ = healthy
    s2 = replace(scan, hu=np.ascontiguousarray(scan.hu[::-1]))
    q = quality_checks(s2, segment_lungs(s2))
    assert q.measures["head_up"] is False
    assert any("upside down" in w and "levels" in w for w in q.warnings)


def test_cut_base_and_thick_slices_are_warned():
    scan, _ = make_phantom(35, extent=0, cut="base", spacing=(5.0, 2.8, 2.8))
    q = quality_checks(scan, segment_lungs(scan))
    assert q.measures["base_in_scan"] is False
    assert any("base is cut off" in w and "L4/L5" in w for w in q.warnings)
    assert any("5.0 mm apart" in w for w in q.warnings)


@pytest.mark.realdata
def test_real_series_quality(lung_series_dir):
    from sscild.io import load_ct

    scan = load_ct(lung_series_dir)
    q = quality_checks(scan, segment_lungs(scan))
    m = q.measures
    assert abs(m["tracheal_air_hu"] + 1000) <= 40
    assert 20 <= m["blood_pool_hu"] <= 70                     # no contrast
    assert m["edge_width_mm"] < 1.5                           # Philips kernel L: sharp
    assert m["head_up"] is True
    assert any("5.0 mm apart" in w for w in q.warnings)
