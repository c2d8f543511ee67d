"""Outcome (issue 7): labels with censoring, grouped folds, radiomics, deep training, models and the null test."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from sscild.errors import ConfigError, InputError
from sscild.outcome.cohort import (HazardModel, grouped_folds, label_column, label_horizons,
                                   make_synthetic_cohort, permute_labels_by_patient, prepare_cohort, read_cohort,
                                   simulate_cohort_table)
from sscild.outcome.models import (OutcomeConfig, c_index_ci, cross_validate_outcome, evaluate_predictions,
                                   fit_cox, km_by_goh_stage)

torch.set_num_threads(1)
NAN = np.nan


def _hand_made() -> pd.DataFrame:
    rows = [  # patient, scan, scan date, death, last follow-up, expected labels at 1, 3, 5 years
        ("A", "A1", "2010-01-01", "2010-06-30", "", (1, 1, 1)),
        ("B", "B1", "2010-01-01", "2012-01-01", "", (0, 1, 1)),           # died after 2 years
        ("C", "C1", "2010-01-01", "", "2010-09-01", (NAN, NAN, NAN)),     # lost after 8 months
        ("D", "D1", "2010-01-01", "", "2013-06-01", (0, 0, NAN)),         # alive 3.4 years, then censored
        ("E", "E1", "2011-01-01", "2012-01-01", "", (1, 1, 1)),           # death 365 days after the scan
        ("F", "F1", "2013-01-01", "", "2014-01-01", (NAN, NAN, NAN)),     # 365 days alive < 1 year (365.25 d)
        ("G", "G1", "2010-01-01", "2016-01-01", "2015-01-01", (0, 0, 0)),  # died after 6 years (death wins)
        ("H", "H1", "2010-01-01", "2012-10-01", "", (0, 1, 1)),           # two scans: the later one is
        ("H", "H2", "2012-01-01", "2012-10-01", "", (1, 1, 1)),           # closer to the death
    ]
    df = pd.DataFrame([r[:5] for r in rows], columns=["patient_id", "scan_id", "scan_date", "death_date",
                                                     "last_followup_date"])
    df["expected"] = [r[5] for r in rows]
    return df


def test_horizon_labels_and_censoring_on_hand_made_dates():
    df = _hand_made()
    lab, counts = label_horizons(prepare_cohort(df))
    for j, h in enumerate((1, 3, 5)):
        got = lab[label_column(h)].to_numpy()
        want = np.array([e[j] for e in df["expected"]], float)
        np.testing.assert_array_equal(got, want, err_msg=f"horizon {h} y")
    c = counts.set_index("horizon_years")
    assert c.loc[1, ["positives", "negatives", "censored"]].tolist() == [3, 4, 2]
    assert c.loc[5, ["positives", "negatives", "censored"]].tolist() == [5, 1, 3]
    assert c.loc[3, "patients"] == 6            # 8 patients, C and F censored; H counted once


@pytest.mark.parametrize("change, words", [
    ({"death_date": ["2009-01-01"]}, "before the scan date"),
    ({"death_date": [""], "last_followup_date": [""]}, "neither death_date nor last_followup_date"),
    ({"scan_date": ["01/13/2010x"]}, "not dates"),
])
def test_bad_cohort_rows_raise_with_the_fix(change, words):
    df = pd.DataFrame({"patient_id": ["P"], "scan_id": ["S"], "path": ["x"], "scan_date": ["2010-01-01"],
                       "death_date": ["2011-01-01"], "last_followup_date": [""]})
    for k, v in change.items():
        df[k] = v
    with pytest.raises(ConfigError, match=words):
        prepare_cohort(df)
    with pytest.raises(ConfigError, match="patient_id"):
        prepare_cohort(df.drop(columns="patient_id"))


def test_grouped_folds_never_share_a_patient():
    df = simulate_cohort_table(150, seed=3)
    assert df.patient_id.value_counts().max() >= 3          # several scans per patient
    lab, _ = label_horizons(prepare_cohort(df))
    strata = lab["y_5y"].fillna(lab["event"]).astype(int)
    folds = grouped_folds(lab["patient_id"], strata, n_splits=5, seed=1)
    per_patient = pd.Series(folds).groupby(lab["patient_id"].to_numpy()).nunique()
    assert (per_patient == 1).all()
    assert sorted(np.unique(folds)) == [0, 1, 2, 3, 4]
    for k in range(5):                                      # stratified: deaths in every fold
        assert strata[folds == k].sum() > 0
    with pytest.raises(ConfigError, match="patients cannot fill"):
        grouped_folds(["a", "a", "b"], n_splits=3)
    # permuted labels stay constant within a patient and keep the labels' values
    y = lab["y_3y"].to_numpy()
    yp = permute_labels_by_patient(y, lab["patient_id"], seed=0)
    assert np.array_equal(np.isnan(y), np.isnan(yp))
    ok = ~np.isnan(yp)
    assert (pd.Series(yp[ok]).groupby(lab["patient_id"].to_numpy()[ok]).nunique() == 1).all()


def test_synthetic_survival_follows_the_known_hazard():
    hz = HazardModel()
    df = prepare_cohort(simulate_cohort_table(1500, seed=11, hazard=hz))
    hr = fit_cox(df, ["truth_extent_pct", "age"])
    assert abs(np.log(hr.loc["truth_extent_pct", "HR"]) - hz.beta_extent) < 0.012
    assert abs(np.log(hr.loc["age", "HR"]) - hz.beta_age) < 0.015
    km = km_by_goh_stage(df.assign(goh_extent=df["truth_extent_pct"]))
    lim, ext = km["stages"]["limited"], km["stages"]["extensive"]
    assert ext["survival_5y"] < lim["survival_5y"] - 0.15 and km["logrank_p"] < 1e-6
    c, lo, hi = c_index_ci(df["time_years"], df["event"], df["truth_log_hazard"], df["patient_id"], n_boot=200)
    assert 0.68 < lo < c < hi


def _tabular(n_patients: int, seed: int) -> pd.DataFrame:
    """Simulated cohort with a noisy extent feature and 10 'anatomy' features shared by a patient's scans."""
    df = prepare_cohort(simulate_cohort_table(n_patients, seed=seed))
    rng = np.random.default_rng(seed)
    anat = {p: rng.normal(size=10) for p in df.patient_id.unique()}
    A = np.stack([anat[p] for p in df.patient_id]) + rng.normal(0, 0.05, (len(df), 10))
    for i in range(10):
        df[f"anat{i}"] = A[:, i]
    df["extent_measured"] = df["truth_extent_pct"] + rng.normal(0, 5, len(df))
    return df


