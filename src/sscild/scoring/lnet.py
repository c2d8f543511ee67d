"""L-Net: a 3D regression network that places the five Goh levels, sized for a CPU.

After Jia et al. (Sci Rep 2024): a VGG-style 3D network regresses the slice positions of the five levels from
a downsampled scan; training uses random z crops that always contain the five levels, and inference slides
windows along z and takes the median of each level's predictions.

Defaults sized for a 2-core CPU: the scan is area-averaged to ``in_plane`` x ``in_plane`` pixels over the
whole field of view and resampled to ``z_mm`` mm per slice; windows are ``window`` slices long
(default 64 x 4 mm = 256 mm, enough for the span L1..L5 of adult thoraces). HU are clipped to -1500..1500 and
scaled to [-1, 1], as in the paper.

The network's input is one window ``(1, window, in_plane, in_plane)``; its output is five numbers, the level
positions in window units (0 = first slice of the window, 1 = last). :func:`predict_levels` turns them into
world z (mm, LPS) like the anatomical method.

Two heads (``LNetConfig.head``): ``"zmap"`` (default) keeps a coarse z axis through the encoder (only the first
``z_pools`` blocks pool along z), scores every z bin for every level with a small 1D convolution and returns the
soft-argmax (expected position) of each level's map (integral regression, Sun et al. ECCV 2018). The answer then
moves with the anatomy inside the window instead of having to be read from a global feature vector. ``"dense"``
is the original global-pooling regressor, kept so that older weights still load.
"""
from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..errors import ConfigError
from ..scan import CTScan

LEVELS = ("L1", "L2", "L3", "L4", "L5")
DEFAULT_DIR = Path(__file__).resolve().parents[1] / "models" / "lnet"


@dataclass(frozen=True)
class LNetConfig:
    """Geometry and size of an L-Net; stored in its model card so weights and preprocessing match."""

    in_plane: int = 64
    z_mm: float = 4.0
    window: int = 64
    channels: tuple[int, ...] = (16, 32, 64, 96, 128)
    hu_min: float = -1500.0
    hu_max: float = 1500.0
    head: str = "zmap"   # "zmap": per-z-bin level maps + soft-argmax; "dense": global pooling + linear (legacy)
    z_pools: int = 2     # zmap head: how many encoder blocks also halve z (bins of 2**z_pools slices)

    def __post_init__(self):
        if self.head not in ("zmap", "dense"):
            raise ConfigError(f"L-Net head must be 'zmap' or 'dense', got {self.head!r}")
        if self.head == "zmap" and not 0 <= self.z_pools <= len(self.channels):
            raise ConfigError(f"L-Net z_pools must be 0..{len(self.channels)} (one per block), got {self.z_pools}")


# --------------------------------------------------------------------------------------------
# preprocessing
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Prepared:
    """A scan resampled for L-Net: ``volume`` (Z, in_plane, in_plane) in [-1, 1], and the world z of each slice."""

    volume: np.ndarray
    z_world: np.ndarray  # (Z,), increasing


def prepare(scan: CTScan, cfg: LNetConfig = LNetConfig()) -> Prepared:
    """Area-average the scan to L-Net's grid (whole field of view in-plane, ``cfg.z_mm`` along z)."""
    import torch
    import torch.nn.functional as F

    nz = scan.shape[0]
    z0, z1 = scan.z_mm(0), scan.z_mm(nz - 1)
    length = abs(z1 - z0) + abs(scan.spacing[0])
    out_z = max(2, int(round(length / cfg.z_mm)))
    vol = torch.from_numpy(np.clip(scan.hu, cfg.hu_min, cfg.hu_max).astype(np.float32))
    vol = (vol - (cfg.hu_max + cfg.hu_min) / 2) / ((cfg.hu_max - cfg.hu_min) / 2)
    with torch.inference_mode():
        small = F.adaptive_avg_pool2d(vol, (cfg.in_plane, cfg.in_plane))  # (nz, p, p)
        flat = small.reshape(nz, -1).T[None]  # (1, p*p, nz)
        flat = F.interpolate(flat, size=out_z, mode="linear", align_corners=True)[0]
        small = flat.T.reshape(out_z, cfg.in_plane, cfg.in_plane).contiguous().numpy()
    # slice centres of the output grid, spanning the input's first..last slice centres
    z_world = np.linspace(z0, z1, out_z)
    if z_world[0] > z_world[-1]:  # not expected for LPS scans, kept for safety
        small, z_world = small[::-1].copy(), z_world[::-1].copy()
    return Prepared(small.astype(np.float32), z_world)


