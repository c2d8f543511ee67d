"""S-Net: a 2D regression network that scores a Goh level slice (TOT, GG, RET in % of lung area).

After Jia et al. (Sci Rep 2024), sized for a CPU:

- **Input.** The level slice cropped to the lungs (square box around the lung mask with a margin) and resampled
  to ``size`` x ``size`` (default 96; 512 supported). Two channels: HU mapped from ``hu_min..hu_max`` to 0..1
  (air = 0, so zero padding is air), the lung mask (the score is a share of the lung area, so the network is
  told where the lung is) and, with ``texture`` (default), the local standard deviation of HU inside the lung
  computed from the slice at its *own* resolution (:func:`local_std`). Reticulation is a network of lines ~1-2 mm
  thick; resampling a 0.7 mm slice to a ~3 mm grid averages them into a haze that looks like ground glass, while
  on a 2.8 mm scan the same pattern survives. The variance channel keeps that texture energy whatever the scan's
  pixel size (it is the variance of the native pixels in a ~3-grid-pixel window: within-pixel plus
  between-pixel variance), so the GG/RET split no longer depends on the scanner's resolution.
- **Backbones** from MONAI: ``resnet18`` (default, ``width`` scales the channels), ``resnet10``, ``densenet121``,
  ``efficientnet-b0``.
- **Outputs** three numbers trained with MSE against score / 100; at inference they are clamped to 0..100 and made
  consistent: ``max(GG, RET) <= TOT <= min(100, GG + RET)``. Training ends with a per-pattern linear
  calibration fitted on the validation slices (:func:`fit_calibration`, stored in the card's config): with
  balanced sampling the network regresses towards the balanced set's higher mean and over-calls low scores
  (the shipped net: RET +3.5, TOT +2 points on healthy and mild slices before calibration).
- **Training** Adam (lr 1e-4 .. 1e-3, weight decay 1e-4), augmentation rotation +-30 deg, scale 95-105 %,
  shift +-10 px at 512 (scaled to ``size``), balanced sampling over 5 % TOT bins (:mod:`.sampling`), synthetic
  images from :mod:`.synthesis`.
- **Pretraining** without labels (no ImageNet weights can be downloaded here): :func:`pretrain` fits the same
  network to density proxies computed from each image itself (share of lung pixels in the ground-glass band and
  in the dense band, and mean lung HU), which any unlabelled slice provides; ``init`` loads a user's checkpoint.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..domain import LEVELS, PATTERNS
from ..errors import ConfigError
from .snet_data import (Backgrounds, MixedPatterns, SliceSet, add_noise, load_data_spec,  # noqa: F401
                        pattern_source_from_spec, phantom_slices, prepare_slices, real_backgrounds,
                        real_slices_from_folder, slices_from_csv, synthesize)
from .snet_input import (TEXTURE_SCALE_HU, Crop, SNetConfig, calibrated, consistent, crop_resample,  # noqa: F401
                         fit_calibration, local_std, lung_crop, prepare_grid, to_input)

DEFAULT_DIR = Path(__file__).resolve().parents[1] / "models" / "snet"
BACKBONES = ("resnet18", "resnet10", "densenet121", "efficientnet-b0")
#: training names, imported on first use from :mod:`.snet_train` (it imports this module)
_TRAINING = ("train_snet", "pretrain", "density_proxies", "cross_validate", "calibrate_weights", "train_from_config",
             "_augment")


def __getattr__(name: str):
    if name in _TRAINING:
        from . import snet_train

        return getattr(snet_train, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------------------------
# network
# --------------------------------------------------------------------------------------------
def build_snet(cfg: SNetConfig = SNetConfig()):
    """A MONAI 2D backbone with ``cfg.in_channels`` input channels (HU, lung mask, texture) and 3 outputs."""
    from monai.networks import nets

    if cfg.backbone in ("resnet18", "resnet10"):
        layers = [2, 2, 2, 2] if cfg.backbone == "resnet18" else [1, 1, 1, 1]
        return nets.ResNet("basic", layers, [64, 128, 256, 512], spatial_dims=2, n_input_channels=cfg.in_channels,
                           num_classes=3, widen_factor=cfg.width, conv1_t_size=7, conv1_t_stride=2)
    if cfg.backbone == "densenet121":
        return nets.DenseNet121(spatial_dims=2, in_channels=cfg.in_channels, out_channels=3)
    if cfg.backbone == "efficientnet-b0":
        return nets.EfficientNetBN("efficientnet-b0", pretrained=False, spatial_dims=2, in_channels=cfg.in_channels,
                                   num_classes=3)
    raise ConfigError(f"unknown S-Net backbone {cfg.backbone!r}; choose one of {', '.join(BACKBONES)}")


# --------------------------------------------------------------------------------------------
# inference
# --------------------------------------------------------------------------------------------
def predict_prepared(model, data: SliceSet, cfg: SNetConfig, batch_size: int = 64, device: str = "cpu",
                     ) -> np.ndarray:
    """Consistent scores (N, 3) of prepared slices."""
    import torch

    x = data.inputs(cfg)
    out = []
    model.eval()
    with torch.inference_mode():
        for b in range(0, len(x), batch_size):
            out.append(model(torch.from_numpy(x[b:b + batch_size]).to(device)).float().cpu().numpy() * 100.0)
    return calibrated(np.concatenate(out) if out else np.zeros((0, 3)), cfg)


class SNetScorer:
    """S-Net as a scorer for :mod:`sscild.explain`: ``scorer(images (N,H,W) HU, lungs (N,H,W)) -> (N, 3)``.

    All images of a call that share one lung mask (the occluded copies of a slice) share one crop. ``pixel_mm``
    is the in-plane pixel size of the slices it will score (needed by the texture channel).
    """

    def __init__(self, model, cfg: SNetConfig, device: str = "cpu", pixel_mm: float | None = None):
        if cfg.texture and not pixel_mm:
            raise ConfigError("SNetScorer: this S-Net's texture channel needs the slices' pixel size (pixel_mm)")
        self.model, self.cfg, self.device, self.pixel_mm = model, cfg, device, pixel_mm

    def __call__(self, images: np.ndarray, lungs: np.ndarray) -> np.ndarray:
        import torch

        images = np.asarray(images, np.float32)
        lungs = np.asarray(lungs, bool)
        same = all(np.array_equal(lungs[0], lungs[i]) for i in range(1, len(lungs))) if len(lungs) else True
        if same:
            hu, lu, _, _, tex = prepare_grid(images, lungs[:1], self.cfg, pixel_mm=self.pixel_mm)
            lu = np.broadcast_to(lu, hu.shape)
        else:
            parts = [prepare_grid(images[i:i + 1], lungs[i:i + 1], self.cfg, pixel_mm=self.pixel_mm)
                     for i in range(len(images))]
            hu = np.concatenate([p[0] for p in parts]); lu = np.concatenate([p[1] for p in parts])
            tex = np.concatenate([p[4] for p in parts]) if self.cfg.texture else None
        x = torch.from_numpy(to_input(hu, lu, self.cfg, tex)).to(self.device)
        with torch.inference_mode():
            raw = self.model(x).float().cpu().numpy() * 100.0
        return calibrated(raw, self.cfg)

    def occluded(self, image: np.ndarray, lung: np.ndarray, windows, changes, batch_size: int = 32) -> np.ndarray:
        """Scores (N, 3) of copies of one slice that differ from it only inside small windows: copy ``i`` is
        ``image`` plus ``changes[i]`` (float32 HU) on the rows and columns of ``windows[i]`` (two slices); the lung
        mask is the same for all. Equal to ``self(copies, lungs)`` to float rounding (:class:`OcclusionInputs`),
        without building or resampling the whole copies."""
        import torch
        from threadpoolctl import threadpool_limits

        prep = OcclusionInputs(np.asarray(image, np.float32), np.asarray(lung, bool), self.cfg, self.pixel_mm)
        out = []
        for b in range(0, len(windows), batch_size):
            with threadpool_limits(1, user_api="blas"):   # small matrix products: threads only spin on a busy CPU
                x = torch.from_numpy(prep.inputs(windows[b:b + batch_size], changes[b:b + batch_size]))
            with torch.inference_mode():                  # channels-last input: ~20 % faster convolutions on a CPU
                x = x.to(self.device).contiguous(memory_format=torch.channels_last)
                out.append(self.model(x).float().cpu().numpy() * 100.0)
        return calibrated(np.concatenate(out) if out else np.zeros((0, 3)), self.cfg)


class OcclusionInputs:
    """S-Net inputs of copies of one slice that differ from it inside small windows, from the slice's own channels
    plus each copy's change. Every step of :func:`~sscild.scoring.snet_input.prepare_grid` is linear (the crop, the
    antialiased resampling ``R @ a @ R.T``, the Gaussian denoising inside the lung, the resampling of the texture
    moments) or acts pixel by pixel (clipping, squaring); so a change confined to a window changes the resampled
    HU and moments only by the resampled change of the window (grown by the denoising radius). The texture's last
    step (5x5 smoothing, variance, square root) is then done on the ``size`` grid for every copy. float64 here,
    float32 in ``prepare_grid``: the inputs agree to ~1e-6."""

    def __init__(self, image: np.ndarray, lung: np.ndarray, cfg: SNetConfig, pixel_mm: float | None):
        import torch
        import torch.nn.functional as F
        from scipy import ndimage as ndi

        from .snet_input import _cut

        self.cfg, c = cfg, lung_crop(lung, cfg.margin)
        self.crop, self.shape = c, image.shape
        self.lu = prepare_grid(image[None], lung[None], cfg, pixel_mm=pixel_mm)[1][0]
        eye = torch.eye(c.side, dtype=torch.float64)[:, None, :, None].expand(-1, -1, -1, 2)   # (a width of 1
        self.r = F.interpolate(eye, size=(cfg.size, 2), mode="bilinear", antialias=True,     # takes another path)
                               align_corners=False)[:, 0, :, 0].T.numpy()          # (size, side): one axis
        self.hu_cut = _cut(image, c, -1000.0).astype(np.float64)
        self.hu = self._resample(self.hu_cut, slice(None), slice(None))
        if not cfg.texture:
            return
        self.mc = _cut(lung, c, False).astype(np.float64)
        sig = cfg.denoise_mm / pixel_mm if (pixel_mm and cfg.denoise_mm > 0) else 0.0
        self.rad = int(np.ceil(3 * sig)) if sig > 0.3 else 0
        self.blur = (lambda a: ndi.gaussian_filter(a, sig, radius=self.rad, mode="constant")) if self.rad else None
        self.norm = self.mc / np.maximum(self.blur(self.mc), 1e-6) if self.rad else self.mc
        self.xd = self._denoise(self._moment_input(_cut(image, c, cfg.hu_min).astype(np.float64), slice(None),
                                                   slice(None)))
        all_ = (slice(None), slice(None))
        self.t = np.stack([self._resample(a, *all_) for a in (self.xd, self.xd ** 2, self.mc)])

    def _resample(self, a: np.ndarray, rows: slice, cols: slice) -> np.ndarray:
        return self.r[:, rows] @ a @ self.r[:, cols].T

    def _moment_input(self, hu: np.ndarray, rows: slice, cols: slice) -> np.ndarray:
        cfg = self.cfg
        return (np.clip(hu, cfg.hu_min, cfg.hu_max) - cfg.hu_min) * self.mc[rows, cols] / 1000.0

    def _denoise(self, x: np.ndarray, rows: slice = slice(None), cols: slice = slice(None)) -> np.ndarray:
        return self.blur(x) * self.norm[rows, cols] if self.rad else x

    def _change(self, window, change: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The change of the resampled HU (size, size) and of the two moments (2, size, size) of one copy."""
        c, side = self.crop, self.crop.side
        ys, xs = window
        r0, r1 = max(ys.start - c.y0, 0), min(ys.stop - c.y0, side)       # the window inside the crop
        c0, c1 = max(xs.start - c.x0, 0), min(xs.stop - c.x0, side)
        if r0 >= r1 or c0 >= c1:
            return np.zeros_like(self.hu), np.zeros((2,) + self.hu.shape)
        d = np.asarray(change, np.float64)[r0 + c.y0 - ys.start: r1 + c.y0 - ys.start,
                                           c0 + c.x0 - xs.start: c1 + c.x0 - xs.start]
        win = (slice(r0, r1), slice(c0, c1))
        d_hu = self._resample(d, *win)
        if not self.cfg.texture:
            return d_hu, np.zeros((2,) + self.hu.shape)
        g = self.rad                                                        # the denoising reaches g pixels
        gr = (slice(max(r0 - g, 0), min(r1 + g, side)), slice(max(c0 - g, 0), min(c1 + g, side)))
        dx = np.zeros((gr[0].stop - gr[0].start, gr[1].stop - gr[1].start))
        inner = (slice(r0 - gr[0].start, r1 - gr[0].start), slice(c0 - gr[1].start, c1 - gr[1].start))
        dx[inner] = self._moment_input(self.hu_cut[win] + d, *win) - self._moment_input(self.hu_cut[win], *win)
        xd = self.xd[gr]
        xd_new = xd + self._denoise(dx, *gr)
        return d_hu, np.stack([self._resample(xd_new - xd, *gr), self._resample(xd_new ** 2 - xd ** 2, *gr)])

    def inputs(self, windows, changes) -> np.ndarray:
        """(N, C, size, size) float32 network inputs of the copies (see :meth:`SNetScorer.occluded`)."""
        import torch
        import torch.nn.functional as F

        parts = [self._change(w, d) for w, d in zip(windows, changes)]
        hu = (self.hu[None] + np.stack([p[0] for p in parts])).astype(np.float32)
        lu = np.broadcast_to(self.lu, hu.shape)
        if not self.cfg.texture:
            return to_input(hu, lu, self.cfg)
        n, size = len(parts), self.cfg.size
        t = np.concatenate([self.t[None, :2] + np.stack([p[1] for p in parts]),
                            np.broadcast_to(self.t[2], (n, 1, size, size))], axis=1)
        g = np.exp(-0.5 * np.arange(-2, 3) ** 2)
        k = torch.from_numpy(np.outer(g, g) / np.outer(g, g).sum())[None, None]
        sm = F.conv2d(torch.from_numpy(np.ascontiguousarray(t)).reshape(3 * n, 1, size, size), k,
                      padding=2).reshape(n, 3, size, size).numpy()
        w = np.maximum(sm[:, 2], 1e-6)
        mean = sm[:, 0] / w
        sd = np.sqrt(np.maximum(sm[:, 1] / w - mean ** 2, 0.0)) * 1000.0
        return to_input(hu, lu, self.cfg, np.where(sm[:, 2] > 0.05, sd, 0.0).astype(np.float32))


