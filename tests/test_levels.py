"""The five Goh levels from anatomy: phantoms with exact truth, cut scans, the real series."""
from __future__ import annotations

import numpy as np
import pytest

from sscild.anatomy import segment_lungs
from sscild.domain import LEVELS
from sscild.levels import find_levels
from sscild.phantom import make_phantom

# tolerances per level on small phantoms (3 mm slices); see bench/RESULTS.md for the held-out statistics
TOL = {"L1": 8.0, "L2": 4.0, "L3": 8.0, "L4": 6.0, "L5": 3.0}


@pytest.mark.parametrize("seed,extent", [(41, 0.0), (42, 40.0)])
def test_levels_on_phantoms(seed, extent):
    scan, truth = make_phantom(seed, extent=extent)
    g = find_levels(scan, segment_lungs(scan))
    for n in LEVELS:
        assert g.z_mm[n] is not None, (n, g.notes[n])
        assert abs(g.z_mm[n] - truth.levels_z[n]) <= TOL[n], (n, g.z_mm[n], truth.levels_z[n])
        k = scan.slice_at_z(g.z_mm[n])
        assert g.slice_index[n] == scan.input_slice_index(k)
    # each level is the centre of the slice nearest its landmark's z (L4 halfway L3-L5, L5 = dome + 10 mm)
    lm = {k: v.z_mm for k, v in g.landmarks.items()}
    exact = {"L1": lm["great_vessel_origin"], "L2": lm["carina"], "L3": lm["venous_confluence"],
             "L5": lm["right_dome"] + 10.0}
    exact["L4"] = (exact["L3"] + exact["L5"]) / 2
    for n in LEVELS:
        assert g.z_mm[n] == pytest.approx(scan.z_mm(scan.slice_at_z(exact[n])))
    d = g.to_dict()
    assert [e["name"] for e in d["levels"]] == list(LEVELS)
    assert set(d["landmarks"]) == {"great_vessel_origin", "carina", "venous_confluence", "right_dome"}
    assert set(d["levels"][0]) == {"name", "z_mm", "slice_index", "confidence", "note"}
    # L1 comes from the brachiocephalic trunk followed down to the aorta (not the fallback, the arch's apex)
    gvo = g.landmarks["great_vessel_origin"]
    assert "brachiocephalic trunk, followed down" in gvo.note and gvo.confidence > 0.5


def test_missing_landmarks_are_reported_not_invented():
    scan, truth = make_phantom(43, extent=0, cut="arch")   # the scan starts below the aortic arch
    g = find_levels(scan, segment_lungs(scan))
    assert g.z_mm["L1"] is None and g.confidence["L1"] == 0.0 and g.notes["L1"]
    assert g.z_mm["L2"] is not None
    scan, truth = make_phantom(43, extent=0, cut="base")   # the scan ends above the right dome
    g = find_levels(scan, segment_lungs(scan))
    assert g.z_mm["L5"] is None and "dome" in g.notes["L5"]
    assert g.z_mm["L4"] is None and "needs both L3 and L5" in g.notes["L4"]


@pytest.mark.realdata
def test_real_series_levels_in_anatomical_order(lung_series_dir):
    from sscild.io import load_ct

    scan = load_ct(lung_series_dir)
    g = find_levels(scan, segment_lungs(scan))
    z = [g.z_mm[n] for n in LEVELS]
    assert all(v is not None for v in z), g.notes
    assert z == sorted(z, reverse=True)       # head first: L1 highest
    assert abs(g.z_mm["L5"] - (g.landmarks["right_dome"].z_mm + 10.0)) <= scan.spacing[0] / 2 + 1e-6
    # the real dome lies in the lower third of the lungs, the arch above the carina
    assert g.z_mm["L1"] - g.z_mm["L2"] > 15


