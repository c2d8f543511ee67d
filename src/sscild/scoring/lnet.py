"""L-Net: a 3D regression network that places the five Goh levels, sized for a CPU.

After Jia et al. (Sci Rep 2024): a VGG-style 3D network regresses the slice positions of the five levels from
a downsampled scan; training uses random z crops that always contain the five levels, and inference slides
windows along z and takes the median of each level's predictions.

Defaults sized for a 2-core CPU: the scan is area-averaged to ``in_plane`` x ``in_plane`` pixels and resampled
to ``z_mm`` mm per slice; in-plane the network sees a square of ``fov_mm`` centred on the lungs (so a PET/CT's
70 cm field of view or a scan centred off the patient looks like any other chest; ``fov_mm`` None, the weights
before 3.0.0: the whole field of view, whatever its size); windows are ``window`` slices long
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
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..domain import LEVELS
from ..errors import ConfigError
from ..scan import CTScan

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
    fov_mm: float | None = None   # in-plane square (mm) centred on the lungs; None: the whole field of view

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


def lung_centre(lung: np.ndarray) -> tuple[float, float]:
    """The centre of the lungs' in-plane bounding box (all slices) as fractions (0..1) of the image's height and
    width: unchanged when the scan is resampled in-plane over the same field of view (another pixel size)."""
    rows, cols = np.nonzero(np.asarray(lung).any(axis=0))
    if len(rows) == 0:
        return 0.5, 0.5
    ny, nx = lung.shape[1:]
    return (int(rows.min()) + int(rows.max()) + 1) / (2.0 * ny), (int(cols.min()) + int(cols.max()) + 1) / (2.0 * nx)


def _in_view(scan: CTScan, cfg: LNetConfig, centre: tuple[float, float] | None) -> np.ndarray:
    """The scan's HU clipped and scaled to [-1, 1] (float32), in-plane the square of ``cfg.fov_mm`` round the lungs'
    centre (``centre``; found by :func:`sscild.anatomy.segment_lungs` when None), air beyond the image's edge; the
    whole image when ``cfg.fov_mm`` is None."""
    if cfg.fov_mm is None:
        return _scaled(scan.hu, cfg)
    if centre is None:
        from ..anatomy import segment_lungs

        centre = lung_centre(segment_lungs(scan).mask)
    nz, ny, nx = scan.shape
    out = np.full((nz, max(1, int(round(cfg.fov_mm / scan.spacing[1]))), max(1, int(round(cfg.fov_mm / scan.spacing[2])))),
                  _air(cfg), np.float32)
    src, dst = [], []
    for n, m, c in ((ny, out.shape[1], centre[0]), (nx, out.shape[2], centre[1])):
        start = int(round(c * n - m / 2))                       # first image row / column of the square
        a, b = max(start, 0), min(start + m, n)
        src.append(slice(a, max(a, b)))
        dst.append(slice(a - start, a - start + max(0, b - a)))
    out[:, dst[0], dst[1]] = _scaled(scan.hu[:, src[0], src[1]], cfg)
    return out


def prepare(scan: CTScan, cfg: LNetConfig = LNetConfig(), centre: tuple[float, float] | None = None) -> Prepared:
    """Area-average the scan to L-Net's grid (in-plane the square of ``cfg.fov_mm`` round the lungs' ``centre``,
    :func:`lung_centre`, or the whole field of view; ``cfg.z_mm`` along z)."""
    import torch
    import torch.nn.functional as F

    nz = scan.shape[0]
    z0, z1 = scan.z_mm(0), scan.z_mm(nz - 1)
    length = abs(z1 - z0) + abs(scan.spacing[0])
    out_z = max(2, int(round(length / cfg.z_mm)))
    vol = torch.from_numpy(_in_view(scan, cfg, centre))
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


def _scaled(hu: np.ndarray, cfg: LNetConfig) -> np.ndarray:
    """HU clipped to ``cfg.hu_min .. hu_max`` and scaled to [-1, 1] (float32)."""
    a = np.clip(hu, cfg.hu_min, cfg.hu_max).astype(np.float32)
    return (a - np.float32((cfg.hu_max + cfg.hu_min) / 2)) / np.float32((cfg.hu_max - cfg.hu_min) / 2)


def _air(cfg: LNetConfig) -> float:
    """-1000 HU in L-Net's scaled units."""
    return float(_scaled(np.float32(-1000.0), cfg))


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
    def from_scan(case_id: str, scan: CTScan, levels_z: dict[str, float | None], cfg: LNetConfig = LNetConfig(),
                  group: str | None = None, partial: bool = False, centre: tuple[float, float] | None = None
                  ) -> "LevelCase":
        """``partial``: levels without a z (out of view on a real scan) are NaN and left out of the loss;
        ``centre``: the lungs' centre (:func:`lung_centre`; found when None and ``cfg.fov_mm`` is set)."""
        missing = [n for n in LEVELS if levels_z.get(n) is None or not np.isfinite(levels_z[n])]
        if missing and (not partial or len(missing) == len(LEVELS)):
            raise ConfigError(f"case {case_id}: levels {missing} have no z; L-Net training needs all five "
                              "(or at least one, for a real scan whose other landmarks are out of view)")
        prep = prepare(scan, cfg, centre)
        pos = np.array([np.nan if n in missing else _z_to_index(prep, float(levels_z[n])) for n in LEVELS])
        return LevelCase(case_id, group or case_id, prep, pos)


