"""Deep models of mortality on lung-cropped, downsampled CT volumes: ResNet-18, DenseNet-121, Swin (MONAI).

Input: the box around the lungs (plus ``margin_mm``), HU clipped to ``hu_window`` and scaled to 0..1, voxels
outside the (slightly dilated) lung mask set to 0, resampled to ``input_shape`` (z, y, x) by area averaging.

Networks start from random weights (no pretrained weights are downloaded). ``width`` scales the channels
(ResNet ``widen_factor``; DenseNet initial features and growth rate; Swin embedding size 48 x width) so the
defaults train on a 2-core CPU; ``width=1`` gives the standard networks. One network predicts every horizon at
once (one logit per horizon); censored scans are masked out of a horizon's loss and each horizon's positives are
weighted by negatives / positives (class weights). :func:`deep_features` gives the pooled encoder output, which
can be used as features in the tabular models; :func:`deep_out_of_fold` trains one network per fold.

Weights are written as safetensors with a JSON model card (:func:`save_deep`, :func:`load_deep`).
"""
from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..errors import ConfigError, SscildError
from ..scan import CTScan

ARCHS = ("resnet18", "densenet121", "swin")
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class DeepConfig:
    """Network, input and training settings; the defaults are sized for a 2-core CPU."""

    arch: str = "resnet18"
    input_shape: tuple[int, int, int] = (32, 64, 64)
    width: float = 0.5
    epochs: int = 8
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 1e-4
    margin_mm: float = 5.0
    hu_window: tuple[float, float] = (-1024.0, 200.0)
    mask_outside: bool = True
    augment: bool = True
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ConfigError(f"deep arch {self.arch!r} is not one of {ARCHS}")
        shp = tuple(int(v) for v in self.input_shape)
        if len(shp) != 3:
            raise ConfigError(f"input_shape must be (z, y, x), got {self.input_shape}")
        need = 16 if self.arch == "resnet18" else 32
        if any(v < need or v % need for v in shp):
            raise ConfigError(f"{self.arch} needs every input_shape side to be a multiple of {need} "
                              f"(at least {need}); got {shp}")
        if not 0 < self.width <= 2:
            raise ConfigError(f"width must be within (0, 2], got {self.width}")
        object.__setattr__(self, "input_shape", shp)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "DeepConfig":
        d = dict(d or {})
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"unknown deep settings {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
        for k in ("input_shape", "hu_window"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)


# --------------------------------------------------------------------------------------------
# input volumes
# --------------------------------------------------------------------------------------------
def lung_volume(scan: CTScan, lung_labels: np.ndarray, cfg: DeepConfig = DeepConfig()) -> np.ndarray:
    """The lung-cropped, normalised, resampled volume (float32, shape ``cfg.input_shape``).

    Examples
    --------
    >>> from sscild.phantom import make_phantom
    >>> scan, truth = make_phantom(1, extent=20, spacing=(6.0, 5.6, 5.6))
    >>> lung_volume(scan, truth.lungs).shape
    (32, 64, 64)
    """
    import torch
    import torch.nn.functional as F
    from scipy import ndimage as ndi

    from ..errors import NoLungsError

    lung = np.asarray(lung_labels) > 0
    if lung.shape != scan.shape:
        raise ConfigError(f"lung mask shape {lung.shape} differs from the scan's {scan.shape}")
    if not lung.any():
        raise NoLungsError("the lung mask is empty: nothing to crop (is this a chest CT?)")
    idx = np.nonzero(lung)
    box = []
    for a, sp in enumerate(scan.spacing):
        m = int(np.ceil(cfg.margin_mm / sp))
        box.append(slice(max(int(idx[a].min()) - m, 0), min(int(idx[a].max()) + m + 1, scan.shape[a])))
    lo, hi = cfg.hu_window
    v = (np.clip(scan.hu[tuple(box)].astype(np.float32), lo, hi) - lo) / (hi - lo)
    if cfg.mask_outside:
        keep = ndi.binary_dilation(lung[tuple(box)], iterations=1)
        v = np.where(keep, v, 0.0).astype(np.float32)
    t = torch.from_numpy(np.ascontiguousarray(v))[None, None]
    out = F.interpolate(t, size=cfg.input_shape, mode="area") if all(
        s >= o for s, o in zip(v.shape, cfg.input_shape)) else F.interpolate(t, size=cfg.input_shape,
                                                                          mode="trilinear", align_corners=False)
    return out[0, 0].numpy().astype(np.float32)


