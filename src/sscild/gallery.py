"""Batch review: the cohort QA gallery (``index.html``), the reviewer's overrides and ``dataset_description.json``.

``sscild batch`` writes ``OUTDIR/index.html``: one row per scan (the coronal overview with the level lines, the five
level slices with the lesion overlay, key numbers), sorted with failures, warnings and outliers first, filterable,
offline (plain HTML + JS, no external resources). A reviewer marks scans rejected or moves a level to another slice
there and downloads ``overrides.csv``; the next ``sscild batch`` run reads ``OUTDIR/overrides.csv`` (or
``--overrides FILE``) and

* leaves rejected scans out of ``cohort.csv`` / ``cohort.parquet`` (listed with the reason in ``rejected.csv``;
  the gallery still shows them, marked);
* recomputes only the scans whose moved levels changed since their last run: the worker gets
  ``options["level_moves"] = {"L3": slice}`` (part of the scan's resume key, so other scans stay done) and
  :func:`relevel` places the level on that slice (:func:`move_levels`) and recomputes the scores there.

Overrides CSV columns (one row per decision; several ``move_level`` rows per scan allowed):

==========  ===========================================================================================
column      meaning
==========  ===========================================================================================
scan_id     the manifest's scan_id
action      ``reject`` or ``move_level``
level       ``L1``..``L5`` (``move_level`` only)
slice       slice index as read, 0 = the input's first slice, as in ``levels.json`` / the report
reason      free text (shown in ``rejected.csv`` and the gallery)
reviewer    optional, free text
==========  ===========================================================================================

QA checks behind the sort (see :data:`PLAUSIBLE` and :func:`qa_issues`): values outside fixed plausible ranges,
levels out of cranio-caudal order or closer than :data:`MIN_LEVEL_GAP_MM`, levels not placed or with low confidence,
pipeline warnings, and cohort outliers by the robust (median/MAD) z-score, |z| > :data:`ROBUST_Z` (Iglewicz &
Hoaglin's modified z-score), computed when at least :data:`MIN_FOR_Z` scans have the value.
"""
from __future__ import annotations

import html
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from .domain import LEVELS
from .errors import ConfigError
from .util import atomic_path, finite_float, read_json, write_json

OVERRIDE_COLUMNS = ("scan_id", "action", "level", "slice", "reason", "reviewer")
ACTIONS = ("reject", "move_level")
#: Fixed plausible ranges (low, high) of cohort-table columns for an adult inspiratory chest CT.
PLAUSIBLE: dict[str, tuple[float, float, str]] = {
    "lung_volume_total_ml": (1500.0, 9000.0, "lung volume (mL)"),
    "density_MLA_HU": (-950.0, -600.0, "mean lung attenuation (HU): HU calibration or inspiration"),
    "density_HAA_pct": (0.0, 50.0, "HAA (% of lung)"),
    "level_span_mm": (60.0, 260.0, "L1-L5 distance (mm)"),
    "slice_spacing_mm": (0.3, 3.0, "slice spacing (mm)"),
}
#: Columns checked for cohort outliers by the robust z-score.
OUTLIER_COLUMNS = ("lung_volume_total_ml", "density_MLA_HU", "density_HAA_pct", "level_span_mm", "goh_extent",
                   "lesions_involvement_pct")
ROBUST_Z = 3.5
MIN_FOR_Z = 8
MIN_LEVEL_GAP_MM = 5.0
LOW_CONFIDENCE = 0.5
KEY_NUMBERS = (("lung_volume_total_ml", "lung volume mL", 0), ("density_MLA_HU", "MLA HU", 0),
               ("density_HAA_pct", "HAA %", 1), ("goh_extent", "Goh extent %", 1), ("goh_stage", "stage", None),
               ("lesions_involvement_pct", "involvement %", 1))


