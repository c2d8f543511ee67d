"""The HTML report: Goh staging rules, images present, privacy by default, longitudinal page."""
from __future__ import annotations

import re

import numpy as np
import pytest

from sscild.report import ReportInput, goh_stage, write_longitudinal, write_report
from sscild.scan import CTScan


@pytest.mark.parametrize("extent,fvc,stage", [
    (5.0, None, "limited"), (20.0, None, "limited"), (20.1, None, "extensive"), (45.0, 90.0, "extensive"),
    (25.0, 80.0, "limited"), (12.0, 60.0, "extensive"), (8.0, 50.0, "limited"), (None, None, "unknown"),
])
def test_goh_stage_rules(extent, fvc, stage):
    assert goh_stage(extent, fvc)[0] == stage


def _toy():
    hu = np.full((40, 64, 64), 40, np.int16)
    lungs = np.zeros(hu.shape, np.uint8)
    lungs[5:35, 15:50, 8:30] = 1
    lungs[5:35, 15:50, 34:56] = 2
    hu[lungs > 0] = -850
    scan = CTScan(hu, spacing=(5.0, 5.0, 5.0), origin=(-160.0, -160.0, -200.0))
    levels = {f"L{i}": {"z_mm": scan.z_mm(30 - 5 * i), "slice_index": 30 - 5 * i, "confidence": 0.9, "note": ""}
              for i in range(1, 5)}
    levels["L5"] = {"z_mm": None, "slice_index": None, "confidence": 0.0, "note": "scan ends above the dome"}
    return scan, lungs, levels


def test_report_has_every_image_and_no_phi_by_default(tmp_path):
    scan, lungs, levels = _toy()
    lesions = (lungs > 0).astype(np.uint8)
    lesions[10:20, 30:40, 10:20] = 2
    inp = ReportInput(scan, lungs, levels, density={"whole": {"MLA_HU": -850.0, "HAA_pct": 1.2}},
                      volumes_ml={"right": 1000.0, "left": 900.0, "total": 1900.0},
                      scores={"L1": {"TOT": 10.0, "GG": 8.0, "RET": 3.0}}, goh_extent=26.0, fvc_pct=65.0,
                      lesion_labels=lesions, warnings=["L5 not found: scan ends above the dome"],
                      phi={"PatientName": "DOE^JANE"}, model_cards=[{"name": "S-Net", "trained_on": "phantoms"}])
    html = write_report(inp, tmp_path).read_text()
    imgs = re.findall(r"src='([^']+)'", html)
    assert "report_coronal.png" in imgs and "report_L1.png" in imgs and "report_L5.png" not in imgs
    for f in imgs:
        assert (tmp_path / f).stat().st_size > 1000, f
    assert "DOE" not in html
    assert "extensive" in html and "FVC 65 %" in html
    assert "scan ends above the dome" in html
    html_phi = write_report(inp, tmp_path / "phi", show_phi=True).read_text()
    assert "DOE^JANE" in html_phi


def test_longitudinal_page_hides_dates_unless_asked(tmp_path):
    rows = [{"scan_date": "2020-01-01", "goh_extent": 12.0}, {"scan_date": "2021-01-01", "goh_extent": 18.0},
            {"scan_date": "2020-06-01", "goh_extent": 15.0}]
    page = write_longitudinal(rows, tmp_path / "p1.html", measures=["goh_extent", "absent"]).read_text()
    assert "2020-01-01" not in page and "days since first scan" in page
    assert "<td>152</td>" in page and "<td>366</td>" in page   # sorted by date, in days
    assert (tmp_path / "p1_goh_extent.png").exists()
    page2 = write_longitudinal(rows, tmp_path / "p2.html", measures=["goh_extent"], show_phi=True).read_text()
    assert "2021-01-01" in page2
