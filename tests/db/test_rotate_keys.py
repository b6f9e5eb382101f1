"""rotate-keys finishes: it waits for locked rows, reports what it cannot decrypt, and says
what is left on old keys (exit status 1) instead of reporting success."""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, update

from db.models import Account
from email_service.cli import cmd_rotate_keys
from email_service.crypto import KeyRing
from email_service.runtime import Runtime, build_runtime, set_runtime
from email_service.services.accounts import WIPED_KEY_ID, account_password
from email_service.services.keys import rotate_credentials
from tests.conftest import Identity, PgDatabase, make_settings
from tests.factories import create_account

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def new_ring(runtime: Runtime) -> str:
    old = runtime.settings.credential_keys
    assert old is not None
    return f"k2:{KeyRing.generate_key()},{old.get_secret_value()}"


@pytest.fixture
def rotated(
    runtime: Runtime, pg_database: PgDatabase, tmp_path: Path, new_ring: str
) -> Iterator[Runtime]:
    """A runtime whose key ring has a new primary key, k2."""
    rt = build_runtime(make_settings(tmp_path, pg_database.url, credential_keys=new_ring))
    yield rt
    rt.close()
    set_runtime(runtime)


def _key_ids(runtime: Runtime) -> dict[str, str]:
    with runtime.db.transaction(system=True) as session:
        rows = session.execute(select(Account.id, Account.password_key_id)).all()
        return {account_id: key_id for account_id, key_id in rows}


def test_a_locked_row_is_waited_for_not_skipped(
    client, alice: Identity, runtime: Runtime, rotated: Runtime
) -> None:
    ids = [create_account(client, alice.bearer)["id"] for _ in range(3)]
    # Given another transaction holding the last account locked for a moment
    locked, release = threading.Event(), threading.Event()

    def hold() -> None:
        with runtime.db.transaction(system=True) as session:
            session.execute(select(Account).where(Account.id == max(ids)).with_for_update())
            locked.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    assert locked.wait(10)
    threading.Timer(0.5, release.set).start()
    # When keys are rotated in batches of two (the last batch is the locked row)
    report = rotate_credentials(rotated, batch=2)
    holder.join()
    # Then every account moved to the new key, the locked one too
    assert report.complete and report.changed == 3
    assert set(_key_ids(runtime).values()) == {"k2"}


@pytest.fixture
def damaged_account(client, alice: Identity, runtime: Runtime) -> str:
    account_id: str = create_account(client, alice.bearer)["id"]
    with runtime.db.transaction(system=True) as session:
        session.execute(
            update(Account).where(Account.id == account_id).values(password_ciphertext=b"\0" * 40)
        )
    return account_id


def test_an_undecryptable_row_is_reported_and_the_rest_rotated(
    client, alice: Identity, runtime: Runtime, rotated: Runtime, damaged_account: str
) -> None:
    good = create_account(client, alice.bearer, password="still-readable")["id"]
    report = rotate_credentials(rotated)
    assert report.failures == {
        f"account {damaged_account}": "stored credential failed authentication"
    }
    assert report.remaining == {"account": 1, "webhook": 0} and not report.complete
    with rotated.db.transaction(system=True) as session:
        row = session.scalars(select(Account).where(Account.id == good)).one()
        assert row.password_key_id == "k2"
        assert account_password(rotated, row) == "still-readable"


def test_the_command_names_failures_and_exits_non_zero(
    client, alice: Identity, pg_database: PgDatabase, new_ring: str, damaged_account: str
) -> None:
    create_account(client, alice.bearer)
    env = {
        "PATH": "/usr/bin:/bin",
        "DATABASE_URL": pg_database.url,
        "JWT_SECRET": "x" * 40,
        "CREDENTIAL_KEYS": new_ring,
        "DATA_DIR": "/tmp",
    }
    result = subprocess.run(
        [sys.executable, "-m", "email_service.cli", "rotate-keys"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "re-encrypted 1 credential(s) with key 'k2'" in result.stdout
    assert f"FAILED account {damaged_account}: stored credential failed" in result.stdout
    assert "still on old keys: 1 account secret(s)" in result.stdout
    assert "\r" not in result.stderr  # no progress line when nobody watches


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_shown_on_a_terminal(
    client,
    alice: Identity,
    rotated: Runtime,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for _ in range(2):
        create_account(client, alice.bearer)
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert cmd_rotate_keys(argparse.Namespace(), rotated.settings) == 0
    assert "\rre-encrypting account secrets: 2 done" in terminal.getvalue()
    assert "no secret is left on an old key" in capsys.readouterr().out


def test_a_deleted_accounts_password_is_wiped_not_rotated(
    client, alice: Identity, runtime: Runtime, rotated: Runtime
) -> None:
    # An account deleted before deletion wiped secrets still holds its ciphertext.
    account_id = create_account(client, alice.bearer)["id"]
    with runtime.db.transaction(system=True) as session:
        session.execute(update(Account).where(Account.id == account_id).values(deleted_at=1))
    report = rotate_credentials(rotated)
    assert report.complete
    with runtime.db.transaction(system=True) as session:
        row = session.scalars(select(Account).where(Account.id == account_id)).one()
        assert (row.password_key_id, row.password_ciphertext) == (WIPED_KEY_ID, b"")


def test_a_lock_held_too_long_is_reported_not_waited_for_forever(
    client, alice: Identity, runtime: Runtime, rotated: Runtime
) -> None:
    account_id = create_account(client, alice.bearer)["id"]
    locked, release = threading.Event(), threading.Event()

    def hold() -> None:
        with runtime.db.transaction(system=True) as session:
            session.execute(select(Account).where(Account.id == account_id).with_for_update())
            locked.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert locked.wait(10)
        report = rotate_credentials(rotated, lock_wait=0.3)
    finally:
        release.set()
        holder.join()
    assert report.failures == {
        "account rows after id ''": "locked by another transaction for more than 0.3 s"
    }
    assert report.remaining["account"] == 1 and not report.complete
    # Once the lock is gone, a second run finishes.
    assert rotate_credentials(rotated).complete
