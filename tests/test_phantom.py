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


def test_options_keep_the_default_truth_and_add_what_they_say():
    scan, t = make_phantom(62, extent=20)
    for kw in (dict(table="curved"), dict(bowel_gas=True), dict(prone=True)):
        s2, t2 = make_phantom(62, extent=20, **kw)
        assert np.array_equal(t.lungs, t2.lungs) and np.array_equal(t.airways, t2.airways), kw
        assert t.landmarks_z == t2.landmarks_z
    # curved table: an air cushion (about -990 HU) enclosed outside the body, behind the patient
    s2, t2 = make_phantom(62, extent=20, table="curved")
    k = s2.shape[0] // 2
    back = s2.hu[k, s2.shape[1] // 2 + 40:, s2.shape[2] // 2]
    assert (back < -900).any() and (back > 100).any()
    # prone: the table lies in front, the dependent lung (anterior) is denser; the header says so
    s3, t3 = make_phantom(62, extent=0, prone=True)
    s0, t0 = make_phantom(62, extent=0)
    lung = t3.lungs > 0
    ys = np.nonzero(lung)[1]
    front, back_ = lung & (np.arange(s3.shape[1])[None, :, None] < np.percentile(ys, 25)), \
        lung & (np.arange(s3.shape[1])[None, :, None] > np.percentile(ys, 75))
    assert s3.hu[front].mean() > s3.hu[back_].mean() + 20
    assert s0.hu[front].mean() < s0.hu[back_].mean()
    assert s3.meta["patient_position"] == "HFP"
    # bowel gas: more air below the domes, outside the lungs
    s4, t4 = make_phantom(62, extent=20, bowel_gas=True)
    below = np.array([z < t.landmarks_z["right_dome"] for z in (s4.z_mm(i) for i in range(s4.shape[0]))])
    gas = lambda s: int(((s.hu[below] < -900) & (t.lungs[below] == 0)).sum())  # noqa: E731
    assert gas(s4) > gas(scan) + 50


def test_neck_option_reaches_above_the_apex_with_a_narrow_neck_and_thyroid():
    scan, t = make_phantom(63, extent=0, neck=True)
    top_lung = max(i for i in range(scan.shape[0]) if (t.lungs[i] > 0).any())
    assert scan.z_mm(scan.shape[0] - 1) - scan.z_mm(top_lung) >= 40
    k = scan.shape[0] - 3
    body_neck = (scan.hu[k] > -500).sum()
    body_chest = (scan.hu[scan.shape[0] // 2] > -500).sum()
    assert body_neck < 0.6 * body_chest
    assert t.airways[k].any()                                   # the trachea runs up through the neck
    assert ((scan.hu[scan.shape[0] - 8] > 70) & (scan.hu[scan.shape[0] - 8] < 120)).sum() > 5   # thyroid


def test_truth_params_record_the_drawn_anatomy_the_request_and_the_found_landmarks(p30):
    """Truth.params: every drawn parameter, what was asked (extent, options) and the two heights found while drawing
    (the trunk's origin and the carina), which are the truth's landmarks; the parameters themselves are frozen."""
    import dataclasses

    from sscild.phantom import _draw_params

    _, t = p30
    p = t.params
    assert p["extent_target"] == 30.0 and p["size"] == "small" and p["cut"] is None
    assert (p["neck"], p["table"], p["bowel_gas"], p["prone"]) == (False, "flat", False, False)
    assert p["bt_origin_z"] == t.landmarks_z["great_vessel_origin"] and p["carina_split_z"] == t.landmarks_z["carina"]
    assert t.landmarks_z["venous_confluence"] == pytest.approx(p["z_offset"] + p["venous"])
    assert p["dome_l"] < p["dome_r"] < 0 < p["apex"]
    drawn = _draw_params(np.random.default_rng(11))
    assert all(getattr(drawn, k) == p[k] for k in ("body_a", "apex", "z_offset", "blood_hu", "trachea_r"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        drawn.apex = 0.0  # type: ignore[misc]
