"""Reader study: study creation, the web API's validation and reader isolation, agreement statistics against
hand-computed values, export to the S-Net training layout.

Analysed folders are made from small phantoms (48 x 64 x 64 voxels) in the layout ``sscild demo`` writes
(:func:`sscild.review.simulate.phantom_folder`: the phantom's true levels and scores stand in for the tool's, heat
maps mark the true lesions), so the tests do not wait for S-Net.
"""
from __future__ import annotations

import csv
import json
import stat
from pathlib import Path

import numpy as np
import pytest

from sscild.domain import LEVELS, PATTERNS

SEEDS = (21, 24, 23)   # seed 22 at this size: segment_lungs finds no lungs (anatomy, not the study)


_SOURCES: list[Path] = []


def make_sources(root: Path) -> list[Path]:
    """Three analysed phantom folders (extent 10, 30, 50 %), made once per test session (the review test files
    share them: studies only read their sources)."""
    from sscild.review.simulate import phantom_folder

    if not (_SOURCES and all((f / "levels.json").exists() for f in _SOURCES)):
        _SOURCES[:] = [phantom_folder(root / f"scan{s}", s, e, shape=(48, 64, 64), spacing=(7.0, 5.6, 5.6))
                       for s, e in zip(SEEDS, (10.0, 30.0, 50.0))]
    return list(_SOURCES)


def new_study(root: Path, folders, readers=("ana", "ben"), **kw):
    from sscild.review.study import create_study, find_sources

    kw = {"repeat": 0.1, "heatmaps": True, "neighbours": 2, "seed": 1, **kw}
    tokens = create_study(root, find_sources(folders), readers, **kw)
    return tokens


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return make_sources(tmp_path_factory.mktemp("analysed"))


@pytest.fixture()
def study(tmp_path, folders):
    tokens = new_study(tmp_path / "study", folders)
    return tmp_path / "study", tokens


@pytest.fixture()
def client(study):
    from fastapi.testclient import TestClient

    from sscild.review.app import create_app

    root, tokens = study
    with TestClient(create_app(root)) as c:
        yield c, tokens


def login(c, token):
    r = c.post("/api/login", json={"token": token})
    assert r.status_code == 200, r.text
    return r.json()["reader"]


GOOD = {"TOT": 30, "GG": 20, "RET": 15, "likert": {"TOT": 4, "GG": 3, "RET": 2}}


# ------------------------------------------------------------------------------------------------------------------
def test_create_study_layout_and_deidentification(study, folders):
    from sscild.review.study import open_study

    root, tokens = study
    assert set(tokens) == {"ana", "ben"} and all(len(t) >= 20 for t in tokens.values())
    st = open_study(root)
    text = (root / "study.json").read_text()
    for f in folders:                      # no path of a source folder or scan in what is served
        assert str(f) not in text and f.name not in text
    assert tokens["ana"] not in text and tokens["ana"] not in (root / "review.db").read_bytes().decode("latin-1")
    assert len(st.settings["cases"]) == 3
    for cid, case in st.settings["cases"].items():
        assert sorted(case["levels"]) == list(LEVELS)
        for n, lv in case["levels"].items():
            assert sorted(int(o) for o in lv["z_mm"]) == [-2, -1, 0, 1, 2]
            assert (root / "cases" / cid / f"{n}_0_lung.png").exists()
            assert (root / "cases" / cid / f"{n}_hm_RET.png").exists()
    key = root / "key.csv"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    rows = list(csv.DictReader(key.open()))
    assert sorted(r["case_id"] for r in rows) == sorted(st.settings["cases"])


