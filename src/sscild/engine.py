"""One training engine for every network of sscild (S-Net, L-Net, the lesion U-Net, the deep outcome model).

:func:`fit` runs the optimisation; the model-specific part is a ``step_fn(model, step, rng) -> loss`` that draws a
batch with ``rng`` (a numpy Generator owned by the engine) and returns the scalar loss. The engine owns:

- the optimizer (Adam or AdamW) and one schedule: linear warm-up over ``warmup_steps``, then a cosine decay from
  ``lr`` to ``final_lr_fraction * lr`` at ``steps`` (:func:`lr_at`);
- one log format: ``metrics.jsonl``, a line ``{"step", "loss", "lr", "elapsed_s", ...}`` every ``log_every`` steps
  (loss = mean over those steps);
- checkpoints without pickle: ``checkpoint.safetensors`` (weights), ``checkpoint.optimizer.safetensors``
  (optimizer tensors and the torch RNG state) and ``checkpoint.json`` (step, optimizer settings, the numpy RNG
  state); ``resume=True`` continues from them and gives the same weights as an uninterrupted run.

Examples
--------
>>> import numpy as np, torch
>>> from sscild.config import TrainSettings
>>> m = torch.nn.Linear(1, 1)
>>> def step_fn(model, step, rng):
...     x = torch.from_numpy(rng.normal(size=(8, 1)).astype(np.float32))
...     return ((model(x) - 2 * x) ** 2).mean()
>>> res = fit(m, step_fn, TrainSettings(steps=300, batch_size=8, lr=0.05, weight_decay=0.0))
>>> round(float(m.weight), 1)
2.0
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .config import TrainSettings
from .errors import ModelError

CHECKPOINT, OPTIMIZER, STATE, LOG = ("checkpoint.safetensors", "checkpoint.optimizer.safetensors", "checkpoint.json",
                                     "metrics.jsonl")


def lr_at(step: int, s: TrainSettings) -> float:
    """Learning rate of step ``step`` (0-based): linear warm-up, then cosine decay to ``final_lr_fraction * lr``.

    >>> s = TrainSettings(steps=200, lr=1.0, warmup_steps=100)
    >>> lr_at(0, s), lr_at(99, s), round(lr_at(199, s), 3)
    (0.01, 1.0, 0.05)
    """
    if step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    w = s.warmup_steps
    t = min(1.0, (step - w) / max(1, s.steps - w)) if w else min(step, s.steps) / max(s.steps, 1)
    f = s.final_lr_fraction
    return s.lr * (f + (1 - f) * 0.5 * (1 + math.cos(math.pi * t)))


@dataclass
class FitResult:
    """What :func:`fit` did: per-step losses of this call, steps done in total, time and throughput."""

    model: Any
    losses: list[float] = field(default_factory=list)
    step: int = 0
    start_step: int = 0
    seconds: float = 0.0
    items_per_s: float = 0.0
    mean_predictor_loss: float = float("nan")     # the loss of always answering the mean: the baseline

    @property
    def slices_per_s(self) -> float:
        return self.items_per_s


TrainLog = FitResult      # what the trainers return beside the model


def _optimizer(model, s: TrainSettings):
    import torch

    cls = torch.optim.AdamW if s.optimizer == "adamw" else torch.optim.Adam
    return cls(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)


# --------------------------------------------------------------------------------------------
# checkpoints (safetensors + JSON: nothing is unpickled)
# --------------------------------------------------------------------------------------------
def save_checkpoint(out: Path, model, opt, step: int, rng: np.random.Generator) -> None:
    """Weights, optimizer state, RNG states and the step, atomically, without pickle."""
    import torch
    from safetensors.torch import save_file

    from .util import atomic_path, write_json

    sd = opt.state_dict()
    tensors = {"torch_rng": torch.get_rng_state()}
    scalars: dict[str, Any] = {}
    for i, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"state.{i}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{i}.{k}"] = v
    with atomic_path(out / CHECKPOINT) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    with atomic_path(out / OPTIMIZER) as tmp:
        save_file(tensors, str(tmp))
    write_json(out / STATE, {"step": int(step), "param_groups": sd["param_groups"], "scalar_state": scalars,
                             "numpy_rng": rng.bit_generator.state})


def load_checkpoint(out: Path, model, opt) -> tuple[int, np.random.Generator]:
    """Restore what :func:`save_checkpoint` wrote into ``model`` and ``opt``; returns ``(step, rng)``."""
    import torch
    from safetensors.torch import load_file

    from .bundle import load_into

    try:
        st = json.loads((out / STATE).read_text())
        tensors = load_file(str(out / OPTIMIZER))
        weights = load_file(str(out / CHECKPOINT))
    except Exception as err:     # JSON, safetensors or OS errors: a damaged checkpoint
        raise ModelError(f"the checkpoint in {out} cannot be read ({type(err).__name__}: {err}); delete "
                         f"{CHECKPOINT}, {OPTIMIZER} and {STATE} to start again") from None
    load_into(model, weights, out / CHECKPOINT, "checkpoint")
    state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("state."):
            _, i, name = k.split(".", 2)
            state.setdefault(int(i), {})[name] = v
    for k, v in st["scalar_state"].items():
        i, name = k.split(".", 1)
        state.setdefault(int(i), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": st["param_groups"]})
    torch.set_rng_state(tensors["torch_rng"])
    rng = np.random.default_rng()
    rng.bit_generator.state = st["numpy_rng"]
    return int(st["step"]), rng


def has_checkpoint(out: str | Path | None) -> bool:
    return out is not None and all((Path(out) / f).is_file() for f in (CHECKPOINT, OPTIMIZER, STATE))


def _trim_log(path: Path, step: int) -> None:
    """Keep the log lines up to ``step`` (a resumed run rewrites what came after its checkpoint)."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
    path.write_text("".join(ln + "\n" for ln in keep))


