"""`sscild train levels|scoring|lesions|...`: train a model from a YAML config."""
from __future__ import annotations

from pathlib import Path

import typer

from . import train_app
from .common import console


_CONFIG_HELP = "YAML config (see configs/{})."
_RESUME = typer.Option(False, "--resume", help="Continue from the checkpoint in the output folder.")
_DEVICE = typer.Option("cpu", "--device", help="cpu or cuda.")
_INIT = typer.Option(None, "--init", help="Start from your own weights (a model folder; replaces the config's init:).")
_QUIET = typer.Option(False, "--quiet", help="No progress bars.")


def _train(what: str, module: str, config: Path, **kw) -> None:
    """Check the config exists, train from it with ``module``'s ``train_from_config``, say where the model went."""
    from importlib import import_module

    from ..errors import ConfigError
    from ..util import pick_device

    if not config.exists():
        raise ConfigError(f"config {config} does not exist")
    train_from_config = import_module(module, __package__).train_from_config
    out = train_from_config(config, device=pick_device(kw.pop("device")), **kw)
    console.print(f"{what} written to {out}/ (model.safetensors, card.json, metrics.jsonl)")


def _register_trainer(name: str, what: str, module: str, example: str, summary: str) -> None:
    """Add ``sscild train NAME``: train ``what`` from a YAML config (example: ``configs/EXAMPLE``) with the options
    every trainer shares (--init, --resume, --device, --quiet)."""

    def command(
        config: Path = typer.Option(..., "--config", help=_CONFIG_HELP.format(example)),
        init: Path = _INIT, resume: bool = _RESUME, device: str = _DEVICE, quiet: bool = _QUIET,
    ) -> None:
        _train(what, module, config, init=init, resume=resume, device=device, quiet=quiet)

    command.__doc__ = f"{summary}; writes model.safetensors, card.json, metrics.jsonl."
    command.__name__ = f"train_{name}"
    train_app.command(name)(command)


_register_trainer("levels", "L-Net", "..scoring.lnet", "lnet_phantoms.yaml",
                  "Train L-Net (3D regression of the five Goh levels)")


_register_trainer("scoring", "S-Net", "..scoring.snet", "snet_phantoms.yaml",
                  "Train S-Net (TOT/GG/RET per level slice)")


_register_trainer("lesions", "lesion U-Net", "..lesions", "lesions_phantoms.yaml",
                  "Train the lesion U-Net (normal / GG / RET)")


@train_app.command("scoring-calibration")
def train_scoring_calibration(
    weights: Path = typer.Option(..., "--weights", help="S-Net folder with validation.json (from sscild train "
                                 "scoring)."),
) -> None:
    """Fit an S-Net's output calibration (score = a * output + b per pattern) on its validation predictions and
    store it in its card (sscild train scoring does this at the end of training)."""
    from ..scoring.snet import calibrate_weights

    notes = calibrate_weights(weights)
    a_b = notes["calibration"]["a_b"]
    console.print("calibration " + ", ".join(f"{p} a={a_b[2 * i]:.3f} b={a_b[2 * i + 1]:.2f}"
                                             for i, p in enumerate(("TOT", "GG", "RET"))))


@train_app.command("heatmap-thresholds")
def train_heatmap_thresholds(
    weights: Path = typer.Option(None, "--weights", help="S-Net folder (default: the shipped S-Net)."),
    out: Path = typer.Option(None, "--out", help="Folder for the S-Net with the new thresholds (a copy of --weights; "
                             "default: --weights itself, updated in place). Needed for the shipped S-Net."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Choose the heat-map thresholds (-4..0 % points) of an S-Net on validation phantoms; stored in its card with
    the patch and stride they were fitted for. The installed package is never changed."""
    from ..explain import calibrate_thresholds

    fit = calibrate_thresholds(weights, quiet=quiet, out=out)
    console.print(f"thresholds {fit.thresholds}; R^2 derived vs S-Net {fit.r2}; written to {out or weights}/")
