"""Vessels inside the lungs by multi-scale vesselness: phantom vessel trees with exact truth, disease, real scan."""
from __future__ import annotations

import numpy as np
import pytest

from sscild.anatomy import Lungs, segment_lungs
from sscild.errors import NoLungsError
from sscild.evaluate import dice
from sscild.phantom import make_phantom
from sscild.vessels import segment_vessels


@pytest.mark.parametrize("seed,extent,min_dice", [(51, 0.0, 0.78), (52, 30.0, 0.7)])
def test_vessel_dice_on_phantom_trees(seed, extent, min_dice):
    scan, truth = make_phantom(seed, extent=extent)
    lungs = segment_lungs(scan)
    v = segment_vessels(scan, lungs)
    assert v.mask.shape == scan.shape and v.mask.dtype == bool
    assert dice(v.mask, truth.vessels) >= min_dice
    # the volume is the mask's, in mL; within 60 % of the truth's (thin vessels are partial voxels at 2.8 mm)
    assert v.volume_ml == pytest.approx(v.mask.sum() * scan.voxel_volume_ml)
    assert abs(v.volume_ml - truth.vessels.sum() * scan.voxel_volume_ml) <= 0.6 * truth.vessels.sum() * scan.voxel_volume_ml
    # vessels are inside the lungs, never in the airway lumen
    assert not np.any(v.mask & ~lungs.mask) and not np.any(v.mask & lungs.airways)
    assert v.to_dict()["volume_ml"] == pytest.approx(v.volume_ml)


def test_ground_glass_haze_is_not_vessel():
    """Diseased lung without vessels: a plate of ground glass gives (almost) no vessel voxels."""
    scan, truth = make_phantom(55, extent=0)
    hu = scan.hu.copy()
    hu[truth.vessels] = -850                              # remove the tree
    gg = (truth.lungs > 0) & (np.arange(scan.shape[1])[None, :, None] > scan.shape[1] * 0.55)
    hu[gg] = -550
    from dataclasses import replace

    s2 = replace(scan, hu=hu)
    v = segment_vessels(s2, segment_lungs(s2))
    assert v.mask[gg].mean() < 0.02


def test_empty_lungs_fail_clearly():
    scan, _ = make_phantom(56, extent=0)
    empty = Lungs(np.zeros(scan.shape, np.uint8), np.zeros(scan.shape, bool))
    with pytest.raises(NoLungsError, match="no lungs"):
        segment_vessels(scan, empty)


@pytest.mark.realdata
def test_real_series_vessel_volume_plausible(lung_series_dir):
    from sscild.io import load_ct

    scan = load_ct(lung_series_dir)
    lungs = segment_lungs(scan)
    v = segment_vessels(scan, lungs)
    frac = v.volume_ml / lungs.volume_ml(scan)["total"]
    # pulmonary vessels are a few percent of the lung volume (CALIPER's PVV: ~2-6 %)
    assert 0.01 <= frac <= 0.10, frac
