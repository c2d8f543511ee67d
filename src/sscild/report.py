"""Reports people read: ``report.html`` per scan and a longitudinal page per patient.

The report is a set of plain files in the output folder (HTML + PNG, no scripts, no external resources), so it
opens offline in any browser. It never shows a patient's name, id or dates unless ``show_phi`` is set.

Goh staging (Goh et al., AJRCCM 2008): extent > 20 % -> extensive, else limited; for an extent between 10 and
30 % with FVC known, FVC < 70 % predicted -> extensive, FVC >= 70 % -> limited.
"""
from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from . import __version__
from .scan import CTScan
from .util import atomic_path, draw_contour

LEVELS = ("L1", "L2", "L3", "L4", "L5")
LEVEL_NAMES = {"L1": "origin of the great vessels", "L2": "main carina", "L3": "pulmonary venous confluence",
               "L4": "halfway L3-L5", "L5": "1 cm above the right hemidiaphragm"}


def goh_stage(extent: float | None, fvc_pct: float | None = None) -> tuple[str, str]:
    """Goh stage ("limited"/"extensive"/"unknown") and the rule that decided it."""
    if extent is None or not np.isfinite(extent):
        return "unknown", "no extent measured"
    if fvc_pct is not None and np.isfinite(fvc_pct) and 10.0 <= extent <= 30.0:
        stage = "extensive" if fvc_pct < 70.0 else "limited"
        return stage, f"extent {extent:.1f} % is indeterminate (10-30 %); FVC {fvc_pct:.0f} % {'<' if fvc_pct < 70 else '>='} 70 %"
    return ("extensive", f"extent {extent:.1f} % > 20 %") if extent > 20.0 else \
        ("limited", f"extent {extent:.1f} % <= 20 %")


@dataclass(frozen=True)
class ReportInput:
    """Everything the report shows; every part but the scan, lungs and levels is optional.

    ``levels`` maps "L1".."L5" to dicts with ``z_mm``, ``slice_index`` (as read), ``confidence``, ``note``
    (as in levels.json). ``scores`` maps levels to {"TOT","GG","RET"}; ``derived_scores`` likewise;
    ``heatmap_pngs`` maps level -> pattern -> PNG file name in the output folder.
    """

    scan: CTScan
    lungs: np.ndarray
    levels: Mapping[str, Mapping[str, Any]]
    density: Mapping[str, Any] | None = None
    volumes_ml: Mapping[str, float] | None = None
    scores: Mapping[str, Mapping[str, float]] | None = None
    goh_extent: float | None = None
    derived_scores: Mapping[str, Mapping[str, float]] | None = None
    lesion_labels: np.ndarray | None = None
    lesion_summary: Mapping[str, Any] | None = None
    heatmap_pngs: Mapping[str, Mapping[str, str]] | None = None
    warnings: Sequence[str] = ()
    model_cards: Sequence[Mapping[str, Any]] = ()
    fvc_pct: float | None = None
    phi: Mapping[str, str] | None = None
    timings: Mapping[str, float] = field(default_factory=dict)
    title: str = "sscild report"


# --------------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    _plt().close(fig)


def _array_index(scan: CTScan, entry: Mapping[str, Any]) -> int | None:
    z = entry.get("z_mm") if entry else None
    return None if z is None else scan.slice_at_z(float(z))


