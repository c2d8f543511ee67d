"""Batch analysis of a cohort on dask.distributed, resumable, one row per scan.

Manifest: a CSV with at least ``scan_id`` and ``path`` (a DICOM folder or an image file); any other columns
(``patient_id``, ``scan_date``, clinical columns) are carried into the cohort table. Output folder::

    OUTDIR/
      scans/<scan_id>/...        one `sscild analyze` output folder per scan
      status/<scan_id>.json      {"scan_id", "status": "done"|"failed", "reason", "seconds", "peak_rss_mb", "row"}
      cohort.csv, cohort.parquet one row per scan (done and failed), stable column names
      failures.csv               the failed scans and why
      patients/patient_<n>.html  change over time, for patients with several scans (needs patient_id, scan_date)

A rerun skips scans whose status is ``done`` (``force=True`` redoes them); a failed scan never stops the
others. Work runs on a ``LocalCluster`` (``workers`` processes, one thread each) or on an existing scheduler
given by address. Models are loaded once per worker process (a per-process cache in the pipeline).
"""
from __future__ import annotations

import os
import re
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import pandas as pd

from .errors import ConfigError, SscildError
from .util import atomic_path, read_json, write_json

REQUIRED = ("scan_id", "path")
STATUS_COLUMNS = ("scan_id", "status", "reason", "seconds", "peak_rss_mb")
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")

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


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read and check a cohort manifest (CSV with ``scan_id`` and ``path``; relative paths are taken
    relative to the manifest's folder)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"manifest {path} does not exist: give a CSV with columns scan_id,path")
    try:
        df = pd.read_csv(path, dtype={"scan_id": str, "patient_id": str})
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        raise ConfigError(f"manifest {path} is not a readable CSV ({err}); give columns scan_id,path") from None
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise ConfigError(f"manifest {path} lacks column(s) {missing}; found {list(df.columns)}. "
                          "It needs scan_id and path (one row per scan).")
    if df["scan_id"].isna().any():
        raise ConfigError(f"manifest {path}: rows {list(df.index[df['scan_id'].isna()] + 2)} have no scan_id")
    dup = df["scan_id"][df["scan_id"].duplicated()].unique().tolist()
    if dup:
        raise ConfigError(f"manifest {path}: scan_id must be unique; repeated: {dup[:10]}")
    base = path.resolve().parent
    df["path"] = [str(p) if Path(str(p)).is_absolute() else str(base / str(p)) for p in df["path"]]
    return df


def _folder_name(scan_id: str) -> str:
    return _SAFE.sub("_", scan_id).strip("._") or "scan"


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def run_one(scan_id: str, path: str, outdir: str, options: Mapping[str, Any], process: Process) -> dict:
    """Process one scan and write its status file; never raises (failures are recorded)."""
    out = Path(outdir)
    scan_dir = out / "scans" / _folder_name(scan_id)
    t0 = time.perf_counter()
    status: dict[str, Any] = {"scan_id": scan_id, "path": path}
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
    write_json(out / "status" / f"{_folder_name(scan_id)}.json", status)
    return status


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


def cohort_table(manifest: pd.DataFrame, outdir: Path) -> pd.DataFrame:
    """One row per manifest scan from the status files: manifest columns, status columns, measurements."""
    rows = []
    for rec in manifest.to_dict("records"):
        sid = str(rec["scan_id"])
        f = outdir / "status" / f"{_folder_name(sid)}.json"
        st = read_json(f) if f.exists() else {"status": "pending", "reason": "not run"}
        row = {**rec}
        row.update({k: st.get(k) for k in STATUS_COLUMNS if k != "scan_id"})
        row.update(st.get("row") or {})
        rows.append(row)
    df = pd.DataFrame(rows)
    first = list(manifest.columns) + [c for c in STATUS_COLUMNS if c != "scan_id"]
    rest = sorted(c for c in df.columns if c not in first)
    return df[first + rest]


def _longitudinal_pages(table: pd.DataFrame, out: Path, show_phi: bool = False) -> list[Path]:
    """Change-over-time pages per patient with several scans: :func:`sscild.longitudinal.longitudinal_pages`."""
    from .longitudinal import longitudinal_pages

    return longitudinal_pages(table, out, show_phi=show_phi)


def run_batch(manifest: pd.DataFrame | str | os.PathLike, outdir: str | os.PathLike, *, workers: int = 1,
              scheduler: str | None = None, force: bool = False, options: Mapping[str, Any] | None = None,
              process: Process | None = None, quiet: bool = False) -> BatchResult:
    """Analyse every scan of a manifest on dask, resumably; write the cohort table.

    Parameters
    ----------
    manifest : DataFrame or path to CSV (see :func:`read_manifest`)
    outdir : folder for per-scan outputs, status files and the cohort table
    workers : local worker processes (ignored with ``scheduler``)
    scheduler : address of an existing dask scheduler, e.g. ``tcp://10.0.0.5:8786``
    force : redo scans already done
    options : passed to ``process`` (e.g. ``{"device": "cpu", "heatmaps": False}``)
    process : the per-scan function; default :func:`sscild.pipeline.process_scan`
    """
    from dask.distributed import as_completed

    df = read_manifest(manifest) if not isinstance(manifest, pd.DataFrame) else manifest
    out = Path(outdir)
    (out / "status").mkdir(parents=True, exist_ok=True)
    if process is None:
        from .pipeline import process_scan as process
    todo, skipped = [], 0
    for rec in df.to_dict("records"):
        sid = str(rec["scan_id"])
        f = out / "status" / f"{_folder_name(sid)}.json"
        if not force and f.exists() and read_json(f).get("status") == "done":
            skipped += 1
            continue
        todo.append((sid, str(rec["path"])))
    if todo:
        client, cluster = _client(workers, scheduler)
        try:
            futures = [client.submit(run_one, sid, p, str(out), dict(options or {}), process, key=f"sscild-{sid}",
                                     pure=False) for sid, p in todo]
            from .util import progress

            for _ in progress(as_completed(futures), "scans", total=len(futures), quiet=quiet):
                pass
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    table = cohort_table(df, out)
    with atomic_path(out / "cohort.csv") as tmp:
        table.to_csv(tmp, index=False)
    with atomic_path(out / "cohort.parquet") as tmp:
        table.astype({c: "string" for c in table.columns if table[c].dtype == object}).to_parquet(tmp, index=False)
    fails = table[table["status"] == "failed"][["scan_id", "path", "reason"]]
    with atomic_path(out / "failures.csv") as tmp:
        fails.to_csv(tmp, index=False)
    _longitudinal_pages(table, out, show_phi=bool((options or {}).get("show_phi", False)))
    n_done = int((table["status"] == "done").sum())
    n_failed = int((table["status"] == "failed").sum())
    return BatchResult(len(df), n_done, n_failed, skipped, table, out)
