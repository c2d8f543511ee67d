"""Batch analysis of a cohort on dask.distributed, resumable, one row per scan, every result with its scan.

Manifest: a CSV with at least ``scan_id`` and ``path`` (a DICOM folder or an image file); optional ``series_uid``
(which DICOM series of the folder to read, see :func:`sscild.io.load_ct`); any other columns (``patient_id``,
``scan_date``, clinical columns) are carried into the cohort table. Output folder::

    OUTDIR/
      scans/<scan_id>/...        one `sscild analyze` output folder per scan (written all or nothing)
      status/<scan_id>.json      {"scan_id", "status": "done"|"failed", "reason", "key", "seconds", "row", ...}
      cohort.csv, cohort.parquet one row per scan (done, failed, pending), stable column names; rewritten after
                                 every finished scan
      failures.csv               the failed scans and why
      patients/patient_<n>.html  change over time, for patients with several scans (needs patient_id, scan_date)
      .sscild-batch.lock         held (flock) while a batch runs: a second batch on the folder is refused

Resume: a scan is skipped when its status is ``done`` and its key matches: the scan id, the input's fingerprint
(path, size and modification time, for a folder of every file in it), the series asked for, the software
version and a hash of the model cards (which carry the weights' sha256). Anything else (a changed path, a
re-exported series, new weights) reruns the scan, and a stale status never reaches the cohort table. Scan ids
that collide once made into folder names (``p1 a`` and ``p1/a``) are refused when the manifest is read. A
failed scan never stops the others. Work runs on a ``LocalCluster`` (``workers`` processes, one thread each) or
on an existing scheduler given by address; models are loaded once per worker process.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import socket
import time
import traceback
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Mapping

import pandas as pd

from . import __version__
from .errors import BatchLockedError, ConfigError, SscildError
from .util import atomic_path, read_json, write_json

REQUIRED = ("scan_id", "path")
STATUS_COLUMNS = ("scan_id", "status", "reason", "seconds", "peak_rss_mb")
LOCK_NAME = ".sscild-batch.lock"
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
_ATOMIC_TMP = re.compile(r"^\..+\.[A-Za-z0-9_]{8}(\.[A-Za-z0-9]+)*$")  # util.atomic_path's temporary names
_ROW_OPTIONS = ("series_uid", "fvc", "fvc_pct")  # manifest columns passed to the per-scan function as options

# process(scan_id, path, outdir, options) -> flat dict of measurements (the cohort row)
Process = Callable[[str, str, Path, Mapping[str, Any]], dict]


@dataclass(frozen=True)
class BatchResult:
    """What a batch did: counts, the cohort table and where it was written."""

    n_total: int
    n_done: int
    n_failed: int
    n_skipped: int
    table: pd.DataFrame
    outdir: Path

    @property
    def failures(self) -> pd.DataFrame:
        return self.table[self.table["status"] == "failed"][["scan_id", "reason"]]


# --------------------------------------------------------------------------------------------
# the manifest
# --------------------------------------------------------------------------------------------
def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read and check a cohort manifest (CSV with ``scan_id`` and ``path``; relative paths are taken
    relative to the manifest's folder). Every problem is a :class:`ConfigError` saying what to fix."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"manifest {path} does not exist: give a CSV with columns scan_id,path")
    if path.is_dir():
        raise ConfigError(f"manifest {path} is a folder: give the CSV file (columns scan_id,path), e.g. "
                          f"{path / 'manifest.csv'}")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], skipinitialspace=True)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError, OSError) as err:
        raise ConfigError(f"manifest {path} is not a readable CSV ({type(err).__name__}: {err}); give a CSV with "
                          "a header line scan_id,path and one row per scan") from None
    return check_manifest(df, path)


def check_manifest(df: pd.DataFrame, source: str | os.PathLike = "manifest") -> pd.DataFrame:
    """Check a manifest table: required columns, at least one row, ids present, unique and unique as folder
    names, paths present (made absolute relative to ``source``'s folder when it is a file)."""
    df = df.copy()
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise ConfigError(f"manifest {source} lacks column(s) {missing}; found {list(df.columns)}. "
                          "It needs scan_id and path (one row per scan).")
    if df.empty:
        raise ConfigError(f"manifest {source} has a header but no rows: add one row per scan (scan_id,path)")
    for col in REQUIRED:
        empty = df[col].isna() | (df[col].astype(str).str.strip() == "")
        if empty.any():
            raise ConfigError(f"manifest {source}: rows {list(df.index[empty] + 2)[:10]} have no {col} (row "
                              "numbers count the header as 1)")
    df["scan_id"] = df["scan_id"].astype(str).str.strip()
    dup = df["scan_id"][df["scan_id"].duplicated()].unique().tolist()
    if dup:
        raise ConfigError(f"manifest {source}: scan_id must be unique; repeated: {dup[:10]}")
    _check_folder_names(df["scan_id"].tolist(), source)
    base = Path(source).resolve().parent if Path(source).is_file() else Path.cwd()
    df["path"] = [str(p) if Path(str(p)).is_absolute() else str(base / str(p)) for p in df["path"]]
    for col in _ROW_OPTIONS:
        if col in df.columns:
            df[col] = df[col].astype(object).where(df[col].notna(), None)
    return df


def _check_folder_names(ids: list[str], source) -> None:
    seen: dict[str, str] = {}
    for sid in ids:
        name = folder_name(sid).lower()  # case-insensitive file systems (macOS, Windows) fold case
        if name in seen:
            raise ConfigError(f"manifest {source}: scan_ids {seen[name]!r} and {sid!r} give the same output folder "
                              f"name {folder_name(sid)!r}; make them differ in letters, digits, '.', '_' or '-'")
        seen[name] = sid


def folder_name(scan_id: str) -> str:
    """The output folder (and status file) name of a scan id: unsafe characters become '_'."""
    return _SAFE.sub("_", scan_id).strip("._") or "scan"


_folder_name = folder_name  # old name


# --------------------------------------------------------------------------------------------
# the resume key
# --------------------------------------------------------------------------------------------
def input_fingerprint(path: str | os.PathLike) -> dict[str, Any]:
    """Path, size and modification time of the input (for a folder: file count, total size, newest mtime)."""
    p = Path(path)
    if p.is_dir():
        files = [f.stat() for f in p.rglob("*") if f.is_file()]
        return {"path": str(p), "files": len(files), "size": sum(s.st_size for s in files),
                "mtime_ns": max((s.st_mtime_ns for s in files), default=0)}
    if p.exists():
        s = p.stat()
        return {"path": str(p), "files": 1, "size": s.st_size, "mtime_ns": s.st_mtime_ns}
    return {"path": str(p), "files": 0, "size": 0, "mtime_ns": 0}


@lru_cache(maxsize=8)
def models_fingerprint(weights: str | None) -> str:
    """sha256 over the model cards (shipped, and under ``weights``): they carry the weights' own sha256."""
    h = hashlib.sha256()
    for root in [Path(__file__).parent / "models"] + ([Path(weights)] if weights else []):
        for card in sorted(root.rglob("card.json")) if root.is_dir() else []:
            h.update(str(card.relative_to(root)).encode() + card.read_bytes())
    return h.hexdigest()[:16]


def resume_key(scan_id: str, path: str, options: Mapping[str, Any]) -> str:
    """The key a done scan must match to be skipped (see the module docstring)."""
    opts = {k: options.get(k) for k in sorted(options) if k not in ("quiet",)}
    doc = {"scan_id": scan_id, "input": input_fingerprint(path), "options": opts, "software": __version__,
           "models": models_fingerprint(str(options["weights"]) if options.get("weights") else None)}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:24]


