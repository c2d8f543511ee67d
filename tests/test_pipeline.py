"""The analysis of one scan through the command line: files, schemas, geometry, errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from sscild.consensus import MIN_LUNG_AREA_CM2
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
              "report.html", "vessels.nii.gz", "quality.json", "regions.json", "regions.png"):
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
    import pydicom
    sr = pydicom.dcmread(out / "sr.dcm")                   # the measurements as DICOM SR beside the SEG
    assert sr.Modality == "SR" and sr.StudyInstanceUID == pydicom.dcmread(out / "seg.dcm").StudyInstanceUID


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


SMALL = dict(shape=(60, 96, 96), spacing=(4.0, 3.6, 3.6))


@pytest.fixture(scope="module")
def small():
    from sscild.anatomy import segment_lungs
    from sscild.vessels import segment_vessels

    scan, truth = make_phantom(55, extent=30, **SMALL)
    lungs = segment_lungs(scan)
    return scan, lungs, segment_vessels(scan, lungs)


def test_lesion_stage_counts_vessels_and_airways_as_normal_lung(small, monkeypatch):
    """A lesion model that calls every lung voxel ground glass: after the stage no GG/RET voxel lies on a vessel
    or an airway or on a slice with less than MIN_LUNG_AREA_CM2 of lung, every other lung voxel is still GG, and
    lesions.json says what was excluded."""
    import sscild.lesions as lesions_mod
    from sscild.modelset import ModelSet
    from sscild.pipeline import lesion_stage
    from sscild.settings import AnalysisSettings

    scan, lungs, vessels = small
    assert vessels.mask.sum() > 50
    monkeypatch.setattr(lesions_mod, "segment_lesions",
                        lambda model, cfg, scan, lung, **kw: np.where(lung, 2, 0).astype(np.uint8))
    models = ModelSet(loaders={"lesions": lambda d, device="cpu": (None, None, {"name": "lesion U-Net"})})
    step = lesion_stage(scan, lungs, None, AnalysisSettings(), models, vessels)
    lab = step.value.labels
    area = lungs.mask.sum((1, 2)) * scan.spacing[1] * scan.spacing[2] / 100.0
    small = np.zeros(lungs.mask.shape, bool)
    small[area < MIN_LUNG_AREA_CM2] = True
    assert (lungs.mask & small).sum() > 0 and (lungs.mask & ~small).sum() > 0    # the phantom has both
    assert not (lab[vessels.mask] >= 2).any() and (lab[vessels.mask & lungs.mask] == 1).all()
    assert (lab[lungs.mask & small] == 1).all()
    assert (lab[lungs.mask & ~small & ~vessels.mask & ~lungs.airways] == 2).all()
    assert "vessels" in step.value.summary["excluded"] and "cm^2 of lung" in step.value.summary["excluded"]
    assert step.value.summary["whole"]["involvement_pct"] == pytest.approx(
        100 * (lungs.mask & ~small & ~vessels.mask & ~lungs.airways).sum() / lungs.mask.sum(), abs=0.01)


def test_thin_vessel_voxels_inside_reticulation_stay_ret_and_vessels_elsewhere_are_normal():
    """A slice at 0.7 mm pixels: a vessel 4.2 mm in radius and a line one pixel wide across the slice, all called RET;
    the parenchyma is RET on the left half only. The line stays RET where it crosses the reticulation (the vessel
    mask takes reticular lines for vessels) and is normal beyond; the thick vessel is normal although it lies in the
    reticulation; vessel voxels called GG are normal everywhere."""
    from sscild.anatomy import Lungs
    from sscild.pipeline import RET_AREA_WINDOW_MM, exclude_structures
    from sscild.vessels import Vessels

    lung = np.ones((3, 200, 200), bool)
    yy, xx = np.mgrid[:200, :200]
    disk = (yy - 50) ** 2 + (xx - 50) ** 2 <= 36                        # 6 px = 4.2 mm radius, in the reticulation
    vessel = np.zeros(lung.shape, bool)
    vessel[:, disk] = True
    vessel[:, 120, 10:190] = True                                       # a line, left half in the reticulation
    lungs = Lungs(lung.astype(np.uint8), np.zeros(lung.shape, bool))
    labels = np.where(xx < 100, 3, 1)[None].repeat(3, 0).astype(np.uint8)
    labels[vessel] = 3
    out = exclude_structures(labels, lungs, Vessels(vessel, 0.0), (0.7, 0.7))
    margin = int(np.ceil(RET_AREA_WINDOW_MM / 0.7))
    assert (out[:, 120, 10:100 - margin] == 3).all()                   # reticular line kept
    assert (out[:, 120, 100 + margin:190] == 1).all()                  # a vessel in normal lung
    assert (out[:, disk] == 1).all()                                    # thick: a vessel in reticulation
    assert (out[~vessel] == labels[~vessel]).all()                     # the parenchyma keeps its labels
    labels[vessel] = 2
    out = exclude_structures(labels, lungs, Vessels(vessel, 0.0), (0.7, 0.7))
    assert (out[vessel] == 1).all()


class _FakeScorer:
    """Stands in for S-Net: TOT = 20 % (+1 on the mirrored copy), GG 12, RET 8."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, images, lungs):
        out = np.tile([20.0, 12.0, 8.0], (len(images), 1))
        out[1:2] += 1.0
        return out


