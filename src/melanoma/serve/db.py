"""The audit trail: SQLAlchemy 2 models, engine, the session dependency and Alembic migrations.

SQLite file by default, PostgreSQL by URL (psycopg 3). The schema is created and upgraded only by the Alembic
migrations in `migrations/versions/` (run on every start), never by `create_all`.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from fastapi import Request
from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

from melanoma.errors import ConfigError

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class PredictionRecord(Base):
    """One image predicted by the service (the audit trail). The image itself only with --keep-images."""

    __tablename__ = "predictions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    image_sha256: Mapped[str] = mapped_column(String(64), index=True)
    case_ref: Mapped[str | None] = mapped_column(String(200), index=True)
    patient_ref: Mapped[str | None] = mapped_column(String(200))
    model_name: Mapped[str] = mapped_column(String(200))
    model_version: Mapped[str] = mapped_column(String(100))
    model_sha256: Mapped[str] = mapped_column(String(64), index=True)
    backend: Mapped[str] = mapped_column(String(16))
    probabilities: Mapped[dict] = mapped_column(JSON)
    prediction: Mapped[str] = mapped_column(String(100))
    confidence: Mapped[float] = mapped_column(Float)
    melanoma_probability: Mapped[float | None] = mapped_column(Float, index=True)
    alert_threshold: Mapped[float | None] = mapped_column(Float)
    alert: Mapped[bool] = mapped_column(Boolean, index=True)
    refer: Mapped[bool] = mapped_column(Boolean)
    refer_reason: Mapped[str] = mapped_column(Text, default="")
    warning: Mapped[str] = mapped_column(Text, default="")  # predict.detail_warning; "" for none (migration 0002)
    image_file: Mapped[str | None] = mapped_column(String(200))  # name inside --keep-images (sha256 + extension)
    # The latest review, copied here for the worklist; every review is kept in `reviews`.
    review_decision: Mapped[str | None] = mapped_column(String(16), index=True)
    final_diagnosis: Mapped[str | None] = mapped_column(String(100))
    reviewed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    reviews: Mapped[list[Review]] = relationship(back_populates="record", order_by="Review.id")


class Review(Base):
    """A dermatologist's decision on one prediction (append-only: a new review never erases an older one)."""

    __tablename__ = "reviews"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    prediction_id: Mapped[int] = mapped_column(ForeignKey("predictions.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    decision: Mapped[str] = mapped_column(String(16))            # agree | disagree
    final_diagnosis: Mapped[str | None] = mapped_column(String(100))
    reviewer: Mapped[str | None] = mapped_column(String(200))
    note: Mapped[str | None] = mapped_column(Text)

    record: Mapped[PredictionRecord] = relationship(back_populates="reviews")


def normalise_url(url: str) -> str:
    """postgres:// and postgresql:// mean psycopg 3 (the driver we ship), not SQLAlchemy's psycopg2 default."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    # WAL: readers (worklist) never wait for the writer (predictions); foreign keys are off by default in SQLite.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_engine(url: str) -> Engine:
    """Engine for `url` (ConfigError, one line, for a malformed URL or a SQLite folder that cannot be created)."""
    try:
        parsed = make_url(normalise_url(url))
    except ArgumentError:
        raise ConfigError(f"--db {url!r}: not a database URL "
                          "(use sqlite:///PATH or postgresql://USER@HOST/DB)") from None
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            folder = Path(parsed.database).expanduser().resolve().parent
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"--db {url}: cannot create folder {folder} ({exc.strerror})") from None
        engine = create_engine(parsed, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    try:
        return create_engine(parsed, pool_pre_ping=True, pool_size=8, max_overflow=8)
    except (ImportError, SQLAlchemyError) as exc:
        raise ConfigError(f"--db: cannot use {parsed.render_as_string(hide_password=True)} ({exc})") from None


def migrate(engine: Engine) -> str:
    """Upgrade the schema to the newest Alembic revision; returns it. ConfigError when the database is unreachable."""
    from alembic import command
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    try:
        with engine.begin() as connection:
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, "head")
    except SQLAlchemyError as exc:
        where = engine.url.render_as_string(hide_password=True)
        raise ConfigError(f"--db {where}: cannot open or migrate the database "
                          f"({str(exc.orig if hasattr(exc, 'orig') else exc).splitlines()[0][:200]})") from None
    return ScriptDirectory.from_config(cfg).get_current_head()


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def get_session(request: Request) -> Iterator[Session]:
    """FastAPI dependency: one session per request, closed afterwards."""
    with request.app.state.sessions() as session:
        yield session