# --------------------------------------------------------------------------------------------
# one scan (runs on a worker)
# --------------------------------------------------------------------------------------------
def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def run_one(scan_id: str, path: str, outdir: str, options: Mapping[str, Any], process: Process,
            key: str = "") -> dict:
    """Process one scan and write its status file (with the resume ``key``); never raises (failures recorded)."""
    out = Path(outdir)
    scan_dir = out / "scans" / folder_name(scan_id)
    t0 = time.perf_counter()
    status: dict[str, Any] = {"scan_id": scan_id, "path": path, "key": key}
    try:
        row = process(scan_id, path, scan_dir, options)
        status.update(status="done", reason="", row=row)
    except SscildError as err:
        status.update(status="failed", reason=str(err), row={})
    except Exception as err:  # a bug, or a library failing on odd data: record it, go on
        status.update(status="failed", reason=f"internal error ({type(err).__name__}: {err}); "
                      "please report it with the traceback in the status file",
                      traceback=traceback.format_exc(), row={})
    status["seconds"] = round(time.perf_counter() - t0, 3)
    status["peak_rss_mb"] = round(_peak_rss_mb(), 1)
    write_json(out / "status" / f"{folder_name(scan_id)}.json", status)
    return status


@lru_cache(maxsize=1)
def _worker_models():
    """One model set per worker process: each model is loaded once and kept for the following scans."""
    from .modelset import ModelSet

    return ModelSet()


