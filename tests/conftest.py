"""Shared fixtures: where the real data lives, and small phantoms made once per session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# ../shared/data beside the repository; SSCILD_SHARED_DATA overrides it.
SHARED_DATA = Path(os.environ.get("SSCILD_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_path(*parts: str) -> Path:
    """Path inside the real-data folder, or skip the test with a reason when it is absent."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real CT data not available at {p} (set SSCILD_SHARED_DATA or clone beside ../shared)")
    return p


@pytest.fixture(scope="session")
def lung_series_dir() -> Path:
    return shared_path("chest-ct-lung-pet-ct-dx-a0001")


@pytest.fixture(scope="session")
def covid_slices_dir() -> Path:
    return shared_path("covid19-ny-sbu-slices")


@pytest.fixture(scope="session")
def aorta_crop_dir() -> Path:
    return shared_path("totalsegmentator-chest-crops", "aorta")
