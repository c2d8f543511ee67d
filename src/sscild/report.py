"""Reports people read: ``report.html`` per scan and a longitudinal page per patient.

The report is a set of plain files in the output folder (HTML + PNG, no scripts, no external resources), so it
opens offline in any browser. It never shows a patient's name, id or dates unless ``show_phi`` is set.

Goh staging is :func:`sscild.domain.goh_stage` (Goh et al., AJRCCM 2008): extent < 10 % limited, > 30 % extensive,
10-30 % decided by FVC (< 70 % predicted: extensive), "indeterminate (FVC needed)" without FVC. The fibrotic extent
(SENSCIS) counts reticulation (with honeycombing) and not pure ground glass. The report ends with a methods
paragraph generated from the run (:mod:`sscild.provenance`).
"""
from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from . import __version__
from .domain import COMBINED_LEVELS_RULE, LEVEL_NAMES, LEVELS, PATTERNS, goh_extent, goh_stage
from .figures import save_png
from .provenance import SLS2_COLUMNS, methods_paragraph, public_text, run_facts, sls2_values
from .scan import CTScan
from .util import atomic_path, draw_contour


@dataclass(frozen=True)
class GohSummary:
    """Goh extent and stage of one scan, with the fibrotic extent beside them.

    ``extent`` is the mean TOT of the scored levels; ``fibrotic_extent`` the mean RET of the same levels
    (reticulation incl. honeycombing; pure ground glass not counted, as SENSCIS reported the extent of fibrotic
    ILD); ``fibrotic_volume_pct`` the reticulation share of the whole lung volume from the lesion map.
    """

    extent: float | None
    n_levels: int
    extent_note: str
    stage: str
    rule: str
    fibrotic_extent: float | None
    fibrotic_volume_pct: float | None
    fvc_pct: float | None

    @property
    def stage_label(self) -> str:
        """The stage as shown to a reader: "indeterminate (FVC needed)" when FVC would decide."""
        return "indeterminate (FVC needed)" if self.stage == "indeterminate" else self.stage


def goh_summary(level_scores: Mapping[str, Mapping[str, Any]] | None, *, lesion_summary: Mapping[str, Any] | None
                = None, fvc_pct: float | None = None, extent: float | None = None) -> GohSummary:
    """Goh extent, stage and fibrotic extent from per-level scores (``scores.json`` ``levels``).

    ``extent`` is used only when no level scores are given (a precomputed Goh extent).

    >>> s = goh_summary({"L1": {"TOT": 5, "RET": 1}, "L2": {"TOT": 15, "RET": 3}, "L3": {"TOT": 25, "RET": 5}})
    >>> round(s.extent, 1), s.stage_label, round(s.fibrotic_extent, 1)
    (15.0, 'indeterminate (FVC needed)', 3.0)
    >>> goh_summary(None, extent=12.0, fvc_pct=60.0).stage
    'extensive'
    """
    if level_scores:
        ext = goh_extent({n: (v or {}).get("TOT") for n, v in level_scores.items()})
        value, n, note = ext.extent, ext.n_levels, ext.note
        fib = goh_extent({n: (v or {}).get("RET") for n, v in level_scores.items()}).extent
    else:
        value, n, note, fib = extent, 0, "no level scored" if extent is None else "precomputed extent", None
    st = goh_stage(value, fvc_pct, n if level_scores else None)
    whole = (lesion_summary or {}).get("whole") or {}
    fvol = whole.get("RET_pct")
    return GohSummary(value, n, note, st.stage, st.rule, fib,
                      None if fvol is None else float(fvol), fvc_pct)


