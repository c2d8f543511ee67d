"""Change over time for a patient with several scans: per-year change of each measure, the Goh levels matched by
anatomy, and progression flags with their published definitions side by side.

Input is cohort-table rows (``sscild batch``'s ``cohort.csv``) of one patient, with ``scan_date`` and optionally
``fvc_pct`` (FVC, % predicted) and ``dlco_pct`` (DLCO, % predicted) columns from the manifest.

Levels are matched by anatomy: ``L3`` of one scan is compared with ``L3`` of the next (the pulmonary venous
confluence in both), whatever their table positions; the page shows each scan's z of every level so a reader sees
how far they moved.

Progression flags (each names its definition and source; a flag is ``None`` when its inputs are missing):

=========================  ===========================================================================================
flag                       definition
=========================  ===========================================================================================
``fibrotic_extent_up``     fibrotic extent (mean RET of the Goh levels, else reticulation % of the lung volume) up by
                           >= 1 percentage point and >= 10 % of its first value, first to last scan. Operational
                           thresholds of sscild for "increased extent of fibrosis" (no published quantitative
                           threshold is implied).
``inbuild_fvc``            relative FVC decline >= 10 % predicted, or 5 to < 10 % with increased fibrotic extent,
                           within 24 months (INBUILD inclusion criteria, Flaherty et al., N Engl J Med
                           2019;381:1718-27); the symptom arms are not evaluated (no symptom data).
``ppf2022_physiological``  absolute FVC decline >= 5 % predicted (or DLCO >= 10 % predicted) within 1 year
                           (ATS/ERS/JRS/ALAT guideline, Raghu et al., Am J Respir Crit Care Med 2022;205:e18-e47).
``ppf2022_radiological``   increased fibrotic extent (as ``fibrotic_extent_up``) within 1 year (same guideline).
``ppf2022``                2 of 3 (symptoms, physiological, radiological) within 1 year; symptoms are unknown here, so
                           ``True`` only when both measured criteria hold, ``None`` when one does.
``goh2017_ssc``            relative FVC decline >= 10 %, or 5 to < 10 % with relative DLCO decline >= 15 %, within 1
                           year (Goh et al., Arthritis Rheumatol 2017;69:1670-8; SSc-ILD).
=========================  ===========================================================================================

"Within W" means a pair of scans (with the values) at most W apart; W gets a 10 % tolerance for visit scheduling
(1 year -> 401 days). The flag reports the pair that met it (or the largest decline seen).

Examples
--------
>>> rows = [{"scan_date": "2020-01-01", "goh_extent": 10.0, "fvc_pct": 80.0},
...         {"scan_date": "2021-01-01", "goh_extent": 16.0, "fvc_pct": 70.0}]
>>> t = patient_trend(rows)
>>> round(t.change("goh_extent").per_year, 1), t.flag("inbuild_fvc").met
(6.0, True)
"""
from __future__ import annotations

import html
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .domain import LEVEL_NAMES, LEVELS, PATTERNS, goh_extent
from .figures import save_png
from .util import atomic_path, finite_float

#: Whole-scan measures followed over time (cohort-table column -> label).
MEASURES: dict[str, str] = {
    "lung_volume_total_ml": "lung volume (mL)", "density_MLA_HU": "mean lung attenuation (HU)",
    "density_HAA_pct": "high-attenuation area (% of lung)", "density_skewness": "density skewness",
    "density_kurtosis": "density kurtosis", "goh_extent": "Goh extent (mean TOT, %)",
    "fibrotic_extent": "fibrotic extent (mean RET of the levels, %)",
    "lesions_involvement_pct": "lesion involvement (% of lung volume)", "lesions_GG_pct": "ground glass (% of lung)",
    "lesions_RET_pct": "reticulation (% of lung)",
    "regions_lower_involvement_pct": "lower-zone involvement (%)",
    "regions_dorsal_involvement_pct": "dorsal involvement (%)",
    "regions_subpleural_involvement_pct": "subpleural involvement (%)",
    "fvc_pct": "FVC (% predicted)", "dlco_pct": "DLCO (% predicted)"}
