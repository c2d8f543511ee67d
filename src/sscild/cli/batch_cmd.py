"""`sscild batch`: analyse every scan of a manifest on dask, resumably."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from . import app
from .common import console


@app.command("batch")
def batch(
    manifest: Path = typer.Argument(..., help="CSV with columns scan_id,path (+ series_uid to pick a DICOM series; "
                                              "patient_id, scan_date, clinical columns carried into the table)."),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder: scans/<scan_id>/, status/, cohort.csv, "
                                                      "cohort.parquet, failures.csv."),
    workers: int = typer.Option(1, "--workers", help="Local worker processes (one thread each)."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="Address of an existing dask scheduler, "
                                                                      "e.g. tcp://HOST:8786."),
    force: bool = typer.Option(False, "--force", help="Redo scans already done."),
    heatmaps: bool = typer.Option(False, "--heatmaps", help="Also compute heat maps (slower)."),
    lnet: bool = typer.Option(True, "--lnet/--no-lnet", help="Also place the levels with L-Net (levels scored: "
                                                          "both combined)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Folder with model subfolders overriding the "
                                                                   "shipped weights."),
    show_phi: bool = typer.Option(False, "--show-phi", help="Patient ids, dates and DICOM descriptions in the "
                                                            "outputs and the longitudinal pages."),
    deidentify: bool = typer.Option(False, "--deidentify", help="Write each seg.dcm with the DICOM basic "
                                                                "de-identification profile."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    overrides: Optional[Path] = typer.Option(None, "--overrides", help="A reviewer's overrides CSV from index.html "
                                             "(scan_id,action,level,slice,reason,reviewer); default OUT/overrides.csv "
                                             "when present."),
) -> None:
    """Analyse a cohort: one `sscild analyze` per manifest row; failures are recorded and the rest go on.

    A rerun skips the scans already done with the same input, options, software and models; the cohort table is
    rewritten after every finished scan; a second batch on the same output folder is refused while one runs.
    """
    from ..cohort import run_batch

    options = {"heatmaps": heatmaps, "device": device, "lnet": lnet, "show_phi": show_phi,
               "weights": str(weights) if weights else None}
    if deidentify:
        options["deidentify"] = True
    res = run_batch(manifest, out, workers=workers, scheduler=scheduler, force=force, quiet=quiet, options=options,
                    overrides=overrides)
    console.print(f"{res.n_done} done, {res.n_failed} failed, {res.n_skipped} skipped (already done) of "
                  f"{res.n_total}; table: {out / 'cohort.csv'}")
    console.print(f"QA gallery: {out / 'index.html'} (a reviewer's overrides.csv in OUT is honoured on the next run)")
    for r in res.failures.itertuples():
        console.print(f"  [red]failed[/] {r.scan_id}: {r.reason}")
