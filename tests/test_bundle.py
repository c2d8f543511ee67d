"""Model bundles: the shipped cards follow the schema, their figures recompute from their stored predictions,
card.md comes from the card alone, saving never touches the installed package unless asked, --weights fallback."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sscild.bundle import (MODELS_DIR, PACKAGE_DIR, card_problems, card_summary, headline_metrics, read_card, recompute_metrics,
                           render_card_md, resolve_weights, save_bundle, sha256_file)
from sscild.errors import ModelError

SHIPPED = ("snet", "lnet", "lesions")


def _close(stored, again, tol=1e-9):
    if isinstance(stored, dict):
        assert set(stored) == set(again)
        for k in stored:
            _close(stored[k], again[k], tol)
    elif stored is None or (isinstance(stored, float) and np.isnan(stored)):
        assert again is None or np.isnan(again)
    else:
        assert again == pytest.approx(stored, rel=tol, abs=tol)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_card_follows_the_schema_and_hashes_its_weights(name):
    """schema_version 2, no problem listed, the sha256 in the card is the file's, held-out test figures first."""
    d = MODELS_DIR / name
    card = json.loads((d / "card.json").read_text())
    assert card_problems(card) == []
    assert card["kind"] == name and card["schema_version"] == 2
    assert card["weights"]["sha256"] == sha256_file(d / "model.safetensors")
    # L-Net is fine-tuned on the shared real scans with the developers' by-eye level ranges as well
    assert card["training"]["label_kind"] == ("synthetic exact + by-eye" if name == "lnet" else "synthetic exact")
    head = headline_metrics(card)
    assert head["split"] == "test" and head["in_sample"] is False
    assert (d / "card.md").read_text() == render_card_md(card)           # card.md is rendered from the card only


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_metrics_recompute_from_stored_predictions(name):
    """every figure that names stored predictions is computed again from validation.json and agrees to 1e-9."""
    d = MODELS_DIR / name
    pairs = recompute_metrics(d)
    assert len(pairs) >= 2                               # test and validation at least
    for stored, again in pairs:
        _close(stored, again)


def test_snet_card_headline_is_the_test_split_and_calibration_is_in_sample():
    """S-Net: headline = held-out test split (`python bench/bench_snet.py --record-card`), recomputed from its stored
    predictions; the calibrated validation flagged in-sample."""
    from sscild.bundle import read_predictions
    from sscild.scoring.snet import evaluation_table

    card = read_card(MODELS_DIR / "snet")
    head = headline_metrics(card)["values"]
    test = read_predictions(MODELS_DIR / "snet")["test"]
    again = evaluation_table(np.asarray(test["pred"]), np.asarray(test["truth"]))
    assert headline_metrics(card)["split"] == "test" and len(test["pred"]) == headline_metrics(card)["n"] == 400
    for p in ("TOT", "GG", "RET"):
        assert head[p]["MAE"] == pytest.approx(again[p]["MAE"]) and head[p]["kappa"] == pytest.approx(again[p]["kappa"])
    insample = [m for m in card["metrics"] if m["in_sample"]]
    raw = next(m for m in card["metrics"] if m["predictions"] == "validation_uncalibrated")
    # the calibration fitted on the validation slices lowers their MAE: in-sample, so not the headline
    assert len(insample) == 1 and insample[0]["values"]["TOT"]["MAE"] < raw["values"]["TOT"]["MAE"]
    assert card["heatmap"]["patch_mm"] == 45.0 and card["heatmap"]["stride_mm"] == 11.0
    md = (MODELS_DIR / "snet" / "card.md").read_text()
    assert "IN-SAMPLE" in md and "headline" in md
    summary = card_summary(card)                                  # what analysis.json and the report show
    assert summary["metrics_split"] == "test" and summary["metrics"] == head
    assert summary["sha256"] == card["weights"]["sha256"]


def test_card_md_label_statement_follows_the_label_kind(tmp_path):
    """an expert-labelled model is not described as trained without patient labels."""
    card = read_card(MODELS_DIR / "lesions")
    card["training"]["label_kind"] = "expert"
    md = render_card_md(card)
    assert "no patient labels" not in md and "expert labels" in md
    assert "no patient labels" in render_card_md(read_card(MODELS_DIR / "lesions"))


