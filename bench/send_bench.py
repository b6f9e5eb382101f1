"""P5: sending through the API (enqueue, worker, SMTP) against plain smtplib."""

from __future__ import annotations

import os
import signal
import smtplib
import ssl
import statistics
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from bench.api_bench import _free_port, server
from bench.env import REDIS_URL, BenchEnv
from db.models import Task
from db.session import Database
from email_service.auth import issue_token
from tests.servers.smtp import SmtpServer

LATENCY_SAMPLES = 20
# One worker process as deployed (`email-service worker`'s default thread count).
WORKER_THREADS = 4
# Requests in flight at once during the burst.
SENDERS = 8
BODY = ("Hello Dana, the figures for the quarter are attached below in words. " * 30).strip()


def _baseline(smtp: SmtpServer, env: BenchEnv, sender: Any, to: str, count: int) -> float:
    """Messages/s of smtplib alone: connect, STARTTLS, AUTH, one message, QUIT, each time."""
    context = ssl.create_default_context(cafile=str(env.dovecot.ca_file))
    began = time.perf_counter()
    for n in range(count):
        message = EmailMessage()
        message["From"] = sender.email
        message["To"] = to
        message["Subject"] = f"Baseline message {n}"
        message["Message-ID"] = f"<baseline-{uuid.uuid4().hex}@example.test>"
        message.set_content(BODY)
        with smtplib.SMTP(smtp.host, smtp.port, local_hostname="bench.example.test") as client:
            client.starttls(context=context)
            client.login(sender.email, sender.password)
            client.send_message(message)
    return count / (time.perf_counter() - began)


def p5_send(env: BenchEnv, count: int, reps: int) -> list[dict[str, Any]]:
    # PIPELINING offered, as Postfix and Gmail do (smtplib, the baseline, never pipelines).
    smtp = SmtpServer(env.dovecot, pipelining=True)
    smtp.start()
    sender, recipient = env.dovecot.new_user("p5-from"), env.dovecot.new_user("p5-to")
    try:
        print(f"P5: sending {count} messages, smtplib then the API...", flush=True)
        baseline = [_baseline(smtp, env, sender, recipient.email, count) for _ in range(reps)]
        ours, latencies, cpu = [], [], []
        for _ in range(reps):
            rate, latency, cpu_ms = _through_the_api(env, smtp, sender, recipient.email, count)
            ours.append(rate)
            latencies.append(latency)
            cpu.append(cpu_ms)
    finally:
        smtp.close()
    base, value = statistics.median(baseline), statistics.median(ours)
    latency = statistics.median(latencies)
    return [
        {
            "id": "P5",
            "what": f"{count} messages sent through the API, one worker ({WORKER_THREADS} threads)",
            "baseline": f"{base:.0f} msg/s plain smtplib, one connection each",
            "value": f"{value:.0f} msg/s",
            "ratio": value / base,
            "target": ">= 0.5",
            "met": value / base >= 0.5,
            "raw": {
                "baseline_msg_s": baseline,
                "ours_msg_s": ours,
                # CPU per send of the API process and the worker (all threads).
                "cpu_ms_per_send_api_worker": cpu,
            },
        },
        {
            "id": "P5",
            "what": "median time from a request's task to the SMTP server's acceptance "
            f"({LATENCY_SAMPLES} lone messages)",
            "baseline": "300 ms",
            "value": f"{latency:.0f} ms",
            "ratio": latency / 300,
            "target": "< 1",
            "met": latency < 300,
            "raw": {"median_ms": latencies},
        },
    ]


