"""Batch runs: failures recorded and skipped past, resume after an interruption, force, the cohort table."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from sscild.cohort import BatchLock, read_manifest, run_batch
from sscild.errors import BatchLockedError, ConfigError, NoLungsError


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
    res2 = run_batch(m, out, workers=1, process=fake_process, options={"scale": 2}, quiet=True)
    assert res2.n_skipped == 2  # s00 and s02 were done and stay done
    assert {sid: _calls(out, sid) for sid in ["s00", "s02", "s03", "s05"]} == {"s00": 1, "s02": 1, "s03": 2, "s05": 2}
    assert _calls(out, "s01") == 2  # failed scans are retried

    res3 = run_batch(m, out, workers=1, process=fake_process, options={"scale": 2}, force=True, quiet=True)
    assert res3.n_skipped == 0 and _calls(out, "s00") == 2
    # other options are another result: everything reruns
    res4 = run_batch(m, out, workers=1, process=fake_process, options={"scale": 3}, quiet=True)
    assert res4.n_skipped == 0 and res4.table.set_index("scan_id").loc["s02", "scale"] == 3


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


# --- issue 16: every result stays with its scan ------------------------------------------------------------
def test_changed_path_reruns_and_never_shows_the_old_numbers(tmp_path):
    m = tmp_path / "m.csv"
    m.write_text("scan_id,path\na,/data/ok1\nb,/data/ok2\n")
    out = tmp_path / "out"
    run_batch(m, out, workers=1, process=fake_process, quiet=True)
    before = pd.read_csv(out / "cohort.csv").set_index("scan_id")
    m.write_text("scan_id,path\na,/data/ok1\nb,/data/other-longer-path\n")   # b now points elsewhere
    res = run_batch(m, out, workers=1, process=fake_process, quiet=True)
    after = pd.read_csv(out / "cohort.csv").set_index("scan_id")
    assert res.n_skipped == 1 and _calls(out, "b") == 2 and _calls(out, "a") == 1
    assert after.loc["b", "lung_volume_total_ml"] == 4000.0 + 10 * len("/data/other-longer-path")
    assert after.loc["b", "lung_volume_total_ml"] != before.loc["b", "lung_volume_total_ml"]
    assert after.loc["a", "lung_volume_total_ml"] == before.loc["a", "lung_volume_total_ml"]


@pytest.mark.parametrize("ids", [["p1 a", "p1/a"], ["P1", "p1"], ["x..", "x"]])
def test_ids_colliding_as_folder_names_are_refused(tmp_path, ids):
    m = tmp_path / "m.csv"
    pd.DataFrame({"scan_id": ids, "path": ["/a", "/b"]}).to_csv(m, index=False)
    with pytest.raises(ConfigError, match="same output folder"):
        read_manifest(m)


def test_manifest_shapes_that_are_clear_errors(tmp_path):
    (tmp_path / "header.csv").write_text("scan_id,path\n")
    with pytest.raises(ConfigError, match="header but no rows"):
        read_manifest(tmp_path / "header.csv")
    with pytest.raises(ConfigError, match="is a folder"):
        read_manifest(tmp_path)
    (tmp_path / "nopath.csv").write_text("scan_id,path\na,\nb,/x\n")
    with pytest.raises(ConfigError, match=r"rows \[2\] have no path"):
        read_manifest(tmp_path / "nopath.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ConfigError, match="not a readable CSV"):
        read_manifest(tmp_path / "empty.csv")


def test_a_second_batch_on_the_folder_is_refused_and_a_stale_lock_taken_over(tmp_path):
    m = tmp_path / "m.csv"
    m.write_text("scan_id,path\na,/data/ok1\n")
    out = tmp_path / "out"
    with BatchLock(out):
        with pytest.raises(BatchLockedError, match="another batch is running"):
            run_batch(m, out, workers=1, process=fake_process, quiet=True)
    assert _calls(out, "a") == 0
    (out / ".sscild-batch.lock").write_text("pid 999999 on elsewhere since 00:00:00")  # a killed batch's file
    (out / "status" / ".a.json.k2j3h4g5.json").write_text("{half")                    # and its temporary file
    res = run_batch(m, out, workers=1, process=fake_process, quiet=True)
    assert res.n_done == 1 and not list((out / "status").glob(".*"))


def waits_for_the_table(scan_id, path, outdir, options):
    """A scan that starts only when the cohort table shows every scan finished before it."""
    import json
    import time

    out = Path(outdir).parents[1]
    done = sum(json.loads(f.read_text())["status"] == "done" for f in (out / "status").glob("*.json"))
    for _ in range(100):
        f = out / "cohort.csv"
        if f.exists() and (pd.read_csv(f)["status"] == "done").sum() >= done:
            return {"saw_table": 1}
        time.sleep(0.1)
    return {"saw_table": 0}


def test_the_cohort_table_is_updated_after_every_scan(tmp_path):
    m = _manifest(tmp_path, [f"/data/ok{i}" for i in range(4)])
    res = run_batch(m, tmp_path / "out", workers=1, process=waits_for_the_table, quiet=True)
    assert res.n_done == 4 and res.table["saw_table"].tolist() == [1, 1, 1, 1]


def slow_process(scan_id, path, outdir, options):
    """Writes a two-file result folder all or nothing (sscild.outputs.output_folder), slowly."""
    import json
    import time

    from sscild.outputs import output_folder

    value = 1000.0 + 7 * int(path.rsplit("ok", 1)[1])
    with output_folder(outdir) as (tmp, _):
        (tmp / "part1.json").write_text(json.dumps({"scan_id": scan_id}))
        time.sleep(0.25)
        (tmp / "result.json").write_text(json.dumps({"scan_id": scan_id, "value": value}))
    return {"value": value}


def _check_consistent(out: Path, n: int) -> None:
    import json

    for d in (out / "scans").iterdir() if (out / "scans").exists() else []:
        assert not d.name.startswith(".") or "sscild-tmp" in d.name or "sscild-old" in d.name, d
        if d.name.startswith("."):
            continue
        assert (d / "part1.json").exists() and (d / "result.json").exists(), f"half-written {d}"
        assert json.loads((d / "result.json").read_text())["scan_id"] == d.name
    if (out / "cohort.csv").exists():
        t = pd.read_csv(out / "cohort.csv", dtype={"scan_id": str})
        assert len(t) == n
        for r in t[t["status"] == "done"].itertuples():
            assert r.value == 1000.0 + 7 * int(r.path.rsplit("ok", 1)[1])


def test_batch_killed_twice_with_sigkill_ends_complete(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    n = 6
    m = _manifest(tmp_path, [f"/data/ok{i}" for i in range(n)])
    out = tmp_path / "out"
    script = ("import sys; sys.path.insert(0, sys.argv[3]); from test_cohort import slow_process; "
              "from sscild.cohort import run_batch; run_batch(sys.argv[1], sys.argv[2], workers=1, "
              "process=slow_process, quiet=True)")
    done_before: dict[str, str] = {}
    for delay in (4.0, 5.5):
        p = subprocess.Popen([sys.executable, "-c", script, str(m), str(out), str(Path(__file__).parent)],
                             start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        _check_consistent(out, n)
        for f in (out / "status").glob("*.json"):  # a scan once done is never redone
            if f.stem in done_before:
                assert f.read_text() == done_before[f.stem]
            elif '"done"' in f.read_text():
                done_before[f.stem] = f.read_text()
    res = run_batch(m, out, workers=1, process=slow_process, quiet=True)
    assert res.n_done == n and res.n_skipped == len(done_before)
    _check_consistent(out, n)
    t = pd.read_csv(out / "cohort.csv")
    assert (t["status"] == "done").all() and t["scan_id"].is_unique
    assert not [p for p in (out / "scans").iterdir() if p.name.startswith(".")]
