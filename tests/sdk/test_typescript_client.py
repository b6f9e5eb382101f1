"""The TypeScript client (client-sdks/typescript): it type-checks, and drives the live server.

The round trip itself is client-sdks/typescript/scripts/roundtrip.ts, compiled by the
pinned TypeScript and run by Node. Its dependencies come from `make sdk-tools` (npm ci).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from email_service_client import AuthenticatedClient
from email_service_client.api.accounts import get_account, list_accounts
from email_service_client.models import AccountListResponse, ErrorResponse

from tests.conftest import new_identity
from tests.sdk.conftest import NODE, TYPESCRIPT_SDK

TSC = TYPESCRIPT_SDK / "node_modules" / ".bin" / "tsc"

pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed")


@pytest.fixture(scope="module")
def tsc() -> Path:
    assert TSC.exists(), "the TypeScript client's dependencies are missing: run `make sdk-tools`"
    return TSC


def run(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(arg) for arg in args],
        cwd=TYPESCRIPT_SDK,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def compiled(tsc: Path) -> Iterator[Path]:
    # A directory of its own under the package, so that Node finds node_modules from it and
    # concurrent runs in one checkout do not overwrite each other's output.
    out = TYPESCRIPT_SDK / "dist" / f"pytest-{uuid.uuid4().hex[:8]}"
    try:
        result = run(tsc, "-p", "tsconfig.json", "--outDir", out)
        assert result.returncode == 0, result.stdout + result.stderr
        yield out
    finally:
        shutil.rmtree(out, ignore_errors=True)


def test_typescript_client_type_checks(tsc: Path) -> None:
    result = run(tsc, "--noEmit", "-p", "tsconfig.json")
    assert result.returncode == 0, result.stdout + result.stderr


def test_typescript_account_round_trip(sdk_server: str, compiled: Path) -> None:
    carol = new_identity()

    result = run(NODE or "node", compiled / "scripts" / "roundtrip.js", sdk_server, carol.token)

    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["ok"] is True
    # What the script created and deleted is gone for the Python client too.
    client = AuthenticatedClient(base_url=sdk_server, token=carol.token)
    gone = get_account.sync(summary["accountId"], client=client)
    assert isinstance(gone, ErrorResponse) and gone.code == "ACCOUNT_NOT_FOUND"
    page = list_accounts.sync(client=client)
    assert isinstance(page, AccountListResponse) and page.accounts == []
