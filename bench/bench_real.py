"""Real-anatomy benchmark (issue: real scans): S-Net and the lesion U-Net on every real scan in ../shared/data.

Two parts, each per real scan, not only pooled:
1. Specificity: the scan as it is (no ILD known): lesion involvement %, slices called 100 % lesion, S-Net Goh
   extent and stage at the levels analyze places (anatomy and L-Net combined), and a picture of where the false
   positives are.
2. Sensitivity: ILD inserted into the same scan by bench/realcases.py (code that shares nothing with the training
   generator): ground glass, mixed, fibrotic with honeycombing, and (thin-slice scans) the fibrotic case as sparse
   sharp HRCT. S-Net MAE / weighted kappa at five slices per case, lesion Dice GG / RET / total and the
   whole-lung involvement error.

Leave-one-real-scan-out: for scan X the models are read from the benchmarks' work folder, ``real_loso/X/{snet,lesions}``, when
present (trained without X: ``python bench/bench_real.py --train``), else the shipped models are measured and the
section says so. Run: ``python bench/run_all.py real``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from common import SHARED_DATA, WORK, write_section

import realcases
from sscild.modelset import ModelSet

REAL = [("a0001", "chest-ct-lung-pet-ct-dx-a0001"), ("lidc0001", "chest-ct-lidc-idri-0001/ct.nii.gz"),
        ("fused0001", "chest-ct-lung-fused-ct-pathology-0001/ct.nii.gz"),
        ("a0002", "chest-ct-lung-pet-ct-dx-a0002/ct.nii.gz"), ("acrin013", "chest-ct-acrin-flt-breast-013/ct.nii.gz")]
CASES = [("gg", 0.15), ("mixed", 0.30), ("fibrotic", 0.40)]
#: Each case kind is drawn this many times per scan (one random stream): the cases are placed within the scan's lung
#: mask, so a change of a few mL in the mask draws other cases; with one draw each a scan's figures moved by up to
#: 9 points between two such draws (Lung-Fused, RET MAE 2.0 -> 11.1).
CASE_DRAWS = 2
LOSO = WORK / "real_loso"
CONFIGS = Path(__file__).resolve().parent.parent / "configs"
PICS = Path(__file__).resolve().parent / "results" / "real"
SHIPPED = ModelSet()          # shipped models (the L-Net of the levels), each loaded once


def _models(name: str):
    """S-Net and the lesion U-Net for held-out scan ``name``: the leave-one-out weights where trained, else the
    shipped ones; the first value says which."""
    from sscild.lesions import load_unet
    from sscild.scoring.snet import load_snet

    from sscild.bundle import read_card

    d = LOSO / name
    has = {k: (d / k / "card.json").exists() for k in ("snet", "lesions")}
    pkg = Path(__file__).resolve().parent.parent / "src" / "sscild" / "models"

    def said(k: str, loso: bool) -> str:
        if loso:
            return f"{k} leave-one-out"
        real = "real" in str(read_card(pkg / k).get("training", {}).get("config_file", ""))
        return f"{k} shipped" + (" (trained on draws of this scan: in-sample)" if real else "")

    src = "/".join(said(k, v) for k, v in has.items())
    return src, load_snet(d / "snet" if has["snet"] else None), load_unet(d / "lesions" if has["lesions"] else None)


def _base_weights(kind: str) -> Path:
    """A copy of the shipped phase-2 bundle in the benchmarks' work folder (made on first use), so the leave-one-out
    runs start from weights that never saw the real draws, even after the shipped ones are retrained."""
    import shutil

    from sscild.bundle import read_card

    dst = WORK / "base_models" / kind
    src = Path(__file__).resolve().parent.parent / "src" / "sscild" / "models" / kind
    if not dst.exists():
        if "real" in str(read_card(src).get("training", {}).get("config_file", "")):
            raise SystemExit(f"the shipped {kind} bundle was trained on the real scans: restore the phase-2 one "
                             "(git) before making the leave-one-out base copy")
        shutil.copytree(src, dst)
    return dst


def train_loso(held_out: str, steps: int | None = None, which: str = "lesions,snet") -> None:
    """Train the lesion U-Net and S-Net as ``configs/lesions_real.yaml`` and ``configs/snet_real.yaml`` say, but
    without scan ``held_out`` (its real draws excluded from training and validation); bundles to
    ``real_loso/<held_out>/{lesions,snet}`` in the benchmarks' work folder."""
    import yaml

    from sscild.lesion_train import train_from_config as train_lesions
    from sscild.scoring.snet_train import train_from_config as train_snet

    d = LOSO / held_out
    d.mkdir(parents=True, exist_ok=True)
    for kind, conf, train in (("lesions", "lesions_real.yaml", train_lesions), ("snet", "snet_real.yaml", train_snet)):
        if kind not in which.split(","):
            continue
        cfg = {"extends": str(CONFIGS / conf), "out": str(d / kind), "init": str(_base_weights(kind)),
               "description": f"configs/{conf} without the real draws of {held_out} (held out)",
               "data": {"real_draws": {"exclude": [held_out]}}}
        if kind == "snet":
            cfg["validation"] = {"real_draws": {"exclude": [held_out]}}
        if steps:
            cfg["train"] = {"steps": int(steps)}
        (d / f"{kind}_config.yaml").write_text(yaml.safe_dump(cfg))
        train(d / f"{kind}_config.yaml", quiet=True, allow_package=False)


