"""One answer per level: the lung-area guard, the test-time-augmentation spread and the agreement note."""
from __future__ import annotations

import numpy as np

from sscild.consensus import DISAGREE_POINTS, MIN_LUNG_AREA_CM2, enough_lung, level_agreement, lung_area_cm2, \
    score_uncertainty, tta_scores


def _disc(n=96, r=30):
    yy, xx = np.mgrid[:n, :n]
    return (yy - n / 2) ** 2 + (xx - n / 2) ** 2 < r ** 2


def test_lung_area_guard_at_the_threshold():
    lung = np.zeros((100, 100), bool)
    lung[:15, :10] = True                       # 150 px at 1 mm = 1.5 cm^2
    assert abs(lung_area_cm2(lung, (1.0, 1.0)) - 1.5) < 1e-9
    assert not enough_lung(lung, (1.0, 1.0))
    side = int(np.ceil(np.sqrt(MIN_LUNG_AREA_CM2 * 100)))
    lung[:side, :side] = True
    assert enough_lung(lung, (1.0, 1.0))


def test_tta_spread_is_zero_for_a_symmetric_answer_and_not_for_a_sided_one():
    lung = _disc()
    hu = np.where(lung, -850.0, 40.0).astype(np.float32)
    hu[:, :48][lung[:, :48]] = -500.0           # dense patient-right half

    def fraction_dense(images, lungs):          # rotation- and mirror-invariant: share of dense lung
        return np.array([[100 * ((im < -700) == 0)[lu].mean()] * 3 for im, lu in zip(images, lungs)])

    def right_half_only(images, lungs):         # looks only at the image's left columns: sided
        return np.array([[100 * ((im[:, :48] > -700) & lu[:, :48]).sum() / lu.sum()] * 3
                         for im, lu in zip(images, lungs)])

    s, sd = tta_scores(fraction_dense, hu, lung)
    assert abs(s[0] - 50.0) < 3.0 and sd[0] < 2.0
    s2, sd2 = tta_scores(right_half_only, hu, lung)
    assert abs(s2[0] - 50.0) < 3.0 and sd2[0] > 10.0   # mirrored, the dense half leaves its view


def test_agreement_note_names_disagreement():
    a = level_agreement(10.0, 10.0 + DISAGREE_POINTS + 1)
    assert a.difference > DISAGREE_POINTS and "disagree" in a.note
    assert "agree within" in level_agreement(10.0, 12.0).note
    assert level_agreement(None, 5.0).difference is None


def test_uncertainty_is_the_spread_widened_by_the_disagreement():
    sd, snet = np.array([2.0, 1.0, 0.5]), np.array([30.0, 20.0, 10.0])
    assert np.allclose(score_uncertainty(sd, snet), sd)                   # no lesion map: the spread alone
    assert np.allclose(score_uncertainty(sd, snet, snet), sd)             # the two answers agree
    u = score_uncertainty(sd, snet, snet + np.array([0.0, 8.0, -30.0]))
    assert u[0] == 2.0 and abs(u[1] - np.hypot(1.0, 4.0)) < 1e-9 and abs(u[2] - np.hypot(0.5, 15.0)) < 1e-9
    # per slice, on the last axis
    assert score_uncertainty(np.ones((4, 3)), np.zeros((4, 3)), np.full((4, 3), 6.0)).shape == (4, 3)
