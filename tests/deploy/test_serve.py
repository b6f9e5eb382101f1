"""The process model of ``email-service serve``, run as the container runs it.

Each test starts the real command on the embedded default (SQLite and blobs in a temp
DATA_DIR) and talks to it over TCP: N worker processes behind one port, /metrics adding
up every worker's counts, and SIGTERM letting an in-flight request finish.

No assertion depends on timing. The server's own log lines are the synchronisation
points ("the request reached the app", "draining"); deadlines only stop a broken server
from hanging the run.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from email_service.auth import issue_token

CLI = [sys.executable, "-m", "email_service.cli"]
JWT_SECRET = "test-only-" + secrets.token_hex(16)
DEADLINE_S = 60  # a bound against hangs, never an expectation of speed
HEALTH_REQUESTS = "email_service_http_requests_total"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """``email-service serve`` in a subprocess, with its log lines collected."""

    def __init__(self, data_dir: Path, *args: str, **env: str) -> None:
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        keep = {k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "LANG", "PYTHONPATH"}}
        self.process = subprocess.Popen(
            [*CLI, "serve", "--port", str(self.port), *args],
            cwd=data_dir,
            env={
                **keep,
                "DATA_DIR": str(data_dir),
                "JWT_SECRET": JWT_SECRET,
                "CREDENTIAL_KEYS": "k1:" + base64.b64encode(secrets.token_bytes(32)).decode(),
                "MAIL_ALLOWED_HOSTS": "*.example.test",
                **env,
            },
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._log_ended = False
        self._changed = threading.Condition()
        threading.Thread(target=self._read_log, daemon=True).start()

    def _read_log(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._log_ended = True
            self._changed.notify_all()

    def log(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def wait_for_line(self, *fragments: str) -> str:
        """The first log line holding every fragment; fails if the log ends first."""
        deadline = time.monotonic() + DEADLINE_S
        with self._changed:
            while time.monotonic() < deadline:
                for line in self.lines:
                    if all(fragment in line for fragment in fragments):
                        return line
                if self._log_ended:
                    break
                self._changed.wait(0.5)
        pytest.fail(f"no log line with {fragments}; log:\n{self.log()}")

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                if httpx.get(f"{self.base}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        pytest.fail(f"the server did not become healthy; log:\n{self.log()}")

    def wait_exit(self) -> int:
        try:
            return self.process.wait(timeout=DEADLINE_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the server did not exit; log:\n{self.log()}")

    def worker_pids(self) -> set[int]:
        """uvicorn's worker processes (not multiprocessing's resource tracker)."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        pids = {int(pid) for pid in children.read_text().split()}
        return {pid for pid in pids if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()}

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def start(*args: str, **env: str) -> Server:
        data_dir = tmp_path / f"data{len(servers)}"
        data_dir.mkdir()
        server = Server(data_dir, *args, **env)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def health_count(exposition: str) -> float:
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == HEALTH_REQUESTS and labels == {
                "operation": "healthCheck",
                "status": "200",
            }:
                return float(sample.value)
    return 0.0


def _stale_counter_file(directory: Path) -> None:
    """Leave the files a previous run would leave: 1000 health checks already counted."""
    directory.mkdir()
    code = (
        "from email_service import metrics\n"
        "metrics.HTTP_REQUESTS.labels(operation='healthCheck', status='200').inc(1000)\n"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=DEADLINE_S)
    assert list(directory.glob("counter_*.db"))


# Several server processes need state they can share: the embedded default (in-memory
# queue, scheduler and limits) serves with one process only.
SHARED = {"REDIS_URL": "redis://127.0.0.1:6379/0", "QUEUE_NAMESPACE": "email-test-serve"}


