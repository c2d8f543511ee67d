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


@pytest.mark.parametrize("spacing", [(5.0, 0.7, 0.7), (2.0, 0.7, 0.7)])
def test_airways_at_full_resolution_on_fine_pixels(spacing):
    """0.7 mm pixels are segmented on a ~1.4 mm grid; the airway lumen is then refined at full resolution, so its
    Dice against the phantom's exact airways stays >= 0.95 (it was 0.86-0.88 with the blocky coarse lumen)."""
    scan, truth = make_phantom(1300, extent=30, neck=True, size="full", spacing=spacing)
    lungs = segment_lungs(scan)
    assert dice(lungs.airways, truth.airways) >= 0.95
    assert dice(lungs.mask, truth.lungs > 0) >= 0.97


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


@pytest.mark.realdata
@pytest.mark.parametrize("value", [-100, 40])
def test_real_series_dense_posterior_half_stays_lung(lung_series_dir, value):
    """The posterior half of the right lung of the real series set to consolidation-like HU stays lung.

    Issue 14 asks for the volume within 5 % (bench/results/anatomy.md has the measured change). It needs the posterior
    recess under the dome (below the aerated floor around it, behind the spine as seen from the chest's centre).
    Before the dense envelope the lung lost half its volume (-50 %)."""
    from dataclasses import replace

    from sscild.io import load_ct

    scan = load_ct(lung_series_dir)
    base = segment_lungs(scan)
    right = base.labels == 1
    post = right & (np.arange(scan.shape[1])[None, :, None] > np.median(np.nonzero(right)[1]))
    hu = scan.hu.copy()
    hu[post] = (value + np.random.default_rng(0).normal(0, 15, int(post.sum()))).astype(np.int16)
    dense = segment_lungs(replace(scan, hu=hu))
    v0, v1 = base.volume_ml(scan)["right"], dense.volume_ml(scan)["right"]
    assert abs(v1 - v0) <= 0.05 * v0, (v0, v1)
    assert "right: the envelope was closed over" in dense.notes["dense"]
    # the left lung is untouched (within 2 %)
    assert dense.volume_ml(scan)["left"] == pytest.approx(base.volume_ml(scan)["left"], rel=0.02)


@pytest.mark.realdata
@pytest.mark.parametrize("rel,max_ml", [("chest-ct-lidc-idri-0001/ct.nii.gz", 5.0), ("lctsc_test_s1_101.nii.gz", 20.0),
                                        ("chest-ct-acrin-flt-breast-013/ct.nii.gz", 20.0)])
def test_dense_envelope_leaves_the_chest_wall_behind_the_upper_lobes_out(monkeypatch, rel, max_ml):
    """On real scans without dense lung disease the dense envelope added chest-wall muscle and fat lying
    behind the upper lobes, where the slice cuts the ribs obliquely and the rib-cavity rays passed between them to
    the scapula: 14 mL on LIDC, 72 mL on LCTSC (3 mm, from `make backgrounds`), by eye all outside the pleura. The
    rib cavity then took the nearest bone within RIB_Z_MM above or below the slice (1 and 15 mL). ACRIN (4 mm, very
    smooth kernel) still got 58 mL of intercostal and pectoral muscle between the ribs, by eye, where a ray through
    the gap took the median rib distance of its neighbours, which the farther bones beyond the gap pulled out; the
    rib line (``_rib_line``) now bridges a gap by the line between the ribs on either side: 2, 7 and 14 mL."""
    from shared_data import background_path, shared_path
    from sscild import anatomy
    from sscild.io import load_ct

    scan = load_ct(shared_path(*rel.split("/")) if "/" in rel else background_path(rel))
    with_envelope = segment_lungs(scan).mask
    monkeypatch.setattr(anatomy, "_dense_envelope", lambda labels, hu, sp: (labels, ""))
    added = with_envelope & ~segment_lungs(scan).mask
    assert added.sum() * scan.voxel_volume_ml <= max_ml


