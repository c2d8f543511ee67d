"""DICOM SR (TID 1500) of a phantom analysis: round trip through highdicom to the ``analysis.json`` numbers, the
references (SEG segments, level slices), the structure OHIF's SR reader relies on, and dciodvfy with 0 errors.

The phantom (small, seed 5, ILD 25 %) is written as DICOM, analysed by the pipeline and exported as ``seg.dcm``
once per module. ``dciodvfy`` (Debian package ``dicom3tools``) is installed when missing and possible (root with
apt-get), otherwise that check is skipped with the reason.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pydicom
import pytest

from sscild.domain import LEVELS

TOL = 1e-9      # values go through DICOM as FD (and DS): equal to float precision


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    from sscild.dicomseg import lung_segments, write_dicom_seg
    from sscild.io import load_ct
    from sscild.phantom import make_phantom, write_phantom
    from sscild.pipeline import analyze
    from sscild.sr import write_sr
    from sscild.util import write_json

    d = tmp_path_factory.mktemp("sr")
    ph, truth = make_phantom(5, size="small", extent=25.0)
    write_phantom(ph, truth, d / "phantom", fmt="dicom")
    src = d / "phantom" / "dicom"
    scan = load_ct(src)
    a = analyze(scan)
    analysis = json.loads(write_json(d / "analysis.json", a.to_dict()).read_text())
    seg = write_dicom_seg(src, scan, lung_segments(a.lungs.labels, a.lesion_labels), d / "seg.dcm")
    sr = write_sr(analysis, src, seg, d / "sr.dcm", fvc_pct=65.0)
    return {"dir": d, "src": src, "analysis": analysis, "seg": seg, "sr": sr, "scan": scan}


def test_sr_reads_back_to_the_analysis_json_numbers(case):
    from sscild.sr import read_sr, sr_groups, sr_values

    a = case["analysis"]
    assert a["scores"] and a["lesions"], "the shipped S-Net and lesion U-Net should have run"
    back = read_sr(case["sr"])
    segs = [str(s.SegmentLabel) for s in pydicom.dcmread(case["seg"]).SegmentSequence]
    expected = sr_values(sr_groups(a, segs, fvc_pct=65.0))
    assert set(expected) <= set(back)
    for group, values in expected.items():
        assert back[group].keys() == values.keys(), group
        for k, v in values.items():
            assert back[group][k] == (pytest.approx(v, abs=TOL) if isinstance(v, float) else v), (group, k)
    # the same numbers, spelled out against analysis.json itself
    vol, les, dens = a["lungs"]["volumes_ml"], a["lesions"], a["density"]
    assert back["Right lung"]["Volume"] == pytest.approx(vol["right"], abs=TOL)
    assert back["Left lung"]["Attenuation Coefficient (Mean)"] == pytest.approx(dens["left"]["MLA_HU"], abs=TOL)
    assert back["Both lungs"]["High attenuation area, % of lung volume"] == \
        pytest.approx(dens["whole"]["HAA_pct"], abs=TOL)
    assert back["Ground glass opacity"]["Volume"] == pytest.approx(les["whole"]["GG_ml"], abs=TOL)
    assert back["Reticulation/fibrosis"]["Volume, % of lung"] == pytest.approx(les["whole"]["RET_pct"], abs=TOL)
    l3 = next(k for k in back if k.startswith("Goh level L3"))
    assert back[l3]["Total disease extent, % of level lung area [S-Net]"] == \
        pytest.approx(a["scores"]["levels"]["L3"]["TOT"], abs=TOL)
    goh = back["Goh staging"]
    assert goh["Goh extent (mean TOT of the Goh levels) (Mean)"] == pytest.approx(a["scores"]["goh_extent"], abs=TOL)
    ext = a["scores"]["goh_extent"]
    want = "limited" if ext < 10 else "extensive"      # > 30 %, or 10-30 % with FVC 65 % < 70 %
    assert goh["Goh stage"] == want and goh["FVC, % predicted (given)"] == 65.0


def test_sr_references_the_seg_segments_and_the_level_slices(case):
    from sscild.sr import read_sr

    back = read_sr(case["sr"])
    seg = pydicom.dcmread(case["seg"])
    numbers = {str(s.SegmentLabel): int(s.SegmentNumber) for s in seg.SegmentSequence}
    assert back["_segments"] == {k: (str(seg.SOPInstanceUID), n) for k, n in numbers.items()}
    by_uid = {str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(p, stop_before_pixels=True)
                                                  for p in case["src"].iterdir())}
    levels = {e["name"]: e for e in case["analysis"]["levels"]["levels"]}
    step = case["scan"].spacing[0]
    for n in LEVELS:
        group = next(k for k in back if k.startswith(f"Goh level {n}"))
        (uid,) = back["_images"][group]
        z = float(by_uid[uid].ImagePositionPatient[2])
        assert abs(z - levels[n]["z_mm"]) <= step / 2 + 1e-3, (n, z, levels[n]["z_mm"])


def _items(seq):
    for it in seq:
        yield it
        if "ContentSequence" in it:
            yield from _items(it.ContentSequence)


def test_sr_tree_has_what_ohif_reads(case):
    """OHIF's cornerstone-dicom-sr SOP class handler: root 126000, Image Library 111028 holding a group 126200
    with images, Imaging Measurements 126010 of groups 125007 each with 112039 (TEXT) and 112040 (UIDREF), and
    numeric items whose first child is not an INFERRED FROM / CONTAINS non-graphic item (read as coordinates)."""
    ds = pydicom.dcmread(case["sr"])
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34" and ds.ConceptNameCodeSequence[0].CodeValue == "126000"
    top = {it.ConceptNameCodeSequence[0].CodeValue: it for it in ds.ContentSequence}
    lib = top["111028"].ContentSequence
    assert lib[0].ConceptNameCodeSequence[0].CodeValue == "126200"
    assert any("ReferencedSOPSequence" in it for it in lib[0].ContentSequence)
    groups = [g for g in top["126010"].ContentSequence if g.ConceptNameCodeSequence[0].CodeValue == "125007"]
    assert len(groups) == 4 + 1 + 5 + 1
    for g in groups:
        codes = {it.ConceptNameCodeSequence[0].CodeValue: it for it in g.ContentSequence}
        assert codes["112039"].ValueType == "TEXT" and codes["112040"].ValueType == "UIDREF"
        for num in (it for it in g.ContentSequence if it.ValueType == "NUM"):
            assert "ContentSequence" in num, "OHIF destructures the NUM's ContentSequence"
            first = num.ContentSequence[0]
            assert first.RelationshipType == "HAS CONCEPT MOD" or first.ValueType in ("SCOORD", "SCOORD3D")
    assert sum(1 for it in _items(ds.ContentSequence) if it.ValueType == "NUM") > 50


def _dciodvfy() -> str:
    exe = shutil.which("dciodvfy")
    if exe:
        return exe
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", "-qq", "dicom3tools"], env=env, capture_output=True, timeout=900)
        exe = shutil.which("dciodvfy")
        if exe:
            return exe
    pytest.skip("dciodvfy (Debian package dicom3tools) is not installed and cannot be installed here")


def test_sr_passes_dciodvfy_without_errors(case):
    r = subprocess.run([_dciodvfy(), str(case["sr"])], capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    errors = [ln for ln in out.splitlines() if ln.startswith("Error")]
    assert "Comprehensive3DSR" in out and errors == [], "\n".join(errors[:20])


def test_bad_seg_path_is_a_clear_error(case, tmp_path):
    from sscild.errors import SscildError
    from sscild.sr import write_sr

    bad = tmp_path / "seg.dcm"
    bad.write_bytes(b"not dicom")
    with pytest.raises(SscildError, match="DICOM-SEG"):
        write_sr(case["analysis"], case["src"], bad, tmp_path / "sr.dcm")
    assert not (tmp_path / "sr.dcm").exists()


def test_heat_maps_as_parametric_maps_keep_values_and_positions(case, tmp_path):
    """Known maps (a ramp per level, a marked pixel) -> one Parametric Map per pattern, a frame per level slice
    referencing that slice; values read back with highdicom at the right pixel; dciodvfy 0 errors."""
    import highdicom as hd

    from sscild.sr import write_parametric_maps

    scan, a = case["scan"], case["analysis"]
    ks = {n: a["scores"]["levels"][n]["slice"] for n in LEVELS}
    ny, nx = scan.shape[1:]
    ramp = (np.arange(ny)[:, None] * 0.01 + np.arange(nx)[None, :] * 0.001).astype(np.float32)
    maps = {}
    for i, n in enumerate(LEVELS):
        m = ramp + i
        m[20, 30] = -5.0 - i                              # (y, x) = (20, 30): 20 rows from anterior, 30 from right
        maps[n] = {"slice": ks[n], "TOT": m, "GG": m / 2, "RET": -m}
    out = write_parametric_maps(maps, scan, case["src"], tmp_path)
    assert set(out) == {"TOT", "GG", "RET"}
    by_uid = {str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(p, stop_before_pixels=True)
                                                  for p in case["src"].iterdir())}
    pm = hd.pm.ParametricMap.from_dataset(pydicom.dcmread(out["TOT"]))
    px = pm.pixel_array
    assert px.dtype == np.float32 and px.shape == (5, ny, nx)
    for f, n in enumerate(LEVELS):
        (ref,) = pm.PerFrameFunctionalGroupsSequence[f].DerivationImageSequence[0].SourceImageSequence
        src = by_uid[str(ref.ReferencedSOPInstanceUID)]
        assert abs(float(src.ImagePositionPatient[2]) - scan.z_mm(ks[n])) < 1e-3, n
        # the phantom is stored in LPS order, so frame pixel (row, col) is array (y, x)
        assert px[f, 20, 30] == pytest.approx(-5.0 - f) and px[f, 5, 7] == pytest.approx(ramp[5, 7] + f)
    r = subprocess.run([_dciodvfy(), str(out["RET"])], capture_output=True, text=True, timeout=300)
    errors = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.startswith("Error")]
    assert errors == [], "\n".join(errors)


def test_deidentified_sr_files_with_the_deidentified_seg_and_keeps_the_numbers(case, tmp_path):
    from sscild.dicomseg import lung_segments, write_dicom_seg
    from sscild.errors import SscildError
    from sscild.sr import read_sr, write_sr

    with pytest.raises(SscildError, match="not de-identified"):     # an identified SEG: refuse, do not guess
        write_sr(case["analysis"], case["src"], case["seg"], tmp_path / "x.dcm", deidentify=True)
    from sscild.dicomseg import read_dicom_seg

    scan = case["scan"]
    lab = np.zeros(scan.shape, np.uint8)
    masks = read_dicom_seg(case["seg"], case["src"], scan)
    lab[masks["Right lung"]], lab[masks["Left lung"]] = 1, 2
    les = np.where(lab > 0, 1, 0).astype(np.uint8)
    les[masks["Ground glass opacity"]], les[masks["Reticulation/fibrosis"]] = 2, 3
    dseg = write_dicom_seg(case["src"], scan, lung_segments(lab, les), tmp_path / "seg.dcm", deidentify=True)
    out = write_sr(case["analysis"], case["src"], dseg, tmp_path / "sr.dcm", fvc_pct=65.0, deidentify=True)
    raw = out.read_bytes()
    assert b"PHANTOM" not in raw and b"20000101" not in raw      # the phantom's name, id and study date
    ds, sd = pydicom.dcmread(out), pydicom.dcmread(dseg)
    assert ds.PatientIdentityRemoved == "YES" and ds.StudyInstanceUID == sd.StudyInstanceUID
    assert ds.PatientID == sd.PatientID
    back, ident = read_sr(out), read_sr(case["sr"])
    for group in ("Right lung", "Both lungs", "Goh staging"):
        assert back[group] == ident[group]
    assert {v for v, _ in back["_segments"].values()} == {str(sd.SOPInstanceUID)}
    assert back["_images"] == ident["_images"]     # the level slices: the source CT instances, as in the plain SR


def test_groups_of_a_partial_analysis_skip_what_did_not_run():
    """Without the learned stages only the lung groups remain; a level not scored has no group; NaN is left out."""
    from sscild.sr import sr_groups, sr_values

    a = {"lungs": {"volumes_ml": {"right": 1500.0, "left": 1400.0, "total": 2900.0}},
         "density": {"right": {"MLA_HU": -850.0, "SD_HU": 90.0, "HAA_pct": float("nan")}, "whole": {"MLA_HU": -840.0}}}
    groups = sr_groups(a, ["Right lung", "Left lung"])
    assert [g.label for g in groups] == ["Right lung", "Left lung", "Both lungs"]
    v = sr_values(groups)
    assert v["Right lung"] == {"Volume": 1500.0, "Attenuation Coefficient (Mean)": -850.0,
                               "Attenuation Coefficient (Standard Deviation)": 90.0}
    a["scores"] = {"levels": {"L1": {"TOT": 12.0, "GG": 8.0, "RET": 4.0}, "L2": {"TOT": None, "GG": None, "RET": None},
                              "L3": {"TOT": 20.0, "GG": 10.0, "RET": 10.0}, "L4": {"TOT": 16.0, "GG": 8.0, "RET": 8.0}}}
    v = sr_values(sr_groups(a, ["Right lung"], fvc_pct=75.0))
    assert not any(k.startswith("Goh level L2") for k in v) and any(k.startswith("Goh level L4") for k in v)
    assert v["Goh staging"]["Goh extent (mean TOT of the Goh levels) (Mean)"] == pytest.approx(16.0)
    assert v["Goh staging"]["Goh stage"] == "limited"          # 16 % in the band, FVC 75 % >= 70 %
    assert v["Goh staging"]["Fibrotic extent (mean RET of the Goh levels) (Mean)"] == pytest.approx(22 / 3)
