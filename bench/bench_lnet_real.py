"""L-Net on real anatomy: leave-one-real-scan-out fine-tuning against the by-eye level annotations.

For every real scan of ../shared/data annotated in tests/data/real_levels.json (held out in turn), L-Net is
fine-tuned from the shipped weights on phantoms plus the other annotated real scans, each real scan also under
random acquisitions (sscild.acquisition via sscild.scoring.lnet.acquired_cases); targets are the midpoints of the
annotated ranges (levels out of view are left out of the loss). The held-out scan is then scored by the anatomical
method (find_levels), the shipped L-Net, the fine-tuned L-Net and the combined method (combine_levels), each level
as "in" (inside the annotated range) or its distance to the range in mm.

Prepared volumes, anatomy and per-fold predictions are cached in the benchmarks' work folder (lnet_real/<the shipped
weights' sha256, first 12 digits>: new weights or their input config start afresh; delete it to start over).
Environment: LNET_REAL_FOLDS=a,b (scan names, default all), LNET_REAL_STEPS (default 150),
LNET_REAL_PHANTOM_CHECK=N (also fine-tune on all real scans and compare with the shipped weights on N of the
phantom test seeds of bench/bench_lnet.py).
"""
from __future__ import annotations

import json
import os
import pickle
import time

import numpy as np
from common import REPO, SHARED_DATA, WORK, write_section

from sscild.domain import LEVELS
from sscild.levels import combine_levels, find_levels
from sscild.scoring.lnet import (LevelCase, Prepared, acquired_cases, annotated_midpoints, load_lnet,
                                 phantom_cases, predict_levels, train_lnet)

ANNOT = json.loads((REPO / "tests" / "data" / "real_levels.json").read_text())
CACHE = WORK / "lnet_real"
_WEIGHTS = [""]          # the shipped weights' sha256 (12 digits), set by main: the cache's subfolder
N_ACQ = 4                # simulated acquisitions per real scan, besides the scan itself
REDUCE = 4               # in-plane block averaging before the acquisition model (see _reduced)
N_PHANTOMS = 12          # training phantoms (seeds 5000..), a subset of the shipped weights' training set
STEPS = int(os.environ.get("LNET_REAL_STEPS", 60))
BATCH, LR = 4, 5e-4
FROZEN = 4                # the first two conv blocks (conv + pool each) keep the shipped weights
PHANTOM_SEEDS = range(7000, 7030)   # the test seeds of bench/bench_lnet.py


def _cached(name: str, make):
    path = CACHE / _WEIGHTS[0] / f"{name}.pkl"
    if path.exists():
        return pickle.loads(path.read_bytes())
    value = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(pickle.dumps(value))
    tmp.replace(path)
    return value


def _key(name: str) -> str:
    return name.replace("/", "_").replace(".nii.gz", "")


def _load(name: str):
    from sscild.io import load_ct

    return load_ct(SHARED_DATA.joinpath(*name.split("/")))


