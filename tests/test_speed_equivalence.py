"""The faster stages give what the plain computations give: density and regional metrics from histograms against
per-mask scipy statistics, the separable subpleural band against scipy's distance transform (square and non-square
pixels), hole filling against scipy's, quality checks with the coarse body mask against the full upsampled one."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage, stats

from sscild.anatomy import Lungs
from sscild.density import HAA_RANGE, HIST_RANGE, density_metrics, metrics_of
from sscild.domain import LesionClass, area_percent
from sscild.phantom import make_phantom
from sscild.regions import SUBPLEURAL_MM, _fill_holes, _near_boundary, region_map, regional_metrics


def _plain_metrics(values: np.ndarray, voxel_ml: float) -> dict:
    """The metrics as the module computed them before histograms: scipy statistics of the voxel values."""
    v = np.asarray(values, np.float64).ravel()
    h = v[(v >= HIST_RANGE[0]) & (v <= HIST_RANGE[1])]
    out = {"volume_ml": v.size * voxel_ml, "n_voxels": float(v.size)}
    if h.size < 2:
        return out
    out.update({"MLA_HU": h.mean(), "SD_HU": h.std(ddof=1), "skewness": stats.skew(h),
                "kurtosis": stats.kurtosis(h, fisher=True),
                "HAA_pct": ((v >= HAA_RANGE[0]) & (v <= HAA_RANGE[1])).sum() * 100.0 / v.size})
    out.update({f"p{p}_HU": q for p, q in zip((10, 15, 40, 80), np.percentile(h, (10, 15, 40, 80)))})
    return out


def _assert_same(got: dict, want: dict) -> None:
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=1e-9, abs=1e-9), k


@pytest.fixture(scope="module")
def phantom():
    scan, truth = make_phantom(3, extent=30)
    return scan, Lungs(truth.lungs, truth.airways), truth.lesions


def test_metrics_of_integer_and_float_values_match_scipy():
    rng = np.random.default_rng(1)
    ints = rng.normal(-800, 150, 5000).round().astype(np.int16)
    _assert_same(metrics_of(ints, 0.3), _plain_metrics(ints, 0.3))
    floats = rng.normal(-800, 150, 5000)
    _assert_same(metrics_of(floats, 0.3), _plain_metrics(floats, 0.3))
    flat = metrics_of(np.full(50, -700, np.int16), 1.0)              # a constant histogram has no shape
    assert np.isnan(flat["skewness"]) and np.isnan(flat["kurtosis"]) and flat["SD_HU"] == 0.0


def test_density_metrics_equal_per_region_masks(phantom):
    scan, lungs, _ = phantom
    d = density_metrics(scan, lungs).regions
    lab = lungs.labels
    from sscild.domain import zone_bounds

    masks = {"whole": lab > 0, "right": lab == 1, "left": lab == 2}
    for name, (a, b) in zone_bounds(lab > 0).items():
        masks[name] = np.zeros(lab.shape, bool)
        masks[name][a:b] = lab[a:b] > 0
    for name, m in masks.items():
        _assert_same(d[name], _plain_metrics(scan.hu[m], scan.voxel_volume_ml))


def test_regional_metrics_equal_per_region_masks(phantom):
    scan, lungs, lesions = phantom
    rm = region_map(scan, lungs)
    got = regional_metrics(scan, lungs, lesions, rm)
    hu = scan.hu[rm.box]
    les = np.where(rm.lung, lesions[rm.box], 0)
    n_les = int((les >= LesionClass.GG).sum())
    assert n_les > 1000
    for table, masks in ((got.regions, rm.masks()), (got.cells, rm.cells())):
        for name, m in masks.items():
            want = _plain_metrics(hu[m], scan.voxel_volume_ml)
            n = int(((les >= LesionClass.GG) & m).sum())
            want.update({"GG_pct": area_percent(les == LesionClass.GG, m), "lesion_ml": n * scan.voxel_volume_ml,
                         "RET_pct": area_percent(les == LesionClass.RET, m),
                         "involvement_pct": area_percent(les >= LesionClass.GG, m),
                         "lesion_share_pct": 100.0 * n / n_les})
            _assert_same(table[name], {k: v for k, v in want.items() if v is not None})


@pytest.mark.parametrize("spacing, up", [((3.0, 2.8, 2.8), 1), ((1.0, 0.7, 0.7), 3), ((2.5, 1.1, 0.8), 2)])
def test_subpleural_band_equals_the_distance_transform(spacing, up):
    scan, truth = make_phantom(5, extent=10)
    lung = np.pad(truth.lungs > 0, 1)[::2]                           # thinner slab: the test stays quick
    lung = np.repeat(np.repeat(lung, up, axis=1), up, axis=2)         # finer pixels keep a core beyond the band
    ref = lung & (ndimage.distance_transform_edt(lung, sampling=spacing) <= SUBPLEURAL_MM)
    assert 0.2 < ref.sum() / lung.sum() < 0.95
    assert np.array_equal(_near_boundary(lung, spacing, SUBPLEURAL_MM, slab=5), ref)


def test_fill_holes_equals_scipy():
    rng = np.random.default_rng(0)
    for m in [rng.random((12, 20, 25)) > p for p in (0.2, 0.4, 0.6)] + [np.zeros((4, 5, 6), bool),
                                                                         np.ones((4, 5, 6), bool)]:
        assert np.array_equal(_fill_holes(m), ndimage.binary_fill_holes(m))


def test_coarse_body_slices_equal_the_upsampled_volume(phantom):
    from sscild.quality import _coarse_body

    scan, _, _ = phantom
    scan = type(scan)(scan.hu[:, :-1, :-1], (scan.spacing[0], 0.7, 0.7), scan.origin)   # 2 px blocks, odd size
    body = _coarse_body(scan)
    assert body.f == 2
    full = np.zeros(scan.shape, bool)
    up = np.repeat(np.repeat(body.coarse, 2, axis=1), 2, axis=2)
    full[:, : up.shape[1], : up.shape[2]] = up
    ks = np.array([3, 10, 20])
    assert np.array_equal(body[ks], full[ks]) and np.array_equal(body[7], full[7]) and full[7].any()


def test_quality_checks_reuse_the_body_the_lung_segmentation_found(phantom):
    """The body outline kept on Lungs equals the one found again from the scan (what quality_checks did before)."""
    from sscild.anatomy import segment_lungs
    from sscild.quality import _coarse_body

    scan, _, _ = phantom
    lungs = segment_lungs(scan)
    assert lungs.body is not None and lungs.body.any()
    shared, found = _coarse_body(scan, lungs), _coarse_body(scan)
    assert shared.coarse is lungs.body and np.array_equal(shared.coarse, found.coarse)


@pytest.mark.parametrize("kw", [dict(table="curved"), dict(table="curved", prone=True, spacing=(3.0, 1.9, 1.7))])
def test_lungs_worked_out_in_the_body_box_equal_the_whole_image(kw, monkeypatch):
    """After the body outline the coarse stages run in the body's in-plane box (the air, table and cushion around
    it left out): the same labels, airways, carina and notes as on the whole image."""
    from sscild import anatomy

    scan, _ = make_phantom(11, extent=40, neck=True, **kw)
    scan = type(scan)(np.pad(scan.hu, ((0, 0), (30, 30), (40, 40)), constant_values=-1000), scan.spacing,
                      scan.origin)        # a wider field of view, as on PET/CT
    lo = anatomy._downsample(scan.hu, anatomy._inplane_factor(scan))
    sp = (scan.spacing[0],) + tuple(s * anatomy._inplane_factor(scan) for s in scan.spacing[1:])
    box = anatomy._body_box(anatomy._body_mask(lo, sp), sp)
    assert box[1].stop - box[1].start < lo.shape[1] and box[2].stop - box[2].start < lo.shape[2]
    cropped = anatomy.segment_lungs(scan)
    monkeypatch.setattr(anatomy, "_body_box", lambda body, sp: (slice(None),) * 3)
    whole = anatomy.segment_lungs(scan)
    assert np.array_equal(cropped.labels, whole.labels) and np.array_equal(cropped.airways, whole.airways)
    assert cropped.labels.any() and cropped.airways.any()
    assert (cropped.carina_index, cropped.notes) == (whole.carina_index, whole.notes)


def test_model_free_stages_on_threads_equal_the_stages_in_turn(phantom):
    """levels, vessels, quality, density and the region map run on two threads give exactly what each function
    gives when called alone, and every stage is timed."""
    from dataclasses import asdict

    from sscild.anatomy import segment_lungs
    from sscild.density import density_metrics
    from sscild.levels import find_levels
    from sscild.pipeline import _Clock, model_free_stages
    from sscild.quality import quality_checks
    from sscild.settings import AnalysisSettings
    from sscild.vessels import segment_vessels

    scan, _, _ = phantom
    lungs = segment_lungs(scan)
    clock = _Clock()
    got = model_free_stages(scan, lungs, AnalysisSettings(scores=False, lesions=False), clock)
    assert sorted(clock.seconds) == ["density", "levels", "quality", "regions", "vessels"]
    assert got["levels"] == find_levels(scan, lungs)
    assert np.array_equal(got["vessels"].mask, segment_vessels(scan, lungs).mask)
    assert asdict(got["quality"]) == asdict(quality_checks(scan, lungs))
    assert got["density"] == density_metrics(scan, lungs)
    rm = region_map(scan, lungs)
    assert np.array_equal(got["region_map"].zone, rm.zone) and np.array_equal(got["region_map"].subpleural,
                                                                             rm.subpleural)
    off = model_free_stages(scan, lungs, AnalysisSettings(scores=False, lesions=False, vessels=False,
                                                          regions=False), _Clock())
    assert off["vessels"] is None and off["region_map"] is None and off["levels"] is not None


def test_snet_heat_maps_from_window_changes_equal_whole_copies():
    """S-Net's occluded copies scored from the windows' changes (OcclusionInputs, channels-last) against the whole
    copies through the scorer's plain call, on a phantom at 0.7 mm pixels (texture channel denoised)."""
    from sscild.explain import heatmaps, phantom_patch_source
    from sscild.scoring.snet import SNetScorer, load_snet

    model, cfg, _ = load_snet()
    scan, truth = make_phantom(4, extent=35, shape=(8, 300, 300), spacing=(6.0, 0.7, 0.7))
    k = int(np.argmax((truth.lungs > 0).sum(axis=(1, 2))))
    sl = {"L": (scan.hu[k].astype(np.float32), truth.lungs[k] > 0)}
    fast = SNetScorer(model, cfg, pixel_mm=0.7)
    plain = lambda x, m: fast(x, m)                                   # noqa: E731  (no `occluded`: whole copies)
    kw = dict(spacing_mm=0.7, patch_mm=45.0, stride_mm=22.0, source=phantom_patch_source())
    a, b = heatmaps(sl, fast, **kw)["L"], heatmaps(sl, plain, **kw)["L"]
    assert a.n_positions == b.n_positions > 20 and np.abs(b.dp).max() > 0.5
    assert np.abs(a.dp - b.dp).max() < 1e-4
    assert np.array_equal(a.weight, b.weight) and np.array_equal(a.base_scores, b.base_scores)


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, bool, np.float32])
@pytest.mark.parametrize("f", [2, 3])
def test_block_means_by_strided_sums_equal_the_block_mean(dtype, f):
    """The lung stage's downsampling (strided block sums) gives the same block means as numpy's mean over the
    blocks, for the scan's integers, masks and the whole-numbered float32 working grid."""
    from sscild.anatomy import _downsample

    x = np.random.default_rng(f).integers(-1024, 3071, (4, 17, 20))
    x = (x > 0 if dtype is bool else np.clip(x, 0, 255) if dtype is np.uint8 else x).astype(dtype)
    ny, nx = 17 // f * f, 20 // f * f
    ref = x[:, :ny, :nx].astype(np.float32).reshape(4, ny // f, f, nx // f, f).mean(axis=(2, 4))
    out = _downsample(x, f)
    assert out.dtype == np.float32 and out.shape == ref.shape
    assert np.array_equal(out, ref)