def test_score_stage_skips_slices_with_too_little_lung_and_keeps_the_tta_spread(small, monkeypatch):
    import types

    import sscild.scoring.snet as snet_mod
    from sscild.anatomy import Lungs
    from sscild.modelset import ModelSet
    from sscild.lesions import summarise
    from sscild.pipeline import Step, agreement_stage, score_stage
    from sscild.results import LesionMaps
    from sscild.settings import AnalysisSettings

    scan, lungs, _ = small
    monkeypatch.setattr(snet_mod, "SNetScorer", _FakeScorer)
    k_big = int(np.argmax(lungs.mask.sum(axis=(1, 2))))
    labels = lungs.labels.copy()
    k_small = k_big - 3
    ys, xs = np.nonzero(labels[k_small])
    labels[k_small] = 0
    labels[k_small, ys[:50], xs[:50]] = 1                   # 50 px x 3.6 x 3.6 mm = 6.5 cm2 < 15 cm2
    thin = Lungs(labels, lungs.airways)
    z = {n: None for n in ("L1", "L2", "L3", "L4", "L5")}
    z.update(L2=scan.z_mm(k_small), L3=scan.z_mm(k_big))
    models = ModelSet(loaders={"snet": lambda d, device="cpu": (None, None, {"name": "S-Net"})})
    sc = score_stage(scan, thin, types.SimpleNamespace(z_mm=z), AnalysisSettings(), models).value
    assert sc.levels["L2"].TOT is None and sc.levels["L2"].note == "too little lung on the slice (< 15 cm2)"
    assert sc.levels["L1"].TOT is None and sc.n_levels_scored == 1
    l3 = sc.levels["L3"]
    assert l3.TOT == 20.0 and l3.TOT_sd == pytest.approx(np.std([20, 21, 20, 20], ddof=1))
    # the lesion map calls half of the L3 slice's lung GG: 50 % beside S-Net's 20 %: a warning
    les = np.where(thin.mask, 1, 0).astype(np.uint8)
    ys, xs = np.nonzero(thin.mask[k_big])
    half = ys < np.median(ys)
    les[k_big, ys[half], xs[half]] = 2
    step = agreement_stage(Step(sc), LesionMaps(les, summarise(les, thin.labels, scan, {"L3": k_big})))
    ag = step.value.levels["L3"].agreement
    assert ag["lesion_tot"] == pytest.approx(100 * half.mean(), abs=0.01) and ag["headline"] == "S-Net"
    assert any(w.startswith("L3: S-Net 20.0 % vs lesion map") for w in step.warnings)
    assert step.value.to_dict()["levels"]["L3"]["agreement"]["difference"] == pytest.approx(ag["difference"])
    # the map's GG / RET ratios beside it, and each score's uncertainty: the TTA SD and half the difference
    assert ag["lesion_GG"] == pytest.approx(ag["lesion_tot"]) and ag["lesion_RET"] == 0.0
    u = ag["uncertainty"]
    assert u["TOT"] == pytest.approx(np.hypot(l3.TOT_sd, (l3.TOT - ag["lesion_tot"]) / 2))
    assert u["RET"] == pytest.approx(np.hypot(l3.RET_sd, l3.RET / 2)) and u["TOT"] > 14.0
    assert step.value.uncertainty() == {"L3": u}


def test_analysis_holds_vessels_quality_and_regions(small):
    from sscild import AnalysisSettings, analyze

    scan, _, vessels = small
    a = analyze(scan, AnalysisSettings(scores=False, lesions=False))
    d = a.to_dict()
    assert d["vessels"]["volume_ml"] == pytest.approx(vessels.volume_ml)
    assert set(d["quality"]["measures"]) >= {"tracheal_air_hu", "head_up"}
    assert all(w in a.warnings for w in a.quality.warnings)
    assert d["regions"]["measure"] == "HAA_pct" and "lower" in d["regions"]["regions"]
    assert {"vessels", "quality", "regions"} <= set(a.timings_s)
    off = analyze(scan, AnalysisSettings(scores=False, lesions=False, vessels=False, quality=False, regions=False))
    assert off.vessels is None and off.to_dict()["regions"] is None


def test_batch_manifest_fvc_goes_into_that_scans_settings(tmp_path):
    """A manifest column fvc / fvc_pct reaches the scan's AnalysisSettings (empty cells: the batch default)."""
    import pandas as pd

    from sscild.cohort import run_batch
    from sscild.settings import AnalysisSettings

    def process(scan_id, path, outdir, options):
        outdir.mkdir(parents=True, exist_ok=True)
        opts = {k: v for k, v in options.items() if k != "series_uid"}
        return {"fvc_used": AnalysisSettings.from_mapping(opts).fvc_pct}

    for col in ("fvc", "fvc_pct"):
        m = tmp_path / f"{col}.csv"
        pd.DataFrame({"scan_id": ["a", "b"], "path": ["/x/a", "/x/b"], col: [62.5, None]}).to_csv(m, index=False)
        table = run_batch(m, tmp_path / col, options={"fvc_pct": 90.0}, process=process, quiet=True).table
        got = dict(zip(table["scan_id"], table["fvc_used"]))
        assert got == {"a": 62.5, "b": 90.0}, col