def test_reader_lists_are_randomised_with_a_later_repeat(study):
    import sqlalchemy as sa

    from sscild.review.db import Assignment, Reader, database_url, open_db

    root, _ = study
    eng = open_db(database_url(root))
    with eng.connect() as c:
        rows = c.execute(sa.select(Reader.name, Assignment.position, Assignment.case_id, Assignment.replicate)
                         .join(Assignment, Assignment.reader_id == Reader.id).order_by(Reader.name,
                                                                                    Assignment.position)).all()
    for name in ("ana", "ben"):
        mine = [r for r in rows if r.name == name]
        assert [r.replicate for r in mine] == [0, 0, 0, 1]
        assert len({r.case_id for r in mine[:3]}) == 3
        assert mine[3].case_id != mine[2].case_id        # a repeat never follows its own first reading
    from sscild.review.study import reader_order

    orders = {tuple(c for c, _ in reader_order(list("abcdefgh"), 0.25, np.random.default_rng(s))) for s in range(5)}
    assert len(orders) > 1


def test_login_and_images_need_a_token(client):
    c, tokens = client
    assert c.get("/api/task").status_code == 401
    assert c.get("/api/image/0/L1/0/lung").status_code == 401
    assert c.post("/api/login", json={"token": "wrong"}).status_code == 401
    assert login(c, tokens["ana"]) == "ana"
    t = c.get("/api/task").json()
    assert t["done"] is False and t["total"] == 4 * 5 and t["level"] == "L1" and t["offsets"] == [-2, -1, 0, 1, 2]
    r = c.get(f"/api/image/{t['position']}/L1/0/lung")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.content[:4] == b"\x89PNG"
    assert c.get(f"/api/image/{t['position']}/L1/9/lung").status_code == 404
    assert c.get("/api/image/0/L1/0/../../study").status_code == 404
    assert "tool" not in t and "case_id" not in json.dumps(t)   # the tool's scores and case ids stay hidden
    assert "frame-ancestors 'none'" in c.get("/").headers["content-security-policy"]


@pytest.mark.parametrize("bad, message", [
    ({"TOT": 40, "GG": 20, "RET": 15}, "TOT 40 % must lie between max(GG, RET) = 20 % and GG + RET = 35 %"),
    ({"TOT": 15, "GG": 20, "RET": 15}, "TOT 15 % must lie between"),
    ({"TOT": 32, "GG": 20, "RET": 15}, "TOT must be 0-100 % in 5 % steps"),
    ({"TOT": 30, "GG": 20, "RET": 105}, "RET must be 0-100 % in 5 % steps"),
    ({"misplaced": True}, "a misplaced level needs the right slice"),
    ({"misplaced": True, "corrected_offset": 3}, "a misplaced level needs the right slice"),
    ({"likert": {"TOT": 4, "GG": 3}}, "rate every heat map (1-5): missing RET"),
    ({"likert": {"TOT": 4, "GG": 3, "RET": 6}}, "heat-map ratings are 1-5"),
    ({"comment": "x" * 2001}, "the comment is 2001 characters; keep it under 2000"),
    ({"seconds": -1}, "the time spent on a level is 0-86400 s"),
])
def test_answers_are_validated_by_the_server(client, bad, message):
    c, tokens = client
    login(c, tokens["ana"])
    r = c.put("/api/answer/0/L1", json={**GOOD, **bad})
    assert r.status_code == 422 and message in r.json()["detail"]
    assert c.get("/api/answers").json() == []


def test_answer_saved_resumed_and_edited(client):
    c, tokens = client
    login(c, tokens["ana"])
    t = c.get("/api/task").json()
    r = c.put(f"/api/answer/{t['position']}/L1", json={**GOOD, "misplaced": True, "corrected_offset": -1,
                                                          "comment": "L1 one slice lower"})
    assert r.json() == {"saved": True}
    t2 = c.get("/api/task").json()
    assert (t2["position"], t2["level"], t2["answered"]) == (t["position"], "L2", 1)
    again = c.get(f"/api/task?position={t['position']}&level=L1").json()["answer"]
    assert again["corrected_offset"] == -1 and again["TOT"] == 30 and again["likert"]["GG"] == 3
    c.put(f"/api/answer/{t['position']}/L1", json={**GOOD, "TOT": 35})
    assert [a["TOT"] for a in c.get("/api/answers").json()] == [35]


