"""Mortality at 1, 3 and 5 years on a synthetic cohort with a known hazard (issue 7): AUC with CI per horizon and
model, C-index, a permuted-label null test, Kaplan-Meier by Goh stage, and time per scan of radiomics and
deep-feature extraction on the real 64-slice series."""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch
from common import SHARED_DATA, WORK, measure, write_section

torch.set_num_threads(1)

from sscild.outcome.cohort import (HORIZONS, HazardModel, grouped_folds, label_column, label_horizons,  # noqa: E402
                                   make_synthetic_cohort, permute_labels_by_patient, read_cohort)
from sscild.outcome.deep import (DeepConfig, build_network, deep_features, deep_out_of_fold,  # noqa: E402
                                 lung_volume, prepare_volumes)
from sscild.outcome.models import (OutcomeConfig, c_index_ci, cross_validate_outcome, fit_cox,  # noqa: E402
                                   km_by_goh_stage, results_markdown)
from sscild.outcome.radiomics import extract_cohort, feature_groups, radiomics_features  # noqa: E402

N_PATIENTS, SEED, WORKERS = 240, 2024, 2
DEEP = DeepConfig(arch="resnet18", input_shape=(32, 64, 64), width=0.5, epochs=6, seed=0)
CMD = "python bench/run_all.py outcome"


def _ci(a, lo, hi) -> str:
    return f"{a:.3f} [{lo:.3f}, {hi:.3f}]"