def _z_to_index(prep: Prepared, z: float) -> float:
    return float(np.interp(z, prep.z_world, np.arange(len(prep.z_world))))


def _index_to_z(prep: Prepared, idx: float) -> float:
    n = len(prep.z_world)
    step = (prep.z_world[-1] - prep.z_world[0]) / max(n - 1, 1)
    return float(prep.z_world[0] + idx * step)


def _air(cfg: LNetConfig) -> float:
    """-1000 HU in L-Net's scaled units."""
    return (-1000.0 - (cfg.hu_max + cfg.hu_min) / 2) / ((cfg.hu_max - cfg.hu_min) / 2)


def _window(volume: np.ndarray, start: int, length: int, pad: float) -> np.ndarray:
    """Slices ``start .. start+length`` of ``volume``, padded with ``pad`` (air) beyond its ends."""
    z = volume.shape[0]
    out = np.full((length,) + volume.shape[1:], pad, np.float32)
    a, b = max(start, 0), min(start + length, z)
    if b > a:
        out[a - start:b - start] = volume[a:b]
    return out


# --------------------------------------------------------------------------------------------
# network
# --------------------------------------------------------------------------------------------
def build_lnet(cfg: LNetConfig = LNetConfig()):
    """A VGG-style 3D network of MONAI convolution blocks, (conv-BN-ReLU, max-pool) x n, then the head of ``cfg.head``."""
    import torch.nn as nn
    from monai.networks.blocks import Convolution

    layers: list = []
    cin = 1
    for i, c in enumerate(cfg.channels):
        layers.append(Convolution(3, cin, c, kernel_size=3, act="RELU", norm="BATCH"))
        if i >= 2:
            layers.append(Convolution(3, c, c, kernel_size=3, act="RELU", norm="BATCH"))
        if cfg.head == "dense":
            layers.append(nn.MaxPool3d(2))
        else:  # keep a coarse z axis: only the first z_pools blocks halve z, all halve the plane
            layers.append(nn.MaxPool3d((2 if i < cfg.z_pools else 1, 2, 2)))
        cin = c
    if cfg.head == "zmap":
        return nn.Sequential(*layers, _zmap_head_class()(cin, len(LEVELS), cfg.window))
    # meant to keep two z bins; after five 2x pools a 48-slice window has z = 1 here and the two bins are copies
    head = nn.Sequential(
        nn.AdaptiveAvgPool3d((2, 1, 1)),
        nn.Flatten(),
        nn.Linear(cin * 2, 128),
        nn.ReLU(inplace=True),
        nn.Dropout(0.1),
        nn.Linear(128, len(LEVELS)),
    )
    return nn.Sequential(*layers, head)


@functools.lru_cache(maxsize=None)
def _zmap_head_class():
    """The head's module class, defined on first use (this module does not import torch at import time)."""
    import torch
    import torch.nn as nn

    class ZMapHead(nn.Module):
        """Features (B, C, Zb, Y, X) -> per-bin logits (B, 5, Zb) -> soft-argmax positions in window units (B, 5)."""

        def __init__(self, cin: int, n_levels: int, window: int, hidden: int = 64):
            super().__init__()
            self.window = window
            self.score = nn.Sequential(nn.Conv1d(cin, hidden, 3, padding=1), nn.ReLU(inplace=True),
                                       nn.Conv1d(hidden, n_levels, 1))

        def forward(self, f):
            logits = self.score(f.mean(dim=(3, 4)))          # (B, L, Zb)
            zb = logits.shape[-1]
            # bin b covers slices b*W/Zb .. (b+1)*W/Zb; its centre in window units (0 = first slice, 1 = last)
            centres = ((torch.arange(zb, device=f.device, dtype=f.dtype) + 0.5) * self.window / zb - 0.5)
            centres = centres / (self.window - 1)
            return (logits.softmax(-1) * centres).sum(-1)

    return ZMapHead