def process_scan(scan_id: str, path: str, outdir: Path, options: Mapping[str, Any]) -> dict[str, Any]:
    """Batch worker: read, analyse, write the scan's folder, return the cohort row (errors propagate).

    ``options`` holds analysis settings (see :class:`sscild.settings.AnalysisSettings`) plus ``series_uid`` (the
    DICOM series to read); ``deidentify`` (a setting) writes ``seg.dcm`` with the DICOM basic de-identification
    profile inside the temporary output folder, so no identified copy is ever in place.
    """
    from .io import load_ct
    from .outputs import write_outputs
    from .pipeline import analyze
    from .settings import AnalysisSettings

    opts = dict(options)
    series_uid = opts.pop("series_uid", None)
    moves = opts.pop("level_moves", None)  # a reviewer's moved levels (sscild.gallery overrides)
    st = AnalysisSettings.from_mapping(opts)
    t0 = time.perf_counter()
    scan = load_ct(path, series_uid=series_uid)
    t_read = time.perf_counter() - t0
    a = analyze(scan, st, models=_worker_models())
    if moves:
        from .gallery import relevel

        a = relevel(a, scan, moves, st, _worker_models())
    write_outputs(a, scan, outdir)          # with settings.deidentify, seg.dcm is de-identified before the rename
    row = cohort_row(a)
    row["series_uid"] = scan.meta.get("series_uid")
    row["time_read_s"] = round(t_read, 3)
    return row


def cohort_row(analysis) -> dict[str, Any]:
    """One flat row of stable columns for the cohort table, from an :class:`sscild.results.Analysis`."""
    from .domain import LEVELS, PATTERNS

    row: dict[str, Any] = {f"lung_volume_{k}_ml": v for k, v in analysis.volumes_ml.items()}
    whole = analysis.density.regions["whole"]
    for k in ("MLA_HU", "SD_HU", "skewness", "kurtosis", "HAA_pct", "p10_HU", "p15_HU"):
        row[f"density_{k}"] = whole.get(k)
    if analysis.levels is not None:
        for n in LEVELS:
            row[f"{n}_z_mm"] = analysis.levels.z_mm[n]
            row[f"{n}_confidence"] = analysis.levels.confidence[n]
    if analysis.levels_lnet is not None:
        for n in LEVELS:
            row[f"{n}_z_mm_lnet"] = analysis.levels_lnet.z_mm[n]
    if analysis.scores is not None:
        for n, s in analysis.scores.levels.items():
            for p in PATTERNS:
                row[f"{n}_{p}"] = getattr(s, p)
        row["goh_extent"] = analysis.scores.goh_extent
        row["goh_levels_scored"] = analysis.scores.n_levels_scored
        row["goh_stage"] = analysis.scores.goh_stage
    if analysis.lesions is not None:
        for k, v in (analysis.lesions.summary.get("whole") or {}).items():
            if isinstance(v, (int, float)):
                row[f"lesions_{k}"] = v
    if getattr(analysis, "regions", None) is not None:
        row.update(analysis.regions.row())
    row["n_warnings"] = len(analysis.warnings)
    for k, v in analysis.timings_s.items():
        row[f"time_{k}_s"] = v
    return row


