"""The service runs as a role that cannot switch row-level security off, and refuses others."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ProgrammingError

from db.roles import PrivilegedRole
from email_service.runtime import Runtime, build_runtime
from tests.conftest import PG_ADMIN_DSN, PG_HOST, PG_PORT, PgDatabase, make_settings

REPO = Path(__file__).resolve().parents[2]


def _superuser_url(pg_database: PgDatabase) -> str:
    admin = psycopg.conninfo.conninfo_to_dict(PG_ADMIN_DSN)
    return f"postgresql+psycopg://{admin['user']}@{PG_HOST}:{PG_PORT}/{pg_database.name}"


def test_serve_as_a_superuser_is_refused(pg_database: PgDatabase, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": _superuser_url(pg_database),
        "DATA_DIR": str(tmp_path),
        "JWT_SECRET": "x" * 40,
        "CREDENTIAL_KEYS": "k1:" + "A" * 43 + "=",
    }
    env.pop("DATABASE_ALLOW_PRIVILEGED_ROLE", None)
    result = subprocess.run(
        [sys.executable, "-m", "email_service.cli", "serve", "--port", "0"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "is a superuser" in result.stderr + result.stdout
    assert "DATABASE_ALLOW_PRIVILEGED_ROLE" in result.stderr + result.stdout


def test_the_table_owner_is_refused_unless_overridden(
    pg_database: PgDatabase, owner_engine: Engine, tmp_path: Path
) -> None:
    with pytest.raises(PrivilegedRole, match=r"owns the tables .*accounts"):
        build_runtime(make_settings(tmp_path / "a", pg_database.owner_url))

    allowed = build_runtime(
        make_settings(tmp_path / "b", pg_database.owner_url, database_allow_privileged_role=True)
    )
    allowed.close()


@pytest.fixture
def member_of_owner(pg_database: PgDatabase) -> Iterator[str]:
    role = f"email_member_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE ROLE "{role}" LOGIN NOSUPERUSER NOBYPASSRLS')
        admin.execute(f'GRANT "{pg_database.owner}" TO "{role}"')
    yield role
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'DROP ROLE IF EXISTS "{role}"')


def test_a_member_of_the_owner_role_is_refused(
    pg_database: PgDatabase, owner_engine: Engine, member_of_owner: str, tmp_path: Path
) -> None:
    # SET ROLE would give it the owner's powers, so it counts as the owner.
    url = f"postgresql+psycopg://{member_of_owner}@{PG_HOST}:{PG_PORT}/{pg_database.name}"
    with pytest.raises(PrivilegedRole, match="owns the tables"):
        build_runtime(make_settings(tmp_path, url))


def test_the_runtime_role_cannot_switch_row_level_security_off(runtime: Runtime) -> None:
    for statement in (
        "ALTER TABLE accounts DISABLE ROW LEVEL SECURITY",
        "ALTER TABLE accounts NO FORCE ROW LEVEL SECURITY",
        "DROP POLICY tenant_isolation ON accounts",
    ):
        with runtime.db.engine.connect() as conn, pytest.raises(ProgrammingError, match="owner"):
            conn.execute(text(statement))


def test_tables_created_later_by_the_owner_are_granted_to_the_runtime_role(
    owner_engine: Engine, runtime: Runtime
) -> None:
    # As a later migration would: the owner's default privileges reach the runtime role.
    table = f"later_{uuid.uuid4().hex[:8]}"
    with owner_engine.begin() as conn:
        conn.execute(text(f"CREATE TABLE {table} (id bigserial PRIMARY KEY, note text)"))
    try:
        with runtime.db.engine.begin() as conn:
            conn.execute(text(f"INSERT INTO {table} (note) VALUES ('x')"))  # noqa: S608
            assert conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one() == 1  # noqa: S608
    finally:
        with owner_engine.begin() as conn:
            conn.execute(text(f"DROP TABLE {table}"))


@pytest.fixture
def bare_database() -> Iterator[str]:
    name = f"email_roles_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield name
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        for role in (f"{name}_owner", f"{name}_app"):
            admin.execute(f'DROP ROLE IF EXISTS "{role}"')


def test_the_operators_role_script_gives_a_runtime_role_the_service_accepts(
    bare_database: str, tmp_path: Path
) -> None:
    # Given a database set up by scripts/db-roles.sql, as an operator (or compose) would
    owner, app = f"{bare_database}_owner", f"{bare_database}_app"
    admin = psycopg.conninfo.conninfo_to_dict(PG_ADMIN_DSN)
    dsn = psycopg.conninfo.make_conninfo(PG_ADMIN_DSN, dbname=bare_database)
    subprocess.run(
        [
            *("psql", dsn, "-q", "-f", str(REPO / "scripts" / "db-roles.sql")),
            *("-v", f"owner={owner}", "-v", "owner_password=dev-only-o"),
            *("-v", f"runtime={app}", "-v", "runtime_password=dev-only-r"),
        ],
        check=True,
        capture_output=True,
        env={**os.environ, "PGUSER": str(admin["user"])},
    )
    base = f"postgresql+psycopg://{{}}@{PG_HOST}:{PG_PORT}/{bare_database}"
    # When the owner migrates
    from db.migrate import upgrade
    from db.session import make_engine

    owner_engine = make_engine(base.format(owner), pool_size=1)
    upgrade(owner_engine)
    owner_engine.dispose()
    # Then the runtime role passes the check and can use every table, but not own them
    rt = build_runtime(make_settings(tmp_path, base.format(app)))
    try:
        with rt.db.transaction(system=True) as session:
            session.execute(text("SELECT count(*) FROM accounts"))
            session.execute(text("DELETE FROM tasks"))
        with rt.db.engine.connect() as conn, pytest.raises(ProgrammingError, match="owner"):
            conn.execute(text("ALTER TABLE accounts DISABLE ROW LEVEL SECURITY"))
    finally:
        rt.close()
