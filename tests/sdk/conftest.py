"""The real server, started as `email-service serve`, for the generated client SDKs to drive.

The server runs in its own process on a free port against the test PostgreSQL database
(migrated by the ``runtime`` fixture, emptied after every test by ``_empty_tables``), with
the tests' JWT secret and the same data directory as ``runtime``, so that mailbox content
seeded with tests/factories.py is what the server serves.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from email_service.config import Settings
from email_service.runtime import Runtime
from tests.conftest import TEST_JWT_SECRET, PgDatabase
from tests.test_cli import serving

ROOT = Path(__file__).resolve().parents[2]
SDKS = ROOT / "client-sdks"
TYPESCRIPT_SDK = SDKS / "typescript"

# The SDKs are generated, not committed: `make sdk` (a step of `make test`) writes them. A bare
# pytest run on a fresh checkout generates them here instead; a stale generation is caught by
# test_generation.py. The Python client is used from the checkout rather than installed, so
# that no older installed copy can stand in for it.
NODE = shutil.which("node")
if not (SDKS / "python" / "email_service_client").is_dir() or (
    NODE and not (TYPESCRIPT_SDK / "src" / "schema.ts").is_file()
):
    subprocess.run([ROOT / "scripts" / "sdk.sh", "generate"], check=True, timeout=600)
sys.path.insert(0, str(SDKS / "python"))


@pytest.fixture(scope="session")
def sdk_server(
    pg_database: PgDatabase,
    settings: Settings,
    runtime: Runtime,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    """Base URL of `email-service serve` running against the test database."""
    assert settings.credential_keys is not None
    executable = Path(sys.executable).with_name("email-service")
    assert executable.exists(), f"{executable} is missing: install the project (make test does)"
    env = {
        **{k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "LANG"}},
        "DATABASE_URL": pg_database.url,
        "JWT_SECRET": TEST_JWT_SECRET,
        "CREDENTIAL_KEYS": settings.credential_keys.get_secret_value(),
        "MAIL_ALLOWED_HOSTS": "127.0.0.1,localhost",
        "DATA_DIR": str(settings.data_dir),
        "LOG_LEVEL": "WARNING",
        # With a broker configured the server runs no in-process worker or scheduler:
        # on the embedded default its scheduler would sync every account of the shared
        # test database (other tests' too) with settings of its own.
        "REDIS_URL": "redis://127.0.0.1:6379/0",
        "QUEUE_NAMESPACE": f"email-test-sdk-{uuid.uuid4().hex[:8]}",
    }
    logs = tmp_path_factory.mktemp("sdk-server")
    with serving([str(executable), "serve"], logs, env) as base:
        yield base
