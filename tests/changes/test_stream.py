"""streamChanges over real HTTP (uvicorn): events, resuming, keep-alive, other processes.

The stream is read line by line on a thread of its own, so a test can wait for the next
event with a timeout instead of blocking on the socket.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from email_service import metrics
from email_service.runtime import Runtime
from email_service.services.changes import HOUR_MS, Cursor
from tests.changes.conftest import read_feed, start_cursor
from tests.conftest import Identity, PgDatabase, new_identity, serve_app

ROOT = Path(__file__).resolve().parents[2]


class Stream:
    """An open event stream; ``next_event`` waits for the next ``id/event/data`` block."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.lines: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for line in self.response.iter_lines():
                self.lines.put(line)
        except (httpx.HTTPError, RuntimeError):
            pass
        self.lines.put(None)

    def next_line(self, timeout: float) -> str | None:
        return self.lines.get(timeout=timeout)

    def next_event(self, timeout: float = 5.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        fields: dict[str, Any] = {}
        while True:
            line = self.next_line(max(0.01, deadline - time.monotonic()))
            if line is None:
                raise AssertionError("the stream ended")
            if line == "":
                if "data" in fields:
                    return fields
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(": ")
            fields[name] = json.loads(value) if name == "data" else value


@contextmanager
def open_stream(
    base_url: str, identity: Identity, headers: dict[str, str] | None = None, **params: Any
) -> Iterator[Stream]:
    with (
        httpx.Client(base_url=base_url, timeout=httpx.Timeout(10, read=30)) as http,
        http.stream(
            "GET",
            "/api/changes/stream",
            params=params,
            headers={**identity.bearer, **(headers or {})},
        ) as response,
    ):
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        try:
            yield Stream(response)
        finally:
            # The reader thread sits in recv() on the socket, and close() alone does not
            # end a socket another thread is reading: shut it down so the server sees the
            # client go (as it does when a real client closes).
            sock = response.extensions["network_stream"].get_extra_info("socket")
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def served(app_factory: Any) -> Iterator[tuple[str, Runtime]]:
    own, app = app_factory(changes_keepalive_seconds=0.3)
    with serve_app(app, own) as url:
        yield url, own


def _create_account(base_url: str, identity: Identity, name: str = "Streamed") -> dict[str, Any]:
    from tests.factories import account_body

    response = httpx.post(
        f"{base_url}/api/accounts", json=account_body(accountName=name), headers=identity.bearer
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def test_a_change_reaches_an_open_stream_as_id_event_and_data(
    served: tuple[str, Runtime], alice: Identity, mallory: Identity
) -> None:
    url, own = served
    streams_before = metrics.CHANGE_STREAMS._value.get()
    with open_stream(url, alice) as mine, open_stream(url, mallory) as theirs:
        account = _create_account(url, alice)
        event = mine.next_event(timeout=3)

        assert event["event"] == "account.created"
        assert event["data"]["type"] == "account.created"
        assert event["data"]["accountId"] == account["id"]
        assert event["id"] == event["data"]["id"]
        with httpx.Client(base_url=url) as http:
            listed, _ = read_feed(http, alice, Cursor(0, int(time.time() * 1000)).encode())
        assert [c["id"] for c in listed] == [event["id"]]
        with pytest.raises(queue.Empty):
            theirs.next_event(timeout=0.5)
        assert own.change_waker().waiting() == 2
        assert metrics.CHANGE_STREAMS._value.get() - streams_before == 2
    # A client that goes ends its stream on the server (nothing left waiting).
    deadline = time.monotonic() + 5
    while own.change_waker().waiting() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert own.change_waker().waiting() == 0
    assert metrics.CHANGE_STREAMS._value.get() == streams_before


def test_a_stream_resumes_after_last_event_id_or_since(
    served: tuple[str, Runtime], alice: Identity
) -> None:
    url, _ = served
    with httpx.Client(base_url=url) as http:
        cursor = start_cursor(http, alice)
        first = _create_account(url, alice, "First")
        second = _create_account(url, alice, "Second")
        changes, _ = read_feed(http, alice, cursor)
    after_first = changes[0]["id"]

    with open_stream(url, alice, headers={"Last-Event-ID": after_first}) as resumed:
        assert resumed.next_event()["data"]["accountId"] == second["id"]
    with open_stream(url, alice, since=cursor) as from_start:
        got = [from_start.next_event()["data"]["accountId"] for _ in range(2)]
        assert got == [first["id"], second["id"]]


def test_an_idle_stream_sends_keep_alive_comments(
    served: tuple[str, Runtime], alice: Identity
) -> None:
    url, _ = served
    with open_stream(url, alice) as stream:
        lines = [stream.next_line(timeout=2) for _ in range(4)]
    assert ": keep-alive" in lines


def test_an_expired_cursor_answers_410_before_any_stream(
    served: tuple[str, Runtime], alice: Identity
) -> None:
    url, own = served
    retention = int(own.settings.changes_retention_hours * HOUR_MS)
    old = Cursor(1, int(time.time() * 1000) - retention - 1000).encode()
    response = httpx.get(
        f"{url}/api/changes/stream", headers={**alice.bearer, "Last-Event-ID": old}
    )
    assert response.status_code == 410
    assert response.json()["code"] == "CURSOR_EXPIRED"
    assert httpx.get(f"{url}/api/changes/stream").status_code == 401


def test_a_change_committed_by_another_process_wakes_the_stream(
    app_factory: Any, alice: Identity, pg_database: PgDatabase
) -> None:
    # A long keep-alive: only the PostgreSQL notification can wake the stream in time.
    own, app = app_factory(changes_keepalive_seconds=30)
    script = (
        "import sys, uuid\n"
        "from db.session import Database\n"
        "from db.changes import record_change\n"
        "db = Database.from_url(sys.argv[1])\n"
        "tenant, user = uuid.UUID(sys.argv[2]), uuid.UUID(sys.argv[3])\n"
        "with db.transaction(tenant) as session:\n"
        "    record_change(session, tenant_id=tenant, user_id=user, type='folder.updated',\n"
        "                  data={'from': 'elsewhere'})\n"
    )
    with serve_app(app, own) as url, open_stream(url, alice) as stream:
        assert own.change_waker().listening.wait(5)
        started = time.monotonic()
        subprocess.run(
            [
                sys.executable,
                "-c",
                script,
                pg_database.url,
                str(alice.caller.tenant_id),
                str(alice.caller.user_id),
            ],
            check=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            timeout=60,
        )
        event = stream.next_event(timeout=5)
        took = time.monotonic() - started
    assert event["data"]["data"] == {"from": "elsewhere"}
    assert took < 5


def test_many_open_streams_leave_ordinary_requests_unaffected(
    served: tuple[str, Runtime], alice: Identity
) -> None:
    url, _ = served
    streams = 100
    opened = threading.Barrier(streams + 1, timeout=30)
    done = threading.Event()

    def hold(identity: Identity) -> None:
        with open_stream(url, identity):
            opened.wait()
            done.wait(30)

    threads = [
        threading.Thread(target=hold, args=(new_identity(),), daemon=True) for _ in range(streams)
    ]
    for thread in threads:
        thread.start()
    try:
        opened.wait()
        timings = []
        with httpx.Client(base_url=url, timeout=5) as http:
            for _ in range(5):
                started = time.monotonic()
                response = http.get("/api/accounts", headers=alice.bearer)
                timings.append(time.monotonic() - started)
                assert response.status_code == 200
        assert max(timings) < 1.0, timings
    finally:
        done.set()
        for thread in threads:
            thread.join(timeout=10)


def test_the_embedded_default_streams_its_own_commits(tmp_path: Path, runtime: Runtime) -> None:
    from db.migrate import upgrade
    from email_service.app import create_app
    from email_service.runtime import build_runtime, set_runtime
    from tests.conftest import make_settings

    embedded = build_runtime(make_settings(tmp_path, f"sqlite:///{tmp_path / 'embedded.sqlite3'}"))
    try:
        upgrade(embedded.db.engine)
        app = create_app(runtime=embedded)
        identity = new_identity()
        with serve_app(app, embedded) as url, open_stream(url, identity) as stream:
            account = _create_account(url, identity)
            event = stream.next_event(timeout=3)
        assert event["event"] == "account.created"
        assert event["data"]["accountId"] == account["id"]
    finally:
        embedded.close()
        set_runtime(runtime)
