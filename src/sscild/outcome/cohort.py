"""Outcome cohorts: the CSV format, mortality labels per horizon that respect censoring, patient-grouped
folds, and a synthetic cohort with a known hazard.

Cohort CSV (one row per scan; several scans per patient are normal)
--------------------------------------------------------------------
=====================  =================================================================================
column                 meaning
=====================  =================================================================================
``patient_id``         required; every split is grouped by it
``scan_id``            required, unique
``path``               required: DICOM folder or image file (relative paths: to the CSV's folder)
``scan_date``          required, ISO date (YYYY-MM-DD)
``death_date``         date of death, empty when not known to have died
``last_followup_date`` last date the patient was known alive; needed when ``death_date`` is empty
``lungs_path``         optional lung mask on the scan's grid (e.g. ``lungs.nii.gz`` from ``sscild analyze``);
                       segmented when absent
``lesions_path``       optional lesion map (1 normal, 2 ground glass, 3 reticulation) on the scan's grid
``goh_extent``         optional ILD extent (%), e.g. from ``sscild batch``; gives the Goh stage
clinical columns       optional, numeric: ``age``, ``sex`` (F/M or 0/1), ``fvc_pct``, ``dlco_pct``, ... (see
                       :data:`CLINICAL_COLUMNS`); scores ``L1_TOT`` ... ``L5_RET`` are taken when present
``truth_*``            never used as features: synthetic cohorts keep their known truth here
=====================  =================================================================================

Labels for a horizon of N years, counted from each scan's date (N years = 365.25 N days):

- died within N years of the scan (death on the day N years later included) -> 1;
- known alive N years after the scan (follow-up of at least N years, or died later than that) -> 0;
- otherwise (follow-up ended alive before N years) -> censored: left out of that horizon, and counted.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..errors import ConfigError

DAYS_PER_YEAR = 365.25
HORIZONS = (1, 3, 5)
REQUIRED = ("patient_id", "scan_id", "path", "scan_date")
CLINICAL_COLUMNS = ("age", "sex", "fvc_pct", "dlco_pct", "fev1_pct", "smoking", "disease_duration_years",
                    "mrss", "anti_scl70", "anti_centromere")
SCORE_COLUMNS = ("goh_extent",) + tuple(f"L{i}_{p}" for i in range(1, 6) for p in ("TOT", "GG", "RET"))


# --------------------------------------------------------------------------------------------
# reading and labelling
# --------------------------------------------------------------------------------------------
def _dates(df: pd.DataFrame, col: str, where: str) -> pd.Series:
    raw = df[col] if col in df.columns else pd.Series([None] * len(df), index=df.index)
    out = pd.to_datetime(raw, errors="coerce", format="mixed")
    bad = raw.notna() & (raw.astype(str).str.strip() != "") & out.isna()
    if bad.any():
        rows = [int(i) + 2 for i in np.nonzero(bad.to_numpy())[0][:5]]
        raise ConfigError(f"{where}: column {col} has values that are not dates on CSV line(s) {rows} "
                          f"(e.g. {raw[bad].iloc[0]!r}); write dates as YYYY-MM-DD")
    return out


def prepare_cohort(df: pd.DataFrame, where: str = "cohort", require_path: bool = False) -> pd.DataFrame:
    """Check a cohort table and add ``time_years`` (scan to death or last follow-up) and ``event`` (1 died).

    Raises :class:`~sscild.errors.ConfigError` naming the rows and the fix when columns are missing, dates are
    unreadable, a scan has neither death nor follow-up date, or a date falls before the scan. ``path`` is
    required only with ``require_path`` (tables of features or predictions need no images).
    """
    df = df.copy()
    missing = [c for c in REQUIRED if c not in df.columns and (require_path or c != "path")]
    if missing:
        raise ConfigError(f"{where} lacks column(s) {missing}; found {list(df.columns)}. It needs "
                          "patient_id, scan_id, path, scan_date and death_date or last_followup_date")
    if "death_date" not in df.columns and "last_followup_date" not in df.columns:
        raise ConfigError(f"{where} has neither death_date nor last_followup_date: give at least one per row")
    for c in ("patient_id", "scan_id"):
        if df[c].isna().any():
            raise ConfigError(f"{where}: CSV line(s) {list(df.index[df[c].isna()] + 2)[:10]} have no {c}")
        df[c] = df[c].astype(str)
    dup = df["scan_id"][df["scan_id"].duplicated()].unique().tolist()
    if dup:
        raise ConfigError(f"{where}: scan_id must be unique; repeated: {dup[:10]}")
    scan = _dates(df, "scan_date", where)
    death = _dates(df, "death_date", where)
    fu = _dates(df, "last_followup_date", where)
    if scan.isna().any():
        raise ConfigError(f"{where}: CSV line(s) {list(np.nonzero(scan.isna().to_numpy())[0][:10] + 2)} have no "
                          "scan_date")
    none = death.isna() & fu.isna()
    if none.any():
        raise ConfigError(f"{where}: CSV line(s) {list(np.nonzero(none.to_numpy())[0][:10] + 2)} have neither "
                          "death_date nor last_followup_date; give one (the last date the patient was known alive)")
    end = death.where(death.notna(), fu)
    before = end < scan
    if before.any():
        rows = list(np.nonzero(before.to_numpy())[0][:10] + 2)
        raise ConfigError(f"{where}: on CSV line(s) {rows} the death or last follow-up date is before the scan "
                          "date; check the dates (death/follow-up must be on or after scan_date)")
    df["scan_date"], df["death_date"], df["last_followup_date"] = scan, death, fu
    df["time_years"] = (end - scan).dt.days.astype(float) / DAYS_PER_YEAR
    df["event"] = death.notna().astype(int)
    if "sex" in df.columns and df["sex"].dtype == object:
        df["sex"] = df["sex"].astype(str).str.strip().str.upper().map({"F": 1.0, "M": 0.0, "1": 1.0, "0": 0.0})
    return df


def read_cohort(path: str | os.PathLike) -> pd.DataFrame:
    """Read and check a cohort CSV (see the module docstring); relative paths are resolved against its folder."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"cohort {path} does not exist: give a CSV with patient_id, scan_id, path, scan_date, "
                          "death_date/last_followup_date")
    try:
        df = pd.read_csv(path, dtype={"patient_id": str, "scan_id": str})
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        raise ConfigError(f"cohort {path} is not a readable CSV ({err})") from None
    df = prepare_cohort(df, where=f"cohort {path}", require_path=True)
    base = path.resolve().parent
    for c in ("path", "lungs_path", "lesions_path"):
        if c in df.columns:
            df[c] = [None if pd.isna(p) or str(p) == "" else str(p) if Path(str(p)).is_absolute() else str(base / str(p))
                     for p in df[c]]
    return df