def _level_slices(scan, lungs):
    """The levels as ``analyze`` places them (anatomy and the shipped L-Net combined, :class:`sscild.levels.
    GohLevels`) and the slices scored on inserted ILD: the levels' slices, then, on a partial scan, slices spread
    over the lungs up to five."""
    from sscild.levels import combine_levels, find_levels
    from sscild.scoring.lnet import predict_levels

    lnet = SHIPPED.get("lnet")                      # loaded once for all the scans
    g = combine_levels(find_levels(scan, lungs), predict_levels(lnet.model, scan, lnet.config, lung=lungs.mask),
                       scan=scan)
    ks = [scan.slice_at_z(z) for z in g.z_mm.values() if z is not None]
    ks = [k for k in ks if k is not None and lungs.mask[k].any()]
    if len(ks) < 5:                 # levels missing on a partial scan: spread five slices over the lungs
        zs = np.flatnonzero(lungs.mask.any(axis=(1, 2)))
        fill = [int(v) for v in np.quantile(zs, [0.5, 0.35, 0.65, 0.15, 0.85])]
        ks += [k for k in dict.fromkeys(fill) if k not in ks][:5 - len(ks)]
    return g, ks


def _snet_scores(snet, hu, lung, ks, pixel_mm, spread: bool = False):
    """S-Net TOT/GG/RET at slices ``ks`` (and, with ``spread``, the test-time-augmentation SD of each)."""
    from sscild.consensus import tta_scores
    from sscild.scoring.snet import SNetScorer

    model, cfg, _ = snet
    scorer = SNetScorer(model, cfg, "cpu", pixel_mm=pixel_mm)
    res = [tta_scores(scorer, hu[k], lung[k]) for k in ks]
    sc, sd = np.array([r[0] for r in res]), np.array([r[1] for r in res])
    return (sc, sd) if spread else sc


def _truth_scores(labels, ks):
    """TOT/GG/RET (% of the slice's lung area) of label maps at slices ``ks``."""
    from sscild.domain import PATTERNS
    from sscild.scoring.synthesis import scores_from_labels

    return np.array([[scores_from_labels(labels[k])[p] for p in PATTERNS] for k in ks])


def _lesions(unet, scan_like, lungs, vessels=None):
    """The lesion map as ``sscild analyze`` makes it: the U-Net, then vessels and airways set to normal."""
    from sscild.lesions import segment_lesions
    from sscild.pipeline import exclude_structures
    from sscild.vessels import segment_vessels

    model, cfg, _ = unet
    lab = segment_lesions(model, cfg, scan_like, lungs.mask)
    vessels = segment_vessels(scan_like, lungs) if vessels is None else vessels
    return exclude_structures(lab, lungs, vessels, scan_like.spacing[1:])


