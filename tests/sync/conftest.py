"""Fixtures for sync tests: a runtime on Redis and S3, a worker, and mail accounts.

The runtime here is the production shape: PostgreSQL (the session's test database),
Dramatiq on the shared Redis under a namespace of its own, attachments in a moto S3
bucket, and the Dovecot of ``tests/servers``. A Dramatiq worker runs in this process,
so a sync requested over HTTP is really queued, consumed and run.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import workers
from email_service.app import create_app
from email_service.blobstore import S3BlobStore
from email_service.config import Settings
from email_service.runtime import Runtime, build_runtime, set_runtime
from tests.conftest import Identity, make_settings
from tests.servers.dovecot import Dovecot, MailUser
from tests.servers.faults import PrivateRedis
from tests.servers.s3 import S3Server

SERVERS_PLUGIN = "tests.servers.plugin"
REDIS_URL = "redis://127.0.0.1:6379/0"


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.has_plugin(SERVERS_PLUGIN):
        config.pluginmanager.import_plugin(SERVERS_PLUGIN)


@pytest.fixture(scope="session")
def sync_settings(
    settings: Settings,
    dovecot: Dovecot,
    s3_server: S3Server,
    tmp_path_factory: pytest.TempPathFactory,
) -> Settings:
    bucket = s3_server.new_bucket("sync")
    assert settings.database_url is not None
    return make_settings(
        tmp_path_factory.mktemp("sync-data"),
        settings.database_url,
        jwt_secret=settings.jwt_secret,
        credential_keys=settings.credential_keys,
        redis_url=REDIS_URL,
        queue_namespace=f"email-test-{uuid.uuid4().hex[:8]}",
        s3_endpoint=s3_server.endpoint,
        s3_access_key=s3_server.access_key,
        s3_secret_key=s3_server.secret_key,
        s3_bucket=bucket,
        s3_secure=False,
        mail_ca_file=str(dovecot.ca_file),
        mail_command_timeout=10.0,
        # Small batches, so a handful of messages already spans several of them.
        sync_batch_size=4,
        task_max_retries=3,
        # These tests poll and page far more than a person would; the limits have
        # tests of their own (tests/api/test_rate_limits.py).
        rate_limit_enabled=False,
        task_min_backoff_ms=50,
        task_max_backoff_ms=200,
    )


@pytest.fixture(scope="session")
def sync_runtime(sync_settings: Settings, runtime: Runtime) -> Iterator[Runtime]:
    # ``runtime`` (the root fixture) has migrated the database already.
    rt = build_runtime(sync_settings)
    assert isinstance(rt.blobs, S3BlobStore)
    workers.install(rt)
    yield rt
    rt.close()


@pytest.fixture(scope="session")
def sync_app(sync_runtime: Runtime):  # type: ignore[no-untyped-def]
    return create_app(runtime=sync_runtime, validate_responses=True)


@pytest.fixture(scope="package")
def worker(sync_runtime: Runtime) -> Iterator[Any]:
    # One per package that uses it (sync, compose, changes), stopped when its package is
    # done: an idle worker polls Redis several times a second, and each poll draws from
    # the global ``random`` (Dramatiq's backoff jitter and maintenance chance), which
    # Hypothesis reports when it happens during a property test of a later package.
    jobs = sync_runtime.jobs
    assert isinstance(jobs, workers.DramatiqJobs)
    running = workers.start_worker(jobs, threads=2)
    yield running
    running.stop()


@pytest.fixture
def api(sync_app, sync_runtime: Runtime, runtime: Runtime, worker: Any):  # type: ignore[no-untyped-def]
    """An HTTP client on the sync runtime, with a worker consuming its jobs."""
    set_runtime(sync_runtime)
    with sync_app.test_client() as test_client:
        yield test_client


@dataclass
class Mailbox:
    """A Dovecot user and the API account that mirrors it."""

    user: MailUser
    account: dict[str, Any]
    headers: dict[str, str]

    @property
    def id(self) -> str:
        return str(self.account["id"])


def account_for(
    client: Any, identity: Identity, dovecot: Dovecot, user: MailUser, **overrides: Any
) -> Mailbox:
    body: dict[str, Any] = {
        "accountName": "Test mailbox",
        "emailAddress": user.email,
        "protocol": "imap",
        "hostname": "localhost",
        "port": dovecot.imaps_port,
        "encryption": "tls",
        "username": user.email,
        "password": user.password,
    }
    body.update(overrides)
    response = client.post("/api/accounts", json=body, headers=identity.bearer)
    assert response.status_code == 201, response.text
    return Mailbox(user, response.json(), identity.bearer)


@pytest.fixture
def mailbox(api: Any, alice: Identity, dovecot: Dovecot, mail_user: MailUser) -> Mailbox:
    return account_for(api, alice, dovecot, mail_user)


def wait_for_task(
    client: Any,
    headers: dict[str, str],
    task_id: str,
    *,
    until: Callable[[dict[str, Any]], bool] | None = None,
    timeout: float = 60.0,
) -> dict[str, Any]:
    """Poll the task until it finishes (or ``until`` says so); returns its last state."""
    done = until or (lambda task: task["status"] in ("success", "failure"))
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(f"/api/sync/task/{task_id}", headers=headers)
        assert response.status_code == 200, response.text
        task: dict[str, Any] = response.json()
        if done(task):
            return task
        if time.monotonic() > deadline:
            raise AssertionError(f"task {task_id} did not get there in {timeout}s: {task}")
        time.sleep(0.05)


def sync(client: Any, box: Mailbox, **body: Any) -> dict[str, Any]:
    """Request a sync over HTTP and wait for its outcome."""
    response = client.post(f"/api/sync/{box.id}", json=body, headers=box.headers)
    assert response.status_code == 202, response.text
    return wait_for_task(client, box.headers, response.json()["taskId"])


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A ``redis-server`` of the test's own, not yet started; stopped at teardown."""
    redis = PrivateRedis(tmp_path)
    yield redis
    redis.stop()


@pytest.fixture
def custom_app(
    sync_settings: Settings, runtime: Runtime, tmp_path: Path, private_redis: PrivateRedis
) -> Iterator[Callable[..., tuple[Any, Runtime]]]:
    """An API client and worker on a runtime of their own, for settings a case changes.

    It depends on ``private_redis`` so that its workers stop before that Redis does: a
    stopping worker hands the messages it holds in memory back to its broker.
    """
    made: list[tuple[Runtime, Any]] = []

    def make(*, worker: bool = True, **overrides: Any) -> tuple[Any, Runtime]:
        # A queue namespace of its own: the session's worker must not take these jobs.
        values = {"data_dir": tmp_path, "queue_namespace": f"faults-{uuid.uuid4().hex[:8]}"}
        settings = sync_settings.model_copy(update={**values, **overrides})
        rt = build_runtime(settings)
        jobs = workers.install(rt)
        running = workers.start_worker(jobs, threads=2) if worker else None
        made.append((rt, running))
        client = create_app(runtime=rt, validate_responses=True).test_client()
        set_runtime(rt)
        return client, rt

    yield make
    for rt, running in made:
        if running is not None:
            running.stop()
        rt.close()
    set_runtime(runtime)