def test_tabular_model_learns_and_permuted_labels_cover_half():
    df = _tabular(220, seed=4)
    anat = [f"anat{i}" for i in range(10)]
    cfg = OutcomeConfig(horizons=(3,), kinds=("logistic", "gbm"), n_boot=500, cox=False, k_best=5)
    res = cross_validate_outcome(df, {"imaging": anat + ["extent_measured", "age"], "ceiling": ["truth_log_hazard"]},
                                 cfg)
    t = res.table.set_index("model")
    # learns the signal (features chosen inside the folds among 12, 10 of them noise), never beats the truth
    assert t.loc["imaging/logistic", "auc_lo"] > 0.6
    assert t.loc["imaging/logistic", "auc"] < t.loc["ceiling/logistic", "auc"] + 0.03
    assert t.loc["imaging/logistic", "censored"] == int(np.isnan(label_horizons(df, (3,))[0]["y_3y"]).sum())
    # null: labels permuted between patients; grouped folds stratified on the permuted labels
    lab, _ = label_horizons(df, (3,))
    yp = permute_labels_by_patient(lab["y_3y"], lab["patient_id"], seed=7)
    folds = grouped_folds(lab["patient_id"], pd.Series(yp).fillna(lab["event"]).astype(int), 5, seed=0)
    null = cross_validate_outcome(df, {"anat": anat}, cfg, folds=folds, label_override={3: yp}).table.set_index("model")
    for m in ("anat/logistic", "anat/gbm"):
        assert null.loc[m, "auc_lo"] < 0.5 < null.loc[m, "auc_hi"], null.loc[m]
    # the same null with scan-level folds leaks a patient's label across folds: the test would catch it
    naive = np.arange(len(df)) % 5
    leak = cross_validate_outcome(df, {"anat": anat}, cfg, folds=naive, label_override={3: yp}).table.set_index("model")
    assert leak.loc["anat/gbm", "auc_lo"] > 0.5


LIGHT_PARAMS = """
sscild:
  version: 1
setting:
  binWidth: 25
  resampledPixelSpacing: [6.0, 6.0, 6.0]
  interpolator: sitkLinear
  resegmentRange: [-1024, 200]
  resegmentMode: absolute
  minimumROISize: 20
  label: 1
  additionalInfo: false
  preCrop: true
imageType:
  Original: {}
featureClass:
  firstorder: []
  glcm: []
"""


