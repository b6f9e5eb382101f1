"""The real server, started as `email-service serve`, for the generated client SDKs to drive.

The server runs in its own process on a free port against the test PostgreSQL database
(migrated by the ``runtime`` fixture, emptied after every test by ``_empty_tables``), with
the tests' JWT secret and the same data directory as ``runtime``, so that mailbox content
seeded with tests/factories.py is what the server serves.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from email_service.config import Settings
from email_service.runtime import Runtime
from tests.conftest import TEST_JWT_SECRET, PgDatabase

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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
    port = _free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "LANG"}},
        "DATABASE_URL": pg_database.url,
        "JWT_SECRET": TEST_JWT_SECRET,
        "CREDENTIAL_KEYS": settings.credential_keys.get_secret_value(),
        "MAIL_ALLOWED_HOSTS": "127.0.0.1,localhost",
        "DATA_DIR": str(settings.data_dir),
        "LOG_LEVEL": "WARNING",
    }
    log_path = tmp_path_factory.mktemp("sdk-server") / "server.log"
    base = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        # The log goes to a file: a pipe nobody reads would block the server once full.
        process = subprocess.Popen(
            [str(executable), "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=settings.data_dir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"email-service serve did not start:\n{log_path.read_text()}")
                time.sleep(0.2)
            yield base
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
