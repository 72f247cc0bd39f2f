"""The audit-trail database on SQLite and on a real PostgreSQL server (MELANOMA_TEST_PG_URL, started by .ci/run):
Alembic migrations, records and reviews surviving a restart, worklist order and filters, and the API on top.

PostgreSQL tests are skipped (with the reason) when MELANOMA_TEST_PG_URL is unset, and FAIL when CI=true."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import inspect, text

from melanoma.errors import ConfigError
from melanoma.serve import records
from melanoma.serve.app import create_app
from melanoma.serve.db import PredictionRecord, make_engine, migrate, normalise_url, session_factory
from melanoma.serve.inference import load_model
from melanoma.serve.settings import Settings
from melanoma.serve.testing import REPO_MODEL

PG_ENV = "MELANOMA_TEST_PG_URL"


def _postgres_url() -> str:
    url = os.environ.get(PG_ENV)
    if not url:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{PG_ENV} is unset on CI: .ci/run must start PostgreSQL for these tests", pytrace=False)
        pytest.skip(f"{PG_ENV} is unset (no PostgreSQL server for the tests; .ci/run starts one)")
    return url


def _empty_postgres(url: str) -> str:
    """Drop what earlier tests left, so each test migrates a fresh database."""
    engine = make_engine(url)
    with engine.begin() as conn:
        for table in ("reviews", "predictions", "alembic_version"):
            conn.execute(text(f"DROP TABLE IF EXISTS {table} CASCADE"))
    engine.dispose()
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'audit.sqlite'}"
    return _empty_postgres(_postgres_url())


def _record(**overrides) -> PredictionRecord:
    fields = dict(image_sha256="0" * 64, model_name="default", model_version="v", model_sha256="f" * 64,
                  backend="onnx", probabilities={"melanoma": 0.1, "nevus": 0.9}, prediction="nevus", confidence=0.9,
                  melanoma_probability=0.1, alert_threshold=0.05, alert=True, refer=False, refer_reason="",
                  created_at=datetime.now(timezone.utc))
    return PredictionRecord(**{**fields, **overrides})


def test_migrations_create_the_schema_and_are_idempotent(db_url):
    engine = make_engine(db_url)
    assert migrate(engine) == "0002"
    assert migrate(engine) == "0002"  # a second start changes nothing
    names = set(inspect(engine).get_table_names())
    assert {"predictions", "reviews", "alembic_version"} <= names
    columns = {c["name"] for c in inspect(engine).get_columns("predictions")}
    assert {"image_sha256", "case_ref", "model_sha256", "probabilities", "alert", "refer", "warning"} <= columns
    engine.dispose()


def test_an_audit_trail_of_revision_0001_upgrades_and_keeps_its_records(db_url):
    """A clinic's database written before the `warning` column: the next start adds it, old rows read as ""."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import MetaData, Table, insert

    from melanoma.serve.db import MIGRATIONS

    engine = make_engine(db_url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "0001")
    old = {k: v for k, v in _record().__dict__.items() if not k.startswith("_")}
    with engine.begin() as connection:
        connection.execute(insert(Table("predictions", MetaData(), autoload_with=connection)), [old])
    assert migrate(engine) == "0002"
    with session_factory(engine)() as session:
        row = session.get(PredictionRecord, 1)
        assert (row.image_sha256, row.warning) == ("0" * 64, "")
        assert records.record_json(row)["warning"] == ""
    engine.dispose()


