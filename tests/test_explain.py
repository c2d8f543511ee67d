"""Heat maps: known-region models, image-blind models, lung cropping, agreement with the naive loop."""
from __future__ import annotations

import numpy as np
import pytest

from sscild.errors import ConfigError
from sscild.explain import (SlicePatchSource, explained_variance, fit_thresholds, heatmap,
                            heatmap_reference, occluded_batch, fade_weights, patch_positions)

H = W = 96
HEALTHY = -850.0


def _flat_source(value=HEALTHY):
    return SlicePatchSource([(np.full((128, 128), value, np.float32), np.ones((128, 128), bool), 1.0)])


def _region_scorer(region: np.ndarray):
    """Scores = % of the region's pixels denser than -600 HU (TOT=GG=RET); blind to everything else."""
    def scorer(images, lungs):
        dense = (images[:, region] > -600).mean(axis=1) * 100.0
        return np.stack([dense, dense, dense], axis=1)
    return scorer


def _slice_with_region():
    img = np.full((H, W), HEALTHY, np.float32)
    lung = np.zeros((H, W), bool)
    lung[8:88, 8:88] = True
    region = np.zeros((H, W), bool)
    region[32:48, 48:64] = True          # aligned to a 16-px grid
    img[region] = -500.0                 # "ground glass"
    return img, lung, region


def test_model_responding_to_one_region_marks_exactly_that_region():
    img, lung, region = _slice_with_region()
    # non-overlapping patches aligned with the region, no fade: the map is exact
    hm = heatmap(img, lung, _region_scorer(region), patch=16, stride=16, source=_flat_source())
    for p in ("TOT", "GG", "RET"):
        marked = hm.map(p) < -1.0
        assert np.array_equal(marked, region & lung), p
    assert hm.base_scores[0] == pytest.approx(100.0)


def test_overlapping_patches_peak_inside_the_region_and_stay_near_it():
    img, lung, region = _slice_with_region()
    hm = heatmap(img, lung, _region_scorer(region), patch=24, stride=8, source=_flat_source())
    m = hm.map("TOT")
    # the strongest response lies in the region; nothing responds farther than one patch from it
    assert region[np.unravel_index(np.argmin(m), m.shape)]
    from scipy.ndimage import binary_dilation
    near = binary_dilation(region, np.ones((2 * 24 - 1, 2 * 24 - 1), bool))
    assert np.all(m[~near] == 0)
    assert m[region].mean() < m[near & ~region].mean()


def test_model_ignoring_the_image_gives_an_all_zero_map():
    img, lung, _ = _slice_with_region()
    hm = heatmap(img, lung, lambda x, m: np.tile([12.0, 7.0, 5.0], (len(x), 1)), source=_flat_source())
    assert hm.n_positions > 0
    assert np.all(hm.dp == 0)


def test_occlusion_never_writes_outside_the_lung():
    rng = np.random.default_rng(0)
    img = rng.normal(-300, 200, (H, W)).astype(np.float32)
    lung = np.zeros((H, W), bool)
    lung[20:70, 10:50] = True
    patch = np.full((32, 32), -900.0, np.float32)
    pos = patch_positions(lung, 32, 8)
    batch, _ = occluded_batch(img, lung, patch, fade_weights(32), pos)
    assert np.all(batch[:, ~lung] == img[~lung])
    assert np.any(batch[:, lung] != img[lung])
    # and the maps are zero outside the lung whatever the model sees
    hm = heatmap(img, lung, lambda x, m: x.reshape(len(x), -1).mean(1, keepdims=True).repeat(3, 1),
                 patch=32, stride=8, source=_flat_source(-900.0))
    assert np.all(hm.dp[:, ~lung] == 0)
    assert np.any(hm.dp[:, lung] != 0)


def test_only_positions_touching_the_lung_are_evaluated():
    lung = np.zeros((128, 128), bool)
    lung[0:10, 0:10] = True
    pos = patch_positions(lung, 32, 16)
    assert {tuple(p) for p in pos} == {(0, 0)}
    assert len(patch_positions(lung, 32, 16, only_lung=False)) == 49


def test_fast_maps_equal_the_naive_loop():
    img, lung, region = _slice_with_region()
    lung[:, 70:] = False                 # leave windows that miss the lung
    lung[:24] = False
    scorer = _region_scorer(region)
    fast = heatmap(img, lung, scorer, patch=24, stride=8, source=_flat_source(), batch_size=7)
    slow = heatmap_reference(img, lung, scorer, patch=24, stride=8,
                             patch_hu=np.full((24, 24), HEALTHY, np.float32))
    np.testing.assert_allclose(fast.dp, slow.dp, atol=1e-4)
    assert fast.n_positions < slow.n_positions


def test_patch_and_stride_in_mm():
    img, lung, region = _slice_with_region()
    hm = heatmap(img, lung, _region_scorer(region), spacing_mm=0.5, patch_mm=8.0, stride_mm=4.0,
                 source=_flat_source())
    assert (hm.patch_px, hm.stride_px) == (16, 8)
    with pytest.raises(ConfigError, match="positive"):
        heatmap(img, lung, _region_scorer(region), patch_mm=-1, source=_flat_source())


def test_derived_scores_and_threshold_search():
    rng = np.random.default_rng(1)
    maps = []
    for k in range(6):
        img = np.full((H, W), HEALTHY, np.float32)
        lung = np.zeros((H, W), bool)
        lung[8:88, 8:88] = True
        region = np.zeros((H, W), bool)
        side = 8 * (k + 1)
        y0, x0 = 8 * rng.integers(1, (88 - side) // 8 + 1, 2)  # on the patch grid: exact blocks
        region[y0:y0 + side, x0:x0 + side] = True
        img[region] = -500.0

        def scorer(images, lungs, lung=lung):
            frac = ((images > -600) & lungs).sum((1, 2)) / lungs.sum((1, 2)) * 100.0
            return np.stack([frac, frac, frac], 1)

        maps.append(heatmap(img, lung, scorer, patch=8, stride=8, source=_flat_source()))
        truth_pct = region.sum() / lung.sum() * 100
        assert maps[-1].derived_scores(-0.01)["TOT"] == pytest.approx(truth_pct, abs=0.5)
    fit = fit_thresholds(maps)
    assert all(-4.0 <= t <= 0.0 for t in fit.thresholds.values())
    assert fit.r2["TOT"] > 0.95
    assert explained_variance([1, 2, 3, 4], [2, 4, 6, 8]) == pytest.approx(1.0)
    with pytest.raises(ConfigError):
        fit_thresholds(maps[:2])


def test_heatmap_files_sit_on_the_slice_in_world_space(tmp_path):
    import SimpleITK as sitk
    from sscild.explain import write_heatmap_outputs
    from sscild.scan import CTScan

    img, lung, region = _slice_with_region()
    hu = np.repeat(img[None], 5, 0).astype(np.int16)
    scan = CTScan(hu, spacing=(2.5, 0.8, 0.8), origin=(-40.0, -30.0, -200.0))
    hm = heatmap(img, lung, _region_scorer(region), patch=16, stride=16, source=_flat_source())
    files = write_heatmap_outputs({"L3": hm}, scan, {"L3": 3}, tmp_path)
    back = sitk.ReadImage(str(tmp_path / files["L3"]["GG"]))
    assert back.GetSize() == (W, H, 1)
    assert back.GetOrigin()[2] == pytest.approx(scan.z_mm(3))
    np.testing.assert_allclose(sitk.GetArrayFromImage(back)[0], hm.map("GG"))
    assert (tmp_path / "heatmap_L3_TOT.png").stat().st_size > 1000
