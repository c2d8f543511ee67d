"""Batch runs: failures recorded and skipped past, resume after an interruption, force, the cohort table."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from sscild.cohort import read_manifest, run_batch
from sscild.errors import ConfigError, NoLungsError


def fake_process(scan_id, path, outdir, options):
    """Stands in for the pipeline: fails on demand, counts its calls in a file beside the output."""
    outdir.mkdir(parents=True, exist_ok=True)
    calls = outdir / "calls.txt"
    calls.write_text(calls.read_text() + "x" if calls.exists() else "x")
    if "nolung" in path:
        raise NoLungsError("no lungs found: is this a chest CT?")
    if "crash" in path:
        raise ZeroDivisionError("boom")
    return {"lung_volume_ml": 1000.0 + len(scan_id), "lung_volume_total_ml": 4000.0 + 10 * len(path),
            "scale": options.get("scale", 1)}


def _manifest(tmp_path: Path, paths: list[str]) -> Path:
    m = tmp_path / "manifest.csv"
    pd.DataFrame({"scan_id": [f"s{i:02d}" for i in range(len(paths))], "path": paths,
                  "patient_id": [f"p{i // 2}" for i in range(len(paths))]}).to_csv(m, index=False)
    return m


def _calls(out: Path, sid: str) -> int:
    f = out / "scans" / sid / "calls.txt"
    return len(f.read_text()) if f.exists() else 0


def test_batch_goes_past_bad_scans_and_resumes(tmp_path):
    paths = [f"/data/ok{i}" for i in range(6)]
    paths[1], paths[4] = "/data/nolung", "/data/crash"
    m = _manifest(tmp_path, paths)
    out = tmp_path / "out"
    res = run_batch(m, out, workers=2, process=fake_process, options={"scale": 2}, quiet=True)
    assert (res.n_done, res.n_failed, res.n_skipped) == (4, 2, 0)
    fails = pd.read_csv(out / "failures.csv")
    assert set(fails["scan_id"]) == {"s01", "s04"}
    reason = dict(zip(fails["scan_id"], fails["reason"]))
    assert "no lungs found" in reason["s01"] and "ZeroDivisionError" in reason["s04"]
    table = pd.read_csv(out / "cohort.csv", dtype={"scan_id": str})
    assert list(table.columns[:3]) == ["scan_id", "path", "patient_id"]
    assert table.set_index("scan_id").loc["s02", "lung_volume_ml"] == 1003.0
    assert (out / "cohort.parquet").exists()
    assert pd.read_parquet(out / "cohort.parquet").shape[0] == 6

    # an interrupted run: two statuses lost -> a rerun does exactly those and the failed ones again
    (out / "status" / "s03.json").unlink()
    (out / "status" / "s05.json").unlink()
    res2 = run_batch(m, out, workers=1, process=fake_process, quiet=True)
    assert res2.n_skipped == 2  # s00 and s02 were done and stay done
    assert {sid: _calls(out, sid) for sid in ["s00", "s02", "s03", "s05"]} == {"s00": 1, "s02": 1, "s03": 2, "s05": 2}
    assert _calls(out, "s01") == 2  # failed scans are retried

    res3 = run_batch(m, out, workers=1, process=fake_process, force=True, quiet=True)
    assert res3.n_skipped == 0 and _calls(out, "s00") == 2


def test_manifest_errors_name_the_problem(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("id,file\na,b\n")
    with pytest.raises(ConfigError, match=r"lacks column\(s\) \['scan_id', 'path'\]"):
        read_manifest(bad)
    dup = tmp_path / "dup.csv"
    dup.write_text("scan_id,path\na,x\na,y\n")
    with pytest.raises(ConfigError, match="unique"):
        read_manifest(dup)
    with pytest.raises(ConfigError, match="does not exist"):
        read_manifest(tmp_path / "none.csv")
    rel = tmp_path / "rel.csv"
    rel.write_text("scan_id,path\na,scans/a.nii.gz\n")
    assert read_manifest(rel)["path"][0] == str(tmp_path / "scans" / "a.nii.gz")


def test_longitudinal_pages_for_patients_with_several_scans(tmp_path):
    m = tmp_path / "m.csv"
    pd.DataFrame({"scan_id": ["a", "b", "c"], "path": ["/x/ok1", "/x/ok2", "/x/ok3"],
                  "patient_id": ["P-SECRET", "P-SECRET", "Q"],
                  "scan_date": ["2020-01-01", "2021-01-01", "2020-05-05"]}).to_csv(m, index=False)
    run_batch(m, tmp_path / "out", workers=1, process=fake_process, quiet=True)
    pages = sorted((tmp_path / "out" / "patients").glob("*.html"))
    assert [p.name for p in pages] == ["patient_1.html"]       # Q has a single scan
    html = pages[0].read_text()
    assert "P-SECRET" not in html and "2020-01-01" not in html
    assert "lung_volume_total_ml" in html and "<td>366</td>" in html       # days since the first scan
    assert (tmp_path / "out" / "patients" / "patient_1_lung_volume_total_ml.png").exists()