@pytest.fixture()
def light_params(tmp_path):
    """Fewer features on 6 mm voxels: the same code path as the shipped file, a fraction of the time."""
    p = tmp_path / "light_params.yaml"
    p.write_text(LIGHT_PARAMS)
    return p


def test_radiomics_features_are_cached_and_track_extent(tmp_path, light_params):
    from sscild.outcome.radiomics import extract_cohort, features_for_scan, load_mask

    csv = make_synthetic_cohort(tmp_path / "c", n_patients=3, seed=5, spacing=(6.0, 5.6, 5.6), lesions=True)
    df = read_cohort(csv)
    assert len(df) >= 4 and df["truth_extent_pct"].nunique() >= 3
    bad = pd.DataFrame([{"scan_id": "broken", "path": str(tmp_path / "nope.nii.gz")}])
    feats, st = extract_cohort(pd.concat([df, bad], ignore_index=True), tmp_path / "cache", workers=2,
                               params_path=light_params, quiet=True)
    st = st.set_index("scan_id")
    assert st.loc["broken", "status"] == "failed" and "does not exist" in st.loc["broken", "reason"]
    assert len(feats) == len(df) and np.isfinite(feats["rad_lung_original_firstorder_Mean"]).all()
    j = feats.join(df.set_index("scan_id")["truth_extent_pct"])
    np.testing.assert_allclose(j["lesion_extent_pct"], j["truth_extent_pct"], atol=0.02)
    # denser lungs with more ILD: mean HU and the high-attenuation area rise with the true extent
    for c in ("rad_lung_original_firstorder_Mean", "density_HAA_pct"):
        assert j[["truth_extent_pct", c]].corr(method="spearman").iloc[0, 1] > 0.7, c
    # the shipped parameter file; a second call is served from the cache
    r = df.iloc[0]
    first = features_for_scan(r.scan_id, r.path, r.lungs_path, None, cache_dir=tmp_path / "cache2")
    again = features_for_scan(r.scan_id, r.path, r.lungs_path, None, cache_dir=tmp_path / "cache2")
    assert first["status"] == "done" and not first["cached"] and again["cached"]
    assert len(first["features"]) > 100 and again["features"] == pytest.approx(first["features"], nan_ok=True)
    # a changed parameter file (bin width 50) is not served from the cache
    p2 = tmp_path / "params_v2.yaml"
    p2.write_text(LIGHT_PARAMS.replace("version: 1", "version: 2").replace("binWidth: 25", "binWidth: 50"))
    v1 = features_for_scan(r.scan_id, r.path, r.lungs_path, r.lesions_path, cache_dir=tmp_path / "cache",
                           params_path=light_params)
    v2 = features_for_scan(r.scan_id, r.path, r.lungs_path, r.lesions_path, cache_dir=tmp_path / "cache",
                           params_path=p2)
    assert v1["cached"] and not v2["cached"]
    assert v2["features"]["rad_lung_original_glcm_JointEntropy"] < v1["features"]["rad_lung_original_glcm_JointEntropy"]
    # a lung mask of another grid is refused with the remedy
    import SimpleITK as sitk

    from sscild.io import load_ct

    sitk.WriteImage(sitk.Image(5, 5, 5, sitk.sitkUInt8), str(tmp_path / "small.nii.gz"))
    with pytest.raises(InputError, match="written for this scan"):
        load_mask(tmp_path / "small.nii.gz", load_ct(r.path), "lung mask")