#: Where the false positives of a scan without ILD lie: (column, what it means). The places overlap (a voxel can be
#: dorsal, subpleural and next to a vessel); each is given as its share of the false-positive volume beside its
#: share of the lung volume, so that a place holding more false positives than its size is seen.
FP_PLACES = (("lower", "lower zone (lowest third of the lung height)"),
             ("dorsal", "dorsal half (each lung's posterior half, slice by slice: dependent when supine)"),
             ("subpleural", "subpleural band (<= 10 mm from the lung border, region map)"),
             ("rim", "the lung's outer 3 mm (the subpleural band of the region map, 3 mm wide)"),
             ("vessel", "within 2 mm of the vessel mask (the vessels themselves are set to normal)"),
             ("airway", "within 5 mm of the airway mask (trachea and main bronchi)"),
             ("ends", "the top and bottom 10 mm of the lung height (apex, domes: partial volume)"))


def fp_places(scan, lungs, lab, vessels) -> dict:
    """Share (%) of the false-positive volume (GG or RET on a scan without ILD) and of the lung volume in each of
    :data:`FP_PLACES`, and the false-positive volume (mL)."""
    from scipy import ndimage as ndi
    from sscild.regions import region_map

    rm = region_map(scan, lungs)
    lung = lungs.mask
    places = {}
    for key, m in (("lower", rm.zone == 3), ("dorsal", rm.dorsal), ("subpleural", rm.subpleural),
                   ("rim", region_map(scan, lungs, subpleural_mm=3.0).subpleural)):
        places[key] = np.zeros(lab.shape, bool)
        places[key][rm.box] = m

    def near(mask, mm):
        return ndi.binary_dilation(mask, structure=ndi.generate_binary_structure(2, 1)[None],
                                   iterations=max(1, round(mm / scan.spacing[1])))

    places["vessel"] = near(vessels.mask, 2.0) & lung
    places["airway"] = near(lungs.airways, 5.0) & lung
    zs = np.nonzero(lung.any(axis=(1, 2)))[0]
    z = np.arange(lab.shape[0]) * scan.spacing[0]
    ends = (z <= z[zs.min()] + 10.0) | (z >= z[zs.max()] - 10.0)   # (a cut-off end included)
    places["ends"] = lung & ends[:, None, None]
    fp = (lab >= 2) & lung
    n_fp, n_lung = max(1, int(fp.sum())), max(1, int(lung.sum()))
    out = {k: (100.0 * int((fp & m).sum()) / n_fp, 100.0 * int(m.sum()) / n_lung) for k, m in places.items()}
    out["fp_ml"] = float(fp.sum()) * float(np.prod(scan.spacing)) / 1000.0
    return out


def _with_hu(scan, hu):
    from dataclasses import replace

    return replace(scan, hu=np.clip(np.round(hu), -1024, 3071).astype(np.int16))


def specificity(name, scan, lungs, levels, ks, snet, unet) -> dict:
    """Involvement, Goh extent and stage of a scan as it is; the extent and stage as ``analyze`` scores them
    (:func:`sscild.pipeline.score_level` at the anatomical ``levels``: a slice with too little lung is not scored)."""
    from sscild.domain import LEVELS
    from sscild.pipeline import model_input, score_level
    from sscild.results import LevelScores
    from sscild.scoring.snet import SNetScorer
    from sscild.vessels import segment_vessels

    vessels = segment_vessels(scan, lungs)
    lab = _lesions(unet, scan, lungs, vessels)
    lung_n = max(1, int((lab > 0).sum()))
    inv = 100.0 * int((lab >= 2).sum()) / lung_n
    per_slice = [(lab[k] >= 2).sum() / max(1, (lab[k] > 0).sum()) for k in range(len(lab)) if (lab[k] > 0).any()]
    full = int(sum(1 for v in per_slice if v >= 0.999))
    model, cfg, _ = snet
    scorer = SNetScorer(model, cfg, "cpu", pixel_mm=float(scan.spacing[1]))
    ms = model_input(scan, lungs)[1]
    sc = LevelScores.from_levels({n: score_level(scorer, ms, lungs, levels.z_mm.get(n)) for n in LEVELS})
    _fp_picture(name, scan, lab, ks)
    return {"involvement": inv, "slices_100": full, "goh": sc.goh_extent, "goh_levels": sc.n_levels_scored,
            "stage": sc.goh_stage,
            "gg_share": 100.0 * int((lab == 2).sum()) / max(1, int((lab >= 2).sum())),
            "places": fp_places(scan, lungs, lab, vessels)}