def _stamp(p: str | None) -> str:
    if not p:
        return "-"
    st = Path(p).stat()
    return f"{Path(p).resolve()}:{st.st_size}:{st.st_mtime_ns}"


def volume_for_scan(scan_id: str, path: str, lungs_path: str | None = None, cfg: DeepConfig = DeepConfig(),
                    cache_dir: str | os.PathLike | None = None) -> np.ndarray:
    """:func:`lung_volume` from files (lungs segmented when ``lungs_path`` is None), cached as ``.npy``."""
    key = hashlib.sha1(f"{_stamp(path)}|{_stamp(lungs_path)}|{cfg.input_shape}|{cfg.margin_mm}|{cfg.hu_window}|"
                       f"{cfg.mask_outside}".encode()).hexdigest()[:16]
    cf = Path(cache_dir) / f"{_SAFE.sub('_', scan_id)}_{key}.npy" if cache_dir is not None else None
    if cf is not None and cf.exists():
        return np.load(cf)
    from ..io import load_ct

    scan = load_ct(path)
    if lungs_path:
        from .radiomics import load_mask

        lung = load_mask(lungs_path, scan, "lung mask")
    else:
        from ..anatomy import segment_lungs

        lung = segment_lungs(scan).labels
    vol = lung_volume(scan, lung, cfg)
    if cf is not None:
        from ..util import atomic_path

        cf.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cf) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, vol)
    return vol


def prepare_volumes(cohort: pd.DataFrame, cfg: DeepConfig = DeepConfig(), cache_dir: str | os.PathLike | None = None,
                    quiet: bool = False) -> tuple[np.ndarray, pd.DataFrame]:
    """Volumes of every scan of a cohort table: (array (N, z, y, x) with NaN for failed scans, status table)."""
    from ..util import progress

    vols = np.full((len(cohort), *cfg.input_shape), np.nan, np.float32)
    status = []
    for i, r in enumerate(progress(cohort.to_dict("records"), "volumes", quiet=quiet)):
        t0 = time.perf_counter()
        lp = r.get("lungs_path")
        lp = None if lp is None or (isinstance(lp, float) and np.isnan(lp)) or lp == "" else str(lp)
        try:
            vols[i] = volume_for_scan(str(r["scan_id"]), str(r["path"]), lp, cfg, cache_dir)
            status.append({"scan_id": r["scan_id"], "status": "done", "reason": "",
                           "seconds": time.perf_counter() - t0})
        except SscildError as err:
            status.append({"scan_id": r["scan_id"], "status": "failed", "reason": str(err),
                           "seconds": time.perf_counter() - t0})
    return vols, pd.DataFrame(status)


# --------------------------------------------------------------------------------------------
# networks
# --------------------------------------------------------------------------------------------
def _einops_free_swin() -> None:
    """MONAI's Swin blocks call ``einops.rearrange`` for axis moves only; without einops installed, give them
    the same permutation in plain torch (the patterns used there are pure transpositions)."""
    try:
        import einops  # noqa: F401
        return
    except ImportError:
        pass
    import monai.networks.nets.swin_unetr as su

    def rearrange(x, pattern: str):
        src, dst = (s.split() for s in pattern.split("->"))
        if sorted(src) != sorted(dst):
            raise NotImplementedError(f"only axis permutations are supported without einops: {pattern}")
        return x.permute(*[src.index(a) for a in dst])

    su.rearrange = rearrange


def _module_classes():
    import torch
    from torch import nn

    class OutcomeNet(nn.Module):
        """Encoder (to a pooled feature vector) + linear head with one logit per horizon."""

        def __init__(self, arch: str, n_outputs: int, width: float):
            super().__init__()
            self.arch = arch
            if arch == "resnet18":
                from monai.networks.nets import resnet18

                self.encoder = resnet18(spatial_dims=3, n_input_channels=1, conv1_t_stride=2, feed_forward=False,
                                        widen_factor=width)
                n_feat = int(512 * width)              # MONAI: block_inplanes scaled by widen_factor
                self.pool = nn.Identity()
            elif arch == "densenet121":
                from monai.networks.nets import DenseNet121

                dn = DenseNet121(spatial_dims=3, in_channels=1, out_channels=1,
                                 init_features=max(8, int(round(64 * width))), growth_rate=max(8, int(round(32 * width))))
                n_feat = dn.class_layers.out.in_features
                self.encoder = dn.features
                self.pool = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(1))
            elif arch == "swin":
                _einops_free_swin()
                from monai.networks.nets.swin_unetr import SwinTransformer

                embed = max(12, int(round(48 * width / 12)) * 12)
                self.encoder = SwinTransformer(in_chans=1, embed_dim=embed, window_size=(4, 4, 4),
                                               patch_size=(2, 2, 2), depths=(2, 2, 2, 2), num_heads=(3, 6, 12, 24),
                                               spatial_dims=3)
                n_feat = embed * 16
                self.pool = nn.Sequential(nn.AdaptiveAvgPool3d(1), nn.Flatten(1), nn.LayerNorm(n_feat))
            else:  # pragma: no cover - DeepConfig checks
                raise ConfigError(f"unknown arch {arch}")
            self.n_features = int(n_feat)
            self.head = nn.Linear(self.n_features, n_outputs)

        def features(self, x):
            h = self.encoder(x, normalize=False)[-1] if self.arch == "swin" else self.encoder(x)
            return self.pool(h)

        def forward(self, x):
            return self.head(self.features(x))

    return OutcomeNet


