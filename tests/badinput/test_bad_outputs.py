"""Bad-input cases: the output folder and what it may reveal (issue 16 items 3 and 6; convention: README.md here)."""
from __future__ import annotations

import dataclasses
import errno
import json
import os

import pytest

from sscild import AnalysisSettings, analyze, write_outputs
from sscild.errors import OutputError
from sscild.outputs import check_output_dir
from sscild.phantom import make_phantom, write_dicom_series

SMALL = dict(shape=(60, 96, 96), spacing=(4.0, 3.6, 3.6))
NAME, MRN, DATE, DESCRIPTION = "DOE^JANE", "MRN123456", "20240131", "Lung Jane Doe follow-up"


@pytest.fixture(scope="module")
def dicom_case(tmp_path_factory):
    """A small phantom written as a DICOM series carrying a name, id, date and a free-text description; read
    and analysed once (no models)."""
    from sscild.io import load_ct

    d = tmp_path_factory.mktemp("dicom_case") / "series"
    scan0, _ = make_phantom(56, extent=10, **SMALL)
    write_dicom_series(scan0, d, series_description=DESCRIPTION, patient_name=NAME,
                       extra={"PatientID": MRN, "StudyDate": DATE})
    scan = load_ct(d)
    return scan, analyze(scan, AnalysisSettings(scores=False, lesions=False))


def _tree(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _phi_in(folder) -> list[str]:
    text = (folder / "analysis.json").read_text() + (folder / "report.html").read_text()
    return [s for s in (NAME, MRN, DATE, DESCRIPTION) if s in text]


def test_empty_output_name(tmp_path, outcome):
    """Output folder given as an empty string (-o ""): exit 2 before any work, 'output folder name is empty'"""
    outcome.cli(["analyze", "-i", str(tmp_path / "ct.nii.gz"), "-o", ""], exit_code=2, match="name is empty")


def test_empty_phantom_output_name(outcome):
    """sscild phantom -o "": exit 2, 'output folder name is empty' (nothing written into the current folder)"""
    outcome.cli(["phantom", "-o", ""], exit_code=2, match="name is empty")


def test_output_is_a_file(tmp_path, outcome):
    """Output path is an existing file: exit 2 before reading the scan, 'is a file, not a folder'"""
    (tmp_path / "out").write_text("not a folder")
    outcome.cli(["analyze", "-i", str(tmp_path / "ct.nii.gz"), "-o", str(tmp_path / "out")], exit_code=2,
                match="is a file, not a folder")


def test_output_below_a_file(tmp_path, outcome):
    """Output folder below a file (cannot be made): OutputError 'cannot write into'"""
    (tmp_path / "f").write_text("x")
    with outcome.error(OutputError, match="cannot write into"):
        check_output_dir(tmp_path / "f" / "out")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder")
def test_output_not_writable(tmp_path, outcome):
    """Output folder in a folder without write permission: OutputError 'cannot write into', before the work"""
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o500)
    try:
        with outcome.error(OutputError, match="cannot write into"):
            check_output_dir(tmp_path / "ro" / "out")
    finally:
        (tmp_path / "ro").chmod(0o700)


def test_output_is_the_current_folder(tmp_path, monkeypatch, outcome):
    """Output folder is the current folder (-o .): OutputError, it would be replaced as a whole"""
    monkeypatch.chdir(tmp_path)
    with outcome.error(OutputError, match="current folder"):
        check_output_dir(".")


def test_output_holds_other_files(dicom_case, tmp_path, outcome):
    """Output folder holds files that are not an sscild output: OutputError naming one, the files kept"""
    scan, a = dicom_case
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with outcome.error(OutputError, match="not an sscild output.*notes.txt"):
        write_outputs(a, scan, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_input_inside_output(tmp_path, outcome):
    """The input lies inside the output folder: OutputError (replacing the folder would delete the input)"""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "ct.nii.gz").write_bytes(b"")
    with outcome.error(OutputError, match="lies inside the output folder"):
        check_output_dir(tmp_path / "data", tmp_path / "data" / "ct.nii.gz")