def _fp_picture(name, scan, lab, ks):
    from matplotlib.figure import Figure

    PICS.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(3.2 * len(ks), 3.4))
    axs = fig.subplots(1, len(ks), squeeze=False)[0]
    for ax, k in zip(axs, ks):
        ax.imshow(scan.hu[k], cmap="gray", vmin=-1200, vmax=200)
        m = np.ma.masked_where(lab[k] < 2, lab[k])
        ax.imshow(m, cmap="autumn_r", vmin=2, vmax=3, alpha=0.6, interpolation="nearest")
        ax.set_title(f"{name} slice {k}", fontsize=8)
        ax.axis("off")
    fig.suptitle("false positives on a scan without known ILD: GG yellow, RET red", fontsize=9)
    fig.tight_layout()
    fig.savefig(PICS / f"fp_{name}.png", dpi=60)


def sensitivity(scan, lungs, ks, snet, unet, seed) -> list[dict]:
    rows = []
    rng = np.random.default_rng(seed)
    for kind, ext in CASES * CASE_DRAWS:
        hu, lab = realcases.make_case(scan.hu, lungs.mask, scan.spacing, rng, kind=kind, extent=ext)
        rows.append(_measure_case(kind, _with_hu(scan, hu), lab, lungs, ks, snet, unet))
        if kind == "fibrotic" and scan.spacing[0] <= 2.5:
            img, slab, slung, sp = realcases.sparse_hrct(hu, lab, lungs.mask, scan.spacing)
            sparse = _sparse_scan(scan, img, sp)
            ks2 = [k for k in range(len(img)) if slung[k].mean() > 0.04]
            rows.append(_measure_case("fibrotic sparse HRCT", sparse, slab, _lungs_like(slung), ks2,
                                      snet, unet))
    return rows


def _sparse_scan(scan, img, sp):
    from dataclasses import replace

    return replace(scan, hu=np.clip(np.round(img), -1024, 3071).astype(np.int16), spacing=tuple(float(v) for v in sp))


def _lungs_like(lung):
    """Lungs of a resampled sparse stack: its lung mask as one lung, no airways (none are tracked on 1 mm slices
    10 mm apart); vessels are still found on the stack itself."""
    from sscild.anatomy import Lungs

    return Lungs(np.where(lung, 1, 0).astype(np.uint8), np.zeros_like(lung, dtype=bool))


#: The lesion classes Dice is given for, as label tests
DICE_CLASSES = {"GG": lambda a: a == 2, "RET": lambda a: a == 3, "total": lambda a: a >= 2}


def _overlap(pred, truth, cls) -> tuple[int, int]:
    """Twice the overlap and the sum of the sizes of class ``cls`` (:data:`DICE_CLASSES`) in a prediction and its
    truth: the Dice terms, summed over a scan's cases (:func:`_pooled_dice`)."""
    p, t = DICE_CLASSES[cls](pred), DICE_CLASSES[cls](truth)
    return 2 * int((p & t).sum()), int(p.sum()) + int(t.sum())


def _pooled_dice(rows, cls) -> float:
    """Dice of class ``cls`` over all the cases of one scan (2 sum|P & T| / sum(|P| + |T|)): a case without that
    class adds its false positives, not a Dice of 0 (the fibrotic cases hold no GG)."""
    two, size = (sum(r["dice"][cls][i] for r in rows) for i in (0, 1))
    return 1.0 if size == 0 else two / size


def _measure_case(kind, scan_like, lab, lungs, ks, snet, unet) -> dict:
    from sscild.pipeline import model_input

    lung = lungs.mask
    pred = _lesions(unet, scan_like, lungs)
    t = np.where(lung, lab, 0)
    n = max(1, int(lung.sum()))
    sc, sd = _snet_scores(snet, model_input(scan_like, lungs)[1].hu, lung, ks, float(scan_like.spacing[1]),
                          spread=True)
    return {"kind": kind, "pred": sc, "sd": sd, "truth": _truth_scores(t, ks), "unet": _truth_scores(pred, ks),
            "dice": {c: _overlap(pred, t, c) for c in DICE_CLASSES},
            "inv_err": abs(100.0 * (pred >= 2).sum() / n - 100.0 * (t >= 2).sum() / n),
            "ret_vs_gg": (int((pred == 3).sum()), int((pred == 2).sum()))}


