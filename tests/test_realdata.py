"""Real draws (sscild.realdata): cached draws come back as they were made, a config's real_draws section leaves
the excluded scan out, and the S-Net and U-Net slices of a draw carry its exact scores."""
from __future__ import annotations

import numpy as np
import pytest

from sscild.acquisition import Acquisition
from sscild.domain import PATTERNS
from sscild.io import save_like
from sscild.lesions import UNetConfig
from sscild.lesion_data import real_draw_segset
from sscild.phantom import make_phantom
from sscild.realdata import DrawSpec, draw_slices, from_spec, snet_slices
from sscild.scoring.snet import SNetConfig
from sscild.scoring.synthesis import scores_from_labels


@pytest.fixture(scope="module")
def phantom():
    scan, truth = make_phantom(3, size="small", extent=0)
    return scan, truth.lungs > 0


def test_a_cached_draw_comes_back_identical_with_its_dtypes(phantom, tmp_path):
    """The cache stores slices of one shape; they must come back float32 / bool / uint8, not as object arrays."""
    scan, lung = phantom
    spec = DrawSpec(5, 0.3, "UIP", Acquisition(slice_thickness_mm=5.0, slice_interval_mm=5.0, pixel_mm=3.0,
                                               aeration_hu=80.0), n_slices=4)
    made = draw_slices("p", scan.hu, lung, scan.spacing, spec, cache=tmp_path)
    back = draw_slices("p", scan.hu, lung, scan.spacing, spec, cache=tmp_path)
    assert len(made) == len(back) == 4
    for a, b in zip(made.hu + made.lung + made.labels, back.hu + back.lung + back.labels):
        assert a.dtype == b.dtype and a.dtype != object and np.array_equal(a, b)
    assert any((lab >= 2).any() for lab in back.labels)


def test_from_spec_leaves_out_the_excluded_and_the_missing_scan(phantom, tmp_path):
    scan, _ = phantom
    for name in ("one", "two"):
        save_like(scan.hu, scan, tmp_path / f"{name}.nii.gz")
    spec = {"scans": [{"name": n, "path": str(tmp_path / f"{n}.nii.gz")} for n in ("one", "two", "gone")],
            "exclude": ["two"], "draws": 2, "n_slices": 3, "seed": 1, "healthy": 0.0}
    rs = from_spec(spec)
    assert set(rs.group) == {"one"} and len(rs) == 6
    sn = snet_slices(rs, SNetConfig(size=64))
    assert len(sn) == 6 and set(sn.group) == {"real:one"}
    # each S-Net slice's score is that of its own (resampled) label map
    for i in range(len(sn)):
        assert np.allclose(sn.scores[i], [scores_from_labels(sn.labels[i])[p] for p in PATTERNS], atol=1e-4)
    seg = real_draw_segset(rs, UNetConfig(size=64))
    assert len(seg) == 6 and seg.labels.max() >= 2 and not seg.labels[~seg.lung].any()
