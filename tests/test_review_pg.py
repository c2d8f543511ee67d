"""The reader study on PostgreSQL: the same models, migrations and web API given a URL (several sites).

A throw-away PostgreSQL cluster is started from Debian's ``postgresql`` package (installed with apt when missing
and running as root, as tests/test_browser.py does for chromium), on a Unix socket in a temporary folder, no TCP.
SSCILD_TEST_PG_URL=postgresql+psycopg://... uses an existing server instead. Skips with the reason otherwise.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import uuid

import pytest

pytest.importorskip("psycopg", reason="psycopg is not installed (pip install 'psycopg[binary]')")

from test_review import GOOD, make_sources, new_study  # noqa: E402


def _pg_bin() -> str:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", "postgresql"], env=env, capture_output=True, timeout=900)
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        pytest.skip("PostgreSQL server binaries not found (apt-get install postgresql) and SSCILD_TEST_PG_URL unset")
    return os.path.dirname(found[-1])


@pytest.fixture(scope="module")
def pg_server():
    if os.environ.get("SSCILD_TEST_PG_URL"):
        yield os.environ["SSCILD_TEST_PG_URL"].rsplit("/", 1)[0]
        return
    import tempfile
    from pathlib import Path

    bindir = _pg_bin()
    root = Path(tempfile.mkdtemp(prefix="sscild-pg-"))    # outside pytest's root-only tmp, for the postgres user
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    run_as: list[str] = []
    if os.geteuid() == 0:               # the server refuses to run as root: run it as the package's user
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server as")
        os.chmod(root, 0o755)
        os.chown(root, pw.pw_uid, pw.pw_gid)
        os.chown(sock, pw.pw_uid, pw.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    r = subprocess.run(run_as + [f"{bindir}/initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
                       capture_output=True, text=True, timeout=120)
    if r.returncode:
        pytest.skip(f"initdb failed: {r.stderr[-300:]}")
    r = subprocess.run(run_as + [f"{bindir}/pg_ctl", "-D", str(data), "-w", "-l", str(root / "log"), "-o",
                                 f"-k {sock} -c listen_addresses='' -p 54329", "start"],
                       capture_output=True, text=True, timeout=120)
    if r.returncode:
        pytest.skip(f"PostgreSQL did not start: {r.stderr[-300:]} {(root / 'log').read_text()[-300:]}")
    yield f"postgresql+psycopg://postgres@/postgres?host={sock}&port=54329"
    subprocess.run(run_as + [f"{bindir}/pg_ctl", "-D", str(data), "-m", "immediate", "stop"], capture_output=True,
                   timeout=60)
    shutil.rmtree(root, ignore_errors=True)


def _new_database(server_url: str) -> str:
    import sqlalchemy as sa

    name = f"study_{uuid.uuid4().hex[:8]}"
    eng = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with eng.connect() as c:
        c.exec_driver_sql(f"CREATE DATABASE {name}")
    eng.dispose()
    return server_url.replace("/postgres?", f"/{name}?") if "/postgres?" in server_url else f"{server_url}/{name}"


def test_study_on_postgresql(pg_server, tmp_path):
    from fastapi.testclient import TestClient

    from sscild.review.app import create_app
    from sscild.review.stats import load_answers
    from sscild.review.study import open_study

    url = _new_database(pg_server)
    folders = make_sources(tmp_path / "analysed")
    tokens = new_study(tmp_path / "study", folders, db_url=url)
    assert not (tmp_path / "study" / "review.db").exists()        # nothing went to SQLite
    with TestClient(create_app(tmp_path / "study", db_url=url)) as c:
        h = {"Authorization": f"Bearer {tokens['ana']}"}
        assert c.put("/api/answer/0/L1", json=GOOD, headers=h).json() == {"saved": True}
        assert c.put("/api/answer/0/L2", json={**GOOD, "TOT": 45}, headers=h).status_code == 422
        hb = {"Authorization": f"Bearer {tokens['ben']}"}
        assert c.get("/api/answers", headers=hb).json() == []
    with TestClient(create_app(tmp_path / "study", db_url=url)) as c:     # a new app process reads it back
        assert [a["TOT"] for a in c.get("/api/answers", headers=h).json()] == [30]
    db = load_answers(open_study(tmp_path / "study"), url)
    assert db[["reader", "level", "TOT", "GG", "RET"]].values.tolist() == [["ana", "L1", 30.0, 20.0, 15.0]]
