"""Speed of the whole analysis on a 512x512x300 scan (issue 17: scores + lesions <= 30 s, heat maps <= 60 s more):
per-stage seconds, wall and CPU time, peak memory and the load average of the shared CPU; what test-time
augmentation (TTA) of the S-Net costs; the heat-map stage on its own; and the `sscild analyze` command once, reading
the NIfTI and writing every output."""
from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time

import numpy as np
from common import REPO, WORK, full_phantom_nifti, measure, write_section

import torch

from sscild import AnalysisSettings, analyze
from sscild.consensus import tta_scores
from sscild.io import load_ct
from sscild.modelset import ModelSet
from sscild.outputs import write_outputs
from sscild.pipeline import heatmap_stage, model_input
from sscild.scoring.snet import SNetScorer

THREADS = int(os.environ.get("OMP_NUM_THREADS", "2"))


def cpu_s(who=resource.RUSAGE_SELF) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def load() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def timed(fn):
    """(result, wall s, CPU s of this process, peak RSS MB, load average before, after)."""
    before, c0 = load(), cpu_s()
    res, wall, peak = measure(fn)
    return res, wall, cpu_s() - c0, peak, before, load()


def tta_cost(mscan, a, models: ModelSet):
    """Seconds for the five level slices scored once each, and with the three TTA variants (4 passes each)."""
    m = models.get("snet", None, "cpu")
    scorer = SNetScorer(m.model, m.config, pixel_mm=float(mscan.spacing[1]))
    ks = [s.slice for s in a.scores.levels.values() if s.TOT is not None]
    sl = [(mscan.hu[k].astype(np.float32), a.lungs.labels[k] > 0) for k in ks]
    scorer(sl[0][0][None], sl[0][1][None])                       # warm-up
    _, t1, _ = measure(lambda: [scorer(h[None], m_[None]) for h, m_ in sl], repeat=3)
    _, t4, _ = measure(lambda: [tta_scores(scorer, h, m_) for h, m_ in sl], repeat=3)
    return len(ks), t1, t4


def cli_run(nifti) -> tuple[float, float, float, str]:
    """`sscild analyze` as a user runs it: wall s, CPU s (with its threads), peak RSS MB, stage seconds. CPU and
    peak RSS are those of that process alone (``os.wait4``: RUSAGE_CHILDREN would give the largest of every child
    this bench has had)."""
    out = WORK / "speed_cli_out"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "sscild", "analyze", "-i", str(nifti), "-o", str(out), "--quiet"],
                            cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": str(THREADS)})
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)        # reaped here: Popen must not wait for it again
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, proc.args)
    stages = json.loads((out / "analysis.json").read_text()).get("timings_s", {})
    return (wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1000,
            ", ".join(f"{k} {v:.1f}" for k, v in stages.items()))


def main():
    torch.set_num_threads(THREADS)
    nifti = full_phantom_nifti(seed=7, extent=20.0, slice_mm=1.0)
    scan, t_read, _, _, _, _ = timed(lambda: load_ct(nifti))
    models = ModelSet()
    a, wall, cpu, peak, l0, l1 = timed(lambda: analyze(scan, AnalysisSettings(quiet=True), models=models))
    if a.scores is None or a.lesions is None:
        write_section("speed", "Speed of the whole analysis (issue 17)", "python bench/run_all.py speed",
                      ["Not measured: the shipped S-Net or lesion U-Net is missing (" + "; ".join(a.warnings) + ")"])
        return
    _, t_write, c_write, _, _, _ = timed(lambda: write_outputs(a, scan, WORK / "speed_py_out"))
    _, mscan = model_input(scan, a.lungs)
    n_lv, t_once, t_tta = tta_cost(mscan, a, models)
    st_h = AnalysisSettings(quiet=True, heatmaps=True)
    hm, t_hm, c_hm, p_hm, lh0, lh1 = timed(lambda: heatmap_stage(mscan, a.lungs, a.scores, st_h, models))
    npos = sum(m.n_positions for m in hm.value.maps.values())
    cli_wall, cli_cpu, cli_peak, cli_stages = cli_run(nifti)
    stages = " | ".join(f"{v:.1f}" for v in a.timings_s.values())
    lines = [
        f"Phantom seed 7, 512x512x300 voxels, 0.7 mm pixels, 1.0 mm slices (lungs on "
        f"{int(a.lungs.mask.any(axis=(1, 2)).sum())} slices), ILD extent 20 %; read from NIfTI in {t_read:.1f} s. "
        f"Shipped models, default settings (L-Net levels combined with the anatomical ones, scores with TTA + "
        f"lesions + vessels, quality, regions; no heat maps); torch and BLAS on {THREADS} threads. "
        "**The 2 cores are shared with other workers**: wall times depend on the load average (1/5/15 min) shown; "
        "CPU time (user + system, all threads of this process) is the steadier figure. First call in the process: "
        "imports (MONAI, ~3 s CPU) and model loading are inside the `levels_lnet` / `scores` / `lesions` stage "
        "times. levels, vessels, quality, density and the region map run side by side on two threads after the lungs "
        "(`pipeline.model_free_stages`), so their times overlap (each is its own wall time); `regions` is the map "
        "plus the metrics after the lesions.", "",
        "| " + " | ".join(a.timings_s) + " | total wall | CPU time | peak RSS | load before -> after | goal <= 30 s |",
        "|" + "---|" * (len(a.timings_s) + 5),
        f"| {stages} | {wall:.1f} s | {cpu:.1f} s | {peak / 1000:.2f} GB | {l0} -> {l1} | "
        f"{'yes' if wall <= 30 else 'no'} (CPU time {'within' if cpu <= 30 * THREADS else 'over'} 2 cores x 30 s) |",
        "",
        f"- Writing every output of that analysis (`write_outputs`: NIfTI masks, JSON, figures, report.html): "
        f"{t_write:.1f} s wall, {c_write:.1f} s CPU.",
        f"- S-Net on the {n_lv} level slices: {t_once:.2f} s scored once each, {t_tta:.2f} s with test-time "
        f"augmentation (as analyze does it: the slice, its mirror and +-15 deg rotations, 4 forward passes per "
        f"level): TTA costs {t_tta - t_once:.2f} s. There is no ensemble (one S-Net).",
        f"- Heat maps (`--heatmaps`, patch {st_h.patch_mm:g} mm, stride {st_h.stride_mm:g} mm, {npos} patch positions "
        f"on {len(hm.value.maps)} levels x 3 patterns): the stage adds {t_hm:.1f} s wall, {c_hm:.1f} s CPU, peak RSS "
        f"{p_hm / 1000:.2f} GB, load {lh0} -> {lh1}; goal <= 60 s: {'yes' if t_hm <= 60 else 'no'}.",
        f"- `sscild analyze -i <that NIfTI> -o <folder> --quiet` in a new process (imports, reading, every stage, "
        f"writing every output): {cli_wall:.1f} s wall, {cli_cpu:.1f} s CPU, peak RSS {cli_peak / 1000:.2f} GB "
        f"(stages: {cli_stages}); goal <= 30 s: {'yes' if cli_wall <= 30 else 'no'}.",
    ]
    write_section("speed", "Speed of the whole analysis (issue 17)", "OMP_NUM_THREADS=2 python bench/run_all.py speed",
                  lines)


if __name__ == "__main__":
    main()
