"""Acquisition model and 3D insertion into real-like lungs: known answers on small synthetic volumes."""
from __future__ import annotations

import numpy as np
import pytest

from sscild.acquisition import Acquisition, dependent_density, random_acquisition, simulate
from sscild.insertion import insert_ild


def _lung_box(shape=(40, 64, 64)):
    hu = np.full(shape, -860.0, np.float32)
    lung = np.zeros(shape, bool)
    lung[4:36, 8:56, 8:56] = True
    hu[~lung] = 40.0
    return hu, lung


def test_slice_profile_and_interval_give_the_requested_grid_and_keep_the_mean():
    hu, lung = _lung_box()
    out = simulate(hu, (1.0, 0.7, 0.7), Acquisition(slice_thickness_mm=5.0, slice_interval_mm=5.0, pixel_mm=1.4),
                   np.random.default_rng(0), lung=lung)
    assert out.spacing == (5.0, 1.4, 1.4)
    assert out.hu.shape == (8, 32, 32)
    # the middle of the lung stays lung density (no noise asked)
    assert abs(float(out.hu[4, 16, 16]) + 860.0) < 1.0
    assert out.lung[4, 16, 16] and not out.lung[4, 0, 0]


def test_thick_slices_average_a_thin_plate():
    hu = np.full((41, 8, 8), -900.0, np.float32)
    hu[20] = 100.0                                        # one 1 mm plate, 1000 HU above the background
    out = simulate(hu, (1.0, 1.0, 1.0), Acquisition(slice_thickness_mm=5.0, slice_interval_mm=1.0, pixel_mm=1.0),
                   np.random.default_rng(0))
    peak = float(out.hu[:, 4, 4].max()) + 900.0
    # a Gaussian slice profile of FWHM ~5 mm spreads 1000 HU.mm over ~5 mm: the peak drops to ~1/5
    assert 120.0 < peak < 280.0


def test_labels_follow_area_fractions():
    hu, lung = _lung_box((20, 16, 16))
    labels = np.where(lung, 1, 0).astype(np.uint8)
    labels[8:11, 8:12, 8:12] = 3                          # 3 of every 4 mm at z 8-10 -> a 4 mm slab there is RET
    out = simulate(hu, (1.0, 1.0, 1.0), Acquisition(slice_thickness_mm=1.0, slice_interval_mm=4.0, pixel_mm=1.0),
                   np.random.default_rng(0), lung=lung, labels=labels)
    assert (out.labels == 3).sum() == 16                  # one output slice at z = 8 mm holds the 4x4 block
    assert out.labels[2, 9, 9] == 3 and out.labels[2, 14, 14] == 1


def test_noise_sd_is_what_was_asked():
    hu, lung = _lung_box()
    out = simulate(hu, (1.0, 1.0, 1.0), Acquisition(noise_hu=40.0, noise_grain_mm=0.5, pixel_mm=1.0),
                   np.random.default_rng(1), lung=lung)
    sd = float(out.hu[10:30, 16:48, 16:48].std())
    assert 36.0 < sd < 44.0


def test_dependent_density_goes_with_gravity():
    hu, lung = _lung_box()
    sup = dependent_density(hu, lung, (1.0, 1.0, 1.0), 100.0, prone=False)
    pro = dependent_density(hu, lung, (1.0, 1.0, 1.0), 100.0, prone=True)
    post, ant = (slice(None), slice(50, 55), slice(20, 40)), (slice(None), slice(9, 14), slice(20, 40))
    assert sup[post].mean() > sup[ant].mean() + 50        # supine: posterior (y large in LPS) denser
    assert pro[ant].mean() > pro[post].mean() + 50        # prone: anterior denser
    assert np.all(sup[~lung] == hu[~lung])                # only lung changes


def test_random_gravity_reaches_the_density_of_a_free_breathing_pet_ct():
    """The draws cover a dependent border of +200 HU or more that is still +40 HU or more 30-50 mm in (a real
    free-breathing PET/CT: +235 HU at the border, +55 HU at 30-50 mm), and a stronger density reaches deeper."""
    rng = np.random.default_rng(5)
    acqs = [random_acquisition(rng, (1.0, 0.7, 0.7)) for _ in range(200)]
    amount = np.array([a.dependent_hu for a in acqs])
    depth = np.array([a.dependent_depth_mm for a in acqs])
    assert amount.min() >= 0 and (amount >= 200).mean() > 0.1 and (amount <= 60).mean() > 0.2
    assert np.corrcoef(amount, depth)[0, 1] > 0.9
    hu, lung = np.full((2, 120, 10), -850.0, np.float32), np.ones((2, 120, 10), bool)
    a = acqs[int(np.argmax(amount))]
    out = dependent_density(hu, lung, (1.0, 1.0, 1.0), a.dependent_hu, depth_mm=a.dependent_depth_mm)
    assert out[0, 119, 5] - hu[0, 119, 5] >= 200 and out[0, 119 - 40, 5] - hu[0, 119 - 40, 5] >= 40


def test_random_acquisition_is_never_finer_than_the_scan():
    rng = np.random.default_rng(3)
    for _ in range(50):
        a = random_acquisition(rng, (5.0, 0.8, 0.8))
        assert a.slice_thickness_mm >= 5.0 and a.slice_interval_mm >= 5.0 and a.pixel_mm >= 0.8


@pytest.mark.parametrize("dist", ["NSIP", "UIP", "patchy"])
def test_insertion_extent_is_exact_and_only_in_lung(dist):
    hu, lung = _lung_box()
    ins = insert_ild(hu, lung, (2.0, 1.0, 1.0), np.random.default_rng(5), extent=0.25, distribution=dist)
    frac = (ins.labels >= 2).sum() / lung.sum()
    assert abs(frac - 0.25) < 0.01
    assert not (ins.labels[~lung]).any()
    assert np.all(ins.hu[~lung] == hu[~lung])              # nothing drawn outside the lung


def test_ground_glass_keeps_vessels_and_uip_is_basal_dorsal_subpleural():
    hu, lung = _lung_box()
    hu[:, 30:32, 30:32] = 40.0                              # a vessel through the lung
    ins = insert_ild(hu, lung, (2.0, 1.0, 1.0), np.random.default_rng(2), extent=0.3, distribution="UIP",
                     gg_share=0.5, honeycomb=False)
    assert np.all(ins.hu[:, 30:32, 30:32] == 40.0)          # the vessel keeps its density inside the haze
    z, y, _ = np.nonzero(ins.labels == 3)
    zl, yl, _ = np.nonzero(lung)
    assert z.mean() < zl.mean() and y.mean() > yl.mean()    # lower (z small) and posterior (y large)
    gg = ins.labels == 2
    assert ins.hu[gg & (hu < -500)].mean() > -860 + 100     # the haze is denser than the lung it covers


def test_honeycombing_draws_air_cysts_in_the_reticular_region():
    hu, lung = _lung_box()
    ins = insert_ild(hu, lung, (1.0, 1.0, 1.0), np.random.default_rng(4), extent=0.3, distribution="UIP",
                     gg_share=0.0, honeycomb=True)
    assert ins.description["honeycomb_voxels"] > 0
    assert ((ins.hu < -920) & (ins.labels == 3)).sum() > 50     # cyst lumens of air
    assert not ((ins.hu < -920) & (ins.labels == 1)).any()      # none in normal lung
