"""The readers' consensus as training labels: ``sscild review export STUDY -o labels.csv``.

Writes, beside each other:

- ``labels.csv``: the S-Net dataset layout read by ``data: {dataset_csv: labels.csv}`` of
  ``sscild train scoring --config`` (:func:`sscild.scoring.snet.slices_from_csv`): ``scan_path, patient_id, scan_id,
  L1..L5`` (world z in mm of the slice the readers scored) and ``L1_TOT, L1_GG, L1_RET, ..., L5_RET`` (the
  consensus, % of lung), plus ``n_readers``.
- ``labels_levels.csv``: the level positions for L-Net (``data: {dataset_csv: ...}`` of ``sscild train levels``):
  where most readers marked a level misplaced, the median of the slices they picked; else the tool's slice (scans
  with a level out of view are left out: L-Net learns the five together).
- ``labels_snet.yaml``: a fine-tuning config: start from the shipped S-Net, a few hundred steps at a low rate on
  these labels with a ``finetune:`` section (:class:`sscild.config.FinetuneSettings`): part of every batch replays
  the shipped S-Net's own training distribution (its training config's phantoms, scaled down, and synthetic
  slices), L2-SP towards the shipped weights, frozen batch norm, the calibration refitted on a validation split
  (the shipped config's validation section + held-out readers' cases), and a guard that keeps the shipped weights
  when the fine-tuned ones are worse on that validation.

``scan_path`` comes from the study's ``key.csv`` (the link to the source scans, kept apart from what readers see).
"""
from __future__ import annotations

import csv
import dataclasses
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


#: replay and validation when the shipped S-Net's training config is not at hand (an installed package)
FALLBACK_REPLAY = {"phantoms": [{"n": 40, "seed0": 7000, "size": "small", "neighbours": 1, "noise_hu": [0, 60]}]}
FALLBACK_SYNTHETIC = {"fraction": 0.5, "noise_hu": [0, 60]}
FALLBACK_VALIDATION = {"phantoms": {"n": 20, "seed0": 7500, "size": "small", "neighbours": 0}}


def shipped_training_config() -> dict | None:
    """The shipped S-Net's training config (``configs/`` of a source checkout, named in its card), paths made
    absolute; None when it is not there."""
    from ..bundle import read_card
    from ..config import load_config
    from ..scoring.snet import DEFAULT_DIR

    name = read_card(DEFAULT_DIR, "S-Net")["training"].get("config_file")
    path = DEFAULT_DIR.parents[3] / "configs" / str(name)
    return load_config(path) if name and path.is_file() else None


def replay_sections(n_phantoms: int) -> tuple[dict, dict, dict]:
    """(replay data, synthetic, validation) sections of the shipped S-Net's training: its phantom lists scaled to
    ``n_phantoms`` phantoms in all (same seeds, sizes and noise), its real backgrounds and synthetic slices, its
    validation section (not the test set of ``bench/run_all.py snet``)."""
    c = shipped_training_config()
    if c is None:
        phs = [dict(FALLBACK_REPLAY["phantoms"][0], n=n_phantoms)]
        return {"phantoms": phs}, dict(FALLBACK_SYNTHETIC), dict(FALLBACK_VALIDATION)
    data = dict(c["data"])
    phs = data.get("phantoms") or []
    phs = phs if isinstance(phs, list) else [phs]
    total = sum(int(p["n"]) for p in phs) or 1
    data["phantoms"] = [{**p, "n": max(1, int(round(int(p["n"]) * n_phantoms / total)))} for p in phs]
    scale = sum(p["n"] for p in data["phantoms"]) / total        # real slices keep their share of the draws
    data["real_backgrounds"] = [{**r, "weight": round(float(r.get("weight", 1.0)) * scale, 3)}
                                for r in data.get("real_backgrounds") or []]
    return data, dict(c.get("synthetic", {})), dict(c.get("validation", {}))


def finetune_config(labels: Path, n_cases: int, steps: int | None = None, replay_phantoms: int = 40) -> str:
    """A ``sscild train scoring`` config that fine-tunes the shipped S-Net on ``labels`` (paths beside it) with
    replay of ``replay_phantoms`` of its own training phantoms (0: no replay), L2-SP, frozen batch norm, a refitted
    calibration and a guard (the ``finetune:`` section; defaults from :mod:`sscild.config`)."""
    import yaml

    from ..config import TRAIN_DEFAULTS, FinetuneSettings
    from ..scoring.snet import DEFAULT_DIR, load_snet

    _, cfg, _ = load_snet()
    conf = {k: v for k, v in cfg.__dict__.items() if k != "calibration"}
    ft = {f.name: f.default for f in dataclasses.fields(FinetuneSettings) if f.name != "replay"}
    replay, synthetic, validation = replay_sections(replay_phantoms) if replay_phantoms else ({}, {}, {})
    if replay_phantoms:
        ft["replay"] = replay
    else:
        ft["replay_share"] = 0.0
        validation = dict(FALLBACK_VALIDATION)
    train = {**{k: v for k, v in TRAIN_DEFAULTS["snet_finetune"].items() if k != "loss"}, "seed": 0}
    c = {"description": f"expert consensus of a sscild reader study ({n_cases} scans), fine-tuned from the shipped "
                        "S-Net", "label_kind": "expert", "out": f"{labels.stem}_snet", "init": str(DEFAULT_DIR),
         "config": conf, "data": {"dataset_csv": labels.name}, "synthetic": synthetic or {"fraction": 0.0},
         "validation": validation, "finetune": ft,
         "train": {**train, **({"steps": int(steps)} if steps else {})}, "calibrate": True}
    return "# sscild train scoring --config " + f"{labels.stem}_snet.yaml\n" + yaml.safe_dump(c, sort_keys=False)


def _write_csv(df: pd.DataFrame, path: Path) -> Path:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.4f")
    return path


def export_labels(study_dir: str | Path, out: str | Path, *, how: str = "mean", db_url: str | None = None,
                  steps: int | None = None, replay_phantoms: int = 40) -> Export:
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
