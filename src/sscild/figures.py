"""The figures of the output folder: ``levels.png`` and the demo's lesions-against-truth panel.

Figures are :class:`matplotlib.figure.Figure` objects saved straight to PNG: no pyplot, no global backend switch,
so a notebook's backend is left alone.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .domain import LEVELS, LesionClass, LungLabel
from .util import atomic_path, draw_contour

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .anatomy import Lungs
    from .levels import GohLevels
    from .scan import CTScan

LUNG_WINDOW = (-1350, 150)
LUNG_COLOURS = {LungLabel.RIGHT: "#00e5ff", LungLabel.LEFT: "#ff4fd8"}


PNG_COMPRESS_LEVEL = 1      # zlib level: 3x faster than matplotlib's default 6, files ~25 % larger


def save_png(fig: "Figure", path: str | Path, dpi: float | None = None) -> Path:
    """Write ``fig`` to ``path`` as PNG, atomically (every figure of the toolkit goes through here)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi if dpi is not None else "figure",
                    pil_kwargs={"compress_level": PNG_COMPRESS_LEVEL})
    return path


def levels_figure(scan: "CTScan", lungs: "Lungs", levels: "GohLevels") -> "Figure":
    """The five level slices side by side: lung window, lung contours, level name, world z and slice index."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(17, 3.9), dpi=90)
    axs = fig.subplots(1, 5)
    sy, sx = scan.spacing[1], scan.spacing[2]
    ext = (0, scan.shape[2] * sx, scan.shape[1] * sy, 0)
    for ax, n in zip(axs, LEVELS):
        k = levels.array_index(scan, n)
        ax.set_axis_off()
        if k is None:
            ax.text(0.5, 0.5, f"{n}: not placed\n{levels.notes[n][:60]}", ha="center", va="center", fontsize=8,
                    transform=ax.transAxes, wrap=True)
            continue
        ax.imshow(scan.hu[k], cmap="gray", vmin=LUNG_WINDOW[0], vmax=LUNG_WINDOW[1], extent=ext)
        for lab, col in LUNG_COLOURS.items():
            draw_contour(ax, lungs.labels[k] == lab, (sy, sx), colors=col, linewidths=0.7)
        ax.set_title(f"{n}  z = {levels.z_mm[n]:.1f} mm  slice {levels.slice_index[n]}\n"
                     f"confidence {levels.confidence[n]:.2f}", fontsize=9)
    fig.suptitle("Goh levels (L1 great-vessel origin, L2 carina, L3 venous confluence, L4 halfway, "
                 "L5 1 cm above right dome); cyan = right lung, magenta = left", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.94))      # leave the top for the suptitle (tight_layout ignores it)
    return fig


def levels_png(scan: "CTScan", lungs: "Lungs", levels: "GohLevels", path: str | Path) -> Path:
    """Write :func:`levels_figure` to ``path``."""
    return save_png(levels_figure(scan, lungs, levels), path)


def lesions_vs_truth_png(scan: "CTScan", levels: "GohLevels | None", predicted: np.ndarray,
                         truth: np.ndarray, path: str | Path) -> Path:
    """The level slices with the predicted lesions (top) and the true lesions (bottom): GG yellow, RET red."""
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    ks = [(n, levels.array_index(scan, n)) for n in LEVELS] if levels is not None else []
    ks = [(n, k) for n, k in ks if k is not None]
    cmap = ListedColormap(["#f2c500", "#d7191c"])
    fig = Figure(figsize=(3.2 * max(1, len(ks)), 6.6))
    axes = fig.subplots(2, max(1, len(ks)), squeeze=False)
    for j, (n, k) in enumerate(ks):
        for i, (lab, who) in enumerate(((predicted, "U-Net"), (truth, "truth"))):
            ax = axes[i, j]
            ax.imshow(scan.hu[k], cmap="gray", vmin=-1200, vmax=200)
            les = np.ma.masked_where(lab[k] < LesionClass.GG, lab[k] - int(LesionClass.GG))
            ax.imshow(les, cmap=cmap, vmin=0, vmax=1, alpha=0.55, interpolation="nearest")
            ax.set_title(f"{n} {who}", fontsize=9)
            ax.axis("off")
    fig.suptitle("lesions: ground glass (yellow), reticulation (red)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return save_png(fig, path, dpi=80)
