"""`sscild train levels`: train L-Net from a YAML config."""
from __future__ import annotations

from pathlib import Path

import typer

from . import train_app
from .common import console


@train_app.command("levels")
def train_levels(
    config: Path = typer.Option(..., "--config", help="YAML config (see configs/lnet_phantoms.yaml)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the checkpoint in the output folder."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Train L-Net (3D regression of the five Goh levels); writes model.safetensors, card.json, metrics.jsonl."""
    from ..errors import ConfigError
    from ..scoring.lnet import train_from_config
    from ..util import pick_device

    if not config.exists():
        raise ConfigError(f"config {config} does not exist")
    out = train_from_config(config, resume=resume, device=pick_device(device), quiet=quiet)
    console.print(f"L-Net written to {out}/ (model.safetensors, card.json, metrics.jsonl)")


@train_app.command("scoring")
def train_scoring(
    config: Path = typer.Option(..., "--config", help="YAML config (see configs/snet_phantoms.yaml)."),
    init: Path = typer.Option(None, "--init", help="Start from your own checkpoint (folder or .safetensors)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the checkpoint in the output folder."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Train S-Net (TOT/GG/RET per level slice); writes model.safetensors, card.json, metrics.jsonl."""
    from ..errors import ConfigError
    from ..scoring.snet import train_from_config
    from ..util import pick_device

    if not config.exists():
        raise ConfigError(f"config {config} does not exist")
    out = train_from_config(config, resume=resume, device=pick_device(device), quiet=quiet, init=init)
    console.print(f"S-Net written to {out}/ (model.safetensors, card.json, metrics.jsonl)")


@train_app.command("lesions")
def train_lesions(
    config: Path = typer.Option(..., "--config", help="YAML config (see configs/lesions_phantoms.yaml)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Train the lesion U-Net (normal / GG / RET); writes model.safetensors, card.json, metrics.jsonl."""
    from ..errors import ConfigError
    from ..lesions import train_from_config
    from ..util import pick_device

    if not config.exists():
        raise ConfigError(f"config {config} does not exist")
    out = train_from_config(config, device=pick_device(device), quiet=quiet)
    console.print(f"lesion U-Net written to {out}/ (model.safetensors, card.json, metrics.jsonl)")


@train_app.command("heatmap-thresholds")
def train_heatmap_thresholds(
    weights: Path = typer.Option(None, "--weights", help="S-Net folder (default: the shipped S-Net)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Choose the heat-map thresholds (-4..0 % points) of an S-Net on validation phantoms; stored in its card."""
    from ..explain import calibrate_thresholds

    fit = calibrate_thresholds(weights, quiet=quiet)
    console.print(f"thresholds {fit.thresholds}; R^2 derived vs S-Net {fit.r2}")
