"""The cohort QA gallery: 20 scans through ``run_batch`` (a stand-in worker writes precomputed images, numbers and
levels: the real pipeline takes ~12 s of CPU per small phantom, too slow for 20 here), one with injected problems
that must head the page; in headless Chromium a reviewer moves a level and rejects a scan, downloads overrides.csv,
and the rerun recomputes only the moved scan and leaves the rejected one out of the cohort table. The real
recomputation at a moved slice is checked on a phantom with S-Net (``relevel``)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sscild.cohort import run_batch
from sscild.errors import ConfigError
from sscild.gallery import (Overrides, move_levels, qa_issues, read_overrides, relevel, robust_z,
                            write_overrides)

BAD = "ph13"


def _png(path: Path, seed: int) -> None:
    from PIL import Image

    yy, xx = np.mgrid[:64, :64]
    img = np.where((yy - 32) ** 2 / 700 + (xx - 32) ** 2 / 900 < 1, 60 + seed * 7 % 120, 10).astype(np.uint8)
    Image.fromarray(img).save(path)


def fake_process(scan_id, path, outdir, options):
    """Stands in for the pipeline: writes the images and JSON the gallery reads, counts its calls, and places a
    level the reviewer moved at that slice (z = -3 mm x slice) with a score that depends on the slice."""
    outdir.mkdir(parents=True, exist_ok=True)
    calls = outdir / "calls.txt"
    calls.write_text((calls.read_text() if calls.exists() else "") + "x")
    i = int(scan_id[2:])
    bad = "bad" in path
    z = {"L1": -100.0, "L2": -140.0, "L3": -130.0 if bad else -170.0, "L4": -200.0, "L5": -230.0}
    sl = {n: int(-v / 3) for n, v in z.items()}
    for n, k in (options.get("level_moves") or {}).items():
        z[n], sl[n] = -3.0 * k, k
    levels = [{"name": n, "z_mm": z[n], "slice_index": sl[n], "confidence": 0.9, "note": ""} for n in z]
    (outdir / "levels.json").write_text(json.dumps({"method": "anatomy", "levels": levels}))
    (outdir / "analysis.json").write_text(json.dumps({"warnings": ["apex cut off"] if bad else [],
                                                      "input": {"spacing_zyx_mm": [3.0, 2.8, 2.8]}}))
    (outdir / "report.html").write_text("<html><body>report</body></html>")
    for k, name in enumerate(["coronal", "L1", "L2", "L3", "L4", "L5"]):
        _png(outdir / f"report_{name}.png", i + k)
    row = {"lung_volume_total_ml": 900.0 if bad else 5000.0 + 37 * i, "density_MLA_HU": -800.0 + i,
           "density_HAA_pct": 5.0 + 0.1 * i, "goh_extent": 10.0 + i, "goh_stage": "limited", "n_warnings": int(bad)}
    row.update({f"{n}_z_mm": z[n] for n in z})
    row.update({f"{n}_TOT": float(sl[n]) / 10 for n in z})
    return row


def _chromium() -> str:
    from test_browser import _chromium as find

    return find()


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    root = tmp_path_factory.mktemp("gallery")
    paths = [f"/data/ok{i}" for i in range(20)]
    paths[int(BAD[2:])] = "/data/bad"
    m = root / "manifest.csv"
    pd.DataFrame({"scan_id": [f"ph{i:02d}" for i in range(20)], "path": paths}).to_csv(m, index=False)
    out = root / "out"
    res = run_batch(m, out, workers=1, process=fake_process, quiet=True)
    assert res.n_done == 20
    return m, out


def _calls(out: Path) -> dict[str, int]:
    return {d.name: len((d / "calls.txt").read_text()) for d in sorted((out / "scans").iterdir())}


def test_gallery_in_chromium_review_and_rerun(batch, tmp_path):
    from playwright.sync_api import sync_playwright

    m, out = batch
    page_file = out / "index.html"
    assert page_file.exists()
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=_chromium(), headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(page_file.resolve().as_uri(), wait_until="load")
        ids = page.eval_on_selector_all(".row", "rs => rs.map(r => r.dataset.id)")
        first_issues = page.inner_text(".row >> nth=0")
        broken = page.evaluate("Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).length")
        n_images = page.evaluate("document.images.length")
        page.fill("#search", "ph03")
        shown_search = page.inner_text("#n-shown")
        page.fill("#search", "")
        page.select_option("#show", "flagged")
        shown_flagged = page.inner_text("#n-shown")
        page.select_option("#show", "all")
        row5, row8 = page.locator(".row[data-id='ph05']"), page.locator(".row[data-id='ph08']")
        row5.locator("select.lv").select_option("L3")
        row5.locator("input.sl").fill("40")
        row5.locator("button.mv").click()
        row8.locator("input.why").fill("motion, breathing")
        row8.locator("input.rej").check()
        page.fill("#reviewer", "rk")
        shot = tmp_path / "gallery.png"
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(shot), full_page=True)
        with page.expect_download() as dl:
            page.click("#download")
        csv = tmp_path / "overrides.csv"
        dl.value.save_as(csv)
        browser.close()
    assert errors == [], errors
    assert len(ids) == 20 and ids[0] == BAD, ids[:3]
    assert "lung volume" in first_issues and "not 5 mm above" in first_issues
    assert n_images == 120 and broken == 0
    assert shown_search == "1" and shown_flagged == "1"
    ov = read_overrides(csv, [f"ph{i:02d}" for i in range(20)])
    assert ov.moves == {"ph05": {"L3": 40}} and ov.rejected == {"ph08": "motion, breathing"}
    keep = os.environ.get("SSCILD_KEEP_GALLERY")
    if keep:
        shutil.copy(shot, keep)

    # the next run honours the overrides: only ph05 is recomputed, ph08 leaves the cohort table with its reason
    shutil.copy(csv, out / "overrides.csv")
    before = _calls(out)
    res = run_batch(m, out, workers=1, process=fake_process, quiet=True)
    after = _calls(out)
    assert {k: after[k] - before[k] for k in after if after[k] != before[k]} == {"ph05": 1}
    assert res.n_skipped == 18 and res.n_total == 19
    table = pd.read_csv(out / "cohort.csv", dtype={"scan_id": str}).set_index("scan_id")
    assert "ph08" not in table.index and len(table) == 19
    assert table.loc["ph05", "L3_z_mm"] == -120.0 and table.loc["ph05", "L3_TOT"] == 4.0
    assert table.loc["ph04", "L3_z_mm"] == -170.0
    rej = pd.read_csv(out / "rejected.csv")
    assert rej.to_dict("records") == [{"scan_id": "ph08", "path": "/data/ok8", "reason": "motion, breathing"}]
    html = (out / "index.html").read_text()
    assert "L3 slice 40" in html and html.rfind("data-id='ph08'") > html.rfind("data-id='ph19'")
    # a third run with the same overrides does nothing
    assert run_batch(m, out, workers=1, process=fake_process, quiet=True).n_skipped == 19


def test_dataset_description(batch):
    _, out = batch
    d = json.loads((out / "dataset_description.json").read_text())
    assert d["DatasetType"] == "derivative" and d["BIDSVersion"] and d["Name"]
    assert d["GeneratedBy"][0]["Name"] == "sscild" and d["GeneratedBy"][0]["Version"]


def test_qa_order_and_robust_z():
    z = robust_z(pd.Series([5000.0 + 10 * i for i in range(9)] + [9000.0]))
    assert abs(z.iloc[-1]) > 3.5 and (z.iloc[:-1].abs() < 3.5).all()
    assert robust_z(pd.Series([1.0, 2.0, 50.0])).isna().all()          # fewer than 8 values: no z
    t = pd.DataFrame({"scan_id": ["a", "b", "c"], "status": ["done", "failed", "done"], "reason": ["", "x", ""],
                      "lung_volume_total_ml": [5000.0, None, 12000.0],
                      "_levels": [{}, {}, {"L1": {"z_mm": -100.0, "confidence": 0.3}, "L2": {"z_mm": -98.0}}]})
    iss = qa_issues(t)
    assert iss["a"] == [] and iss["b"][0]["kind"] == "failed"
    kinds = sorted(i["kind"] for i in iss["c"])
    assert kinds == ["level", "level", "level", "level", "order", "range"]   # L1 low conf, L3-L5 missing


def test_overrides_file_errors_and_round_trip(tmp_path):
    f = tmp_path / "o.csv"
    ov = Overrides({"a": "blurred"}, {"b": {"L2": 7, "L5": 3}})
    assert read_overrides(write_overrides(f, ov), ["a", "b"]).moves == ov.moves
    cases = {"scan_id,action\na,delete\n": "action", "scan_id,action,level,slice\na,move_level,L7,3\n": "L1..L5",
             "scan_id,action,level,slice\na,move_level,L2,\n": "slice number",
             "scan_id,action\nzz,reject\n": "not in the manifest", "scan,act\n": "lacks column"}
    for text, msg in cases.items():
        f.write_text(text)
        with pytest.raises(ConfigError, match=msg):
            read_overrides(f, ["a", "b"])
    assert read_overrides(tmp_path / "absent.csv") == Overrides()
    with pytest.raises(ConfigError, match="every scan"):
        Overrides({"a": "x", "b": "y"}).kept(pd.DataFrame({"scan_id": ["a", "b"]}))


def test_relevel_scores_the_moved_slice():
    from sscild.modelset import ModelSet
    from sscild.phantom import make_phantom
    from sscild.pipeline import analyze, model_input
    from sscild.scoring.snet import score_levels
    from sscild.settings import AnalysisSettings

    scan, truth = make_phantom(2, size="small", extent=25)
    st = AnalysisSettings(lesions=False)
    models = ModelSet()
    a = analyze(scan, st, models=models)
    if a.scores is None:
        pytest.skip("no S-Net weights shipped")
    k3 = a.levels.array_index(scan, "L3")
    new = scan.input_slice_index(k3 + 4)
    b = relevel(a, scan, {"L3": new}, st, models)
    assert b.levels.slice_index["L3"] == new and b.levels.confidence["L3"] == 1.0
    assert "moved by a reviewer" in b.levels.notes["L3"] and "halfway" in b.levels.notes["L4"]
    m = models.get("snet", st.weights, st.device)
    seen = model_input(scan, a.lungs)[1]          # S-Net scores the lung at the reference aeration, as analyze does
    direct = score_levels(m.model, m.config, seen, a.lungs.mask, b.levels.z_mm)["levels"]
    assert b.scores.levels["L3"].slice == k3 + 4
    assert b.scores.levels["L3"].TOT == pytest.approx(direct["L3"]["TOT"], abs=1e-4)
    assert b.scores.levels["L1"].TOT == pytest.approx(a.scores.levels["L1"].TOT, abs=1e-4)
    assert any("levels moved by a reviewer: L3" in w for w in b.warnings)
    with pytest.raises(ConfigError, match="slices 0.."):
        move_levels(a.levels, scan, {"L2": 10_000})
