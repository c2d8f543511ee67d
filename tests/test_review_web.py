"""Reader study end to end: two readers score three phantom scans (one repeat each) in headless Chromium against
a real ``sscild review serve`` (uvicorn subprocess on 127.0.0.1, random port); the server is killed with SIGKILL in
the middle of a reader's session and restarted; every submitted answer is in the database; ``stats`` agrees with
ICC, kappa and MAE computed here by hand from those answers; ``export`` then ``train scoring`` fine-tunes.

Chromium comes from Debian's package (see tests/test_browser.py); set SSCILD_KEEP_SCREENSHOT=DIR to keep the
screenshots of the scoring page and agreement.html.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sscild.domain import LEVELS, PATTERNS

pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")

from test_browser import _chromium  # noqa: E402  (installs Debian's chromium when missing, else skips)
from test_review import make_sources, new_study  # noqa: E402

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``sscild review serve`` as a subprocess; ``kill()`` is SIGKILL (no clean shutdown)."""

    def __init__(self, study: Path, port: int):
        self.study, self.port, self.proc = study, port, None

    def start(self) -> "Server":
        self.proc = subprocess.Popen([sys.executable, "-m", "sscild", "review", "serve", str(self.study), "--port",
                                      str(self.port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server died: {self.proc.stderr.read().decode()[-2000:]}")
                time.sleep(0.1)
        raise RuntimeError("server did not start in 30 s")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"


def scores_for(reader: str, position: int, level: str, rng_seed: int) -> dict[str, int]:
    """A reader's deterministic answer: GG, RET in 5 % steps and a TOT inside [max, sum]."""
    rng = np.random.default_rng([rng_seed, position, LEVELS.index(level), {"ana": 0, "ben": 1}[reader]])
    gg, ret = (int(v) for v in rng.integers(0, 9, 2) * 5)
    tot = int(min(100, max(gg, ret) + 5 * rng.integers(0, (gg + ret - max(gg, ret)) // 5 + 1)))
    return {"TOT": tot, "GG": gg, "RET": ret}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("review_web")
    folders = make_sources(root / "analysed")
    tokens = new_study(root / "study", folders, heatmaps=True, repeat=0.1, neighbours=2)
    server = Server(root / "study", free_port()).start()
    yield {"root": root, "tokens": tokens, "server": server, "typed": []}
    server.kill()


def _wait(cond, timeout: float = 20.0) -> None:
    """Poll ``cond`` (the page's CSP forbids playwright's string-evaluated wait_for_function)."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError("the page did not move on after saving")
        time.sleep(0.02)


def read_levels(page, reader: str, typed: list, n: int) -> None:
    """Answer ``n`` levels in the page as a reader would: keyboard for scores, clicks for Likert; records them."""
    for _ in range(n):
        page.wait_for_selector("#read-view:not([hidden])")
        title = page.inner_text("#case-title")            # "Case 2 of 4 — level L3"
        position, level = int(title.split()[1]) - 1, title.split()[-1]
        s = scores_for(reader, position, level, 7)
        page.keyboard.press("Escape")
        for p in PATTERNS:
            page.fill(f"#{p}", str(s[p]))
        for p, v in (("TOT", 4), ("GG", 3), ("RET", 5)):
            page.check(f"input[name=likert-{p}][value='{v}']")
        before = page.inner_text("#count")
        page.focus("#RET")
        page.keyboard.press("Enter")
        _wait(lambda: page.inner_text("#count") != before or page.is_visible("#done-view"))
        typed.append({"reader": reader, "position": position, "level": level, **s})


def test_two_readers_complete_the_study_with_a_server_crash(env):
    from playwright.sync_api import sync_playwright

    exe = _chromium()
    server, typed, shots = env["server"], env["typed"], env["root"] / "shots"
    shots.mkdir(exist_ok=True)
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_ARGS)
        for reader in ("ana", "ben"):
            page = browser.new_context(viewport={"width": 1366, "height": 768}).new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server.url)
            page.wait_for_selector("#login-view:not([hidden])")
            assert not page.is_visible("#read-view") and not page.is_visible("#TOT")   # nothing before login
            page.fill("#token", env["tokens"][reader])
            page.click("#login-form button")
            page.wait_for_selector("#read-view:not([hidden])")
            if reader == "ana":
                # a wrong TOT is refused with the rule, in the page and by the server
                page.fill("#TOT", "40"); page.fill("#GG", "20"); page.fill("#RET", "15")
                page.keyboard.press("Enter")
                assert "between max(GG, RET) = 20 % and GG + RET = 35 %" in page.inner_text("#answer-msg")
                page.keyboard.press("Escape")
                page.click("#frame")
                page.keyboard.press("ArrowUp")                     # scroll one slice toward the head
                assert page.inner_text("#slice-label") == "+1 slice"
                page.keyboard.press("w")
                assert "mediastinal" in page.get_attribute("#slice", "src")
                page.keyboard.press("ArrowDown")
                page.keyboard.press("w")
                page.screenshot(path=str(shots / "scoring.png"))
                read_levels(page, reader, typed, 9)
                server.kill()                                      # crash in the middle of ana's session
                server.start()
                page.reload()
                page.wait_for_selector("#read-view:not([hidden])")
                assert page.inner_text("#count").startswith("9 / 20")   # nothing lost, resumes at the 10th level
                read_levels(page, reader, typed, 11)
            else:
                read_levels(page, reader, typed, 20)
            page.wait_for_selector("#done-view:not([hidden])")
            assert "All 20 answers are saved" in page.inner_text("#done-msg")
        browser.close()
    assert errors == [], f"page errors: {errors}"
    keep = os.environ.get("SSCILD_KEEP_SCREENSHOT")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shots / "scoring.png", Path(keep) / "review_scoring.png")
    from PIL import Image

    px = np.asarray(Image.open(shots / "scoring.png").convert("L"), float)
    assert px.std() > 10, "the screenshot is blank"


def test_database_holds_every_answer(env):
    from sscild.review.stats import load_answers
    from sscild.review.study import open_study

    db = load_answers(open_study(env["root"] / "study"))
    assert len(db) == len(env["typed"]) == 40
    got = db.set_index(["reader", "position", "level"])[list(PATTERNS)].astype(int)
    want = pd.DataFrame(env["typed"]).set_index(["reader", "position", "level"])[list(PATTERNS)]
    pd.testing.assert_frame_equal(got.sort_index(), want.sort_index(), check_dtype=False)
    assert (db["likert_RET"] == 5).all() and db.groupby("reader")["replicate"].sum().tolist() == [5, 5]


def _icc_a1(x: np.ndarray) -> float:
    """ICC(A,1) by hand from the two-way ANOVA mean squares (McGraw & Wong 1996); x is items x raters."""
    n, k = x.shape
    g = x.mean()
    msr = k * ((x.mean(1) - g) ** 2).sum() / (n - 1)
    msc = n * ((x.mean(0) - g) ** 2).sum() / (k - 1)
    mse = ((x - x.mean(1, keepdims=True) - x.mean(0, keepdims=True) + g) ** 2).sum() / ((n - 1) * (k - 1))
    return (msr - mse) / (msr + (k - 1) * mse + k * (msc - mse) / n)


def _kappa_linear(a: np.ndarray, b: np.ndarray) -> float:
    """Cohen's linearly weighted kappa by hand over the 21 categories 0, 5, ..., 100."""
    ia, ib = (a / 5).astype(int), (b / 5).astype(int)
    obs = np.zeros((21, 21))
    np.add.at(obs, (ia, ib), 1)
    obs /= obs.sum()
    exp = np.outer(obs.sum(1), obs.sum(0))
    w = np.abs(np.subtract.outer(np.arange(21), np.arange(21))) / 20
    return 1 - (w * obs).sum() / (w * exp).sum()


def test_stats_agree_with_hand_computed_values(env):
    from sscild.review.stats import write_results

    page = write_results(env["root"] / "study")
    res = page.parent
    inter = pd.read_csv(res / "inter_pairs.csv")
    intra = pd.read_csv(res / "intra.csv")
    from sscild.review.stats import load_answers
    from sscild.review.study import open_study

    db = load_answers(open_study(env["root"] / "study"))
    first = db[db["replicate"] == 0]
    for p in PATTERNS:
        w = first.pivot_table(index=["case_id", "level"], columns="reader", values=p)
        a, b = w["ana"].to_numpy(), w["ben"].to_numpy()
        row = inter[(inter["level"] == "all") & (inter["pattern"] == p)].iloc[0]
        assert row["n"] == 15
        assert row["MAE"] == pytest.approx(np.abs(a - b).mean(), abs=1e-9)
        assert row["MAE_SD"] == pytest.approx(np.abs(a - b).std(ddof=1), abs=1e-9)
        assert row["ICC"] == pytest.approx(_icc_a1(np.c_[a, b]), abs=1e-9)
        assert row["kappa"] == pytest.approx(_kappa_linear(a, b), abs=1e-9)
        assert row["reader_SD_est"] == pytest.approx(np.std(a - b, ddof=1) / np.sqrt(2), abs=1e-9)
        for r in ("ana", "ben"):       # intra-reader: the repeat against the first reading, 5 levels
            mine = db[db["reader"] == r].pivot_table(index=["case_id", "level"], columns="replicate", values=p)
            mine = mine.dropna()
            irow = intra[(intra["reader"] == r) & (intra["level"] == "all") & (intra["pattern"] == p)].iloc[0]
            assert irow["n"] == 5
            assert irow["MAE"] == pytest.approx(np.abs(mine[1] - mine[0]).mean(), abs=1e-9)
            assert irow["ICC"] == pytest.approx(_icc_a1(mine[[1, 0]].to_numpy()), abs=1e-9)
    html = page.read_text()
    assert "Inter-reader agreement" in html and "ba_0.png" in html and (res / "ba_0.png").stat().st_size > 5000
    _agreement_screenshot(page, res / "agreement.png")


def _agreement_screenshot(page: Path, png: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=_chromium(), headless=True, args=CHROMIUM_ARGS)
        pg = browser.new_page(viewport={"width": 1280, "height": 900})
        pg.goto(page.resolve().as_uri())
        broken = pg.evaluate("Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).length")
        pg.screenshot(path=str(png), full_page=True)
        browser.close()
    assert broken == 0
    keep = os.environ.get("SSCILD_KEEP_SCREENSHOT")
    if keep:
        shutil.copy(png, Path(keep) / "review_agreement.png")


@pytest.mark.slow
def test_export_then_train_scoring_fine_tunes(env):
    import yaml

    from sscild.review.export import export_labels

    root = env["root"]
    e = export_labels(root / "study", root / "labels.csv", steps=4)
    lab = pd.read_csv(e.labels)
    assert len(lab) == 3 and e.n_levels == 15
    typed = pd.DataFrame(env["typed"])
    assert lab[[f"{n}_TOT" for n in LEVELS]].to_numpy().mean() == pytest.approx(
        _first_readings_mean(root, typed), abs=1e-3)
    cfg = yaml.safe_load(e.config.read_text())
    assert cfg["finetune"]["replay"]["phantoms"] and cfg["validation"]        # replay and a guard by default
    cfg["train"]["batch_size"] = 4                                            # a small run of the same path:
    cfg["finetune"]["replay"] = {"phantoms": [{"n": 1, "seed0": 7000, "size": "small", "neighbours": 1}]}
    cfg["synthetic"] = {"fraction": 0.5, "source": "procedural"}
    cfg["validation"] = {"phantoms": {"n": 2, "seed0": 7500, "size": "small", "neighbours": 1}}
    e.config.write_text(yaml.safe_dump(cfg))
    from typer.testing import CliRunner

    from sscild.cli import app

    r = CliRunner().invoke(app, ["train", "scoring", "--config", str(e.config), "--quiet"])
    assert r.exit_code == 0, f"{r.output[-3000:]} {r.exception!r}"
    out = root / "labels_snet"
    assert (out / "model.safetensors").exists()
    import json

    card = json.loads((out / "card.json").read_text())
    tr = card.get("training", card)                                   # the card keeps the run under "training"
    ft = card["notes"].get("finetune") or card["notes"]["finetune_rejected"]
    n_val = len(ft["new_validation_patients"])                       # a quarter of the 3 cases: 1 held out
    assert n_val == 1 and ft["new_train_slices"] == (3 - n_val) * 5 * 3   # 5 levels, each with +-1 neighbour
    assert ft["guard"]["checked"] and set(ft["guard"]["init_MAE"]) == set(PATTERNS)
    if ft["kept"] == "finetuned":
        assert tr["steps"] == 4 and tr["replay_slices"] > 0
    from sscild.scoring.snet import load_snet

    model, cfg_, _ = load_snet(out)                                   # the fine-tuned S-Net loads and runs
    assert cfg_.texture is True


def _first_readings_mean(root: Path, typed: pd.DataFrame) -> float:
    from sscild.review.stats import load_answers
    from sscild.review.study import open_study

    db = load_answers(open_study(root / "study"))
    return float(db[db["replicate"] == 0].groupby(["case_id", "level"])["TOT"].mean().mean())