def main() -> None:
    lines: list[str] = []
    d = WORK / "outcome" / f"cohort{N_PATIENTS}"
    t0 = time.perf_counter()
    csv = make_synthetic_cohort(d, n_patients=N_PATIENTS, seed=SEED, workers=WORKERS, quiet=True)
    df = read_cohort(csv)
    t_gen = time.perf_counter() - t0
    hz = HazardModel()
    lab, counts = label_horizons(df)
    lines += [f"Synthetic cohort (`make_synthetic_cohort(n_patients={N_PATIENTS}, seed={SEED})`): "
              f"{df.patient_id.nunique()} patients, {len(df)} scans (1-3 per patient, same anatomy, ILD growing), "
              "phantoms of 85x85 px of 4.2 mm and 5 mm slices with their true lung masks. Known hazard between scans "
              f"h = {hz.base_per_year} x exp({hz.beta_extent} x extent% + {hz.beta_age} x (age - 60)) per year, set by "
              f"the latest scan; censoring by study end (entry over {hz.censoring.accrual_years:g} years) and loss to follow-up "
              f"({hz.censoring.loss_per_year}/year). {int(df.groupby('patient_id').event.max().sum())} of {df.patient_id.nunique()} "
              "patients died during follow-up.", "",
              "| horizon | labelled scans | patients | died (1) | alive (0) | censored (left out) |",
              "|---|---|---|---|---|---|"]
    for r in counts.itertuples():
        lines.append(f"| {r.horizon_years} y | {r.scans} | {r.patients} | {r.positives} | {r.negatives} | {r.censored} |")

    # ---- radiomics -------------------------------------------------------------------------
    t0 = time.perf_counter()
    feats, st = extract_cohort(df, d / "radiomics_cache", workers=WORKERS, quiet=True)
    t_rad_wall = time.perf_counter() - t0
    groups = feature_groups(feats.columns)
    table = df.merge(feats, left_on="scan_id", right_index=True, how="inner")

    # ---- deep: volumes, untrained-encoder features, per-fold trained network ------------------
    t0 = time.perf_counter()
    vols, vst = prepare_volumes(table, DEEP, d / "volume_cache", quiet=True)
    t_vol = time.perf_counter() - t0
    enc = build_network(DEEP, len(HORIZONS))
    emb, t_emb, _ = measure(lambda: deep_features(enc, vols))
    emb_cols = [f"deepfeat_{i}" for i in range(emb.shape[1])]
    table = pd.concat([table.reset_index(drop=True), pd.DataFrame(emb, columns=emb_cols)], axis=1)

    lab, _ = label_horizons(table)
    strata = lab[label_column(max(HORIZONS))].fillna(lab["event"]).astype(int)
    folds = grouped_folds(lab["patient_id"], strata, 5, SEED)
    assert pd.Series(folds).groupby(lab["patient_id"].to_numpy()).nunique().max() == 1   # no patient split
    Y = lab[[label_column(h) for h in HORIZONS]].to_numpy(float)
    t0 = time.perf_counter()
    oof, hist = deep_out_of_fold(vols, Y, folds, DEEP)
    t_deep = time.perf_counter() - t0

    rad = groups["radiomics"] + groups["density"]
    clin = ["age", "sex", "fvc_pct"]
    sets = {"radiomics": rad, "radiomics+clinical": rad + clin, "deep-features": emb_cols,
            "ceiling (true log-hazard)": ["truth_log_hazard"]}
    cfg = OutcomeConfig(n_boot=1000, seed=SEED, fusion=("radiomics/logistic",))
    t0 = time.perf_counter()
    res = cross_validate_outcome(table, sets, cfg, deep={f"deep/{DEEP.arch} (trained per fold)": oof}, folds=folds,
                                 keep=clin)
    t_cv = time.perf_counter() - t0
    tab = res.table
    lines += ["", "### AUC per horizon (out-of-fold, 5 patient-grouped folds; stratified bootstrap 95 % CI, 1000 "
              "resamples)", "",
              f"Feature sets: radiomics = {len(groups['radiomics'])} PyRadiomics features of the lung mask (shipped "
              f"params: bin width 25, 3 mm isotropic) + {len(groups['density'])} density metrics; clinical = age, sex, "
              f"FVC % (FVC falls with extent in the generator), always kept (outside the selection); deep-features = {emb.shape[1]} pooled features of an "
              f"untrained ResNet-18 (width {DEEP.width}, fixed seed); deep/resnet18 = ResNet-18 (width {DEEP.width}) "
              f"on {DEEP.input_shape} lung crops, trained per fold for {DEEP.epochs} epochs, one logit per horizon, "
              "class-weighted; fusion = mean log-odds of radiomics/logistic and the deep model; ceiling = the true "
              "log-hazard of the scan as the single feature. Logistic: L2, C=0.1, 20 best features (ANOVA F) chosen "
              "inside each training fold; gbm: histogram gradient boosting, depth 3.", ""]
    lines += results_markdown(tab)
    lines += ["", "Deep models are trained with class weights (negatives/positives), which inflates their probabilities: "
              "their Brier score is worse although they rank as well; the AUC CI resamples scans (stratified), the "
              "C-index CI below resamples patients."]
    lines += ["", "### C-index (out-of-fold Cox PH, lifelines, penalizer 0.1 on 10 PCA components fitted in the fold; "
              "CI: 1000 bootstrap resamples of patients)", "", "| features | scans | deaths | C-index [95 % CI] |",
              "|---|---|---|---|"]
    for r in res.cindex.itertuples():
        lines.append(f"| {r.features} | {r.n} | {r.deaths} | {_ci(r.c_index, r.c_lo, r.c_hi)} |")
    # C-index of the deep model's out-of-fold 5-year probability as a risk score
    c, lo, hi = c_index_ci(lab["time_years"], lab["event"], oof[:, -1], lab["patient_id"], n_boot=1000, seed=SEED)
    lines.append(f"| deep/{DEEP.arch} (5-year probability as risk) | {len(lab)} | {int(lab.event.sum())} | "
                 f"{_ci(c, lo, hi)} |")

    # ---- null test -----------------------------------------------------------------------------
    over = {h: permute_labels_by_patient(lab[label_column(h)], lab["patient_id"], seed=SEED + 1) for h in HORIZONS}
    pstrata = pd.Series(over[max(HORIZONS)]).fillna(lab["event"]).astype(int)
    pfolds = grouped_folds(lab["patient_id"], pstrata, 5, SEED)
    null_cfg = OutcomeConfig(n_boot=1000, seed=SEED, cox=False)
    null = cross_validate_outcome(table, {"radiomics": rad}, null_cfg, folds=pfolds, label_override=over)
    from sklearn.model_selection import KFold

    naive = np.zeros(len(lab), int)
    for k, (_, te) in enumerate(KFold(5, shuffle=True, random_state=SEED).split(lab)):
        naive[te] = k
    leak = cross_validate_outcome(table, {"radiomics": rad}, null_cfg, folds=naive, label_override=over)
    lines += ["", "### Null test: labels permuted between patients (a patient's scans keep one shared label)", "",
              "| horizon | model | patient-grouped folds: AUC [95 % CI] | covers 0.5 | scan-level folds "
              "(leaky, for contrast): AUC [95 % CI] |", "|---|---|---|---|---|"]
    for a, b in zip(null.table.itertuples(), leak.table.itertuples()):
        lines.append(f"| {a.horizon_years:g} y | {a.model} | {_ci(a.auc, a.auc_lo, a.auc_hi)} | "
                     f"{'yes' if a.auc_lo <= 0.5 <= a.auc_hi else 'NO'} | {_ci(b.auc, b.auc_lo, b.auc_hi)} |")

    # ---- survival truth: Cox on the true covariates, KM by Goh stage ---------------------------
    hr = fit_cox(lab, ["truth_extent_pct", "age"])
    km = km_by_goh_stage(lab.assign(goh_extent=lab["truth_extent_pct"]), "goh_extent",
                         WORK / "outcome" / "km_goh_stage.png")
    lines += ["", "### Survival model check and Kaplan-Meier by Goh stage", "",
              f"Cox PH on all scans (robust SE clustered by patient) recovers the generator's coefficients: "
              f"extent log-HR {np.log(hr.loc['truth_extent_pct', 'HR']):.3f} per % "
              f"(95 % CI {np.log(hr.loc['truth_extent_pct', 'HR_lo']):.3f}-{np.log(hr.loc['truth_extent_pct', 'HR_hi']):.3f}; "
              f"true {hz.beta_extent}), age log-HR {np.log(hr.loc['age', 'HR']):.3f} per year "
              f"({np.log(hr.loc['age', 'HR_lo']):.3f}-{np.log(hr.loc['age', 'HR_hi']):.3f}; true {hz.beta_age}).", "",
              "Kaplan-Meier on each patient's first scan, stage from the true extent (a perfect scorer; extensive if "
              f"> 20 %), log-rank p = {km.get('logrank_p', float('nan')):.2g}:", "",
              "| stage | patients | deaths | 1-y survival | 3-y survival | 5-y survival |", "|---|---|---|---|---|---|"]
    for st_name, s in km["stages"].items():
        if s.get("patients"):
            lines.append(f"| {st_name} | {s['patients']} | {s['deaths']} | " + " | ".join(
                f"{s[f'survival_{h}y']:.2f} ({s[f'survival_{h}y_lo']:.2f}-{s[f'survival_{h}y_hi']:.2f})"
                for h in HORIZONS) + " |")

    # ---- timings ---------------------------------------------------------------------------------
    # fresh timings (the cohort and its features above may have come from the caches)
    from sscild.phantom import make_phantom

    t_ph, t_rs = [], []
    for r in df.head(3).itertuples():
        (scan_s, truth_s), dt, _ = measure(lambda: make_phantom(int(r.truth_phantom_seed), extent=r.truth_extent_pct,
                                                                spacing=(5.0, 4.2, 4.2)))
        t_ph.append(dt)
        _, dt, _ = measure(lambda: radiomics_features(scan_s, truth_s.lungs))
        t_rs.append(dt)
    n_cached = int(st["cached"].sum())
    lines += ["", "### Time", "",
              f"- synthetic phantom ({scan_s.shape[0]}x{scan_s.shape[1]}x{scan_s.shape[2]}): median "
              f"{np.median(t_ph):.2f} s each (3 fresh ones); this run: {t_gen:.0f} s for the cohort "
              f"({'reused from bench/work' if t_gen < 30 else 'written'}).",
              f"- radiomics on a synthetic scan (lung mask given, shipped params): median {np.median(t_rs):.2f} s "
              f"(3 fresh ones); cohort extraction this run {t_rad_wall:.0f} s with {WORKERS} workers, {n_cached} of "
              f"{len(st)} scans read from the cache (the first, uncached run took a median "
              f"{st['seconds'].astype(float).median():.1f} s per scan in each worker while the other job ran).",
              f"- deep: volumes {t_vol:.0f} s for {len(table)} scans (cached after the first run); untrained-encoder "
              f"features {1000 * t_emb / len(table):.0f} ms per scan; training ResNet-18 per fold "
              f"{t_deep / 5:.0f} s per fold ({DEEP.epochs} epochs over ~{int(len(table) * 0.8)} scans); "
              f"tabular cross-validation of all models and horizons {t_cv:.0f} s."]
    real = SHARED_DATA / "chest-ct-lung-pet-ct-dx-a0001"
    if real.exists():
        from sscild.anatomy import segment_lungs
        from sscild.io import load_ct
        scan, t_read, _ = measure(lambda: load_ct(real))
        lungs, t_seg, _ = measure(lambda: segment_lungs(scan))
        f, t_rad, mem = measure(lambda: radiomics_features(scan, lungs.labels), repeat=2)
        lines += [f"- real series A0001 ({scan.shape[0]} slices of {scan.shape[1]}x{scan.shape[2]}, "
                  f"{scan.spacing[1]:.3f} mm pixels, {scan.spacing[0]:.1f} mm slices): read {t_read:.1f} s, lung "
                  f"segmentation {t_seg:.1f} s, radiomics ({len(f)} features of the lung mask, original image) "
                  f"{t_rad:.1f} s (best of 2, peak RSS {mem:.0f} MB)."]
        fx, t_fx, _ = measure(lambda: radiomics_features(scan, lungs.labels, extra_images=True))
        lines.append(f"  With LoG (sigma 2, 4 mm) and wavelet images: {len(fx)} features in {t_fx:.1f} s.")
        for arch in ("resnet18", "densenet121", "swin"):
            cfg = DeepConfig(arch=arch, input_shape=DEEP.input_shape, width=DEEP.width)
            net = build_network(cfg, len(HORIZONS))
            vol, t_v, _ = measure(lambda: lung_volume(scan, lungs.labels, cfg))
            _, t_f, _ = measure(lambda: deep_features(net, vol[None]), repeat=3)
            lines.append(f"  Deep features {arch} (width {cfg.width}, {net.n_features} features): lung crop + "
                         f"resampling {t_v:.2f} s + encoder {t_f:.2f} s per scan (best of 3).")
    else:
        lines.append(f"- real series: skipped, {real} is absent (see ../shared/data/README.md).")
    lines.append("")
    lines.append("Single thread for torch (`torch.set_num_threads(1)`); the machine's 2 cores were shared with "
                 "another training job, so times are upper bounds.")
    write_section("outcome", "Mortality from radiomics and deep features, survival with censoring (issue 7)", CMD,
                  lines)


if __name__ == "__main__":
    main()
