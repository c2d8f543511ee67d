"""Bad-input cases: damaged model weights, cards and checkpoints (issue 16 item 4; README.md here)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from sscild.bundle import MODELS_DIR, sha256_file
from sscild.errors import ConfigError, ModelError
from sscild.scoring.snet import SNetConfig, build_snet, load_snet, save_snet

TINY = SNetConfig(backbone="resnet10", size=32, width=0.25)


def _tiny(tmp_path) -> Path:
    torch.manual_seed(0)
    return save_snet(build_snet(TINY), TINY, tmp_path / "w" / "snet")


def _rehash(d: Path) -> None:
    """The card re-hashed to the damaged file: what a user who edits the card by hand would get."""
    card = json.loads((d / "card.json").read_text())
    card["weights"]["sha256"] = sha256_file(d / "model.safetensors")
    (d / "card.json").write_text(json.dumps(card))


def test_flipped_bytes_in_shipped_snet(tmp_path, outcome):
    """S-Net weights with 200 flipped bytes: ModelError naming the file and the sha256 mismatch"""
    d = tmp_path / "snet"
    shutil.copytree(MODELS_DIR / "snet", d)
    raw = bytearray((d / "model.safetensors").read_bytes())
    for i in range(len(raw) // 2, len(raw) // 2 + 200):
        raw[i] ^= 0xFF
    (d / "model.safetensors").write_bytes(bytes(raw))
    with outcome.error(ModelError, match=r"model\.safetensors.*sha256"):
        load_snet(d)


def test_random_tensors_of_the_right_shape(tmp_path, outcome):
    """S-Net tensors replaced by random values of the right shapes: ModelError (sha256 mismatch)"""
    from safetensors.torch import load_file, save_file

    d = _tiny(tmp_path)
    state = {k: torch.randn_like(v.float()).to(v.dtype) for k, v in load_file(str(d / "model.safetensors")).items()}
    save_file(state, str(d / "model.safetensors"))
    with outcome.error(ModelError, match="sha256"):
        load_snet(d)


def test_truncated_safetensors(tmp_path, outcome):
    """Truncated safetensors file (card hash matching it): ModelError 'corrupt or truncated', no traceback"""
    d = _tiny(tmp_path)
    p = d / "model.safetensors"
    p.write_bytes(p.read_bytes()[:1000])
    _rehash(d)
    with outcome.error(ModelError, match="corrupt or truncated"):
        load_snet(d)


def test_weights_with_nan(tmp_path, outcome):
    """Weights holding NaN (card hash matching them): ModelError naming a non-finite tensor"""
    from safetensors.torch import load_file, save_file

    d = _tiny(tmp_path)
    state = load_file(str(d / "model.safetensors"))
    k = next(k for k, v in state.items() if v.is_floating_point())
    state[k] = state[k] * float("nan")
    save_file(state, str(d / "model.safetensors"))
    _rehash(d)
    with outcome.error(ModelError, match="non-finite"):
        load_snet(d)


def test_card_not_json(tmp_path, outcome):
    """card.json that is not JSON: ModelError naming card.json"""
    d = _tiny(tmp_path)
    (d / "card.json").write_text('{"kind": "snet", "name": ')
    with outcome.error(ModelError, match=r"card\.json is not valid JSON"):
        load_snet(d)


def test_card_missing_fields(tmp_path, outcome):
    """card.json without weights hash and kind: ModelError listing what is missing"""
    d = _tiny(tmp_path)
    card = json.loads((d / "card.json").read_text())
    del card["weights"], card["kind"]
    card["schema_version"] = 2
    (d / "card.json").write_text(json.dumps(card))
    with outcome.error(ModelError, match="missing field 'kind'.*missing field 'weights'"):
        load_snet(d)


def test_wrong_tensor_shapes(tmp_path, outcome):
    """Weights of another network size than the card says: ModelError 'wrong shape'"""
    d = _tiny(tmp_path)
    card = json.loads((d / "card.json").read_text())
    card["config"]["width"] = 0.5
    (d / "card.json").write_text(json.dumps(card))
    with outcome.error(ModelError, match="wrong shape"):
        load_snet(d)


def test_card_of_another_model(tmp_path, outcome):
    """An L-Net bundle given as S-Net weights: ModelError saying which kind it is"""
    d = tmp_path / "x"
    shutil.copytree(MODELS_DIR / "lnet", d)
    with outcome.error(ModelError, match="lnet card, not a snet"):
        load_snet(d)


def test_pickled_checkpoint_is_never_loaded(tmp_path, outcome):
    """A crafted pickle checkpoint.pt beside a resumed run: never unpickled, training starts from step 0"""
    import pickle

    import numpy as np

    from sscild.config import TrainSettings
    from sscild.engine import fit

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(pickle.dumps({"model": Evil(), "step": 5}))
    m = torch.nn.Linear(2, 1)
    res = fit(m, lambda mod, step, rng: mod(torch.from_numpy(rng.normal(size=(4, 2)).astype(np.float32))).pow(2)
              .mean(), TrainSettings(steps=3, batch_size=4, lr=0.01), out=out, resume=True)
    assert not marker.exists() and res.start_step == 0 and res.step == 3
    outcome.correct("checkpoint.pt ignored; resume reads only safetensors + JSON")


def test_damaged_resume_checkpoint(tmp_path, outcome):
    """checkpoint.json of a resumed run that is not JSON: ModelError saying which files to delete"""
    import numpy as np

    from sscild.config import TrainSettings
    from sscild.engine import fit

    def step_fn(mod, step, rng):
        return mod(torch.from_numpy(rng.normal(size=(4, 2)).astype(np.float32))).pow(2).mean()

    s = TrainSettings(steps=4, batch_size=4, lr=0.01, checkpoint_every=2)
    fit(torch.nn.Linear(2, 1), step_fn, s, out=tmp_path, stop_after=2)
    (tmp_path / "checkpoint.json").write_text("{not json")
    with outcome.error(ModelError, match="delete"):
        fit(torch.nn.Linear(2, 1), step_fn, s, out=tmp_path, resume=True)


def test_cli_calibration_of_corrupted_weights(tmp_path, outcome):
    """sscild train scoring-calibration on weights with flipped bytes: exit 2, ModelError naming the sha256"""
    d = _tiny(tmp_path)
    raw = bytearray((d / "model.safetensors").read_bytes())
    raw[-10:] = b"\x00" * 10
    (d / "model.safetensors").write_bytes(bytes(raw))
    out = outcome.cli(["train", "scoring-calibration", "--weights", str(d)], exit_code=2, match="sha256")
    assert "calibration TOT" not in out


def test_config_typo(tmp_path, outcome):
    """Training config with a misspelled key (stpes): ConfigError listing the known keys"""
    from sscild.scoring.snet import train_from_config

    p = tmp_path / "c.yaml"
    p.write_text("data: {phantoms: {n: 1, seed0: 1}}\ntrain: {stpes: 5}\n")
    with outcome.error(ConfigError, match="known keys"):
        train_from_config(p, quiet=True)


def test_analyze_with_corrupted_weights_stops(tmp_path, outcome):
    """sscild analyze --weights W where W/snet has flipped bytes: exit 2 naming the file, no output folder, no scores"""
    from sscild.phantom import make_phantom, write_phantom

    scan, truth = make_phantom(3, extent=10, shape=(40, 64, 64), spacing=(5.0, 5.0, 5.0))
    files = write_phantom(scan, truth, tmp_path / "ph", fmt="nifti")
    w = tmp_path / "w"
    shutil.copytree(MODELS_DIR / "snet", w / "snet")
    raw = bytearray((w / "snet" / "model.safetensors").read_bytes())
    for i in range(len(raw) // 2, len(raw) // 2 + 200):
        raw[i] ^= 0xFF
    (w / "snet" / "model.safetensors").write_bytes(bytes(raw))
    out = tmp_path / "out"
    outcome.cli(["analyze", "-i", str(files["scan"]), "-o", str(out), "--weights", str(w), "--quiet"], 2,
                match=r"model\.safetensors")
    assert not (out / "scores.json").exists() and not (out / "analysis.json").exists()