@pytest.mark.parametrize("kw", [dict(neck=True), dict(table="curved"), dict(bowel_gas=True),
                                dict(prone=True, table="curved"), dict(spacing=(5.0, 4.0, 4.0)),
                                dict(spacing=(1.0, 2.8, 2.8))])
def test_only_lung_is_lung_on_phantoms_with_neck_table_bowel_prone_coarse(kw):
    scan, truth = make_phantom(64, extent=40, **kw)
    lungs = segment_lungs(scan)
    assert dice(lungs.labels > 0, truth.lungs > 0) >= 0.97
    assert dice(lungs.labels == 1, truth.lungs == 1) >= 0.96
    assert dice(lungs.airways, truth.airways) >= 0.9
    outside = (truth.lungs == 0) & (scan.hu < -900)            # cushion, bowel gas, trachea, air around
    assert (lungs.labels[outside] > 0).sum() < 0.002 * (truth.lungs > 0).sum()
    assert lungs.notes["position"].startswith("prone" if kw.get("prone") else "supine")
    assert not lungs.cut_off["apex"] and not lungs.cut_off["base"]


REAL_SCANS = {"acrin": "chest-ct-acrin-flt-breast-013/ct.nii.gz", "lidc": "chest-ct-lidc-idri-0001/ct.nii.gz",
              "fused": "chest-ct-lung-fused-ct-pathology-0001/ct.nii.gz", "a0002": "chest-ct-lung-pet-ct-dx-a0002/ct.nii.gz"}


@pytest.mark.realdata
@pytest.mark.parametrize("name", sorted(REAL_SCANS))
def test_only_lung_is_lung_on_the_other_real_scans(name):
    """Looked at by eye (coronal and axial overlays): these are the figures of the correct segmentations."""
    from shared_data import shared_path

    from sscild.io import load_ct

    scan = load_ct(shared_path(*REAL_SCANS[name].split("/")))
    lungs = segment_lungs(scan)
    v = lungs.volume_ml(scan)
    # both lungs present and of comparable size: no cushion or table air taken as a lung (ACRIN's cushion made a
    # 3.8 L 'left lung' before), no lung lost on the contrast scan
    assert min(v["right"], v["left"]) >= 0.35 * v["total"], v
    assert lungs.notes["position"].startswith("supine")
    assert 3 <= lungs.airways.sum() * scan.voxel_volume_ml <= 150
    assert not np.any(lungs.airways & (lungs.labels > 0))
    if name == "fused":        # the scan reaches 20 mm into the neck: the apex is inside, the base cut off
        assert not lungs.cut_off["apex"] and lungs.cut_off["base"]
    if name == "a0002":        # 8 mm slices: the carina is still found
        assert lungs.carina_index is not None
    if name == "acrin":
        assert 1500 <= v["total"] <= 4000


def test_a_mirrored_image_is_noted_from_the_heart_side():
    """The heart on the image's right (situs inversus or a mirrored image) gives the right_left note, which
    reaches the analysis warnings; the same phantom as made does not."""
    from sscild.results import level_warnings

    for kw in (dict(), dict(prone=True, table="curved"), dict(spacing=(5.0, 4.0, 4.0))):
        scan, _ = make_phantom(4, extent=30, **kw)
        assert "right_left" not in segment_lungs(scan).notes
        mirrored = type(scan)(np.ascontiguousarray(scan.hu[:, :, ::-1]), scan.spacing, scan.origin)
        lungs = segment_lungs(mirrored)
        assert "image's right" in lungs.notes.get("right_left", "")
        assert lungs.notes["right_left"] in level_warnings(lungs, None)


@pytest.mark.realdata
def test_a_mirrored_real_series_is_noted_from_the_heart_side(lung_series_dir):
    from sscild.io import load_ct

    scan = load_ct(lung_series_dir)
    assert "right_left" not in segment_lungs(scan).notes
    mirrored = type(scan)(np.ascontiguousarray(scan.hu[:, :, ::-1]), scan.spacing, scan.origin)
    assert "image's right" in segment_lungs(mirrored).notes.get("right_left", "")


