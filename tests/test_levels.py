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