# --------------------------------------------------------------------------------------------
# overrides
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Overrides:
    """A reviewer's decisions: rejected scans (with reasons) and moved levels (slice as read) per scan."""

    rejected: dict[str, str] = field(default_factory=dict)
    moves: dict[str, dict[str, int]] = field(default_factory=dict)
    source: str | None = None

    def options_for(self, scan_id: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
        """The worker options of one scan: ``options`` plus ``level_moves`` when the reviewer moved its levels."""
        opts = dict(options or {})
        if self.moves.get(scan_id):
            opts["level_moves"] = dict(sorted(self.moves[scan_id].items()))
        return opts

    def kept(self, manifest: pd.DataFrame) -> pd.DataFrame:
        """The manifest rows not rejected; ``ConfigError`` when the reviewer rejected every scan."""
        keep = manifest[~manifest["scan_id"].astype(str).isin(list(self.rejected))]
        if keep.empty:
            raise ConfigError(f"every scan of the manifest is rejected in {self.source}: nothing to analyse; "
                              "remove some reject rows")
        return keep

    def rows(self) -> list[dict[str, Any]]:
        out = [{"scan_id": s, "action": "reject", "level": "", "slice": "", "reason": r}
               for s, r in self.rejected.items()]
        out += [{"scan_id": s, "action": "move_level", "level": n, "slice": k, "reason": ""}
                for s, mv in self.moves.items() for n, k in mv.items()]
        return out


def _override_row(i: int, r: Mapping[str, Any], known: set[str] | None) -> tuple[str, str, str | None, int | None]:
    where = f"overrides row {i + 2}"
    sid, action = str(r.get("scan_id", "")).strip(), str(r.get("action", "")).strip().lower()
    if not sid or sid == "nan":
        raise ConfigError(f"{where}: no scan_id")
    if known is not None and sid not in known:
        raise ConfigError(f"{where}: scan_id {sid!r} is not in the manifest; fix or delete the row")
    if action not in ACTIONS:
        raise ConfigError(f"{where}: action {action!r} is not one of {ACTIONS}")
    if action == "reject":
        return sid, action, None, None
    level = str(r.get("level", "")).strip().upper()
    if level not in LEVELS:
        raise ConfigError(f"{where}: move_level needs level L1..L5, got {r.get('level')!r}")
    try:
        k = int(float(str(r.get("slice"))))
    except ValueError:
        raise ConfigError(f"{where}: move_level needs a slice number (as read, 0 = first), "
                          f"got {r.get('slice')!r}") from None
    if k < 0:
        raise ConfigError(f"{where}: slice must be >= 0, got {k}")
    return sid, action, level, k


def read_overrides(path: str | os.PathLike | None, scan_ids=None) -> Overrides:
    """Read an overrides CSV (columns in the module docstring); a missing file gives no overrides.

    ``scan_ids`` (the manifest's) makes unknown scan ids an error. Raises ``ConfigError`` on a malformed file.
    """
    if path is None or not Path(path).exists():
        return Overrides()
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ConfigError(f"overrides {path} is not a readable CSV ({err}); columns: "
                          f"{','.join(OVERRIDE_COLUMNS)}") from None
    missing = [c for c in ("scan_id", "action") if c not in df.columns]
    if missing:
        raise ConfigError(f"overrides {path} lacks column(s) {missing}; columns: {','.join(OVERRIDE_COLUMNS)}")
    known = None if scan_ids is None else {str(s) for s in scan_ids}
    rejected: dict[str, str] = {}
    moves: dict[str, dict[str, int]] = {}
    for i, r in enumerate(df.to_dict("records")):
        sid, action, level, k = _override_row(i, r, known)
        if action == "reject":
            rejected[sid] = str(r.get("reason", "")).strip() or "rejected by a reviewer"
        else:
            moves.setdefault(sid, {})[level] = k
    return Overrides(rejected, moves, str(path))


def write_overrides(path: str | os.PathLike, overrides: Overrides) -> Path:
    """Write ``overrides`` as CSV (the columns of the module docstring), atomically."""
    with atomic_path(path) as tmp:
        pd.DataFrame(overrides.rows(), columns=list(OVERRIDE_COLUMNS)).to_csv(tmp, index=False)
    return Path(path)


def move_levels(levels, scan, moves: Mapping[str, int] | None):
    """``levels`` (a :class:`~sscild.levels.GohLevels`) with the reviewer's moves applied.

    ``moves`` maps level name -> slice index as read. A moved level gets that slice's world z, confidence 1 and a
    note saying where it was; when L3 or L5 moves and L4 does not, L4 follows to halfway L3-L5 (its definition).
    Raises ``ConfigError`` when a slice is not in the scan.
    """
    if not moves:
        return levels
    as_read = {scan.input_slice_index(k): k for k in range(scan.shape[0])}
    z, idx, conf, notes = (dict(levels.z_mm), dict(levels.slice_index), dict(levels.confidence),
                           dict(levels.notes))
    for n, s in moves.items():
        if s not in as_read:
            raise ConfigError(f"override moves {n} to slice {s}, but the scan has slices 0..{scan.shape[0] - 1}")
        was = "not placed" if z.get(n) is None else f"slice {idx[n]}, z {z[n]:.1f} mm"
        z[n], idx[n], conf[n] = scan.z_mm(as_read[s]), int(s), 1.0
        notes[n] = f"moved by a reviewer to slice {s} (was {was})"
    if "L4" not in moves and ({"L3", "L5"} & set(moves)) and z.get("L3") is not None and z.get("L5") is not None:
        k4 = scan.slice_at_z((z["L3"] + z["L5"]) / 2.0)
        if k4 is not None:
            z["L4"], idx["L4"] = scan.z_mm(k4), scan.input_slice_index(k4)
            notes["L4"] = "halfway L3-L5 after a reviewer moved " + "/".join(sorted({"L3", "L5"} & set(moves)))
    return replace(levels, z_mm=z, slice_index=idx, confidence=conf, notes=notes)


# --------------------------------------------------------------------------------------------
# QA checks
# --------------------------------------------------------------------------------------------
def robust_z(values: pd.Series) -> pd.Series:
    """Modified z-score 0.6745 (x - median) / MAD (Iglewicz & Hoaglin); NaN where undefined (MAD 0 or fewer than
    :data:`MIN_FOR_Z` values).

    >>> robust_z(pd.Series([10.0, 11, 9, 10, 10, 11, 9, 10, 40])).round(1).tolist()[-1]
    20.2
    """
    x = pd.to_numeric(values, errors="coerce")
    ok = x.dropna()
    mad = float((ok - ok.median()).abs().median()) if len(ok) else 0.0
    if len(ok) < MIN_FOR_Z or mad == 0:
        return pd.Series(np.nan, index=x.index)
    return 0.6745 * (x - ok.median()) / mad


def _level_issues(levels: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    out = []
    zs = [(n, finite_float((levels.get(n) or {}).get("z_mm"))) for n in LEVELS]
    for n, z in zs:
        conf = finite_float((levels.get(n) or {}).get("confidence"))
        if z is None and levels:
            out.append({"kind": "level", "severity": 10, "text": f"{n} not placed"})
        elif conf is not None and conf < LOW_CONFIDENCE:
            out.append({"kind": "level", "severity": 5, "text": f"{n} low confidence {conf:.2f}"})
    placed = [(n, z) for n, z in zs if z is not None]
    for (a, za), (b, zb) in zip(placed, placed[1:]):
        if za - zb < MIN_LEVEL_GAP_MM:       # cranial to caudal: z must fall from L1 to L5
            out.append({"kind": "order", "severity": 20,
                        "text": f"{a} ({za:.0f} mm) not {MIN_LEVEL_GAP_MM:g} mm above {b} ({zb:.0f} mm)"})
    return out


def qa_issues(table: pd.DataFrame) -> dict[str, list[dict[str, Any]]]:
    """Issues per scan_id: failure, values outside :data:`PLAUSIBLE`, level order/gaps/placement/confidence,
    pipeline warnings and robust-z outliers. ``table`` is the cohort table plus the gallery's derived columns
    (``level_span_mm``, ``slice_spacing_mm``, ``_levels``, ``_warnings``)."""
    zs = {c: robust_z(table[c]) for c in OUTLIER_COLUMNS if c in table.columns}
    out: dict[str, list[dict[str, Any]]] = {}
    for i, r in table.iterrows():
        sid = str(r["scan_id"])
        if r.get("status") != "done":
            out[sid] = [{"kind": "failed", "severity": 100, "text": f"{r.get('status')}: {r.get('reason') or ''}"}]
            continue
        iss = []
        for c, (lo, hi, label) in PLAUSIBLE.items():
            v = finite_float(r.get(c))
            if v is not None and not lo <= v <= hi:
                iss.append({"kind": "range", "severity": 20, "text": f"{label} {v:.4g} outside {lo:g}..{hi:g}"})
        iss += _level_issues(r.get("_levels") or {})
        iss += [{"kind": "warning", "severity": 1, "text": str(w)} for w in (r.get("_warnings") or [])
                if not str(w)[:3].rstrip() in LEVELS]
        for c, z in zs.items():
            if np.isfinite(z[i]) and abs(z[i]) > ROBUST_Z:
                iss.append({"kind": "outlier", "severity": 5 + min(abs(float(z[i])), 20.0) / 2,
                            "text": f"{c} {float(r[c]):.4g} is a cohort outlier (robust z {float(z[i]):+.1f})"})
        out[sid] = iss
    return out


def _scan_info(out: Path, sid: str) -> dict[str, Any]:
    """What the gallery reads from a scan's folder: levels, warnings, spacing and which images exist."""
    from .cohort import folder_name

    folder = f"scans/{folder_name(sid)}"
    d = out / folder
    lv = read_json(d / "levels.json") if (d / "levels.json").exists() else {}
    an = read_json(d / "analysis.json") if (d / "analysis.json").exists() else {}
    levels = {e["name"]: e for e in lv.get("levels", [])}
    z = [finite_float(levels.get(n, {}).get("z_mm")) for n in ("L1", "L5")]
    sp = ((an.get("input") or {}).get("spacing_zyx_mm") or [None])[0]
    img = {k: f"{folder}/{f}" for k, f in [("coronal", "report_coronal.png")] +
           [(n, f"report_{n}.png") for n in LEVELS] if (d / f).exists()}
    if not img and (d / "levels.png").exists():
        img["strip"] = f"{folder}/levels.png"
    return {"_levels": levels, "_warnings": list(an.get("warnings") or []), "_img": img,
            "_report": f"{folder}/report.html" if (d / "report.html").exists() else None,
            "level_span_mm": None if None in z else z[0] - z[1], "slice_spacing_mm": finite_float(sp)}


# --------------------------------------------------------------------------------------------
# the page
# --------------------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:16px;color:#1b1b1b}
h1{font-size:1.4em;margin:0 0 4px} .sub{color:#555;margin:0 0 10px}
.bar{position:sticky;top:0;background:#fff;padding:8px 0;border-bottom:1px solid #ddd;z-index:2;display:flex;
gap:12px;align-items:center;flex-wrap:wrap}
.row{display:grid;grid-template-columns:260px 1fr 230px;gap:10px;border-bottom:1px solid #ddd;padding:8px 0}
.row.flagged{background:#fffaf0} .row.rejected{opacity:.55} .row.failed{background:#fdecea}
.imgs{display:flex;gap:4px;overflow-x:auto} figure{margin:0;text-align:center} figure img{height:120px;display:block}
figcaption{font-size:.72em;color:#444} ul.issues{margin:4px 0;padding-left:16px;font-size:.85em}
li.failed,li.range,li.order{color:#b00020} li.level,li.outlier{color:#a15c00} li.warning{color:#555}
table.nums{border-collapse:collapse;font-size:.85em} table.nums td{padding:1px 6px 1px 0}
.badge{border-radius:4px;padding:1px 6px;font-size:.8em;color:#fff;background:#1b7f3b}
.badge.failed{background:#b00020} .badge.rejected{background:#555} .badge.moved{background:#1565c0}
.review{font-size:.85em} .review input.why{width:150px} .review input.sl{width:60px} ul.moves{padding-left:16px}
details{font-size:.85em;color:#444;margin:6px 0}
"""

_JS = r"""
const INIT = JSON.parse(document.getElementById('overrides').textContent);
const state = {rejected: Object.assign({}, INIT.rejected), moves: JSON.parse(JSON.stringify(INIT.moves))};
function q(s, el) { return (el || document).querySelector(s); }
function rows() { return Array.from(document.querySelectorAll('.row')); }
function showRow(r) {
  const id = r.dataset.id, rej = id in state.rejected, mv = state.moves[id] || {};
  r.classList.toggle('rejected', rej);
  q('.rej', r).checked = rej;
  if (rej) q('.why', r).value = state.rejected[id];
  const ul = q('.moves', r); ul.innerHTML = '';
  for (const [lv, k] of Object.entries(mv)) {
    const li = document.createElement('li');
    li.textContent = lv + ' -> slice ' + k + ' ';
    const x = document.createElement('button'); x.textContent = 'undo'; x.className = 'undo';
    x.onclick = () => { delete state.moves[id][lv]; if (!Object.keys(state.moves[id]).length) delete state.moves[id];
                        changed(r); };
    li.appendChild(x); ul.appendChild(li);
  }
}
function changed(r) { showRow(r); q('#n-edits').textContent = csvRows().length - 1; filter(); }
function csvCell(v) { v = String(v ?? ''); return /[",\n]/.test(v) ? '"' + v.replace(/"/g, '""') + '"' : v; }
function csvRows() {
  const out = [['scan_id', 'action', 'level', 'slice', 'reason', 'reviewer']];
  const who = q('#reviewer').value;
  for (const [id, why] of Object.entries(state.rejected)) out.push([id, 'reject', '', '', why, who]);
  for (const [id, mv] of Object.entries(state.moves))
    for (const [lv, k] of Object.entries(mv)) out.push([id, 'move_level', lv, k, '', who]);
  return out;
}
function overridesCsv() { return csvRows().map(r => r.map(csvCell).join(',')).join('\n') + '\n'; }
function download() {
  const a = document.createElement('a');
  a.href = URL.createObjectURL(new Blob([overridesCsv()], {type: 'text/csv'}));
  a.download = 'overrides.csv'; document.body.appendChild(a); a.click(); a.remove();
}
function filter() {
  const text = q('#search').value.toLowerCase(), what = q('#show').value;
  let n = 0;
  for (const r of rows()) {
    const id = r.dataset.id, rej = id in state.rejected;
    const ok = (!text || r.dataset.text.includes(text)) &&
      (what === 'all' || (what === 'flagged' && r.dataset.flagged === '1') || (what === 'failed' &&
       r.dataset.status !== 'done') || (what === 'rejected' && rej) || (what === 'clean' &&
       r.dataset.flagged === '0' && !rej) || (what === 'edited' && (rej || id in state.moves)));
    r.style.display = ok ? '' : 'none'; n += ok;
  }
  q('#n-shown').textContent = n;
}
for (const r of rows()) {
  const id = r.dataset.id;
  const why = () => q('.why', r).value || 'rejected by a reviewer';
  q('.rej', r).onchange = e => { if (e.target.checked) state.rejected[id] = why(); else delete state.rejected[id];
                                 changed(r); };
  q('.why', r).oninput = () => { if (id in state.rejected) state.rejected[id] = why(); };
  q('.mv', r).onclick = () => {
    const k = parseInt(q('.sl', r).value, 10);
    if (!(k >= 0)) { q('.sl', r).setCustomValidity('slice number >= 0'); q('.sl', r).reportValidity(); return; }
    (state.moves[id] = state.moves[id] || {})[q('.lv', r).value] = k; changed(r);
  };
  showRow(r);
}
q('#search').oninput = filter; q('#show').onchange = filter; q('#download').onclick = download;
q('#n-edits').textContent = csvRows().length - 1; filter();
"""


def _fmt(v: Any, nd: int | None) -> str:
    f = finite_float(v)
    if nd is None or f is None:
        return "-" if v is None or (isinstance(v, float) and not np.isfinite(v)) else html.escape(str(v))
    return f"{f:.{nd}f}"


def _figures(info: Mapping[str, Any], lazy: bool) -> str:
    ld = " loading='lazy'" if lazy else ""
    figs = []
    for key, src in info["_img"].items():
        e = info["_levels"].get(key) or {}
        cap = key if key not in LEVELS else (f"{key} slice {e.get('slice_index')} z {_fmt(e.get('z_mm'), 0)} "
                                              f"conf {_fmt(e.get('confidence'), 2)}")
        figs.append(f"<figure><img src='{html.escape(src)}' alt='{key}'{ld}><figcaption>{html.escape(cap)}"
                    "</figcaption></figure>")
    return "".join(figs) or "<p>no images (scan failed or report not written)</p>"


def _row_html(r: Mapping[str, Any], issues: list[dict[str, Any]], lazy: bool) -> str:
    sid = str(r["scan_id"])
    st = "rejected" if r.get("_rejected") else str(r.get("status"))
    flagged = bool(issues)
    lis = "".join(f"<li class='{i['kind']}'>{html.escape(i['text'])}</li>" for i in issues)
    nums = "".join(f"<tr><td>{lab}</td><td>{_fmt(r.get(c), nd)}</td></tr>" for c, lab, nd in KEY_NUMBERS
                   if c in r and r.get(c) is not None)
    rep = f"<a href='{html.escape(r['_report'])}'>report</a>" if r.get("_report") else ""
    opts = "".join(f"<option>{n}</option>" for n in LEVELS)
    text = html.escape(" ".join([sid, st] + [i["text"] for i in issues]).lower(), quote=True)
    cls = "row" + (" flagged" if flagged else "") + (" failed" if st == "failed" else "")
    return (f"<div class='{cls}' data-id='{html.escape(sid, quote=True)}' data-status='{html.escape(st)}' "
            f"data-flagged='{int(flagged)}' data-text='{text}'>"
            f"<div class='meta'><b>{html.escape(sid)}</b> <span class='badge {st}'>{html.escape(st)}</span> {rep}"
            f"<ul class='issues'>{lis}</ul><table class='nums'>{nums}</table></div>"
            f"<div class='imgs'>{_figures(r, lazy)}</div>"
            f"<div class='review'><label><input type='checkbox' class='rej'> reject</label> "
            f"<input class='why' placeholder='reason'><br>move <select class='lv'>{opts}</select> to slice "
            f"<input class='sl' type='number' min='0'> <button class='mv'>move</button><ul class='moves'></ul>"
            f"</div></div>")


def _rules_html() -> str:
    rng = "".join(f"<li>{html.escape(lab)}: {lo:g} to {hi:g}</li>" for lo, hi, lab in PLAUSIBLE.values())
    return (f"<details><summary>How rows are sorted and flagged</summary><ul>{rng}<li>levels L1..L5 must fall "
            f"cranio-caudally, at least {MIN_LEVEL_GAP_MM:g} mm apart; a level not placed or with confidence "
            f"below {LOW_CONFIDENCE:g} is flagged</li><li>cohort outliers: robust z = 0.6745 (x - median) / MAD "
            f"beyond {ROBUST_Z:g} (with at least {MIN_FOR_Z} scans) for {', '.join(OUTLIER_COLUMNS)}</li>"
            "<li>order: failed scans, then by severity (range and order problems, missing levels, outliers, "
            "low confidence, warnings); rejected scans last</li></ul></details>")


def gallery_rows(out: Path, table: pd.DataFrame, overrides: Overrides) -> tuple[pd.DataFrame, dict[str, list]]:
    """The cohort table joined with what each scan's folder holds, in gallery order, and the issues per scan."""
    table = table.reset_index(drop=True)
    info = pd.DataFrame([_scan_info(out, str(s)) for s in table["scan_id"]], index=table.index)
    df = pd.concat([table.drop(columns=[c for c in info.columns if c in table.columns]), info], axis=1)
    df["_rejected"] = [overrides.rejected.get(str(s)) for s in df["scan_id"]]
    issues = qa_issues(df)
    df["_severity"] = [sum(i["severity"] for i in issues[str(s)]) for s in df["scan_id"]]
    df = df.assign(_rej=df["_rejected"].notna()).sort_values(["_rej", "_severity", "scan_id"],
                                                             ascending=[True, False, True], kind="stable")
    return df.drop(columns="_rej"), issues


def write_gallery(out: str | os.PathLike, table: pd.DataFrame, overrides: Overrides | None = None) -> Path:
    """Write ``out/index.html``: the QA gallery of a batch (see the module docstring).

    ``table`` is the full cohort table (rejected scans included: they are shown, marked, at the end).
    """
    out = Path(out)
    ov = overrides or Overrides()
    df, issues = gallery_rows(out, table, ov)
    rej = df["_rejected"].notna()
    n_rej, done = int(rej.sum()), (df["status"] == "done")[~rej]
    n_flag = sum(1 for s in df.loc[~rej, "scan_id"] if issues[str(s)])
    body = "".join(_row_html(r, issues[str(r["scan_id"])], lazy=i >= 30)
                   for i, r in enumerate(df.to_dict("records")))
    init = json.dumps({"rejected": ov.rejected, "moves": ov.moves}).replace("</", "<\\/")
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>sscild cohort QA</title>"
            f"<style>{_CSS}</style></head><body><h1>Cohort QA gallery</h1>"
            f"<p class='sub'>{len(df)} scans: {n_rej} rejected; of the others {int(done.sum())} done, "
            f"{int((~done).sum())} not done (failed or pending), {n_flag} flagged. "
            "Rows with problems first. Reject a scan or move a level, then download overrides.csv into this folder "
            "and run <code>sscild batch</code> again: only the changed scans are recomputed.</p>"
            f"{_rules_html()}<div class='bar'><input id='search' placeholder='filter: scan id, issue text'> "
            "<select id='show'><option value='all'>all</option><option value='flagged'>flagged</option>"
            "<option value='failed'>failed</option><option value='rejected'>rejected</option>"
            "<option value='edited'>edited</option><option value='clean'>no issues</option></select> "
            "<span><span id='n-shown'></span> shown</span> reviewer <input id='reviewer' size='8'> "
            "<button id='download'>Download overrides.csv (<span id='n-edits'>0</span> rows)</button></div>"
            f"{body}<script type='application/json' id='overrides'>{init}</script><script>{_JS}</script>"
            "</body></html>")
    path = out / "index.html"
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path


def dataset_description(out: str | os.PathLike, table: pd.DataFrame) -> Path:
    """``out/dataset_description.json`` (BIDS-derivatives style): Name, BIDSVersion, DatasetType ``derivative``,
    GeneratedBy (sscild with its version, the models and their weights' sha256), and the run facts of
    :func:`sscild.provenance.run_facts` from the first finished scan's ``analysis.json``."""
    from . import __version__
    from .cohort import folder_name
    from .provenance import methods_paragraph, run_facts

    out = Path(out)
    facts: dict[str, Any] = {}
    for sid in table.loc[table["status"] == "done", "scan_id"]:
        f = out / "scans" / folder_name(str(sid)) / "analysis.json"
        if f.exists():
            facts = run_facts(read_json(f))
            break
    models = facts.get("models") or []
    gen = {"Name": "sscild", "Version": (facts.get("software") or {}).get("version", __version__),
           "Description": "SSc-ILD measurements from chest CT; stages: " + ", ".join(
               facts.get("stages_ran") or ["none finished"]) + ("; models: " + ", ".join(
                              f"{m['name']} (sha256 {m.get('weights_sha256')})" for m in models) if models else ""),
           "Models": models}
    doc = {"Name": "sscild cohort analysis", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
           "GeneratedBy": [gen], "HowToAcknowledge": "Cite sscild (CITATION.cff) and the methods paragraph below.",
           "sscild": {"n_scans": int(len(table)), "n_done": int((table["status"] == "done").sum()),
                      "facts": facts, "methods": methods_paragraph(facts) if facts else None}}
    return write_json(out / "dataset_description.json", doc)


def review_outputs(table: pd.DataFrame, out: str | os.PathLike, overrides: Overrides | None = None) -> pd.DataFrame:
    """The batch's review step: write ``index.html``, ``rejected.csv`` and ``dataset_description.json``; return the
    cohort table without the rejected scans (what ``cohort.csv`` holds)."""
    out = Path(out)
    ov = overrides or Overrides()
    write_gallery(out, table, ov)
    rej = table["scan_id"].astype(str).isin(ov.rejected)
    rejected = table.loc[rej, ["scan_id"] + (["path"] if "path" in table.columns else [])].copy()
    rejected["reason"] = [ov.rejected[str(s)] for s in rejected["scan_id"]]
    with atomic_path(out / "rejected.csv") as tmp:
        rejected.to_csv(tmp, index=False)
    kept = table.loc[~rej].reset_index(drop=True)
    dataset_description(out, kept)
    return kept


def relevel(analysis, scan, moves: Mapping[str, int] | None, settings, models):
    """An :class:`~sscild.results.Analysis` with the reviewer's level moves applied and what depends on the levels
    recomputed: S-Net scores (and heat maps) at the new slices and the lesion summary's per-level rows (the lesion
    map itself does not depend on the levels). Warnings about the moved levels are replaced by a note."""
    if not moves or analysis.levels is None:
        return analysis
    from .lesions import summarise
    from .pipeline import heatmap_stage, model_input, score_stage

    lv = move_levels(analysis.levels, scan, moves)
    moved = sorted(moves)
    warns = [w for w in analysis.warnings if str(w)[:3].rstrip() not in moved]
    warns.append("levels moved by a reviewer: " + ", ".join(f"{n} to slice {moves[n]}" for n in moved))
    changes: dict[str, Any] = {"levels": lv}
    if analysis.scores is not None:
        _, mscan = model_input(scan, analysis.lungs)         # S-Net sees the lung at the reference aeration
        step = score_stage(mscan, analysis.lungs, lv, settings, models)
        changes["scores"] = step.value
        if analysis.heatmaps is not None and step.value is not None:
            changes["heatmaps"] = heatmap_stage(mscan, analysis.lungs, step.value, settings, models).value
    if analysis.lesions is not None:
        ks = {n: lv.array_index(scan, n) for n in LEVELS}
        changes["lesions"] = replace(analysis.lesions, summary=summarise(analysis.lesions.labels,
                                                                         analysis.lungs.labels, scan, ks))
    return replace(analysis, warnings=tuple(warns), **changes)