def test_a_reader_cannot_see_or_change_another_readers_answers(client):
    c, tokens = client
    login(c, tokens["ana"])
    c.put("/api/answer/0/L1", json=GOOD)
    c.put("/api/answer/0/L2", json=GOOD)
    ana_case = c.get("/api/task?position=0&level=L1").json()
    login(c, tokens["ben"])                 # the cookie is now ben's
    assert c.get("/api/answers").json() == []
    ben = c.get("/api/task?position=0&level=L1").json()
    assert ben["answer"] is None and ben["answered"] == 0      # position 0 is ben's own case, unanswered
    c.put("/api/answer/0/L1", json={**GOOD, "TOT": 20, "GG": 20, "RET": 0})
    assert c.get("/api/task?position=99&level=L1").status_code == 404
    login(c, tokens["ana"])
    mine = c.get("/api/answers").json()
    assert [(a["level"], a["TOT"]) for a in mine] == [("L1", 30), ("L2", 30)]
    assert c.get("/api/task?position=0&level=L1").json()["answer"] == ana_case["answer"]
    c.cookies.clear()      # a script with ben's token as a bearer header gets ben's rows only
    r = c.get("/api/answers", headers={"Authorization": f"Bearer {tokens['ben']}"})
    assert [(a["level"], a["TOT"]) for a in r.json()] == [("L1", 20)]
    assert c.get("/api/answers", headers={"Authorization": "Bearer nonsense"}).status_code == 401


def test_simulated_readers_noise_is_recovered_and_consensus_nears_truth(tmp_path, folders):
    """4 readers = truth + N(0, 4.5) in 5 % steps through the API: the pair-based noise estimate is 4.5 +- 1.5
    (15 level slices, 6 pairs; rounding adds ~1.4 in quadrature, clipping at 0 removes some), and the consensus of
    4 is closer to the truth than any single reader."""
    from fastapi.testclient import TestClient

    from sscild.review.app import create_app
    from sscild.review.simulate import case_truth, read_all, reader_cases
    from sscild.review.stats import compute_stats
    from sscild.review.study import open_study

    root = tmp_path / "sim"
    tokens = new_study(root, folders, readers=["r1", "r2", "r3", "r4"], heatmaps=False, repeat=0.0)
    truth, cases = case_truth(root), reader_cases(root)
    with TestClient(create_app(root)) as c:
        n = [read_all(c, tok, name, truth, cases, 4.5, np.random.default_rng(i)) for i, (name, tok) in
             enumerate(tokens.items())]
    assert n == [15, 15, 15, 15]
    st = compute_stats(open_study(root))
    allp = st.inter_pairs[st.inter_pairs["level"] == "all"]
    assert len(allp) == 6 * 3
    est = float(np.sqrt((allp["reader_SD_est"] ** 2).mean()))
    assert 3.0 < est < 6.0, est
    cons = st.consensus_vs_tool[st.consensus_vs_tool["level"] == "all"].set_index("pattern")["MAE"]
    single = st.vs_tool[st.vs_tool["level"] == "all"].groupby("pattern")["MAE"].min()
    assert (cons.sort_index() < single.sort_index()).all(), (cons, single)


def test_non_local_host_needs_tls_or_a_proxy():
    from sscild.review.app import check_host
    from sscild.review.study import StudyError

    check_host("127.0.0.1", tls=False, behind_proxy=False)
    check_host("0.0.0.0", tls=True, behind_proxy=False)
    check_host("10.0.0.5", tls=False, behind_proxy=True)
    with pytest.raises(StudyError, match="without HTTPS"):
        check_host("0.0.0.0", tls=False, behind_proxy=False)


