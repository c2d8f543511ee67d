"""L-Net on real anatomy: leave-one-real-scan-out fine-tuning against the by-eye level annotations.

For every real scan of ../shared/data annotated in tests/data/real_levels.json (held out in turn), L-Net is
fine-tuned from the phantom-only weights (bench/models/lnet_phantoms) on phantoms plus the other annotated real
scans, each real scan also under random acquisitions (sscild.acquisition via sscild.scoring.lnet.acquired_cases);
targets are the midpoints of the annotated ranges (levels out of view are left out of the loss). The held-out scan
is then scored by the anatomical method (find_levels), the phantom-only L-Net, the fine-tuned L-Net and the
combined method (combine_levels), each level as "in" (inside the annotated range) or its distance to the range in
mm. The shipped L-Net is made by the same recipe on all the annotated scans:

    python bench/bench_lnet_real.py --ship      # then: python bench/bench_lnet.py --record-card

Prepared volumes, anatomy and per-fold predictions are cached in the benchmarks' work folder (lnet_real/<the
phantom-only weights' sha256, first 12 digits>: new weights or their input config start afresh; delete it to start
over). Environment: LNET_REAL_FOLDS=a,b (scan names, default all), LNET_REAL_STEPS (default 60),
LNET_REAL_PHANTOM_CHECK=N (also fine-tune on all real scans and compare with the phantom-only weights on N of the
phantom test seeds of bench/bench_lnet.py).
"""
from __future__ import annotations

import functools
import json
import os
import pickle
import sys
import time

import numpy as np
from common import REPO, SHARED_DATA, WORK, write_section

from sscild.domain import LEVELS
from sscild.levels import combine_levels, find_levels
from sscild.scoring.lnet import (LevelCase, Prepared, acquired_cases, annotated_midpoints, load_lnet,
                                 phantom_cases, predict_levels, train_lnet)

ANNOT = json.loads((REPO / "tests" / "data" / "real_levels.json").read_text())
CACHE = WORK / "lnet_real"
BASE = REPO / "bench" / "models" / "lnet_phantoms"   # phantom-only weights (configs/lnet_phantoms.yaml)
N_ACQ = 4                # simulated acquisitions per real scan, besides the scan itself
REDUCE = 4               # in-plane block averaging before the acquisition model (see _reduced)
N_PHANTOMS = 12          # training phantoms (seeds 5000..), a subset of the phantom-only weights' training set
STEPS = int(os.environ.get("LNET_REAL_STEPS", 60))
BATCH, LR = 4, 5e-4
FROZEN = 4                # the first two conv blocks (conv + pool each) keep the phantom-only weights
PHANTOM_SEEDS = range(7000, 7030)   # the test seeds of bench/bench_lnet.py


@functools.cache
def _cache_dir():
    """The cache's folder for the phantom-only weights: named by their sha256 (12 digits)."""
    return CACHE / json.loads((BASE / "card.json").read_text())["weights"]["sha256"][:12]


def _cached(name: str, make):
    path = _cache_dir() / f"{name}.pkl"
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
    model, _, _ = load_lnet(BASE)
    for p in model[:FROZEN].parameters():  # CPU: no backward through the full-resolution blocks
        p.requires_grad_(False)
    t0 = time.perf_counter()
    model, log = train_lnet(train, cfg=cfg, model=model, steps=STEPS, batch_size=BATCH, lr=LR, loss="l1",
                            warmup_steps=0, seed=seed, quiet=True)
    return model, time.perf_counter() - t0


def fold(name: str, names: list[str], cfg, phantom_only) -> dict:
    """Fine-tune without ``name``, then the four methods' levels on ``name`` (cached per fold and step count)."""
    def make():
        train = phantoms(cfg) + [c for o in names if o != name for c in _cases(real_material(o, cfg))]
        model, secs = fine_tune(train, cfg, seed=sorted(names).index(name))
        scan = _load(name)
        anat = real_material(name, cfg)["anatomy"]
        base, ft = predict_levels(phantom_only, scan, cfg), predict_levels(model, scan, cfg)
        return {"seconds": secs, "n_train": len(train), "anatomy": anat.z_mm, "phantom-only": base.z_mm,
                "fine-tuned": ft.z_mm, "combined": combine_levels(anat, ft, scan=scan).z_mm,
                "combined (phantom-only)": combine_levels(anat, base, scan=scan).z_mm}
    return _cached(f"fold_{_key(name)}_{STEPS}", make)


def verdict(z, rng) -> str:
    """'in', the distance to the annotated range in mm, or what went wrong with a level out of view."""
    if rng is None:
        return "not placed (ok)" if z is None else f"placed at {z:.0f} (out of view)"
    if z is None:
        return "not placed"
    lo, hi = rng
    return "in" if lo - 1e-6 <= z <= hi + 1e-6 else f"{min(abs(z - lo), abs(z - hi)):.1f} mm"


METHODS = ("anatomy", "phantom-only", "fine-tuned", "combined", "combined (phantom-only)")


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