def test_output_inside_the_input_folder(dicom_case, outcome):
    """Output folder inside the DICOM input folder: written, with a warning in analysis.json"""
    scan, a = dicom_case
    out = os.path.join(scan.source, "results")
    try:
        w = write_outputs(a, scan, out)
        doc = json.loads(open(os.path.join(out, "analysis.json")).read())
        assert doc["levels"] == a.levels.to_dict() and w.warnings[0] in doc["warnings"]
        outcome.warning(doc["warnings"], match="inside the input folder")
    finally:
        import shutil
        shutil.rmtree(out, ignore_errors=True)


def test_disk_full_while_writing(dicom_case, tmp_path, monkeypatch, outcome):
    """Disk full half way through writing: OutputError 'disk is full', the earlier outputs unchanged"""
    import sscild.outputs as outputs

    scan, a = dicom_case
    write_outputs(a, scan, tmp_path / "out", report=False)
    before = _tree(tmp_path / "out")
    real = outputs.write_json

    def full(path, data):
        if path.name == "density.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(outputs, "write_json", full)
    with outcome.error(OutputError, match="disk is full.*unchanged"):
        write_outputs(a, scan, tmp_path / "out", report=False)
    assert _tree(tmp_path / "out") == before and os.listdir(tmp_path) == ["out"]


def test_too_little_free_space(dicom_case, tmp_path, monkeypatch, outcome):
    """Less free disk space than the outputs need: OutputError before writing, no folder made"""
    import shutil

    scan, a = dicom_case
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**12, 10**12 - 10**6, 10**6))
    with outcome.error(OutputError, match="MB free"):
        write_outputs(a, scan, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_ctrl_c_while_writing(dicom_case, tmp_path, monkeypatch, outcome):
    """Ctrl-C half way through writing: the interrupt stops the run, no output folder (complete or not) is left"""
    import sscild.outputs as outputs

    scan, a = dicom_case

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(outputs, "_write_heatmaps", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_outputs(a, scan, tmp_path / "out")
    assert os.listdir(tmp_path) == []
    outcome.correct("KeyboardInterrupt propagated; the temporary folder was removed, nothing named out exists")


def test_leftover_of_a_killed_run(dicom_case, tmp_path, outcome):
    """A temporary folder left by a killed run (SIGKILL) beside the output: removed by the next run"""
    scan, a = dicom_case
    dead = tmp_path / ".out.sscild-tmp-999999999-x"       # no such process
    dead.mkdir()
    (dead / "lungs.nii.gz").write_bytes(b"half written")
    write_outputs(a, scan, tmp_path / "out", report=False)
    assert os.listdir(tmp_path) == ["out"] and (tmp_path / "out" / "analysis.json").exists()
    outcome.correct("the dead run's temporary folder was removed; out/ holds the new outputs")


def test_names_and_descriptions_stay_out(dicom_case, tmp_path, outcome):
    """DICOM with a patient name, id, date and a name in SeriesDescription: none in analysis.json or the report"""
    scan, a = dicom_case
    write_outputs(a, scan, tmp_path / "out")
    assert _phi_in(tmp_path / "out") == []
    outcome.correct("analysis.json and report.html hold no name, id, date or series description")


def test_show_phi_shows_them(dicom_case, tmp_path, outcome):
    """--show-phi on the same DICOM: name, id, study date and series description in analysis.json and the report"""
    scan, a = dicom_case
    write_outputs(a, scan, tmp_path / "out", show_phi=True)
    assert _phi_in(tmp_path / "out") == [NAME, MRN, DATE, DESCRIPTION]
    doc = json.loads((tmp_path / "out" / "analysis.json").read_text())["input"]
    assert (doc["patient_name"], doc["patient_id"], doc["study_date"]) == (NAME, MRN, DATE)
    outcome.correct("patient_name, patient_id, study_date, series_description shown")


def test_deidentified_seg(dicom_case, tmp_path, outcome):
    """--deidentify on a DICOM with a patient name and id: seg.dcm carries neither (written so before the rename)"""
    import pydicom

    scan, a = dicom_case
    a2 = dataclasses.replace(a, settings=a.settings.replace(deidentify=True))
    write_outputs(a2, scan, tmp_path / "out")
    ds = pydicom.dcmread(tmp_path / "out" / "seg.dcm")
    assert NAME not in str(ds.get("PatientName", "")) and ds.get("PatientID", "") != MRN
    outcome.correct(f"seg.dcm PatientName {str(ds.get('PatientName', ''))!r}, PatientID {ds.get('PatientID', '')!r}")