def test_records_and_reviews_survive_a_restart_and_sort_for_the_worklist(db_url):
    engine = make_engine(db_url)
    migrate(engine)
    with session_factory(engine)() as session:
        session.add_all([_record(alert=False, melanoma_probability=0.04, case_ref="A-1"),
                         _record(alert=True, melanoma_probability=0.07, case_ref="A-2"),
                         _record(alert=True, melanoma_probability=0.60, case_ref="B-1"),
                         _record(alert=False, melanoma_probability=None, case_ref="B-2")])
        session.commit()
        row = session.get(PredictionRecord, 2)
        records.add_review(session, row, "agree", "melanoma", "Dr A", None)
        records.add_review(session, row, "disagree", "nevus", "Dr B", "second look")
    engine.dispose()

    engine = make_engine(db_url)  # "restart": a new engine, migrations run again
    migrate(engine)
    with session_factory(engine)() as session:
        rows, total = records.list_records(session, order="priority")
        assert total == 4
        assert [r.case_ref for r in rows] == ["B-1", "A-2", "A-1", "B-2"]  # alerts first, by probability, NULL last
        row = session.get(PredictionRecord, 2)
        assert [r.decision for r in row.reviews] == ["agree", "disagree"]
        assert (row.review_decision, row.final_diagnosis) == ("disagree", "nevus")
        assert row.probabilities == {"melanoma": 0.1, "nevus": 0.9}
        assert records.list_records(session, reviewed=True)[1] == 1
        assert records.list_records(session, reviewed=False, alert=True)[1] == 1
        assert records.list_records(session, case="B-")[1] == 2
        assert records.list_records(session, case="%")[1] == 0  # LIKE wildcards are escaped
        future = datetime.now(timezone.utc) + timedelta(hours=1)
        assert records.list_records(session, since=future)[1] == 0
    engine.dispose()


def test_site_monitor_selects_the_served_weights_at_the_served_threshold_newest_first(db_url):
    """monitor.recent_records on SQLite and PostgreSQL: other weights and another alert threshold (a site-calibrated
    copy of the same weights) are left out; `last` keeps the newest."""
    from types import SimpleNamespace

    from melanoma.serve import monitor

    engine = make_engine(db_url)
    migrate(engine)
    served = SimpleNamespace(sha256="f" * 64, alert_threshold=0.052085220306312574)
    with session_factory(engine)() as session:
        session.add_all([_record(case_ref=f"S-{i}", alert_threshold=served.alert_threshold) for i in range(5)]
                        + [_record(case_ref="other weights", model_sha256="e" * 64,
                                   alert_threshold=served.alert_threshold),
                           _record(case_ref="calibrated copy", alert_threshold=0.08)])
        session.commit()
        assert [r.case_ref for r in monitor.recent_records(session, served, 3)] == ["S-4", "S-3", "S-2"]
        assert len(monitor.recent_records(session, served, 100)) == 5
    engine.dispose()


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    return load_model(REPO_MODEL, "torch", tmp_path_factory.mktemp("state"), threads=None, device="cpu")


def test_api_audit_after_restart(db_url, loaded, shared_train, tmp_path):
    image = sorted((shared_train / "melanoma").glob("*.jpg"))[0]
    settings = Settings(model=REPO_MODEL, backend="torch", db=db_url, state_dir=tmp_path / "state")
    with TestClient(create_app(settings, loaded)) as client:
        result = client.post("/v1/predict", files=[("files", (image.name, image.read_bytes()))],
                             data={"case_ref": "PG-1"}).json()["results"][0]
        client.post(f"/v1/cases/{result['record_id']}/review", json={"decision": "agree",
                                                                      "final_diagnosis": "melanoma"})
    with TestClient(create_app(settings, loaded)) as client:
        audit = client.get("/v1/audit").json()
        assert [r["record_id"] for r in audit["records"]] == [result["record_id"]]
        again = audit["records"][0]
        assert again["probabilities"] == pytest.approx(result["probabilities"])
        assert again["review"]["final_diagnosis"] == "melanoma" and again["case_ref"] == "PG-1"
        assert client.get("/healthz").json()["database"] == "ok"


def test_bad_database_urls_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="not a database URL"):
        make_engine("not a url")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="cannot create folder"):
        make_engine(f"sqlite:///{blocker}/sub/audit.sqlite")
    engine = make_engine("postgresql://nobody@127.0.0.1:1/none")
    with pytest.raises(ConfigError, match="cannot open or migrate"):
        migrate(engine)
    assert normalise_url("postgres://u@h/d") == "postgresql+psycopg://u@h/d"
