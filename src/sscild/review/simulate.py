"""Simulated reader studies: analysed folders from scans with known truth, and readers = truth + noise.

Used by the tests and ``bench/bench_review.py`` to check that the statistics recover a known reader noise and that
labels exported from a study train S-Net.

Examples
--------
>>> import numpy as np
>>> a = simulated_answer({"TOT": 32.0, "GG": 20.0, "RET": 14.0}, 4.5, np.random.default_rng(0))
>>> all(v % 5 == 0 for v in a.values()) and max(a["GG"], a["RET"]) <= a["TOT"] <= a["GG"] + a["RET"]
True
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from ..domain import LEVELS, PATTERNS, LesionClass, area_percent
from ..util import write_json

#: Heat-map stand-ins: score drop on the true lesion classes of each pattern.
PATTERN_CLASSES = {"TOT": (LesionClass.GG, LesionClass.RET), "GG": (LesionClass.GG,), "RET": (LesionClass.RET,)}


def level_truth(lesions: np.ndarray, lung: np.ndarray, k: int) -> dict[str, float]:
    """TOT, GG and RET (% of the slice's lung) of slice ``k`` of a lesion label map."""
    les = lesions[k]
    return {p: area_percent(np.isin(les, [int(c) for c in cls]), lung[k]) or 0.0
            for p, cls in PATTERN_CLASSES.items()}


def truth_folder(out: str | Path, scan, levels_z: Mapping[str, float], tool: Mapping[str, Mapping[str, float]],
                 lesions: np.ndarray | None = None) -> Path:
    """Write an analysed folder the way ``sscild demo`` does (``phantom/ct.nii.gz``, ``levels.json``,
    ``scores.json``) from known levels and scores (``tool``), and, given ``lesions``, heat maps that drop the
    score by 5 points on each pattern's true lesions. Returns the folder."""
    import SimpleITK as sitk

    from ..util import atomic_path

    out = Path(out)
    (out / "phantom").mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "phantom" / "ct.nii.gz") as tmp:
        sitk.WriteImage(scan.to_sitk(), str(tmp))
    names = [n for n in LEVELS if levels_z.get(n) is not None]       # a level out of view is left out
    write_json(out / "levels.json", {"method": "truth", "levels": [
        {"name": n, "z_mm": float(levels_z[n]), "slice_index": scan.slice_at_z(levels_z[n])} for n in names]})
    write_json(out / "scores.json", {"levels": {n: {p: float(tool[n][p]) for p in PATTERNS} for n in names}})
    for n in names if lesions is not None else ():
        k = scan.slice_at_z(levels_z[n])
        for p, cls in PATTERN_CLASSES.items():
            dp = -5.0 * np.isin(lesions[k], [int(c) for c in cls]).astype(np.float32)
            with atomic_path(out / f"heatmap_{n}_{p}.nii.gz") as tmp:
                sitk.WriteImage(sitk.GetImageFromArray(dp[None]), str(tmp))
    return out


def phantom_folder(out: str | Path, seed: int, extent: float, **phantom_kw) -> Path:
    """An analysed folder of a phantom (:func:`sscild.phantom.make_phantom`) with its true levels and scores."""
    from ..phantom import make_phantom

    scan, truth = make_phantom(seed, extent=extent, **phantom_kw)
    return truth_folder(out, scan, truth.levels_z, truth.level_scores, truth.lesions)


def round5(v: float) -> int:
    """Nearest 5 % step inside 0-100."""
    return int(np.clip(5 * np.round(v / 5.0), 0, 100))


def simulated_answer(truth: Mapping[str, float], sd: float, rng: np.random.Generator) -> dict[str, int]:
    """A reader's answer: truth + Gaussian noise of ``sd`` points, in 5 % steps, TOT kept in [max, sum]."""
    gg, ret = round5(truth["GG"] + rng.normal(0, sd)), round5(truth["RET"] + rng.normal(0, sd))
    tot = int(np.clip(round5(truth["TOT"] + rng.normal(0, sd)), max(gg, ret), gg + ret))
    return {"TOT": tot, "GG": gg, "RET": ret}


def reader_cases(study_root: str | Path, db_url: str | None = None) -> dict[tuple[str, int], str]:
    """``(reader, position) -> case_id`` of a study (for simulations that must know what a reader is shown)."""
    import sqlalchemy as sa

    from .db import Assignment, Reader, database_url, open_db

    engine = open_db(database_url(study_root, db_url))
    with engine.connect() as c:
        rows = c.execute(sa.select(Reader.name, Assignment.position, Assignment.case_id)
                         .join(Assignment, Assignment.reader_id == Reader.id)).all()
    engine.dispose()
    return {(r, p): cid for r, p, cid in rows}


def case_truth(study_root: str | Path) -> dict[str, dict[str, dict[str, float]]]:
    """The scores stored as the tool's (``tool.json``): in a simulated study, the truth of every case and level."""
    from .study import open_study

    return open_study(study_root).tool()


def read_all(client, token: str, reader: str, truth: Mapping, cases: Mapping, sd: float,
             rng: np.random.Generator) -> int:
    """Let one simulated reader answer every level of their list through the web API (``client``: a FastAPI
    TestClient or an httpx client on a running server). Returns the number of answers saved."""
    hdr = {"Authorization": f"Bearer {token}"}
    n = 0
    while True:
        t = client.get("/api/task", headers=hdr).json()
        if t["done"]:
            return n
        s: dict = simulated_answer(truth[cases[(reader, t["position"])]][t["level"]], sd, rng)
        if t["heatmaps"]:                      # a study with heat maps wants every one rated (here at random, 2-5)
            s["likert"] = {p: int(rng.integers(2, 6)) for p in t["heatmaps"]}
        r = client.put(f"/api/answer/{t['position']}/{t['level']}", headers=hdr, json=s)
        r.raise_for_status()
        n += 1