def _reduced(scan, lung: np.ndarray, f: int = REDUCE):
    """The scan and lung mask block-averaged ``f`` x ``f`` in-plane (L-Net sees the whole field of view at 48 x 48
    pixels, so the acquisition model runs ``f**2`` times faster on this grid with the same z profile)."""
    import dataclasses

    nz, ny, nx = scan.shape
    ny, nx = ny // f * f, nx // f * f

    def pool(a):
        return a[:, :ny, :nx].reshape(nz, ny // f, f, nx // f, f).mean(axis=(2, 4))

    hu = np.rint(pool(scan.hu.astype(np.float32))).astype(np.int16)
    sp = (scan.spacing[0], scan.spacing[1] * f, scan.spacing[2] * f)
    return dataclasses.replace(scan, hu=hu, spacing=sp, input_geometry=None), pool(lung.astype(np.float32)) >= 0.5


def real_material(name: str, cfg) -> dict:
    """Anatomical levels and the prepared training cases (scan + N_ACQ acquisitions) of one real scan, cached."""
    def make():
        from sscild.anatomy import segment_lungs

        scan = _load(name)
        lungs = segment_lungs(scan)
        rng = np.random.default_rng(sum(map(ord, name)))  # a fixed draw per scan
        small, lung = _reduced(scan, lungs.labels > 0)
        cases = acquired_cases(_key(name), small, annotated_midpoints(ANNOT)[name], cfg, N_ACQ, rng, lung=lung)
        return {"anatomy": find_levels(scan, lungs),
                "cases": [(c.case_id, c.group, c.prep.volume, c.prep.z_world, c.positions) for c in cases]}
    return _cached("real_" + _key(name), make)


def _cases(material: dict) -> list[LevelCase]:
    return [LevelCase(i, g, Prepared(v, z), p) for i, g, v, z, p in material["cases"]]


def phantoms(cfg) -> list[LevelCase]:
    raw = _cached(f"phantoms_{N_PHANTOMS}", lambda: [(c.case_id, c.group, c.prep.volume, c.prep.z_world, c.positions)
                                                      for c in phantom_cases(N_PHANTOMS, 5000, cfg)])
    return [LevelCase(i, g, Prepared(v, z), p) for i, g, v, z, p in raw]


def fine_tune(train: list[LevelCase], cfg, seed: int):
    model, _, _ = load_lnet()
    for p in model[:FROZEN].parameters():  # CPU: no backward through the full-resolution blocks
        p.requires_grad_(False)
    t0 = time.perf_counter()
    model, log = train_lnet(train, cfg=cfg, model=model, steps=STEPS, batch_size=BATCH, lr=LR, loss="l1",
                            warmup_steps=0, seed=seed, quiet=True)
    return model, time.perf_counter() - t0


def fold(name: str, names: list[str], cfg, shipped) -> dict:
    """Fine-tune without ``name``, then the four methods' levels on ``name`` (cached per fold and step count)."""
    def make():
        train = phantoms(cfg) + [c for o in names if o != name for c in _cases(real_material(o, cfg))]
        model, secs = fine_tune(train, cfg, seed=sorted(names).index(name))
        scan = _load(name)
        anat = real_material(name, cfg)["anatomy"]
        ship, ft = predict_levels(shipped, scan, cfg), predict_levels(model, scan, cfg)
        return {"seconds": secs, "n_train": len(train), "anatomy": anat.z_mm, "shipped": ship.z_mm,
                "fine-tuned": ft.z_mm, "combined": combine_levels(anat, ft).z_mm,
                "combined (shipped)": combine_levels(anat, ship).z_mm}
    return _cached(f"fold_{_key(name)}_{STEPS}", make)


def verdict(z, rng) -> str:
    """'in', the distance to the annotated range in mm, or what went wrong with a level out of view."""
    if rng is None:
        return "not placed (ok)" if z is None else f"placed at {z:.0f} (out of view)"
    if z is None:
        return "not placed"
    lo, hi = rng
    return "in" if lo - 1e-6 <= z <= hi + 1e-6 else f"{min(abs(z - lo), abs(z - hi)):.1f} mm"


METHODS = ("anatomy", "shipped", "fine-tuned", "combined", "combined (shipped)")


def _distance(z, rng) -> float | None:
    if rng is None or z is None:
        return None
    return 0.0 if rng[0] <= z <= rng[1] else min(abs(z - rng[0]), abs(z - rng[1]))


def _table(results: dict) -> list[str]:
    lines = ["| held-out scan | level | annotated z (mm) | " + " | ".join(METHODS) + " |",
             "|---|---|---|" + "---|" * len(METHODS)]
    summary = {m: [] for m in METHODS}
    for name, r in results.items():
        for n in LEVELS:
            rng = ANNOT["scans"][name]["levels"][n]["z_mm"]
            lines.append(f"| {name.split('/')[0]} | {n} | {'out of view' if rng is None else f'{rng[0]:g}..{rng[1]:g}'}"
                         f" | " + " | ".join(verdict(r[m][n], rng) for m in METHODS) + " |")
            for m in METHODS:
                d = _distance(r[m][n], rng)
                if d is not None:
                    summary[m].append(d)
    lines += ["", "| method | levels inside the range | mean distance to the range (mm) | max (mm) |", "|---|---|---|---|"]
    for m in METHODS:
        d = np.array(summary[m])
        lines.append(f"| {m} | {int((d == 0).sum())} / {len(d)} | {d.mean():.1f} | {d.max():.1f} |" if len(d) else
                     f"| {m} | 0 / 0 | - | - |")
    return lines


def phantom_check(names: list[str], cfg, shipped, n: int) -> list[str]:
    """Fine-tune on all annotated real scans + phantoms; MAE per level on n phantom test seeds vs the shipped."""
    from sscild.phantom import make_phantom

    train = phantoms(cfg) + [c for o in names for c in _cases(real_material(o, cfg))]
    model, secs = fine_tune(train, cfg, seed=99)
    err = {"shipped": [], "fine-tuned": []}
    for s in list(PHANTOM_SEEDS)[:n]:
        scan, tr = make_phantom(s, extent=float((s * 13) % 71))
        for m, net in (("shipped", shipped), ("fine-tuned", model)):
            g = predict_levels(net, scan, cfg)
            err[m].append([abs((g.z_mm[k] if g.z_mm[k] is not None else np.nan) - tr.levels_z[k]) for k in LEVELS])
    out = ["", f"Phantom test seeds {PHANTOM_SEEDS.start}-{PHANTOM_SEEDS.start + n - 1} (those of bench_lnet), L-Net "
           f"fine-tuned on all {len(names)} annotated real scans + phantoms ({STEPS} steps, {secs:.0f} s): MAE (mm)",
           "", "| level | shipped | fine-tuned on all real |", "|---|---|---|"]
    a, b = np.array(err["shipped"]), np.array(err["fine-tuned"])
    out += [f"| {k} | {np.nanmean(a[:, j]):.2f} | {np.nanmean(b[:, j]):.2f} |" for j, k in enumerate(LEVELS)]
    return out


def _priority(name: str) -> int:
    """Fold order: the full chests first (5, 8, 2.5 mm; PET table without L1), the neck-and-apex crop last."""
    order = ("a0001", "a0002", "lidc", "acrin", "fused")
    return next((i for i, k in enumerate(order) if k in name), len(order))


def main():
    import torch

    torch.manual_seed(0)
    shipped, cfg, card = load_lnet()
    _WEIGHTS[0] = card["weights"]["sha256"][:12]
    names = sorted(ANNOT["scans"], key=_priority)
    if not SHARED_DATA.exists():
        write_section("lnet_real", "L-Net on real anatomy (issue 17 item 5)", "python bench/run_all.py lnet_real",
                      ["Not measured: ../shared/data is absent."])
        return
    wanted = [w for w in os.environ.get("LNET_REAL_FOLDS", "").split(",") if w] or names
    results = {}
    for name in names:
        if name in wanted or (CACHE / _WEIGHTS[0] / f"fold_{_key(name)}_{STEPS}.pkl").exists():
            results[name] = fold(name, names, cfg, shipped)
            print(name, "done", flush=True)
    r0 = next(iter(results.values()))
    lines = [f"Leave-one-real-scan-out over the {len(names)} annotated real scans of `tests/data/real_levels.json`; "
             f"held out and measured: {len(results)} ({', '.join(n.split('/')[0] for n in results)}). "
             f"Per fold L-Net is fine-tuned from the shipped weights (`src/sscild/models/lnet`; first two conv blocks "
             f"frozen) for {STEPS} steps of batch {BATCH} (lr {LR:g}, L1 loss, {np.mean([r['seconds'] for r in results.values()]):.0f} s per fold "
             f"on this shared CPU) on {N_PHANTOMS} phantoms (seeds 5000-{5000 + N_PHANTOMS - 1}) and the other real "
             f"scans, each as read plus {N_ACQ} random acquisitions (`sscild.acquisition.random_acquisition` + "
             f"`simulate` on the scan block-averaged {REDUCE}x{REDUCE} in-plane: slice thickness 0.6-8 mm and "
             f"interval incl. sparse HRCT, kernel, noise, gravity), "
             f"{r0['n_train']} training cases per fold. Targets on real scans: the midpoint of each annotated range; "
             "levels out of view are left out of the loss.", "",
             "Each cell: `in` = inside the annotated acceptable range, else the distance to it (mm). "
             "combined = `combine_levels(anatomy, fine-tuned)`; combined (shipped) = `combine_levels(anatomy, shipped)`.",
             ""] + _table(results)
    n_check = int(os.environ.get("LNET_REAL_PHANTOM_CHECK", 0))
    if n_check:
        lines += phantom_check(names, cfg, shipped, n_check)
    env = f"LNET_REAL_PHANTOM_CHECK={n_check} " if n_check else ""
    write_section("lnet_real", "L-Net on real anatomy, leave one real scan out (issue 17 item 5)",
                  f"{env}python bench/run_all.py lnet_real", lines)


if __name__ == "__main__":
    main()
