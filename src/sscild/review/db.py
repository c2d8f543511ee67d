"""The study database: readers, their case lists (assignments) and answers, through SQLAlchemy.

SQLite (one file per study, ``STUDY/review.db``) is opened in WAL mode with ``synchronous=FULL``, so every
committed answer survives a killed server (and a power cut); the same models run on PostgreSQL given a URL
(``postgresql+psycopg://user@host/db``). The schema is versioned by Alembic migrations
(``sscild/review/migrations``); :func:`open_db` brings any database to the newest revision.

Examples
--------
>>> engine = open_db("sqlite://")          # in memory
>>> sorted(t for t in sa.inspect(engine).get_table_names())
['alembic_version', 'answers', 'assignments', 'readers']
"""
from __future__ import annotations

import datetime as _dt
import hashlib
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from ..errors import ConfigError

#: Alembic revision of the newest schema.
SCHEMA_REVISION = "0001"


class Base(DeclarativeBase):
    pass


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None)


class Reader(Base):
    """One reader; only the SHA-256 of the access token is stored."""

    __tablename__ = "readers"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(64), unique=True)
    token_sha256: Mapped[str] = mapped_column(sa.String(64), unique=True)
    created_at: Mapped[_dt.datetime] = mapped_column(default=_now)


class Assignment(Base):
    """Position ``position`` of a reader's list: case ``case_id``, first reading (replicate 0) or a repeat (1)."""

    __tablename__ = "assignments"
    __table_args__ = (sa.UniqueConstraint("reader_id", "position"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    reader_id: Mapped[int] = mapped_column(sa.ForeignKey("readers.id"), index=True)
    position: Mapped[int]
    case_id: Mapped[str] = mapped_column(sa.String(32))
    replicate: Mapped[int] = mapped_column(default=0)


class Answer(Base):
    """A reader's scores of one level of one assignment (one row, updated when the reader changes it)."""

    __tablename__ = "answers"
    __table_args__ = (sa.UniqueConstraint("assignment_id", "level"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    assignment_id: Mapped[int] = mapped_column(sa.ForeignKey("assignments.id"), index=True)
    reader_id: Mapped[int] = mapped_column(sa.ForeignKey("readers.id"), index=True)
    level: Mapped[str] = mapped_column(sa.String(4))
    tot: Mapped[int]
    gg: Mapped[int]
    ret: Mapped[int]
    misplaced: Mapped[bool] = mapped_column(default=False)
    corrected_offset: Mapped[int | None]
    likert_tot: Mapped[int | None]
    likert_gg: Mapped[int | None]
    likert_ret: Mapped[int | None]
    comment: Mapped[str] = mapped_column(sa.Text, default="")
    seconds: Mapped[float | None]
    answered_at: Mapped[_dt.datetime] = mapped_column(default=_now)
    n_edits: Mapped[int] = mapped_column(default=0)


def token_hash(token: str) -> str:
    """SHA-256 hex digest of an access token (tokens are random 128-bit strings, so no salt is needed)."""
    return hashlib.sha256(token.encode()).hexdigest()


def database_url(study_dir: str | Path, url: str | None = None) -> str:
    """The study's database URL: ``url`` when given (e.g. PostgreSQL), else ``sqlite:///STUDY/review.db``."""
    return url or f"sqlite:///{Path(study_dir).resolve() / 'review.db'}"


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def make_engine(url: str) -> sa.Engine:
    """An engine for ``url``; SQLite connections get WAL, synchronous=FULL, a busy timeout and foreign keys."""
    try:
        engine = sa.create_engine(url, future=True)
    except (sa.exc.ArgumentError, ImportError) as err:
        raise ConfigError(f"database URL {url!r} cannot be used ({err}); give sqlite:///FILE or "
                          "postgresql+psycopg://USER@HOST/DB (pip install 'psycopg[binary]')") from None
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def migrate(engine: sa.Engine) -> None:
    """Upgrade the database to the newest schema with the package's Alembic migrations."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def open_db(url: str) -> sa.Engine:
    """Engine for ``url`` with the schema migrated to the newest revision."""
    engine = make_engine(url)
    try:
        migrate(engine)
    except sa.exc.OperationalError as err:
        raise ConfigError(f"cannot open the study database {url.split('@')[-1]}: {err.orig}") from None
    return engine


def session_factory(engine: sa.Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)
