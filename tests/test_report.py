"""The HTML report: Goh staging as published, images present and large, privacy by default, tables rendered (zones,
integer voxel counts, model metrics as tables, no repository paths), the methods paragraph, longitudinal page."""
from __future__ import annotations

import re

import numpy as np
import pytest

from sscild.provenance import sha256_file
from sscild.report import ReportInput, write_longitudinal, write_report
from sscild.scan import CTScan


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
                      scores={n: {"TOT": 26.0, "GG": 20.0, "RET": 6.0} for n in ("L1", "L2", "L3", "L4")},
                      uncertainty={"L2": {"TOT": 7.3, "GG": 3.5, "RET": 1.4}}, fvc_pct=65.0,
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
    # each score's uncertainty below S-Net's row, on the level that has one
    l2_card = html.split("<b>L2</b>")[1].split("<b>L3</b>")[0]
    assert html.count("S-Net uncertainty (+-)") == 1 and "<td>7.3</td><td>3.5</td><td>1.4</td>" in l2_card
    html_phi = write_report(inp, tmp_path / "phi", show_phi=True).read_text()
    assert "DOE^JANE" in html_phi


def test_goh_stage_in_the_report_follows_the_published_rule(tmp_path):
    scan, lungs, levels = _toy()
    scores = {n: {"TOT": 15.0, "GG": 10.0, "RET": 5.0} for n in ("L1", "L2", "L3", "L4")}
    page = write_report(ReportInput(scan, lungs, levels, scores=scores), tmp_path / "a").read_text()
    assert "indeterminate (FVC needed)" in page and "15.0 %" in page   # 20 % rule would have said "limited"
    page = write_report(ReportInput(scan, lungs, levels, scores=scores, fvc_pct=60.0), tmp_path / "b").read_text()
    assert re.search(r"class='v extensive'>extensive<", page) and "FVC 60 % &lt; 70 % predicted" in page
    assert "Fibrotic extent (mean RET)" in page and ">5.0 %<" in page


def test_report_tables_render_zones_counts_models_and_methods(tmp_path):
    from sscild.provenance import DEFAULT_MODELS

    scan, lungs, levels = _toy()
    amounts = {"lung_ml": 900.0, "GG_ml": 90.0, "RET_ml": 45.0, "lesion_ml": 135.0, "GG_pct": 10.0,
               "RET_pct": 5.0, "involvement_pct": 15.0}
    lesions = {"whole": amounts, "zones": {"upper": {**amounts, "GG_pct": 1.25}, "lower": {**amounts,
                                                                                          "GG_pct": 31.75}}}
    card = {"name": "lesion U-Net", "trained_on": "slices of ../shared/data/chest-ct-lung-pet-ct-dx-a0001 and "
            "src/sscild/models/lesions", "metrics": {"GG": 0.8307, "RET": 0.8139}}
    snet = {"name": "S-Net", "trained_on": "phantoms", "metrics": {"TOT": {"MAE": 1.396, "kappa": 0.958}}}
    lnet = {"name": "L-Net", "version": "1.0.0", "weights": {"sha256": "ab" * 32},   # model-card schema 2
            "training": {"data": "phantoms and ../shared/data/chest-ct-lidc-idri-0001", "label_kind": "synthetic"},
            "metrics": [{"split": "test", "in_sample": False, "description": "24 phantoms", "n": 24,
                         "values": {"L1": {"MAE_mm": 0.92}}}]}
    inp = ReportInput(scan, lungs, levels, density={"HAA_range_HU": [-600.0, -250.0],
                                                    "whole": {"n_voxels": 150643.0, "MLA_HU": -786.4}},
                      lesion_summary=lesions, model_cards=[card, snet, lnet], timings={"lungs": 1.0, "lesions": 2.0})
    page = write_report(inp, tmp_path).read_text()
    assert "<td class='t'>zones: upper</td>" in page and "<td>1.2</td>" in page and "<td>31.8</td>" in page
    assert "<td>150643</td>" in page and "150643.0" not in page
    assert "shared/data" not in page and "src/sscild" not in page and "chest-ct-lung-pet-ct-dx-a0001" in page
    assert "{" not in page.split("<body>", 1)[1], "a raw Python dict leaked into the page"
    assert "<th>kappa</th>" in page and "<td>0.958</td>" in page and "<th>GG</th>" in page
    methods = re.search(r"<p class='methods'>(.*?)</p>", page, re.S).group(1)
    sha = sha256_file(DEFAULT_MODELS / "lesions" / "model.safetensors")
    assert sha and sha in methods and "from -600 to -250 HU" in methods
    assert methods.index("lungs and airways") < methods.index("U-Net")   # stages in the order they ran
    assert "QILD-WL" in page and "QHC-WL" in page
    assert "test, n = 24: 24 phantoms" in page and "<td>0.920</td>" in page and "label_kind: synthetic" in page
    assert "L-Net weights: sha256 " + "ab" * 32 in methods and "L-Net (version 1.0.0)" in page


def test_level_images_are_large(tmp_path):
    from PIL import Image

    scan, lungs, levels = _toy()
    write_report(ReportInput(scan, lungs, levels), tmp_path)
    w, h = Image.open(tmp_path / "report_L1.png").size
    assert w >= 600 and h >= 600, (w, h)


def test_longitudinal_page_hides_dates_unless_asked(tmp_path):
    rows = [{"scan_date": "2020-01-01", "goh_extent": 12.0}, {"scan_date": "2021-01-01", "goh_extent": 18.0},
            {"scan_date": "2020-06-01", "goh_extent": 15.0}]
    page = write_longitudinal(rows, tmp_path / "p1.html", measures=["goh_extent", "absent"]).read_text()
    assert "2020-01-01" not in page and "days since first scan" in page
    assert "<td>152</td>" in page and "<td>366</td>" in page   # sorted by date, in days
    assert (tmp_path / "p1_goh_extent.png").exists()
    page2 = write_longitudinal(rows, tmp_path / "p2.html", measures=["goh_extent"], show_phi=True).read_text()
    assert "2021-01-01" in page2


def test_citation_cff_names_this_version_and_the_staging_paper():
    from pathlib import Path

    import yaml

    import sscild

    cff = yaml.safe_load((Path(__file__).resolve().parents[1] / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["version"] == sscild.__version__.split("+")[0]
    assert "10.1164/rccm.200706-877OC" in {r.get("doi") for r in cff["references"]}
