"""The ``email-service`` command as a newcomer runs it: embedded default, no configuration."""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from db.models import Account
from email_service.config import load_settings
from email_service.crypto import KeyRing
from email_service.runtime import Runtime, build_runtime
from email_service.services.accounts import account_password
from tests.conftest import Identity, make_settings
from tests.factories import create_account

CLI = [sys.executable, "-m", "email_service.cli"]


def _clean_env(**extra: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "LANG", "PYTHONPATH"}}
    return {**keep, **extra}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serving(command: list[str], cwd: Path, env: dict[str, str]) -> Iterator[str]:
    """Run ``command`` (an ``email-service serve``) until it answers /health; its base URL.

    The log goes to a file: a pipe that nobody reads would stop the server once full.
    """
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = cwd / f"serve-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--port", str(port)],
            cwd=cwd,
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
                    pytest.fail(f"the server did not start:\n{log_path.read_text()}")
                time.sleep(0.2)
            yield base
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def embedded_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    # imap.example.test never resolves: the outbound guard refuses it unless listed.
    env = _clean_env(MAIL_ALLOWED_HOSTS="*.example.test")
    with serving([*CLI, "serve"], tmp_path, env) as base:
        yield base, tmp_path


def test_quick_start_on_the_embedded_default(embedded_server: tuple[str, Path]) -> None:
    base, cwd = embedded_server
    tenant, user = uuid.uuid4(), uuid.uuid4()
    token = subprocess.run(
        [*CLI, "token", "--tenant", str(tenant), "--user", str(user)],
        cwd=cwd,
        env=_clean_env(),
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    headers = {"Authorization": f"Bearer {token}"}
    body = {
        "accountName": "Work",
        "emailAddress": "me@example.test",
        "protocol": "imap",
        "hostname": "imap.example.test",
        "port": 993,
        "encryption": "tls",
        "username": "me",
        "password": "quick-start-pw",
    }
    created = httpx.post(f"{base}/api/accounts", json=body, headers=headers)
    assert created.status_code == 201, created.text
    account_id = created.json()["id"]
    assert httpx.get(f"{base}/api/accounts", headers=headers).json()["pagination"]["total"] == 1
    assert httpx.get(f"{base}/api/accounts/{account_id}", headers=headers).status_code == 200
    updated = httpx.put(
        f"{base}/api/accounts/{account_id}", json={"accountName": "Job"}, headers=headers
    )
    assert updated.json()["accountName"] == "Job"
    assert httpx.post(f"{base}/api/accounts", json=body, headers=headers).status_code == 409
    stranger = subprocess.run(
        [*CLI, "token", "--tenant", str(uuid.uuid4()), "--user", str(user)],
        cwd=cwd,
        env=_clean_env(),
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert (
        httpx.get(
            f"{base}/api/accounts/{account_id}", headers={"Authorization": f"Bearer {stranger}"}
        ).status_code
        == 404
    )
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    assert (
        httpx.get(
            f"{base}/api/accounts", headers={"Authorization": f"Bearer {tampered}"}
        ).status_code
        == 401
    )
    assert httpx.delete(f"{base}/api/accounts/{account_id}", headers=headers).status_code == 204
    assert httpx.get(f"{base}/openapi.json").json()["info"]["title"] == "Email Service API"
    assert httpx.get(f"{base}/ui/").status_code == 200
    # Development secrets were generated once and kept in the data directory.
    assert (cwd / "data" / "dev-secrets.json").exists()
    assert (cwd / "data" / "email-service.sqlite3").exists()


def test_rotate_keys_reencrypts_with_the_new_primary(
    client, alice: Identity, runtime: Runtime, pg_database, tmp_path: Path
) -> None:
    created = create_account(client, alice.bearer, password="rotate-me-please")
    old_ring = runtime.settings.credential_keys
    assert old_ring is not None
    new_key = KeyRing.generate_key()
    env = _clean_env(
        DATABASE_URL=pg_database.url,
        JWT_SECRET="x" * 40,
        CREDENTIAL_KEYS=f"k2:{new_key},{old_ring.get_secret_value()}",
        DATA_DIR=str(tmp_path),
    )
    result = subprocess.run(
        [*CLI, "rotate-keys"], env=env, capture_output=True, text=True, check=True
    )
    assert "re-encrypted 1 credential(s) with key 'k2'" in result.stdout
    assert "rotate-me-please" not in result.stdout + result.stderr

    rotated = build_runtime(
        make_settings(tmp_path, pg_database.url, credential_keys=env["CREDENTIAL_KEYS"])
    )
    try:
        with rotated.db.transaction(alice.caller.tenant_id) as session:
            row = session.scalars(select(Account).where(Account.id == created["id"])).one()
            assert row.password_key_id == "k2"
            assert account_password(rotated, row) == "rotate-me-please"
    finally:
        rotated.close()
    # Running it again has nothing left to do.
    again = subprocess.run(
        [*CLI, "rotate-keys"], env=env, capture_output=True, text=True, check=True
    )
    assert "re-encrypted 0 credential(s)" in again.stdout


def test_token_command_uses_the_configured_secret(tmp_path: Path) -> None:
    import jwt

    secret = secrets.token_hex(32)
    tenant, user = uuid.uuid4(), uuid.uuid4()
    env = _clean_env(
        JWT_SECRET=secret,
        CREDENTIAL_KEYS="a:" + base64.b64encode(b"k" * 32).decode(),
        DATA_DIR=str(tmp_path),
    )
    out = subprocess.run(
        [*CLI, "token", "--tenant", str(tenant), "--user", str(user), "--ttl", "60"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    claims = jwt.decode(out, secret, algorithms=["HS256"])
    assert (claims["tenantId"], claims["userId"]) == (str(tenant), str(user))
    assert 55 <= claims["exp"] - time.time() <= 61


def test_dev_secrets_are_stable_across_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("JWT_SECRET", "CREDENTIAL_KEYS"):
        monkeypatch.delenv(name, raising=False)
    first = load_settings(data_dir=tmp_path)
    second = load_settings(data_dir=tmp_path)
    assert first.jwt_secret is not None and second.jwt_secret is not None
    assert first.jwt_secret.get_secret_value() == second.jwt_secret.get_secret_value()
    assert first.jwt_secret.get_secret_value().startswith("dev-only-")
    assert oct((tmp_path / "dev-secrets.json").stat().st_mode & 0o777) == "0o600"


def test_token_command_refuses_a_lifetime_beyond_the_maximum(tmp_path: Path) -> None:
    env = _clean_env(
        JWT_SECRET=secrets.token_hex(32),
        CREDENTIAL_KEYS="a:" + base64.b64encode(b"k" * 32).decode(),
        DATA_DIR=str(tmp_path),
        JWT_MAX_TTL_SECONDS="600",
    )
    ids = ["--tenant", str(uuid.uuid4()), "--user", str(uuid.uuid4())]
    refused = subprocess.run(
        [*CLI, "token", *ids, "--ttl", "601"], env=env, capture_output=True, text=True
    )
    assert refused.returncode == 2 and not refused.stdout
    assert "JWT_MAX_TTL_SECONDS" in refused.stderr
    issued = subprocess.run(
        [*CLI, "token", *ids, "--ttl", "600"], env=env, capture_output=True, text=True
    )
    assert issued.returncode == 0 and issued.stdout.count(".") == 2


def test_a_short_jwt_secret_stops_the_service(tmp_path: Path) -> None:
    env = _clean_env(
        JWT_SECRET="too-short",
        DATABASE_URL="postgresql://nobody@127.0.0.1:1/none",
        DATA_DIR=str(tmp_path),
    )
    result = subprocess.run([*CLI, "migrate"], env=env, capture_output=True, text=True)
    assert result.returncode == 2
    assert "JWT_SECRET is 9 bytes" in result.stderr
