"""Helpers for benchmark scripts: timing, peak memory of a call, writing a results section."""
from __future__ import annotations

import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORK = HERE / "work"
SHARED_DATA = REPO.parent / "shared" / "data"


def rss_mb() -> float:
    """Current resident memory of this process in MB (Linux)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 1e6


def measure(fn: Callable[[], Any], repeat: int = 1) -> tuple[Any, float, float]:
    """Run ``fn`` ``repeat`` times; return (last result, best wall seconds, peak RSS MB during the runs).

    Peak memory is sampled every 5 ms by a thread, so it is the process's resident peak while ``fn``
    ran (including what was resident before).
    """
    peak = [rss_mb()]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_mb())
            time.sleep(0.005)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    best = float("inf")
    result = None
    try:
        for _ in range(repeat):
            t0 = time.perf_counter()
            result = fn()
            best = min(best, time.perf_counter() - t0)
    finally:
        stop.set()
        t.join()
    return result, best, peak[0]


def write_section(name: str, title: str, command: str, lines: list[str]) -> Path:
    """Write ``bench/results/<name>.md`` with a title, the command that made it, and ``lines``."""
    out = HERE / "results" / f"{name}.md"
    out.parent.mkdir(exist_ok=True)
    text = [f"## {title}", "", f"Command: `{command}`", ""] + lines + [""]
    out.write_text("\n".join(text))
    print("\n".join(text))
    return out


if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))


def full_phantom_dicom(seed: int = 7, extent: float = 20.0) -> Path:
    """A 512x512x300 phantom written as DICOM under bench/work (made once, then reused; ~80 s)."""
    d = WORK / f"phantom_512x512x300_seed{seed}_dicom"
    if not (d / "done").exists():
        import shutil

        from sscild.phantom import write_dicom_series

        shutil.rmtree(d, ignore_errors=True)
        write_dicom_series(full_phantom(seed, extent), d)
        (d / "done").write_text("ok")
    return d


def full_phantom(seed: int = 7, extent: float = 20.0, slice_mm: float | None = None):
    """The 512x512x300 phantom of the benchmarks (0.7 mm pixels; slices of ``slice_mm``, default the "full" size's
    1.5 mm), made in memory (~2-5 min on this CPU)."""
    from sscild.phantom import make_phantom

    spacing = None if slice_mm is None else (float(slice_mm), 0.7, 0.7)
    scan, _ = make_phantom(seed, size="full", extent=extent, shape=(300, 512, 512), spacing=spacing)
    return scan


def full_phantom_nifti(seed: int = 7, extent: float = 20.0, slice_mm: float = 1.0) -> Path:
    """:func:`full_phantom` written once as NIfTI under bench/work (then reused)."""
    f = WORK / f"phantom_512x512x300_seed{seed}_ext{extent:g}_{slice_mm:g}mm.nii.gz"
    if not f.exists():
        from sscild.io import save_like

        WORK.mkdir(exist_ok=True)
        scan = full_phantom(seed, extent, slice_mm)
        save_like(scan.hu, scan, f)
    return f


def record_test_split(directory: Path, card: dict, metric: dict, predictions: dict) -> None:
    """Write ``metric`` (a ``sscild.bundle.metric_set`` of split ``test``) into the shipped card in ``directory``,
    replacing its test split, with the ``predictions`` it is recomputed from stored as the set ``test``."""
    from sscild.bundle import read_predictions, save_bundle

    preds = {**read_predictions(directory), "test": predictions}
    new = {**card, "metrics": [metric] + [m for m in card["metrics"] if m["split"] != "test"]}
    save_bundle(None, directory, new, predictions=preds, allow_package=True)