def all_real(names: list[str], cfg):
    """The recipe of the folds on all annotated real scans (the shipped L-Net): (model, seconds, training cases)."""
    train = phantoms(cfg) + [c for o in names for c in _cases(real_material(o, cfg))]
    model, secs = fine_tune(train, cfg, seed=99)
    return model, secs, len(train)


def ship(names: list[str], cfg, base_card: dict, model, secs: float, n_train: int) -> None:
    """Write ``model`` (:func:`all_real`) as the shipped L-Net with its card: the validation split on the phantom
    config's validation seeds (6000-6029) here, the test split by bench_lnet.py --record-card."""
    from sscild.bundle import metric_set
    from sscild.scoring.lnet import DEFAULT_DIR, evaluate_cases, level_metrics, lnet_card, save_lnet

    ev = evaluate_cases(model, phantom_cases(30, 6000, cfg), cfg)
    metrics = [metric_set("validation", level_metrics(ev["pred"], ev["truth"]), n=30, predictions="validation",
                          recompute="levels", description="30 validation phantoms of configs/lnet_phantoms.yaml "
                                                          "(seeds 6000-6029)")]
    card = lnet_card(cfg, label_kind="synthetic exact + by-eye", metrics=metrics, description=(
        f"L-Net {base_card['version']} (phantom-only, {base_card['training']['description']}) fine-tuned on "
        f"{N_PHANTOMS} of those phantoms (seeds 5000-{5000 + N_PHANTOMS - 1}, exact truth) and {len(names)} real chest "
        "CTs of ../shared/data with by-eye level annotations (tests/data/real_levels.json; targets: midpoints of the "
        f"acceptable ranges, levels out of view left out), each real scan plus {N_ACQ} simulated acquisitions"),
        training={"recipe": "python bench/bench_lnet_real.py --ship", "init": "bench/models/lnet_phantoms",
                  "train_cases": n_train, "steps": STEPS, "batch_size": BATCH, "lr": LR, "loss": "l1",
                  "frozen": "the first two conv blocks", "training_seconds": round(secs, 1)})
    card["version"] = "3.0.1"
    card["changelog"] = [c for c in base_card["changelog"] if not c["version"].endswith("-phantoms")] + [
        {"version": "3.0.0", "date": "2026-12-07", "change":
         "input centred on the lungs (a 360 mm square round the lungs' in-plane box, config fov_mm; the whole "
         "field of view before); phantom-only weights retrained (bench/models/lnet_phantoms), then fine-tuned on "
         "the five annotated real scans by the recipe of the leave-one-real-scan-out benchmark"},
        {"version": "3.0.1", "date": card["date"], "change":
         "the same recipe again after the lung segmentation's rib line changed (the lung masks, and with them the "
         "centres of the real scans' fields of view and their simulated acquisitions, moved slightly)"}]
    card["notes"] = {"measured_on_real_scans": "leave-one-real-scan-out with this recipe: bench/results/lnet_real.md "
                                               "(the shipped weights have seen all five annotated scans)"}
    save_lnet(model, cfg, DEFAULT_DIR, card, allow_package=True,
              predictions={"validation": {"pred": ev["pred"].tolist(), "truth": ev["truth"].tolist()}})
    print("L-Net written to", DEFAULT_DIR)


def phantom_check(cfg, phantom_only, model, secs: float, n_names: int, n: int) -> list[str]:
    """MAE per level on n phantom test seeds: the all-real fine-tune (:func:`all_real`) vs the phantom-only."""
    from sscild.phantom import make_phantom

    err = {"phantom-only": [], "fine-tuned": []}
    for s in list(PHANTOM_SEEDS)[:n]:
        scan, tr = make_phantom(s, extent=float((s * 13) % 71))
        for m, net in (("phantom-only", phantom_only), ("fine-tuned", model)):
            g = predict_levels(net, scan, cfg)
            err[m].append([abs((g.z_mm[k] if g.z_mm[k] is not None else np.nan) - tr.levels_z[k]) for k in LEVELS])
    out = ["", f"Phantom test seeds {PHANTOM_SEEDS.start}-{PHANTOM_SEEDS.start + n - 1} (those of bench_lnet), L-Net "
           f"fine-tuned on all {n_names} annotated real scans + phantoms ({STEPS} steps, {secs:.0f} s; the shipped "
           "weights): MAE (mm)", "", "| level | phantom-only | fine-tuned on all real (shipped) |", "|---|---|---|"]
    a, b = np.array(err["phantom-only"]), np.array(err["fine-tuned"])
    out += [f"| {k} | {np.nanmean(a[:, j]):.2f} | {np.nanmean(b[:, j]):.2f} |" for j, k in enumerate(LEVELS)]
    return out


