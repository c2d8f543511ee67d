"""Goh staging as published (Goh et al., AJRCCM 2008) at every boundary, the fibrotic extent, and the SLS II names.

Extent < 10 % limited, > 30 % extensive; 10-30 % decided by FVC % predicted (< 70 % extensive, >= 70 % limited);
without FVC in that band "indeterminate (FVC needed)". Hand-made cases, exact expected answers.
"""
from __future__ import annotations

import math

import pytest

from sscild.domain import goh_extent, goh_stage
from sscild.provenance import SLS2_COLUMNS, sls2_values
from sscild.report import goh_summary


@pytest.mark.parametrize("extent,fvc,stage", [
    # the 10 % boundary: below is limited whatever FVC says; 10.0 itself is in the indeterminate band
    (9.99, None, "limited"), (9.99, 50.0, "limited"), (10.0, None, "indeterminate"), (10.0, 69.9, "extensive"),
    (10.0, 70.0, "limited"),
    # the simplified 20 % threshold is not the published rule: 19.9 and 20.1 are both indeterminate without FVC
    (19.9, None, "indeterminate"), (20.0, None, "indeterminate"), (20.1, None, "indeterminate"),
    (20.0, 69.99, "extensive"), (20.0, 70.0, "limited"),
    # the 30 % boundary: 30.0 is still indeterminate, above is extensive whatever FVC says
    (30.0, None, "indeterminate"), (30.0, 69.0, "extensive"), (30.0, 95.0, "limited"), (30.01, None, "extensive"),
    (30.01, 95.0, "extensive"),
    # nothing measured
    (None, None, "unknown"), (float("nan"), 60.0, "unknown"),
])
def test_goh_stage_at_every_boundary(extent, fvc, stage):
    assert goh_stage(extent, fvc).stage == stage


def test_fvc_missing_or_nan_in_the_band_asks_for_fvc():
    for fvc in (None, float("nan")):
        st = goh_stage(15.0, fvc)
        assert st.stage == "indeterminate" and "FVC needed" in st.rule
    assert goh_summary({"L1": {"TOT": 15.0}, "L2": {"TOT": 15.0}, "L3": {"TOT": 15.0}}).stage_label == \
        "indeterminate (FVC needed)"


def test_rule_text_names_the_deciding_values():
    assert goh_stage(25.0, 65.0).rule.endswith("FVC 65 % < 70 % predicted")
    assert goh_stage(25.0, 70.0).rule.endswith("FVC 70 % >= 70 % predicted")
    assert "> 30 %" in goh_stage(31.0).rule and "< 10 %" in goh_stage(9.0).rule


def test_too_few_levels_is_unknown():
    assert goh_stage(40.0, n_levels=2).stage == "unknown"
    assert goh_stage(40.0, n_levels=3).stage == "extensive"


def test_summary_from_level_scores_extent_fibrotic_extent_and_missing_levels():
    levels = {"L1": {"TOT": 4.0, "GG": 3.0, "RET": 1.0}, "L2": {"TOT": 8.0, "GG": 6.0, "RET": 2.0},
              "L3": {"TOT": 12.0, "GG": 3.0, "RET": 9.0}, "L4": {"TOT": None, "GG": None, "RET": None},
              "L5": {"TOT": 20.0, "GG": 20.0, "RET": 0.0}}
    s = goh_summary(levels, lesion_summary={"whole": {"RET_pct": 4.5}}, fvc_pct=80.0)
    assert s.extent == pytest.approx(11.0) and s.n_levels == 4 and "only 4 of 5" in s.extent_note
    assert s.stage == "limited"           # 11 % is in the band; FVC 80 % >= 70 %
    # fibrotic extent counts reticulation only: (1 + 2 + 9 + 0) / 4, pure ground glass (L5) adds nothing
    assert s.fibrotic_extent == pytest.approx(3.0)
    assert s.fibrotic_volume_pct == pytest.approx(4.5)
    assert goh_summary(levels, fvc_pct=60.0).stage == "extensive"
    few = goh_summary({"L1": {"TOT": 50.0}, "L2": {"TOT": 50.0}})
    assert few.stage == "unknown" and few.extent == pytest.approx(50.0)


def test_goh_extent_is_the_mean_of_scored_levels_only():
    e = goh_extent({"L1": 10.0, "L2": None, "L3": float("nan"), "L4": 30.0, "L5": 20.0, "other": 99.0})
    assert e.extent == pytest.approx(20.0) and e.n_levels == 3
    assert goh_extent({}).extent is None


def test_sls2_names_only_where_measures_correspond():
    lesions = {"whole": {"involvement_pct": 22.0, "GG_pct": 14.0, "RET_pct": 8.0}}
    v = sls2_values(lesions)
    assert v == {"QILD-WL": 22.0, "QGG-WL": 14.0, "QLF-WL (incl. QHC)": 8.0}
    assert math.isclose(v["QGG-WL"] + v["QLF-WL (incl. QHC)"], v["QILD-WL"])
    no = {c.name for c in SLS2_COLUMNS if c.sscild is None}
    assert no == {"QHC-WL", "Q*-ZM"} and not any(k.startswith(("QHC", "Q*")) for k in v)
    assert sls2_values(None) == {"QILD-WL": None, "QGG-WL": None, "QLF-WL (incl. QHC)": None}