YEAR_DAYS = 365.25
WINDOW_TOLERANCE = 1.10
FIBROSIS_UP_PP = 1.0
FIBROSIS_UP_RELATIVE = 0.10
SOURCES = {
    "sscild": "operational threshold of sscild for 'increased extent of fibrosis' (INBUILD; ATS/ERS/JRS/ALAT 2022); "
              "not a published quantitative threshold",
    "inbuild": "Flaherty KR et al. Nintedanib in progressive fibrosing interstitial lung diseases (INBUILD). "
               "N Engl J Med 2019;381:1718-27",
    "ppf2022": "Raghu G et al. Idiopathic pulmonary fibrosis (an update) and progressive pulmonary fibrosis in adults: "
               "an official ATS/ERS/JRS/ALAT clinical practice guideline. Am J Respir Crit Care Med "
               "2022;205:e18-e47",
    "goh2017": "Goh NS et al. Short-term pulmonary function trends are predictive of mortality in interstitial lung "
               "disease associated with systemic sclerosis. Arthritis Rheumatol 2017;69:1670-8"}


@dataclass(frozen=True)
class Change:
    """One measure over time: first and last value, total change, least-squares slope per year, points used."""

    measure: str
    label: str
    values: list[float | None]
    first: float | None
    last: float | None
    change: float | None
    per_year: float | None
    n: int


@dataclass(frozen=True)
class Flag:
    """A progression flag: whether it is met (None: inputs missing), its definition, source and the evidence."""

    name: str
    met: bool | None
    definition: str
    source: str
    evidence: str