def test_workers_share_the_port_and_metrics_add_up_every_worker(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    # Given a multiprocess directory holding a previous run's counts,
    prom_dir = tmp_path / "prom"
    _stale_counter_file(prom_dir)
    # when the server runs two worker processes,
    server = start_server("--workers", "2", PROMETHEUS_MULTIPROC_DIR=str(prom_dir), **SHARED)
    server.wait_healthy()
    workers = server.worker_pids()
    assert len(workers) == 2, server.log()

    # and health checks arrive concurrently until both workers have answered some,
    def per_worker() -> dict[int, float]:
        counts = {}
        for pid in workers:
            files = [str(p) for p in prom_dir.glob(f"*_{pid}.db")]
            counts[pid] = health_count_from_files(files)
        return counts

    sent = 1  # wait_healthy's successful probe
    with ThreadPoolExecutor(8) as pool:
        for _ in range(20):
            statuses = list(pool.map(lambda _: _fresh_get(server.base, "/health"), range(16)))
            assert statuses == [200] * 16
            sent += 16
            if all(per_worker().values()):
                break
    # A request is counted as its response finishes, which can be a moment after the
    # client has read it: wait (boundedly) for the last counts to reach the files.
    deadline = time.monotonic() + DEADLINE_S
    shares = per_worker()
    while sum(shares.values()) < sent and time.monotonic() < deadline:
        time.sleep(0.05)
        shares = per_worker()
    assert all(shares.values()), f"one worker answered everything: {shares}"

    # then every scrape, whichever worker answers it, reports all of them and nothing of
    # the previous run.
    for _ in range(3):
        exposition = _fresh_get_text(server.base, "/metrics")
        assert health_count(exposition) == sent == sum(shares.values())


def health_count_from_files(files: list[str]) -> float:
    total = 0.0
    for metric in MultiProcessCollector.merge(files, accumulate=False):
        for sample in metric.samples:
            if (
                sample.name == HEALTH_REQUESTS
                and sample.labels.get("operation") == "healthCheck"
                and sample.labels.get("status") == "200"
            ):
                total += sample.value
    return total


def _fresh_get(base: str, path: str) -> int:
    # A new connection per request, so the kernel hands each one to any worker.
    with httpx.Client(base_url=base, timeout=10) as client:
        return client.get(path).status_code


def _fresh_get_text(base: str, path: str) -> str:
    with httpx.Client(base_url=base, timeout=10) as client:
        response = client.get(path)
        assert response.status_code == 200
        return response.text


def test_serve_without_a_directory_makes_and_removes_its_own(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    server = start_server("--workers", "2", TMPDIR=str(tmp), **SHARED)
    server.wait_healthy()
    (made,) = tmp.glob("email-service-metrics-*")
    assert list(made.glob("counter_*.db"))
    # Two scrapes on fresh connections agree: they read the same files.
    first = health_count(_fresh_get_text(server.base, "/metrics"))
    second = health_count(_fresh_get_text(server.base, "/metrics"))
    assert first == second >= 1
    server.stop()
    assert not made.exists()


# --- SIGTERM -------------------------------------------------------------------------


def _start_slow_request(server: Server, request_id: str) -> tuple[socket.socket, bytes]:
    """Send a createAccount request except the end of its body; returns (socket, rest)."""
    token = issue_token(JWT_SECRET, uuid.uuid4(), uuid.uuid4())
    body = json.dumps(
        {
            "accountName": "Drain",
            "emailAddress": f"drain-{uuid.uuid4().hex[:8]}@example.test",
            "protocol": "imap",
            "hostname": "imap.example.test",
            "port": 993,
            "encryption": "tls",
            "username": "drain",
            "password": "pw-" + uuid.uuid4().hex,
        }
    ).encode()
    head = (
        f"POST /api/accounts HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        f"Authorization: Bearer {token}\r\nX-Request-ID: {request_id}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE_S)
    sock.sendall(head + body[:10])
    # The app has the request (it is reading the body) once the access log says so.
    server.wait_for_line(f"[{request_id}]", "started POST /api/accounts")
    return sock, body[10:]


def _read_response(sock: socket.socket) -> http.client.HTTPResponse:
    response = http.client.HTTPResponse(sock)
    response.begin()
    return response


def test_sigterm_lets_an_in_flight_request_finish(start_server: Callable[..., Server]) -> None:
    server = start_server("--workers", "1", "--graceful-timeout", "20", LOG_LEVEL="DEBUG")
    server.wait_healthy()
    # Given a request in progress (its body half sent),
    sock, rest = _start_slow_request(server, "drain-1")
    with sock:
        # when the server is told to stop,
        server.process.send_signal(signal.SIGTERM)
        server.wait_for_line("Waiting for connections to close")
        # then it takes no new connection,
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", server.port), timeout=5).close()
        # but the request in progress completes and gets its whole answer,
        sock.sendall(rest)
        response = _read_response(sock)
        created = json.loads(response.read())
    assert response.status == 201
    assert response.getheader("x-request-id") == "drain-1"
    assert created["accountName"] == "Drain"
    # and the server exits on its own once it has answered.
    assert server.wait_exit() in {0, -signal.SIGTERM}


def test_without_a_grace_period_the_in_flight_request_is_lost(
    start_server: Callable[..., Server],
) -> None:
    # The control for the test above: the same request, but no time to finish it.
    server = start_server("--workers", "1", "--graceful-timeout", "0", LOG_LEVEL="DEBUG")
    server.wait_healthy()
    sock, rest = _start_slow_request(server, "cut-1")
    with sock:
        server.process.send_signal(signal.SIGTERM)
        server.wait_exit()
        # uvicorn cancels the request: it answers a bare 500 or drops the connection.
        try:
            sock.sendall(rest)
            status: int | None = _read_response(sock).status
        except (OSError, http.client.HTTPException):
            status = None
    assert status != 201
    assert server.wait_for_line("timeout graceful shutdown exceeded")


def test_the_embedded_default_serves_with_one_process(
    start_server: Callable[..., Server],
) -> None:
    server = start_server("--workers", "3")
    server.wait_healthy()
    assert server.worker_pids() == set(), server.log()  # no worker processes: one server
    assert "one process" in server.log()
