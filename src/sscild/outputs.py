"""The output folder of one analysis, written all or nothing.

:func:`write_outputs` writes every file into a hidden temporary folder beside ``OUTDIR`` and renames it into
place at the end, so ``OUTDIR`` holds either the complete outputs of one run or those of the run before: never a
mix, never a half-written folder after Ctrl-C, a full disk or a killed process (leftover temporary folders of
dead processes are removed by the next run). ``analysis.json`` is written last and carries every warning,
including those of writing (a DICOM-SEG that could not be made). The :class:`~sscild.results.Analysis` is never
changed, so writing it twice gives identical folders. Files::

    lungs.nii.gz     1 right, 2 left lung (input geometry)     airways.nii.gz   trachea + main bronchi
    levels.json      the five Goh levels (fixed schema)        density.json     density metrics
    scores.json      S-Net scores (+ heat-map derived)          lesions.nii.gz / lesions.json   lesion U-Net
    heatmap_<level>_<pattern>.nii.gz/.png                      levels.png       the five level slices
    vessels.nii.gz   lung vessels (model-free)                 quality.json     scan quality checks
    regions.json / regions.png   regional distribution         report.html      the report (+ report_*.png)
    seg.dcm          DICOM-SEG (DICOM input only)              sr.dcm           DICOM SR (TID 1500) beside seg.dcm
    heatmap_<pattern>.dcm   DICOM Parametric Maps of the heat maps (DICOM input with heat maps)
    analysis.json    everything, with version, settings, timings and warnings (written last)

Privacy: patient name, id, dates and free-text DICOM descriptions go into ``analysis.json`` and the report only
with ``show_phi``.

Examples
--------
>>> import tempfile, pathlib
>>> from sscild.outputs import check_output_dir
>>> base = pathlib.Path(tempfile.mkdtemp())
>>> check_output_dir(base / "new").warnings
()
>>> check_output_dir("")
Traceback (most recent call last):
...
sscild.errors.OutputError: the output folder name is empty: give one with -o, e.g. -o results
"""
from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from .errors import OutputError
from .util import read_json, write_json

if TYPE_CHECKING:
    from .results import Analysis
    from .scan import CTScan

_TMP_TAG = "sscild-tmp"
_OLD_TAG = "sscild-old"
_LEFTOVER = re.compile(rf"^\.(?P<name>.+)\.(?P<tag>{_TMP_TAG}|{_OLD_TAG})-(?P<pid>\d+)-")


@dataclass(frozen=True)
class OutputCheck:
    """An output folder that can be written, and what the user should know about it."""

    path: Path
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class WrittenOutputs(Mapping):
    """The files written (key -> path, e.g. ``files["lungs"]``) and the warnings of writing them."""

    folder: Path
    files: dict[str, Path] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    def __getitem__(self, key: str) -> Path:
        return self.files[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.files)

    def __len__(self) -> int:
        return len(self.files)


# --------------------------------------------------------------------------------------------
# the folder: checked before the analysis, staged, swapped into place
# --------------------------------------------------------------------------------------------
def check_output_dir(outdir: str | os.PathLike, input_path: str | os.PathLike | None = None) -> OutputCheck:
    """Check that ``outdir`` can receive an analysis' outputs, before any work is done.

    Raises :class:`~sscild.errors.OutputError` when the name is empty, the path is a file, the current folder (or
    holds it), holds the input, holds files that are not an earlier sscild output, or its parent is not writable.
    Warns when it lies inside the input folder.
    """
    if str(outdir).strip() == "":
        raise OutputError("the output folder name is empty: give one with -o, e.g. -o results")
    out = Path(outdir).expanduser().absolute()
    warns: list[str] = []
    if out.exists() and not out.is_dir():
        raise OutputError(f"the output path {out} is a file, not a folder: give a folder name (it is created)")
    cwd = Path.cwd().resolve()
    if out.resolve() in (cwd, *cwd.parents):
        raise OutputError(f"the output folder {out} is the current folder or holds it; it is replaced as a whole: "
                          "give a new folder name, e.g. -o results")
    if input_path is not None:
        warns += _check_against_input(out, Path(input_path).expanduser().absolute())
    if out.is_dir() and any(out.iterdir()) and not is_sscild_output(out):
        shown = ", ".join(sorted(p.name for p in out.iterdir())[:5])
        raise OutputError(f"the output folder {out} already holds files that are not an sscild output ({shown}); "
                          "outputs replace the folder as a whole: give a new or empty folder")
    parent = next((p for p in out.parents if p.exists()), None)
    if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write into {parent} (not a writable folder), so {out} cannot be made: choose "
                          "an output folder where you have write permission")
    return OutputCheck(out, tuple(warns))


