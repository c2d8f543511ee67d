"""Where the real data lives (../shared/data beside the repository; SSCILD_SHARED_DATA overrides it).

A module of its own, not ``conftest``: the bad-input corpus has a conftest too, and ``from conftest import ...``
would find whichever of the two was imported first.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SSCILD_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_path(*parts: str) -> Path:
    """Path inside the real-data folder, or skip the test with a reason when it is absent."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real CT data not available at {p} (set SSCILD_SHARED_DATA or clone beside ../shared)")
    return p


def background_path(name: str) -> Path:
    """A real chest CT fetched by ``make backgrounds`` into .cache/backgrounds, or skip the test when it is absent."""
    p = REPO / ".cache" / "backgrounds" / name
    if not p.exists():
        pytest.skip(f"{p} not fetched (make backgrounds)")
    return p
