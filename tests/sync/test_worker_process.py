"""`email-service worker` as its own process: it runs what the API queued in Redis."""

from __future__ import annotations

import signal
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import workers
from email_service.app import create_app
from email_service.config import Settings
from email_service.runtime import Runtime, build_runtime, set_runtime
from tests.conftest import Identity
from tests.servers.dovecot import Dovecot, MailUser
from tests.servers.mailgen import corpus
from tests.sync.conftest import account_for, sync
from tests.test_cli import CLI, _clean_env


@pytest.fixture
def queue_only(sync_settings: Settings, runtime: Runtime, tmp_path: Any) -> Iterator[Runtime]:
    """A runtime on a namespace of its own that no in-process worker consumes."""
    settings = sync_settings.model_copy(
        update={"queue_namespace": f"email-test-{uuid.uuid4().hex[:8]}", "data_dir": tmp_path}
    )
    rt = build_runtime(settings)
    workers.install(rt)
    yield rt
    rt.close()


def test_the_worker_command_runs_queued_syncs_and_stops_on_sigterm(
    queue_only: Runtime, alice: Identity, dovecot: Dovecot, mail_user: MailUser
) -> None:
    settings = queue_only.settings
    assert settings.database_url and settings.redis_url and settings.credential_keys
    assert settings.jwt_secret and settings.s3_access_key and settings.s3_secret_key
    env = _clean_env(
        DATABASE_URL=settings.database_url,
        REDIS_URL=settings.redis_url,
        QUEUE_NAMESPACE=settings.queue_namespace,
        JWT_SECRET=settings.jwt_secret.get_secret_value(),
        CREDENTIAL_KEYS=settings.credential_keys.get_secret_value(),
        MAIL_ALLOWED_HOSTS="127.0.0.1,localhost",
        MAIL_CA_FILE=str(dovecot.ca_file),
        S3_ENDPOINT=str(settings.s3_endpoint),
        S3_ACCESS_KEY=settings.s3_access_key.get_secret_value(),
        S3_SECRET_KEY=settings.s3_secret_key.get_secret_value(),
        S3_BUCKET=settings.s3_bucket,
        S3_SECURE="false",
        DATA_DIR=str(settings.data_dir),
    )
    dovecot.append(mail_user, "INBOX", corpus()["mixed_attachments"])
    dovecot.append(mail_user, "INBOX", corpus()["plain_ascii"])
    process = subprocess.Popen(
        [*CLI, "worker", "--threads", "2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        set_runtime(queue_only)
        with create_app(runtime=queue_only, validate_responses=True).test_client() as api:
            box = account_for(api, alice, dovecot, mail_user)
            task = sync(api, box)
        assert task["status"] == "success", task
        assert task["result"]["messagesAdded"] == 2
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=60)[0].decode()
    assert process.returncode == 0, output
    assert mail_user.password not in output
