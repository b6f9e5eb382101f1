"""The embedded default as a newcomer runs it: `email-service serve` against a local Dovecot.

Also: `serve` killed (SIGKILL) mid-sync and started again resumes the same task.

No database, broker or S3 configured: SQLite, the in-process worker and scheduler, and
blobs in the data directory. Only the mail server's CA and the loopback allow-list are
set, as anyone trying the service against a local server would set them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.servers.dovecot import Dovecot, MailUser
from tests.servers.mailgen import EXPECTED, corpus
from tests.test_cli import CLI, _clean_env, _free_port, serving


@pytest.fixture
def embedded(tmp_path: Path, dovecot: Dovecot) -> Iterator[tuple[str, Path]]:
    env = _clean_env(
        MAIL_ALLOWED_HOSTS="127.0.0.1,localhost",
        MAIL_CA_FILE=str(dovecot.ca_file),
        SCHEDULER_TICK_SECONDS="0.2",
        # The test polls several times a second; the limits are tested on their own.
        RATE_LIMIT_ENABLED="false",
        # The schedule is what this fixture's test shows; push has a test of its own.
        EMBEDDED_WATCHER="false",
    )
    with serving([*CLI, "serve"], tmp_path, env) as base:
        yield base, tmp_path


@pytest.fixture
def embedded_push(tmp_path: Path, dovecot: Dovecot) -> Iterator[tuple[str, Path]]:
    env = _clean_env(
        MAIL_ALLOWED_HOSTS="127.0.0.1,localhost",
        MAIL_CA_FILE=str(dovecot.ca_file),
        RATE_LIMIT_ENABLED="false",
        WATCHER_TICK_SECONDS="0.2",
    )
    with serving([*CLI, "serve"], tmp_path, env) as base:
        yield base, tmp_path


def _token(cwd: Path) -> dict[str, str]:
    token = subprocess.run(
        [*CLI, "token", "--tenant", str(uuid.uuid4()), "--user", str(uuid.uuid4())],
        cwd=cwd,
        env=_clean_env(),
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return {"Authorization": f"Bearer {token}"}


def _until(check: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.2)


def test_embedded_default_syncs_a_local_dovecot_by_request_and_by_schedule(
    embedded: tuple[str, Path], dovecot: Dovecot, mail_user: MailUser
) -> None:
    base, cwd = embedded
    headers = _token(cwd)
    samples = corpus()
    for name in ("plain_ascii", "mixed_attachments", "thread_1", "thread_3"):
        dovecot.append(mail_user, "INBOX", samples[name])
    dovecot.append(mail_user, "Sent", samples["thread_2"], flags=["\\Seen"])
    # A long body: its words past its start (and past 10 KB) are indexed
    # by the in-process worker after the sync's commit.
    long_body = EmailMessage()
    long_body["Subject"] = "Field notes"
    long_body["From"] = "notes@example.test"
    long_body.set_content("Start. " + "a " * 400 + "kestrel " + "b " * 6000 + "osprey")
    dovecot.append(mail_user, "Sent", long_body.as_bytes(), flags=["\\Seen"])
    created = httpx.post(
        f"{base}/api/accounts",
        headers=headers,
        json={
            "accountName": "Local",
            "emailAddress": mail_user.email,
            "protocol": "imap",
            "hostname": "localhost",
            "port": dovecot.imaps_port,
            "encryption": "tls",
            "username": mail_user.email,
            "password": mail_user.password,
            "syncInterval": 60,
            # Off until the requested sync is checked: with the scheduler ticking every
            # 0.2 s, a scheduled sync of the new account could otherwise run first and
            # leave the requested one nothing to add (the part on schedules is below).
            "isSyncEnabled": False,
        },
    )
    assert created.status_code == 201, created.text
    account = created.json()["id"]

    # A sync by request reaches success
    started = httpx.post(f"{base}/api/sync/{account}", json={}, headers=headers)
    assert started.status_code == 202
    task_url = f"{base}/api/sync/task/{started.json()['taskId']}"
    task = _until(
        lambda: (
            (t := httpx.get(task_url, headers=headers).json())["status"] in ("success", "failure")
            and t
        )
    )
    assert task["status"] == "success", task
    assert task["result"]["messagesAdded"] == 6

    def found(q: str) -> list[str] | None:
        hits = httpx.get(f"{base}/api/messages/search", params={"q": q}, headers=headers)
        assert hits.status_code == 200, hits.text
        subjects = [hit["subject"] for hit in hits.json()["messages"]]
        return subjects or None

    assert _until(lambda: found("kestrel")) == ["Field notes"]
    assert found("osprey in:sent") == ["Field notes"]

    folders = {
        f["name"]: f
        for f in httpx.get(f"{base}/api/{account}/folders", headers=headers).json()["folders"]
    }
    inbox = folders["INBOX"]
    assert inbox["messageCount"] == 4
    page = httpx.get(f"{base}/api/{account}/folders/{inbox['id']}/messages", headers=headers).json()
    subjects = {m["subject"]: m for m in page["messages"]}
    mixed = httpx.get(
        f"{base}/api/{account}/messages/{subjects[EXPECTED['mixed_attachments']['subject']]['id']}",
        headers=headers,
    ).json()
    assert mixed["body"] and len(mixed["attachments"]) == 2
    for attachment in mixed["attachments"]:
        assert "downloadUrl" not in attachment  # a local directory cannot presign
        data = httpx.get(
            f"{base}/api/{account}/attachments/{attachment['id']}/download", headers=headers
        )
        assert data.status_code == 200 and len(data.content) == attachment["size"]
    first = httpx.get(
        f"{base}/api/{account}/messages/{subjects[EXPECTED['thread_1']['subject']]['id']}",
        headers=headers,
    ).json()
    last = httpx.get(
        f"{base}/api/{account}/messages/{subjects[EXPECTED['thread_3']['subject']]['id']}",
        headers=headers,
    ).json()
    assert first["conversationId"] == last["conversationId"]

    # New mail and a flag change show up after the next scheduled sync, with no request
    enabled = httpx.put(
        f"{base}/api/accounts/{account}", json={"isSyncEnabled": True}, headers=headers
    )
    assert enabled.status_code == 200, enabled.text
    dovecot.append(mail_user, "INBOX", samples["utf8_qp"])
    client = dovecot.imap(mail_user)
    try:
        client.select_folder("INBOX")
        client.add_flags(client.search(["ALL"])[:1], ["\\Seen"])
    finally:
        client.logout()
    # The interval is a minute; move the last sync a minute back instead of waiting.
    with sqlite3.connect(cwd / "data" / "email-service.sqlite3") as db:
        db.execute("UPDATE accounts SET last_sync_at = last_sync_at - 61000")
        db.execute("UPDATE tasks SET created_at = created_at - 61000")

    def updated() -> dict[str, Any] | None:
        listing = httpx.get(f"{base}/api/{account}/folders", headers=headers).json()
        box = next(f for f in listing["folders"] if f["name"] == "INBOX")
        return box if box["messageCount"] == 5 and box["unreadCount"] == 4 else None

    assert _until(updated)


def test_embedded_default_pushes_new_mail_without_a_request(
    embedded_push: tuple[str, Path], dovecot: Dovecot, mail_user: MailUser
) -> None:
    # Given `serve` alone (its watcher on a thread) and an account synced once an hour
    base, cwd = embedded_push
    headers = _token(cwd)
    created = httpx.post(
        f"{base}/api/accounts",
        headers=headers,
        json={
            "accountName": "Pushed",
            "emailAddress": mail_user.email,
            "protocol": "imap",
            "hostname": "localhost",
            "port": dovecot.imaps_port,
            "encryption": "tls",
            "username": mail_user.email,
            "password": mail_user.password,
            "syncInterval": 3600,
        },
    )
    assert created.status_code == 201, created.text
    account = created.json()["id"]
    started = httpx.post(f"{base}/api/sync/{account}", json={}, headers=headers)
    task_url = f"{base}/api/sync/task/{started.json()['taskId']}"
    _until(lambda: httpx.get(task_url, headers=headers).json()["status"] == "success")
    time.sleep(1.0)  # the watcher's next tick takes the account

    # When mail arrives on the server
    dovecot.append(mail_user, "INBOX", corpus()["plain_ascii"])

    # Then it is listed soon, with no request and an hour before the schedule
    def listed() -> bool:
        folders = httpx.get(f"{base}/api/{account}/folders", headers=headers).json()["folders"]
        return any(f["name"] == "INBOX" and f["messageCount"] == 1 for f in folders)

    assert _until(listed, timeout=20)


def _start_serve(cwd: Path, env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    """``serve`` in a process group of its own, so SIGKILL reaches all of it at once."""
    log = (cwd / f"serve-{port}-{time.monotonic_ns()}.log").open("wb")
    process = subprocess.Popen(
        [*CLI, "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=cwd,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{base}/livez", timeout=1).status_code == 200
        except httpx.HTTPError:
            assert process.poll() is None, "serve exited"
            return False

    _until(up)
    return process


def _stored(database: Path) -> int:
    try:
        with contextlib.closing(sqlite3.connect(database, timeout=5)) as db:
            return int(db.execute("SELECT count(*) FROM messages").fetchone()[0])
    except sqlite3.OperationalError:  # not created yet
        return 0


def _kill(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)


def test_serve_killed_mid_sync_resumes_the_same_task_when_started_again(
    tmp_path: Path, dovecot: Dovecot, mail_user: MailUser
) -> None:
    # Given 300 messages and the embedded default syncing them in batches of 10
    client = dovecot.imap(mail_user)
    try:
        for n in range(300):
            body = f"Subject: bulk {n:03d}\r\nFrom: a@example.test\r\n\r\nbody {n}\r\n"
            client.append("INBOX", body.encode())
    finally:
        client.logout()
    env = _clean_env(
        MAIL_ALLOWED_HOSTS="127.0.0.1,localhost",
        MAIL_CA_FILE=str(dovecot.ca_file),
        SYNC_BATCH_SIZE="10",
        RATE_LIMIT_ENABLED="false",
    )
    port = int(_free_port())
    base = f"http://127.0.0.1:{port}"
    process = _start_serve(tmp_path, env, port)
    try:
        headers = _token(tmp_path)
        created = httpx.post(
            f"{base}/api/accounts",
            headers=headers,
            json={
                "accountName": "Bulk",
                "emailAddress": mail_user.email,
                "protocol": "imap",
                "hostname": "localhost",
                "port": dovecot.imaps_port,
                "encryption": "tls",
                "username": mail_user.email,
                "password": mail_user.password,
                "isSyncEnabled": False,  # only the requested sync runs
            },
        )
        assert created.status_code == 201, created.text
        account = created.json()["id"]
        task_id = httpx.post(f"{base}/api/sync/{account}", json={}, headers=headers).json()[
            "taskId"
        ]
        task_url = f"{base}/api/sync/task/{task_id}"

        # When serve is killed (SIGKILL) in the middle of the sync, once a first batch is in
        database = tmp_path / "data" / "email-service.sqlite3"
        deadline = time.monotonic() + 60
        while _stored(database) == 0:
            assert time.monotonic() < deadline, "no batch was stored"
            time.sleep(0.01)
        _kill(process)
        stored_before = (
            sqlite3.connect(tmp_path / "data" / "email-service.sqlite3")
            .execute("SELECT count(*) FROM messages")
            .fetchone()[0]
        )
        assert 0 < stored_before < 300

        # and started again on the same data
        process = _start_serve(tmp_path, env, port)

        # Then the same task is resumed and finishes, with every message exactly once
        task = _until(
            lambda: (
                (t := httpx.get(task_url, headers=headers).json())["status"]
                in ("success", "failure")
                and t
            ),
            60,
        )
        assert task["status"] == "success", task
        folders = httpx.get(f"{base}/api/{account}/folders", headers=headers).json()["folders"]
        inbox = next(f for f in folders if f["name"] == "INBOX")
        assert inbox["messageCount"] == 300
        with sqlite3.connect(tmp_path / "data" / "email-service.sqlite3") as db:
            subjects = [row[0] for row in db.execute("SELECT subject FROM messages")]
        assert len(subjects) == 300 and len(set(subjects)) == 300
    finally:
        _kill(process)
