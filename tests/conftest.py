"""Shared fixtures: a PostgreSQL database of our own, the app, callers and tokens.

The database is created once per test run with the two roles production uses (README,
"Database roles"): an owner role that owns the database and runs the migrations
(``owner_engine``), and a runtime role that the app, workers and every other test
connect as (``pg_database.url``). The runtime role owns nothing, so row-level security
holds for it and the service's privileged-role refusal lets it through. It is migrated
once, and emptied after every test.
"""

from __future__ import annotations

import base64
import os
import secrets
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from db.migrate import upgrade
from db.models import TENANT_TABLES
from db.roles import runtime_grants
from db.session import make_engine
from email_service.app import create_app
from email_service.auth import issue_token
from email_service.config import Settings, load_settings
from email_service.identity import Caller
from email_service.runtime import Runtime, build_runtime, set_runtime

# pytest_plugins = ["tests.servers.plugin"]

PG_ADMIN_DSN = os.environ.get(
    "TEST_PG_ADMIN_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
)
PG_HOST = os.environ.get("TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("TEST_PG_PORT", "5432"))
TEST_JWT_SECRET = "test-only-" + secrets.token_hex(16)


@dataclass(frozen=True)
class PgDatabase:
    name: str
    role: str  # the runtime role: what the app and the tests connect as
    owner: str  # owns the database and the tables; migrations run as it

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://{self.role}@{PG_HOST}:{PG_PORT}/{self.name}"

    @property
    def owner_url(self) -> str:
        return f"postgresql+psycopg://{self.owner}@{PG_HOST}:{PG_PORT}/{self.name}"


@pytest.fixture(scope="session")
def pg_database() -> Iterator[PgDatabase]:
    suffix = uuid.uuid4().hex[:10]
    db = PgDatabase(
        name=f"email_test_{suffix}", role=f"email_test_{suffix}", owner=f"email_owner_{suffix}"
    )
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE ROLE "{db.owner}" LOGIN NOSUPERUSER NOBYPASSRLS')
        admin.execute(f'CREATE ROLE "{db.role}" LOGIN NOSUPERUSER NOBYPASSRLS')
        admin.execute(f'CREATE DATABASE "{db.name}" OWNER "{db.owner}"')
    owner_dsn = f"host={PG_HOST} port={PG_PORT} user={db.owner} dbname={db.name}"
    with psycopg.connect(owner_dsn, autocommit=True) as owner:
        for statement in runtime_grants(db.owner, db.role):
            owner.execute(statement)  # type: ignore[arg-type]
    try:
        yield db
    finally:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{db.name}" WITH (FORCE)')
            admin.execute(f'DROP ROLE IF EXISTS "{db.role}"')
            admin.execute(f'DROP ROLE IF EXISTS "{db.owner}"')


@pytest.fixture(scope="session")
def owner_engine(pg_database: PgDatabase) -> Iterator[Engine]:
    """An engine connected as the owner role, migrated to head: for DDL in tests."""
    engine = make_engine(pg_database.owner_url, pool_size=2)
    upgrade(engine)
    yield engine
    engine.dispose()


def make_settings(data_dir: Path, database_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": data_dir,
        "database_url": database_url,
        "jwt_secret": TEST_JWT_SECRET,
        "credential_keys": "k1:" + base64.b64encode(secrets.token_bytes(32)).decode(),
        # The local test servers, and the names test data uses (.test and .example never
        # resolve, so they must be listed to be accepted as mail hosts).
        "mail_allowed_hosts": ["127.0.0.1", "localhost", "*.example.test", "*.example"],
        # Test accounts and the local Dovecot/SMTP servers speak plaintext too.
        "mail_allow_plaintext": True,
    }
    values.update(overrides)
    return load_settings(**values)


@pytest.fixture(scope="session")
def settings(pg_database: PgDatabase, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return make_settings(tmp_path_factory.mktemp("data"), pg_database.url)


@pytest.fixture(scope="session")
def runtime(settings: Settings, owner_engine: Engine) -> Iterator[Runtime]:
    # owner_engine has migrated the database; the runtime connects as the runtime role.
    rt = build_runtime(settings)
    yield rt
    rt.close()


@pytest.fixture(scope="session")
def app(runtime: Runtime):  # type: ignore[no-untyped-def]
    return create_app(runtime=runtime, validate_responses=True)


def empty_tenant_tables(engine: Engine) -> None:
    """Delete every row of the tenant tables (and, through their foreign keys, the search
    index's), whichever tenant they belong to.

    DELETE rather than TRUNCATE: a TRUNCATE of the eleven tables gives each of them and
    each of their indexes a new file, some 0.1-0.4 s after every test, where deleting the
    few rows a test leaves takes milliseconds. Children go before their parents, and the
    system scope lets every row through row-level security.
    """
    # A background job a test left running (a watcher's sync, a webhook fan-out) can hold row
    # locks while it waits for one the delete already holds; PostgreSQL then aborts one of
    # the two. When the delete is the one aborted, it is simply tried again.
    for attempt in range(5):
        try:
            with engine.begin() as conn:
                conn.execute(text("SELECT set_config('app.scope', 'system', true)"))
                for table in reversed(TENANT_TABLES):
                    conn.execute(text(f"DELETE FROM {table}"))  # noqa: S608 (our table names)
            return
        except DBAPIError as exc:
            if attempt == 4 or getattr(exc.orig, "sqlstate", None) not in ("40P01", "55P03"):
                raise
            time.sleep(0.2 * (attempt + 1))


@pytest.fixture(autouse=True)
def _empty_tables(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "runtime" not in request.fixturenames:
        return
    rt: Runtime = request.getfixturevalue("runtime")
    set_runtime(rt)
    empty_tenant_tables(rt.db.engine)


@pytest.fixture
def app_factory(runtime: Runtime, pg_database: PgDatabase, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Build apps with their own settings (``make_settings`` overrides) on the test database.

    Returns ``build(**overrides) -> (runtime, app)``; their runtimes are closed and the
    session runtime (and its connect guard) reinstated afterwards.
    """
    from email_service.mail.endpoint import set_connect_guard

    built: list[Runtime] = []

    def build(**overrides: object):  # type: ignore[no-untyped-def]
        data_dir = tmp_path / f"app{len(built)}"
        own = build_runtime(make_settings(data_dir, pg_database.url, **overrides))
        built.append(own)
        return own, create_app(runtime=own, validate_responses=True)

    yield build
    for own in built:
        own.close()
    set_runtime(runtime)
    set_connect_guard(runtime.host_policy.connect_guard)


@pytest.fixture
def client(app, runtime: Runtime):  # type: ignore[no-untyped-def]
    set_runtime(runtime)
    with app.test_client() as test_client:
        yield test_client


@dataclass(frozen=True)
class Identity:
    caller: Caller
    token: str

    @property
    def bearer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def header_auth(self) -> dict[str, str]:
        return {
            "X-Auth-Token": self.token,
            "X-Tenant-ID": str(self.caller.tenant_id),
            "X-User-ID": str(self.caller.user_id),
        }


def new_identity(tenant_id: uuid.UUID | None = None) -> Identity:
    caller = Caller(tenant_id or uuid.uuid4(), uuid.uuid4())
    return Identity(caller, issue_token(TEST_JWT_SECRET, caller.tenant_id, caller.user_id))


@pytest.fixture
def alice() -> Identity:
    return new_identity()


@pytest.fixture
def bob_same_tenant(alice: Identity) -> Identity:
    """Another user of alice's tenant."""
    return new_identity(alice.caller.tenant_id)


@pytest.fixture
def mallory() -> Identity:
    """A user of another tenant."""
    return new_identity()


@pytest.fixture(scope="session")
def live_server(app, runtime: Runtime) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """The app behind a real uvicorn server on a free port, for tests that need real HTTP."""
    with serve_app(app, runtime) as url:
        yield url


@contextmanager
def serve_app(app, runtime: Runtime) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """Run ``app`` under uvicorn on a free port until the block ends; yields its base URL."""
    import socket
    import threading
    import time

    import uvicorn

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    set_runtime(runtime)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