def score_levels(model, cfg: SNetConfig, scan, lung_mask: np.ndarray, levels_z: dict[str, float | None],
                 device: str = "cpu") -> dict[str, Any]:
    """S-Net scores of the level slices of a scan: per level TOT/GG/RET (%) and the Goh extent (mean TOT over
    the levels scored, "extensive" when > 20 %)."""
    scorer = SNetScorer(model, cfg, device, pixel_mm=float(scan.spacing[1]))
    per: dict[str, Any] = {}
    for name in LEVELS:
        z = levels_z.get(name)
        k = scan.slice_at_z(z) if z is not None else None
        if k is None or not lung_mask[k].any():
            per[name] = {"TOT": None, "GG": None, "RET": None, "slice": k,
                         "note": "level not found in the scan" if k is None else "no lung on the level slice"}
            continue
        s = scorer(scan.hu[k][None].astype(np.float32), lung_mask[k][None])[0]
        per[name] = {"TOT": float(s[0]), "GG": float(s[1]), "RET": float(s[2]), "slice": int(k)}
    tots = [v["TOT"] for v in per.values() if v["TOT"] is not None]
    ext = float(np.mean(tots)) if tots else None
    return {"levels": per, "goh_extent": ext, "n_levels_scored": len(tots),
            "stage": None if ext is None else ("extensive" if ext > 20.0 else "limited")}


