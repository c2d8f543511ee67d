"""A reader study built from analysed scans: ``sscild review create``.

Layout of a study folder::

    study.json            settings, readers' names, per case and level the slices shown (world z, mm)
    cases/<case>/         de-identified PNGs: <level>_<offset>_<window>.png, heat maps <level>_hm_<pattern>.png
    tool.json             the tool's scores per case and level (shown only after an answer, when the study says so)
    key.csv               case id -> analysed folder and source scan: the linking key (mode 0600), read only by
                          ``review export``; never served. Keep it apart when the study folder is shared.
    review.db             the answers (SQLite, WAL), unless the study runs on a PostgreSQL URL

Case ids are random; no name, ID, date, path or DICOM header reaches the images or ``study.json``.
"""
from __future__ import annotations

import csv
import datetime as _dt
import math
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import __version__
from ..domain import LEVELS, PATTERNS
from ..errors import ConfigError
from ..util import atomic_path, read_json, write_json

#: Window presets (level, width) in HU.
WINDOWS: dict[str, tuple[float, float]] = {"lung": (-600.0, 1500.0), "mediastinal": (40.0, 400.0)}
READER_NAME = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


class StudyError(ConfigError):
    """A study cannot be created or opened (bad folder, readers, sources)."""


@dataclass(frozen=True)
class Source:
    """An analysed scan: its output folder and the scan it was made from."""

    outdir: Path
    scan_path: Path


@dataclass(frozen=True)
class Study:
    """An opened study folder: its settings (``study.json``) and where its files lie."""

    root: Path
    settings: dict

    @property
    def neighbours(self) -> int:
        return int(self.settings["neighbours"])

    @property
    def heatmaps(self) -> bool:
        return bool(self.settings["heatmaps"])

    def case(self, case_id: str) -> dict:
        return self.settings["cases"][case_id]

    def image(self, case_id: str, name: str) -> Path:
        return self.root / "cases" / case_id / name

    def tool(self) -> dict:
        p = self.root / "tool.json"
        return read_json(p) if p.exists() else {}


def open_study(root: str | Path) -> Study:
    """Open a study folder made by :func:`create_study`."""
    root = Path(root)
    f = root / "study.json"
    if not f.exists():
        raise StudyError(f"{root} is not a reader study (no study.json): make one with "
                         "sscild review create STUDY --from OUTDIR --readers ana,ben")
    return Study(root, read_json(f))


def _scan_for(outdir: Path, status: Path | None) -> Path | None:
    if status is not None and status.exists():
        return Path(read_json(status)["path"])
    for cand in (outdir / "phantom" / "dicom", outdir / "phantom" / "ct.nii.gz"):   # sscild demo
        if cand.exists():
            return cand
    return None


def find_sources(folders: Sequence[str | Path], scans: dict[str, str] | None = None) -> list[Source]:
    """Analysed scans in ``folders``: ``sscild analyze`` / ``demo`` output folders, or ``sscild batch`` output
    folders (``scans/<id>/`` with the source path in ``status/<id>.json``). ``scans`` maps a folder name to its
    source scan where the folder does not record it (``analyze`` output)."""
    scans = scans or {}
    out = []
    for folder in map(Path, folders):
        if (folder / "scans").is_dir():
            items = [(d, folder / "status" / f"{d.name}.json") for d in sorted((folder / "scans").iterdir())
                     if (d / "levels.json").exists()]
        elif (folder / "levels.json").exists():
            items = [(folder, None)]
        else:
            raise StudyError(f"{folder} holds no analysed scan (no levels.json, no scans/*/levels.json): give "
                             "an output folder of sscild analyze, demo or batch")
        for d, status in items:
            p = Path(scans[d.name]) if d.name in scans else _scan_for(d, status)
            if p is None or not p.exists():
                raise StudyError(f"{d}: the source scan is not known or missing ({p}); give it with --scans "
                                 "CSV (columns folder,path)")
            out.append(Source(d, p))
    if not out:
        raise StudyError("no analysed scans found in " + ", ".join(map(str, folders)))
    return out