@pytest.mark.realdata
def test_great_vessel_origin_on_the_totalsegmentator_aorta_crop(aorta_crop_dir):
    """Real contrast CT with reference masks: L1 lies within 10 mm of where the brachiocephalic-trunk mask touches
    the aorta mask (the crop has too little lung for a lung outline: the lung-free path)."""
    import SimpleITK as sitk
    from scipy import ndimage as ndi

    from sscild.io import load_ct
    from sscild.levels import find_great_vessel_origin

    scan = load_ct(aorta_crop_dir / "ct_cropped.nii.gz")

    def mask(name):
        img = sitk.DICOMOrient(sitk.ReadImage(str(aorta_crop_dir / f"{name}.nii.gz")), "LPS")
        return sitk.GetArrayFromImage(img) > 0

    touch = np.nonzero((ndi.binary_dilation(mask("brachiocephalic_trunk")) & mask("aorta")).any(axis=(1, 2)))[0]
    reference = (scan.z_mm(touch.min()) + scan.z_mm(touch.max())) / 2
    lm = find_great_vessel_origin(scan)
    assert lm.z_mm is not None, lm.note
    assert abs(lm.z_mm - reference) <= 10.0, (lm.z_mm, reference, lm.note)
    assert "brachiocephalic trunk" in lm.note


@pytest.fixture(scope="module")
def phantom44():
    scan, truth = make_phantom(44, extent=20.0)
    return scan, truth, segment_lungs(scan)


def _crop(scan, k0, k1):
    from sscild.scan import CTScan

    o = (scan.origin[0], scan.origin[1], scan.z_mm(k0))
    return CTScan(scan.hu[k0:k1].copy(), scan.spacing, o, scan.direction, dict(scan.meta), scan.source)


def test_a_false_carina_near_the_apex_is_rejected_for_the_next_candidate(phantom44):
    """The tracked split 20 mm below the apex (as cervical trachea mistaken for the carina) breaks the apex-carina
    range (45-130 mm); the split seen in the airway mask is taken instead, at lower confidence, and says why."""
    import dataclasses

    scan, truth, lungs = phantom44
    apex_k = int(np.nonzero(lungs.mask.any(axis=(1, 2)))[0].max())
    fake = dataclasses.replace(lungs, carina_index=apex_k - 20.0 / scan.spacing[0])
    g = find_levels(scan, fake)
    assert g.z_mm["L2"] is not None and abs(g.z_mm["L2"] - truth.levels_z["L2"]) <= 4.0, g.notes["L2"]
    assert "rejected higher" in g.notes["L2"] and "apex to carina" in g.notes["L2"]
    assert g.confidence["L2"] < 0.8


def test_a_confluence_too_near_the_carina_is_passed_over_for_the_next_candidate():
    """Phantom 1007 (neck, 45 % ILD, 3 mm slices, of the anatomy bench): the widest structure in front of the spine lies 14 mm below the
    carina (dense disease around the hilum), outside the plausible 15-90 mm; the next candidate is the atrium."""
    scan, truth = make_phantom(1007, extent=70 * 7 / 11, neck=True)   # as in bench/bench_anatomy.py
    g = find_levels(scan, segment_lungs(scan))
    assert g.z_mm["L3"] is not None and abs(g.z_mm["L3"] - truth.levels_z["L3"]) <= 6.0, (g.z_mm, g.notes["L3"])
    assert "passed over" in g.notes["L3"]
    assert g.z_mm["L2"] - g.z_mm["L3"] >= 15.0


def test_a_scan_starting_below_the_carina_has_no_l1_or_l2(phantom44):
    scan, truth, _ = phantom44
    k_top = scan.slice_at_z(truth.landmarks_z["carina"] - 15.0)
    cut = _crop(scan, 0, k_top + 1)
    g = find_levels(cut, segment_lungs(cut))
    assert g.z_mm["L1"] is None and g.z_mm["L2"] is None, (g.z_mm, g.notes)
    assert g.z_mm["L5"] is not None and abs(g.z_mm["L5"] - truth.levels_z["L5"]) <= 4.0, g.notes["L5"]
    assert "carina" in g.notes["L2"] and g.notes["L1"]


def test_base_cut_just_below_the_dome_lowers_the_confidence(phantom44):
    scan, truth, _ = phantom44
    k0 = scan.slice_at_z(truth.landmarks_z["right_dome"] - 10.0)
    cut = _crop(scan, k0, scan.shape[0])
    g = find_levels(cut, segment_lungs(cut))
    assert g.z_mm["L5"] is None or (abs(g.z_mm["L5"] - truth.levels_z["L5"]) <= 5.0 and g.confidence["L5"] < 0.8)