def build_network(cfg: DeepConfig = DeepConfig(), n_outputs: int = 1):
    """A MONAI ResNet-18 / DenseNet-121 / Swin encoder with a linear head of ``n_outputs`` logits."""
    import torch

    torch.manual_seed(cfg.seed)
    return _module_classes()(cfg.arch, n_outputs, cfg.width)


# --------------------------------------------------------------------------------------------
# training and inference
# --------------------------------------------------------------------------------------------
def _as_2d(labels) -> np.ndarray:
    y = np.asarray(labels, np.float32)
    return y[:, None] if y.ndim == 1 else y


def class_weights(labels) -> np.ndarray:
    """Positive-class weight per horizon: labelled negatives / positives (1 when a class is missing)."""
    y = _as_2d(labels)
    pos, neg = np.nansum(y == 1, axis=0), np.nansum(y == 0, axis=0)
    return np.where((pos > 0) & (neg > 0), neg / np.maximum(pos, 1), 1.0).astype(np.float32)


def train_deep(volumes: np.ndarray, labels, cfg: DeepConfig = DeepConfig(), *, quiet: bool = True,
               model=None, out: str | os.PathLike | None = None,
               resume: bool = False) -> tuple[Any, list[dict[str, float]]]:
    """Train a network on volumes (N, z, y, x) and labels (N,) or (N, horizons) with NaN = censored, with
    :func:`sscild.engine.fit` (AdamW, warm-up over the first 20 % of the steps, then a cosine decay to 0; one
    epoch = one pass over the scans in an order drawn per epoch). ``out``/``resume``: checkpoints and
    ``metrics.jsonl`` there, continued when ``resume``.

    Returns (model in eval mode, history: one dict per epoch trained in this call with the mean masked,
    class-weighted loss).
    """
    import torch

    from ..config import TrainSettings
    from ..engine import fit

    x_all = np.asarray(volumes, np.float32)
    y_all = _as_2d(labels)
    if x_all.shape[0] != y_all.shape[0]:
        raise ConfigError(f"{x_all.shape[0]} volumes but {y_all.shape[0]} label rows")
    keep = ~np.isnan(y_all).all(axis=1) & np.isfinite(x_all.reshape(len(x_all), -1)).all(axis=1)
    x_all, y_all = x_all[keep], y_all[keep]
    if len(x_all) < 2:
        raise ConfigError("fewer than 2 labelled scans with a volume: nothing to train on")
    dev = torch.device(cfg.device)
    pw = torch.from_numpy(class_weights(y_all)).to(dev)
    nb = int(np.ceil(len(x_all) / cfg.batch_size))
    steps = max(cfg.epochs * nb, 1)
    s = TrainSettings(steps=steps, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
                      warmup_steps=int(0.2 * steps), final_lr_fraction=0.0, seed=cfg.seed, optimizer="adamw",
                      checkpoint_every=nb, log_every=nb)

    def step_fn(m, step, rng):
        ep, b = divmod(step, nb)
        order = np.random.default_rng([cfg.seed, ep]).permutation(len(x_all))   # the epoch's order, resumable
        ib = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
        if len(ib) < 2 and len(order) > 1:      # BatchNorm needs 2 samples
            ib = np.r_[ib, order[0]]
        xb = torch.from_numpy(_augment(x_all[ib], rng) if cfg.augment else x_all[ib])[:, None].to(dev)
        yb = torch.from_numpy(y_all[ib]).to(dev)
        mask = ~torch.isnan(yb)
        loss_el = torch.nn.functional.binary_cross_entropy_with_logits(
            m(xb), torch.nan_to_num(yb), pos_weight=pw, reduction="none")
        return (loss_el * mask).sum() / mask.sum().clamp(min=1)

    log = fit(model or build_network(cfg, y_all.shape[1]), step_fn, s, out=out, resume=resume, device=cfg.device,
              quiet=quiet, desc=f"train {cfg.arch}")
    first = log.start_step // nb
    history = [{"epoch": first + e + 1, "loss": float(np.mean(log.losses[e * nb:(e + 1) * nb]))}
               for e in range(int(np.ceil(len(log.losses) / nb)))]
    return log.model, history


