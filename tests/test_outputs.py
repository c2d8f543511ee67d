"""The output folder: identical when written twice, all or nothing, analysis.json last with every warning."""
from __future__ import annotations

import dataclasses
import json

import pytest

from sscild import AnalysisSettings, analyze, write_outputs
from sscild.lesions import summarise
from sscild.phantom import make_phantom, write_phantom
from sscild.results import LesionMaps, LevelScore, LevelScores

SMALL = dict(shape=(60, 96, 96), spacing=(4.0, 3.6, 3.6))


@pytest.fixture(scope="module")
def analysed():
    """A small phantom analysed without models, then given typed scores and lesions from its truth."""
    scan, truth = make_phantom(53, extent=20, **SMALL)
    a = analyze(scan, AnalysisSettings(scores=False, lesions=False))
    ks = {n: a.levels.array_index(scan, n) for n in a.levels.z_mm}
    per = {n: LevelScore(*(float(truth.level_scores[n][p]) for p in ("TOT", "GG", "RET")), slice=ks[n])
           for n in ks}
    lesions = LesionMaps(truth.lesions, summarise(truth.lesions, a.lungs.labels, scan, ks))
    return scan, truth, dataclasses.replace(a, scores=LevelScores.from_levels(per), lesions=lesions)


def _folder(d):
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_written_twice_gives_identical_folders_and_the_analysis_is_unchanged(analysed, tmp_path):
    scan, truth, a = analysed
    before = json.dumps(a.to_dict(), sort_keys=True, default=str)
    w1 = write_outputs(a, scan, tmp_path / "one")
    w2 = write_outputs(a, scan, tmp_path / "two")
    write_outputs(a, scan, tmp_path / "one")                  # over its own earlier output
    one, two = _folder(tmp_path / "one"), _folder(tmp_path / "two")
    assert sorted(one) == sorted(two) and len(one) >= 15
    assert [k for k in one if one[k] != two[k]] == []         # byte-identical, every file
    assert json.dumps(a.to_dict(), sort_keys=True, default=str) == before
    assert set(w1) == set(w2) >= {"lungs", "airways", "levels", "density", "scores", "lesions", "lesions_json",
                                  "report", "analysis"}
    sc = json.loads(one["scores.json"])
    assert sc["goh_extent"] == pytest.approx(sum(truth.level_scores[n]["TOT"] for n in sc["levels"]) / 5)
    assert sc["levels"]["L3"]["GG"] == truth.level_scores["L3"]["GG"]
    assert [p.name for p in tmp_path.iterdir()] in (["one", "two"], ["two", "one"])   # no temporary leftovers


@pytest.fixture(scope="module")
def analysed_dicom(tmp_path_factory):
    from sscild.io import load_ct

    d = tmp_path_factory.mktemp("dicom")
    scan0, truth = make_phantom(54, extent=10, **SMALL)
    write_phantom(scan0, truth, d / "ph", fmt="dicom")
    scan = load_ct(d / "ph" / "dicom")
    return scan, analyze(scan, AnalysisSettings(scores=False, lesions=False))


def _without_uids_and_times(path):
    """A DICOM file's content with what must differ between two writings (UIDs, dates, times) taken out."""
    import pydicom

    ds = pydicom.dcmread(path)

    def strip(d):
        for elem in list(d):
            if elem.VR in ("UI", "DA", "TM", "DT"):
                del d[elem.tag]
            elif elem.VR == "SQ":
                for item in elem.value:
                    strip(item)

    strip(ds)
    return ds


def test_dicom_input_written_twice_differs_only_in_the_seg_uids_and_times(analysed_dicom, tmp_path):
    scan, a = analysed_dicom
    write_outputs(a, scan, tmp_path / "one")
    write_outputs(a, scan, tmp_path / "two")
    one, two = _folder(tmp_path / "one"), _folder(tmp_path / "two")
    assert sorted(one) == sorted(two) and {"seg.dcm", "sr.dcm"} <= set(one)
    assert set(k for k in one if one[k] != two[k]) <= {"seg.dcm", "sr.dcm"}
    s1, s2 = (_without_uids_and_times(tmp_path / d / "seg.dcm") for d in ("one", "two"))
    assert s1 == s2 and s1.PixelData == s2.PixelData
    r1, r2 = (_without_uids_and_times(tmp_path / d / "sr.dcm") for d in ("one", "two"))
    assert r1 == r2


def test_dicom_input_gets_an_sr_with_the_lung_volumes(analysed_dicom, tmp_path):
    import pydicom

    from sscild.sr import read_sr

    scan, a = analysed_dicom
    w = write_outputs(a, scan, tmp_path / "out")
    sr, seg = pydicom.dcmread(w["dicom_sr"]), pydicom.dcmread(w["dicom_seg"])
    assert sr.Modality == "SR" and sr.StudyInstanceUID == seg.StudyInstanceUID
    vals = read_sr(w["dicom_sr"])
    right = [v for v in vals["Right lung"].values() if isinstance(v, float)]
    assert any(abs(v - a.volumes_ml["right"]) < 0.01 for v in right)          # the right lung's volume, mL
    doc = json.loads((tmp_path / "out" / "analysis.json").read_text())
    assert not [x for x in doc["warnings"] if "SR not written" in x]


def test_analysis_json_is_written_last_and_holds_the_dicom_seg_failure(analysed_dicom, tmp_path, monkeypatch):
    scan, a = analysed_dicom

    def broken(*args, **kwargs):
        raise ValueError("no frame of reference")

    monkeypatch.setattr("sscild.dicomseg.write_dicom_seg", broken)
    w = write_outputs(a, scan, tmp_path / "out")
    doc = json.loads((tmp_path / "out" / "analysis.json").read_text())
    msg = "DICOM-SEG not written: ValueError: no frame of reference"
    assert msg in doc["warnings"] and msg in w.warnings and msg not in a.warnings
    assert msg in (tmp_path / "out" / "report.html").read_text()
    assert not (tmp_path / "out" / "seg.dcm").exists()
    last = max((p for p in (tmp_path / "out").iterdir()), key=lambda p: p.stat().st_mtime_ns)
    assert last.name == "analysis.json"


def test_an_older_output_is_replaced_as_a_whole(analysed, tmp_path):
    scan, _, a = analysed
    out = tmp_path / "out"
    write_outputs(dataclasses.replace(a, lesions=None), scan, out)
    (out / "heatmap_L1_TOT.png").write_bytes(b"an old run's file")
    write_outputs(dataclasses.replace(a, scores=None), scan, out)
    names = {p.name for p in out.iterdir()}
    assert "lesions.nii.gz" in names and "scores.json" not in names and "heatmap_L1_TOT.png" not in names
