"""Reader study bench (bench/results/review.md):

1. load: 20 simulated readers submit 50 answers each at once to a real ``sscild review serve`` (uvicorn subprocess,
   127.0.0.1, SQLite in WAL mode); every answer is checked in the database; p50 / p95 / max latency.
2. a simulated reader study on real-background phantoms (ILD inserted in 3D into real chest CTs with
   :func:`sscild.insertion.insert_ild`, exact truth): 4 readers = truth + Gaussian noise of SD 4.5 points, in 5 %
   steps; the statistics' reader-noise estimate against the known noise.
3. the study's consensus exported (``review export``) and S-Net fine-tuned from the shipped weights
   (``sscild train scoring --config``) as the export's config says (replay, L2-SP, frozen batch norm, refitted
   calibration, guard) and, for comparison, naively; shipped and fine-tuned S-Net on the shipped card's held-out
   test set (``bench/run_all.py snet``) and on a real scan never used for fine-tuning (with inserted ILD).

Run: python bench/run_all.py review   (``python bench/bench_review.py finetune`` reruns part 3 only; work files in
the benchmarks' work folder, review/)
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, SHARED_DATA, WORK, write_section  # noqa: E402

from sscild.domain import LEVELS, PATTERNS  # noqa: E402

W = WORK / "review"
SD = 4.5
TRAIN_SCANS = [("chest-ct-lung-pet-ct-dx-a0001", 0.15, "NSIP"), ("chest-ct-lung-pet-ct-dx-a0001", 0.35, "UIP"),
               ("chest-ct-acrin-flt-breast-013/ct.nii.gz", 0.25, "patchy"),
               ("chest-ct-acrin-flt-breast-013/ct.nii.gz", 0.45, "NSIP"),
               ("chest-ct-lidc-idri-0001/ct.nii.gz", 0.3, "UIP"), ("chest-ct-lidc-idri-0001/ct.nii.gz", 0.1, "patchy")]
HELD_OUT_SCANS = [("chest-ct-lung-pet-ct-dx-a0002/ct.nii.gz", 0.2, "NSIP"),
                  ("chest-ct-lung-pet-ct-dx-a0002/ct.nii.gz", 0.4, "UIP")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(study: Path, port: int) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-m", "sscild", "review", "serve", str(study), "--port", str(port)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return p
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("server did not start")


# ------------------------------------------------------------------------------------------------------------------
def load_part(n_readers: int = 20, n_answers: int = 50) -> list[str]:
    import httpx

    from sscild.review.simulate import phantom_folder, simulated_answer
    from sscild.review.stats import load_answers
    from sscild.review.study import create_study, find_sources, open_study

    folder = W / "load_phantom"
    if not (folder / "levels.json").exists():
        phantom_folder(folder, 31, 30.0, shape=(48, 64, 64), spacing=(7.0, 5.6, 5.6))
    study = W / "load_study"
    shutil.rmtree(study, ignore_errors=True)
    n_cases = n_answers // len(LEVELS)                       # the same phantom as 10 cases: 50 levels per reader
    tokens = create_study(study, find_sources([folder] * n_cases), [f"r{i:02d}" for i in range(n_readers)],
                          repeat=0.0, neighbours=1)
    port = free_port()
    proc = serve(study, port)
    lat: dict[str, list[float]] = {"GET /api/task": [], "PUT /api/answer": []}
    sent: dict[tuple, dict] = {}
    lock, barrier, errors = threading.Lock(), threading.Barrier(n_readers), []
    truth = {"TOT": 30.0, "GG": 20.0, "RET": 12.0}

    def reader(name: str, token: str, seed: int) -> None:
        rng = np.random.default_rng(seed)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60,
                          headers={"Authorization": f"Bearer {token}"}) as c:
            barrier.wait()
            for _ in range(n_answers):
                t0 = time.perf_counter()
                t = c.get("/api/task").json()
                t1 = time.perf_counter()
                a = simulated_answer(truth, SD, rng)
                r = c.put(f"/api/answer/{t['position']}/{t['level']}", json=a)
                t2 = time.perf_counter()
                with lock:
                    lat["GET /api/task"].append(t1 - t0)
                    lat["PUT /api/answer"].append(t2 - t1)
                    if r.status_code != 200:
                        errors.append(r.text)
                    sent[(name, t["position"], t["level"])] = a

    threads = [threading.Thread(target=reader, args=(n, tok, i)) for i, (n, tok) in enumerate(tokens.items())]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    db = load_answers(open_study(study))
    got = {(r.reader, r.position, r.level): {p: int(getattr(r, p)) for p in PATTERNS} for r in db.itertuples()}
    lost = sum(1 for k, v in sent.items() if got.get(k) != v)
    lines = [f"{n_readers} readers x {n_answers} answers at once (threads with httpx, one connection each) against "
             f"`sscild review serve` (uvicorn, 1 process) on 127.0.0.1, SQLite WAL synchronous=FULL; 2 shared CPU "
             f"cores, other jobs running.", "",
             f"- answers sent {len(sent)}, in the database {len(db)}, lost or different {lost}, HTTP errors "
             f"{len(errors)}", f"- wall time {wall:.1f} s: {len(sent) / wall:.0f} answers/s", "",
             "| request | n | p50 ms | p95 ms | max ms |", "|---|---|---|---|---|"]
    for k, v in lat.items():
        ms = np.asarray(v) * 1000
        lines.append(f"| {k} | {len(ms)} | {np.percentile(ms, 50):.0f} | {np.percentile(ms, 95):.0f} | "
                     f"{ms.max():.0f} |")
    return lines


# ------------------------------------------------------------------------------------------------------------------
def inserted_folder(out: Path, rel: str, extent: float, distribution: str, seed: int) -> Path:
    """A real chest CT with ILD inserted in 3D, as an analysed folder with its exact level scores."""
    import dataclasses

    from sscild.anatomy import segment_lungs
    from sscild.insertion import insert_ild
    from sscild.io import load_ct
    from sscild.levels import find_levels
    from sscild.review.simulate import level_truth, truth_folder

    if (out / "levels.json").exists():
        return out
    scan = load_ct(SHARED_DATA / rel)
    lungs = segment_lungs(scan)
    lung = lungs.mask > 0
    levels = find_levels(scan, lungs).z_mm
    ins = insert_ild(scan.hu, lung, scan.spacing, np.random.default_rng(seed), extent=extent,
                     distribution=distribution)
    sick = dataclasses.replace(scan, hu=np.clip(np.round(ins.hu), -1024, 3071).astype(np.int16))
    truth = {n: level_truth(ins.labels, lung, sick.slice_at_z(z)) for n, z in levels.items() if z is not None}
    return truth_folder(out, sick, levels, truth)


def reader_study(folders: list[Path], n_readers: int = 4) -> tuple[Path, list[str]]:
    from fastapi.testclient import TestClient

    from sscild.review.app import create_app
    from sscild.review.simulate import case_truth, read_all, reader_cases
    from sscild.review.stats import compute_stats
    from sscild.review.study import create_study, find_sources, open_study

    study = W / "sim_study"
    shutil.rmtree(study, ignore_errors=True)
    tokens = create_study(study, find_sources(folders), [f"reader{i}" for i in range(n_readers)], repeat=0.5,
                          neighbours=1, seed=3)
    truth, cases = case_truth(study), reader_cases(study)
    with TestClient(create_app(study)) as c:
        for i, (name, tok) in enumerate(tokens.items()):
            read_all(c, tok, name, truth, cases, SD, np.random.default_rng(100 + i))
    st = compute_stats(open_study(study))
    allp = st.inter_pairs[st.inter_pairs["level"] == "all"]
    vt = st.vs_tool[st.vs_tool["level"] == "all"]
    intra = st.intra[st.intra["level"] == "all"]
    first = st.answers[st.answers["replicate"] == 0].merge(
        __import__("pandas").DataFrame([{"case_id": c, "level": n, **{f"t_{p}": v[p] for p in PATTERNS}}
                                        for c, lv in truth.items() for n, v in lv.items()]), on=["case_id", "level"])
    n_items = len(first) // n_readers
    lines = [f"{len(folders)} real-background scans (ILD inserted in 3D into real chest CTs of ../shared/data, exact "
             f"truth): {n_items} level slices (levels out of a scan's view left out); {n_readers} "
             f"simulated readers = truth + N(0, {SD}) points, rounded to 5 % steps, TOT kept in [max(GG, RET), "
             "GG + RET]; half the cases read twice. Answers given through the web API (in-process TestClient).", "",
             "| pattern | true reader SD | SD of (reader - truth) after rounding | estimated from reader pairs: "
             "SD(A - B)/sqrt 2, mean (min-max) over pairs | inter-reader ICC (mean) | kappa (mean) | MAE between "
             "readers | reader vs truth MAE | intra-reader MAE |", "|---|---|---|---|---|---|---|---|---|"]
    for p in PATTERNS:
        a = allp[allp["pattern"] == p]
        direct = float(np.std(first[p] - first[f"t_{p}"], ddof=1))
        lines.append(f"| {p} | {SD} | {direct:.2f} | {a['reader_SD_est'].mean():.2f} ({a['reader_SD_est'].min():.2f}"
                     f"-{a['reader_SD_est'].max():.2f}) | {a['ICC'].mean():.3f} | {a['kappa'].mean():.3f} | "
                     f"{a['MAE'].mean():.2f} | {vt[vt['pattern'] == p]['MAE'].mean():.2f} | "
                     f"{intra[intra['pattern'] == p]['MAE'].mean():.2f} |")
    return study, lines


def held_out_real(cfg):
    """Level slices of a real scan never fine-tuned on (A0002, ILD inserted twice, exact truth)."""
    import json

    import pandas as pd

    from sscild.scoring.snet import slices_from_csv

    rows = []
    for i, (rel, ext, dist) in enumerate(HELD_OUT_SCANS):
        f = inserted_folder(W / f"held{i}", rel, ext, dist, seed=500 + i)
        lv = {d["name"]: d["z_mm"] for d in json.loads((f / "levels.json").read_text())["levels"]}
        sc = json.loads((f / "scores.json").read_text())["levels"]
        rows.append({"scan_path": str(f / "phantom" / "ct.nii.gz"), "patient_id": f"held{i}",
                     **{n: lv.get(n) for n in LEVELS},
                     **{f"{n}_{p}": sc[n][p] if n in sc else None for n in LEVELS for p in PATTERNS}})
    csv = W / "held_out.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    return slices_from_csv(csv, cfg, neighbours=0)


def card_test_set(cfg):
    """The shipped S-Net card's held-out test set (``python bench/run_all.py snet``: 400 level slices of new
    phantom seeds 9000-9049 and 9100-9109 and patterns inserted into held-out healthy slices), from that bench's
    cache in the work folder (built there when missing)."""
    import dataclasses

    import bench_snet
    from sscild.scoring.snet import pattern_source_from_spec

    cached = all((bench_snet.WORK / f"snet_test_{n}.npz").exists() for n in ("phantoms", "medium", "synthetic"))
    source = None if cached else pattern_source_from_spec({"source": "real_gg", "real_gg": str(bench_snet.COVID)},
                                                           REPO)     # the GG patches only when the set is built
    parts = bench_snet.test_sets(dataclasses.replace(cfg, texture=True), source)
    names = ["phantom level slices, 128 px (50 new seeds)", "phantom level slices, 256 px (10 new seeds)",
             "inserted patterns on held-out healthy slices (real A0001 last 30 %, phantoms)"]
    return dict(zip(names, parts))


#: fine-tuning arms: the config ``review export`` writes, and the naive one measured before (no replay, no
#: L2-SP, batch-norm statistics updated, no recalibration, lr 1e-4) for comparison
ARMS = {"safe (export defaults)": {},
        "naive (no replay, no L2-SP, BN statistics updated, calibration dropped)": {
            "finetune": {"replay_share": 0.0, "l2sp": 0.0, "freeze_bn": False, "on_worse": "keep_finetuned"},
            "train": {"lr": 1e-4}, "calibrate": False}}
TOLERANCE = 0.5        # MAE points: fine-tuned <= shipped + this on the card's held-out test set


def run_arm(study: Path, name: str, over: dict) -> tuple[Path, float, str]:
    """Export the consensus, change the config as ``over`` says, fine-tune with ``sscild train scoring``."""
    import yaml

    from sscild.review.export import export_labels

    tag = "safe" if not over else "naive"
    e = export_labels(study, W / f"labels_{tag}.csv")
    c = yaml.safe_load(e.config.read_text())
    for k, v in over.items():
        c[k] = {**c[k], **v} if isinstance(v, dict) else v
    e.config.write_text(yaml.safe_dump(c, sort_keys=False))
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "sscild", "train", "scoring", "--config", str(e.config), "--quiet"],
                       capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if r.returncode != 0:
        raise RuntimeError(f"fine-tuning {name} failed: {r.stdout[-2000:]} {r.stderr[-2000:]}")
    warn = " ".join(ln.strip() for ln in r.stderr.splitlines() if ln.startswith("warning:") and "fine-tun" in ln)
    warn = warn.replace(str(REPO) + os.sep, "")         # paths relative to the project, never this machine's
    return W / f"labels_{tag}_snet", time.perf_counter() - t0, warn


def _mae_cells(model, s, cfg) -> list[float]:
    from sscild.scoring.snet import evaluation_table, predict_prepared

    t = evaluation_table(predict_prepared(model, s, cfg), s.scores)
    return [t[p]["MAE"] for p in PATTERNS]


def arm_lines(name: str, out: Path, dt: float, warn: str, shipped, cfg0, sets: dict) -> tuple[list[str], bool]:
    """The arm's table (shipped vs fine-tuned on each held-out set) and whether it meets the acceptance."""
    import json

    from sscild.scoring.snet import load_snet

    tuned_dir = out / "rejected" if (out / "rejected").exists() else out
    tuned, cfg1, card = load_snet(tuned_dir)
    ft = card["notes"]["finetune"]
    g, nv = ft["guard"], ft["new_validation_MAE"]
    kept = json.loads((out / "card.json").read_text())
    f3 = " / ".join
    lines = [f"**{name}**: {card['training']['train_slices']} reader-labelled slices ({ft['new_train_slices']} "
             f"after holding out patients {', '.join(ft['new_validation_patients'])}), "
             f"{card['training']['replay_slices']} replay slices, replay share {ft['replay_share']}, L2-SP "
             f"{ft['l2sp']}, frozen BN {ft['freeze_bn']}, {card['training']['steps']} steps of batch "
             f"{card['training']['batch_size']}, lr {card['training']['lr']}; calibration {ft['calibration']}; "
             f"{dt:.0f} s wall (data, training, saving).", "",
             f"- guard on the original-distribution validation ({g.get('tolerance')} points): MAE TOT / GG / RET "
             f"shipped {f3(f'{v:.2f}' for v in g['init_MAE'].values())}, fine-tuned "
             f"{f3(f'{v:.2f}' for v in g['finetuned_MAE'].values())}: **{'passed' if g['passed'] else 'failed'}**"
             f"; `{out.name}/` holds the {'fine-tuned' if 'finetune' in kept['notes'] else 'shipped'} weights"
             + (f" ({warn[:160]}...)" if warn else ""),
             f"- held-out readers' patients (validation, in the calibration fit): MAE TOT / GG / RET shipped "
             f"{f3(f'{v:.2f}' for v in nv['init'].values())}, fine-tuned "
             f"{f3(f'{v:.2f}' for v in nv['finetuned'].values())}", "",
             "| held-out set (never trained or calibrated on) | n | shipped TOT / GG / RET | fine-tuned TOT / GG / RET |"
             " change TOT / GG / RET |", "|---|---|---|---|---|"]
    ok = True
    for sname, s in sets.items():
        m0, m1 = _mae_cells(shipped, s, cfg0), _mae_cells(tuned, s, cfg1)
        lines.append(f"| {sname} | {len(s)} | {f3(f'{v:.2f}' for v in m0)} | {f3(f'{v:.2f}' for v in m1)} | "
                     f"{f3(f'{b - a:+.2f}' for a, b in zip(m0, m1))} |")
        if sname.startswith("**card"):
            ok = all(b <= a + TOLERANCE for a, b in zip(m0, m1))
    return lines, ok