def test_save_never_writes_into_the_package_unless_asked(tmp_path):
    """save_bundle refuses a folder inside the installed package; elsewhere it writes the four files."""
    from sscild.lesions import UNetConfig, build_unet, save_unet

    cfg = UNetConfig(size=32, channels=(4, 8))
    with pytest.raises(ModelError, match="installed sscild package"):
        save_unet(build_unet(cfg), cfg, PACKAGE_DIR / "models" / "should_not_exist")
    assert not (PACKAGE_DIR / "models" / "should_not_exist").exists()
    save_unet(build_unet(cfg), cfg, tmp_path / "u", predictions={"validation": {"cases": []}})
    assert sorted(p.name for p in (tmp_path / "u").iterdir()) == ["card.json", "card.md", "model.safetensors",
                                                                   "validation.json"]


def test_heatmap_thresholds_of_the_shipped_snet_go_to_a_copy(tmp_path):
    """`train heatmap-thresholds` without --out refuses to touch the shipped S-Net (the package stays as it was)."""
    from sscild.errors import ConfigError
    from sscild.explain import calibrate_thresholds

    before = (MODELS_DIR / "snet" / "card.json").read_bytes()
    with pytest.raises(ConfigError, match="--out"):
        calibrate_thresholds(None, seeds=[7600])
    torch.set_num_threads(1)
    fit = calibrate_thresholds(None, seeds=[7600], out=tmp_path / "copy", patch_mm=60.0, stride_mm=20.0)
    assert (MODELS_DIR / "snet" / "card.json").read_bytes() == before
    card = read_card(tmp_path / "copy")
    assert card["heatmap"]["thresholds"] == fit.thresholds
    assert (card["heatmap"]["patch_mm"], card["heatmap"]["stride_mm"]) == (60.0, 20.0)
    assert card["weights"]["sha256"] == sha256_file(MODELS_DIR / "snet" / "model.safetensors")
    assert len(recompute_metrics(tmp_path / "copy")) == len(recompute_metrics(MODELS_DIR / "snet"))


def test_resolve_weights_falls_back_to_the_shipped_model_with_a_note(tmp_path):
    """--weights DIR: DIR/snet when present, DIR itself when it is an snet bundle, else shipped + a note."""
    from sscild.scoring.snet import SNetConfig, build_snet, save_snet

    cfg = SNetConfig(backbone="resnet10", size=32, width=0.25)
    save_snet(build_snet(cfg), cfg, tmp_path / "w" / "snet")
    assert resolve_weights(tmp_path / "w", "snet") == (tmp_path / "w" / "snet", None)
    assert resolve_weights(tmp_path / "w" / "snet", "snet") == (tmp_path / "w" / "snet", None)
    d, note = resolve_weights(tmp_path / "w", "lesions")
    assert d is None and "shipped lesions model" in note
    with pytest.raises(ModelError, match="does not exist"):
        resolve_weights(tmp_path / "nothing", "snet")


def test_cards_written_before_the_schema_still_load(tmp_path):
    """an old card (no schema_version) is read as a schema card with a note that its weights are unverified."""
    from sscild.scoring.lnet import LNetConfig, build_lnet, load_lnet, save_lnet

    cfg = LNetConfig(in_plane=16, z_mm=4.0, window=32, channels=(4, 8, 8))
    save_lnet(build_lnet(cfg), cfg, tmp_path / "old")
    (tmp_path / "old" / "card.json").write_text(json.dumps({"name": "L-Net", "config": {
        "in_plane": 16, "z_mm": 4.0, "window": 32, "channels": [4, 8, 8], "head": "zmap"},
        "trained_on": "toy", "metrics": {"L1": {"MAE_mm": 1.0}}}))
    _, cfg2, card = load_lnet(tmp_path / "old")
    assert cfg2 == cfg and card["kind"] == "lnet" and "not verified" in card["notes"]["legacy_card"]
    assert card["metrics"][0]["values"]["L1"]["MAE_mm"] == 1.0
