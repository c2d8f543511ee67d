"""L-Net on real anatomy: targets from by-eye annotations (levels out of view left out), acquisition augmentation
that keeps level z in world mm, and training that ignores the levels without a target."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sscild.errors import ConfigError
from sscild.scan import CTScan
from sscild.scoring.lnet import (LEVELS, LevelCase, LNetConfig, _index_to_z, acquired_cases, acquired_scan,
                                 annotated_midpoints, build_lnet, cases_from_csv, train_lnet)

CFG = LNetConfig(in_plane=8, z_mm=2.0, window=32, channels=(4, 8))
ANNOTATIONS = {"scans": {"a": {"levels": {
    "L1": {"z_mm": [-30.0, -20.0]}, "L2": {"z_mm": [-50.0, -44.0]}, "L3": {"z_mm": None},
    "L4": {"z_mm": None}, "L5": {"z_mm": None}}}}}


def _slab_scan(z_slab: float = -40.0) -> CTScan:
    """1 mm slices from z = -100 to -1 mm (32 x 32 px of 1 mm) of air with a 3 mm bone-dense slab at ``z_slab``,
    a body block around it so that kernels, noise and gravity have something to act on."""
    hu = np.full((100, 32, 32), -1000, np.int16)
    hu[:, 6:26, 6:26] = -850
    k = int(z_slab + 100)
    hu[k - 1:k + 2, 6:26, 6:26] = 1000
    return CTScan(hu, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, -100.0))


def test_targets_are_the_midpoints_of_the_annotated_ranges_and_out_of_view_levels_have_none():
    mid = annotated_midpoints(ANNOTATIONS)["a"]
    assert mid == {"L1": -25.0, "L2": -47.0, "L3": None, "L4": None, "L5": None}
    case = LevelCase.from_scan("a", _slab_scan(), mid, CFG, partial=True)
    assert np.isnan(case.positions[2:]).all()
    for j, n in enumerate(LEVELS[:2]):
        assert _index_to_z(case.prep, case.positions[j]) == pytest.approx(mid[n], abs=1e-6)
    with pytest.raises(ConfigError):            # phantoms (partial=False) still need all five
        LevelCase.from_scan("a", _slab_scan(), mid, CFG)
    with pytest.raises(ConfigError, match="at least one"):
        LevelCase.from_scan("a", _slab_scan(), {n: None for n in LEVELS}, CFG, partial=True)


@pytest.mark.parametrize("seed", range(6))
def test_acquisition_augmentation_keeps_the_target_z_in_world_mm(seed):
    """After a random acquisition (slices up to 8 mm, sparse HRCT, other pixels) the slab is still where the
    target says: the brightest slice of the prepared volume lies within half a sampling step of the slab's z."""
    scan = _slab_scan(-40.0)
    sim, desc = acquired_scan(scan, np.random.default_rng(seed))
    assert sim.z_mm(0) == pytest.approx(scan.z_mm(0))
    step = sim.spacing[0]
    case = LevelCase.from_scan("s", sim, {"L1": -40.0}, CFG, partial=True)
    peak_z = case.prep.z_world[int(np.argmax(case.prep.volume.mean(axis=(1, 2))))]
    assert abs(_index_to_z(case.prep, case.positions[0]) - (-40.0)) < 1e-6
    assert abs(peak_z - (-40.0)) <= step / 2 + CFG.z_mm / 2 + 0.5, (desc, peak_z)


def test_acquired_cases_and_csv_rows_with_out_of_view_levels(tmp_path):
    from sscild.io import save_like

    scan = _slab_scan()
    cases = acquired_cases("a", scan, {"L1": -25.0, "L2": -47.0}, CFG, 2, np.random.default_rng(0))
    assert [c.case_id for c in cases] == ["a", "a~acq0", "a~acq1"] and {c.group for c in cases} == {"a"}
    for c in cases:
        assert [round(_index_to_z(c.prep, p), 6) for p in c.positions[:2]] == [-25.0, -47.0]
    save_like(scan.hu, scan, tmp_path / "ct.nii.gz")
    (tmp_path / "levels.csv").write_text("scan_path,L1,L2,L3,L4,L5,acquisitions\nct.nii.gz,-25,-47,,,,1\n")
    rows = cases_from_csv(tmp_path / "levels.csv", CFG)
    assert len(rows) == 2 and all(np.isnan(c.positions[2:]).all() for c in rows)
    assert _index_to_z(rows[1].prep, rows[1].positions[1]) == pytest.approx(-47.0, abs=1e-3)


def test_training_ignores_levels_without_a_target():
    """A batch of cases with only L1 and L2 known still gives finite losses that fall (NaN targets are masked)."""
    mid = annotated_midpoints(ANNOTATIONS)["a"]
    cases = [LevelCase.from_scan("a", _slab_scan(), mid, CFG, partial=True)]
    torch.manual_seed(0)
    _, log = train_lnet(cases, cfg=CFG, model=build_lnet(CFG), steps=30, batch_size=2, lr=3e-3, loss="l1", seed=0)
    losses = np.array(log.losses)
    assert np.isfinite(losses).all()
    assert losses[-5:].mean() < losses[:5].mean()
