"""Lesion U-Net: learning on tiny inputs, whole-scan inference on the input grid, lesions.json figures against
hand counts, users' label maps (NIfTI and 3D Slicer .seg.nrrd with segment names)."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

torch = pytest.importorskip("torch")

from sscild.errors import LabelMapError
from sscild.lesions import (SegSet, UNetConfig, dice_table, load_unet, predict_prepared, prepare_volume,
                            read_label_map, save_unet, segment_lesions, summarise, synthetic_segset, train_unet)
from sscild.scan import CTScan

TINY = UNetConfig(size=32, channels=(8, 16, 32))


def _toy_volume(nz=6, n=48):
    hu = np.full((nz, n, n), 40, np.int16)
    lung = np.zeros((nz, n, n), bool)
    lung[:, 8:40, 6:22] = True
    lung[:, 8:40, 26:42] = True
    rng = np.random.default_rng(0)
    hu[lung] = (-860 + 15 * rng.standard_normal(lung.sum())).astype(np.int16)
    return hu, lung


def test_unet_learns_to_segment_inserted_patterns():
    torch.set_num_threads(1)
    hu, lung = _toy_volume()
    bg, _ = prepare_volume(hu, lung, 2.0, TINY, group="toy")
    data = synthetic_segset(bg, 120, np.random.default_rng(0))
    model, log = train_unet(data, cfg=TINY, steps=200, batch_size=8, lr=3e-3)
    assert np.mean(log.losses[-20:]) < 0.6 * np.mean(log.losses[:20])
    test = synthetic_segset(bg, 30, np.random.default_rng(1))
    d = dice_table(predict_prepared(model, test, TINY), test.labels)
    assert d["lesion"] > 0.7          # GG vs RET separation needs longer training: measured in bench_lesions


def test_segment_lesions_on_the_scan_grid_and_round_trip(tmp_path):
    torch.set_num_threads(1)
    hu, lung = _toy_volume()
    scan = CTScan(hu, spacing=(3.0, 2.0, 2.0), origin=(0.0, 0.0, 0.0))
    model = torch.nn.Module()
    cfg = TINY

    class Fixed(torch.nn.Module):   # says GG where HU > -700, normal elsewhere
        def forward(self, x):
            gg = (x[:, :1] > 300 / 1200).float()
            return torch.cat([torch.zeros_like(gg), 1 - gg, gg, torch.zeros_like(gg)], 1) * 10
    hu2 = hu.copy()
    hu2[~lung] = -1000                  # no soft tissue blurring into the lung edge on resampling
    hu2[:, 12:24, 8:18] = -500
    scan2 = CTScan(hu2, spacing=scan.spacing, origin=scan.origin)
    lab = segment_lesions(Fixed(), cfg, scan2, lung)
    assert lab.shape == hu.shape and not lab[~lung].any()
    truth = np.where(lung, 1, 0)
    truth[:, 12:24, 8:18] = 2
    assert dice_table(lab, truth)["GG"] > 0.85
    save_unet(build := __import__("sscild.lesions", fromlist=["build_unet"]).build_unet(cfg), cfg, tmp_path / "u")
    m2, cfg2, card = load_unet(tmp_path / "u")
    assert cfg2 == cfg and card["name"] == "lesion U-Net"
    del model, build


def test_summary_by_hand():
    lab = np.zeros((3, 4, 4), np.uint8)
    lungs = np.zeros((3, 4, 4), np.uint8)
    lungs[:, :, :2], lungs[:, :, 2:] = 1, 2
    lab[lungs > 0] = 1
    lab[0, 0, 0] = 2            # right lung, lowest slice: one GG voxel
    lab[2, 0, 3] = 3            # left lung, top slice: one RET voxel
    scan = CTScan(np.zeros((3, 4, 4), np.int16), spacing=(10.0, 10.0, 10.0), origin=(0.0, 0.0, 0.0))  # 1 mL voxels
    s = summarise(lab, lungs, scan, {"L1": 2, "L5": 0})
    assert s["whole"]["lung_ml"] == pytest.approx(48) and s["whole"]["lesion_ml"] == pytest.approx(2)
    assert s["whole"]["involvement_pct"] == pytest.approx(100 * 2 / 48)
    assert s["right"]["GG_ml"] == 1 and s["right"]["RET_ml"] == 0 and s["left"]["RET_ml"] == 1
    assert s["zones"]["lower"]["GG_ml"] == 1 and s["zones"]["upper"]["RET_ml"] == 1
    assert s["levels"]["L1"]["RET"] == pytest.approx(100 / 16) and s["levels"]["L5"]["GG"] == pytest.approx(100 / 16)


def _write_seg_nrrd(path, arr, names):
    img = sitk.GetImageFromArray(arr.astype(np.uint8))
    for i, n in enumerate(names):
        img.SetMetaData(f"Segment{i}_Name", n)
        img.SetMetaData(f"Segment{i}_LabelValue", str(i + 1))
        img.SetMetaData(f"Segment{i}_Layer", "0")
    sitk.WriteImage(img, str(path), True)


def test_label_maps_seg_nrrd_names_and_errors(tmp_path):
    scan = CTScan(np.zeros((4, 5, 6), np.int16), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    arr = np.zeros((4, 5, 6), np.uint8)
    arr[1, 1, 1], arr[2, 2, 2], arr[3, 3, 3] = 1, 2, 3
    _write_seg_nrrd(tmp_path / "a.seg.nrrd", arr, ["Established fibrosis", "GGO", "Normal lung"])
    lab = read_label_map(tmp_path / "a.seg.nrrd", scan)
    assert lab[1, 1, 1] == 3 and lab[2, 2, 2] == 2 and lab[3, 3, 3] == 1
    _write_seg_nrrd(tmp_path / "b.seg.nrrd", arr, ["Fine fibrosis", "Consolidation", "Emphysema"])
    with pytest.raises(LabelMapError, match="Consolidation.*names found"):
        read_label_map(tmp_path / "b.seg.nrrd", scan)
    lab2 = read_label_map(tmp_path / "b.seg.nrrd", scan, {"fibrosis": 3, "consolidation": 2, "emphysema": 1})
    assert lab2[2, 2, 2] == 2
    sitk.WriteImage(sitk.GetImageFromArray(arr * 3), str(tmp_path / "c.nii.gz"))
    with pytest.raises(LabelMapError, match="not sscild classes"):
        read_label_map(tmp_path / "c.nii.gz", scan)
    with pytest.raises(LabelMapError, match="grid"):
        read_label_map(tmp_path / "a.seg.nrrd", CTScan(np.zeros((3, 5, 6), np.int16), spacing=(1.0,) * 3,
                                                        origin=(0.0,) * 3))


def test_evaluate_segmentation_and_correlation_cli(tmp_path):
    import pandas as pd
    from scipy import stats
    from typer.testing import CliRunner

    from sscild.cli import app
    from sscild.io import save_like

    scan = CTScan(np.full((12, 20, 20), -800, np.int16), spacing=(10.0, 10.0, 10.0), origin=(0.0, 0.0, 0.0))
    save_like(scan.hu, scan, tmp_path / "ct.nii.gz")
    t = np.ones((12, 20, 20), np.uint8)
    t[0, :2, :2] = 2                                  # 4 GG voxels
    p = t.copy()
    p[0, 0, 2] = 2                                    # one false positive: Dice GG = 2*4/(5+4)
    save_like(t, scan, tmp_path / "t.nii.gz")
    save_like(p, scan, tmp_path / "p.nii.gz")
    r = CliRunner().invoke(app, ["evaluate", "segmentation", "--pred", str(tmp_path / "p.nii.gz"), "--truth",
                                 str(tmp_path / "t.nii.gz"), "--image", str(tmp_path / "ct.nii.gz")])
    assert r.exit_code == 0, r.output
    assert f"Dice GG: {8 / 9:.3f}" in r.output and "error +1.0 mL" in r.output
    m = pd.DataFrame({"scan_id": list("abcde"), "lesions_involvement_pct": [1, 5, 3, 9, 7]})
    f = pd.DataFrame({"scan_id": list("abcde"), "FVC_pct": [100, 80, 90, 60, 75]})
    m.to_csv(tmp_path / "m.csv", index=False)
    f.to_csv(tmp_path / "f.csv", index=False)
    r = CliRunner().invoke(app, ["evaluate", "correlation", "--measurements", str(tmp_path / "m.csv"), "--with",
                                 str(tmp_path / "f.csv")])
    assert r.exit_code == 0, r.output
    rho = stats.spearmanr([1, 5, 3, 9, 7], [100, 80, 90, 60, 75]).statistic
    assert rho == pytest.approx(-1.0) and "-1" in r.output


def test_train_from_config_with_patient_grouped_folds(tmp_path):
    import json

    import yaml

    from sscild.lesions import train_from_config

    torch.set_num_threads(1)
    cfg = {"out": str(tmp_path / "out"), "config": {"size": 32, "channels": [8, 16, 32]},
           "data": {"phantoms": {"n": 4, "seed0": 31, "size": "small", "every": 8}},
           "synthetic": {"n": 8, "source": "procedural"}, "cv": {"folds": 2},
           "train": {"steps": 4, "batch_size": 2}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    out = train_from_config(tmp_path / "c.yaml", quiet=True)
    cv = json.loads((out / "cv.json").read_text())
    assert len(cv) == 2
    a, b = set(cv[0]["patients"]), set(cv[1]["patients"])
    assert a and b and not (a & b)              # a patient's slices never sit in two test folds
    assert (out / "model.safetensors").exists() and (out / "card.md").exists()
