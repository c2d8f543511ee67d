"""Regional distribution: exact region geometry on a box lung with anisotropic voxels, and a phantom whose lesions
lie only in the dorsal subpleural base (the classic SSc pattern) measured back region by region."""
from __future__ import annotations

import numpy as np
import pytest

from sscild.anatomy import Lungs
from sscild.domain import zone_bounds
from sscild.errors import NoLungsError
from sscild.phantom import make_phantom
from sscild.regions import SUBPLEURAL_MM, region_map, regional_figure, regional_metrics
from sscild.scan import CTScan


def _box_scan(spacing=(4.0, 1.5, 1.0)):
    lab = np.zeros((20, 40, 70), np.uint8)
    lab[2:18, 3:37, 3:33] = 1        # right lung: 16 slices x 34 rows x 30 columns
    lab[2:18, 3:37, 37:67] = 2       # left lung, 4 background columns between
    noise = np.random.default_rng(0).integers(-30, 31, lab.shape)
    hu = (np.where(lab > 0, -850, 40) + noise).astype(np.int16)
    return CTScan(hu, spacing, (0.0, 0.0, 0.0)), Lungs(lab, np.zeros(lab.shape, bool))


def test_box_lung_regions_are_exact_with_anisotropic_spacing():
    scan, lungs = _box_scan()
    rm = region_map(scan, lungs)
    # for a box the 3D distance to the nearest outside voxel centre is the smallest of the three axial ones
    k, j, i = np.meshgrid(np.arange(2, 18), np.arange(3, 37), np.arange(3, 33), indexing="ij")
    d = np.minimum.reduce([np.minimum(k - 1, 18 - k) * 4.0, np.minimum(j - 2, 37 - j) * 1.5,
                           np.minimum(i - 2, 33 - i) * 1.0])
    expect_sub = 2 * int((d <= SUBPLEURAL_MM).sum())
    assert 0.3 < expect_sub / (2 * d.size) < 0.9
    masks = rm.masks()
    assert int(masks["subpleural"].sum()) == expect_sub
    assert int(masks["core"].sum()) == 2 * d.size - expect_sub
    # another band width (the real-scan benchmark's 3 mm rim) is exact too
    rim = region_map(scan, lungs, subpleural_mm=3.0).subpleural
    assert int(rim.sum()) == 2 * int((d <= 3.0).sum()) < expect_sub
    # isotropic 1 mm voxels give a different band: the spacing is used
    rm_iso = region_map(_box_scan((1.0, 1.0, 1.0))[0], lungs)
    assert int(rm_iso.masks()["subpleural"].sum()) != expect_sub
    # ventral/dorsal: rows 3..19 ventral, 20..36 dorsal in every slice of each lung (y grows posteriorly)
    yy = np.broadcast_to(np.arange(rm.lung.shape[1])[None, :, None] + rm.box[1].start, rm.lung.shape)
    assert np.unique(yy[masks["dorsal"]]).tolist() == list(range(20, 37))
    assert np.unique(yy[masks["ventral"]]).tolist() == list(range(3, 20))
    assert int(masks["dorsal"].sum()) == int(masks["ventral"].sum()) == 16 * 17 * 30 * 2
    m = regional_metrics(scan, lungs)
    assert m.measure == "HAA_pct" and m.regions["whole"]["MLA_HU"] == pytest.approx(-850.0, abs=1.0)
    assert m.regions["right"]["volume_ml"] == pytest.approx(16 * 34 * 30 * 6.0 / 1000)


def test_subpleural_band_in_slabs_equals_one_distance_transform():
    from scipy import ndimage

    from sscild.regions import _near_boundary

    scan, truth = make_phantom(5, extent=10)
    lung = np.pad(truth.lungs > 0, 1)
    ref = lung & (ndimage.distance_transform_edt(lung, sampling=scan.spacing) <= SUBPLEURAL_MM)
    for slab in (7, 48, 1000):                       # many slabs, a few, one
        assert np.array_equal(_near_boundary(lung, scan.spacing, SUBPLEURAL_MM, slab=slab), ref)


def _dorsal_subpleural_base(scan, lab):
    """Lesions only where each lung's posterior columns end, 3 rows (8.4 mm) deep, in the lowest quarter of the
    lung height: RET on the two posterior rows, GG on the third (defined without the module's region code)."""
    les = (lab > 0).astype(np.uint8)
    zs = np.flatnonzero((lab > 0).any(axis=(1, 2)))
    base = zs.min() + int(0.25 * (zs.max() + 1 - zs.min()))
    y = np.arange(lab.shape[1])[None, :, None]
    for side in (1, 2):
        m = lab == side
        ymax_col = np.where(m.any(1), lab.shape[1] - 1 - m[:, ::-1].argmax(1), -99)       # (z, x)
        ymax_sl = ymax_col.max(1)                                                          # (z,)
        rows = m.any(2)
        ymin_sl = np.where(rows.any(1), rows.argmax(1), 10**6)
        # the posterior-most columns of slices where the lung is at least 20 rows deep (so the band lies dorsally)
        deep = ((ymax_col >= ymax_sl[:, None] - 5) & (ymax_sl - ymin_sl >= 19)[:, None])[:, None, :]
        band = m & deep & (y >= ymax_col[:, None, :] - 2)
        band[base:] = False
        les[band] = 2
        les[band & (y >= ymax_col[:, None, :] - 1)] = 3
    return les


