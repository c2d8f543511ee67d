"""Bad-input cases: cohort manifests and batch runs (issue 16 item 5; README.md here).

The slower batch cases (a changed path rerun end to end, a second batch refused while one runs, SIGKILL at
random points) run in tests/test_cohort.py and bench/bench_cohort.py.
"""
from __future__ import annotations

import pandas as pd

from sscild.cohort import BatchLock, cohort_table, read_manifest, resume_key
from sscild.errors import ConfigError
from sscild.util import write_json


def test_manifest_only_header(tmp_path, outcome):
    """Manifest with only a header line: exit 2, ConfigError 'no rows'"""
    (tmp_path / "m.csv").write_text("scan_id,path\n")
    outcome.cli(["batch", str(tmp_path / "m.csv"), "-o", str(tmp_path / "out")], exit_code=2,
                match="header but no rows")


def test_manifest_is_a_folder(tmp_path, outcome):
    """Manifest path is a folder: exit 2, ConfigError 'is a folder'"""
    outcome.cli(["batch", str(tmp_path), "-o", str(tmp_path / "out")], exit_code=2, match="is a folder")


def test_manifest_missing_columns(tmp_path, outcome):
    """Manifest without the path column: ConfigError naming the missing column"""
    (tmp_path / "m.csv").write_text("scan_id,file\na,x\n")
    with outcome.error(ConfigError, match=r"lacks column\(s\) \['path'\]"):
        read_manifest(tmp_path / "m.csv")


def test_manifest_empty_path_cell(tmp_path, outcome):
    """Manifest row without a path: ConfigError naming the row"""
    (tmp_path / "m.csv").write_text("scan_id,path\na,/x\nb,\n")
    with outcome.error(ConfigError, match=r"rows \[3\] have no path"):
        read_manifest(tmp_path / "m.csv")


def test_ids_colliding_as_folders(tmp_path, outcome):
    """scan_ids 'p1 a' and 'p1/a' (one output folder): exit 2, refused at validation"""
    pd.DataFrame({"scan_id": ["p1 a", "p1/a"], "path": ["/a", "/b"]}).to_csv(tmp_path / "m.csv", index=False)
    outcome.cli(["batch", str(tmp_path / "m.csv"), "-o", str(tmp_path / "out")], exit_code=2,
                match="same output folder name 'p1_a'")


def test_second_batch_same_folder(tmp_path, outcome):
    """A second batch on an output folder while one runs: exit 2, BatchLockedError"""
    (tmp_path / "m.csv").write_text("scan_id,path\na,/x\n")
    with BatchLock(tmp_path / "out"):
        outcome.cli(["batch", str(tmp_path / "m.csv"), "-o", str(tmp_path / "out")], exit_code=2,
                    match="another batch is running")


def test_changed_path_old_result(tmp_path, outcome):
    """Manifest row's path changed after a finished run: the old numbers are not shown, the scan is pending"""
    data = tmp_path / "a.nii.gz"
    data.write_bytes(b"x" * 10)
    other = tmp_path / "b.nii.gz"
    other.write_bytes(b"y" * 20)
    old_key = resume_key("s1", str(data), {})
    write_json(tmp_path / "out" / "status" / "s1.json",
               {"scan_id": "s1", "status": "done", "key": old_key, "row": {"lung_volume_total_ml": 5580.0}})
    df = pd.DataFrame({"scan_id": ["s1"], "path": [str(other)]})
    new_key = resume_key("s1", str(other), {})
    table = cohort_table(df, tmp_path / "out", {"s1": new_key})
    assert new_key != old_key and table.loc[0, "status"] == "pending"
    assert "lung_volume_total_ml" not in table.columns
    outcome.correct("status 'pending' (rerun), the old scan's 5580 mL not attached to the new path")