def _cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) the process ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _spy(pid: int, path: str) -> subprocess.Popen[bytes]:
    """py-spy recording ``pid`` until interrupted: ``path``.txt (raw, with idle samples)."""
    spy = subprocess.Popen(
        [
            "py-spy",
            "record",
            "--pid",
            str(pid),
            "--idle",
            "--threads",
            "--rate",
            "200",
            "--format",
            "raw",
            "-o",
            f"{path}.txt",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)  # attached before the first request
    return spy


def _through_the_api(
    env: BenchEnv, smtp: SmtpServer, sender: Any, to: str, count: int
) -> tuple[float, float, list[float]]:
    """Sends/s of a burst, the lone messages' median latency (ms), and the CPU per send
    (ms) of the API process and of the worker during the burst."""
    namespace = f"email-bench-{uuid.uuid4().hex[:8]}"
    extra = {"REDIS_URL": REDIS_URL, "QUEUE_NAMESPACE": namespace}
    port = _free_port()
    serve = [sys.executable, "-m", "email_service.cli", "serve", "--port", str(port)]
    command = [
        sys.executable,
        "-m",
        "email_service.cli",
        "worker",
        "--threads",
        str(WORKER_THREADS),
    ]
    profile = os.environ.get("BENCH_PYSPY")  # a path: record the worker's stacks
    if profile:
        command = ["py-spy", "record", "-d", "10", "--format", "raw", "-o", profile, "--", *command]
    # A directory: record the API process and the worker (py-spy, wall-clock samples of
    # every thread, idle ones too) while the burst of sends runs.
    profile_dir = os.environ.get("BENCH_PYSPY_DIR")
    worker = subprocess.Popen(
        command,
        env=env.child_env(**extra),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    tenant, user = uuid.uuid4(), uuid.uuid4()
    queued_in = 0.0
    token = issue_token(env.env["JWT_SECRET"], tenant, user, 3600)
    headers = {"Authorization": f"Bearer {token}"}
    spies: list[subprocess.Popen[bytes]] = []
    clients: list[httpx.Client] = []
    try:
        with server(serve, env.child_env(**extra), port) as api:
            base = f"http://127.0.0.1:{port}"
            account = httpx.post(
                f"{base}/api/accounts",
                headers=headers,
                json={
                    "accountName": "Bench sender",
                    "emailAddress": sender.email,
                    "protocol": "imap",
                    "hostname": env.dovecot.host,
                    "port": env.dovecot.imap_port,
                    "encryption": "none",
                    "username": sender.email,
                    "password": sender.password,
                    "smtpHostname": smtp.host,
                    "smtpPort": smtp.port,
                    "smtpEncryption": "starttls",
                },
            ).json()
            received_before = len(smtp.received)

            # One client for every request, as an application sending mail would keep
            # one: a new httpx client per request built an SSL context each time (26 ms
            # of this process's CPU, measured under load, on the cores that the API and
            # the worker share).
            client = httpx.Client(limits=httpx.Limits(max_connections=SENDERS))
            clients.append(client)

            def send(n: int) -> str:
                response = client.post(
                    f"{base}/api/compose/send",
                    headers=headers,
                    json={
                        "accountId": account["id"],
                        "to": [to],
                        "subject": f"API message {n}",
                        "body": BODY,
                    },
                    timeout=30,
                )
                response.raise_for_status()
                return str(response.json()["taskId"])

            if profile_dir:
                spies = [
                    _spy(api.pid, f"{profile_dir}/api"),
                    _spy(worker.pid, f"{profile_dir}/worker"),
                ]
            cpu_before = _cpu_seconds(api.pid), _cpu_seconds(worker.pid)
            began = time.perf_counter()
            with ThreadPoolExecutor(SENDERS) as pool:
                task_ids = list(pool.map(send, range(count)))
            queued_in = time.perf_counter() - began
            deadline = time.monotonic() + 600
            while len(smtp.received) - received_before < count:
                if time.monotonic() > deadline:
                    raise RuntimeError("the worker did not deliver every message in time")
                time.sleep(0.01)
            rate = count / (time.perf_counter() - began)
            cpu_ms = [
                1000 * (_cpu_seconds(pid) - before) / count
                for pid, before in zip((api.pid, worker.pid), cpu_before, strict=True)
            ]
            for spy in spies:
                spy.send_signal(signal.SIGINT)  # py-spy writes what it has on SIGINT
                spy.wait(timeout=60)
            # Latency without a backlog: one message at a time, each waited for.
            lone: list[str] = []
            for n in range(LATENCY_SAMPLES):
                expected = len(smtp.received) + 1
                lone.append(send(count + n))
                while len(smtp.received) < expected:
                    if time.monotonic() > deadline:
                        raise RuntimeError("a lone message was not delivered in time")
                    time.sleep(0.005)
    finally:
        for client in clients:
            client.close()
        for spy in spies:
            if spy.poll() is None:
                spy.kill()
        worker.terminate()
        worker.wait(timeout=60)
    database = Database.from_url(env.database_url)
    try:
        with database.transaction(tenant) as session:
            rows = session.scalars(select(Task).where(Task.id.in_(task_ids + lone))).all()
            accepted = {row.id for row in rows if "acceptedAt" in (row.payload or {})}
            waits = [row.payload["acceptedAt"] - row.created_at for row in rows if row.id in lone]
    finally:
        database.dispose()
    if len(accepted) != count + LATENCY_SAMPLES:
        raise RuntimeError(f"only {len(accepted)} tasks recorded their acceptance")
    print(
        f"  P5: {rate:.0f} msg/s ({count} requests answered in {queued_in:.1f} s), "
        f"enqueue->accepted median {statistics.median(waits):.0f} ms; CPU per send: "
        f"API {cpu_ms[0]:.1f} ms, worker {cpu_ms[1]:.1f} ms"
    )
    return rate, float(statistics.median(waits)), cpu_ms


__all__ = ["p5_send"]
