"""The shifted-copy morphology of sscild.morph gives scipy.ndimage's results, edges included."""
import numpy as np
import pytest
from scipy import ndimage as ndi

from sscild import morph

CROSS2 = ndi.generate_binary_structure(2, 1)


def _masks():
    rng = np.random.default_rng(7)
    for shape in [(9, 13, 11), (1, 8, 9), (5, 1, 7), (12, 17), (3, 2, 2)]:
        for p in (0.3, 0.6, 0.85):
            yield ndi.uniform_filter(rng.random(shape), 2) < p if min(shape) > 1 else rng.random(shape) < p


def _structure(ndim, axes, box):
    if axes is None:
        return np.ones((3,) * ndim, bool) if box else ndi.generate_binary_structure(ndim, 1)
    return (np.ones((1, 3, 3), bool) if box else CROSS2[None])


@pytest.mark.parametrize("axes", [None, (1, 2), (-2, -1)])
@pytest.mark.parametrize("box", [False, True])
@pytest.mark.parametrize("iterations", [1, 2, 3])
def test_same_as_scipy(axes, box, iterations):
    for m in _masks():
        if axes is not None and m.ndim != 3:
            continue
        st = _structure(m.ndim, axes, box)
        for ours, theirs in ((morph.dilate, ndi.binary_dilation), (morph.erode, ndi.binary_erosion),
                             (morph.opening, ndi.binary_opening)):
            got = ours(m, iterations, axes=axes, box=box)
            want = theirs(m, structure=st, iterations=iterations)
            assert got.dtype == bool and got.shape == m.shape
            assert np.array_equal(got, want), (ours.__name__, m.shape, axes, box, iterations)


@pytest.mark.parametrize("iterations", [1, 3])
def test_dilation_within_a_mask_as_scipy(iterations):
    rng = np.random.default_rng(3)
    for _ in range(5):
        within = ndi.uniform_filter(rng.random((6, 20, 20)), 3) < 0.55
        seed = (rng.random(within.shape) < 0.05)
        for m in (seed & within, seed):
            want = ndi.binary_dilation(m, structure=CROSS2[None], iterations=iterations, mask=within)
            got = morph.dilate(m, iterations, axes=(1, 2), within=within)
            assert np.array_equal(got, want)


def test_input_untouched_and_iterations_checked():
    m = np.zeros((5, 5, 6), bool)
    m[2, 2, 3] = True
    before = m.copy()
    assert morph.dilate(m, 2).sum() == 25          # the 3D cross grown twice: an octahedron of radius 2
    assert np.array_equal(m, before)
    with pytest.raises(ValueError):
        morph.erode(m, 0)
