"""Shared fixtures: where the real data lives, and small phantoms made once per session."""
from __future__ import annotations

from pathlib import Path

import pytest

from shared_data import REPO, SHARED_DATA, shared_path  # noqa: F401  (re-exported for older imports)


@pytest.fixture(scope="session")
def lung_series_dir() -> Path:
    return shared_path("chest-ct-lung-pet-ct-dx-a0001")


@pytest.fixture(scope="session")
def covid_slices_dir() -> Path:
    return shared_path("covid19-ny-sbu-slices")


@pytest.fixture(scope="session")
def aorta_crop_dir() -> Path:
    return shared_path("totalsegmentator-chest-crops", "aorta")