def window_png(hu: np.ndarray, window: str, path: Path) -> None:
    """Write one slice as an 8-bit PNG in a window preset (no text burned in)."""
    from PIL import Image

    lv, w = WINDOWS[window]
    g = np.clip((hu.astype(np.float32) - (lv - w / 2)) / w * 255.0, 0, 255).astype(np.uint8)
    with atomic_path(path) as tmp:
        Image.fromarray(g).save(tmp, format="PNG")


def heatmap_png(hu: np.ndarray, dp: np.ndarray, path: Path) -> None:
    """The level slice (lung window) with the score drop of an occlusion heat map overlaid (inferno; the
    stronger, the more that region raised the score). No numbers are burned in, so the tool's score stays hidden."""
    from matplotlib import colormaps
    from PIL import Image

    lv, w = WINDOWS["lung"]
    g = np.clip((hu.astype(np.float32) - (lv - w / 2)) / w, 0, 1)[..., None].repeat(3, -1)
    drop = np.clip(-np.asarray(dp, np.float32), 0, None)
    a = np.clip(drop / max(float(drop.max()), 1e-6), 0, 1)
    colour = colormaps["inferno"](a)[..., :3]
    alpha = (0.6 * (a > 0.05))[..., None]
    rgb = ((1 - alpha) * g + alpha * colour) * 255
    with atomic_path(path) as tmp:
        Image.fromarray(rgb.astype(np.uint8)).save(tmp, format="PNG")


def _level_slices(levels_json: dict) -> dict[str, float]:
    return {d["name"]: float(d["z_mm"]) for d in levels_json.get("levels", [])
            if d.get("name") in LEVELS and d.get("z_mm") is not None}


def extract_case(src: Source, case_id: str, root: Path, *, neighbours: int, heatmaps: bool) -> tuple[dict, dict]:
    """Write the PNGs of one case; return its ``study.json`` entry and the tool's scores per level."""
    import SimpleITK as sitk

    from ..io import load_ct

    scan = load_ct(src.scan_path)
    levels = _level_slices(read_json(src.outdir / "levels.json"))
    scores = read_json(src.outdir / "scores.json").get("levels", {}) if (src.outdir / "scores.json").exists() \
        else {}
    entry: dict = {"levels": {}, "pixel_mm": float(scan.spacing[1]), "slice_mm": float(abs(scan.spacing[0]))}
    tool = {}
    for name, z in levels.items():
        k = scan.slice_at_z(z)
        if k is None:
            continue
        offs = [o for o in range(-neighbours, neighbours + 1) if 0 <= k + o < scan.shape[0]]
        for o in offs:
            for w in WINDOWS:
                window_png(scan.hu[k + o], w, root / "cases" / case_id / f"{name}_{o}_{w}.png")
        hms = []
        for p in PATTERNS if heatmaps else ():
            f = src.outdir / f"heatmap_{name}_{p}.nii.gz"
            if f.exists():
                heatmap_png(scan.hu[k], sitk.GetArrayFromImage(sitk.ReadImage(str(f))).reshape(scan.hu[k].shape),
                            root / "cases" / case_id / f"{name}_hm_{p}.png")
                hms.append(p)
        entry["levels"][name] = {"z_mm": {str(o): scan.z_mm(k + o) for o in offs}, "heatmaps": hms}
        if name in scores:
            tool[name] = {p: scores[name].get(p) for p in PATTERNS}
    if not entry["levels"]:
        raise StudyError(f"{src.outdir}: no Goh level lies inside its scan {src.scan_path.name}")
    return entry, tool


def reader_order(case_ids: Sequence[str], repeat: float, rng: np.random.Generator) -> list[tuple[str, int]]:
    """One reader's list: every case once in random order, then ``ceil(repeat * n)`` of them again (replicate 1)
    in random order, never a repeat right after its own first reading.

    >>> reader_order(["a", "b", "c"], 0.1, np.random.default_rng(0))[-1][1]
    1
    """
    order = [str(c) for c in rng.permutation(list(case_ids))]
    n_rep = min(len(order), math.ceil(repeat * len(order))) if repeat > 0 else 0
    pool = order[:-1] if n_rep < len(order) else order
    reps = [str(c) for c in rng.choice(pool, n_rep, replace=False)] if n_rep else []
    if len(reps) > 1 and reps[0] == order[-1]:
        reps = reps[1:] + reps[:1]
    return [(c, 0) for c in order] + [(c, 1) for c in reps]


