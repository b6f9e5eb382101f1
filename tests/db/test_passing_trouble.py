"""``passing_trouble``: a failed write about the connection or transaction, not its rows.

The mail store takes any other failure of a batch for a refusal of its messages (and
stores them one by one, skipping the refused); these are raised instead, so the job
runs again. These and only these database errors are outages to
``jobs.infrastructure_trouble``, which decides the retry.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import psycopg.errors
import pytest
from sqlalchemy import create_engine, exc, text
from sqlalchemy.engine import Engine

from db.session import passing_trouble
from email_service.jobs import infrastructure_trouble


def _wrapped(original: Exception) -> exc.DBAPIError:
    return exc.DBAPIError.instance("INSERT ...", None, original, psycopg.Error)


@pytest.mark.parametrize(
    "original",
    [
        psycopg.errors.LockNotAvailable(),  # 55P03, lock_timeout
        psycopg.errors.SerializationFailure(),  # 40001
        psycopg.errors.DeadlockDetected(),  # 40P01
        psycopg.errors.AdminShutdown(),  # 57P01
        psycopg.errors.TooManyConnections(),  # 53300
        psycopg.errors.ConnectionFailure(),  # 08006
    ],
    ids=lambda e: type(e).__name__,
)
def test_postgresql_errors_about_the_transaction_pass(original: Exception) -> None:
    error = _wrapped(original)
    assert passing_trouble(error)
    assert infrastructure_trouble(error) is not None  # so the job is run again


@pytest.mark.parametrize(
    "original",
    [
        psycopg.errors.UniqueViolation(),  # 23505
        psycopg.errors.ForeignKeyViolation(),  # 23503
        psycopg.errors.CharacterNotInRepertoire(),  # 22021
        psycopg.errors.ProgramLimitExceeded(),  # 54000, an index entry too large
    ],
    ids=lambda e: type(e).__name__,
)
def test_postgresql_errors_about_the_rows_do_not_pass(original: Exception) -> None:
    assert not passing_trouble(_wrapped(original))


@pytest.mark.parametrize(
    "original",
    [
        psycopg.errors.ProgramLimitExceeded(),  # 54000, a tsvector too long
        psycopg.errors.StatementTooComplex(),  # 54001
        psycopg.errors.ObjectNotInPrerequisiteState(),  # 55000
        psycopg.errors.CantChangeRuntimeParam(),  # 55P02
    ],
    ids=lambda e: type(e).__name__,
)
def test_operational_errors_that_no_retry_passes_are_no_outage(original: Exception) -> None:
    # psycopg (and so SQLAlchemy) calls these OperationalError, like a lock timeout
    error = exc.DBAPIError.instance("INSERT ...", None, original, psycopg.Error)
    assert not passing_trouble(error)
    assert infrastructure_trouble(error) is None  # so the job fails at once


def test_a_refused_postgresql_connection_is_an_outage() -> None:
    # psycopg's error has no SQLSTATE: the server never answered
    engine = create_engine("postgresql+psycopg://postgres@127.0.0.1:1/none")
    try:
        with pytest.raises(exc.OperationalError) as refused:
            engine.connect()
        assert getattr(refused.value.orig, "sqlstate", None) is None
        assert passing_trouble(refused.value)
        assert infrastructure_trouble(refused.value) is not None
    finally:
        engine.dispose()


def test_a_real_postgresql_program_limit_is_no_outage(owner_engine: Engine) -> None:
    with owner_engine.connect() as conn:
        with pytest.raises(exc.OperationalError) as limit:
            conn.execute(
                text(
                    "SELECT to_tsvector('simple', string_agg(md5(i::text), ' '))"
                    " FROM generate_series(1, 40000) AS i"
                )
            )
        assert getattr(limit.value.orig, "sqlstate", None) == "54000"
        assert not passing_trouble(limit.value)
        assert infrastructure_trouble(limit.value) is None
        conn.rollback()


def test_a_real_postgresql_lock_timeout_passes(owner_engine: Engine) -> None:
    with owner_engine.connect() as holder, owner_engine.connect() as waiter:
        holder.execute(text("SELECT pg_advisory_xact_lock(4242)"))
        waiter.execute(text("SET LOCAL lock_timeout = '50ms'"))
        with pytest.raises(exc.DBAPIError) as raised:
            waiter.execute(text("SELECT pg_advisory_xact_lock(4242)"))
        assert getattr(raised.value.orig, "sqlstate", None) == "55P03"
        assert passing_trouble(raised.value)
        waiter.rollback()
        holder.rollback()


def test_a_real_postgresql_unique_violation_does_not_pass(owner_engine: Engine) -> None:
    with owner_engine.connect() as conn:
        conn.execute(text("CREATE TEMP TABLE refused (id int PRIMARY KEY)"))
        conn.execute(text("INSERT INTO refused VALUES (1)"))
        with pytest.raises(exc.IntegrityError) as raised:
            conn.execute(text("INSERT INTO refused VALUES (1)"))
        assert not passing_trouble(raised.value)
        conn.rollback()


def test_a_locked_sqlite_database_passes_and_a_constraint_does_not(tmp_path: Path) -> None:
    path = tmp_path / "locked.sqlite3"
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 0.05})
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY)"))
            conn.execute(text("INSERT INTO t VALUES (1)"))
        with contextlib.closing(sqlite3.connect(path)) as other:
            other.execute("BEGIN IMMEDIATE")  # another connection holds the write lock
            with engine.connect() as conn:
                with pytest.raises(exc.OperationalError) as locked:
                    conn.exec_driver_sql("BEGIN IMMEDIATE")
                assert "locked" in str(locked.value)
                assert passing_trouble(locked.value)
                assert infrastructure_trouble(locked.value) is not None
            other.rollback()
        with engine.connect() as conn:
            with pytest.raises(exc.IntegrityError) as refused:
                conn.execute(text("INSERT INTO t VALUES (1)"))
            assert not passing_trouble(refused.value)
    finally:
        engine.dispose()