@dataclass(frozen=True)
class ReportInput:
    """Everything the report shows; every part but the scan, lungs and levels is optional.

    ``levels`` maps "L1".."L5" to dicts with ``z_mm``, ``slice_index`` (as read), ``confidence``, ``note``
    (as in levels.json). ``scores`` maps levels to {"TOT","GG","RET"}; ``derived_scores`` likewise;
    ``uncertainty`` maps levels to the S-Net scores' uncertainty {"TOT","GG","RET"}
    (:func:`sscild.consensus.score_uncertainty`); ``heatmap_pngs`` maps level -> pattern -> PNG file name in the
    output folder. ``analysis`` (the ``analysis.json`` dict) and ``weights`` (the ``--weights`` folder) feed the
    methods paragraph; without ``analysis`` it is built from the other fields.
    """

    scan: CTScan
    lungs: np.ndarray
    levels: Mapping[str, Mapping[str, Any]]
    density: Mapping[str, Any] | None = None
    volumes_ml: Mapping[str, float] | None = None
    scores: Mapping[str, Mapping[str, float]] | None = None
    goh_extent: float | None = None
    derived_scores: Mapping[str, Mapping[str, float]] | None = None
    uncertainty: Mapping[str, Mapping[str, float]] | None = None
    lesion_labels: np.ndarray | None = None
    lesion_summary: Mapping[str, Any] | None = None
    heatmap_pngs: Mapping[str, Mapping[str, str]] | None = None
    warnings: Sequence[str] = ()
    model_cards: Sequence[Mapping[str, Any]] = ()
    fvc_pct: float | None = None
    phi: Mapping[str, str] | None = None
    timings: Mapping[str, float] = field(default_factory=dict)
    title: str = "sscild report"
    analysis: Mapping[str, Any] | None = None
    weights: str | None = None


# --------------------------------------------------------------------------------------------
# figures (matplotlib's object API: no global backend, no pyplot state)
# --------------------------------------------------------------------------------------------
def _figure(width_in: float, height_in: float, dpi: int = 100):
    from matplotlib.figure import Figure

    return Figure(figsize=(width_in, height_in), dpi=dpi)


def _array_index(scan: CTScan, entry: Mapping[str, Any]) -> int | None:
    z = entry.get("z_mm") if entry else None
    return None if z is None else scan.slice_at_z(float(z))


def coronal_overview(scan: CTScan, lungs: np.ndarray, levels: Mapping[str, Mapping[str, Any]], path: Path) -> None:
    """Coronal slice through the lungs, lung window, lung contour, the five level lines labelled."""
    ys = np.nonzero(lungs.any(axis=(0, 2)))[0]
    y = int(np.median(ys)) if len(ys) else scan.shape[1] // 2
    cor = scan.hu[:, y, :]
    # left to right: the lungs and 30 mm either side (a PET/CT's 700 mm field would shrink the lungs to a strip)
    xs_l = np.nonzero(lungs.any(axis=(0, 1)))[0]
    m = int(np.ceil(30.0 / scan.spacing[2]))
    x0, x1 = (max(0, int(xs_l.min()) - m), min(scan.shape[2], int(xs_l.max()) + m + 1)) if len(xs_l) else \
        (0, scan.shape[2])
    zlen = scan.shape[0] * scan.spacing[0]
    xlen = (x1 - x0) * scan.spacing[2]
    z_lo, z_hi = scan.z_mm(0), scan.z_mm(scan.shape[0] - 1)
    fig = _figure(5.5, max(3.2, 5.5 * zlen / xlen + 1.0) if xlen else 5.5)
    ax = fig.add_subplot()
    ext = (x0 * scan.spacing[2], x1 * scan.spacing[2], z_lo, z_hi)
    ax.imshow(cor[:, x0:x1], cmap="gray", vmin=-1350, vmax=150, origin="lower", extent=ext, aspect="equal")
    if lungs[:, y, :].any():
        xs = (np.arange(scan.shape[2]) + 0.5) * scan.spacing[2]
        ax.contour(xs, scan.z_positions(), (lungs[:, y, :] > 0).astype(float), levels=[0.5], colors="yellow",
                   linewidths=0.7)
    for name in LEVELS:
        e = levels.get(name) or {}
        if e.get("z_mm") is None:
            continue
        ax.axhline(float(e["z_mm"]), color="#ff7f0e", lw=1.2)
        ax.text(ext[0] + 2, float(e["z_mm"]) + 2, f"{name}  z={float(e['z_mm']):.0f} mm", color="#ff7f0e",
                fontsize=8, va="bottom")
    ax.set_xlim(ext[0], ext[1])
    ax.set_xlabel("patient right  <-  x (mm)  ->  patient left")
    ax.set_ylabel("world z (mm), head up")
    ax.set_title("Coronal overview with the five Goh levels", fontsize=10)
    fig.tight_layout()
    save_png(fig, path)


