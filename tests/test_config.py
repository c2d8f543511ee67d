"""Strict training configs: YAML errors and unknown keys are ConfigErrors listing the known keys; one place for
defaults; relative paths from the config file; extends."""
from __future__ import annotations

from pathlib import Path

import pytest

from sscild.config import TRAIN_DEFAULTS, load_config, trainer_config
from sscild.errors import ConfigError
from sscild.lesions import UNetConfig
from sscild.scoring.lnet import LNetConfig
from sscild.scoring.snet import SNetConfig

REPO = Path(__file__).resolve().parents[1]


def _write(p: Path, text: str) -> Path:
    p.write_text(text)
    return p


def test_unknown_keys_anywhere_list_the_known_ones(tmp_path):
    """a typo in train:, config:, a data entry or the top level is refused with the keys that exist."""
    cases = {"train: {stpes: 5}": "'stpes'.*known keys: .*steps",
             "config: {bakbone: resnet18}": "'bakbone'.*backbone",
             "data: {phantoms: {n: 2, seed0: 1, sise: small}}": "'sise'.*size",
             "vaildation: {}": "'vaildation'.*validation"}
    for text, match in cases.items():
        with pytest.raises(ConfigError, match=match):
            trainer_config("snet", _write(tmp_path / "c.yaml", text), SNetConfig, "out")


def test_yaml_errors_and_bad_values_are_config_errors(tmp_path):
    """broken YAML, a list instead of a mapping, a wrong type and a missing file: ConfigError naming the problem."""
    with pytest.raises(ConfigError, match="not valid YAML"):
        trainer_config("lnet", _write(tmp_path / "a.yaml", "train: {steps: [1, 2\n"), LNetConfig, "out")
    with pytest.raises(ConfigError, match="mapping"):
        trainer_config("lnet", _write(tmp_path / "b.yaml", "- 1\n- 2\n"), LNetConfig, "out")
    with pytest.raises(ConfigError, match="steps"):
        trainer_config("lnet", _write(tmp_path / "c.yaml", "train: {steps: 0}"), LNetConfig, "out")
    with pytest.raises(ConfigError, match="head"):
        trainer_config("lnet", _write(tmp_path / "d.yaml", "config: {head: sideways}"), LNetConfig, "out")
    with pytest.raises(ConfigError, match="does not exist"):
        trainer_config("lnet", tmp_path / "none.yaml", LNetConfig, "out")


def test_defaults_come_from_one_table(tmp_path):
    """an empty train: section gives each trainer its TRAIN_DEFAULTS."""
    for kind, cls in (("snet", SNetConfig), ("lnet", LNetConfig), ("lesions", UNetConfig)):
        tc = trainer_config(kind, _write(tmp_path / f"{kind}.yaml", "description: x"), cls, "out")
        for k, v in TRAIN_DEFAULTS[kind].items():
            assert getattr(tc.train, k) == v, (kind, k)


def test_relative_paths_are_taken_from_the_config_file_and_extends_merges(tmp_path):
    """paths in the base and in the variant resolve against their own file; the variant changes only what it says."""
    (tmp_path / "base").mkdir()
    (tmp_path / "var").mkdir()
    _write(tmp_path / "base" / "b.yaml", "out: models/x\nconfig: {size: 64, width: 0.25}\n"
                                         "data: {dataset_csv: cohort.csv, phantoms: {n: 2, seed0: 1}}\n"
                                         "train: {steps: 100, lr: 0.001}\n")
    v = _write(tmp_path / "var" / "v.yaml", "extends: ../base/b.yaml\ntrain: {steps: 200}\nconfig: {size: 32}\n")
    tc = trainer_config("snet", v, SNetConfig, "out")
    assert tc.out == (tmp_path / "base" / "models" / "x").resolve()
    assert Path(tc.data["dataset_csv"]) == (tmp_path / "base" / "cohort.csv").resolve()
    assert tc.train.steps == 200 and tc.train.lr == 0.001                 # merged key by key
    assert tc.network.size == 32 and tc.network.width == 0.25
    _write(tmp_path / "base" / "b.yaml", "extends: ../var/v.yaml\n")
    with pytest.raises(ConfigError, match="loop"):
        load_config(v)


@pytest.mark.parametrize("name,kind,cls", [("snet_phantoms.yaml", "snet", SNetConfig),
                                           ("lnet_phantoms.yaml", "lnet", LNetConfig),
                                           ("lesions_phantoms.yaml", "lesions", UNetConfig),
                                           ("lesions_phantoms_phase2.yaml", "lesions", UNetConfig),
                                           ("lesions_real.yaml", "lesions", UNetConfig)])
def test_shipped_configs_are_valid_and_point_at_the_shipped_models(name, kind, cls):
    """the configs in configs/ pass the strict reader; their out is the shipped model folder (L-Net's phantom config:
    the phantom-only weights that the shipped L-Net is fine-tuned from, bench/models/lnet_phantoms)."""
    tc = trainer_config(kind, REPO / "configs" / name, cls, "out")
    shipped = REPO / "bench" / "models" / "lnet_phantoms" if name == "lnet_phantoms.yaml" else \
        REPO / "src" / "sscild" / "models" / kind
    assert tc.out.resolve() == shipped.resolve()


def test_init_given_to_the_trainer_replaces_the_configs_and_reaches_the_lesion_trainer(tmp_path):
    """``--init`` (trainer_config's ``init``) wins over the config's ``init:``; the lesion trainer loads it before
    building any data, so weights of another kind fail at once with a message naming them."""
    from typer.testing import CliRunner

    from sscild.cli import app

    c = _write(tmp_path / "c.yaml", f"extends: {REPO / 'configs' / 'lesions_real.yaml'}\nout: {tmp_path / 'o'}\n")
    assert trainer_config("lesions", c, UNetConfig, "out").init.name == "lesions"      # the config's own
    assert trainer_config("lesions", c, UNetConfig, "out", init=tmp_path / "mine").init == tmp_path / "mine"
    snet = REPO / "src" / "sscild" / "models" / "snet"
    r = CliRunner().invoke(app, ["train", "lesions", "--config", str(c), "--init", str(snet), "--quiet"])
    assert r.exit_code != 0 and "is a snet card, not a lesions" in str(r.exception), r.output
    assert not (tmp_path / "o").exists()