# --------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------
def fit(model, step_fn: Callable[[Any, int, np.random.Generator], Any], settings: TrainSettings, *,
        out: str | Path | None = None, resume: bool = False, device: str = "cpu", quiet: bool = True,
        desc: str = "train", stop_after: int | None = None, log_extra: Callable[[], dict] | None = None,
        log_name: str = LOG) -> FitResult:
    """Train ``model`` for ``settings.steps`` steps of ``step_fn``; returns a :class:`FitResult` (model in eval mode).

    ``out``: folder of the checkpoints and ``metrics.jsonl`` (None: neither is written). ``resume``: continue from
    the checkpoint in ``out`` when there is one (weights, optimizer, RNG states, step). ``stop_after``: stop once
    this many steps are done in total (the schedule still spans ``settings.steps``), leaving a checkpoint.
    ``log_extra()`` adds fields to each log line.
    """
    import torch

    from .util import progress

    s = settings
    out = Path(out) if out is not None else None
    model = model.to(device).train()
    opt = _optimizer(model, s)
    torch.manual_seed(s.seed)
    rng, start = np.random.default_rng(s.seed), 0
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        if resume and has_checkpoint(out):
            start, rng = load_checkpoint(out, model, opt)
            _trim_log(out / log_name, start)
        elif (out / log_name).exists():
            (out / log_name).unlink()             # a fresh run starts a fresh log
    end = min(s.steps, stop_after) if stop_after is not None else s.steps
    res = FitResult(model, start_step=start, step=start)
    t0 = time.perf_counter()
    for step in progress(range(start, end), desc, total=max(0, end - start), quiet=quiet):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, s)
        model.train()
        loss = step_fn(model, step, rng)
        opt.zero_grad()
        loss.backward()
        opt.step()
        res.losses.append(float(loss.detach()))
        res.step = done = step + 1
        if out is not None and s.log_every and done % s.log_every == 0:
            _log(out / log_name, done, res.losses[-s.log_every:], lr_at(step, s), t0, log_extra)
        if out is not None and ((s.checkpoint_every and done % s.checkpoint_every == 0) or done == end):
            save_checkpoint(out, model, opt, done, rng)
    res.seconds = time.perf_counter() - t0
    res.items_per_s = len(res.losses) * s.batch_size / max(res.seconds, 1e-9)
    res.model = model.eval()
    return res


def _log(path: Path, step: int, losses: list[float], lr: float, t0: float, extra) -> None:
    line = {"step": step, "loss": float(np.mean(losses)), "lr": lr, "elapsed_s": round(time.perf_counter() - t0, 1),
            **(extra() if extra else {})}
    with open(path, "a") as fh:
        fh.write(json.dumps(line) + "\n")