def backgrounds(cfg, phantom_only) -> list[str]:
    """On the real scans of ``make backgrounds`` (.cache/backgrounds: no by-eye ranges, not in any L-Net's training),
    each L-Net's distance to the anatomical level, and how many lie within 10 mm of it (the agreement that
    ``combine_levels`` rewards)."""
    from sscild.anatomy import segment_lungs
    from sscild.io import load_ct

    folder = REPO / ".cache" / "backgrounds"
    paths = sorted(folder.glob("*")) if folder.exists() else []
    if not paths:
        return ["", "(`make backgrounds` not run: no held-out agreement table.)"]
    nets = {"phantom-only": phantom_only, "shipped": load_lnet()[0]}
    out = ["", "Held-out real scans of `make backgrounds` (no by-eye ranges; in no L-Net's training): |L-Net - "
           "anatomy| per level placed by the anatomy (mm), and the count within 10 mm (they agree).", "",
           "| scan | " + " | ".join(nets) + " |", "|---|" + "---|" * len(nets)]
    agree = {k: [0, 0] for k in nets}
    for p in paths:
        scan = load_ct(p)
        lungs = segment_lungs(scan)
        anat = find_levels(scan, lungs)
        cells = []
        for k, net in nets.items():
            g = predict_levels(net, scan, cfg, lung=lungs.mask)
            d = [abs(g.z_mm[n] - anat.z_mm[n]) for n in LEVELS if anat.z_mm[n] is not None and g.z_mm[n] is not None]
            agree[k][0] += sum(x <= 10 for x in d)
            agree[k][1] += sum(anat.z_mm[n] is not None for n in LEVELS)
            cells.append(" / ".join(f"{x:.0f}" for x in d))
        out.append(f"| {p.name} | " + " | ".join(cells) + " |")
    out.append("| within 10 mm | " + " | ".join(f"{a} / {n}" for a, n in agree.values()) + " |")
    return out


def _priority(name: str) -> int:
    """Fold order: the full chests first (5, 8, 2.5 mm; PET table without L1), the neck-and-apex crop last."""
    order = ("a0001", "a0002", "lidc", "acrin", "fused")
    return next((i for i, k in enumerate(order) if k in name), len(order))


def main():
    import torch

    torch.manual_seed(0)
    phantom_only, cfg, card = load_lnet(BASE)
    names = sorted(ANNOT["scans"], key=_priority)
    if not SHARED_DATA.exists():
        write_section("lnet_real", "L-Net on real anatomy (issue 17 item 5)", "python bench/run_all.py lnet_real",
                      ["Not measured: ../shared/data is absent."])
        return
    if "--ship" in sys.argv:
        ship(names, cfg, card, *all_real(names, cfg))
        return
    wanted = [w for w in os.environ.get("LNET_REAL_FOLDS", "").split(",") if w] or names
    results = {}
    for name in names:
        if name in wanted or (_cache_dir() / f"fold_{_key(name)}_{STEPS}.pkl").exists():
            results[name] = fold(name, names, cfg, phantom_only)
            print(name, "done", flush=True)
    r0 = next(iter(results.values()))
    lines = [f"Leave-one-real-scan-out over the {len(names)} annotated real scans of `tests/data/real_levels.json`; "
             f"held out and measured: {len(results)} ({', '.join(n.split('/')[0] for n in results)}). "
             f"Per fold L-Net is fine-tuned from the phantom-only weights (`bench/models/lnet_phantoms`, "
             f"{card['version']}; first two conv blocks frozen) for {STEPS} steps of batch {BATCH} (lr {LR:g}, L1 "
             f"loss, {np.mean([r['seconds'] for r in results.values()]):.0f} s per fold on this shared CPU) on "
             f"{N_PHANTOMS} phantoms (seeds 5000-{5000 + N_PHANTOMS - 1}) and the other real "
             f"scans, each as read plus {N_ACQ} random acquisitions (`sscild.acquisition.random_acquisition` + "
             f"`simulate` on the scan block-averaged {REDUCE}x{REDUCE} in-plane: slice thickness 0.6-8 mm and "
             f"interval incl. sparse HRCT, kernel, noise, gravity), "
             f"{r0['n_train']} training cases per fold. Targets on real scans: the midpoint of each annotated range; "
             "levels out of view are left out of the loss. The shipped L-Net (`src/sscild/models/lnet`) is this "
             "recipe on all five scans (`python bench/bench_lnet_real.py --ship`): these folds measure it on a scan "
             "it has not seen.", "",
             "Each cell: `in` = inside the annotated acceptable range, else the distance to it (mm). "
             "combined = `combine_levels(anatomy, fine-tuned, scan=)` as `analyze` combines them; combined "
             "(phantom-only) = the same with the phantom-only weights.",
             ""] + _table(results)
    lines += backgrounds(cfg, phantom_only)
    n_check = int(os.environ.get("LNET_REAL_PHANTOM_CHECK", 0))
    if n_check:
        lines += phantom_check(cfg, phantom_only, *all_real(names, cfg)[:2], len(names), n_check)
    env = f"LNET_REAL_PHANTOM_CHECK={n_check} " if n_check else ""
    write_section("lnet_real", "L-Net on real anatomy, leave one real scan out (issue 17 item 5)",
                  f"{env}python bench/run_all.py lnet_real", lines)

if __name__ == "__main__":
    main()