# --------------------------------------------------------------------------------------------
# data for training
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LevelCase:
    """One training/evaluation case: the prepared volume and its five level positions (slice index units)."""

    case_id: str
    group: str  # patient id for grouped splits
    prep: Prepared
    positions: np.ndarray  # (5,) float, index units in prep.volume

    @staticmethod
    def from_scan(case_id: str, scan: CTScan, levels_z: dict[str, float], cfg: LNetConfig = LNetConfig(),
                  group: str | None = None) -> "LevelCase":
        missing = [n for n in LEVELS if levels_z.get(n) is None]
        if missing:
            raise ConfigError(f"case {case_id}: levels {missing} have no z; L-Net training needs all five")
        prep = prepare(scan, cfg)
        pos = np.array([_z_to_index(prep, float(levels_z[n])) for n in LEVELS])
        return LevelCase(case_id, group or case_id, prep, pos)


def _sample_window(case: LevelCase, cfg: LNetConfig, rng: np.random.Generator,
                   margin: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """A random window containing the five levels, and their positions in window units (0..1)."""
    lo, hi = float(case.positions.min()), float(case.positions.max())
    s_min = int(np.floor(hi)) + margin - cfg.window + 1
    s_max = int(np.ceil(lo)) - margin
    if s_max < s_min:  # levels span more than the window: centre it
        s_min = s_max = int(round((lo + hi) / 2 - cfg.window / 2))
    start = int(rng.integers(s_min, s_max + 1))
    x = _window(case.prep.volume, start, cfg.window, _air(cfg))
    # light augmentation: intensity jitter and small in-plane shifts
    x = x * rng.uniform(0.95, 1.05) + rng.normal(0, 0.01)
    sy, sx = rng.integers(-3, 4, 2)
    x = np.roll(x, (int(sy), int(sx)), axis=(1, 2))
    y = (case.positions - start) / (cfg.window - 1)
    return x.astype(np.float32), y.astype(np.float32)


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------
@dataclass
class TrainLog:
    """Per-step training loss and, at the end, the loss of predicting the training mean (median for L1): the baseline."""

    losses: list[float] = field(default_factory=list)
    mean_predictor_loss: float = float("nan")


def train_lnet(cases: Sequence[LevelCase], *, cfg: LNetConfig = LNetConfig(), steps: int = 500,
               batch_size: int = 4, lr: float = 1e-3, weight_decay: float = 1e-4, seed: int = 0,
               device: str = "cpu", model=None, quiet: bool = False, log: TrainLog | None = None,
               loss: str = "mse", start_step: int = 0, optimizer_state: dict | None = None,
               checkpoint_every: int = 0, on_checkpoint=None):
    """Train (or continue training) an L-Net on ``cases``, loss ``"mse"`` or ``"l1"`` on window-unit positions.

    Adam with one cosine learning-rate decay (``lr`` to ``lr / 20``) over ``steps``. To resume, give the model,
    ``start_step`` (steps already done) and the saved ``optimizer_state``: the schedule goes on where it stopped.
    ``on_checkpoint(model, optimizer, step, log)`` is called every ``checkpoint_every`` steps and at the end.

    Returns the model (in eval mode) and the :class:`TrainLog`.
    """
    import math

    import torch

    from ..util import progress

    if not cases:
        raise ConfigError("L-Net training got no cases")
    if loss not in ("mse", "l1"):
        raise ConfigError(f"L-Net loss must be 'mse' or 'l1', got {loss!r}")
    rng = np.random.default_rng(seed + start_step)
    torch.manual_seed(seed + start_step)
    model = model if model is not None else build_lnet(cfg)
    model = model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    if optimizer_state is not None:
        opt.load_state_dict(optimizer_state)

    def lr_at(step: int) -> float:
        return lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(step, steps) / max(steps, 1))))

    lossf = torch.nn.MSELoss() if loss == "mse" else torch.nn.L1Loss()
    log = log or TrainLog()
    targets = []

    def baseline() -> float:
        t = np.concatenate(targets)
        return (float(((t - t.mean(0)) ** 2).mean()) if loss == "mse"
                else float(np.abs(t - np.median(t, 0)).mean()))

    for step in progress(range(start_step, steps), "train L-Net", quiet=quiet):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        batch = [_sample_window(cases[int(rng.integers(len(cases)))], cfg, rng) for _ in range(batch_size)]
        x = torch.from_numpy(np.stack([b[0] for b in batch]))[:, None].to(device)
        y = torch.from_numpy(np.stack([b[1] for b in batch])).to(device)
        targets.append(y.cpu().numpy())
        value = lossf(model(x), y)
        opt.zero_grad()
        value.backward()
        opt.step()
        log.losses.append(float(value.detach()))
        done = step + 1
        if on_checkpoint is not None and ((checkpoint_every and done % checkpoint_every == 0) or done == steps):
            log.mean_predictor_loss = baseline()
            on_checkpoint(model, opt, done, log)
            model.train()
    if targets:
        log.mean_predictor_loss = baseline()
    return model.eval(), log


