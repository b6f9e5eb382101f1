"""Fixtures for webhook tests: a runtime whose worker delivers, and receivers on loopback.

The runtime is the embedded shape (in-process broker and worker) on the session's
PostgreSQL database, allowed to deliver to 127.0.0.1 over plain HTTP, with retry
delays of tens of milliseconds so a test of three attempts takes a fraction of a second.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

import workers
from email_service.app import create_app
from email_service.config import Settings
from email_service.runtime import Runtime, build_runtime, set_runtime
from tests.conftest import make_settings


@pytest.fixture(scope="session")
def webhook_settings(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    assert settings.database_url is not None
    return make_settings(
        tmp_path_factory.mktemp("webhook-data"),
        settings.database_url,
        jwt_secret=settings.jwt_secret,
        credential_keys=settings.credential_keys,
        webhook_allowed_hosts=["127.0.0.1", "localhost", "*.example.test"],
        webhook_allow_http=True,
        webhook_timeout_seconds=1.0,
        webhook_min_backoff_ms=30,
        webhook_max_backoff_ms=120,
        rate_limit_enabled=False,
    )


@pytest.fixture(scope="session")
def webhook_runtime(webhook_settings: Settings, runtime: Runtime) -> Iterator[Runtime]:
    # ``runtime`` (the root fixture) has migrated the database already.
    rt = build_runtime(webhook_settings)
    jobs = workers.install(rt)
    running = workers.start_worker(jobs, threads=2)
    yield rt
    running.stop()
    rt.close()
    set_runtime(runtime)


@pytest.fixture(scope="session")
def webhook_app(webhook_runtime: Runtime):  # type: ignore[no-untyped-def]
    return create_app(runtime=webhook_runtime, validate_responses=True)


@pytest.fixture
def api(webhook_app, webhook_runtime: Runtime, runtime: Runtime):  # type: ignore[no-untyped-def]
    """An HTTP client on the webhook runtime, whose worker delivers."""
    set_runtime(webhook_runtime)
    with webhook_app.test_client() as test_client:
        yield test_client


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


Behaviour = Callable[[BaseHTTPRequestHandler], None]


@dataclass
class Receiver:
    """A webhook receiver on loopback: records every request and answers as scripted.

    ``script`` holds the answers to the next requests (a status code, or a function that
    writes its own answer); once it is used up every request gets ``default``.
    """

    url: str
    requests: list[Received] = field(default_factory=list)
    script: list[int | Behaviour] = field(default_factory=list)
    default: int = 200
    _changed: threading.Condition = field(default_factory=threading.Condition)

    def next_answer(self) -> int | Behaviour:
        with self._changed:
            return self.script.pop(0) if self.script else self.default

    def record(self, item: Received) -> None:
        with self._changed:
            self.requests.append(item)
            self._changed.notify_all()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.requests) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"the receiver got {len(self.requests)} requests, expected {count}"
                    )
                self._changed.wait(left)
            return list(self.requests)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    box: dict[str, Receiver] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            own = box["receiver"]
            own.record(Received(self.path, dict(self.headers.items()), body, time.monotonic()))
            answer = own.next_answer()
            if callable(answer):
                answer(self)
                return
            self.send_response(answer)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    box["receiver"] = Receiver(url=f"http://127.0.0.1:{server.server_address[1]}/hook")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield box["receiver"]
    server.shutdown()
    server.server_close()


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, period: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("the condition did not hold in time")
        time.sleep(period)
