"""The analysis of one scan through the command line: files, schemas, geometry, errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from sscild.cli import app
from sscild.phantom import make_phantom, write_phantom

runner = CliRunner()


@pytest.fixture(scope="module")
def phantom_nifti(tmp_path_factory):
    d = tmp_path_factory.mktemp("ph")
    scan, truth = make_phantom(51, extent=30)
    # stored head first (RAS-like flip) so that outputs must follow the input's geometry
    img = sitk.DICOMOrient(scan.to_sitk(), "RAI")
    sitk.WriteImage(img, str(d / "ct.nii.gz"))
    return d / "ct.nii.gz", scan, truth


def test_analyze_writes_every_output_in_the_input_geometry(phantom_nifti, tmp_path):
    path, scan, truth = phantom_nifti
    out = tmp_path / "out"
    r = runner.invoke(app, ["analyze", "-i", str(path), "-o", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    for f in ("lungs.nii.gz", "airways.nii.gz", "levels.json", "density.json", "analysis.json", "levels.png",
              "report.html"):
        assert (out / f).exists(), f
    src, lab = sitk.ReadImage(str(path)), sitk.ReadImage(str(out / "lungs.nii.gz"))
    assert lab.GetSize() == src.GetSize() and lab.GetDirection() == pytest.approx(src.GetDirection())
    assert lab.GetOrigin() == pytest.approx(src.GetOrigin())
    lps = sitk.GetArrayFromImage(sitk.DICOMOrient(lab, "LPS"))
    from sscild.evaluate import dice
    assert dice(lps == 1, truth.lungs == 1) > 0.97          # right stays right through the flip
    levels = json.loads((out / "levels.json").read_text())
    assert [e["name"] for e in levels["levels"]] == ["L1", "L2", "L3", "L4", "L5"]
    l2 = levels["levels"][1]
    assert abs(l2["z_mm"] - truth.levels_z["L2"]) < 6
    # slice index as read: the file is stored head first, so it counts from the top
    from sscild.io import load_ct
    read = load_ct(path)                      # the geometry as stored (float32 origin in the file)
    k = read.slice_at_z(l2["z_mm"])
    assert l2["slice_index"] == read.shape[0] - 1 - k
    a = json.loads((out / "analysis.json").read_text())
    assert a["software"]["name"] == "sscild" and set(a["timings_s"]) >= {"lungs", "levels", "density"}
    assert a["lungs"]["volumes_ml"]["total"] == pytest.approx(
        truth.volumes_ml["right"] + truth.volumes_ml["left"], rel=0.05)
    d = json.loads((out / "density.json").read_text())
    assert set(d) >= {"whole", "right", "left", "upper", "middle", "lower"}


def test_analyze_dicom_input_also_writes_dicom_seg(tmp_path):
    scan, truth = make_phantom(52, extent=10, shape=(60, 96, 96), spacing=(4.0, 3.6, 3.6))
    write_phantom(scan, truth, tmp_path / "ph", fmt="dicom")
    out = tmp_path / "out"
    r = runner.invoke(app, ["analyze", "-i", str(tmp_path / "ph" / "dicom"), "-o", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    from sscild.dicomseg import read_dicom_seg
    from sscild.io import load_ct
    back = read_dicom_seg(out / "seg.dcm", tmp_path / "ph" / "dicom", load_ct(tmp_path / "ph" / "dicom"))
    lab = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "lungs.nii.gz")))
    assert np.array_equal(back["Right lung"], lab == 1) and np.array_equal(back["Left lung"], lab == 2)


def test_bad_input_gives_one_clear_line_not_a_traceback(tmp_path):
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "sscild", "analyze", "-i", str(tmp_path / "missing"), "-o",
                        str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 2
    assert "does not exist" in r.stderr and "Traceback" not in r.stderr


def test_phantom_command(tmp_path):
    r = runner.invoke(app, ["phantom", "-o", str(tmp_path / "p"), "--seed", "2", "--extent", "20"])
    assert r.exit_code == 0, r.output
    t = json.loads((tmp_path / "p" / "truth.json").read_text())
    assert t["extent"]["TOT"] == pytest.approx(20, abs=1)
    r = runner.invoke(app, ["phantom", "-o", str(tmp_path / "q"), "--extent", "150"])
    assert r.exit_code != 0
