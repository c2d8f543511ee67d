"""Phantom: determinism, anatomy varies by seed, landmark order and level definitions, exact truth."""
from __future__ import annotations

import numpy as np
import pydicom
import pytest

from sscild.phantom import make_nonchest_phantom, make_phantom, write_dicom_series, write_phantom


@pytest.fixture(scope="module")
def p30():
    return make_phantom(11, extent=30)


def test_deterministic_per_seed_and_varies_across_seeds():
    a, ta = make_phantom(5, extent=10)
    b, tb = make_phantom(5, extent=10)
    c, tc = make_phantom(6, extent=10)
    assert np.array_equal(a.hu, b.hu) and np.array_equal(ta.lesions, tb.lesions)
    assert ta.landmarks_z == tb.landmarks_z
    assert ta.landmarks_z != tc.landmarks_z
    assert abs(ta.volumes_ml["right"] - tc.volumes_ml["right"]) > 10


def test_landmarks_in_anatomical_order_and_level_definitions(p30):
    _, t = p30
    lm = t.landmarks_z
    assert lm["great_vessel_origin"] > lm["carina"] > lm["venous_confluence"] > lm["right_dome"]
    lv = t.levels_z
    assert lv["L1"] == lm["great_vessel_origin"] and lv["L2"] == lm["carina"]
    assert lv["L3"] == lm["venous_confluence"]
    assert lv["L5"] == pytest.approx(lm["right_dome"] + 10.0)
    assert lv["L4"] == pytest.approx((lv["L3"] + lv["L5"]) / 2)


@pytest.mark.parametrize("target", [10.0, 30.0, 60.0])
def test_extent_request_is_met(target):
    _, t = make_phantom(21, extent=target)
    assert t.extent["TOT"] == pytest.approx(target, abs=1.0)
    assert t.extent["TOT"] == pytest.approx(t.extent["GG"] + t.extent["RET"], abs=1e-6)


def test_lesions_only_inside_lungs_and_scores_recount(p30):
    scan, t = p30
    assert np.all((t.lesions > 0) == (t.lungs > 0))
    assert not np.any(t.airways & (t.lungs > 0))
    for name, z in t.levels_z.items():
        k = scan.slice_at_z(z)
        sl = t.lesions[k]
        lung = (sl > 0).sum()
        assert t.level_scores[name]["TOT"] == pytest.approx((sl >= 2).sum() * 100 / lung)
        assert t.level_scores[name]["RET"] == pytest.approx((sl == 3).sum() * 100 / lung)
    # disease is basal: L5 has more than L1
    assert t.level_scores["L5"]["TOT"] > t.level_scores["L1"]["TOT"]


def test_healthy_phantom_and_hu_ranges():
    scan, t = make_phantom(3, extent=0)
    assert t.extent["TOT"] == 0 and not np.any(t.lesions >= 2)
    parenchyma = scan.hu[(t.lungs > 0)]
    assert -900 < np.median(parenchyma) < -780
    assert t.volumes_ml["right"] + t.volumes_ml["left"] > 2000
    assert np.all(scan.hu[t.airways] < -500) or np.median(scan.hu[t.airways]) < -800
    body = scan.hu[scan.hu.shape[0] // 2]
    soft = body[(body > -200) & (body < 200)]
    assert ((soft > 20) & (soft < 75)).mean() > 0.1      # muscle, heart, vessels (~45 HU)
    assert ((soft > -140) & (soft < -60)).mean() > 0.1   # subcutaneous and mediastinal fat (~-90..-100 HU)


def test_cut_scans_drop_the_landmarks_out_of_range():
    scan, t = make_phantom(4, extent=0, cut="arch")
    assert scan.slice_at_z(t.landmarks_z["great_vessel_origin"]) is None
    assert scan.slice_at_z(t.landmarks_z["carina"]) is not None
    scan, t = make_phantom(4, extent=0, cut="base")
    assert scan.slice_at_z(t.landmarks_z["right_dome"]) is None


def test_nonchest_phantoms_have_no_lung_sized_air():
    for kind in ("abdomen", "head"):
        s = make_nonchest_phantom(0, kind=kind)
        assert s.hu.dtype == np.int16 and s.shape[0] >= 10


def test_dicom_files_have_sane_tags(tmp_path):
    scan, _ = make_phantom(2, extent=5, shape=(12, 64, 64), spacing=(3.0, 5.0, 5.0))
    paths = write_dicom_series(scan, tmp_path / "d")
    assert len(paths) == 12
    ds = pydicom.dcmread(paths[3])
    assert ds.Modality == "CT" and ds.Rows == 64
    assert float(ds.ImagePositionPatient[2]) == pytest.approx(scan.z_mm(3), abs=1e-3)
    hu = ds.pixel_array.astype(np.int32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert np.array_equal(hu, scan.hu[3])
    files = write_phantom(scan, make_phantom(2, extent=5, shape=(12, 64, 64), spacing=(3.0, 5.0, 5.0))[1],
                          tmp_path / "n", fmt="nifti")
    assert files["scan"].exists() and files["truth"].exists() and files["lesions"].exists()