@pytest.mark.parametrize("n", [2, 3])
def test_thick_slices_over_a_narrow_neck_keep_the_lungs(n):
    """Neck phantoms in 6 and 9 mm slices (block means of 3 mm slices): the slice over the apices shows the air
    around the narrow neck right above the lungs, which joined them in 3D to the air around the patient (before:
    'no lungs found'); the air around the patient is now found slice by slice."""
    from sscild.scan import thick_slices

    scan, truth = make_phantom(100, extent=35, neck=True)
    thick = thick_slices(scan, n)
    lungs = segment_lungs(thick)
    true_ml = (truth.lungs > 0).sum() * np.prod(scan.spacing) / 1000
    got_ml = (lungs.labels > 0).sum() * np.prod(thick.spacing) / 1000
    assert abs(got_ml - true_ml) <= 0.05 * true_ml, (got_ml, true_ml)
    assert (lungs.labels == 1).any() and (lungs.labels == 2).any()


def test_a_trachea_going_on_beside_a_pocket_is_not_a_split():
    from sscild.anatomy import lumen_divides

    # as on the 5 mm series at 10 mm: the trachea (211 mm^2) beside a pocket of lung on its right, under a trachea
    # of 218 mm^2 in the same place: the same lumen going on
    assert not lumen_divides([(211.0, 22.0), (45.0, 10.0)], (218.0, 22.0))
    # LIDC in 7.5 mm slabs at the split (x in mm): the right bronchus keeps 0.84 of the trachea's area, but the
    # trachea's centre above lies between the two bronchi (the carina's ridge): divided
    assert lumen_divides([(132.0, 159.0), (83.0, 171.0)], (157.0, 164.0))
    # a lumen much smaller than the one above is a branch, wherever it lies
    assert lumen_divides([(100.0, 22.0), (45.0, 10.0)], (218.0, 22.0))
    assert not lumen_divides([(100.0, 22.0)], (218.0, 22.0))          # one lumen: nothing divides


def test_rib_line_bridges_gaps_by_the_ribs_either_side_and_steps_beside_the_spine():
    """Rays of one slice (72 of 5 degrees): ribs at 100 px; a gap of three rays whose bone is the scapula (140) or
    none is bridged by the ribs' line, not the scapula; a gap wider than RIB_GAP_RAYS ends at the aerated lung
    (inf); between bone beside the spine (60) and a rib at 100 the paravertebral recess reaches the rib."""
    from sscild.anatomy import RIB_GAP_RAYS, _rib_line

    r = np.full((1, 72), 100.0)
    r[0, 10:13] = [140.0, np.inf, 140.0]                  # a gap between two ribs, the scapula beyond it
    r[0, 20:23] = [96.0, 98.0, 100.0]                     # a rib line that only slopes stays as it is
    r[0, 30:30 + RIB_GAP_RAYS + 2] = np.inf               # no bone over a long stretch
    r[0, 50:53] = [60.0, np.inf, np.inf]                  # bone beside the spine, then a gap to the rib at ray 53
    spine = np.zeros((1, 72), bool)
    spine[0, 50] = True
    out = _rib_line(r, tol=8.0, spine_side=spine)[0]
    assert np.allclose(out[10:13], 100.0)
    assert np.allclose(out[20:23], [96.0, 98.0, 100.0])
    assert np.all(np.isinf(out[30:30 + RIB_GAP_RAYS + 2]))
    assert out[50] == 60.0 and np.allclose(out[51:53], 100.0)
    # without the spine flag the same gap takes the chord between 60 and 100
    chord = _rib_line(r, tol=8.0)[0]
    assert 60.0 < chord[51] < chord[52] < 100.0