def test_lesions_only_in_the_dorsal_subpleural_base_are_found_there():
    scan, truth = make_phantom(4, extent=0)
    lungs = Lungs(truth.lungs, truth.airways)
    les = _dorsal_subpleural_base(scan, truth.lungs)
    sick = les >= 2
    assert 200 < sick.sum() < 0.1 * (truth.lungs > 0).sum()
    hu = scan.hu.copy()
    hu[sick] = -300                                    # inside the HAA range
    healthy = regional_metrics(scan, lungs)
    m = regional_metrics(scan.with_hu(hu), lungs, les)
    r = m.regions
    n_lung = int((truth.lungs > 0).sum())
    a, b = zone_bounds(truth.lungs > 0)["lower"]
    n_lower = int((truth.lungs[a:b] > 0).sum())
    tol = 1e-9
    for clean in ("upper", "middle", "ventral", "core"):
        assert r[clean]["involvement_pct"] == 0.0 and r[clean]["lesion_share_pct"] == 0.0
        # density of regions without lesions is unchanged by the lesions elsewhere
        assert r[clean]["HAA_pct"] == pytest.approx(healthy.regions[clean]["HAA_pct"], abs=tol)
        assert r[clean]["MLA_HU"] == pytest.approx(healthy.regions[clean]["MLA_HU"], abs=tol)
    for where in ("lower", "dorsal", "subpleural"):
        assert r[where]["lesion_share_pct"] == pytest.approx(100.0, abs=tol)
        assert r[where]["HAA_pct"] > healthy.regions[where]["HAA_pct"]
    assert m.cells["lower_dorsal_subpleural"]["lesion_share_pct"] == pytest.approx(100.0, abs=tol)
    assert r["whole"]["involvement_pct"] == pytest.approx(100.0 * sick.sum() / n_lung, abs=tol)
    assert r["lower"]["involvement_pct"] == pytest.approx(100.0 * sick.sum() / n_lower, abs=tol)
    assert r["lower"]["RET_pct"] == pytest.approx(100.0 * (les == 3).sum() / n_lower, abs=tol)
    assert r["lower"]["GG_pct"] + r["lower"]["RET_pct"] == pytest.approx(r["lower"]["involvement_pct"], abs=tol)
    assert r["lower"]["lesion_ml"] == pytest.approx(sick.sum() * scan.voxel_volume_ml, rel=1e-9)
    assert m.measure == "involvement_pct" and m.pattern == ["basal", "dorsal", "subpleural"]
    assert m.contrasts["dorsal"]["difference_pp"] == pytest.approx(r["dorsal"]["involvement_pct"], abs=tol)
    row = m.row()
    assert row["regions_pattern"] == "basal+dorsal+subpleural" and row["regions_ventral_involvement_pct"] == 0.0
    assert row["regions_lower_RET_pct"] == pytest.approx(r["lower"]["RET_pct"]) and "regions_whole_MLA_HU" not in row
    assert [t[0] for t in m.table_rows()][:3] == ["whole", "right", "left"] and m.table_rows()[0][-1] == 100.0
    d = m.to_dict()
    assert d["subpleural_mm"] == SUBPLEURAL_MM and "midpoint" in d["definitions"]["ventral_dorsal"]


def test_figure_and_empty_lungs(tmp_path):
    scan, truth = make_phantom(4, extent=0)
    lungs = Lungs(truth.lungs, truth.airways)
    les = _dorsal_subpleural_base(scan, truth.lungs)
    rm = region_map(scan, lungs)
    m = regional_metrics(scan, lungs, les, regions=rm)
    png = regional_figure(scan, lungs, m, tmp_path / "regions.png", les, regions=rm)
    from PIL import Image

    px = np.asarray(Image.open(png).convert("RGB"), float)
    assert px.shape[1] > 800 and px.std() > 20
    # red reticulation bars and outlines are drawn
    assert ((px[..., 0] > 180) & (px[..., 1] < 60) & (px[..., 2] < 60)).sum() > 100
    empty = Lungs(np.zeros_like(truth.lungs), truth.airways)
    with pytest.raises(NoLungsError, match="no lungs"):
        regional_metrics(scan, empty)