def test_noise_lowers_the_confidence(phantom44):
    scan, truth, _ = phantom44
    rng = np.random.default_rng(0)
    noisy = scan.with_hu(np.clip(scan.hu + rng.normal(0, 100, scan.shape), -1024, 3071).astype(np.int16))
    g = find_levels(noisy, segment_lungs(noisy))
    for n in LEVELS:
        if g.z_mm[n] is not None:
            assert g.confidence[n] < 0.8, (n, g.confidence[n], g.notes[n])
            assert n == "L4" or "noisy image" in g.notes[n], g.notes[n]


def test_thick_slices_score_slice_centres_at_lower_confidence(phantom44):
    """8 mm slices (block means of 3 slices of 3 mm, with their partial volume): each level is the centre of a
    slice, within a slice of the truth, with the confidence scaled down for the thickness."""
    from sscild.scan import thick_slices

    scan, truth, _ = phantom44
    thick = thick_slices(scan, 3)
    g = find_levels(thick, segment_lungs(thick))
    for n in ("L2", "L5"):
        assert g.z_mm[n] is not None, g.notes[n]
        assert g.z_mm[n] == pytest.approx(thick.z_mm(thick.slice_at_z(g.z_mm[n])))
        assert abs(g.z_mm[n] - truth.levels_z[n]) <= 9.0, (n, g.z_mm[n], truth.levels_z[n])
        assert g.confidence[n] < 0.8 and "slices" in g.notes[n]


def _levels(z, conf, method="anatomy"):
    from sscild.levels import GohLevels

    return GohLevels({n: z[i] for i, n in enumerate(LEVELS)}, {n: i for i, n in enumerate(LEVELS)},
                     {n: conf[i] for i, n in enumerate(LEVELS)}, {n: f"{method} {n}" for n in LEVELS}, method=method)


def test_combine_levels_confidence_from_agreement():
    from sscild.levels import combine_levels

    a = _levels([-100.0, -140.0, -180.0, None, -260.0], [0.75, 0.9, 0.5, 0.0, 0.9])
    b = _levels([-103.0, -190.0, -182.0, -220.0, -262.0], [0.9, 0.9, 0.9, 0.9, 0.9], "lnet")
    g = combine_levels(a, b)
    assert g.method == "anatomy+lnet"
    # agree within 5 mm: confidence above either alone, the position their confidence-weighted mean
    from sscild.levels import LEARNED_WEIGHT_AGREE

    w = 0.9 * LEARNED_WEIGHT_AGREE
    assert g.z_mm["L1"] == pytest.approx((0.75 * -100.0 + w * -103.0) / (0.75 + w)) and g.confidence["L1"] > 0.75
    # 50 mm apart: the anatomy kept (L-Net's own confidence is not calibrated on real scans), confidence low, both
    # positions in the note
    assert g.z_mm["L2"] == -140.0 and g.confidence["L2"] <= 0.3
    assert "-140.0" in g.notes["L2"] and "-190.0" in g.notes["L2"] and "disagree" in g.notes["L2"]
    # L-Net alone inside a gap of the anatomical levels: placed at no more than 0.5
    assert g.z_mm["L4"] == -220.0 and g.confidence["L4"] <= 0.5 and "L-Net only" in g.notes["L4"]
    # L-Net alone beyond the anatomical levels (the landmark may be outside the scan): not placed
    e = combine_levels(_levels([-100.0, -140.0, -180.0, None, None], [0.9, 0.9, 0.5, 0.0, 0.0]), b)
    assert e.z_mm["L5"] is None and e.z_mm["L4"] is None and "beyond" in e.notes["L5"]
    assert [g.z_mm[n] for n in LEVELS] == sorted([g.z_mm[n] for n in LEVELS], reverse=True)
    # levels out of order are dropped, the less confident one
    from sscild.levels import _enforce_order

    out = _enforce_order({"L1": (-100.0, 0, 0.9, ""), "L2": (-140.0, 1, 0.9, ""), "L3": (-90.0, 2, 0.3, ""),
                          "L4": (None, None, 0.0, ""), "L5": (-260.0, 4, 0.9, "")})
    assert out["L3"][0] is None and "anatomical order" in out["L3"][3] and out["L1"][0] == -100.0