# --------------------------------------------------------------------------------------------
# inference
# --------------------------------------------------------------------------------------------
def predict_positions(model, prep: Prepared, cfg: LNetConfig = LNetConfig(), stride: int | None = None,
                      device: str = "cpu", batch_size: int = 8, margin: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Sliding-window median of the level positions (index units of ``prep.volume``) and their spread (IQR).

    Windows start every ``stride`` slices (default ``window // 12``). Training windows always hold all five
    levels at least ``margin`` slices from their ends, so the median is taken over the windows whose five
    predictions all lie there; when no window qualifies, over the windows in which that level fell inside
    the window; failing that, over all windows.
    """
    import torch

    stride = stride or max(1, cfg.window // 12)
    z = prep.volume.shape[0]
    if z <= cfg.window:
        starts = [int(round((z - cfg.window) / 2))]
    else:
        starts = list(range(0, z - cfg.window + 1, stride))
        if starts[-1] != z - cfg.window:
            starts.append(z - cfg.window)
    preds = []
    model = model.to(device).eval()
    with torch.inference_mode():
        for b0 in range(0, len(starts), batch_size):
            ss = starts[b0:b0 + batch_size]
            x = torch.from_numpy(np.stack([_window(prep.volume, s, cfg.window, _air(cfg)) for s in ss]))[:, None].to(device)
            out = model(x).cpu().numpy() * (cfg.window - 1)
            preds.extend(out + np.array(ss)[:, None])
    preds = np.asarray(preds)  # (n_windows, 5)
    st = np.asarray(starts)[:, None]
    complete = ((preds >= st + margin) & (preds <= st + cfg.window - 1 - margin)).all(axis=1)
    med = np.empty(len(LEVELS))
    iqr = np.empty(len(LEVELS))
    for j in range(len(LEVELS)):
        p = preds[:, j]
        inside = (p >= st[:, 0] + 1) & (p <= st[:, 0] + cfg.window - 2)
        use = p[complete] if complete.any() else p[inside] if inside.any() else p
        med[j] = float(np.median(use))
        q75, q25 = np.percentile(use, [75, 25])
        iqr[j] = float(q75 - q25)
    return med, iqr


def predict_levels(model, scan: CTScan, cfg: LNetConfig = LNetConfig(), device: str = "cpu") -> dict:
    """Five level positions by L-Net, as world z (mm, LPS) and slice index as read, with a confidence.

    Returns ``{"L1": {"z_mm", "slice_index", "confidence", "note"}, ...}``. A level predicted outside the
    scan is reported with ``z_mm`` and ``slice_index`` None. Confidence falls with the spread (IQR) of the
    window predictions: 1 / (1 + IQR_mm / 10).
    """
    prep = prepare(scan, cfg)
    med, iqr = predict_positions(model, prep, cfg, device=device)
    out = {}
    for j, name in enumerate(LEVELS):
        z = _index_to_z(prep, med[j])
        k = scan.slice_at_z(z)
        iqr_mm = iqr[j] * cfg.z_mm
        entry = {"z_mm": float(z) if k is not None else None,
                 "slice_index": scan.input_slice_index(k) if k is not None else None,
                 "confidence": float(1.0 / (1.0 + iqr_mm / 10.0)),
                 "note": f"L-Net sliding-window median; window spread (IQR) {iqr_mm:.1f} mm"}
        if k is None:
            entry["note"] = f"L-Net places {name} at z = {z:.1f} mm, outside the scan"
        out[name] = entry
    return out


# --------------------------------------------------------------------------------------------
# weights on disk
# --------------------------------------------------------------------------------------------
def save_lnet(model, cfg: LNetConfig, directory: str | Path, card: dict) -> Path:
    """Write ``model.safetensors`` and ``card.json`` (config + what it was trained on and measured)."""
    from .weights import save_weights

    return save_weights(model, directory, {"name": "L-Net", "config": asdict(cfg), **card})


def load_lnet(directory: str | Path | None = None, device: str = "cpu"):
    """Load an L-Net and its config from ``directory`` (default: the shipped weights).

    Raises ``ModelError`` when the weights or card are missing or do not fit the network.
    """
    from .weights import load_into, read_card

    directory = Path(directory) if directory is not None else DEFAULT_DIR
    card = read_card(directory, "L-Net", "sscild train levels --config ...")
    c = dict(card.get("config", {}))
    if "channels" in c:
        c["channels"] = tuple(c["channels"])
    c.setdefault("head", "dense")  # cards written before the zmap head existed describe the dense head
    cfg = LNetConfig(**c)
    model = load_into(build_lnet(cfg), directory, "L-Net")
    return model.to(device).eval(), cfg, card


def evaluate_cases(model, cases: Iterable[LevelCase], cfg: LNetConfig = LNetConfig()) -> dict[str, np.ndarray]:
    """Predicted and true world z (mm) per level for evaluation cases: {"pred": (n,5), "truth": (n,5)}."""
    pred, truth = [], []
    for c in cases:
        med, _ = predict_positions(model, c.prep, cfg)
        pred.append([_index_to_z(c.prep, m) for m in med])
        truth.append([_index_to_z(c.prep, t) for t in c.positions])
    return {"pred": np.asarray(pred), "truth": np.asarray(truth)}


# --------------------------------------------------------------------------------------------
# training from a config file (sscild train levels)
# --------------------------------------------------------------------------------------------
def cases_from_csv(path: str | Path, cfg: LNetConfig) -> list[LevelCase]:
    """Cases from a CSV with ``scan_path`` (or ``path``), ``L1``..``L5`` (world z, mm) and optional ``patient_id``.

    Relative paths are taken relative to the CSV's folder.
    """
    import pandas as pd

    from ..io import load_ct

    path = Path(path)
    df = pd.read_csv(path)
    col = "scan_path" if "scan_path" in df.columns else "path"
    missing = [c for c in (col, *LEVELS) if c not in df.columns]
    if missing:
        raise ConfigError(f"{path}: missing column(s) {missing}; found {list(df.columns)}. Expected scan_path, "
                          "L1..L5 (world z in mm), optional patient_id")
    out = []
    for i, r in df.iterrows():
        p = Path(str(r[col]))
        p = p if p.is_absolute() else path.parent / p
        scan = load_ct(p)
        out.append(LevelCase.from_scan(str(r.get("scan_id", p.name)), scan, {n: float(r[n]) for n in LEVELS}, cfg,
                                       group=str(r.get("patient_id", p.name))))
    return out


def phantom_cases(n: int, seed0: int, cfg: LNetConfig, size: str = "small", quiet: bool = True) -> list[LevelCase]:
    """Cases from synthetic phantoms (seeds seed0 .. seed0+n-1, ILD extent 0-70 %), with exact level truth."""
    from ..phantom import make_phantom
    from ..util import progress

    out = []
    for s in progress(range(seed0, seed0 + n), "phantoms", quiet=quiet):
        scan, truth = make_phantom(s, size=size, extent=float((s * 37) % 71))
        out.append(LevelCase.from_scan(f"phantom{s}", scan, truth.levels_z, cfg))
    return out


def train_from_config(config: str | Path, *, resume: bool = False, device: str = "cpu", quiet: bool = False) -> Path:
    """Train an L-Net as a YAML config says, write weights, card and a metrics log; returns the output folder.

    Config keys: ``out`` (folder), ``config`` (LNetConfig fields), ``train`` {steps, batch_size, lr, seed,
    checkpoint_every, loss}, and data: ``dataset_csv`` (see :func:`cases_from_csv`) and/or ``phantoms`` {n, seed0,
    size}; ``validation`` likewise (phantoms with other seeds, or a CSV). With ``resume`` training continues
    from ``out/checkpoint.safetensors``.
    """
    import time

    import yaml
    from safetensors.torch import load_file, save_file

    from ..util import write_json

    c = yaml.safe_load(Path(config).read_text()) or {}
    out = Path(c.get("out", "lnet_out"))
    out.mkdir(parents=True, exist_ok=True)
    cc = dict(c.get("config", {}))
    if "channels" in cc:
        cc["channels"] = tuple(cc["channels"])
    cfg = LNetConfig(**cc)
    tr = {"steps": 1000, "batch_size": 4, "lr": 1e-3, "seed": 0, "checkpoint_every": 200, "loss": "mse",
          **c.get("train", {})}

    def load_cases(spec):
        cases = []
        if spec.get("dataset_csv"):
            cases += cases_from_csv(spec["dataset_csv"], cfg)
        if spec.get("phantoms"):
            ph = spec["phantoms"]
            cases += phantom_cases(int(ph["n"]), int(ph["seed0"]), cfg, ph.get("size", "small"), quiet=quiet)
        return cases

    train_cases = load_cases(c)
    if not train_cases:
        raise ConfigError(f"{config}: no training data: give dataset_csv and/or phantoms {{n, seed0}}")
    val_cases = load_cases(c.get("validation", {}))
    model = build_lnet(cfg)
    done, opt_state = 0, None
    ck = out / "checkpoint.safetensors"
    ck_opt = out / "checkpoint.optimizer.pt"  # matches .gitignore checkpoint.*
    state_file = out / "checkpoint.json"
    if resume and ck.exists():
        import torch

        model.load_state_dict(load_file(str(ck)))
        done = int(json.loads(state_file.read_text())["steps_done"])
        if ck_opt.exists():
            opt_state = torch.load(ck_opt, weights_only=True)
    t0 = time.perf_counter()
    log_path = out / "metrics.jsonl"
    if not resume and log_path.exists():
        log_path.unlink()          # a fresh run starts a fresh log
    every = int(tr["checkpoint_every"])

    def checkpoint(model, opt, step, log):
        import torch

        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(ck))
        torch.save(opt.state_dict(), ck_opt)
        state_file.write_text(json.dumps({"steps_done": step}))
        with open(log_path, "a") as f:
            f.write(json.dumps({"step": step, "loss": float(np.mean(log.losses[-20:])),
                                "mean_predictor_loss": log.mean_predictor_loss,
                                "elapsed_s": round(time.perf_counter() - t0, 1)}) + "\n")

    step = done
    if step < tr["steps"]:
        model, _ = train_lnet(train_cases, cfg=cfg, steps=int(tr["steps"]), batch_size=int(tr["batch_size"]),
                              lr=float(tr["lr"]), seed=int(tr["seed"]), device=device, model=model, quiet=quiet,
                              loss=str(tr["loss"]), start_step=step, optimizer_state=opt_state,
                              checkpoint_every=every, on_checkpoint=checkpoint)
        step = int(tr["steps"])
    metrics = {}
    if val_cases:
        ev = evaluate_cases(model, val_cases, cfg)
        err = ev["pred"] - ev["truth"]
        from ..evaluate import icc

        metrics = {n: {"MAE_mm": float(np.abs(err[:, j]).mean()), "max_mm": float(np.abs(err[:, j]).max()),
                       "ICC": float(icc(ev["pred"][:, j], ev["truth"][:, j]).value) if len(err) >= 3 else None}
                   for j, n in enumerate(LEVELS)}
        write_json(out / "validation.json", {"pred": ev["pred"], "truth": ev["truth"], "metrics": metrics})
    card = {"trained_on": c.get("description", "see config"), "config_file": Path(config).name,
            "train_cases": len(train_cases), "validation_cases": len(val_cases), "steps": step,
            "input": f"whole field of view area-averaged to {cfg.in_plane}x{cfg.in_plane}, {cfg.z_mm} mm slices, "
                     f"windows of {cfg.window} slices, HU clipped {cfg.hu_min:.0f}..{cfg.hu_max:.0f}",
            "head": cfg.head, "loss": str(tr["loss"]), "batch_size": int(tr["batch_size"]),
            "metrics": metrics, "training_seconds": round(time.perf_counter() - t0, 1)}
    save_lnet(model, cfg, out, card)
    return out
