"""The reader-study web app (FastAPI): ``sscild review serve STUDY``.

A reader logs in with the token printed by ``review create``; the server sets it as an HttpOnly, SameSite=Strict
cookie (``Secure`` behind HTTPS). Every request is tied to that reader: the API only ever reads or writes the
reader's own assignments and answers, addressed by the position in the reader's own list, so no URL reaches
another reader's data. Answers are checked here (:mod:`.answers`), not only in the browser, and committed before
the reply is sent.

API (JSON): ``POST /api/login``, ``POST /api/logout``, ``GET /api/task[?position=&level=]``,
``PUT /api/answer/{position}/{level}``, ``GET /api/answers``, ``GET /api/image/{position}/{level}/{offset}/{window}``,
``GET /api/heatmap/{position}/{level}/{pattern}``.

Deployment
----------
By default the server listens on 127.0.0.1 only: readers on the same machine, or over an SSH tunnel
(``ssh -L 8000:127.0.0.1:8000 host``). A non-local ``--host`` is refused unless the traffic is encrypted, since the
token travels with every request:

- HTTPS directly: ``sscild review serve STUDY --host 0.0.0.0 --port 8443 --ssl-certfile cert.pem --ssl-keyfile
  key.pem`` (the cookie is then Secure);
- or a TLS reverse proxy on the same machine (nginx, caddy) in front of ``sscild review serve STUDY --port 8000
  --behind-proxy`` (still on 127.0.0.1); for nginx::

      server { listen 443 ssl; server_name reading.example.org;
               ssl_certificate /etc/ssl/reading.pem; ssl_certificate_key /etc/ssl/reading.key;
               location / { proxy_pass http://127.0.0.1:8000; proxy_set_header Host $host;
                            proxy_set_header X-Forwarded-Proto https; proxy_set_header X-Forwarded-For $remote_addr; } }

Tokens are random 128-bit strings, stored only as SHA-256 hashes; give each reader their own, over a separate
channel. The study folder holds no patient identifiers; ``key.csv`` (the link to the source scans) stays with the
study's creator and is never served.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from ..domain import LEVELS, PATTERNS
from .answers import AnswerError, AnswerIn, check_answer
from .db import Answer, Assignment, Reader, database_url, open_db, session_factory, token_hash
from .study import WINDOWS, Study, open_study

COOKIE = "sscild_review"
STATIC = Path(__file__).parent / "static"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store"}


class Login(BaseModel):
    token: str = Field(max_length=200)


def _answer_dict(a: Answer) -> dict[str, Any]:
    lk = {"TOT": a.likert_tot, "GG": a.likert_gg, "RET": a.likert_ret}
    return {"level": a.level, "TOT": a.tot, "GG": a.gg, "RET": a.ret, "misplaced": a.misplaced,
            "corrected_offset": a.corrected_offset, "likert": lk if a.likert_tot is not None else None,
            "comment": a.comment}


class ReviewApp:
    """State shared by the routes: the study, the database sessions."""

    def __init__(self, study: Study, db_url: str | None, secure_cookie: bool):
        self.study = study
        self.engine = open_db(database_url(study.root, db_url))
        self.Session = session_factory(self.engine)
        self.secure_cookie = secure_cookie

    def reader(self, request: Request) -> Reader:
        auth = request.headers.get("authorization", "")
        tok = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else request.cookies.get(COOKIE)
        if tok:
            with self.Session() as s:
                r = s.scalar(sa.select(Reader).where(Reader.token_sha256 == token_hash(tok)))
                if r is not None:
                    return r
        raise HTTPException(401, "not logged in: enter the access token you were given")

    def assignment(self, s, reader: Reader, position: int) -> Assignment:
        a = s.scalar(sa.select(Assignment).where(Assignment.reader_id == reader.id, Assignment.position == position))
        if a is None:
            raise HTTPException(404, f"your list has no case {position + 1}")
        return a

    def levels_of(self, a: Assignment) -> list[str]:
        return [n for n in LEVELS if n in self.study.case(a.case_id)["levels"]]

    def progress(self, s, reader: Reader) -> tuple[list[Assignment], dict[tuple[int, str], Answer]]:
        asg = s.scalars(sa.select(Assignment).where(Assignment.reader_id == reader.id)
                        .order_by(Assignment.position)).all()
        ans = {(a.assignment_id, a.level): a for a in
               s.scalars(sa.select(Answer).where(Answer.reader_id == reader.id)).all()}
        return list(asg), ans

    def task(self, reader: Reader, position: int | None, level: str | None) -> dict[str, Any]:
        with self.Session() as s:
            asg, ans = self.progress(s, reader)
            total = sum(len(self.levels_of(a)) for a in asg)
            if position is None:
                todo = [(a, n) for a in asg for n in self.levels_of(a) if (a.id, n) not in ans]
                if not todo:
                    return {"done": True, "answered": len(ans), "total": total, "reader": reader.name}
                a, level = todo[0]
            else:
                a = self.assignment(s, reader, position)
                if level not in self.levels_of(a):
                    raise HTTPException(404, f"case {position + 1} has no level {level}")
            lv = self.study.case(a.case_id)["levels"][level]
            prev = ans.get((a.id, level))
            return {"done": False, "reader": reader.name, "position": a.position, "n_cases": len(asg),
                    "level": level, "levels": {n: (a.id, n) in ans for n in self.levels_of(a)},
                    "offsets": sorted(int(o) for o in lv["z_mm"]), "windows": list(WINDOWS),
                    "heatmaps": lv["heatmaps"] if self.study.heatmaps else [],
                    "answered": len(ans), "total": total, "answer": _answer_dict(prev) if prev else None}

    def save(self, reader: Reader, position: int, level: str, a_in: AnswerIn) -> dict[str, Any]:
        try:
            check_answer(a_in, neighbours=self.study.neighbours, heatmaps=self.study.heatmaps)
        except AnswerError as err:
            raise HTTPException(422, str(err)) from None
        lk = a_in.likert or {}
        values = dict(tot=a_in.TOT, gg=a_in.GG, ret=a_in.RET, misplaced=a_in.misplaced,
                      corrected_offset=a_in.corrected_offset if a_in.misplaced else None,
                      likert_tot=lk.get("TOT"), likert_gg=lk.get("GG"), likert_ret=lk.get("RET"),
                      comment=a_in.comment, seconds=a_in.seconds)
        with self.Session() as s, s.begin():
            asg = self.assignment(s, reader, position)
            if level not in self.levels_of(asg):
                raise HTTPException(404, f"case {position + 1} has no level {level}")
            row = s.scalar(sa.select(Answer).where(Answer.assignment_id == asg.id, Answer.level == level))
            if row is None:
                s.add(Answer(assignment_id=asg.id, reader_id=reader.id, level=level, **values))
            else:
                for k, v in values.items():
                    setattr(row, k, v)
                row.n_edits += 1
            case_id = asg.case_id
        out: dict[str, Any] = {"saved": True}
        if self.study.settings.get("show_tool_after"):
            out["tool"] = self.study.tool().get(case_id, {}).get(level)
        return out

    def answers(self, reader: Reader) -> list[dict[str, Any]]:
        with self.Session() as s:
            rows = s.execute(sa.select(Answer, Assignment.position).join(Assignment)
                             .where(Answer.reader_id == reader.id).order_by(Assignment.position, Answer.level)).all()
            return [{"position": pos, **_answer_dict(a)} for a, pos in rows]

    def image(self, reader: Reader, position: int, name: str) -> FileResponse:
        with self.Session() as s:
            a = self.assignment(s, reader, position)
        f = self.study.image(a.case_id, name)
        if not f.exists():
            raise HTTPException(404, "no such image")
        return FileResponse(f, media_type="image/png", headers={"Cache-Control": "private, max-age=600"})


def create_app(study_dir: str | Path, db_url: str | None = None, secure_cookie: bool = False) -> FastAPI:
    """The web app of one study. ``secure_cookie`` marks the login cookie Secure (HTTPS or a TLS proxy)."""
    state = ReviewApp(open_study(study_dir), db_url, secure_cookie)
    app = FastAPI(title="sscild reader study", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.review = state

    @app.middleware("http")
    async def headers(request: Request, call_next):
        resp = await call_next(request)
        for k, v in SECURITY_HEADERS.items():
            resp.headers.setdefault(k, v)
        return resp

    _routes(app, state)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _routes(app: FastAPI, st: ReviewApp) -> None:
    me = Depends(st.reader)

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.post("/api/login")
    def login(body: Login, response: Response):
        with st.Session() as s:
            r = s.scalar(sa.select(Reader).where(Reader.token_sha256 == token_hash(body.token.strip())))
        if r is None:
            raise HTTPException(401, "unknown token: check the access token you were given")
        response.set_cookie(COOKIE, body.token.strip(), httponly=True, samesite="strict", secure=st.secure_cookie,
                            max_age=14 * 86400)
        return {"reader": r.name}

    @app.post("/api/logout")
    def logout(response: Response):
        response.delete_cookie(COOKIE)
        return {"ok": True}

    @app.get("/api/task")
    def task(position: int | None = None, level: str | None = None, reader: Reader = me):
        return st.task(reader, position, level)

    @app.put("/api/answer/{position}/{level}")
    def answer(position: int, level: str, body: AnswerIn, reader: Reader = me):
        return st.save(reader, position, level, body)

    @app.get("/api/answers")
    def answers(reader: Reader = me):
        return st.answers(reader)

    @app.get("/api/image/{position}/{level}/{offset}/{window}")
    def image(position: int, level: str, offset: int, window: str, reader: Reader = me):
        if level not in LEVELS or window not in WINDOWS:
            raise HTTPException(404, "no such image")
        return st.image(reader, position, f"{level}_{offset}_{window}.png")

    @app.get("/api/heatmap/{position}/{level}/{pattern}")
    def heatmap(position: int, level: str, pattern: str, reader: Reader = me):
        if level not in LEVELS or pattern not in PATTERNS:
            raise HTTPException(404, "no such heat map")
        return st.image(reader, position, f"{level}_hm_{pattern}.png")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)


LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def check_host(host: str, *, tls: bool, behind_proxy: bool) -> None:
    """Refuse to listen beyond this machine without HTTPS: tokens would cross the network in clear text.

    A non-local ``host`` needs ``tls`` (``--ssl-certfile/--ssl-keyfile``) or ``behind_proxy`` (a TLS reverse proxy
    in front, which should itself be the only thing reaching this port).
    """
    from .study import StudyError

    if host not in LOCAL_HOSTS and not (tls or behind_proxy):
        raise StudyError(f"--host {host} would expose the study beyond this machine without HTTPS: give "
                         "--ssl-certfile and --ssl-keyfile, or put a TLS reverse proxy in front (listen on "
                         "127.0.0.1 and pass --behind-proxy); see sscild review serve --help")