def _per_scan_lines(name, src, spec, rows) -> list[str]:
    from sscild.consensus import score_uncertainty
    from sscild.evaluate import mae, spearman, weighted_kappa

    P = np.concatenate([r["pred"] for r in rows]); T = np.concatenate([r["truth"] for r in rows])
    m = [mae(P[:, i], T[:, i])[0] for i in range(3)]
    k = [weighted_kappa(P[:, i], T[:, i]) for i in range(3)]
    dice = {c: _pooled_dice(rows, c) for c in DICE_CLASSES}
    inv = np.mean([r["inv_err"] for r in rows])
    U = np.concatenate([r["unet"] for r in rows])
    mu = [mae(U[:, i], T[:, i])[0] for i in range(3)]
    mm = [mae((P[:, i] + U[:, i]) / 2, T[:, i])[0] for i in range(3)]
    S = np.concatenate([r["sd"] for r in rows])
    rho = spearman(S[:, 0], np.abs(P[:, 0] - T[:, 0]))[0]
    rho_d = spearman(np.abs(P[:, 0] - U[:, 0]), np.abs(P[:, 0] - T[:, 0]))[0]     # the report's disagreement
    unc = score_uncertainty(S, P, U)
    rho_u = spearman(unc[:, 0], np.abs(P[:, 0] - T[:, 0]))[0]
    cover = 100.0 * np.mean(np.abs(P - T) <= 2 * unc, axis=0)
    fib = [r for r in rows if r["kind"].startswith("fibrotic")]
    fib_txt = "; ".join(f"{r['kind']}: RET {r['ret_vs_gg'][0]} vs GG {r['ret_vs_gg'][1]} voxels, {_stage_text(r)}"
                        for r in fib)
    return [f"| {name} | {src} | {spec['involvement']:.1f} | {spec['slices_100']} | "
            f"{_goh_text(spec)} | {spec['stage']} | {m[0]:.1f} / {m[1]:.1f} / {m[2]:.1f} | "
            f"{k[0]:.2f} / {k[1]:.2f} / {k[2]:.2f} | {dice['GG']:.2f} / {dice['RET']:.2f} / {dice['total']:.2f} | "
            f"{inv:.1f} | {mu[0]:.1f} / {mu[1]:.1f} / {mu[2]:.1f} | {mm[0]:.1f} / {mm[1]:.1f} / {mm[2]:.1f} | "
            f"{rho:.2f} | {rho_d:.2f} | {rho_u:.2f} | {cover[0]:.0f} / {cover[1]:.0f} / {cover[2]:.0f} | {fib_txt} |"]


def _goh_text(spec: dict) -> str:
    if spec["goh"] is None:
        return "none (no level scored)"
    return f"{spec['goh']:.1f}" + (f" ({spec['goh_levels']} of 5 levels)" if spec["goh_levels"] < 5 else "")


def _stage_text(r: dict) -> str:
    """S-Net's extent (mean TOT over the case's scored slices: the five levels, or every slice of a sparse stack)
    and its Goh stage, beside the true extent over the same slices."""
    from sscild.domain import goh_stage

    ext, true = float(np.mean(r["pred"][:, 0])), float(np.mean(r["truth"][:, 0]))
    return f"extent {ext:.0f} % ({goh_stage(ext).stage}; true {true:.0f} %)"


def scan_row(name: str, rel: str, seed: int) -> tuple[str, str]:
    """The table rows of one real scan (models from :func:`_models`): accuracy, and where its false positives lie."""
    from sscild.anatomy import segment_lungs
    from sscild.io import load_ct

    scan = load_ct(SHARED_DATA / rel)
    lungs = segment_lungs(scan)
    levels, ks = _level_slices(scan, lungs)
    src, snet, unet = _models(name)
    spec = specificity(name, scan, lungs, levels, ks, snet, unet)
    rows = sensitivity(scan, lungs, ks, snet, unet, seed=seed)
    return _per_scan_lines(name, src, spec, rows)[0], _places_line(name, lungs, spec)