@dataclass(frozen=True)
class PatientTrend:
    """One patient's scans in date order, the change of every measure and level, and the progression flags."""

    label: str
    dates: list[str]
    days: list[int]
    changes: list[Change]
    levels: list[Change]
    level_z: dict[str, list[float | None]]
    flags: list[Flag]

    def change(self, measure: str) -> Change:
        return next(c for c in self.changes + self.levels if c.measure == measure)

    def flag(self, name: str) -> Flag:
        return next(f for f in self.flags if f.name == name)

    def to_dict(self, show_phi: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not show_phi:
            d.pop("dates")
        return d


def _change(measure: str, label: str, years: np.ndarray, values: Sequence[Any]) -> Change:
    vals = [finite_float(v) for v in values]
    ok = [i for i, v in enumerate(vals) if v is not None]
    if not ok:
        return Change(measure, label, vals, None, None, None, None, 0)
    first, last = vals[ok[0]], vals[ok[-1]]
    t = years[ok]
    slope = float(np.polyfit(t, [vals[i] for i in ok], 1)[0]) if len(ok) >= 2 and np.ptp(t) > 0 else None
    return Change(measure, label, vals, first, last, (last - first) if len(ok) >= 2 else None, slope, len(ok))


def fibrotic_extent(row: Mapping[str, Any]) -> float | None:
    """Fibrotic extent of one cohort row: ``fibrotic_extent`` if present, else the mean RET of the scored Goh levels
    (reticulation incl. honeycombing, pure ground glass not counted), else the reticulation % of the lung volume."""
    v = finite_float(row.get("fibrotic_extent"))
    if v is not None:
        return v
    ext = goh_extent({n: finite_float(row.get(f"{n}_RET")) for n in LEVELS}).extent
    return ext if ext is not None else finite_float(row.get("lesions_RET_pct"))


def _pairs(days: Sequence[int], a: Sequence[float | None], window_days: float, b=None):
    """Pairs (i, j), i before j, at most ``window_days`` (with tolerance) apart, with values in ``a`` (and ``b``)."""
    lim = window_days * WINDOW_TOLERANCE
    n = len(days)
    return [(i, j) for i in range(n) for j in range(i + 1, n) if 0 < days[j] - days[i] <= lim
            and a[i] is not None and a[j] is not None and (b is None or (b[i] is not None and b[j] is not None))]


def _fib_up(f0: float | None, f1: float | None) -> bool | None:
    if f0 is None or f1 is None:
        return None
    return (f1 - f0) >= FIBROSIS_UP_PP and (f0 <= 0 or (f1 - f0) >= FIBROSIS_UP_RELATIVE * f0)


def _rel(x0: float, x1: float) -> float:
    return 100.0 * (x0 - x1) / x0 if x0 else 0.0


def _txt(name: str, x: Sequence[float | None], days: Sequence[int], i: int, j: int, unit: str = "% predicted") -> str:
    return (f"{name} {x[i]:.1f} -> {x[j]:.1f} {unit} over {days[j] - days[i]} days "
            f"(absolute {x[i] - x[j]:+.1f}, relative {_rel(x[i], x[j]):+.1f} % decline)")


def _flag_fibrosis(days: Sequence[int], fib: Sequence[float | None]) -> Flag:
    ok = [i for i, v in enumerate(fib) if v is not None]
    d = (f"fibrotic extent up by >= {FIBROSIS_UP_PP:g} percentage point and >= {100 * FIBROSIS_UP_RELATIVE:g} % "
         "of its first value, first to last scan")
    if len(ok) < 2:
        return Flag("fibrotic_extent_up", None, d, SOURCES["sscild"], "fibrotic extent measured on < 2 scans")
    i, j = ok[0], ok[-1]
    return Flag("fibrotic_extent_up", _fib_up(fib[i], fib[j]), d, SOURCES["sscild"],
                f"fibrotic extent {fib[i]:.1f} -> {fib[j]:.1f} % over {days[j] - days[i]} days")


def _flag_inbuild(days: Sequence[int], fvc: Sequence[float | None], fib: Sequence[float | None]) -> Flag:
    d = ("relative FVC decline >= 10 % predicted, or 5 to < 10 % with increased fibrotic extent, within 24 months "
         "(symptom arms not evaluated)")
    pairs = _pairs(days, fvc, 2 * 365)
    if not pairs:
        return Flag("inbuild_fvc", None, d, SOURCES["inbuild"], "FVC needed at two dates within 24 months")
    met: bool | None = False
    best = max(pairs, key=lambda p: _rel(fvc[p[0]], fvc[p[1]]))
    for i, j in pairs:
        rel, up = _rel(fvc[i], fvc[j]), _fib_up(fib[i], fib[j])
        if rel >= 10 or (5 <= rel < 10 and up):
            met, best = True, (i, j)
            break
        if 5 <= rel < 10 and up is None:
            met = None
    i, j = best
    up = _fib_up(fib[i], fib[j])
    ev = _txt("FVC", fvc, days, i, j) + ("" if up is None else f"; fibrotic extent {'up' if up else 'not up'} "
                                                               f"({fib[i]:.1f} -> {fib[j]:.1f} %)")
    return Flag("inbuild_fvc", met, d, SOURCES["inbuild"], ev)


def _flag_ppf(days: Sequence[int], fvc: Sequence[float | None], dlco: Sequence[float | None],
              fib: Sequence[float | None]) -> list[Flag]:
    year = 365
    pf, pd_ = _pairs(days, fvc, year), _pairs(days, dlco, year)
    ev, phys = [], None
    # margin above each threshold (FVC 5, DLCO 10 points): the pair with the largest margin decides and is shown
    scored = [(fvc[i] - fvc[j] - 5, i, j, "FVC", fvc) for i, j in pf] + \
             [(dlco[i] - dlco[j] - 10, i, j, "DLCO", dlco) for i, j in pd_]
    if scored:
        margin, i, j, name, x = max(scored, key=lambda s: s[0])
        phys = bool(margin >= 0)
        ev.append(_txt(name, x, days, i, j))
    pr = _pairs(days, fib, year)
    rad = None if not pr else any(_fib_up(fib[i], fib[j]) for i, j in pr)
    if pr:
        i, j = max(pr, key=lambda p: fib[p[1]] - fib[p[0]])
        ev.append(f"fibrotic extent {fib[i]:.1f} -> {fib[j]:.1f} % over {days[j] - days[i]} days")
    both = True if (phys and rad) else (False if (phys is False and rad is False) else None)
    src = SOURCES["ppf2022"]
    return [Flag("ppf2022_physiological", phys, "absolute FVC decline >= 5 % predicted or DLCO decline >= 10 % "
                 "predicted within 1 year", src, ev[0] if (pf or pd_) else "FVC or DLCO needed at two dates "
                                                                           "within 1 year"),
            Flag("ppf2022_radiological", rad, "increased fibrotic extent (sscild's operational thresholds) within "
                 "1 year", src, ev[-1] if pr else "fibrotic extent needed on two scans within 1 year"),
            Flag("ppf2022", both, "at least 2 of 3 within 1 year: worse symptoms (not known here), physiological, "
                 "radiological progression", src, "; ".join(ev) or "no measurements within 1 year")]


def _flag_goh2017(days: Sequence[int], fvc: Sequence[float | None], dlco: Sequence[float | None]) -> Flag:
    d = "relative FVC decline >= 10 %, or 5 to < 10 % with relative DLCO decline >= 15 %, within 1 year (SSc-ILD)"
    pairs = _pairs(days, fvc, 365)
    if not pairs:
        return Flag("goh2017_ssc", None, d, SOURCES["goh2017"], "FVC needed at two dates within 1 year")
    met: bool | None = False
    best = max(pairs, key=lambda p: _rel(fvc[p[0]], fvc[p[1]]))
    for i, j in pairs:
        rel = _rel(fvc[i], fvc[j])
        has_dlco = dlco[i] is not None and dlco[j] is not None
        if rel >= 10 or (5 <= rel < 10 and has_dlco and _rel(dlco[i], dlco[j]) >= 15):
            met, best = True, (i, j)
            break
        if 5 <= rel < 10 and not has_dlco:
            met = None
    i, j = best
    ev = _txt("FVC", fvc, days, i, j)
    if dlco[i] is not None and dlco[j] is not None:
        ev += "; " + _txt("DLCO", dlco, days, i, j)
    return Flag("goh2017_ssc", met, d, SOURCES["goh2017"], ev)


def progression_flags(days: Sequence[int], fvc: Sequence[float | None], dlco: Sequence[float | None],
                      fib: Sequence[float | None]) -> list[Flag]:
    """All progression flags for scans at ``days`` (since the first) with FVC / DLCO (% predicted, None when not
    measured) and fibrotic extent (%) per scan; see the module docstring for the definitions."""
    return [_flag_fibrosis(days, fib), _flag_inbuild(days, fvc, fib), *_flag_ppf(days, fvc, dlco, fib),
            _flag_goh2017(days, fvc, dlco)]


def patient_trend(rows: pd.DataFrame | Sequence[Mapping[str, Any]], *, date_key: str = "scan_date",
                  label: str = "patient") -> PatientTrend:
    """The change over time of one patient's scans (cohort-table rows in any order).

    Raises ``ConfigError`` when a row has no readable date.
    """
    from .errors import ConfigError

    df = pd.DataFrame(rows if isinstance(rows, pd.DataFrame) else list(rows)).reset_index(drop=True)
    if date_key not in df.columns:
        raise ConfigError(f"longitudinal change needs a '{date_key}' column (the scan date) in the manifest")
    dt = pd.to_datetime(df[date_key].astype(str), errors="coerce", format="mixed")
    if dt.isna().any():
        bad = df.loc[dt.isna(), "scan_id"].tolist() if "scan_id" in df.columns else list(df.index[dt.isna()])
        raise ConfigError(f"unreadable {date_key} for scan(s) {bad}: give dates as YYYY-MM-DD")
    df = df.assign(_d=dt).sort_values("_d", kind="stable").reset_index(drop=True)
    days = [int(d) for d in (df["_d"] - df["_d"].iloc[0]).dt.days]
    years = np.asarray(days, float) / YEAR_DAYS
    recs = df.to_dict("records")
    df["fibrotic_extent"] = [fibrotic_extent(r) for r in recs]
    changes = [_change(m, lab, years, df[m]) for m, lab in MEASURES.items() if m in df.columns]
    levels = [_change(f"{n}_{p}", f"{n} {p} ({LEVEL_NAMES[n]})", years, df[f"{n}_{p}"])
              for n in LEVELS for p in PATTERNS if f"{n}_{p}" in df.columns]
    level_z = {n: [finite_float(v) for v in df[f"{n}_z_mm"]] for n in LEVELS if f"{n}_z_mm" in df.columns}
    col = {k: [finite_float(v) for v in df[k]] if k in df.columns else [None] * len(df) for k in ("fvc_pct", "dlco_pct")}
    flags = progression_flags(days, col["fvc_pct"], col["dlco_pct"], list(df["fibrotic_extent"]))
    return PatientTrend(label, [str(d.date()) for d in df["_d"]], days, changes, levels, level_z, flags)


# --------------------------------------------------------------------------------------------
# the page
# --------------------------------------------------------------------------------------------
def _plot(path: Path, xs: list, series: Mapping[str, list[float | None]], title: str, x_label: str) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.5, 2.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for name, ys in series.items():
        ax.plot(range(len(ys)), [np.nan if y is None else y for y in ys], "o-", label=name if len(series) > 1 else None)
    ax.set_xticks(range(len(xs)), [str(x) for x in xs], fontsize=7)
    ax.set_xlabel(x_label, fontsize=8)
    ax.set_title(title, fontsize=9)
    if len(series) > 1:
        ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    save_png(fig, path)
    return path


def _flags_html(flags: Sequence[Flag]) -> str:
    from .report import _table

    word = {True: "<b class='extensive'>met</b>", False: "<span class='limited'>not met</span>",
            None: "<span class='indeterminate'>not decidable</span>"}
    return _table(["flag", "result", "definition", "evidence", "source"],
                  [[f.name, word[f.met], html.escape(f.definition), html.escape(f.evidence), html.escape(f.source)]
                   for f in flags])


def _change_rows(changes: Sequence[Change]) -> list[list[Any]]:
    return [[html.escape(c.label), c.first, c.last, c.change, c.per_year, c.n] for c in changes if c.n]


def write_longitudinal(rows: pd.DataFrame | Sequence[Mapping[str, Any]], path: str | os.PathLike, *,
                       measures: Sequence[str] | None = None, date_key: str = "scan_date",
                       patient_label: str = "patient", show_phi: bool = False) -> Path:
    """A page for one patient: progression flags, per-year change of each measure and level, and the values per scan.

    ``rows`` are cohort-table rows of that patient (any order); ``measures`` limits the plotted whole-scan measures
    (default: all of :data:`MEASURES` present). Dates are shown only with ``show_phi``, otherwise days since the
    first scan. One PNG per plotted measure is written beside the page (``<page stem>_<measure>.png``).
    """
    from .report import _CSS, _table

    path = Path(path)
    t = patient_trend(rows, date_key=date_key, label=patient_label)
    x_label = "scan date" if show_phi else "days since first scan"
    xs = t.dates if show_phi else t.days
    want = list(measures) if measures is not None else list(MEASURES)
    shown = [c for c in t.changes if c.measure in want and c.n]
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(t.label)}</title>"
             f"<style>{_CSS}</style></head><body><h1>Longitudinal: {html.escape(t.label)}</h1>",
             f"<p class='sub'>{len(t.days)} scans over {t.days[-1]} days. Changes per year are least-squares slopes "
             "over all scans; levels are matched by anatomy (the same landmark in every scan).</p>",
             "<h2>Progression flags</h2>", _flags_html(t.flags), "<h2>Change per measure</h2>",
             _table(["measure", "first", "last", "change", "per year", "scans"], _change_rows(t.changes), nd=2)]
    for c in shown:
        png = _plot(path.with_name(f"{path.stem}_{c.measure}.png"), xs, {c.measure: c.values}, c.label, x_label)
        parts.append(f"<img src='{png.name}' alt='{html.escape(c.measure)} over time'>")
    if t.levels:
        parts += ["<h2>Goh levels, matched by anatomy</h2>",
                  _table(["level score", "first", "last", "change", "per year", "scans"], _change_rows(t.levels))]
        png = _plot(path.with_name(f"{path.stem}_levels_TOT.png"), xs,
                    {c.measure: c.values for c in t.levels if c.measure.endswith("_TOT") and c.n},
                    "TOT per level (%)", x_label)
        parts.append(f"<img src='{png.name}' alt='TOT per level over time'>")
    if t.level_z:
        parts += ["<p>Level position (z, mm) per scan: the same anatomy at different table positions.</p>",
                  _table(["level"] + [str(x) for x in xs], [[n] + z for n, z in t.level_z.items()])]
    parts += ["<h2>Values per scan</h2>", _table([x_label] + [c.measure for c in shown],
                                                [[x] + [c.values[i] for c in shown] for i, x in enumerate(xs)]),
              "</body></html>"]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(parts), encoding="utf-8")
    return path