def _check_readers(readers: Sequence[str]) -> list[str]:
    names = [r.strip() for r in readers if r.strip()]
    bad = [r for r in names if not READER_NAME.match(r)]
    if not names or bad or len(set(names)) != len(names):
        raise StudyError(f"readers must be distinct short names (letters, digits, _ or -), got {list(readers)}")
    return names


def _write_key(root: Path, rows: list[tuple[str, Source]]) -> None:
    with atomic_path(root / "key.csv") as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["case_id", "analysed_folder", "scan_path"])
            for cid, s in rows:
                w.writerow([cid, str(s.outdir.resolve()), str(s.scan_path.resolve())])
        tmp.chmod(0o600)
    (root / "key.csv").chmod(0o600)


def create_study(root: str | Path, sources: Sequence[Source], readers: Sequence[str], *, repeat: float = 0.1,
                 heatmaps: bool = False, show_tool_after: bool = False, neighbours: int = 3, seed: int = 0,
                 db_url: str | None = None, quiet: bool = True) -> dict[str, str]:
    """Build a study folder and its database; return each reader's access token (shown once, stored hashed).

    Parameters
    ----------
    root : study folder (created; must not hold a study already)
    sources : analysed scans (:func:`find_sources`)
    readers : readers' short names
    repeat : share of cases each reader reads a second time, later, for intra-reader agreement
    heatmaps : ask readers to rate the heat maps (the analysed folders need ``--heatmaps`` outputs)
    show_tool_after : show the tool's scores after each answer (never before)
    neighbours : slices shown on each side of a level (to scroll, and to pick the right slice of a misplaced level)
    db_url : a database URL instead of ``STUDY/review.db`` (e.g. PostgreSQL for several sites)
    """
    from sqlalchemy.orm import Session

    from ..util import progress
    from .db import Assignment, Reader, database_url, open_db, token_hash

    root = Path(root)
    names = _check_readers(readers)
    if (root / "study.json").exists():
        raise StudyError(f"{root} already holds a study; choose a new folder")
    if not 0 <= repeat <= 1 or not 0 <= neighbours <= 10:
        raise StudyError(f"--repeat must be 0-1 and neighbours 0-10, got {repeat}, {neighbours}")
    rng = np.random.default_rng(seed)
    ids = [f"c{h}" for h in (secrets.token_hex(4) for _ in sources)]
    cases, tool = {}, {}
    for cid, src in progress(list(zip(ids, sources)), "cases", quiet=quiet):
        cases[cid], tool[cid] = extract_case(src, cid, root, neighbours=neighbours, heatmaps=heatmaps)
    if heatmaps and not any(lv["heatmaps"] for c in cases.values() for lv in c["levels"].values()):
        raise StudyError("--heatmaps: the analysed folders hold no heat maps; run sscild analyze --heatmaps")
    _write_key(root, list(zip(ids, sources)))
    write_json(root / "tool.json", tool)
    settings = {"format": "sscild-review-1", "software": f"sscild {__version__}",
                "created": _dt.date.today().isoformat(), "readers": names, "repeat": repeat, "heatmaps": heatmaps,
                "show_tool_after": show_tool_after, "neighbours": neighbours, "windows": WINDOWS,
                "db_url": db_url is not None, "cases": cases}
    tokens = {n: secrets.token_urlsafe(16) for n in names}
    engine = open_db(database_url(root, db_url))
    with Session(engine) as s, s.begin():
        for n in names:
            r = Reader(name=n, token_sha256=token_hash(tokens[n]))
            s.add(r)
            s.flush()
            s.add_all([Assignment(reader_id=r.id, position=i, case_id=c, replicate=rep)
                       for i, (c, rep) in enumerate(reader_order(ids, repeat, rng))])
    engine.dispose()
    write_json(root / "study.json", settings)
    return tokens