def _places_line(name, lungs, spec) -> str:
    pl = spec["places"]
    pos = (lungs.notes.get("position") or "not known").split(" (")[0]
    return (f"| {name} | {pos} | {pl['fp_ml']:.0f} | "
            + " | ".join(f"{pl[k][0]:.0f} ({pl[k][1]:.0f})" for k, _ in FP_PLACES) + " |")


def main() -> None:

    lines = ["Per real scan (none has known ILD). Specificity on the scan as it is; sensitivity on ILD inserted by "
             f"`bench/realcases.py` ({CASE_DRAWS} draws of each case kind per scan: GG, mixed, fibrotic, the "
             "fibrotic also as sparse HRCT on scans of <= 2.5 mm; independent of the training generator; S-Net at "
             "five slices per case: the "
             "levels analyze places (anatomy and L-Net combined), then slices spread over the lungs on a partial "
             "scan; lung mask of the original scan). The Goh extent of the scan as it is is what `analyze` "
             "reports: the mean TOT of the levels found that hold enough lung to be scored. Leave-one-out models "
             "train on the real scans that configs/{snet,lesions}_real.yaml name (the five of ../shared/data and "
             "the four of .cache/backgrounds, `make backgrounds`) without the held-out one. Acceptance: "
             "involvement <= 3 %, Goh extent <= 5 %, stage limited, no slice at 100 %; MAE TOT <= 6, GG/RET <= 5; "
             "kappa >= 0.6; Dice GG >= 0.75, RET >= 0.65, total >= 0.85; involvement error <= 3 points; fibrotic "
             "cases: RET outweighs GG and the stage is extensive. Dice is pooled over the scan's cases (2 sum|P & T| "
             "/ sum(|P| + |T|)); the fibrotic cases hold no GG: their GG calls count as false positives. "
             "A0002 (hilar adenocarcinoma) has real opacities in the left lower lobe (seen in its picture): not all "
             "of its 'healthy' involvement is false positive.", "",
             "| scan | models | involvement % (healthy) | slices at 100 % | Goh extent % | stage | "
             "S-Net MAE TOT / GG / RET | kappa TOT / GG / RET | Dice GG / RET / total | involvement error | "
             "lesion-map area ratio at the same slices: MAE TOT / GG / RET | mean of S-Net and the lesion map: "
             "MAE TOT / GG / RET | S-Net TTA SD vs abs. error (Spearman) | "
             "S-Net vs lesion-map disagreement vs abs. error (Spearman) | "
             "uncertainty u = sqrt(TTA SD^2 + (disagreement / 2)^2) vs abs. error, TOT (Spearman) | "
             "abs. error <= 2u, % of slices: TOT / GG / RET | "
             "fibrotic cases: RET vs GG, S-Net extent and stage |", "|---" * 17 + "|"]
    places = ["| scan | position | false positives (mL) | "
              + " | ".join(k for k, _ in FP_PLACES) + " |", "|---|---|---|" + "---|" * len(FP_PLACES)]
    for j, (name, rel) in enumerate(REAL):
        p = SHARED_DATA / rel
        if not p.exists():
            lines.append(f"| {name} | not available at {rel} |" + " |" * 14)
            continue
        row, place = scan_row(name, rel, 100 + j)
        lines.append(row)
        places.append(place)
        print(row, place, sep="\n", flush=True)
    lines += ["", "False-positive pictures: `bench/results/real/fp_<scan>.png`.", "",
              "Where the false positives of the lesion map lie on the scans as they are (same models as above): % of "
              "the false-positive volume in each place, in brackets % of the lung volume there. Places overlap:",
              ""] + [f"- {k}: {what}" for k, what in FP_PLACES] + [""] + places
    write_section("real", "Real anatomy: specificity and inserted-pattern accuracy per real scan",
                  "python bench/run_all.py real", lines)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--train":      # python bench/bench_real.py --train SCAN [--only K]
        only = sys.argv[sys.argv.index("--only") + 1] if "--only" in sys.argv else "lesions,snet"
        train_loso(sys.argv[2], which=only)
        if "--no-row" in sys.argv:
            sys.exit(0)
        j = [n for n, _ in REAL].index(sys.argv[2])
        print(*scan_row(sys.argv[2], REAL[j][1], 100 + j), sep="\n", flush=True)   # the held-out scan, as in the tables
        sys.exit(0)
    sys.exit(main())
