"""S-Net fine-tuning on new labels (sscild.scoring.snet_finetune) with a tiny network: the guard keeps the
initial weights when fine-tuning is made to hurt; replay, L2-SP and frozen batch norm do what they say; a
fine-tuning run stopped half-way and resumed gives the weights of an uninterrupted one."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from sscild.domain import LEVELS, PATTERNS
from sscild.errors import ConfigError
from sscild.scoring.snet import SNetConfig, build_snet, phantom_slices, save_snet, snet_card, train_snet

TINY = {"backbone": "resnet10", "size": 32, "width": 0.25, "texture": True}


def _labels_csv(root: Path, seeds, scores=None) -> Path:
    """A dataset CSV of small phantom scans (their true level scores, or ``scores(rng)`` for every level)."""
    from sscild.review.simulate import phantom_folder

    rng, rows = np.random.default_rng(0), []
    for seed in seeds:
        f = root / f"case{seed}"
        if not (f / "levels.json").exists():
            phantom_folder(f, seed, 30.0, shape=(48, 64, 64), spacing=(7.0, 5.6, 5.6))
        lv = {d["name"]: d["z_mm"] for d in json.loads((f / "levels.json").read_text())["levels"]}
        sc = json.loads((f / "scores.json").read_text())["levels"]
        row = {"scan_path": str(f / "phantom" / "ct.nii.gz"), "patient_id": f"p{seed}", **lv}
        for n in LEVELS:
            v = scores(rng) if scores else [sc[n][p] for p in PATTERNS]
            row.update({f"{n}_{p}": v[i] for i, p in enumerate(PATTERNS)})
        rows.append(row)
    path = root / ("labels_bad.csv" if scores else "labels.csv")
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    cfg = SNetConfig(**TINY)
    train = phantom_slices(range(7001, 7005), cfg, neighbours=1)
    model, _ = train_snet(train, cfg=cfg, steps=150, batch_size=16, lr=3e-3, warmup_steps=0, seed=0)
    save_snet(model, cfg, root / "init", snet_card(cfg, description="tiny test S-Net"))
    good = _labels_csv(root, (31, 32, 33))
    bad = _labels_csv(root, (31, 32, 33), scores=lambda r: [100.0, 100.0, 100.0] if r.random() < 0.5 else [0, 0, 0])
    return {"root": root, "cfg": cfg, "train": train, "good": good, "bad": bad}


def _config(env, name: str, labels: Path, **over) -> Path:
    c = {"description": "tiny fine-tuning test", "label_kind": "expert", "init": "init", "out": f"out_{name}",
         "config": TINY, "data": {"dataset_csv": labels.name},
         "synthetic": {"fraction": 0.5, "source": "procedural"},
         "validation": {"phantoms": {"n": 3, "seed0": 7500, "size": "small", "neighbours": 1}},
         "finetune": {"replay": {"phantoms": {"n": 2, "seed0": 7000, "size": "small", "neighbours": 1}},
                      "replay_share": 0.5, "l2sp": 0.01, "val_share": 0.34, "tolerance": 0.5},
         "train": {"steps": 12, "batch_size": 8, "lr": 1e-4, "warmup_steps": 0, "augment": False}}
    for k, v in over.items():
        c[k] = {**c[k], **v} if isinstance(v, dict) else v
    path = env["root"] / f"{name}.yaml"
    path.write_text(yaml.safe_dump(c))
    return path


def _sha(path: Path) -> str:
    from sscild.bundle import sha256_file

    return sha256_file(path / "model.safetensors")


def test_guard_keeps_the_initial_weights_when_fine_tuning_hurts(env):
    from sscild.scoring.snet import train_from_config
    from sscild.scoring.snet_finetune import FinetuneWarning

    hurt = {"finetune": {"replay_share": 0.0, "l2sp": 0.0, "freeze_bn": False},
            "train": {"steps": 40, "lr": 3e-3}}
    with pytest.warns(FinetuneWarning, match="worse on the original-distribution validation"):
        out = train_from_config(_config(env, "hurt", env["bad"], **hurt), quiet=True)
    kept = json.loads((out / "card.json").read_text())
    rejected = json.loads((out / "rejected" / "card.json").read_text())
    g = rejected["notes"]["finetune"]["guard"]
    assert g["checked"] and not g["passed"] and g["worse"]
    assert max(g["finetuned_MAE"][p] - g["init_MAE"][p] for p in PATTERNS) > 0.5
    assert _sha(out) == _sha(env["root"] / "init") != _sha(out / "rejected")    # out holds the initial weights
    assert kept["notes"]["finetune_rejected"]["kept"] == "init" and "rejected" in kept["changelog"][-1]["change"]
    # asked to keep the fine-tuned net anyway: the same warning, the card says so
    with pytest.warns(FinetuneWarning, match="keep_finetuned"):
        out2 = train_from_config(_config(env, "hurt2", env["bad"], **{**hurt, "finetune": {
            **hurt["finetune"], "on_worse": "keep_finetuned"}}), quiet=True)
    card2 = json.loads((out2 / "card.json").read_text())
    assert _sha(out2) != _sha(env["root"] / "init") and card2["notes"]["finetune"]["kept"] == "finetuned"
    assert not (out2 / "rejected").exists()


def test_gentle_fine_tuning_with_replay_passes_the_guard_and_refits_the_calibration(env):
    import warnings

    from sscild.scoring.snet import load_snet, train_from_config
    from sscild.scoring.snet_finetune import FinetuneWarning

    with warnings.catch_warnings():
        warnings.simplefilter("error", FinetuneWarning)
        # a tiny net checked on 3 validation phantoms: a noisy yardstick, so a looser tolerance than the default
        out = train_from_config(_config(env, "gentle", env["good"], finetune={"tolerance": 2.0}), quiet=True)
    _, cfg, card = load_snet(out)
    ft = card["notes"]["finetune"]
    assert ft["guard"]["passed"] and ft["kept"] == "finetuned" and len(ft["new_validation_patients"]) == 1
    assert card["training"]["replay_slices"] > 0 and card["training"]["train_slices"] == 2 * 5 * 3
    assert cfg.calibration is not None and "refitted" in ft["calibration"]
    assert sorted(p.name.split("-")[0] for p in (out / "cache").glob("*.npz")) == ["replay", "validation"]


def test_replay_l2sp_and_frozen_batchnorm_act_and_a_resumed_run_matches(env, tmp_path):
    import torch

    from sscild.config import FinetuneSettings, settings_for
    from sscild.scoring.snet import load_snet
    from sscild.scoring.snet_finetune import finetune_snet

    init, cfg, _ = load_snet(env["root"] / "init")
    cfg = dataclasses.replace(cfg, calibration=None)
    new, replay = env["train"].subset(np.arange(10)), env["train"]
    new = dataclasses.replace(new, scores=np.full_like(new.scores, 90.0))     # labels that pull hard
    s = settings_for("snet", steps=10, batch_size=8, lr=3e-3, warmup_steps=0, augment=True, checkpoint_every=5)

    def run(out=None, stop=None, resume=False, **ft):
        import copy

        f = FinetuneSettings(replay={"phantoms": {}}, **{"replay_share": 0.5, "l2sp": 0.01, "freeze_bn": False,
                                                         **ft})
        m, _ = finetune_snet(new, replay, cfg=cfg, settings=s, ft=f, model=copy.deepcopy(init), out=out,
                             resume=resume, stop_after=stop)
        return m

    def dist(m):
        return float(sum(((a - b) ** 2).sum() for a, b in zip(m.parameters(), init.parameters())).detach())

    full = run(tmp_path / "a")
    run(tmp_path / "b", stop=5)
    resumed = run(tmp_path / "b", resume=True)
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    assert dist(run(l2sp=50.0)) < 0.5 * dist(full)                       # L2-SP holds the weights near init
    bn = [k for k in init.state_dict() if k.endswith("running_mean")]
    frozen = run(freeze_bn=True).state_dict()
    assert all(torch.equal(frozen[k], init.state_dict()[k]) for k in bn)
    assert not all(torch.equal(full.state_dict()[k], init.state_dict()[k]) for k in bn)
    # replay: with most of each batch from the original slices the net moves less towards the new labels
    x = torch.from_numpy(replay.inputs(cfg))
    nets = [run(replay_share=r) for r in (0.0, 0.75)]
    with torch.no_grad():
        shift = [float((m(x) - init(x)).abs().mean()) for m in nets]
    assert shift[1] < shift[0]


def test_finetune_section_is_checked(env):
    from sscild.config import trainer_config

    with pytest.raises(ConfigError, match="finetune: unknown key 'replay_shar'"):
        trainer_config("snet", _config(env, "typo", env["good"], finetune={"replay_shar": 0.5}), SNetConfig, "o")
    with pytest.raises(ConfigError, match="replay_share > 0 needs a replay data section"):
        trainer_config("snet", _config(env, "norep", env["good"], finetune={"replay": {}}), SNetConfig, "o")
    with pytest.raises(ConfigError, match="finetune.replay: unknown key 'phantom'"):
        trainer_config("snet", _config(env, "badrep", env["good"], finetune={"replay": {"phantom": {}}}),
                       SNetConfig, "o")
    tc = trainer_config("snet", _config(env, "ok", env["good"]), SNetConfig, "o")
    assert tc.finetune.replay_share == 0.5 and tc.train.lr == 1e-4 and tc.train.weight_decay == 0.0
