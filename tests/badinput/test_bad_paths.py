"""Bad-input cases: paths that are not a scan (convention: README.md here)."""
from __future__ import annotations

from sscild.errors import InputNotFoundError
from sscild.io import load_ct


def test_missing_path(tmp_path, outcome):
    """Input path does not exist: InputNotFoundError naming the path"""
    with outcome.error(InputNotFoundError, match="does not exist"):
        load_ct(tmp_path / "nope")


def test_empty_folder(tmp_path, outcome):
    """Input is an empty folder: InputNotFoundError asking for the DICOM folder"""
    (tmp_path / "empty").mkdir()
    with outcome.error(InputNotFoundError, match="empty folder"):
        load_ct(tmp_path / "empty")