def _check_against_input(out: Path, src: Path) -> list[str]:
    src_r, out_r = src.resolve(), out.resolve()
    if src_r == out_r or out_r in src_r.parents:
        raise OutputError(f"the input {src} lies inside the output folder {out}, which is replaced as a whole: "
                          "choose an output folder outside the input")
    src_dir = src_r if src_r.is_dir() else None
    if src_dir is not None and src_dir in out_r.parents:
        return [f"the output folder {out.name} is inside the input folder: reading that folder again later also "
                "sees the outputs; an output folder beside the input is safer"]
    return []


def is_sscild_output(folder: Path) -> bool:
    """Whether ``folder`` holds the outputs of an earlier sscild run (its ``analysis.json`` says so)."""
    try:
        return read_json(folder / "analysis.json")["software"]["name"] == "sscild"
    except (OSError, ValueError, KeyError, TypeError):
        return False


@contextmanager
def output_folder(outdir: str | os.PathLike, input_path: str | os.PathLike | None = None
                  ) -> Iterator[tuple[Path, OutputCheck]]:
    """Yield a new temporary folder beside ``outdir``; on success it replaces ``outdir`` as a whole.

    On any error (Ctrl-C included) the temporary folder is removed and ``outdir`` is left as it was. ``OSError``
    while writing (a full disk, permissions) becomes :class:`~sscild.errors.OutputError`.
    """
    check = check_output_dir(outdir, input_path)
    out = check.path
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.{_TMP_TAG}-{os.getpid()}-", dir=out.parent))
    try:
        _chmod_like_mkdir(tmp)
        yield tmp, check
        _swap_into_place(tmp, out)
    except OSError as err:
        raise _write_error(out, err) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _chmod_like_mkdir(path: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o777 & ~umask)