def test_cli_create_prints_tokens_once_and_export_needs_answers(tmp_path, folders):
    from typer.testing import CliRunner

    from sscild.cli import app
    from sscild.review.study import StudyError

    r = CliRunner().invoke(app, ["review", "create", str(tmp_path / "s"), "--from", str(folders[0]), "--from",
                                 str(folders[1]), "--readers", "ana,ben", "--quiet"])
    assert r.exit_code == 0, r.output
    toks = dict(line.split("\t") for line in r.stdout.splitlines() if "\t" in line)
    assert sorted(toks) == ["ana", "ben"]
    assert all(t not in (tmp_path / "s" / "study.json").read_text() for t in toks.values())
    r = CliRunner().invoke(app, ["review", "export", str(tmp_path / "s"), "-o", str(tmp_path / "l.csv")])
    assert isinstance(r.exception, StudyError) and "no answers yet" in str(r.exception)
    r = CliRunner().invoke(app, ["review", "create", str(tmp_path / "s"), "--from", str(folders[0]), "--readers",
                                 "ana"])
    assert isinstance(r.exception, StudyError) and "already holds a study" in str(r.exception)


def test_corrected_level_needs_a_majority_of_readers():
    import pandas as pd

    from sscild.review.export import corrected_offset

    assert corrected_offset(pd.DataFrame({"misplaced": [True, True, False], "corrected_offset": [-1, -1, None]})) == -1
    assert corrected_offset(pd.DataFrame({"misplaced": [True, False], "corrected_offset": [2, None]})) == 0
    assert corrected_offset(pd.DataFrame({"misplaced": [True, True], "corrected_offset": [1, 3]})) == 2


def test_tool_scores_only_after_the_answer_and_only_when_the_study_says_so(tmp_path, folders):
    from fastapi.testclient import TestClient

    from sscild.review.app import create_app
    from sscild.review.simulate import case_truth, reader_cases

    for show in (False, True):
        root = tmp_path / f"show{show}"
        tokens = new_study(root, folders, readers=["ana"], heatmaps=False, show_tool_after=show)
        with TestClient(create_app(root)) as c:
            login(c, tokens["ana"])
            t = c.get("/api/task").json()
            assert "tool" not in t and "TOT" not in json.dumps({k: v for k, v in t.items() if k != "answer"})
            r = c.put(f"/api/answer/{t['position']}/{t['level']}", json={"TOT": 10, "GG": 10, "RET": 0}).json()
        if show:
            want = case_truth(root)[reader_cases(root)[("ana", t["position"])]][t["level"]]
            assert r["tool"] == pytest.approx(want)
        else:
            assert r == {"saved": True}


def test_finetune_config_starts_from_the_shipped_snet_and_replays_its_training():
    import yaml

    from sscild.config import TOP_KEYS, FinetuneSettings
    from sscild.review.export import finetune_config, shipped_training_config
    from sscild.scoring.snet import DEFAULT_DIR

    c = yaml.safe_load(finetune_config(Path("study/labels.csv"), 3, steps=10, replay_phantoms=15))
    assert set(c) <= set(TOP_KEYS) and c["label_kind"] == "expert" and c["calibrate"] is True
    assert Path(c["init"]) == DEFAULT_DIR and c["train"]["steps"] == 10 and "calibration" not in c["config"]
    assert c["data"] == {"dataset_csv": "labels.csv"} and c["train"]["lr"] == 5e-5
    ft = c["finetune"]
    assert ft["replay_share"] == FinetuneSettings.replay_share and ft["on_worse"] == "keep_init"
    shipped = shipped_training_config()
    if shipped is not None:                      # a source checkout: the shipped config's lists, scaled to 15
        ph = shipped["data"]["phantoms"]
        total = sum(p["n"] for p in ph)
        assert [(p["seed0"], p["size"]) for p in ft["replay"]["phantoms"]] == [(p["seed0"], p["size"]) for p in ph]
        assert sum(p["n"] for p in ft["replay"]["phantoms"]) == 15
        assert ft["replay"]["real_backgrounds"][0]["weight"] == pytest.approx(
            shipped["data"]["real_backgrounds"][0]["weight"] * 15 / total)
        assert c["validation"] == shipped["validation"] and c["synthetic"] == shipped["synthetic"]
    none = yaml.safe_load(finetune_config(Path("labels.csv"), 3, replay_phantoms=0))
    assert none["finetune"]["replay_share"] == 0.0 and "replay" not in none["finetune"]
    assert none["validation"]["phantoms"]["seed0"] == 7500      # the shipped validation seeds, not the test seeds
