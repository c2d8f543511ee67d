"""Longitudinal change on hand-made cohort tables: slopes per year, levels matched by name, and every progression
flag at and beside its published threshold."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from sscild.errors import ConfigError
from sscild.longitudinal import longitudinal_pages, patient_trend, progression_flags, write_longitudinal


def _rows(fvc=(None, None), dlco=(None, None), ret=(None, None), dates=("2020-01-01", "2020-12-31")):
    rows = []
    for k, d in enumerate(dates):
        r = {"scan_id": f"s{k}", "scan_date": d}
        if fvc[k] is not None:
            r["fvc_pct"] = fvc[k]
        if dlco[k] is not None:
            r["dlco_pct"] = dlco[k]
        if ret[k] is not None:
            r.update({f"L{n}_RET": ret[k] for n in range(1, 6)})
        rows.append(r)
    return rows


def _met(rows, name):
    return patient_trend(rows).flag(name).met


def test_change_per_year_and_levels_matched_by_name():
    rows = [{"scan_id": "b", "scan_date": "2020-07-01", "goh_extent": 13.0, "L3_TOT": 8.0, "L3_z_mm": -80.0},
            {"scan_id": "c", "scan_date": "2021-01-01", "goh_extent": 16.0, "L3_TOT": 11.0, "L3_z_mm": -120.0},
            {"scan_id": "a", "scan_date": "2020-01-01", "goh_extent": 10.0, "L3_TOT": 5.0, "L3_z_mm": -100.0}]
    t = patient_trend(rows)
    assert t.days == [0, 182, 366]
    years = 366 / 365.25
    g = t.change("goh_extent")
    assert (g.first, g.last, g.change, g.n) == (10.0, 16.0, 6.0, 3)
    assert g.per_year == pytest.approx(6.0 / years, rel=0.01)        # near-linear: slope of the 3 points
    lv = t.change("L3_TOT")
    assert lv.values == [5.0, 8.0, 11.0] and "venous confluence" in lv.label   # same landmark, z differs
    assert t.level_z["L3"] == [-100.0, -80.0, -120.0]
    single = patient_trend(rows[:1]).change("goh_extent")
    assert single.change is None and single.per_year is None


@pytest.mark.parametrize("fvc,ret,expect", [
    ((80.0, 72.0), (None, None), True),        # relative decline exactly 10 %
    ((80.0, 72.1), (5.0, 5.0), False),         # 9.9 % without more fibrosis
    ((80.0, 72.1), (5.0, 7.0), True),          # 9.9 % with fibrosis up 2 points (+40 %)
    ((80.0, 76.1), (5.0, 7.0), False),         # 4.9 %: below the 5-10 % band
    ((80.0, 72.1), (None, None), None),        # 5-10 % and fibrotic extent unknown
    ((None, 72.0), (None, None), None),        # FVC missing
])
def test_inbuild_fvc(fvc, ret, expect):
    f = patient_trend(_rows(fvc=fvc, ret=ret)).flag("inbuild_fvc")
    assert f.met is expect and "Flaherty" in f.source and "N Engl J Med" in f.source


def test_inbuild_window_is_24_months():
    far = _rows(fvc=(80.0, 60.0), dates=("2020-01-01", "2022-06-01"))         # 882 days > 730 * 1.1
    assert _met(far, "inbuild_fvc") is None


@pytest.mark.parametrize("fvc,dlco,ret,phys,rad,both", [
    ((80.0, 75.0), (None, None), (5.0, 5.0), True, False, None),      # FVC -5 points exactly
    ((80.0, 75.1), (None, None), (5.0, 5.0), False, False, False),
    ((80.0, 80.0), (60.0, 50.0), (5.0, 6.0), True, True, True),       # DLCO -10 points; fibrosis +1 (+20 %)
    ((80.0, 80.0), (None, None), (20.0, 21.0), False, False, False),  # +1 point but only +5 %
    ((None, None), (None, None), (5.0, 7.0), None, True, None),
])
def test_ppf2022(fvc, dlco, ret, phys, rad, both):
    t = patient_trend(_rows(fvc=fvc, dlco=dlco, ret=ret))
    assert (t.flag("ppf2022_physiological").met, t.flag("ppf2022_radiological").met, t.flag("ppf2022").met) == \
        (phys, rad, both)
    assert all("Raghu" in t.flag(n).source for n in ("ppf2022", "ppf2022_physiological", "ppf2022_radiological"))


@pytest.mark.parametrize("fvc,dlco,expect", [
    ((80.0, 72.0), (None, None), True),        # 10 % relative
    ((80.0, 76.0), (60.0, 51.0), True),        # 5 % with DLCO 15 % relative
    ((80.0, 76.0), (60.0, 52.0), False),       # DLCO 13.3 %
    ((80.0, 76.0), (None, None), None),        # 5 % and no DLCO
    ((80.0, 76.1), (60.0, 30.0), False),       # FVC 4.9 %: DLCO alone does not count
])
def test_goh2017_ssc(fvc, dlco, expect):
    f = patient_trend(_rows(fvc=fvc, dlco=dlco)).flag("goh2017_ssc")
    assert f.met is expect and "Goh" in f.source and "Arthritis Rheumatol" in f.source


def test_fibrotic_extent_sources_and_pairs():
    flags = {f.name: f for f in progression_flags([0, 200, 420], [80.0, 79.0, 73.0], [None] * 3, [5.0, 5.5, 6.5])}
    assert flags["fibrotic_extent_up"].met is True and "not a published" in flags["fibrotic_extent_up"].source
    # 80 -> 73 over 420 days is 8.75 % relative; fibrosis 5 -> 6.5 (+1.5, +30 %): INBUILD met on the pair (0, 2)
    assert flags["inbuild_fvc"].met is True and "over 420 days" in flags["inbuild_fvc"].evidence
    # 79 -> 73 over 220 days is a 6-point absolute decline within a year (0 -> 420 days is beyond 1 year + 10 %)
    assert flags["ppf2022_physiological"].met is True and "79.0 -> 73.0" in flags["ppf2022_physiological"].evidence
    lessrel = progression_flags([0, 300], [None] * 2, [None] * 2, [30.0, 32.0])      # +2 points, +6.7 %
    assert lessrel[0].met is False


def test_bad_date_is_a_clear_error():
    with pytest.raises(ConfigError, match="YYYY-MM-DD"):
        patient_trend([{"scan_id": "a", "scan_date": "yesterday"}, {"scan_id": "b", "scan_date": "2020-01-01"}])


def test_pages_hide_identity_and_name_the_definitions(tmp_path):
    table = pd.DataFrame(_rows(fvc=(80.0, 70.0), ret=(5.0, 8.0)) + [{"scan_id": "q", "scan_date": "2020-02-02"}])
    table["patient_id"] = ["P-SECRET", "P-SECRET", "Q"]
    table["status"] = "done"
    table["goh_extent"] = [12.0, 18.0, 3.0]
    pages = longitudinal_pages(table, tmp_path)
    assert [p.name for p in pages] == ["patient_1.html"]
    text = pages[0].read_text()
    assert "P-SECRET" not in text and "2020-12-31" not in text and "<td>365</td>" in text
    for src in ("Flaherty", "Raghu", "Goh NS", "operational threshold"):
        assert src in text
    assert (tmp_path / "patients" / "patient_1_goh_extent.png").exists()
    js = json.loads((tmp_path / "patients" / "patient_1.json").read_text())
    assert "dates" not in js and {f["name"]: f["met"] for f in js["flags"]}["inbuild_fvc"] is True
    # the patient loses a scan (rejected): its page and figures from the earlier run go
    assert longitudinal_pages(table.iloc[1:], tmp_path) == []
    assert list((tmp_path / "patients").iterdir()) == []
    shown = write_longitudinal(table.iloc[:2], tmp_path / "p.html", show_phi=True).read_text()
    assert "2020-12-31" in shown
