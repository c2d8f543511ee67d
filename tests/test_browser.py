"""The demo patient's report opens in headless Chromium: images load, no console errors, not blank; the Goh stage
is the first card, level slices are large, the methods paragraph closes the page.

Chromium comes from Debian's ``chromium`` package; the test installs it when missing (as root with apt) and
skips with the reason when that is impossible. Playwright drives it (no browser download: the system
Chromium is used).
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        p = shutil.which(name)
        if p:
            return p
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
        r = subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], env=env, capture_output=True,
                           timeout=900)
        p = shutil.which("chromium")
        if p:
            return p
        pytest.skip(f"chromium could not be installed: {r.stderr.decode()[-300:]}")
    pytest.skip("chromium is not installed and cannot be installed here (needs root and apt-get)")


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory) -> Path:
    from sscild.pipeline import run_demo

    out = tmp_path_factory.mktemp("demo")
    run_demo(out, seed=3, quiet=True)
    report = out / "report.html"
    assert report.exists()
    return report


def test_demo_report_renders_in_chromium(demo_report, tmp_path):
    from playwright.sync_api import sync_playwright

    exe = _chromium()
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1280, "height": 1600})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(demo_report.resolve().as_uri(), wait_until="load")
        n_images = page.evaluate("document.images.length")
        first_card = page.evaluate("document.querySelector('.summary .card').innerText")
        level_px = page.evaluate("document.querySelector(\"img[src='report_L3.png']\").getBoundingClientRect().width")
        methods = page.evaluate("(document.querySelector('p.methods') || {}).innerText || ''")
        broken = page.evaluate("Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0))"
                               ".map(i => i.getAttribute('src'))")
        shot = tmp_path / "report.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert n_images >= 6, "the report should show the overview and the level panels"
    assert broken == [], f"images that did not load: {broken}"
    assert errors == [], f"console errors: {errors}"
    # what a reader sees first is the Goh stage; level slices are shown large; the page ends with the methods
    assert first_card.startswith("Goh stage"), first_card
    assert level_px >= 450, f"level slice shown {level_px:.0f} px wide"
    assert "sha256" in methods and "Goh et al." in methods
    from PIL import Image

    px = np.asarray(Image.open(shot).convert("L"), float)
    assert px.std() > 10, "the screenshot is blank"
    keep = os.environ.get("SSCILD_KEEP_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)