def coronal_overview(scan: CTScan, lungs: np.ndarray, levels: Mapping[str, Mapping[str, Any]], path: Path) -> None:
    """Coronal slice through the lungs, lung window, lung contour, the five level lines labelled."""
    plt = _plt()
    ys = np.nonzero(lungs.any(axis=(0, 2)))[0]
    y = int(np.median(ys)) if len(ys) else scan.shape[1] // 2
    cor = scan.hu[:, y, :]
    zlen = scan.shape[0] * scan.spacing[0]
    xlen = scan.shape[2] * scan.spacing[2]
    z_lo, z_hi = scan.z_mm(0), scan.z_mm(scan.shape[0] - 1)
    fig, ax = plt.subplots(figsize=(5.5, 5.5 * zlen / xlen if xlen else 5.5), dpi=100)
    ext = (0, xlen, z_lo, z_hi)
    ax.imshow(cor, cmap="gray", vmin=-1350, vmax=150, origin="lower", extent=ext, aspect="equal")
    if lungs[:, y, :].any():
        xs = (np.arange(scan.shape[2]) + 0.5) * scan.spacing[2]
        ax.contour(xs, scan.z_positions(), (lungs[:, y, :] > 0).astype(float), levels=[0.5], colors="yellow",
                   linewidths=0.7)
    for name in LEVELS:
        e = levels.get(name) or {}
        if e.get("z_mm") is None:
            continue
        ax.axhline(float(e["z_mm"]), color="#ff7f0e", lw=1.2)
        ax.text(2, float(e["z_mm"]) + 2, f"{name}  z={float(e['z_mm']):.0f} mm", color="#ff7f0e", fontsize=8,
                va="bottom")
    ax.set_xlabel("patient right  <-  x (mm)  ->  patient left")
    ax.set_ylabel("world z (mm), head up")
    ax.set_title("Coronal overview with the five Goh levels", fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def level_panel(scan: CTScan, lungs: np.ndarray, k: int, path: Path, title: str,
                lesion_labels: np.ndarray | None = None) -> None:
    """One level slice: lung window, lung contours, lesion overlay (GG yellow-orange, RET red) when given."""
    plt = _plt()
    from matplotlib.colors import ListedColormap

    sy, sx = scan.spacing[1], scan.spacing[2]
    ext = (0, scan.shape[2] * sx, scan.shape[1] * sy, 0)
    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    ax.imshow(scan.hu[k], cmap="gray", vmin=-1350, vmax=150, extent=ext)
    if lesion_labels is not None:
        les = np.ma.masked_where(lesion_labels[k] < 2, lesion_labels[k])
        ax.imshow(les, cmap=ListedColormap(["#ffb000", "#e8000b"]), vmin=2, vmax=3, alpha=0.45, extent=ext,
                  interpolation="nearest")
    draw_contour(ax, lungs[k] > 0, (sy, sx), colors="#00e5ff", linewidths=0.7)
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)