# --------------------------------------------------------------------------------------------
# the batch (runs in the main process)
# --------------------------------------------------------------------------------------------
class BatchLock:
    """An exclusive ``flock`` on ``OUTDIR/.sscild-batch.lock`` for the batch's lifetime.

    The kernel releases it when the holding process ends, however it ends, so a lock file left by a killed
    batch is stale and taken over (with a note); a live batch on the same folder makes :meth:`acquire` raise
    :class:`BatchLockedError`.
    """

    def __init__(self, outdir: Path) -> None:
        self.path = Path(outdir) / LOCK_NAME
        self._fd: int | None = None
        self.note = ""

    def acquire(self) -> "BatchLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 200).decode(errors="replace").strip()
            os.close(fd)
            raise BatchLockedError(f"another batch is running on {self.path.parent} ({holder or 'unknown process'}): "
                                   "wait for it to end, or give another output folder") from None
        old = os.read(fd, 200).decode(errors="replace").strip()
        if old:
            self.note = f"took over the lock of an earlier batch that ended without releasing it ({old})"
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%H:%M:%S')}".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "BatchLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def clean_leftovers(outdir: Path) -> list[Path]:
    """Remove temporary files of killed runs (``util.atomic_path``'s hidden names) from the batch's own folders,
    and the scans' temporary output folders (:func:`sscild.outputs.remove_leftovers`). Call under the lock."""
    from .outputs import remove_leftovers

    removed = []
    for folder in (outdir, outdir / "status", outdir / "patients"):
        for p in folder.glob(".*") if folder.is_dir() else []:
            if p.is_file() and p.name != LOCK_NAME and _ATOMIC_TMP.match(p.name):
                p.unlink()
                removed.append(p)
    scans = outdir / "scans"
    for d in (scans.iterdir() if scans.is_dir() else []):
        if not d.name.startswith("."):
            removed += remove_leftovers(d)
    return removed


def _status(out: Path, sid: str) -> dict[str, Any] | None:
    f = out / "status" / f"{folder_name(sid)}.json"
    try:
        return read_json(f)
    except (OSError, ValueError):  # absent, or unreadable: the scan is redone
        return None


def cohort_table(manifest: pd.DataFrame, outdir: Path, keys: Mapping[str, str] | None = None) -> pd.DataFrame:
    """One row per manifest scan from the status files: manifest columns, status columns, measurements.

    With ``keys`` (scan id -> resume key), a status whose key differs (an older input, other weights) counts as
    ``pending``: its numbers never appear beside the current row.
    """
    rows = []
    for rec in manifest.to_dict("records"):
        sid = str(rec["scan_id"])
        st = _status(outdir, sid)
        if st is None or st.get("scan_id") != sid or (keys is not None and st.get("key") != keys.get(sid)):
            st = {"status": "pending", "reason": "not run yet (or its input, options or models changed)"}
        row = {**rec}
        row.update({k: st.get(k) for k in STATUS_COLUMNS if k != "scan_id"})
        row.update({k: v for k, v in (st.get("row") or {}).items() if k not in rec or rec[k] in (None, "")})
        rows.append(row)
    df = pd.DataFrame(rows)
    first = list(manifest.columns) + [c for c in STATUS_COLUMNS if c != "scan_id"]
    rest = sorted(c for c in df.columns if c not in first)
    return df[first + rest]


def write_cohort(manifest: pd.DataFrame, out: Path, keys: Mapping[str, str]) -> pd.DataFrame:
    """Write cohort.csv, cohort.parquet and failures.csv (atomically) from the status files; return the table."""
    table = cohort_table(manifest, out, keys)
    with atomic_path(out / "cohort.csv") as tmp:
        table.to_csv(tmp, index=False)
    with atomic_path(out / "cohort.parquet") as tmp:
        table.astype({c: "string" for c in table.columns if table[c].dtype == object}).to_parquet(tmp, index=False)
    fails = table[table["status"] == "failed"][["scan_id", "path", "reason"]]
    with atomic_path(out / "failures.csv") as tmp:
        fails.to_csv(tmp, index=False)
    return table


def _client(workers: int, scheduler: str | None):
    from dask.distributed import Client, LocalCluster

    if scheduler:
        try:
            return Client(scheduler, timeout="10s"), None
        except (OSError, TimeoutError) as err:
            raise ConfigError(f"cannot reach the dask scheduler at {scheduler} ({err}); check the address "
                              "(tcp://HOST:8786) or omit --scheduler to use local workers") from None
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                           silence_logs=40)
    return Client(cluster), cluster


