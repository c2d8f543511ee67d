"""The readers' consensus as training labels: ``sscild review export STUDY -o labels.csv``.

Writes, beside each other:

- ``labels.csv``: the S-Net dataset layout read by ``data: {dataset_csv: labels.csv}`` of
  ``sscild train scoring --config`` (:func:`sscild.scoring.snet.slices_from_csv`): ``scan_path, patient_id, scan_id,
  L1..L5`` (world z in mm of the slice the readers scored) and ``L1_TOT, L1_GG, L1_RET, ..., L5_RET`` (the
  consensus, % of lung), plus ``n_readers``.
- ``labels_levels.csv``: the level positions for L-Net (``data: {dataset_csv: ...}`` of ``sscild train levels``):
  where most readers marked a level misplaced, the median of the slices they picked; else the tool's slice (scans
  with a level out of view are left out: L-Net learns the five together).
- ``labels_snet.yaml``: a fine-tuning config (start from the shipped S-Net, a few hundred steps on these labels).

``scan_path`` comes from the study's ``key.csv`` (the link to the source scans, kept apart from what readers see).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..domain import LEVELS, PATTERNS
from ..util import atomic_path
from .stats import consensus, load_answers
from .study import Study, StudyError, open_study


@dataclass(frozen=True)
class Export:
    """Files written by :func:`export_labels` and how many cases and levels they hold."""

    labels: Path
    levels: Path
    config: Path
    n_cases: int
    n_levels: int


def read_key(study: Study) -> dict[str, str]:
    """``case_id -> scan_path`` from the study's linking key."""
    f = study.root / "key.csv"
    if not f.exists():
        raise StudyError(f"{f} is missing: export needs the study's key (case id -> source scan); it stays with "
                         "the study's creator when the study folder is shared")
    with f.open() as fh:
        return {r["case_id"]: r["scan_path"] for r in csv.DictReader(fh)}


def corrected_offset(rows: pd.DataFrame) -> int:
    """The level's slice offset the readers agree on: the median (rounded) of the picked slices when more than
    half of the readers marked the level misplaced, else 0 (the tool's slice)."""
    m = rows[rows["misplaced"].astype(bool)]
    if len(m) * 2 <= len(rows):
        return 0
    return int(np.round(np.median(m["corrected_offset"].astype(float))))


def label_tables(study: Study, answers: pd.DataFrame, how: str = "mean") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(S-Net labels, L-Net level positions), one row per case that has at least one consensus level."""
    first = answers[answers["replicate"] == 0]
    cons = consensus(first, how).set_index(["case_id", "level"])
    key = read_key(study)
    scores, levels = [], []
    for cid in sorted(first["case_id"].unique()):
        z = {n: lv["z_mm"] for n, lv in study.case(cid)["levels"].items()}
        row = {"scan_path": key[cid], "patient_id": cid, "scan_id": cid}
        lrow = dict(row)
        for n in LEVELS:
            have = (cid, n) in cons.index
            row[n] = z[n]["0"] if n in z else np.nan
            off = corrected_offset(first[(first["case_id"] == cid) & (first["level"] == n)]) if have else 0
            lrow[n] = z[n].get(str(off), z[n]["0"]) if n in z else np.nan
            for p in PATTERNS:
                row[f"{n}_{p}"] = float(cons.loc[(cid, n), p]) if have else np.nan
        row["n_readers"] = int(first[first["case_id"] == cid]["reader"].nunique())
        scores.append(row)
        levels.append(lrow)
    return pd.DataFrame(scores), pd.DataFrame(levels)


def finetune_config(labels: Path, n_cases: int, steps: int = 300, replay_phantoms: int = 0) -> str:
    """A ``sscild train scoring`` config that fine-tunes the shipped S-Net on ``labels`` (paths beside it).

    ``replay_phantoms`` > 0 mixes in the level slices of that many of the shipped S-Net's own training phantoms
    (seeds from 7000), so the net does not forget what it could do while it learns the readers' labels."""
    import yaml

    from ..scoring.snet import DEFAULT_DIR, load_snet

    _, cfg, _ = load_snet()
    conf = {k: v for k, v in cfg.__dict__.items() if k != "calibration"}
    c = {"description": f"expert consensus of a sscild reader study ({n_cases} scans), fine-tuned from the shipped "
                        "S-Net", "label_kind": "expert", "out": f"{labels.stem}_snet", "init": str(DEFAULT_DIR),
         "config": conf, "data": {"dataset_csv": labels.name, **({"phantoms": [
             {"n": replay_phantoms, "seed0": 7000, "size": "small", "neighbours": 1}]} if replay_phantoms else {})},
         "synthetic": {"fraction": 0.0},
         "train": {"steps": steps, "batch_size": 8, "lr": 1e-4, "seed": 0, "checkpoint_every": max(50, steps)},
         "calibrate": False}
    return "# sscild train scoring --config " + f"{labels.stem}_snet.yaml\n" + yaml.safe_dump(c, sort_keys=False)


def _write_csv(df: pd.DataFrame, path: Path) -> Path:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.4f")
    return path


def export_labels(study_dir: str | Path, out: str | Path, *, how: str = "mean", db_url: str | None = None,
                  steps: int = 300, replay_phantoms: int = 0) -> Export:
    """Write the consensus labels (``out``), the level positions and a fine-tuning config (see module docstring)."""
    study = open_study(study_dir)
    if how not in ("mean", "median"):
        raise StudyError(f"consensus is 'mean' or 'median', got {how!r}")
    answers = load_answers(study, db_url)
    if answers.empty:
        raise StudyError(f"{study.root}: no answers yet; nothing to export")
    scores, levels = label_tables(study, answers, how)
    out = Path(out)
    # L-Net learns all five levels of a scan together: scans with a level out of view are left out there
    lv_path = _write_csv(levels.dropna(subset=list(LEVELS)), out.with_name(f"{out.stem}_levels.csv"))
    _write_csv(scores, out)
    cfg = out.with_name(f"{out.stem}_snet.yaml")
    with atomic_path(cfg) as tmp:
        tmp.write_text(finetune_config(out, len(scores), steps, replay_phantoms))
    n_lv = int(scores[[f"{n}_TOT" for n in LEVELS]].notna().to_numpy().sum())
    return Export(out, lv_path, cfg, len(scores), n_lv)