def _swap_into_place(tmp: Path, out: Path) -> None:
    if not out.exists():
        os.rename(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.{_OLD_TAG}-{os.getpid()}-", dir=out.parent))
    os.rename(out, old / "previous")
    try:
        os.rename(tmp, out)
    except OSError:
        os.rename(old / "previous", out)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def _write_error(out: Path, err: OSError) -> OutputError:
    why = "the disk is full" if err.errno in (errno.ENOSPC, errno.EDQUOT) else (err.strerror or str(err))
    free = shutil.disk_usage(next(p for p in (out, *out.parents) if p.exists())).free / 1e6
    return OutputError(f"writing the outputs to {out} failed: {why} ({free:.0f} MB free). Nothing was written "
                       "and any earlier outputs there are unchanged: free space or choose another folder, rerun")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_leftovers(out: Path) -> list[Path]:
    """Remove temporary folders beside ``out`` left by killed runs; an earlier output set aside just before
    a kill is put back when ``out`` is missing. Returns what was removed."""
    removed = []
    if not out.parent.is_dir():
        return removed
    for p in out.parent.iterdir():
        m = _LEFTOVER.match(p.name)
        if not m or m["name"] != out.name or _pid_alive(int(m["pid"])):
            continue
        if m["tag"] == _OLD_TAG and (p / "previous").is_dir() and not out.exists():
            os.rename(p / "previous", out)
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


# --------------------------------------------------------------------------------------------
# the files
# --------------------------------------------------------------------------------------------
def write_outputs(analysis: "Analysis", scan: "CTScan", outdir: str | os.PathLike, *, report: bool | None = None,
                  dicom_seg: bool | None = None, show_phi: bool | None = None) -> WrittenOutputs:
    """Write the output folder of one analysis, all or nothing (see the module docstring).

    Parameters
    ----------
    analysis : Analysis
        What :func:`sscild.analyze` returned (not changed).
    scan : CTScan
        The scan it was measured on (for the geometry of the files).
    outdir : path
        The folder; created, or replaced as a whole when it holds an earlier sscild output.
    report, dicom_seg, show_phi : bool or None
        Override the analysis' settings (None: as in ``analysis.settings``).

    Returns
    -------
    WrittenOutputs
        A mapping of what was written (``files["lungs"]`` ...) with the warnings of writing.
    """
    st = analysis.settings
    report = st.report if report is None else report
    dicom_seg = st.dicom_seg if dicom_seg is None else dicom_seg
    show_phi = st.show_phi if show_phi is None else show_phi
    with output_folder(outdir, scan.source) as (tmp, check):
        _check_free_space(scan, tmp)
        files = write_files(analysis, scan, tmp, report=report, dicom_seg=dicom_seg, show_phi=show_phi,
                            warnings=check.warnings)
    final = check.path
    return WrittenOutputs(final, {k: final / v.name for k, v in files.files.items()}, files.warnings)


def _check_free_space(scan: "CTScan", folder: Path) -> None:
    """Refuse before writing when the disk clearly cannot hold the outputs (a generous estimate)."""
    need = int(np.prod(scan.shape)) * 3 // 4 + 20_000_000
    free = shutil.disk_usage(folder).free
    if free < need:
        raise OutputError(f"only {free / 1e6:.0f} MB free where the outputs go ({folder.parent}); about "
                          f"{need / 1e6:.0f} MB are needed: free space or choose another folder")


def write_files(analysis: "Analysis", scan: "CTScan", folder: Path, *, report: bool = True,
                dicom_seg: bool | None = None, show_phi: bool = False, warnings: tuple[str, ...] = ()
                ) -> WrittenOutputs:
    """Write the output files into an existing ``folder`` (no staging); ``analysis.json`` last."""
    from .io import save_like

    a = analysis
    warns = list(a.warnings) + list(warnings)
    with ThreadPoolExecutor(max_workers=1) as pool:     # the masks compress (GIL released) while figures draw
        masks = {k: pool.submit(save_like, arr, scan, folder / f"{k}.nii.gz") for k, arr in _masks(a).items()}
        files, heat, problems = _write_summaries(a, scan, folder, dicom_seg)
        warns += problems
        phi = patient_details(scan) if show_phi else {}
        doc = a.to_dict()
        if show_phi:
            doc["input"] = {**doc["input"], **_free_text(scan), **phi}
        if heat:
            doc["heatmap_pngs"] = heat
        doc["warnings"] = warns
        if report:
            files["report"] = _write_report(a, scan, folder, doc, phi)
        files.update({k: f.result() for k, f in masks.items()})
    files["analysis"] = write_json(folder / "analysis.json", doc)      # last: the folder is complete
    return WrittenOutputs(folder, files, tuple(warns[len(a.warnings):]))


def _masks(a: "Analysis") -> dict[str, np.ndarray]:
    """The label volumes written as NIfTI in the input geometry: file stem -> uint8 array on the scan grid."""
    out = {"lungs": a.lungs.labels, "airways": a.lungs.airways.astype(np.uint8)}
    if a.lesions is not None:
        out["lesions"] = a.lesions.labels
    if a.vessels is not None:
        out["vessels"] = a.vessels.mask.astype(np.uint8)
    return out


def _write_summaries(a: "Analysis", scan: "CTScan", folder: Path, dicom_seg: bool | None
                     ) -> tuple[dict[str, Path], dict[str, dict[str, str]], list[str]]:
    """The JSON files, figures, heat maps and DICOM SEG/SR: (files written, heat-map PNGs, problems to warn of)."""
    files: dict[str, Path] = {}
    warns: list[str] = []
    if a.lesions is not None:
        files["lesions_json"] = write_json(folder / "lesions.json", a.lesions.to_dict())
    if a.quality is not None:
        files["quality"] = write_json(folder / "quality.json", a.quality.to_dict())
    if a.regions is not None:
        from .regions import regional_figure

        files["regions"] = write_json(folder / "regions.json", a.regions.to_dict())
        files["regions_png"] = regional_figure(scan, a.lungs, a.regions, folder / "regions.png", a.lesion_labels,
                                               a.region_map)
    if a.levels is not None:
        from .figures import levels_png

        files["levels"] = write_json(folder / "levels.json", a.levels.to_dict())
        files["levels_png"] = levels_png(scan, a.lungs, a.levels, folder / "levels.png")
    files["density"] = write_json(folder / "density.json", a.density.to_dict())
    heat = _write_heatmaps(a, scan, folder)
    if a.scores is not None:
        files["scores"] = write_json(folder / "scores.json", a.scores_dict())
    seg = _write_dicom_seg(a, scan, folder, dicom_seg)
    if isinstance(seg, Path):
        files["dicom_seg"] = seg
        sr = _write_dicom_sr(a, scan, folder, seg)
        if isinstance(sr, str):
            warns.append(sr)
        else:
            files.update(sr)
    elif seg:
        warns.append(seg)
    return files, heat, warns


def _write_dicom_sr(a: "Analysis", scan: "CTScan", folder: Path, seg: Path) -> dict[str, Path] | str:
    """``sr.dcm`` (TID 1500, de-identified as ``seg.dcm``) and, with heat maps, their DICOM Parametric Maps; a
    failure is returned as a warning, the other outputs stand."""
    from .domain import PATTERNS
    from .errors import SscildError
    from .sr import write_parametric_maps, write_sr

    files: dict[str, Path] = {}
    try:
        files["dicom_sr"] = write_sr(a.to_dict(), scan.source, seg, folder / "sr.dcm", fvc_pct=a.settings.fvc_pct,
                                     weights=a.settings.weights, deidentify=a.settings.deidentify,
                                     sop_uids=scan.meta.get("sop_instance_uids"))
        if a.heatmaps is not None:
            maps = {n: {"slice": a.heatmaps.slice_index[n], **{p: hm.map(p) for p in PATTERNS}}
                    for n, hm in a.heatmaps.maps.items()}
            files.update({f"heatmap_pm_{p}": f for p, f in
                          write_parametric_maps(maps, scan, scan.source, folder).items()})
    except (SscildError, ValueError, AttributeError, TypeError) as err:
        return f"DICOM SR not written: {type(err).__name__}: {err}"
    return files


def _write_heatmaps(a: "Analysis", scan: "CTScan", folder: Path) -> dict[str, dict[str, str]]:
    """Heat-map NIfTI and PNG files; returns level -> pattern -> PNG name."""
    if a.heatmaps is None:
        return {}
    from .explain import write_heatmap_outputs

    written = write_heatmap_outputs(a.heatmaps.maps, scan, a.heatmaps.slice_index, folder)
    return {n: {p: re.sub(r"\.nii\.gz$", ".png", f) for p, f in d.items()} for n, d in written.items()}


def _write_dicom_seg(a: "Analysis", scan: "CTScan", folder: Path, wanted: bool | None) -> Path | str | None:
    """``seg.dcm`` for a DICOM input (or None), de-identified with ``settings.deidentify``; a failure is returned as
    a warning, the other outputs stand."""
    is_dicom = scan.meta.get("format") == "dicom" and bool(scan.source) and Path(str(scan.source)).is_dir()
    if not (is_dicom and (wanted is None or wanted)):
        return None
    from .dicomseg import lung_segments, write_dicom_seg
    from .errors import SscildError

    try:
        return write_dicom_seg(scan.source, scan, lung_segments(a.lungs.labels, a.lesion_labels),
                               folder / "seg.dcm", deidentify=a.settings.deidentify)
    except (SscildError, ValueError, AttributeError, TypeError) as err:
        return f"DICOM-SEG not written: {type(err).__name__}: {err}"


def _write_report(a: "Analysis", scan: "CTScan", folder: Path, doc: dict[str, Any], phi: dict[str, str]) -> Path:
    """``report.html`` from the analysis and the ``analysis.json`` about to be written (warnings, heat maps)."""
    from .report import ReportInput, write_report

    lv = {d["name"]: d for d in a.levels.to_dict()["levels"]} if a.levels is not None else {}
    sc = a.scores
    inp = ReportInput(scan, a.lungs.labels, lv, density=a.density.to_dict(), volumes_ml=a.volumes_ml,
                      scores=sc.table() if sc else None, goh_extent=sc.goh_extent if sc else None,
                      derived_scores=a.heatmaps.derived if a.heatmaps else None,
                      uncertainty=sc.uncertainty() if sc else None, lesion_labels=a.lesion_labels,
                      lesion_summary=a.lesions.summary if a.lesions else None,
                      heatmap_pngs=doc.get("heatmap_pngs"), warnings=list(doc["warnings"]),
                      model_cards=list(a.models), timings=a.timings_s, fvc_pct=a.settings.fvc_pct,
                      phi={_LABELS.get(k, k): v for k, v in phi.items()} or None, title="sscild report",
                      analysis=doc, weights=str(a.settings.weights) if a.settings.weights else None)
    return write_report(inp, folder, show_phi=bool(phi))


# --------------------------------------------------------------------------------------------
# privacy: what --show-phi adds
# --------------------------------------------------------------------------------------------
#: DICOM keyword -> key in ``analysis.json`` for what ``show_phi`` shows.
PHI_TAGS = {"PatientName": "patient_name", "PatientID": "patient_id", "PatientBirthDate": "patient_birth_date",
            "StudyDate": "study_date", "SeriesDate": "series_date", "AccessionNumber": "accession_number",
            "StudyDescription": "study_description", "SeriesDescription": "series_description",
            "ProtocolName": "protocol_name"}
_LABELS = {"patient_name": "patient", "patient_id": "id", "patient_birth_date": "born", "study_date": "study date",
           "series_date": "series date", "accession_number": "accession", "study_description": "study",
           "series_description": "series", "protocol_name": "protocol"}


def _free_text(scan: "CTScan") -> dict[str, Any]:
    from .results import FREE_TEXT_META

    return {k: scan.meta[k] for k in FREE_TEXT_META if scan.meta.get(k) not in (None, "")}


def patient_details(scan: "CTScan") -> dict[str, str]:
    """Patient name, id, dates and the free-text descriptions of a DICOM scan's series (``show_phi`` only).

    Read from the header of one file of the series (the one whose SeriesInstanceUID is in ``scan.meta`` when
    known); ``{}`` for other inputs. Empty fields are left out.
    """
    src = Path(str(scan.source)) if scan.source else None
    if src is None or not src.is_dir():
        return {}
    import pydicom

    uid = scan.meta.get("series_uid") or scan.meta.get("series_instance_uid")
    for f in sorted(p for p in src.rglob("*") if p.is_file())[:200]:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=[*PHI_TAGS, "SeriesInstanceUID"])
        except Exception:  # not DICOM, unreadable: try the next file  # noqa: BLE001
            continue
        if "SeriesInstanceUID" not in ds or (uid and str(ds.SeriesInstanceUID) != str(uid)):
            continue
        return {key: str(ds.get(tag)) for tag, key in PHI_TAGS.items() if ds.get(tag) not in (None, "")}
    return {}