def _longitudinal_pages(table: pd.DataFrame, out: Path, show_phi: bool = False) -> list[Path]:
    """Change-over-time pages per patient with several scans: :func:`sscild.longitudinal.longitudinal_pages`."""
    from .longitudinal import longitudinal_pages

    return longitudinal_pages(table, out, show_phi=show_phi)


def run_batch(manifest: pd.DataFrame | str | os.PathLike, outdir: str | os.PathLike, *, workers: int = 1,
              scheduler: str | None = None, force: bool = False, options: Mapping[str, Any] | None = None,
              process: Process | None = None, quiet: bool = False,
              overrides: str | os.PathLike | None = None) -> BatchResult:
    """Analyse every scan of a manifest on dask, resumably; keep the cohort table current.

    Parameters
    ----------
    manifest : DataFrame or path to CSV (see :func:`read_manifest`)
    outdir : folder for per-scan outputs, status files and the cohort table
    workers : local worker processes (ignored with ``scheduler``)
    scheduler : address of an existing dask scheduler, e.g. ``tcp://10.0.0.5:8786``
    force : redo scans already done
    options : passed to ``process`` (e.g. ``{"device": "cpu", "heatmaps": False, "deidentify": True}``); a
        manifest column ``series_uid`` adds that option per scan
    process : the per-scan function; default :func:`process_scan`
    overrides : a reviewer's overrides CSV (default ``outdir/overrides.csv`` when present; see :mod:`sscild.gallery`):
        rejected scans leave the cohort table (``rejected.csv``), scans with moved levels are recomputed

    Raises
    ------
    ConfigError for a bad manifest, BatchLockedError when another batch runs on ``outdir``.
    """
    df = read_manifest(manifest) if not isinstance(manifest, pd.DataFrame) else check_manifest(manifest)
    out = Path(outdir)
    (out / "status").mkdir(parents=True, exist_ok=True)
    process = process if process is not None else process_scan
    with BatchLock(out) as lock:
        clean_leftovers(out)
        from .gallery import read_overrides, review_outputs

        ov = read_overrides(overrides if overrides is not None else out / "overrides.csv", df["scan_id"])
        full, df = df, ov.kept(df)
        jobs, keys, skipped = [], {}, 0
        for rec in df.to_dict("records"):
            sid, path = str(rec["scan_id"]), str(rec["path"])
            opts = ov.options_for(sid, {**dict(options or {}), **{c: rec[c] for c in _ROW_OPTIONS
                                                                  if rec.get(c) is not None}})
            keys[sid] = resume_key(sid, path, opts)
            st = _status(out, sid)
            if not force and st and st.get("status") == "done" and st.get("key") == keys[sid]:
                skipped += 1
                continue
            jobs.append((sid, path, opts))
        table = write_cohort(df, out, keys)
        if jobs:
            table = _run_jobs(jobs, keys, df, out, workers, scheduler, process, quiet)
        review_outputs(cohort_table(full, out, keys), out, ov)  # index.html, rejected.csv, dataset_description
        _longitudinal_pages(table, out, show_phi=bool((options or {}).get("show_phi", False)))
    if lock.note and not quiet:
        print(f"note: {lock.note}")
    n_done = int((table["status"] == "done").sum())
    n_failed = int((table["status"] == "failed").sum())
    return BatchResult(len(df), n_done, n_failed, skipped, table, out)


def _run_jobs(jobs, keys, df, out: Path, workers: int, scheduler: str | None, process: Process,
              quiet: bool) -> pd.DataFrame:
    """Submit the scans to dask; rewrite the cohort table after each one finishes."""
    from dask.distributed import as_completed

    from .util import progress

    client, cluster = _client(workers, scheduler)
    try:
        futures = [client.submit(run_one, sid, path, str(out), opts, process, keys[sid],
                                 key=f"sscild-{folder_name(sid)}-{keys[sid][:8]}", pure=False)
                   for sid, path, opts in jobs]
        table = None
        for _ in progress(as_completed(futures), "scans", total=len(futures), quiet=quiet):
            table = write_cohort(df, out, keys)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return table if table is not None else write_cohort(df, out, keys)