# --------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1b1b1b;max-width:1200px}
h1{font-size:1.5em;margin-bottom:0} .sub{color:#555;margin-top:4px}
.summary{display:flex;gap:16px;flex-wrap:wrap;margin:16px 0}
.card{border:1px solid #ddd;border-radius:8px;padding:12px 16px;min-width:160px}
.card .v{font-size:1.6em;font-weight:600} .card .k{color:#555;font-size:.85em}
.extensive{color:#b00020} .limited{color:#1b7f3b}
.levels{display:grid;grid-template-columns:repeat(auto-fill,minmax(280px,1fr));gap:14px}
.level{border:1px solid #ddd;border-radius:8px;padding:8px} .level img{width:100%}
table{border-collapse:collapse;margin:8px 0} td,th{border:1px solid #ddd;padding:4px 8px;text-align:right}
th{background:#f4f4f4} td:first-child,th:first-child{text-align:left}
.warn{background:#fff4e5;border-left:4px solid #ff9800;padding:8px 12px;margin:6px 0}
.hm{display:flex;gap:4px} .hm img{width:32%} footer{color:#777;font-size:.85em;margin-top:24px}
"""


def _fmt(v: Any, nd: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    try:
        f = float(v)
    except (TypeError, ValueError):
        return html.escape(str(v))
    return "-" if not np.isfinite(f) else f"{f:.{nd}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    h = "".join(f"<th>{html.escape(str(c))}</th>" for c in header)
    body = "".join("<tr>" + "".join(f"<td>{c if isinstance(c, str) else _fmt(c)}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table><tr>{h}</tr>{body}</table>"


def _density_rows(density: Mapping[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """Flatten a density dict {region: {metric: value}} (any nesting one level deep) into table rows."""
    regions = [(k, v) for k, v in density.items() if isinstance(v, Mapping)]
    metrics: list[str] = []
    for _, v in regions:
        for m, x in v.items():
            if not isinstance(x, Mapping) and m not in metrics:
                metrics.append(m)
    return ["region"] + metrics, [[r] + [v.get(m) for m in metrics] for r, v in regions]


def write_report(inp: ReportInput, outdir: str | os.PathLike, *, show_phi: bool = False) -> Path:
    """Write ``report.html`` and its PNGs into ``outdir``; returns the HTML path."""
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    scan, lungs = inp.scan, inp.lungs
    coronal_overview(scan, lungs, inp.levels, out / "report_coronal.png")
    stage, rule = goh_stage(inp.goh_extent, inp.fvc_pct)

    parts: list[str] = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(inp.title)}"
                        f"</title><style>{_CSS}</style></head><body>"]
    parts.append(f"<h1>{html.escape(inp.title)}</h1>")
    sub = f"sscild {__version__} &middot; research software, not a medical device"
    if show_phi and inp.phi:
        sub += " &middot; " + " &middot; ".join(f"{html.escape(k)}: {html.escape(str(v))}" for k, v in inp.phi.items())
    parts.append(f"<p class='sub'>{sub}</p>")

    vol = inp.volumes_ml or {}
    cards = []
    if inp.goh_extent is not None:
        cards.append(("Goh extent (mean of 5 levels)", f"{inp.goh_extent:.1f} %", ""))
        cards.append(("Goh stage", stage, stage))
    if vol:
        cards.append(("Lung volume", f"{(vol.get('total') or 0) / 1000:.2f} L", ""))
    if inp.lesion_summary and isinstance(inp.lesion_summary.get("whole"), Mapping):
        inv = inp.lesion_summary["whole"].get("involvement_pct", inp.lesion_summary["whole"].get("TOT_pct"))
        if inv is not None:
            cards.append(("Lung involvement (lesions)", f"{float(inv):.1f} %", ""))
    parts.append("<div class='summary'>" + "".join(
        f"<div class='card'><div class='k'>{html.escape(k)}</div><div class='v {c}'>{html.escape(v)}</div></div>"
        for k, v, c in cards) + "</div>")
    if inp.goh_extent is not None:
        parts.append(f"<p>Stage rule: {html.escape(rule)}.</p>")

    for w in inp.warnings:
        parts.append(f"<div class='warn'>{html.escape(str(w))}</div>")

    parts.append("<h2>Overview</h2><img src='report_coronal.png' alt='coronal overview with level lines' "
                 "style='max-width:520px'>")

    parts.append("<h2>Goh levels</h2><div class='levels'>")
    for name in LEVELS:
        e = inp.levels.get(name) or {}
        k = _array_index(scan, e)
        head = f"<b>{name}</b> {LEVEL_NAMES[name]}"
        if k is None:
            parts.append(f"<div class='level'>{head}<p>not found: {html.escape(str(e.get('note', '')))}</p></div>")
            continue
        png = f"report_{name}.png"
        level_panel(scan, lungs, k, out / png,
                    f"{name}: z = {float(e['z_mm']):.1f} mm, slice {e.get('slice_index')}", inp.lesion_labels)
        rows = []
        for label, src in (("S-Net", inp.scores), ("heat-map derived", inp.derived_scores)):
            if src and name in src:
                rows.append([label] + [src[name].get(p) for p in ("TOT", "GG", "RET")])
        if inp.lesion_summary and isinstance(inp.lesion_summary.get("levels"), Mapping) \
                and name in inp.lesion_summary["levels"]:
            lv = inp.lesion_summary["levels"][name]
            rows.append(["U-Net lesions"] + [lv.get(p, lv.get(f"{p}_pct")) for p in ("TOT", "GG", "RET")])
        tbl = _table(["% of lung area", "TOT", "GG", "RET"], rows) if rows else ""
        conf = e.get("confidence")
        hm = ""
        if inp.heatmap_pngs and name in inp.heatmap_pngs:
            hm = "<div class='hm'>" + "".join(
                f"<img src='{html.escape(f)}' alt='{name} {p} heat map'>" for p, f in inp.heatmap_pngs[name].items()) \
                + "</div>"
        parts.append(f"<div class='level'>{head}<br><img src='{png}' alt='{name} slice'>"
                     f"<small>confidence {_fmt(conf, 2)}; {html.escape(str(e.get('note', '')))}</small>{tbl}{hm}</div>")
    parts.append("</div>")

    if vol:
        parts.append("<h2>Lung volumes</h2>" + _table(["lung", "volume (mL)"], [[k, v] for k, v in vol.items()]))
    if inp.density:
        header, rows = _density_rows(inp.density)
        if rows:
            parts.append("<h2>Density metrics (model-free)</h2>" + _table(header, rows))
    if inp.lesion_summary:
        ls = {k: v for k, v in inp.lesion_summary.items() if k != "levels"}
        header, rows = _density_rows(ls)
        if rows:
            parts.append("<h2>Lesions (U-Net)</h2>" + _table(header, rows))
    if inp.model_cards:
        parts.append("<h2>Models used</h2><ul>" + "".join(
            f"<li><b>{html.escape(str(c.get('name', '?')))}</b>: {html.escape(str(c.get('trained_on', '')))}"
            f"{' &middot; ' + html.escape(str(c.get('metrics'))) if c.get('metrics') else ''}</li>"
            for c in inp.model_cards) + "</ul>")
    if inp.timings:
        parts.append("<h2>Timings</h2>" + _table(["stage", "seconds"], [[k, v] for k, v in inp.timings.items()]))
    parts.append(f"<footer>Generated by sscild {__version__}. Research software, not a medical device: every "
                 "measurement needs review by a qualified reader.</footer></body></html>")
    path = out / "report.html"
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(parts), encoding="utf-8")
    return path


def write_longitudinal(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, *, measures: Sequence[str],
                       date_key: str = "scan_date", patient_label: str = "patient", show_phi: bool = False) -> Path:
    """A page showing the change of each measurement over time for one patient's scans.

    ``rows`` are cohort-table rows of one patient (any order); dates are shown only with ``show_phi``,
    otherwise as days since the first scan.
    """
    import pandas as pd

    plt = _plt()
    path = Path(path)
    df = pd.DataFrame(list(rows))
    df["_date"] = pd.to_datetime(df[date_key], errors="coerce")
    df = df.sort_values("_date")
    days = (df["_date"] - df["_date"].min()).dt.days
    measures = [m for m in measures if m in df.columns and pd.to_numeric(df[m], errors="coerce").notna().any()]
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(patient_label)}</title>"
             f"<style>{_CSS}</style></head><body><h1>Longitudinal: {html.escape(patient_label)}</h1>"]
    x_label = "scan date" if show_phi else "days since first scan"
    xs = df[date_key].astype(str).tolist() if show_phi else days.tolist()
    for m in measures:
        ys = pd.to_numeric(df[m], errors="coerce").tolist()
        fig, ax = plt.subplots(figsize=(4.5, 2.6), dpi=100)
        ax.plot(range(len(ys)), ys, "o-")
        ax.set_xticks(range(len(ys)), [str(x) for x in xs], fontsize=7)
        ax.set_xlabel(x_label)
        ax.set_title(m, fontsize=9)
        fig.tight_layout()
        png = path.with_name(f"{path.stem}_{m}.png")
        _save(fig, png)
        parts.append(f"<img src='{png.name}' alt='{html.escape(m)} over time'>")
    parts.append(_table([x_label] + list(measures), [[x] + [r.get(m) for m in measures]
                                                     for x, r in zip(xs, df.to_dict('records'))]))
    parts.append("</body></html>")
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(parts), encoding="utf-8")
    return path
