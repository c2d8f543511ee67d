"""`sscild analyze` and `sscild demo`."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from . import app
from .common import console


@app.command("analyze")
def analyze_cmd(
    input: Path = typer.Option(..., "-i", "--input", help="A DICOM series folder, or a .nii/.nii.gz/.mha/.nrrd "
                                                          "file."),
    out: str = typer.Option(..., "-o", "--out", help="Output folder (created; an earlier sscild output there is "
                                                     "replaced as a whole)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda (learned stages)."),
    heatmaps: bool = typer.Option(False, "--heatmaps", help="Explain the scores with heat maps (slower)."),
    lnet: bool = typer.Option(True, "--lnet/--no-lnet", help="Also place the levels with L-Net; the levels "
                                                          "scored combine both methods."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Folder with model subfolders overriding the "
                                                                   "shipped weights."),
    fvc: Optional[float] = typer.Option(None, "--fvc", help="FVC in % predicted: stages a Goh extent of 10-30 %."),
    show_phi: bool = typer.Option(False, "--show-phi", help="Put patient name, id, dates and the DICOM series/study "
                                                            "descriptions into analysis.json and the report."),
    series: Optional[str] = typer.Option(None, "--series", help="SeriesInstanceUID of the DICOM series to read "
                                                               "when the folder holds several (sscild prints its "
                                                               "choice and the alternatives)."),
    deidentify: bool = typer.Option(False, "--deidentify", help="Write seg.dcm with the DICOM basic "
                                                                "de-identification profile."),
    quiet: bool = typer.Option(False, "--quiet", help="Print nothing but errors."),
) -> None:
    """Measure one chest CT: lungs, airways, the five Goh levels, density (and scores, lesions when their
    models are available). Writes NIfTI masks in the input's geometry, JSON files and report.html."""
    from ..io import load_ct
    from ..modelset import ModelSet
    from ..outputs import check_output_dir, write_outputs
    from ..pipeline import analyze
    from ..settings import AnalysisSettings
    from ..util import pick_device

    check_output_dir(out, input)           # before the work: a bad output folder fails now, not after it
    st = AnalysisSettings(device=pick_device(device), heatmaps=heatmaps, lnet=lnet, weights=weights, fvc_pct=fvc,
                          show_phi=show_phi, deidentify=deidentify, quiet=quiet)
    models = ModelSet()
    if input.exists():
        models.preload(st.model_names, st.weights, st.device)      # loads while the scan is read
    scan = load_ct(input, series_uid=series)
    if scan.meta.get("series_note") and not quiet:
        console.print(f"[cyan]input:[/] {scan.meta['series_note']}")
    a = analyze(scan, st, models=models)
    written = write_outputs(a, scan, out)
    if not quiet:
        _print_summary(a, list(a.warnings) + list(written.warnings), written.folder)


def _levels_line(levels) -> str:
    return ", ".join(f"{n} {levels.z_mm[n]:.1f}" if levels.z_mm[n] is not None else f"{n} -" for n in levels.z_mm)


def _print_summary(a, warnings: list[str], folder: Path) -> None:
    v = a.volumes_ml
    console.print(f"lungs {v['total'] / 1000:.2f} L (right {v['right']:.0f} mL, left {v['left']:.0f} mL); "
                  f"HAA {a.density.regions['whole']['HAA_pct']:.1f} %")
    if a.levels is not None:
        console.print(f"levels (z mm, {a.levels.method}): " + _levels_line(a.levels))
    for name, lv in (("anatomy", a.levels_anatomy), ("L-Net", a.levels_lnet)):
        if lv is not None:
            console.print(f"  {name} alone: " + _levels_line(lv))
    if a.scores is not None and a.scores.goh_extent is not None:
        console.print(f"Goh extent {a.scores.goh_extent:.1f} % ({a.scores.extent_note}); stage {a.scores.goh_stage}")
    for w in warnings:
        console.print(f"[yellow]warning:[/] {w}")
    console.print(f"written to {folder}/ (report.html)")


@app.command("demo")
def demo_cmd(
    out: Path = typer.Option(Path("demo_out"), "-o", "--out", help="Output folder."),
    seed: int = typer.Option(3, "--seed", help="Phantom seed."),
    extent: float = typer.Option(25.0, "--extent", help="ILD extent of the phantom (% of lung)."),
    size: str = typer.Option("medium", "--size", help="Phantom size: small, medium or full."),
) -> None:
    """Run the whole pipeline on a synthetic patient with known truth and compare."""
    from rich.table import Table

    from ..demo import run_demo

    s = run_demo(out, seed=seed, extent=extent, size=size)
    t = Table(title=f"sscild demo: phantom seed {seed}, {'x'.join(map(str, s['shape_zyx'][::-1]))} voxels")
    t.add_column("measure")
    t.add_column("sscild", justify="right")
    t.add_column("truth", justify="right")
    t.add_row("lung Dice (right / left)", f"{s['right_dice']:.3f} / {s['left_dice']:.3f}", "1 / 1")
    mv, tv = s["volumes_ml"]["measured"], s["volumes_ml"]["true"]
    t.add_row("right lung (mL)", f"{mv['right']:.0f}", f"{tv['right']:.0f}")
    t.add_row("left lung (mL)", f"{mv['left']:.0f}", f"{tv['left']:.0f}")
    for n, d in s["levels_mm"].items():
        m = d["measured"]
        t.add_row(f"{n} z (mm)", "-" if m is None else f"{m:.1f}", f"{d['true']:.1f}")
    t.add_row("HAA (% of lung) / true ILD extent", f"{s['haa_pct']:.1f}", f"{s['true_extent_pct']['TOT']:.1f}")
    if "scores" in s:
        for n, d in s["scores"].items():
            m = "/".join("-" if d[p]["measured"] is None else f"{d[p]['measured']:.0f}" for p in ("TOT", "GG", "RET"))
            t.add_row(f"{n} TOT/GG/RET (%)", m, "/".join(f"{d[p]['true']:.0f}" for p in ("TOT", "GG", "RET")))
        g = s["goh_extent"]
        t.add_row("Goh extent (%)", "-" if g["measured"] is None else f"{g['measured']:.1f}", f"{g['true']:.1f}")
    if "lesions" in s:
        d = s["lesions"]["dice"]
        t.add_row("lesion Dice GG / RET / total", f"{d['GG']:.2f} / {d['RET']:.2f} / {d['lesion']:.2f}", "1 / 1 / 1")
        inv = s["lesions"]["involvement_pct"]
        t.add_row("lung involvement (%)", f"{inv['measured']:.1f}", f"{inv['true']:.1f}")
    t.add_row("time read / lungs / levels (s)",
              f"{s['read_s']:.2f} / {s['timings_s']['lungs']:.2f} / {s['timings_s'].get('levels', 0):.2f}", "")
    console.print(t)
    extra = f"; lesions against the truth: {s['lesions_png']}" if "lesions_png" in s else ""
    console.print(f"outputs in {out}/ (open report.html{extra})")