def _augment(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Small random shifts (up to 2 voxels per axis), intensity scaling (+-5 %) and noise."""
    out = np.empty_like(x)
    for i in range(len(x)):
        sh = rng.integers(-2, 3, size=3)
        v = np.roll(x[i], tuple(int(s) for s in sh), axis=(0, 1, 2))
        out[i] = v * rng.uniform(0.95, 1.05) + rng.normal(0, 0.01, v.shape).astype(np.float32)
    return out


def _batches(model, volumes: np.ndarray, fn, batch_size: int = 8) -> np.ndarray:
    import torch

    dev = next(model.parameters()).device
    model.eval()
    out = []
    with torch.no_grad():
        for b in range(0, len(volumes), batch_size):
            xb = torch.from_numpy(np.nan_to_num(np.asarray(volumes[b:b + batch_size], np.float32)))[:, None].to(dev)
            out.append(fn(xb).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def predict_proba(model, volumes: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """Probabilities (N, horizons) of death within each horizon."""
    import torch

    return _batches(model, volumes, lambda x: torch.sigmoid(model(x)), batch_size)


def deep_features(model, volumes: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """Pooled encoder features (N, model.n_features) of volumes (N, z, y, x)."""
    return _batches(model, volumes, model.features, batch_size)


def deep_out_of_fold(volumes: np.ndarray, labels, folds: np.ndarray, cfg: DeepConfig = DeepConfig(), *,
                     quiet: bool = True) -> tuple[np.ndarray, list[list[dict[str, float]]]]:
    """Out-of-fold probabilities (N, horizons): for each fold a network trained on the other folds' patients.

    Rows with NaN volumes get NaN. Returns (probabilities, training history per fold).
    """
    y = _as_2d(labels)
    folds = np.asarray(folds)
    out = np.full(y.shape, np.nan, np.float32)
    ok = np.isfinite(np.asarray(volumes).reshape(len(volumes), -1)).all(axis=1)
    hist = []
    for k in np.unique(folds[folds >= 0]):
        tr, te = (folds != k) & ok, (folds == k) & ok
        model, h = train_deep(volumes[tr], y[tr], cfg, quiet=quiet)
        out[te] = predict_proba(model, volumes[te])
        hist.append(h)
    return out, hist


# --------------------------------------------------------------------------------------------
# weights and card
# --------------------------------------------------------------------------------------------
def save_deep(model, cfg: DeepConfig, outdir: str | os.PathLike, horizons: Sequence[float],
              card: dict[str, Any] | None = None, *, label_kind: str = "clinical outcome") -> Path:
    """Write the model as a bundle (:func:`sscild.bundle.save_bundle`): ``model.safetensors``, ``card.json`` (config,
    horizons, input description; ``card`` extras go to the training section), ``card.md``."""
    from ..bundle import new_card, save_bundle

    extras = dict(card or {})
    training = {"description": str(extras.pop("trained_on", "not recorded")), "label_kind": label_kind,
                "horizons_years": [float(h) for h in horizons], **extras}
    c = new_card("outcome-deep", f"sscild outcome {cfg.arch}", config=asdict(cfg), training=training,
                 input={"description": "lung-cropped CT, HU window scaled to 0..1, outside lung 0, area-resampled "
                                       f"to {cfg.input_shape} (z, y, x)",
                        "outputs": "one logit per horizon: death within that many years"})
    return save_bundle(model, outdir, c)


def load_deep(outdir: str | os.PathLike, device: str = "cpu"):
    """Read a model written by :func:`save_deep`: (model, DeepConfig, card); ``ModelError`` when missing,
    corrupt or unfit."""
    from ..bundle import load_bundle

    def config(card):
        return DeepConfig.from_dict({**card["config"], "device": device})

    model, card = load_bundle(outdir, "outcome-deep",
                              lambda c: build_network(config(c), len(c["training"]["horizons_years"])),
                              what="deep outcome model", train_hint="sscild train outcome --deep", device=device)
    return model, config(card), card