def test_tiny_deep_training_learns_and_weights_round_trip(tmp_path):
    from sklearn.metrics import roc_auc_score

    from sscild.outcome.deep import (DeepConfig, build_network, deep_features, load_deep, lung_volume,
                                     predict_proba, save_deep, train_deep)
    from sscild.phantom import make_phantom

    cfg = DeepConfig(arch="resnet18", input_shape=(16, 32, 32), width=0.25, epochs=12, lr=3e-3, seed=0)
    vols, y = [], []
    for i in range(12):
        ext = 5.0 if i % 3 else 50.0                          # 4 positives, 8 negatives: class weights matter
        scan, truth = make_phantom(300 + i, extent=ext, spacing=(6.0, 5.6, 5.6))
        vols.append(lung_volume(scan, truth.lungs, cfg))
        y.append(float(ext > 20))
    vols, y = np.stack(vols), np.array(y)
    model, hist = train_deep(vols, y, cfg)
    p = predict_proba(model, vols)[:, 0]
    assert roc_auc_score(y, p) >= 0.9
    assert np.mean([h["loss"] for h in hist[-3:]]) < np.mean([h["loss"] for h in hist[:3]])
    save_deep(model, cfg, tmp_path / "m", horizons=(1,))
    m2, cfg2, card = load_deep(tmp_path / "m")
    np.testing.assert_allclose(predict_proba(m2, vols)[:, 0], p, rtol=1e-5, atol=1e-6)
    assert cfg2 == cfg and card["training"]["horizons_years"] == [1] and card["kind"] == "outcome-deep"
    # the other two encoders run on the same crops (no einops needed) and give pooled features
    for arch in ("densenet121", "swin"):
        c = DeepConfig(arch=arch, input_shape=(32, 32, 32), width=0.25)
        net = build_network(c, 3)
        x = torch.nn.functional.interpolate(torch.from_numpy(vols[:2])[:, None], size=(32, 32, 32))[:, 0].numpy()
        f = deep_features(net, x)
        assert f.shape == (2, net.n_features) and np.isfinite(f).all()
    with pytest.raises(ConfigError, match="multiple of 32"):
        DeepConfig(arch="swin", input_shape=(16, 32, 32))


def test_cli_train_and_evaluate_outcome(tmp_path, light_params):
    from typer.testing import CliRunner

    import sscild.cli.outcome_cmd  # noqa: F401  (registers the commands)
    from sscild.cli import app

    # evaluate: hand-made predictions against hand-made dates (C and F are censored at 1 year)
    df = _hand_made().drop(columns="expected")
    df.to_csv(tmp_path / "cohort.csv", index=False)
    pred = pd.DataFrame({"scan_id": df.scan_id, "p_1y": [0.9, 0.2, 0.5, 0.1, 0.8, 0.5, 0.3, 0.4, 0.7]})
    pred.to_csv(tmp_path / "pred.csv", index=False)
    r = CliRunner().invoke(app, ["evaluate", "outcome", "--pred", str(tmp_path / "pred.csv"), "--truth",
                                 str(tmp_path / "cohort.csv"), "--horizons", "1", "-o", str(tmp_path / "ev"),
                                 "--n-boot", "50"])
    assert r.exit_code == 0, r.output
    res = pd.read_csv(tmp_path / "ev" / "results.csv")
    assert res.loc[0, "n"] == 7 and res.loc[0, "censored"] == 2 and res.loc[0, "auc"] == pytest.approx(1.0)
    direct = evaluate_predictions(pred, prepare_cohort(df), (1,), n_boot=50)
    assert direct.loc[0, "auc"] == pytest.approx(1.0)

    # train on a small synthetic cohort: writes the tables and figures
    csv = make_synthetic_cohort(tmp_path / "syn", n_patients=12, seed=9, spacing=(6.0, 5.6, 5.6),
                                hazard=HazardModel(base_per_year=0.15))     # enough deaths in 12 patients
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["train", "outcome", "--cohort", str(csv), "-o", str(out), "--horizons", "3",
                                 "--folds", "3", "--quiet", "--clinical", "age", "--n-boot", "100",
                                 "--radiomics-params", str(light_params)])
    assert r.exit_code == 0, r.output
    t = pd.read_csv(out / "results.csv")
    assert {"radiomics/logistic", "radiomics+clinical/gbm", "clinical/logistic"} <= set(t["model"])
    assert (out / "roc_3y.png").stat().st_size > 1000
    p = pd.read_csv(out / "predictions.csv", dtype={"patient_id": str})
    assert (p.groupby("patient_id")["fold"].nunique() == 1).all()
    # a horizon with too few deaths is skipped with a note, not an error
    r = CliRunner().invoke(app, ["train", "outcome", "--cohort", str(csv), "-o", str(out), "--horizons", "0.01,3",
                                 "--folds", "3", "--quiet", "--n-boot", "50", "--radiomics-params", str(light_params)])
    assert r.exit_code == 0, r.output
    t = pd.read_csv(out / "results.csv")
    assert t.loc[t.horizon_years == 0.01, "note"].str.startswith("skipped").all()
    assert t.loc[t.horizon_years == 3, "auc"].notna().all()
    r = CliRunner().invoke(app, ["train", "outcome", "--cohort", str(tmp_path / "missing.csv")])
    assert isinstance(r.exception, ConfigError) and "does not exist" in str(r.exception)
