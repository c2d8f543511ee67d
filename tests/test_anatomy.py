"""Lungs and airways without a model: phantoms with exact truth, diseased lungs, real anatomy, no-lung scans."""
from __future__ import annotations

import numpy as np
import pytest

from sscild.anatomy import segment_lungs
from sscild.errors import NoLungsError
from sscild.evaluate import dice
from sscild.phantom import make_nonchest_phantom, make_phantom


@pytest.mark.parametrize("seed,extent", [(31, 0.0), (32, 30.0), (33, 65.0)])
def test_lung_dice_on_phantoms_including_dense_disease(seed, extent):
    scan, truth = make_phantom(seed, extent=extent)
    lungs = segment_lungs(scan)
    assert dice(lungs.labels > 0, truth.lungs > 0) >= 0.97
    assert dice(lungs.labels == 1, truth.lungs == 1) >= 0.96   # right is the patient's right
    assert dice(lungs.labels == 2, truth.lungs == 2) >= 0.96
    if extent > 0:
        frac = (truth.lesions >= 2).sum((1, 2)) / np.maximum((truth.lungs > 0).sum((1, 2)), 1)
        n = max(1, int(0.1 * ((truth.lungs > 0).sum((1, 2)) > 0).sum()))
        dense = np.argsort(frac)[::-1][:n]          # the 10 % of lung slices with the densest disease
        assert dice(lungs.labels[dense] > 0, truth.lungs[dense] > 0) >= 0.95
        # diseased voxels stay lung (ground glass and reticulation are not body)
        lesion = truth.lesions >= 2
        assert (lungs.labels[lesion] > 0).mean() >= 0.97


def test_airways_are_found_and_kept_out_of_the_lungs():
    scan, truth = make_phantom(34, extent=20)
    lungs = segment_lungs(scan)
    assert dice(lungs.airways, truth.airways) >= 0.85
    assert not np.any(lungs.airways & (lungs.labels > 0))
    assert lungs.carina_index is not None
    assert abs(scan.z_mm(lungs.carina_index) - truth.landmarks_z["carina"]) <= 6.0


def test_cut_off_base_is_flagged():
    scan, truth = make_phantom(35, extent=0, cut="base")
    lungs = segment_lungs(scan)
    assert lungs.cut_off["base"] and "bases may be cut off" in lungs.notes["base"]
    assert dice(lungs.labels > 0, truth.lungs > 0) >= 0.97


@pytest.mark.parametrize("kind", ["abdomen", "head"])
def test_scan_without_lungs_fails_clearly(kind):
    with pytest.raises(NoLungsError, match="no lungs found: is this a chest CT"):
        segment_lungs(make_nonchest_phantom(1, kind=kind))


def test_stomach_gas_is_not_lung():
    scan, truth = make_phantom(36, extent=10)
    lungs = segment_lungs(scan)
    gas = (scan.hu < -950) & (truth.lungs == 0) & ~truth.airways   # gas, and air outside the body
    assert (lungs.labels[gas] > 0).sum() < 0.001 * (truth.lungs > 0).sum()


@pytest.mark.realdata
def test_real_series_volume_plausible_right_larger(lung_series_dir):
    from sscild.io import load_ct

    scan = load_ct(lung_series_dir)
    lungs = segment_lungs(scan)
    v = lungs.volume_ml(scan)
    assert 2000 <= v["total"] <= 8000
    assert v["right"] > v["left"]
    assert lungs.carina_index is not None and not lungs.cut_off["apex"]
    # the airway mask is the trachea and main bronchi: tens of mL, not a leak into the lungs
    assert 5 <= lungs.airways.sum() * scan.voxel_volume_ml <= 150