# --------------------------------------------------------------------------------------------
# weights
# --------------------------------------------------------------------------------------------
def snet_card(cfg: SNetConfig, *, description: str, **kw) -> dict:
    """A model card for S-Net weights (:func:`sscild.bundle.model_card`; ``kw``: label_kind, training, metrics,
    heatmap, notes)."""
    from ..bundle import model_card

    return model_card("snet", "S-Net", cfg, description=description, **kw,
                      input={"description": f"level slice cropped to the lungs, {cfg.size}x{cfg.size}, HU "
                                            f"{cfg.hu_min:.0f}..{cfg.hu_max:.0f} + lung mask" +
                                            (" + local HU SD at the scan's resolution" if cfg.texture else ""),
                             "outputs": "TOT, GG, RET in % of the slice's lung area"})


def save_snet(model, cfg: SNetConfig, directory: str | Path, card: dict | None = None, **kw) -> Path:
    """Write an S-Net bundle (:func:`sscild.bundle.save_model`; ``kw``: predictions, allow_package)."""
    from ..bundle import save_model

    return save_model(model, cfg, directory, card or snet_card(cfg, description="not recorded"), **kw)


def config_from_card(card: dict) -> SNetConfig:
    """The S-Net config a card describes (weights saved before the texture channel have none)."""
    from ..bundle import card_config

    return card_config(SNetConfig, card, {"texture": False})


