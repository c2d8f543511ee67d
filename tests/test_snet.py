"""S-Net, data synthesis and balanced sampling: exact synthetic scores, sampler frequencies, learning on tiny
inputs, consistency of outputs, config training with resume/--init, and the evaluate command line."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi

torch = pytest.importorskip("torch")

from sscild.errors import ConfigError, ModelError, NoLungsError
from sscild.scoring.sampling import BalancedSampler, balanced_weights, tot_bins
from sscild.scoring.snet import (Backgrounds, SNetConfig, SNetScorer, SliceSet, build_snet, consistent, crop_resample,
                                 load_init, load_snet, local_std, predict_prepared, prepare_slices, save_snet,
                                 synthesize, train_snet)
from sscild.scoring.synthesis import (GG, NORMAL, RET, PatchPatterns, ProceduralPatterns, insert_patterns,
                                      real_gg_patterns, scores_from_labels)

TINY = SNetConfig(backbone="resnet10", size=32, width=0.25)


def _lung_slice(n=96):
    img = np.full((n, n), 40.0, np.float32)            # soft tissue
    lung = np.zeros((n, n), bool)
    yy, xx = np.mgrid[:n, :n]
    lung |= ((yy - n / 2) / (0.35 * n)) ** 2 + ((xx - 0.3 * n) / (0.17 * n)) ** 2 < 1
    lung |= ((yy - n / 2) / (0.35 * n)) ** 2 + ((xx - 0.7 * n) / (0.17 * n)) ** 2 < 1
    rng = np.random.default_rng(0)
    img[lung] = -860 + 15 * rng.standard_normal(lung.sum())
    return img, lung


# ------------------------------------------------------------------ synthesis
def test_scores_from_labels_by_hand():
    lab = np.array([[0, 1, 1, 2], [2, 3, 3, 3]], np.uint8)       # 7 lung px: 2 GG, 3 RET
    s = scores_from_labels(lab)
    assert s["GG"] == pytest.approx(200 / 7) and s["RET"] == pytest.approx(300 / 7)
    assert s["TOT"] == pytest.approx(500 / 7)


def test_insertion_scores_are_the_inserted_areas_and_only_there():
    img, lung = _lung_slice()
    for seed in range(6):
        r = insert_patterns(img, lung, np.random.default_rng(seed), pixel_mm=2.0, n_gg=2, n_ret=2,
                            axis_mm=(8.0, 40.0), fade_mm=1.0)
        assert set(np.unique(r.labels[~lung])) <= {0} and set(np.unique(r.labels[lung])) <= {NORMAL, GG, RET}
        n = lung.sum()
        assert r.scores["GG"] == pytest.approx(100 * (r.labels == GG).sum() / n)
        assert r.scores["RET"] == pytest.approx(100 * (r.labels == RET).sum() / n)
        assert r.scores["TOT"] == pytest.approx(r.scores["GG"] + r.scores["RET"])
        assert r.scores["TOT"] >= max(r.scores["GG"], r.scores["RET"])
        # nothing changes outside the lung; lung pixels far (> 4 sigma) from any lesion keep their values
        assert np.array_equal(r.image[~lung], img[~lung])
        far = lung & (ndi.distance_transform_edt(r.labels < GG) > 4 / 1.0 * 2) & (r.labels == NORMAL)
        np.testing.assert_allclose(r.image[far], img[far], atol=0.5)
        # the inserted GG is hazier than normal lung: mean HU rises where labelled GG
        if (r.labels == GG).sum() > 20:
            assert r.image[r.labels == GG].mean() > img[r.labels == GG].mean() + 100


def test_ret_wins_where_patterns_overlap():
    img, lung = _lung_slice()
    big = (200.0, 200.0)                                    # each ellipse covers all the lung
    r = insert_patterns(img, lung, np.random.default_rng(0), pixel_mm=1.0, n_gg=1, n_ret=1, axis_mm=big)
    assert r.scores["RET"] == pytest.approx(100.0) and r.scores["GG"] == 0.0 and r.scores["TOT"] == 100.0


def test_pixel_noise_is_the_noise_not_the_vessels():
    from sscild.scoring.synthesis import pixel_noise

    img, lung = _lung_slice(128)
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:128, :128]
    for k in range(12):                              # vessels: bright discs 1-3 px across
        cy, cx = rng.uniform(30, 98, 2)
        img[(np.hypot(yy - cy, xx - cx) < rng.uniform(0.7, 1.6)) & lung] = -50.0
    clean = np.where(lung, img, 40.0).astype(np.float32)
    for sd in (15.0, 40.0, 80.0):
        noisy = clean + sd * rng.standard_normal(clean.shape).astype(np.float32)
        assert pixel_noise(noisy, lung) == pytest.approx(np.hypot(sd, 15.0), rel=0.2)   # the slice's own 15 HU


def test_inserted_texture_gets_the_background_noise():
    img, lung = _lung_slice(128)
    img = img + np.where(lung, 60.0 * np.random.default_rng(1).standard_normal(img.shape), 0).astype(np.float32)
    flat = ProceduralPatterns(gg_hu=(-600.0, -600.0))
    kw = dict(pixel_mm=1.0, n_gg=1, n_ret=0, axis_mm=(200.0, 200.0), source=flat)
    a = insert_patterns(img, lung, np.random.default_rng(0), **kw)
    b = insert_patterns(img, lung, np.random.default_rng(0), match_noise=False, **kw)
    inner = ndi.binary_erosion(lung, iterations=4)
    assert np.std(b.image[inner]) < 40 and 45 < np.std(a.image[inner]) < 80


def test_patch_patterns_and_bad_kind():
    src = PatchPatterns({"GG": [(np.full((10, 10), -600.0, np.float32), 1.0)]})
    tex = src.texture("GG", np.zeros((40, 50), np.float32), 1.0, np.random.default_rng(0))
    assert tex.shape == (40, 50) and abs(float(tex.mean()) + 600) < 1
    with pytest.raises(ConfigError, match="RET"):
        src.texture("RET", np.zeros((4, 4)), 1.0, np.random.default_rng(0))
    with pytest.raises(ConfigError):
        ProceduralPatterns().texture("honeycomb", np.zeros((4, 4)), 1.0, np.random.default_rng(0))


def test_real_gg_patches_come_from_the_gg_band(covid_slices_dir):
    from sscild.scoring.snet import real_slices_from_folder

    slices = real_slices_from_folder(covid_slices_dir)
    assert len(slices) >= 5        # abdominal slices are skipped
    patches = real_gg_patterns(slices)
    assert len(patches) >= 10
    frac = np.mean([np.mean((p >= -750) & (p <= -300)) for p, _ in patches])
    assert frac > 0.55


# ------------------------------------------------------------------ sampling
def test_balanced_weights_by_hand():
    np.testing.assert_allclose(balanced_weights([0, 0, 0, 50]), [1 / 6, 1 / 6, 1 / 6, 1 / 2])
    assert tot_bins([0, 2.4, 2.6, 100, 101]).tolist() == [0, 0, 1, 20, 20]


def test_balanced_sampler_equalises_bins_and_refuses_empty():
    tot = np.r_[np.zeros(900), np.full(90, 30.0), np.full(10, 80.0)]
    idx = BalancedSampler(tot, seed=1).draw(30000)
    share = np.bincount(tot_bins(tot[idx]), minlength=21)[[0, 6, 16]] / len(idx)
    np.testing.assert_allclose(share, 1 / 3, atol=0.02)
    uni = BalancedSampler(tot, balanced=False, seed=1).draw(30000)
    assert (tot[uni] == 0).mean() > 0.85
    with pytest.raises(ConfigError, match="empty"):
        BalancedSampler([])
    with pytest.raises(ConfigError, match="NaN"):
        balanced_weights([1.0, float("nan")])


# ------------------------------------------------------------------ network
def test_consistent_by_hand():
    out = consistent(np.array([[5.0, 30.0, 10.0], [90.0, 20.0, 10.0], [-3.0, -1.0, 120.0]]))
    np.testing.assert_allclose(out, [[30, 30, 10], [30, 20, 10], [100, 0, 100]])


def test_crop_resample_centres_the_lungs():
    img, lung = _lung_slice(120)
    pad_img = np.full((200, 200), -1000, np.float32)
    pad_lung = np.zeros((200, 200), bool)
    pad_img[50:170, 30:150], pad_lung[50:170, 30:150] = img, lung
    hu, lu, _, f = crop_resample(pad_img[None], pad_lung[None], 48)
    assert hu.shape == (1, 48, 48) and lu[0].any()
    ys, xs = np.nonzero(lu[0])
    assert abs(ys.mean() - 23.5) < 2 and abs(xs.mean() - 23.5) < 2
    with pytest.raises(NoLungsError):
        crop_resample(pad_img[None], np.zeros_like(pad_lung)[None], 48)


def test_local_std_keeps_fine_texture_that_resampling_averages_away():
    from sscild.scoring.snet import lung_crop

    n = 256
    lung = np.zeros((n, n), bool)
    lung[16:240, 16:240] = True
    yy, xx = np.mgrid[:n, :n]
    img = np.full((n, n), 40.0, np.float32)                  # soft tissue around the lung
    img[lung] = np.where((yy + xx) % 2 == 0, -850.0, -250.0)[lung]   # 1-px checkerboard: SD 300 HU
    crop = lung_crop(lung, 0.06)
    hu, lu, _, _ = crop_resample(img[None], lung[None], 32, crop=crop)
    inner = ndi.binary_erosion(lu[0], iterations=3)
    assert hu[0][inner].std() < 20                          # the resampled image has lost the texture ...
    sd = local_std(img[None], lung[None], 32, crop)[0]
    assert abs(np.median(sd[inner]) - 300.0) < 15          # ... the SD channel keeps it
    # uniform lung next to soft tissue: the lung edge is not texture (moments are taken inside the lung only)
    flat = np.where(lung, -850.0, 40.0).astype(np.float32)
    sd0 = local_std(flat[None], lung[None], 32, crop)[0]
    assert sd0.max() < 1.0
    # the same pattern at a quarter of the resolution (4-px squares) gives the same SD
    coarse = np.where(lung, np.where(((yy // 4) + (xx // 4)) % 2 == 0, -850.0, -250.0), 40.0).astype(np.float32)
    sdc = local_std(coarse[None], lung[None], 32, crop)[0]
    assert abs(np.median(sdc[inner]) - 300.0) < 30
    # pixel noise (80 HU at 0.7 mm) is mostly taken out by the 0.7 mm smoothing; 2-px lines (1.4 mm) keep more
    # than half of their SD (600 HU contrast, a quarter of the pixels: 260 HU unsmoothed)
    noisy = flat + np.where(lung, 80.0 * np.random.default_rng(0).standard_normal((n, n)), 0).astype(np.float32)
    assert np.median(local_std(noisy[None], lung[None], 32, crop)[0][inner]) > 70
    assert np.median(local_std(noisy[None], lung[None], 32, crop, pixel_mm=0.7)[0][inner]) < 30
    lines = np.where(lung, np.where((xx // 2) % 4 == 0, -250.0, -850.0), 40.0).astype(np.float32)
    assert np.median(local_std(lines[None], lung[None], 32, crop)[0][inner]) == pytest.approx(260, abs=10)
    assert np.median(local_std(lines[None], lung[None], 32, crop, pixel_mm=0.7)[0][inner]) > 130
    with pytest.raises(ConfigError, match="pixel"):
        SNetScorer(None, SNetConfig())


@pytest.mark.parametrize("backbone", ["resnet18", "densenet121", "efficientnet-b0"])
def test_backbones_give_three_outputs(backbone):
    m = build_snet(SNetConfig(backbone=backbone, size=32)).eval()
    with torch.inference_mode():
        assert tuple(m(torch.zeros(2, 3, 32, 32)).shape) == (2, 3)


def test_unknown_backbone():
    with pytest.raises(ConfigError, match="resnet18"):
        build_snet(SNetConfig(backbone="vgg99"))


def _tiny_set(n_bg=6, n_syn=480, seed=0):
    img, lung = _lung_slice(64)
    bg = Backgrounds()
    for _ in range(n_bg):
        bg.add(img, lung, 4.0, "toy")
    return synthesize(bg, n_syn, np.random.default_rng(seed), TINY)


def test_snet_learns_on_tiny_inputs_and_round_trips(tmp_path):
    torch.set_num_threads(1)
    data = _tiny_set()
    model, log = train_snet(data, cfg=TINY, steps=250, batch_size=16, lr=2e-3, augment=False, seed=0)
    assert np.mean(log.losses[-25:]) < 0.35 * log.mean_predictor_loss
    test = _tiny_set(seed=1, n_syn=60)
    pred = predict_prepared(model, test, TINY)
    base = np.abs(test.scores - data.scores.mean(0)).mean()
    assert np.abs(pred - test.scores).mean() < 0.6 * base
    assert np.all(pred[:, 0] >= np.maximum(pred[:, 1], pred[:, 2]) - 1e-6)
    save_snet(model, TINY, tmp_path / "snet")
    m2, cfg2, card = load_snet(tmp_path / "snet")
    assert cfg2 == TINY and card["name"] == "S-Net"
    np.testing.assert_allclose(predict_prepared(m2, test, cfg2), pred, atol=1e-4)
    # --init from that checkpoint loads every tensor; a checkpoint of another backbone fits nothing
    _, skipped = load_init(build_snet(TINY), tmp_path / "snet")
    assert skipped == []
    save_snet(build_snet(SNetConfig(backbone="efficientnet-b0", size=32)), SNetConfig(backbone="efficientnet-b0"),
              tmp_path / "other", {})
    with pytest.raises(ModelError, match="fit"):
        load_init(build_snet(TINY), tmp_path / "other")


def test_snet_training_resumed_equals_uninterrupted(tmp_path):
    """S-Net on the engine: 6 + 6 steps from a checkpoint give the weights of 12 steps in one go (1e-5)."""
    torch.set_num_threads(1)
    data = _tiny_set(n_syn=40)
    kw = dict(cfg=TINY, steps=12, batch_size=4, lr=2e-3, checkpoint_every=3)
    torch.manual_seed(0)
    ref, _ = train_snet(data, model=build_snet(TINY), out=tmp_path / "a", **kw)
    torch.manual_seed(0)
    train_snet(data, model=build_snet(TINY), out=tmp_path / "b", stop_after=6, **kw)
    torch.manual_seed(1)                                       # another start: the checkpoint must replace it
    res, log = train_snet(data, model=build_snet(TINY), out=tmp_path / "b", resume=True, **kw)
    assert log.start_step == 6 and log.step == 12
    for (k, a), b in zip(ref.state_dict().items(), res.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), k


def test_scorer_for_heatmaps_marks_the_lesion():
    """A scorer built on an S-Net-like callable: the full-slice API crops like training and returns (N, 3)."""
    from sscild.explain import heatmap
    from sscild.explain import SlicePatchSource

    img, lung = _lung_slice(64)
    img[~lung] = -1000.0                    # no soft tissue to blur into the lung edge on resampling
    les = np.zeros_like(lung)
    les[20:36, 10:26] = True
    les &= lung
    sick = img.copy()
    sick[les] = -500.0

    class GGShare(torch.nn.Module):       # "network": share of lung pixels above -700 HU (the GG channel)
        def forward(self, x):
            hu01, m = x[:, 0], x[:, 1]
            gg = ((hu01 > (300 / 1200)) & (m > 0.5)).float().sum((1, 2)) / m.sum((1, 2)).clamp(min=1)
            return torch.stack([gg, gg, torch.zeros_like(gg)], 1)

    scorer = SNetScorer(GGShare(), SNetConfig(size=64, margin=0.0), pixel_mm=1.0)
    base = scorer(sick[None], lung[None])[0]
    assert base[1] == pytest.approx(100 * les.sum() / lung.sum(), abs=3)
    src = SlicePatchSource([(img, lung, 1.0)])
    hm = heatmap(sick, lung, scorer, patch=8, stride=4, source=src)
    marked = hm.dp[1] < -0.5
    assert (marked & les).sum() > 0.8 * les.sum()
    # the map is as coarse as the patch: nothing is marked farther than one patch (8 px) from the lesion
    near = ndi.binary_dilation(les, np.ones((15, 15), bool))
    assert not (marked & ~near).any()


def test_train_from_config_resume_and_evaluate_cli(tmp_path):
    import yaml
    from typer.testing import CliRunner

    from sscild.cli import app
    from sscild.scoring.snet import train_from_config

    torch.set_num_threads(1)
    cfg = {"out": str(tmp_path / "out"), "config": {"backbone": "resnet10", "size": 32, "width": 0.25},
           "data": {"phantoms": {"n": 3, "seed0": 11, "size": "small", "neighbours": 0}},
           "synthetic": {"fraction": 0.5, "source": "procedural"}, "pretrain": {"steps": 5},
           "train": {"steps": 20, "batch_size": 4, "checkpoint_every": 10, "log_every": 10},
           "validation": {"phantoms": {"n": 1, "seed0": 21, "size": "small", "neighbours": 0}}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = train_from_config(path, quiet=True)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and (out / "validation.json").exists()
    assert not (out / "checkpoint.pt").exists() and (out / "checkpoint.json").exists()     # no pickle
    cfg["train"]["steps"] = 30
    path.write_text(yaml.safe_dump(cfg))
    train_from_config(path, resume=True, quiet=True)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3 and '"step": 30' in lines[-1]
    with pytest.raises(ConfigError, match="known keys"):                  # a typo is refused, not trained around
        cfg["train"]["stpes"] = 5
        path.write_text(yaml.safe_dump(cfg))
        train_from_config(path, quiet=True)

    # evaluate scores: MAE by hand
    truth = pd.DataFrame({"scan_id": ["a", "a", "b"], "level": ["L1", "L2", "L1"], "TOT": [10, 20, 30],
                          "GG": [5, 10, 15], "RET": [5, 10, 15]})
    pred = truth.copy()
    pred["TOT"] = [12, 20, 26]
    truth.to_csv(tmp_path / "t.csv", index=False)
    pred.to_csv(tmp_path / "p.csv", index=False)
    r = CliRunner().invoke(app, ["evaluate", "scores", "--pred", str(tmp_path / "p.csv"), "--truth",
                                 str(tmp_path / "t.csv"), "-o", str(tmp_path / "ev")])
    assert r.exit_code == 0, r.output
    tab = pd.read_csv(tmp_path / "ev" / "table.csv")
    row = tab[(tab.level == "all") & (tab.pattern == "TOT")].iloc[0]
    assert row.MAE == pytest.approx(2.0)                       # (2 + 0 + 4) / 3
    assert (tmp_path / "ev" / "bland_altman_TOT.png").exists()
    lv_t = pd.DataFrame({"scan_id": ["a", "b", "c"], **{f"L{i}": [10.0 * i, 20.0 * i, 30.0 * i] for i in range(1, 6)}})
    lv_p = lv_t.copy()
    lv_p["L3"] = lv_p["L3"] + [3.0, -3.0, 6.0]
    lv_t.to_csv(tmp_path / "lt.csv", index=False)
    lv_p.to_csv(tmp_path / "lp.csv", index=False)
    r = CliRunner().invoke(app, ["evaluate", "levels", "--pred", str(tmp_path / "lp.csv"), "--truth",
                                 str(tmp_path / "lt.csv"), "-o", str(tmp_path / "lv")])
    assert r.exit_code == 0, r.output
    lt = pd.read_csv(tmp_path / "lv" / "table.csv").set_index("level")
    assert lt.loc["L3", "MAE_mm"] == pytest.approx(4.0) and lt.loc["L3", "max_mm"] == pytest.approx(6.0)
    assert lt.loc["L1", "MAE_mm"] == 0.0


def test_calibration_fits_the_validation_line_and_is_stored(tmp_path):
    from sscild.scoring.snet import calibrate_weights, calibrated, fit_calibration
    from sscild.util import write_json

    rng = np.random.default_rng(0)
    gg, ret = rng.uniform(2, 40, 60), rng.uniform(2, 30, 60)     # away from 0, where outputs are clamped
    truth = np.stack([gg + ret, gg, ret], 1)
    pred = truth * np.array([0.9, 1.1, 0.8]) + np.array([3.0, -1.0, 4.0])     # a biased network
    cal = fit_calibration(pred, truth)
    np.testing.assert_allclose(cal, [1 / 0.9, -3 / 0.9, 1 / 1.1, 1 / 1.1, 1 / 0.8, -4 / 0.8], atol=1e-6)
    out = calibrated(pred, SNetConfig(calibration=cal))
    np.testing.assert_allclose(out[:, 1:], truth[:, 1:], atol=1e-6)
    assert np.all(out[:, 0] >= np.maximum(out[:, 1], out[:, 2]) - 1e-9) and out.min() >= 0
    with pytest.raises(ConfigError, match="20"):
        fit_calibration(pred[:5], truth[:5])
    # stored in saved weights' card from their validation.json; predictions then use it
    save_snet(build_snet(TINY), TINY, tmp_path / "w")
    write_json(tmp_path / "w" / "validation.json", {"sets": {"validation": {"pred": pred, "truth": truth}}})
    notes = calibrate_weights(tmp_path / "w")
    _, cfg, card = load_snet(tmp_path / "w")
    np.testing.assert_allclose(cfg.calibration, cal, atol=1e-6)
    assert notes["validation_metrics"]["GG"]["MAE"] < 1e-6 < notes["validation_metrics_uncalibrated"]["GG"]["MAE"]
    # the calibrated figures are flagged in-sample and are not the headline; both recompute from validation.json
    from sscild.bundle import headline_metrics, recompute_metrics

    insample = [m for m in card["metrics"] if m["in_sample"]]
    assert len(insample) == 1 and insample[0]["values"]["GG"]["MAE"] < 1e-6
    assert headline_metrics(card)["in_sample"] is False
    for stored, again in recompute_metrics(tmp_path / "w"):
        assert again["GG"]["MAE"] == pytest.approx(stored["GG"]["MAE"], abs=1e-9)
    md = (tmp_path / "w" / "card.md").read_text()
    assert "IN-SAMPLE" in md and "calibration" in md