def _sample_window(case: LevelCase, cfg: LNetConfig, rng: np.random.Generator,
                   margin: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """A random window containing the five levels, and their positions in window units (0..1)."""
    lo, hi = float(np.nanmin(case.positions)), float(np.nanmax(case.positions))  # NaN: level out of view
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
def train_lnet(cases: Sequence[LevelCase], *, cfg: LNetConfig = LNetConfig(), settings=None, device: str = "cpu",
               model=None, quiet: bool = True, out: str | Path | None = None, resume: bool = False,
               stop_after: int | None = None, **overrides):
    """Train (or continue training) an L-Net on ``cases`` with :func:`sscild.engine.fit`.

    ``settings`` (:class:`sscild.config.TrainSettings`, default the L-Net defaults) and keyword overrides of its
    fields (``steps``, ``batch_size``, ``lr``, ``loss`` ``"mse"`` or ``"l1"`` on window-unit positions, ...).
    ``out``/``resume``: checkpoints and ``metrics.jsonl`` there, continued when ``resume``.
    Returns the model (in eval mode) and the :class:`sscild.engine.TrainLog` (with ``mean_predictor_loss``, the
    loss of predicting the mean (median for L1) of the targets drawn).
    """
    import torch

    from ..config import settings_for
    from ..engine import fit

    s = settings_for("lnet", settings, **overrides)
    if not cases:
        raise ConfigError("L-Net training got no cases")
    if s.loss not in ("mse", "l1"):
        raise ConfigError(f"L-Net loss must be 'mse' or 'l1', got {s.loss!r}")
    lossf = torch.nn.MSELoss() if s.loss == "mse" else torch.nn.L1Loss()
    targets: list[np.ndarray] = []

    def step_fn(m, step, rng):
        batch = [_sample_window(cases[int(rng.integers(len(cases)))], cfg, rng) for _ in range(s.batch_size)]
        x = torch.from_numpy(np.stack([b[0] for b in batch]))[:, None].to(device)
        y = torch.from_numpy(np.stack([b[1] for b in batch]))
        targets.append(y.numpy())
        known = ~torch.isnan(y)  # levels out of view on a real scan have no target
        return lossf(m(x)[known.to(device)], y[known].to(device))

    log = fit(model if model is not None else build_lnet(cfg), step_fn, s, out=out, resume=resume, device=device,
              quiet=quiet, desc="train L-Net", stop_after=stop_after)
    if targets:
        t = np.concatenate(targets)
        t = t[:, ~np.isnan(t).all(axis=0)]  # levels never in view have no target
        log.mean_predictor_loss = (float(np.nanmean((t - np.nanmean(t, 0)) ** 2)) if s.loss == "mse"
                                   else float(np.nanmean(np.abs(t - np.nanmedian(t, 0)))))
    return log.model, log


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


#: L-Net levels closer than this (mm) to the first or last slice's centre lose confidence in proportion (phantoms
#: cut 15 mm below the carina or 15 mm above the right dome: L-Net placed the levels outside them, at 1.00; 20 mm
#: left the placements at >= 0.8 right within 5 mm in 94.6 %, 30 mm in 95.7 %, python bench/run_all.py levels).
#: L-Net 3.0.0 (fine-tuned on real scans) at 30 mm: 93.8 %; at 45 mm: 95.9 %, the combined levels unchanged.
EDGE_MM = 45.0
#: confidence of an L-Net level out of order with the others (see :func:`_out_of_order`)
OUT_OF_ORDER_CONF = 0.2


def _out_of_order(z: np.ndarray, conf: np.ndarray) -> list[int]:
    """The levels (indices into LEVELS) to drop so that the rest run from head to feet (L1 highest, z strictly
    falling): the largest such set, of the highest summed confidence among equals. On a phantom cut 15 mm below the
    carina L-Net put L1, whose landmark the scan does not hold, 70 mm down, below L3, at confidence 1.00."""
    n = len(z)
    best: tuple[int, float, tuple[int, ...]] = (-1, -1.0, ())
    for mask in range(1 << n):
        keep = tuple(i for i in range(n) if mask >> i & 1)
        if all(z[a] > z[b] for a, b in zip(keep, keep[1:])):
            cand = (len(keep), float(sum(conf[i] for i in keep)), keep)
            best = max(best, cand, key=lambda c: c[:2])
    return [i for i in range(n) if i not in best[2]]


def predict_levels(model, scan: CTScan, cfg: LNetConfig = LNetConfig(), device: str = "cpu",
                   lung: np.ndarray | None = None):
    """Five level positions by L-Net as :class:`sscild.levels.GohLevels` (``method == "lnet"``), world z (mm, LPS)
    and slice index as read, like the anatomical method, so they can feed S-Net. ``lung``: the scan's lung mask
    (``Lungs.mask``), whose centre the network's field of view is centred on (segmented here when None).

    A level predicted outside the scan has ``z_mm`` and ``slice_index`` None. Confidence falls with the spread
    (IQR) of the window predictions: 1 / (1 + IQR_mm / 10), and near the scan's ends: a level within
    :data:`EDGE_MM` of the first or last slice is scaled by its distance / EDGE_MM (on a scan cut through or above
    a landmark L-Net still places that level, at the scan's end, with windows that agree). Levels out of order
    with the others (:func:`_out_of_order`; beyond the scan counts above the top or below the bottom) get at most
    :data:`OUT_OF_ORDER_CONF`.
    """
    from ..levels import GohLevels

    prep = prepare(scan, cfg, None if lung is None else lung_centre(lung))
    med, iqr = predict_positions(model, prep, cfg, device=device)
    ends = sorted((scan.z_mm(0), scan.z_mm(scan.shape[0] - 1)))
    z_mm, index, conf, notes = {}, {}, {}, {}
    zs = np.array([_index_to_z(prep, m) for m in med])
    for name, z, spread in zip(LEVELS, zs.tolist(), iqr.tolist()):
        k = scan.slice_at_z(z)
        iqr_mm = spread * cfg.z_mm
        z_mm[name] = float(z) if k is not None else None
        index[name] = scan.input_slice_index(k) if k is not None else None
        conf[name] = float(1.0 / (1.0 + iqr_mm / 10.0))
        notes[name] = (f"L-Net sliding-window median; window spread (IQR) {iqr_mm:.1f} mm" if k is not None
                       else f"L-Net places {name} at z = {z:.1f} mm, outside the scan")
        edge = min(abs(z - ends[0]), abs(ends[1] - z))
        if k is not None and edge < EDGE_MM:
            conf[name] *= edge / EDGE_MM
            notes[name] += f"; {edge:.0f} mm from the scan's end: its landmark may lie outside the scan"
    for j in _out_of_order(zs, np.array([conf[n] for n in LEVELS])):
        name = LEVELS[j]
        conf[name] = min(conf[name], OUT_OF_ORDER_CONF)
        notes[name] += "; out of order with L-Net's other levels (L1 above L2 ... above L5)"
    return GohLevels(z_mm, index, conf, notes, method="lnet")


# --------------------------------------------------------------------------------------------
# weights on disk
# --------------------------------------------------------------------------------------------
def lnet_card(cfg: LNetConfig, *, description: str, **kw) -> dict:
    """A model card for L-Net weights (:func:`sscild.bundle.model_card`; ``kw``: label_kind, training, metrics)."""
    from ..bundle import model_card

    return model_card("lnet", "L-Net", cfg, description=description, **kw,
                      input={"description": ("whole field of view" if cfg.fov_mm is None else
                                             f"{cfg.fov_mm:g} mm square centred on the lungs")
                                            + f" area-averaged to {cfg.in_plane}x{cfg.in_plane}, "
                                            f"{cfg.z_mm} mm slices, windows of {cfg.window} slices, HU clipped "
                                            f"{cfg.hu_min:.0f}..{cfg.hu_max:.0f}"})


def save_lnet(model, cfg: LNetConfig, directory: str | Path, card: dict | None = None, **kw) -> Path:
    """Write an L-Net bundle (:func:`sscild.bundle.save_model`; ``kw``: predictions, allow_package)."""
    from ..bundle import save_model

    return save_model(model, cfg, directory, card or lnet_card(cfg, description="not recorded"), **kw)


def config_from_card(card: dict) -> LNetConfig:
    """The L-Net config a card describes (cards before the zmap head describe the dense head)."""
    from ..bundle import card_config

    return card_config(LNetConfig, card, {"head": "dense"})


def load_lnet(directory: str | Path | None = None, device: str = "cpu"):
    """Load an L-Net, its config and card from ``directory`` (default: the shipped weights).

    Raises ``ModelError`` when the weights or card are missing, corrupt or do not fit the network.
    """
    from ..bundle import load_bundle

    directory = Path(directory) if directory is not None else DEFAULT_DIR
    model, card = load_bundle(directory, "lnet", lambda c: build_lnet(config_from_card(c)), what="L-Net",
                              train_hint="sscild train levels --config ...", device=device)
    return model, config_from_card(card), card


def level_metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, dict[str, float | None]]:
    """MAE, maximum error (mm) and ICC per level of predicted vs true world z (n, 5)."""
    from ..evaluate import icc

    err = np.asarray(pred, float) - np.asarray(truth, float)
    return {n: {"MAE_mm": float(np.abs(err[:, j]).mean()), "max_mm": float(np.abs(err[:, j]).max()),
                "ICC": float(icc(pred[:, j], truth[:, j]).value) if len(err) >= 3 else None}
            for j, n in enumerate(LEVELS)}


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
def cases_from_csv(path: str | Path, cfg: LNetConfig, seed: int = 0) -> list[LevelCase]:
    """Cases from a CSV with ``scan_path`` (or ``path``), ``L1``..``L5`` (world z, mm) and optional ``patient_id``.

    Relative paths are taken relative to the CSV's folder. A blank level cell means the landmark is out of view
    (that level is left out of the loss). An optional ``acquisitions`` column adds that many copies of the scan
    as other acquisitions would have made it (:func:`acquired_cases`, random draws from ``seed``).
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
    rng = np.random.default_rng(seed)
    for i, r in df.iterrows():
        p = Path(str(r[col]))
        p = p if p.is_absolute() else path.parent / p
        scan = load_ct(p)
        n_acq = int(r["acquisitions"]) if "acquisitions" in df.columns and pd.notna(r["acquisitions"]) else 0
        levels = {n: (None if pd.isna(r[n]) else float(r[n])) for n in LEVELS}
        out += acquired_cases(str(r.get("scan_id", p.name)), scan, levels, cfg, n_acq, rng,
                              group=str(r.get("patient_id", p.name)))
    return out


def acquired_scan(scan: CTScan, rng: np.random.Generator, lung: np.ndarray | None = None):
    """The scan as a random other acquisition would have made it (:func:`sscild.acquisition.random_acquisition`,
    :func:`~sscild.acquisition.simulate`: slices, interval, pixel size, kernel, noise, gravity), on a grid whose
    first slice keeps the world z of the original's (so level z in world mm are unchanged).

    Returns the new :class:`CTScan` and the acquisition's description.
    """
    import dataclasses

    from ..acquisition import random_acquisition, simulate

    acq = random_acquisition(rng, scan.spacing)
    sim = simulate(scan.hu, scan.spacing, acq, rng, lung=lung)
    hu = np.clip(np.rint(sim.hu), -32768, 32767).astype(np.int16)
    return dataclasses.replace(scan, hu=hu, spacing=tuple(float(v) for v in sim.spacing), input_geometry=None), \
        acq.describe()


def acquired_cases(case_id: str, scan: CTScan, levels_z: dict[str, float | None], cfg: LNetConfig, n: int,
                   rng: np.random.Generator, group: str | None = None, lung: np.ndarray | None = None
                   ) -> list[LevelCase]:
    """The scan as a case (levels without z are out of view) plus ``n`` copies under random acquisitions
    (:func:`acquired_scan`), all in the group ``group`` (default ``case_id``) so that splits keep them together.
    ``lung``: the scan's lung mask (the acquisitions' gravity, and the centre of L-Net's field of view; segmented
    when None and ``cfg.fov_mm`` is set)."""
    centre = None
    if cfg.fov_mm is not None:
        if lung is None:
            from ..anatomy import segment_lungs

            lung = segment_lungs(scan).mask
        centre = lung_centre(lung)      # the same fractions on every acquisition (same field of view)
    out = [LevelCase.from_scan(case_id, scan, levels_z, cfg, group=group or case_id, partial=True, centre=centre)]
    for i in range(n):
        sim, _ = acquired_scan(scan, rng, lung)
        out.append(LevelCase.from_scan(f"{case_id}~acq{i}", sim, levels_z, cfg, group=group or case_id, partial=True,
                                       centre=centre))
    return out


def annotated_midpoints(annotations: dict) -> dict[str, dict[str, float | None]]:
    """Training targets from by-eye level annotations (``tests/data/real_levels.json`` layout:
    ``{"scans": {name: {"levels": {L: {"z_mm": [lo, hi] or None}}}}}``): the midpoint of each acceptable range,
    None for a level whose landmark is out of view."""
    return {name: {n: (None if a["levels"][n]["z_mm"] is None else float(np.mean(a["levels"][n]["z_mm"])))
                   for n in LEVELS} for name, a in annotations["scans"].items()}


def phantom_cases(n: int, seed0: int, cfg: LNetConfig, size: str = "small", quiet: bool = True) -> list[LevelCase]:
    """Cases from synthetic phantoms (seeds seed0 .. seed0+n-1, ILD extent 0-70 %), with exact level truth."""
    from ..phantom import make_phantom
    from ..util import progress

    out = []
    for s in progress(range(seed0, seed0 + n), "phantoms", quiet=quiet):
        scan, truth = make_phantom(s, size=size, extent=float((s * 37) % 71))
        out.append(LevelCase.from_scan(f"phantom{s}", scan, truth.levels_z, cfg, centre=lung_centre(truth.lungs > 0)))
    return out


def _load_cases(spec: dict, cfg: LNetConfig, quiet: bool) -> list[LevelCase]:
    cases: list[LevelCase] = []
    if spec.get("dataset_csv"):
        cases += cases_from_csv(spec["dataset_csv"], cfg)
    phs = spec.get("phantoms") or []
    for ph in (phs if isinstance(phs, list) else [phs]):
        cases += phantom_cases(int(ph["n"]), int(ph["seed0"]), cfg, ph.get("size", "small"), quiet=quiet)
    return cases


def train_from_config(config: str | Path, *, resume: bool = False, device: str = "cpu", quiet: bool = False,
                      init: str | Path | None = None, allow_package: bool = True) -> Path:
    """Train an L-Net as a YAML config says (:mod:`sscild.config` layout: ``data`` / ``validation`` with
    ``dataset_csv`` (see :func:`cases_from_csv`) and/or ``phantoms`` {n, seed0, size}); writes the bundle
    (weights, card, validation.json) and ``metrics.jsonl`` in ``out``; ``resume`` continues from its checkpoint;
    ``init`` (an L-Net bundle to fine-tune) replaces the config's ``init:``."""
    import time

    from ..bundle import metric_set
    from ..config import trainer_config

    tc = trainer_config("lnet", config, LNetConfig, "lnet_out", init=init)
    cfg = tc.network
    train_cases = _load_cases(tc.data, cfg, quiet)
    if not train_cases:
        raise ConfigError(f"{config}: no training data: give data: dataset_csv and/or phantoms {{n, seed0}}")
    val_cases = _load_cases(tc.validation, cfg, quiet)
    t0 = time.perf_counter()
    init = load_lnet(tc.init, device=device)[0] if tc.init else None  # fine-tune from a bundle (``init:``)
    model, _ = train_lnet(train_cases, cfg=cfg, settings=tc.train, device=device, quiet=quiet, out=tc.out,
                          resume=resume, model=init)
    metrics, preds = [], None
    if val_cases:
        ev = evaluate_cases(model, val_cases, cfg)
        preds = {"validation": {"pred": ev["pred"], "truth": ev["truth"]}}
        metrics = [metric_set("validation", level_metrics(ev["pred"], ev["truth"]), n=len(val_cases),
                              description=f"{len(val_cases)} validation cases of the config", predictions="validation",
                              recompute="levels")]
    card = lnet_card(cfg, description=tc.description, label_kind=tc.label_kind, metrics=metrics,
                     training={"config_file": tc.path.name, "train_cases": len(train_cases),
                               "validation_cases": len(val_cases), "steps": tc.train.steps,
                               "batch_size": tc.train.batch_size, "loss": tc.train.loss,
                               "training_seconds": round(time.perf_counter() - t0, 1)})
    save_lnet(model, cfg, tc.out, card, predictions=preds, allow_package=allow_package)
    return tc.out