def load_snet(directory: str | Path | None = None, device: str = "cpu"):
    """Load an S-Net, its config and card (default: the shipped weights); ``ModelError`` when missing, corrupt
    or unfit."""
    from ..bundle import load_bundle

    directory = Path(directory) if directory is not None else DEFAULT_DIR
    model, card = load_bundle(directory, "snet", lambda c: build_snet(config_from_card(c)), what="S-Net",
                              train_hint="sscild train scoring --config ...", device=device)
    return model, config_from_card(card), card


def load_init(model, path: str | Path):
    """``--init PATH``: start from a user's checkpoint (a folder with model.safetensors, or the file itself);
    tensors whose shapes do not match (e.g. another head) are skipped and reported."""
    from safetensors.torch import load_file

    from ..errors import ModelError

    p = Path(path)
    f = p / "model.safetensors" if p.is_dir() else p
    if not f.exists():
        raise ModelError(f"--init {path}: no such checkpoint (a folder with model.safetensors or a .safetensors file)")
    state = load_file(str(f))
    own = model.state_dict()
    keep = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not keep:
        raise ModelError(f"--init {path}: none of its tensors fit this network ({len(state)} tensors); is it an "
                         "S-Net checkpoint of the same backbone?")
    model.load_state_dict(keep, strict=False)
    return model, sorted(set(own) - set(keep))


def evaluation_table(pred: np.ndarray, truth: np.ndarray) -> dict[str, dict[str, float]]:
    """MAE, SD, weighted kappa (5 % categories) and ICC per pattern."""
    from ..evaluate import icc, mae, weighted_kappa

    out = {}
    for j, p in enumerate(PATTERNS):
        m, sd = mae(pred[:, j], truth[:, j])
        out[p] = {"MAE": m, "MAE_SD": sd, "kappa": weighted_kappa(pred[:, j], truth[:, j]),
                  "ICC": icc(pred[:, j], truth[:, j]).value if len(pred) >= 3 else float("nan")}
    return out