def level_panel(scan: CTScan, lungs: np.ndarray, k: int, path: Path, title: str,
                lesion_labels: np.ndarray | None = None) -> None:
    """One level slice: lung window, lung contours, lesion overlay (GG yellow-orange, RET red) when given."""
    from matplotlib.colors import ListedColormap

    sy, sx = scan.spacing[1], scan.spacing[2]
    ext = (0, scan.shape[2] * sx, scan.shape[1] * sy, 0)
    fig = _figure(6.0, 6.0, dpi=110)
    ax = fig.add_subplot()
    ax.imshow(scan.hu[k], cmap="gray", vmin=-1350, vmax=150, extent=ext)
    if lesion_labels is not None:
        les = np.ma.masked_where(lesion_labels[k] < 2, lesion_labels[k])
        ax.imshow(les, cmap=ListedColormap(["#ffb000", "#e8000b"]), vmin=2, vmax=3, alpha=0.45, extent=ext,
                  interpolation="nearest")
    draw_contour(ax, lungs[k] > 0, (sy, sx), colors="#00e5ff", linewidths=0.8)
    ax.set_axis_off()
    ax.set_title(title, fontsize=14)
    fig.tight_layout()
    save_png(fig, path)


# --------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1b1b1b;max-width:1280px}
h1{font-size:1.5em;margin-bottom:0} .sub{color:#555;margin-top:4px}
.summary{display:flex;gap:16px;flex-wrap:wrap;margin:16px 0}
.card{border:1px solid #ddd;border-radius:8px;padding:12px 16px;min-width:170px}
.card .v{font-size:1.6em;font-weight:600} .card .k{color:#555;font-size:.85em} .card .n{color:#555;font-size:.8em}
.extensive{color:#b00020} .limited{color:#1b7f3b} .indeterminate{color:#a15c00}
.levels{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:16px}
.level{border:1px solid #ddd;border-radius:8px;padding:8px} .level img{width:100%}
table{border-collapse:collapse;margin:8px 0} td,th{border:1px solid #ddd;padding:4px 8px;text-align:right}
th{background:#f4f4f4} td:first-child,th:first-child,td.t{text-align:left}
.warn{background:#fff4e5;border-left:4px solid #ff9800;padding:8px 12px;margin:6px 0}
.hm{display:flex;gap:4px} .hm img{width:32%} footer{color:#777;font-size:.85em;margin-top:24px}
.methods{background:#f7f7f7;border-left:4px solid #888;padding:10px 14px;line-height:1.45}
.model{margin:8px 0 14px} .model p{margin:2px 0} small.h{color:#555}
"""


def _fmt(v: Any, nd: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    try:
        f = float(v)
    except (TypeError, ValueError):
        return html.escape(str(v))
    return "-" if not np.isfinite(f) else f"{f:.{nd}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], nd: int = 1) -> str:
    """An HTML table; numbers right-aligned with ``nd`` decimals, text (beyond the first column) left-aligned."""
    h = "".join(f"<th>{html.escape(str(c))}</th>" for c in header)
    body = "".join("<tr>" + "".join(f"<td class='t'>{c}</td>" if isinstance(c, str) else f"<td>{_fmt(c, nd)}</td>"
                                    for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{h}</tr>{body}</table>"


def _counts_as_int(metric: str, v: Any) -> Any:
    """Voxel counts (``n_*``) are integers even when JSON stored them as floats."""
    if metric.startswith("n_") and isinstance(v, (float, np.floating)) and np.isfinite(v):
        return int(round(float(v)))
    return v


def _region_rows(regions: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Mapping[str, Any]]]:
    """(row name, {metric: value}) of a region dict; nested groups of regions (e.g. ``zones``) become one row each."""
    out: list[tuple[str, Mapping[str, Any]]] = []
    for name, v in regions.items():
        if not isinstance(v, Mapping):
            continue
        scalars = {m: x for m, x in v.items() if not isinstance(x, Mapping)}
        if scalars:
            out.append((f"{prefix}{name}", scalars))
        nested = {m: x for m, x in v.items() if isinstance(x, Mapping)}
        if nested:
            out += _region_rows(nested, prefix=f"{name}: ")
    return out


def _density_rows(density: Mapping[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """Flatten a region dict {region: {metric: value}} (groups of regions like ``zones`` one level deeper) into
    table rows; voxel counts as integers."""
    regions = _region_rows(density)
    metrics: list[str] = []
    for _, v in regions:
        metrics += [m for m in v if m not in metrics]
    return ["region"] + metrics, [[r] + [_counts_as_int(m, v.get(m)) for m in metrics] for r, v in regions]


# --------------------------------------------------------------------------------------------
# report sections: each returns HTML
# --------------------------------------------------------------------------------------------
def _header(inp: ReportInput, show_phi: bool) -> str:
    sub = f"sscild {__version__} &middot; research software, not a medical device"
    if show_phi and inp.phi:
        sub += " &middot; " + " &middot; ".join(f"{html.escape(k)}: {html.escape(str(v))}" for k, v in inp.phi.items())
    t = html.escape(inp.title)
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{t}</title><style>{_CSS}</style>"
            f"</head><body><h1>{t}</h1><p class='sub'>{sub}</p>")


def _card(key: str, value: str, css: str = "", note: str = "") -> str:
    n = f"<div class='n'>{html.escape(note)}</div>" if note else ""
    return (f"<div class='card'><div class='k'>{html.escape(key)}</div>"
            f"<div class='v {css}'>{html.escape(value)}</div>{n}</div>")


def _summary(inp: ReportInput, goh: GohSummary) -> str:
    """The cards a reader sees first: Goh stage and extent, fibrotic extent, involvement, lung volume."""
    cards = []
    if goh.extent is not None:
        cards.append(_card("Goh stage", goh.stage_label, goh.stage))
        cards.append(_card("Goh extent (S-Net, mean TOT)", f"{goh.extent:.1f} %", "", goh.extent_note))
    if goh.fibrotic_extent is not None:
        cards.append(_card("Fibrotic extent (mean RET)", f"{goh.fibrotic_extent:.1f} %", "",
                           "reticulation incl. honeycombing; pure ground glass not counted"))
    whole = (inp.lesion_summary or {}).get("whole") if inp.lesion_summary else None
    if isinstance(whole, Mapping) and whole.get("involvement_pct") is not None:
        ret = whole.get("RET_pct")
        cards.append(_card("Lung involvement (lesion U-Net)", f"{float(whole['involvement_pct']):.1f} %", "",
                           f"reticulation {float(ret):.1f} % of lung volume" if ret is not None else ""))
    vol = inp.volumes_ml or {}
    if vol.get("total") is not None:
        cards.append(_card("Lung volume", f"{float(vol['total']) / 1000:.2f} L"))
    out = "<div class='summary'>" + "".join(cards) + "</div>"
    if goh.extent is not None:
        fvc = f" FVC given: {goh.fvc_pct:.0f} % predicted." if goh.fvc_pct is not None else ""
        out += f"<p>Goh stage rule: {html.escape(goh.rule)}.{html.escape(fvc)}</p>"
    return out + "".join(f"<div class='warn'>{html.escape(str(w))}</div>" for w in inp.warnings)


def _level_rows(inp: ReportInput, name: str) -> list[list[Any]]:
    rows = []
    for label, src in (("S-Net", inp.scores), ("heat-map derived", inp.derived_scores)):
        if src and name in src:
            rows.append([label] + [src[name].get(p) for p in PATTERNS])
    if inp.uncertainty and name in inp.uncertainty:
        rows.append(["S-Net uncertainty (+-)"] + [inp.uncertainty[name].get(p) for p in PATTERNS])
    lv = (inp.lesion_summary or {}).get("levels") if inp.lesion_summary else None
    if isinstance(lv, Mapping) and name in lv:
        rows.append(["U-Net lesions"] + [lv[name].get(p, lv[name].get(f"{p}_pct")) for p in PATTERNS])
    return rows


def _level_card(inp: ReportInput, name: str, out: Path) -> str:
    """One Goh level: the slice with lesion overlay (large), its scores, confidence and heat maps."""
    e = inp.levels.get(name) or {}
    k = _array_index(inp.scan, e)
    head = f"<b>{name}</b> {LEVEL_NAMES[name]}"
    if k is None:
        return f"<div class='level'>{head}<p>not found: {html.escape(str(e.get('note', '')))}</p></div>"
    png = f"report_{name}.png"
    level_panel(inp.scan, inp.lungs, k, out / png,
                f"{name}: z = {float(e['z_mm']):.1f} mm, slice {e.get('slice_index')}", inp.lesion_labels)
    rows = _level_rows(inp, name)
    tbl = _table(["% of lung area", *PATTERNS], rows) if rows else ""
    hm = ""
    if inp.heatmap_pngs and name in inp.heatmap_pngs:
        hm = "<div class='hm'>" + "".join(f"<img src='{html.escape(f)}' alt='{name} {p} heat map'>"
                                          for p, f in inp.heatmap_pngs[name].items()) + "</div>"
    return (f"<div class='level'>{head}<br><img src='{png}' alt='{name} slice'><small>confidence "
            f"{_fmt(e.get('confidence'), 2)}; {html.escape(str(e.get('note', '')))}</small>{tbl}{hm}</div>")


#: How the levels were placed, by ``levels.json`` method.
LEVEL_METHODS = {"anatomy": "Levels placed from anatomy (model-free landmarks).",
                 "lnet": "Levels placed by L-Net alone (the anatomical levels were not available).",
                 "anatomy+lnet": f"Levels placed from anatomy and by L-Net, combined ({COMBINED_LEVELS_RULE}); each "
                                 "method's own positions are in analysis.json (levels_anatomy, levels_lnet)."}


def _levels_section(inp: ReportInput, out: Path) -> str:
    method = ((inp.analysis or {}).get("levels") or {}).get("method")
    head = f"<p>{html.escape(LEVEL_METHODS[method])}</p>" if method in LEVEL_METHODS else ""
    head += ("<p>S-Net's score is the headline number of each level (and of the Goh extent); the lesion map's area "
             "ratio of the same slice is shown beside it as a check. S-Net's uncertainty (+-) combines its spread "
             "over the slice mirrored and rotated with half its difference from the lesion map: where the two "
             "learned answers disagree, trust neither without looking at the slice.</p>") if inp.scores else ""
    return ("<h2>Goh levels</h2>" + head + "<p><small class='h'>Lung outline cyan; lesion overlay ground glass "
            "orange, reticulation red.</small></p><div class='levels'>"
            + "".join(_level_card(inp, n, out) for n in LEVELS) + "</div>")


def _tables(inp: ReportInput) -> str:
    parts = []
    if inp.volumes_ml:
        parts.append("<h2>Lung volumes</h2>" + _table(["lung", "volume (mL)"], [[k, v] for k, v in
                                                                            inp.volumes_ml.items()]))
    if inp.density:
        header, rows = _density_rows(inp.density)
        hr = inp.density.get("HAA_range_HU")
        cap = f"<p><small class='h'>HAA: share of lung voxels from {hr[0]:g} to {hr[1]:g} HU.</small></p>" \
            if isinstance(hr, Sequence) and len(hr) == 2 else ""
        if rows:
            parts.append("<h2>Density metrics (model-free)</h2>" + cap + _table(header, rows))
    if inp.lesion_summary:
        header, rows = _density_rows({k: v for k, v in inp.lesion_summary.items() if k != "levels"})
        if rows:
            parts.append("<h2>Lesions (U-Net)</h2>" + _table(header, rows) + _sls2_table(inp.lesion_summary))
    return "".join(parts)


def _stage_sections(inp: ReportInput) -> str:
    """Scan quality and the regional distribution, from ``inp.analysis`` (``regions.png`` is written beside)."""
    a = inp.analysis or {}
    parts = []
    q = a.get("quality")
    if isinstance(q, Mapping):
        rows = [[k, html.escape(v) if isinstance(v, str) else v] for k, v in q["measures"].items()]
        parts.append("<h2>Scan quality</h2><p>" + ("all checks passed" if q.get("ok") else
                                                   f"{len(q['warnings'])} check(s) failed (see the warnings)")
                     + "</p>" + _table(["check", "value"], rows))
    r = a.get("regions")
    if isinstance(r, Mapping):
        from .regions import REGIONS

        keys = ("volume_ml", "MLA_HU", "HAA_pct", "GG_pct", "RET_pct", "involvement_pct", "lesion_share_pct")
        rows = [[n] + [r["regions"][n].get(k) for k in keys] for n in REGIONS]
        pattern = " + ".join(r.get("pattern") or []) or "none"
        parts.append("<h2>Regional distribution</h2><img src='regions.png' alt='regional distribution' "
                     f"style='max-width:100%'><p>Predominance ({html.escape(str(r.get('measure')))}): "
                     f"{html.escape(pattern)}.</p>" + _table(["region", "volume (mL)", "MLA (HU)", "HAA %", "GG %",
                                                              "RET %", "involved %", "share of lesion %"], rows))
    return "".join(parts)


def _sls2_table(lesions: Mapping[str, Any]) -> str:
    vals = sls2_values(lesions)
    rows = []
    for c in SLS2_COLUMNS:
        key = next((k for k in vals if k.startswith(c.name)), None)
        rows.append([c.name, c.meaning, vals.get(key) if key else None, c.correspondence])
    return "<h3>As the SLS II quantitative scores</h3>" + _table(["SLS II", "meaning", "sscild (%)", "corresponds"],
                                                                  rows)


def _values_table(values: Any) -> str:
    """{pattern: {metric: v}} as a pattern x metric table, {metric: v} as one row."""
    if not isinstance(values, Mapping) or not values:
        return _render(values)
    if all(isinstance(v, Mapping) for v in values.values()):
        cols: list[str] = []
        for v in values.values():
            cols += [c for c in v if c not in cols]
        return _table(["", *cols], [[k] + [v.get(c) for c in cols] for k, v in values.items()], nd=3)
    flat = {k: v for k, v in values.items() if not isinstance(v, Mapping)}
    return _table(list(flat), [list(flat.values())], nd=3)


def _metrics_html(metrics: Any) -> str:
    """A card's metrics: a dict of values (older cards) or a list of metric sets (split, in-sample, n, values)."""
    if isinstance(metrics, Mapping):
        return _values_table(metrics)
    if not isinstance(metrics, (list, tuple)):
        return _render(metrics)
    out = []
    for m in metrics:
        if not isinstance(m, Mapping):
            out.append(_render(m))
            continue
        n = f", n = {m['n']}" if m.get("n") is not None else ""
        cap = f"{m.get('split', '?')}{' (in-sample)' if m.get('in_sample') else ''}{n}: " \
              f"{public_text(m.get('description', ''))}"
        out.append(f"<p><small class='h'>{html.escape(cap)}</small></p>" + _values_table(m.get("values")))
    return "".join(out)


def _render(v: Any) -> str:
    """Any card value as HTML: text without repository paths, dicts and lists as nested lists, never a repr."""
    if isinstance(v, Mapping):
        return "<ul>" + "".join(f"<li>{html.escape(str(k))}: {_render(x)}</li>" for k, x in v.items()
                                if x not in (None, "", [], {})) + "</ul>"
    if isinstance(v, (list, tuple)):
        return "<ul>" + "".join(f"<li>{_render(x)}</li>" for x in v) + "</ul>"
    if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool):
        return _fmt(v, 3)
    return html.escape(public_text(v))


def _models_section(inp: ReportInput, facts: Mapping[str, Any]) -> str:
    if not inp.model_cards:
        return ""
    sha = {m["name"]: m.get("weights_sha256") for m in facts.get("models") or []}
    items = []
    for c in inp.model_cards:
        name = str(c.get("name", "?"))
        h = sha.get(name)
        ver = f" (version {c['version']})" if c.get("version") not in (None, "") else ""
        trained = c.get("trained_on", c.get("training"))
        items.append(f"<div class='model'><b>{html.escape(name + ver)}</b>"
                     + (f" <small class='h'>weights sha256 {html.escape(h[:16])}&hellip;</small>" if h else "")
                     + (f"<p><small class='h'>Trained on:</small> {_render(trained)}</p>" if trained else "")
                     + ("<p><small class='h'>Measured on held-out data:</small></p>"
                        + _metrics_html(c.get("metrics")) if c.get("metrics") else "") + "</div>")
    return "<h2>Models used</h2>" + "".join(items)


def _facts(inp: ReportInput) -> dict[str, Any]:
    """Provenance facts of the run: from ``inp.analysis`` when given, else from the report's own fields."""
    a = dict(inp.analysis) if inp.analysis else {
        "software": {"name": "sscild", "version": __version__}, "timings_s": dict(inp.timings),
        "density": dict(inp.density or {}), "models": list(inp.model_cards),
        "scores": {"derived_thresholds": None}}
    return run_facts(a, weights=inp.weights, fvc_pct=inp.fvc_pct)


def _closing(inp: ReportInput, facts: Mapping[str, Any]) -> str:
    parts = []
    if inp.timings:
        parts.append("<h2>Timings</h2>" + _table(["stage", "seconds"], [[k, v] for k, v in inp.timings.items()],
                                                 nd=2))
    parts.append("<h2>Methods (generated from this run)</h2><p class='methods'>"
                 + html.escape(methods_paragraph(facts)) + "</p>")
    parts.append(f"<footer>Generated by sscild {__version__}. Research software, not a medical device: every "
                 "measurement needs review by a qualified reader.</footer></body></html>")
    return "".join(parts)


def write_report(inp: ReportInput, outdir: str | os.PathLike, *, show_phi: bool = False) -> Path:
    """Write ``report.html`` and its PNGs into ``outdir``; returns the HTML path.

    Sections in order: summary cards (Goh stage and extent, fibrotic extent, involvement, lung volume) and
    warnings; coronal overview; the five level slices with their scores; volume, density and lesion tables (with
    the SLS II names); the models used; timings; the methods paragraph.
    """
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    goh = goh_summary(inp.scores, lesion_summary=inp.lesion_summary, fvc_pct=inp.fvc_pct, extent=inp.goh_extent)
    facts = _facts(inp)
    coronal_overview(inp.scan, inp.lungs, inp.levels, out / "report_coronal.png")
    parts = [_header(inp, show_phi), _summary(inp, goh),
             "<h2>Overview</h2><img src='report_coronal.png' alt='coronal overview with level lines' "
             "style='max-width:520px'>",
             _levels_section(inp, out), _tables(inp), _stage_sections(inp), _models_section(inp, facts),
             _closing(inp, facts)]
    path = out / "report.html"
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(parts), encoding="utf-8")
    return path


def write_longitudinal(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, **kwargs: Any) -> Path:
    """Moved to :func:`sscild.longitudinal.write_longitudinal` (flags, per-year change, levels by anatomy); this
    name stays for existing callers."""
    from .longitudinal import write_longitudinal as _write

    return _write(rows, path, **kwargs)