def test_noise_specks_do_not_make_a_false_carina():
    """1.4 mm pixels and noise SD 100 HU: parenchyma pixels pushed below the air threshold join the trachea as a
    'second branch' near the apex; the airways are then tracked again on the in-plane median and the carina
    is found where it is, at lower confidence (before: no carina, no L1-L4)."""
    scan, truth = make_phantom(0, size="medium", extent=20, neck=True)
    rng = np.random.default_rng(0)
    noisy = scan.with_hu(np.clip(scan.hu + rng.normal(0, 100, scan.shape), -1024, 3071).astype(np.int16))
    lungs = segment_lungs(noisy)
    assert lungs.carina_index is not None
    g = find_levels(noisy, lungs)
    assert g.z_mm["L2"] is not None and abs(g.z_mm["L2"] - truth.levels_z["L2"]) <= 4.0, g.notes["L2"]
    assert g.confidence["L2"] < 0.8


def test_combined_levels_on_slice_centres_each_level_its_own_slice():
    """As analyze combines them (with the scan): each z at the centre of the slice scored, and where L-Net's
    position would put a level on another's slice (8 mm slices; seen on A0002: L4 and L5 both at 184 mm) the
    anatomy's position is kept. Without the scan, the continuous confidence-weighted mean of the two is returned."""
    import numpy as np

    from sscild.levels import combine_levels
    from sscild.scan import CTScan

    scan = CTScan(np.zeros((40, 8, 8), np.int16), (8.0, 1.0, 1.0), (0.0, 0.0, 0.0))       # slices at 0, 8, ... 312
    a = _levels([264.0, 232.0, 200.0, 192.0, 184.0], [0.5, 0.6, 0.2, 0.2, 0.3])
    b = _levels([262.0, 229.0, 203.0, 183.0, 182.0], [0.9, 0.9, 0.9, 0.9, 0.9], "lnet")
    loose = combine_levels(a, b)
    from sscild.levels import LEARNED_WEIGHT_AGREE

    w = 0.9 * LEARNED_WEIGHT_AGREE
    assert loose.z_mm["L4"] == pytest.approx((0.2 * 192.0 + w * 183.0) / (0.2 + w))          # 185.4: L5's slice
    assert loose.z_mm["L3"] == pytest.approx((0.2 * 200.0 + w * 203.0) / (0.2 + w))
    g = combine_levels(a, b, scan=scan)
    assert all(g.z_mm[n] == scan.z_mm(scan.slice_at_z(g.z_mm[n])) for n in LEVELS)        # slice centres
    assert g.z_mm["L3"] == 200.0 and g.z_mm["L4"] == 192.0 and g.z_mm["L5"] == 184.0
    assert "another level's" in g.notes["L4"] and g.confidence["L4"] > a.confidence["L4"]
    assert len({g.z_mm[n] for n in LEVELS}) == len(LEVELS)


def test_combined_level_out_of_order_keeps_the_anatomy_instead_of_being_dropped():
    """LIDC every fourth slice: the anatomy's L3 is a prior (0.1) at -145, its L4 -155; L-Net put L3 at -164.5
    (0.95), which won the disagreement and then lay below L4: the order check dropped L3 altogether. Now the
    anatomy's L3 is kept."""
    from sscild.levels import combine_levels

    a = _levels([-85.0, -105.0, -145.0, -155.0, -175.0], [0.38, 0.45, 0.1, 0.28, 0.45])
    b = _levels([-83.0, -126.6, -164.5, -175.3, -206.0], [0.39, 0.48, 0.95, 0.85, 0.6], "lnet")
    g = combine_levels(a, b)
    assert g.z_mm["L3"] == -145.0 and "not between the neighbouring levels" in g.notes["L3"]
    assert all(g.z_mm[n] is not None for n in LEVELS)
    assert [g.z_mm[n] for n in LEVELS] == sorted([g.z_mm[n] for n in LEVELS], reverse=True)
