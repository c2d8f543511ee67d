"""The one training engine: schedule, log format, and resume that equals an uninterrupted run."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sscild.config import TrainSettings
from sscild.engine import fit, has_checkpoint, lr_at

SETTINGS = TrainSettings(steps=30, batch_size=8, lr=0.01, warmup_steps=5, checkpoint_every=7, log_every=5,
                         weight_decay=1e-4, seed=3)


def tiny_model(seed: int):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(),
                               torch.nn.Dropout(0.2), torch.nn.Linear(16, 1))


def step_fn(model, step, rng):
    """Data from the engine's numpy RNG, dropout from torch's RNG: resume must restore both."""
    x = torch.from_numpy(rng.normal(size=(8, 4)).astype(np.float32))
    y = x.sum(1, keepdim=True) ** 2
    return ((model(x) - y) ** 2).mean()


def weights(model):
    return torch.cat([v.float().flatten() for v in model.state_dict().values()])


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    """resume after 12 of 30 steps: same weights as 30 steps in one go (to 1e-6), and a log without gaps."""
    ref = fit(tiny_model(0), step_fn, SETTINGS, out=tmp_path / "a").model
    part = fit(tiny_model(0), step_fn, SETTINGS, out=tmp_path / "b", stop_after=12)
    assert part.step == 12 and has_checkpoint(tmp_path / "b")
    # a fresh process would build the network anew with other random weights: the checkpoint must restore them
    res = fit(tiny_model(99), step_fn, SETTINGS, out=tmp_path / "b", resume=True)
    assert res.start_step == 12 and res.step == 30 and len(res.losses) == 18
    assert torch.allclose(weights(res.model), weights(ref), atol=1e-6)
    log = [json.loads(ln) for ln in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [d["step"] for d in log] == [5, 10, 15, 20, 25, 30]
    assert set(log[0]) >= {"step", "loss", "lr", "elapsed_s"}


def test_resume_that_forgets_the_optimizer_or_rng_is_detected(tmp_path):
    """the comparison above fails when the run restarts from step 0 or from fresh optimizer state."""
    ref = fit(tiny_model(0), step_fn, SETTINGS, out=tmp_path / "a").model
    fit(tiny_model(0), step_fn, SETTINGS, out=tmp_path / "b", stop_after=12)
    restarted = fit(tiny_model(0), step_fn, SETTINGS, out=tmp_path / "b", resume=False).model   # step 0 again
    assert torch.allclose(weights(restarted), weights(ref), atol=1e-6)        # a fresh run is reproducible ...
    fit(tiny_model(0), step_fn, SETTINGS, out=tmp_path / "c", stop_after=12)
    (tmp_path / "c" / "checkpoint.optimizer.safetensors").unlink()           # ... a partial checkpoint is not used
    wrong = fit(tiny_model(0), step_fn, SETTINGS, out=tmp_path / "c", resume=True)
    assert wrong.start_step == 0


def test_schedule_warmup_and_cosine():
    """warm-up is linear to lr, then the cosine ends at final_lr_fraction * lr."""
    s = TrainSettings(steps=100, lr=2.0, warmup_steps=10, final_lr_fraction=0.1)
    assert lr_at(0, s) == pytest.approx(0.2) and lr_at(9, s) == pytest.approx(2.0)
    assert lr_at(55, s) == pytest.approx(0.2 + 1.8 * 0.5, rel=1e-6)
    assert lr_at(100, s) == pytest.approx(0.2)


def test_damaged_checkpoint_is_a_model_error(tmp_path):
    """a truncated checkpoint: ModelError telling what to delete, never a traceback of safetensors."""
    from sscild.errors import ModelError

    fit(tiny_model(0), step_fn, SETTINGS, out=tmp_path, stop_after=7)
    p = tmp_path / "checkpoint.safetensors"
    p.write_bytes(p.read_bytes()[:50])
    with pytest.raises(ModelError, match="delete"):
        fit(tiny_model(0), step_fn, SETTINGS, out=tmp_path, resume=True)
