"""analyze with the learned stages: scores.json, heat maps, lesions; and without weights (clear warning)."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")

from sscild.phantom import make_phantom
from sscild import AnalysisSettings, ModelSet, analyze, write_outputs
from sscild.domain import LEVELS
from sscild.modelset import DEFAULT_MODELS


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(21, size="small", extent=30.0)


@pytest.mark.skipif(not (DEFAULT_MODELS / "snet" / "model.safetensors").exists() or
                    not (DEFAULT_MODELS / "lesions" / "model.safetensors").exists(),
                    reason="shipped S-Net / lesion weights not present")
def test_analyze_writes_scores_heatmaps_and_lesions(phantom, tmp_path):
    import torch

    torch.set_num_threads(1)
    scan, truth = phantom
    a = analyze(scan, options={"heatmaps": True, "stride_mm": 22.0})
    files = write_outputs(a, scan, tmp_path, report=True)
    sc = json.loads((tmp_path / "scores.json").read_text())
    tots = [v["TOT"] for v in sc["levels"].values() if v["TOT"] is not None]
    assert len(tots) == 5 and sc["goh_extent"] == pytest.approx(np.mean(tots))
    # the published Goh rule (domain.goh_stage): < 10 % limited, > 30 % extensive, between: FVC decides
    ext = sc["goh_extent"]
    assert sc["goh_stage"] == ("limited" if ext < 10 else "extensive" if ext > 30 else "indeterminate")
    assert sc["n_levels_scored"] == 5 and sc["goh_extent_note"] == "mean TOT of the 5 levels"
    for v in sc["levels"].values():
        assert max(v["GG"], v["RET"]) - 1e-6 <= v["TOT"] <= min(100.0, v["GG"] + v["RET"]) + 1e-6
    assert set(sc["derived"]) == set(sc["levels"])
    assert (tmp_path / "heatmap_L3_TOT.nii.gz").exists() and (tmp_path / "heatmap_L3_GG.png").exists()
    les = json.loads((tmp_path / "lesions.json").read_text())
    lab = a.lesion_labels
    assert lab.shape == scan.shape and not lab[~a.lungs.mask].any()
    assert les["whole"]["involvement_pct"] == pytest.approx(100 * (lab >= 2).sum() / (lab > 0).sum())
    assert "lesions" in files and "S-Net" in (tmp_path / "report.html").read_text()
    # vessels count as normal lung; S-Net's spread under TTA and the lesion map's ratio beside it, per level
    # (RET stays on thin vessel-mask voxels inside reticulation: tests/test_pipeline.py checks that rule)
    assert a.vessels.mask.any() and not (lab[a.vessels.mask] == 2).any() and "vessels" in les["excluded"]
    assert (tmp_path / "vessels.nii.gz").exists() and (tmp_path / "regions.png").exists()
    for n, v in sc["levels"].items():
        assert v["TOT_sd"] >= 0 and v["agreement"]["snet_tot"] == v["TOT"]
        k = v["slice"]
        assert v["agreement"]["lesion_tot"] == pytest.approx(100 * (lab[k] >= 2).sum() / a.lungs.mask[k].sum())
    assert json.loads((tmp_path / "regions.json").read_text())["measure"] == "involvement_pct"
    # the shipped models see real signal: a 30 % phantom scores clearly above a healthy one
    healthy, _ = make_phantom(22, size="small", extent=0.0)
    h = analyze(healthy, options={"lesions": False})
    assert sc["goh_extent"] > h.scores.goh_extent + 5
    assert a.scores.goh_extent == sc["goh_extent"] and a.heatmaps.derived == sc["derived"]


def test_analyze_without_weights_warns_and_goes_on(phantom, tmp_path):
    scan, _ = phantom
    for name in ("snet", "lesions"):
        (tmp_path / "w" / name).mkdir(parents=True)          # folders given, weights missing
    a = analyze(scan, options={"weights": tmp_path / "w"})
    assert a.scores is None and a.lesion_labels is None
    assert any("no scores" in w and "sscild train scoring" in w for w in a.warnings)
    assert any("no lesion segmentation" in w for w in a.warnings)
    files = write_outputs(a, scan, tmp_path / "out", report=False)
    assert "scores" not in files and (tmp_path / "out" / "lungs.nii.gz").exists()


def test_weights_folder_without_a_model_falls_back_to_the_shipped_one(phantom, tmp_path):
    """--weights DIR without snet/: the shipped S-Net scores, with a note saying so."""
    if not (DEFAULT_MODELS / "snet" / "model.safetensors").exists():
        pytest.skip("shipped S-Net weights not present")
    scan, _ = phantom
    (tmp_path / "w").mkdir()
    a = analyze(scan, AnalysisSettings(weights=tmp_path / "w", lesions=False))
    assert a.scores is not None and a.scores.n_levels_scored == 5
    assert any("has no snet/ folder" in w and "shipped" in w for w in a.warnings)
    assert any(m.get("note") for m in a.models)


def test_one_model_set_loads_each_model_once(phantom):
    """A caller-owned ModelSet: two analyses, one load per model (the batch worker's case)."""
    scan, _ = phantom
    calls = []

    def fake_snet(directory, device="cpu"):
        calls.append(directory)
        from sscild.errors import ModelMissingError
        raise ModelMissingError("no S-Net here: sscild train scoring --config ...")

    models = ModelSet(loaders={"snet": fake_snet})
    for _ in range(2):
        a = analyze(scan, AnalysisSettings(lesions=False), models=models)
        assert a.scores is None and any("no S-Net here" in w for w in a.warnings)
    assert len(calls) == 2                                   # a failed load is tried again, not cached
    loaded = ModelSet(loaders={"snet": lambda d, device="cpu": ("model", "cfg", {"name": "S-Net"})})
    assert loaded.get("snet") is loaded.get("snet") and len(loaded) == 1


def test_lnet_levels_feed_the_scores_when_anatomy_is_off(phantom):
    """L-Net gives GohLevels (method "lnet") that S-Net can score, without the anatomical levels."""
    if not all((DEFAULT_MODELS / m / "model.safetensors").exists() for m in ("lnet", "snet")):
        pytest.skip("shipped L-Net / S-Net weights not present")
    scan, truth = phantom
    a = analyze(scan, AnalysisSettings(levels=False, lnet=True, lesions=False))
    assert a.levels is None and a.levels_lnet.method == "lnet"
    placed = [n for n, z in a.levels_lnet.z_mm.items() if z is not None]
    assert len(placed) >= 4
    for n in placed:                                         # L-Net on phantoms: within 3 slices (3 mm each)
        assert abs(a.levels_lnet.z_mm[n] - truth.levels_z[n]) < 3 * scan.spacing[0] + 1e-6
    assert a.scores is not None and a.scores.n_levels_scored == len(placed)
    assert a.to_dict()["levels_lnet"]["method"] == "lnet"


def test_analyze_scores_the_anatomical_and_lnet_levels_combined(phantom):
    """By default both methods place the levels and the slices scored are their combination: each level's z_mm
    the centre of the slice S-Net scores, agreement raising the confidence over the anatomy's alone; each method's
    own levels kept in analysis.json."""
    if not all((DEFAULT_MODELS / m / "model.safetensors").exists() for m in ("lnet", "snet")):
        pytest.skip("shipped L-Net / S-Net weights not present")
    scan, truth = phantom
    a = analyze(scan, AnalysisSettings(lesions=False))
    assert (a.levels.method, a.levels_anatomy.method, a.levels_lnet.method) == ("anatomy+lnet", "anatomy", "lnet")
    for n in LEVELS:
        z = a.levels.z_mm[n]
        k = scan.slice_at_z(z)
        assert z == scan.z_mm(k) and a.scores.levels[n].slice == k                      # the slice scored
        assert abs(z - truth.levels_z[n]) <= 8.0, (n, z, truth.levels_z[n])          # max error allowed
        zs = (a.levels_anatomy.z_mm[n], a.levels_lnet.z_mm[n])
        if abs(zs[0] - zs[1]) <= 5.0:                                                 # agree: more confident
            assert a.levels.confidence[n] >= a.levels_anatomy.confidence[n], n
    d = a.to_dict()
    assert d["levels"]["method"] == "anatomy+lnet" and d["levels_anatomy"]["method"] == "anatomy"


def test_heatmap_thresholds_come_from_the_card_with_their_patch_and_stride():
    from sscild.pipeline import heatmap_thresholds

    card = {"heatmap": {"thresholds": {"TOT": -1.5, "GG": -2.5, "RET": -3.0}, "patch_mm": 45.0, "stride_mm": 11.0}}
    thr, notes = heatmap_thresholds(card, AnalysisSettings())
    assert thr == {"TOT": -1.5, "GG": -2.5, "RET": -3.0} and notes == ()
    thr, notes = heatmap_thresholds(card, AnalysisSettings(stride_mm=22.0))
    assert len(notes) == 1 and "stride_mm = 11.0 (this run: 22.0)" in notes[0]
    legacy = {"heatmap": None, "notes": {"heatmap_thresholds": {"TOT": -1.0, "GG": -2.0, "RET": -4.0}}}
    assert heatmap_thresholds(legacy, AnalysisSettings())[0]["RET"] == -4.0
    thr, notes = heatmap_thresholds({}, AnalysisSettings())
    assert set(thr.values()) == {-2.0} and "no heat-map thresholds" in notes[0]
