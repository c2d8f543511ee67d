"""`sscild phantom`: write a synthetic chest CT with exact truth."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from . import app
from .common import console


@app.command("phantom")
def phantom(
    out: str = typer.Option(..., "-o", "--out", help="Output folder (scan + truth.json + truth masks)."),
    seed: int = typer.Option(0, "--seed", help="Anatomy, disease and noise are fixed by the seed."),
    extent: Optional[float] = typer.Option(None, "--extent", help="ILD extent, % of lung volume (0 = healthy; "
                                                                  "default drawn from the seed)."),
    size: str = typer.Option("small", "--size", help="small (128 px, 3 mm slices), medium (256 px) or full "
                                                     "(512 px, 0.7 mm, 1.5 mm slices)."),
    fmt: str = typer.Option("nifti", "--format", help="dicom (a folder of slices) or nifti (ct.nii.gz)."),
) -> None:
    """Write a synthetic chest CT and its exact truth (lungs, airways, lesions, Goh levels, scores)."""
    from ..errors import ConfigError
    from ..phantom import SIZES, make_phantom, write_phantom

    if not out.strip():
        raise ConfigError("the output folder name is empty: give one with -o, e.g. -o phantom")
    if size not in SIZES:
        raise ConfigError(f"--size must be one of {sorted(SIZES)}, got {size!r}")
    if fmt not in ("dicom", "nifti"):
        raise ConfigError(f"--format must be dicom or nifti, got {fmt!r}")
    if extent is not None and not 0 <= extent <= 90:
        raise ConfigError(f"--extent must be within 0..90 (% of lung), got {extent}")
    scan, truth = make_phantom(seed, size=size, extent=extent)
    files = write_phantom(scan, truth, Path(out), fmt=fmt)
    console.print(f"phantom seed {seed}: {scan.shape[2]}x{scan.shape[1]}x{scan.shape[0]} voxels, extent "
                  f"{truth.extent['TOT']:.1f} % (GG {truth.extent['GG']:.1f}, RET {truth.extent['RET']:.1f}); "
                  f"scan: {files['scan']}")