def finetune_part(study: Path) -> list[str]:
    from sscild.scoring.snet import SliceSet, load_snet

    shipped, cfg0, card0 = load_snet()
    test = card_test_set(cfg0)
    sets = {"**card test set, all**": SliceSet.concat(list(test.values())), **test,
            "real scan A0002 (ILD inserted twice, exact truth), level slices": held_out_real(cfg0)}
    ref = next(m for m in card0["metrics"] if m["split"] == "test")["values"]
    ref_mae = " / ".join(f"{ref[p]['MAE']:.2f}" for p in PATTERNS)
    lines = ["Exported consensus (mean of 4 simulated readers, 28 levels of 6 real-background scans) -> "
             "`sscild train scoring --config labels_snet.yaml` from the shipped weights. Held out from all "
             "fine-tuning and calibration: the shipped card's test set (the shipped card gives TOT / GG / RET "
             f"MAE {ref_mae} on it with "
             "today's lung masks) and a real scan never fine-tuned on. Acceptance: fine-tuned MAE <= shipped + "
             f"{TOLERANCE} points on the card test set, each of TOT, GG, RET. Note: the card test set's inserted "
             "subset uses the last 30 % of A0001's lung slices as backgrounds, and A0001 (with ILD inserted) is "
             "one of the reader-study scans; the phantom subsets share nothing with the fine-tuning data.", ""]
    for name, over in ARMS.items():
        out, dt, warn = run_arm(study, name, over)
        al, ok = arm_lines(name, out, dt, warn, shipped, cfg0, sets)
        lines += al + ["", f"Acceptance (card test set, tolerance {TOLERANCE}): **{'met' if ok else 'not met'}**.",
                       ""]
    return lines


