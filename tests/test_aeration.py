"""The aeration reference: an under-inflated lung is brought back to full-inspiration density before the learned
stages, a well-inflated one is left alone, and disease in most of the lung is not mistaken for under-inflation."""
from __future__ import annotations

import numpy as np
import pytest

from sscild.acquisition import Acquisition, random_acquisition, simulate
from sscild.config import trainer_config
from sscild.density import AERATION_MAX_SHIFT_HU, aeration, normalise_aeration
from sscild.errors import ConfigError
from sscild.lesions import UNetConfig
from sscild.phantom import make_phantom


@pytest.fixture(scope="module")
def healthy():
    scan, truth = make_phantom(1, size="small", extent=0)
    return scan, truth.lungs > 0


def test_well_inflated_phantom_is_not_shifted(healthy):
    scan, lung = healthy
    assert aeration(scan.hu, lung, scan.spacing[1]).shift_hu == 0.0


@pytest.mark.parametrize("added", [60.0, 120.0])
def test_shallow_inspiration_is_undone_within_15_hu(healthy, added):
    """A shallow breath-hold simulated by the acquisition model (parenchyma + added HU): the shift found is the added
    density (within 15 HU), and after normalisation the lung's best-aerated tenth is where it was."""
    scan, lung = healthy
    sim = simulate(scan.hu, scan.spacing, Acquisition(pixel_mm=scan.spacing[1], aeration_hu=added),
                   np.random.default_rng(0), lung=lung)
    a0 = aeration(scan.hu, lung, scan.spacing[1])
    a = aeration(sim.hu, sim.lung, sim.spacing[1])
    assert abs((a.p10_hu - a0.p10_hu) - added) < 15
    back = aeration(normalise_aeration(sim.hu, sim.lung, a), sim.lung, sim.spacing[1])
    assert back.shift_hu == pytest.approx(0.0, abs=1.0)
    assert abs(back.p10_hu - max(a0.p10_hu, a.p10_hu - a.shift_hu)) < 15


def test_extensive_disease_is_not_taken_for_under_inflation():
    """70 % ILD leaves the best-aerated tenth in normal lung: the shift stays small (< 30 HU), so the disease is
    not normalised away; the shift never exceeds its cap."""
    scan, truth = make_phantom(5, size="small", extent=70)
    a = aeration(scan.hu, truth.lungs > 0, scan.spacing[1])
    assert a.shift_hu < 30
    dense = np.where(truth.lungs > 0, -300.0, scan.hu)
    assert aeration(dense, truth.lungs > 0, scan.spacing[1]).shift_hu == AERATION_MAX_SHIFT_HU


def test_random_acquisition_keeps_its_draws_when_shallow_is_off():
    a = random_acquisition(np.random.default_rng(4), (1.0, 0.7, 0.7))
    b = random_acquisition(np.random.default_rng(4), (1.0, 0.7, 0.7), shallow=0.0)
    assert a == b and a.aeration_hu == 0.0
    drawn = [random_acquisition(np.random.default_rng(s), (1.0, 0.7, 0.7), shallow=1.0).aeration_hu
             for s in range(20)]
    assert all(30.0 <= v <= 150.0 for v in drawn)


def test_real_draws_config_is_checked(tmp_path):
    c = tmp_path / "c.yaml"
    c.write_text("data:\n  real_draws: {scans: [{name: x, path: nowhere.nii.gz}], drawz: 3}\n")
    with pytest.raises(ConfigError, match="drawz"):
        trainer_config("lesions", c, UNetConfig, "out")
    c.write_text("data:\n  real_draws: {scans: [{path: nowhere.nii.gz}]}\n")
    with pytest.raises(ConfigError, match="name and a path"):
        trainer_config("lesions", c, UNetConfig, "out")
    c.write_text("data:\n  real_draws: {scans: [{name: x, path: nowhere.nii.gz}], cache: draws}\n")
    tc = trainer_config("lesions", c, UNetConfig, "out")
    rd = tc.data["real_draws"]
    assert rd["scans"][0]["path"] == str(tmp_path / "nowhere.nii.gz") and rd["cache"] == str(tmp_path / "draws")
