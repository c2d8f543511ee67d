"""bench/fetch_backgrounds.py without the network: an archive served from a file:// URL is extracted when its sha256
is the pinned one, and refused with a message naming both hashes when it is not."""
from __future__ import annotations

import hashlib
import importlib.util
import io
import sys
import tarfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "fetch_backgrounds.py"


@pytest.fixture()
def fb(monkeypatch):
    spec = importlib.util.spec_from_file_location("fetch_backgrounds", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, mod)      # its dataclass looks its module up there
    spec.loader.exec_module(mod)
    return mod


def _archive(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "pkg-1.0.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in (("pkg-1.0/data/scan.nrrd", b"NRRD0004 a scan"), ("pkg-1.0/setup.py", b"# setup")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_pinned_archive_is_extracted_once(fb, tmp_path, monkeypatch):
    path, sha = _archive(tmp_path)
    arc = fb.Archive("pkg", path.name, sha, {"scan.nrrd": "pkg-1.0/data/scan.nrrd"})
    monkeypatch.setattr(fb, "ARCHIVES", (arc,))
    calls = []
    monkeypatch.setattr(fb, "_archive_url", lambda package, archive: calls.append(archive) or path.as_uri())
    out = tmp_path / "backgrounds"
    assert fb.fetch(out) == [out / "scan.nrrd"]
    assert (out / "scan.nrrd").read_bytes() == b"NRRD0004 a scan"
    fb.fetch(out)                                          # already there: nothing is downloaded again
    assert calls == [path.name]


def test_an_archive_with_another_hash_is_refused(fb, tmp_path, monkeypatch):
    path, sha = _archive(tmp_path)
    wrong = "0" * 64
    arc = fb.Archive("pkg", path.name, wrong, {"scan.nrrd": "pkg-1.0/data/scan.nrrd"})
    monkeypatch.setattr(fb, "ARCHIVES", (arc,))
    monkeypatch.setattr(fb, "_archive_url", lambda package, archive: path.as_uri())
    with pytest.raises(SystemExit, match=f"sha256 {sha}, expected {wrong}"):
        fb.fetch(tmp_path / "backgrounds")
    assert not (tmp_path / "backgrounds" / "scan.nrrd").exists()