def main() -> None:
    """All parts; ``finetune`` as argument reruns only the fine-tuning (on the study already simulated) and
    keeps the other sections."""
    import torch

    torch.set_num_threads(1)
    W.mkdir(parents=True, exist_ok=True)
    res = REPO / "bench" / "results" / "review.md"
    cmd = "python bench/run_all.py review"
    head = "### Fine-tuning S-Net on the exported consensus"
    if sys.argv[1:2] == ["finetune"]:
        old = res.read_text().split("\n")[4:]
        old = old[:old.index(head)] if head in old else old
        write_section("review", "Reader study (sscild review)", cmd, old + [head, ""] + finetune_part(W / "sim_study"))
        return
    lines = ["### Load", ""] + load_part() + [""]

    def write(extra: list[str]) -> None:        # after each part, so a long run leaves what it has measured
        write_section("review", "Reader study (sscild review)", cmd, lines + extra)

    write([])
    if not (SHARED_DATA / "chest-ct-lung-pet-ct-dx-a0001").exists():
        write([f"simulated study and fine-tuning skipped: {SHARED_DATA} not found"])
        return
    folders = [inserted_folder(W / f"train{i}", rel, ext, dist, seed=100 + i)
               for i, (rel, ext, dist) in enumerate(TRAIN_SCANS)]
    study, sim = reader_study(folders)
    lines += ["### Simulated reader study: the statistics recover the readers' noise", ""] + sim + [""]
    write([])
    lines += [head, ""] + finetune_part(study)
    write([])


if __name__ == "__main__":
    main()