def horizon_label(time_years: Sequence[float], event: Sequence[int], years: float) -> np.ndarray:
    """Label per scan for death within ``years``: 1.0 died, 0.0 alive at ``years``, NaN censored.

    Examples
    --------
    >>> horizon_label([0.5, 2.0, 0.8, 4.0], [1, 1, 0, 0], 1).tolist()
    [1.0, 0.0, nan, 0.0]
    """
    t = np.asarray(time_years, float)
    e = np.asarray(event, int).astype(bool)
    # compare in days to be exact at the boundary
    td, hd = np.round(t * DAYS_PER_YEAR), years * DAYS_PER_YEAR
    y = np.full(t.shape, np.nan)
    y[e & (td <= hd)] = 1.0
    y[td > hd] = 0.0                      # alive at the horizon (whether they died later or not)
    y[~e & (td >= hd)] = 0.0              # followed alive for exactly the horizon or more
    return y


def label_horizons(df: pd.DataFrame, horizons: Sequence[float] = HORIZONS) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Add ``y_<N>y`` columns (1 / 0 / NaN censored) and return them with a count table per horizon.

    The count table has one row per horizon: ``scans``, ``patients``, ``positives``, ``negatives``, ``censored``
    (scans left out because follow-up ended alive before the horizon).
    """
    if "time_years" not in df.columns:
        df = prepare_cohort(df)
    df = df.copy()
    rows = []
    for h in horizons:
        col = label_column(h)
        y = horizon_label(df["time_years"], df["event"], h)
        df[col] = y
        lab = ~np.isnan(y)
        rows.append({"horizon_years": h, "scans": int(lab.sum()),
                     "patients": int(df.loc[lab, "patient_id"].nunique()), "positives": int(np.nansum(y == 1)),
                     "negatives": int(np.nansum(y == 0)), "censored": int((~lab).sum())})
    return df, pd.DataFrame(rows)


def label_column(h: float) -> str:
    return f"y_{h:g}y"


def feature_columns(df: pd.DataFrame, names: Sequence[str] | None = None) -> list[str]:
    """Clinical and score columns to use as features: ``names`` when given (each must exist), otherwise those
    of :data:`CLINICAL_COLUMNS` and :data:`SCORE_COLUMNS` present with at least one numeric value."""
    if names is not None:
        missing = [c for c in names if c not in df.columns]
        if missing:
            raise ConfigError(f"clinical column(s) {missing} are not in the cohort; found {list(df.columns)}")
        bad = [c for c in names if c.startswith("truth_")]
        if bad:
            raise ConfigError(f"{bad}: truth_* columns hold synthetic truth and cannot be features")
        return list(names)
    out = []
    for c in (*CLINICAL_COLUMNS, *SCORE_COLUMNS):
        if c in df.columns and pd.to_numeric(df[c], errors="coerce").notna().any():
            out.append(c)
    return out


# --------------------------------------------------------------------------------------------
# grouped folds
# --------------------------------------------------------------------------------------------
def grouped_folds(patient_ids: Sequence, strata: Sequence | None = None, n_splits: int = 5,
                  seed: int = 0) -> np.ndarray:
    """Fold number (0..n_splits-1) of every row; all scans of a patient fall in one fold.

    Folds are stratified on ``strata`` (e.g. died within the longest horizon) as far as grouping allows
    (scikit-learn's ``StratifiedGroupKFold``).

    Examples
    --------
    >>> f = grouped_folds(["a", "a", "b", "c", "c", "d"], n_splits=2)
    >>> bool(f[0] == f[1] and f[3] == f[4])
    True
    """
    from sklearn.model_selection import StratifiedGroupKFold

    g = pd.Series(list(patient_ids)).astype(str).to_numpy()
    n_pat = len(np.unique(g))
    if n_splits < 2:
        raise ConfigError(f"need at least 2 folds, got {n_splits}")
    if n_pat < n_splits:
        raise ConfigError(f"{n_pat} patients cannot fill {n_splits} folds: use fewer folds or more patients")
    s = np.zeros(len(g), int) if strata is None else pd.Series(list(strata)).fillna(-1).astype(int).to_numpy()
    if np.unique(s, return_counts=True)[1].min() < n_splits:
        s = np.zeros(len(g), int)     # a class too rare to stratify: plain grouped folds
    cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    fold = np.full(len(g), -1, int)
    for k, (_, test) in enumerate(cv.split(np.zeros(len(g)), s, g)):
        fold[test] = k
    return fold


def permute_labels_by_patient(y: Sequence[float], patient_ids: Sequence, seed: int = 0) -> np.ndarray:
    """Labels with the link to the images broken, kept constant within a patient.

    Each patient receives the label of another (random) patient's first labelled scan on all of its labelled
    scans. Because a patient's scans keep sharing one label, a split that put scans of one patient on both
    sides would still look predictive: a null test that catches leakage between folds.
    """
    y = np.asarray(y, float)
    g = pd.Series(list(patient_ids)).astype(str).to_numpy()
    lab = ~np.isnan(y)
    pats = pd.unique(g[lab])
    first = {p: y[lab & (g == p)][0] for p in pats}
    rng = np.random.default_rng(seed)
    perm = dict(zip(pats, rng.permutation([first[p] for p in pats])))
    out = np.full_like(y, np.nan)
    out[lab] = [perm[p] for p in g[lab]]
    return out


# --------------------------------------------------------------------------------------------
# synthetic cohort
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Censoring:
    """How follow-up of the synthetic cohort ends, independently of the hazard of death."""

    loss_per_year: float = 0.03
    """Rate of loss to follow-up (per year, exponential)."""
    accrual_years: float = 12.0
    """The study ends this long after the first patient's first scan; patients enter uniformly over that time."""
    min_followup_years: float = 1.0
    """The last patient enters at least this long before the study ends."""


@dataclass(frozen=True)
class HazardModel:
    """Known survival model of the synthetic cohort.

    Between scans the hazard of death is constant and set by the latest scan:
    ``h = base_per_year * exp(beta_extent * extent_pct + beta_age * (age - 60))`` (per year). The log of that
    hazard at a scan is its ``truth_log_hazard``, the ceiling covariate. Follow-up ends as ``censoring`` says.
    """

    base_per_year: float = 0.02
    """Hazard of death per year of a 60-year-old patient without ILD."""
    beta_extent: float = 0.05
    """Log hazard ratio per % point of ILD extent."""
    beta_age: float = 0.05
    """Log hazard ratio per year of age (centred on 60)."""
    censoring: Censoring = field(default_factory=Censoring)

    def log_hazard(self, extent_pct, age):
        return (np.log(self.base_per_year) + self.beta_extent * np.asarray(extent_pct, float)
                + self.beta_age * (np.asarray(age, float) - 60.0))


def simulate_cohort_table(n_patients: int, seed: int = 0, hazard: HazardModel = HazardModel(),
                          max_scans: int = 3, start: str = "2008-01-01") -> pd.DataFrame:
    """Patients with 1..``max_scans`` scans, ILD extent progressing over time, death drawn from ``hazard``.

    No images: one row per scan with ``patient_id, scan_id, scan_date, death_date, last_followup_date, age,
    sex, fvc_pct`` and the truth ``truth_extent_pct, truth_log_hazard, truth_phantom_seed``. The same patient's
    scans share ``truth_phantom_seed`` (same anatomy, disease growing). FVC (% predicted) falls with extent
    (noisy).
    """
    rng = np.random.default_rng(seed)
    t0 = pd.Timestamp(start)
    rows = []
    for i in range(n_patients):
        pid = f"P{seed:03d}{i:05d}"
        cens = hazard.censoring
        entry = rng.uniform(0, cens.accrual_years - cens.min_followup_years)
        admin_end = cens.accrual_years - entry                       # years from the first scan
        loss = rng.exponential(1 / cens.loss_per_year) if cens.loss_per_year > 0 else np.inf
        censor = min(admin_end, loss)
        age0 = rng.uniform(35, 80)
        sex = float(rng.random() < 0.8)                              # SSc: mostly women
        ext0 = 0.0 if rng.random() < 0.25 else float(rng.uniform(2, 50))
        prog = 0.0 if ext0 == 0 else float(rng.uniform(0, 4))        # % per year
        n_planned = int(rng.choice(np.arange(1, max_scans + 1), p=_scan_count_probs(max_scans)))
        times = [0.0]
        for _ in range(n_planned - 1):
            times.append(times[-1] + float(rng.uniform(1.0, 2.5)))
        # walk through the scans: hazard set by the latest scan
        death = np.inf
        scans = []
        for k, ts in enumerate(times):
            if ts >= min(death, censor):
                break
            ext = float(min(ext0 + prog * ts, 80.0))
            age = age0 + ts
            lh = float(hazard.log_hazard(ext, age))
            scans.append((ts, ext, age, lh))
            t_next = times[k + 1] if k + 1 < len(times) else np.inf
            d = ts + rng.exponential(1 / np.exp(lh))
            if d < t_next:
                death = d
                break
        end = min(death, censor)
        died = death <= censor
        fvc_base = rng.normal(0, 8)
        for k, (ts, ext, age, lh) in enumerate(scans):
            sd = t0 + pd.Timedelta(days=round((entry + ts) * DAYS_PER_YEAR))
            ed = t0 + pd.Timedelta(days=round((entry + end) * DAYS_PER_YEAR))
            if ed < sd:
                ed = sd
            rows.append({
                "patient_id": pid, "scan_id": f"{pid}_S{k + 1}", "scan_date": sd.date().isoformat(),
                "death_date": ed.date().isoformat() if died else "",
                "last_followup_date": "" if died else ed.date().isoformat(),
                "age": round(age, 1), "sex": "F" if sex else "M",
                "fvc_pct": round(float(np.clip(100 - 0.7 * ext + fvc_base + rng.normal(0, 4), 25, 140)), 1),
                "truth_extent_pct": round(ext, 2), "truth_log_hazard": round(lh, 4),
                "truth_phantom_seed": int(seed * 100000 + i),
            })
    return pd.DataFrame(rows)


def _scan_count_probs(max_scans: int) -> np.ndarray:
    p = np.array([0.5, 0.3, 0.2, 0.1, 0.05][:max_scans], float)
    if max_scans > 5:
        p = np.r_[p, np.full(max_scans - 5, 0.05)]
    return p / p.sum()


def _write_scan(args: tuple) -> str:
    scan_id, seed, extent, outdir, spacing, lesions = args
    from ..phantom import make_phantom
    from ..util import atomic_path
    import SimpleITK as sitk

    d = Path(outdir)
    if (d / "done").exists():
        return scan_id
    scan, truth = make_phantom(int(seed), size="small", extent=float(extent),
                               spacing=None if spacing is None else tuple(spacing))
    d.mkdir(parents=True, exist_ok=True)
    items = [("ct", None), ("lungs", truth.lungs)] + ([("lesions", truth.lesions)] if lesions else [])
    for name, arr in items:
        with atomic_path(d / f"{name}.nii.gz") as tmp:
            sitk.WriteImage(scan.to_sitk(arr if arr is None else arr.astype(np.uint8)), str(tmp), useCompression=True)
    (d / "done").write_text(f"{truth.extent['TOT']:.3f}\n")
    return scan_id


def make_synthetic_cohort(outdir: str | os.PathLike, n_patients: int = 200, seed: int = 0, *,
                          hazard: HazardModel = HazardModel(), max_scans: int = 3,
                          spacing: tuple[float, float, float] | None = (5.0, 4.2, 4.2), lesions: bool = False,
                          workers: int = 1, quiet: bool = True) -> Path:
    """Write a synthetic cohort: ``cohort.csv`` and one low-resolution phantom per scan.

    Each scan is ``scans/<scan_id>/ct.nii.gz`` (``sscild.phantom.make_phantom`` with the patient's seed and
    the scan's ILD extent; default grid 85 x 85 px of 4.2 mm, 5 mm slices, ~0.4 s per scan) with its true lung
    mask ``lungs.nii.gz`` (as ``sscild analyze`` writes it) and, with ``lesions=True``, ``lesions.nii.gz``.
    Survival follows :class:`HazardModel`; see :func:`simulate_cohort_table`. Existing scans are reused.

    Returns the path of ``cohort.csv``.
    """
    from ..util import atomic_path, progress

    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    df = simulate_cohort_table(n_patients, seed, hazard, max_scans)
    jobs = [(r.scan_id, r.truth_phantom_seed, r.truth_extent_pct, str(out / "scans" / r.scan_id),
             spacing, lesions) for r in df.itertuples()]
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor
        import multiprocessing as mp

        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as ex:
            list(progress(ex.map(_write_scan, jobs), "phantoms", total=len(jobs), quiet=quiet))
    else:
        for j in progress(jobs, "phantoms", quiet=quiet):
            _write_scan(j)
    df["path"] = [f"scans/{s}/ct.nii.gz" for s in df["scan_id"]]
    df["lungs_path"] = [f"scans/{s}/lungs.nii.gz" for s in df["scan_id"]]
    if lesions:
        df["lesions_path"] = [f"scans/{s}/lesions.nii.gz" for s in df["scan_id"]]
    cols = ["patient_id", "scan_id", "path", "lungs_path"] + (["lesions_path"] if lesions else []) + \
        ["scan_date", "death_date", "last_followup_date", "age", "sex", "fvc_pct", "truth_extent_pct",
         "truth_log_hazard", "truth_phantom_seed"]
    csv = out / "cohort.csv"
    with atomic_path(csv) as tmp:
        df[cols].to_csv(tmp, index=False)
    from ..util import write_json

    write_json(out / "hazard.json", {"model": "piecewise-constant hazard set by the latest scan",
                                     **asdict(hazard), "n_patients": n_patients, "seed": seed,
                                     "spacing_mm": spacing})
    return csv