def longitudinal_pages(table: pd.DataFrame, out: str | os.PathLike, *, show_phi: bool = False) -> list[Path]:
    """For every patient with two or more finished scans, ``out/patients/patient_<n>.html`` (n in order of first
    appearance; labelled by that number, the patient id only with ``show_phi``) and ``patient_<n>.json``
    (the trend, without dates unless ``show_phi``). Needs ``patient_id`` and ``scan_date`` columns."""
    from .util import write_json

    if "patient_id" not in table.columns or "scan_date" not in table.columns:
        return []
    done = table[table["status"] == "done"] if "status" in table.columns else table
    pages = []
    for i, (pid, rows) in enumerate(done.groupby("patient_id", sort=False), start=1):
        if len(rows) < 2:
            continue
        label = f"patient {pid}" if show_phi else f"patient {i}"
        page = Path(out) / "patients" / f"patient_{i}.html"
        pages.append(write_longitudinal(rows, page, patient_label=label, show_phi=show_phi))
        write_json(page.with_suffix(".json"), patient_trend(rows, label=label).to_dict(show_phi))
    _remove_stale(Path(out) / "patients", {p.stem for p in pages})
    return pages


def _remove_stale(folder: Path, keep: set[str]) -> None:
    """Remove the files of patient pages an earlier run wrote that this run did not (a patient now with fewer than
    two scans, e.g. after a rejection): their numbers would be stale."""
    import re

    for f in folder.glob("patient_*") if folder.is_dir() else []:
        m = re.match(r"(patient_\d+)(?:_|\.)", f.name)
        if m and m.group(1) not in keep:
            f.unlink()
