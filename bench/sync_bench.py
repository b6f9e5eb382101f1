"""P1 (initial sync), P2 (resync without changes) and the worker half of P4."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from email.message import EmailMessage
from typing import Any

from imapclient import IMAPClient
from sqlalchemy import text

from bench.env import BenchEnv
from db.models import TENANT_TABLES
from email_service.config import load_settings
from email_service.identity import Caller
from email_service.runtime import build_runtime
from email_service.scope import open_scope
from email_service.services import accounts
from tests.servers.dovecot import MailUser
from tests.servers.mailgen import bulk

FETCH_BATCH = 500
# Moto, the only S3 server that installs here, takes about 180 uploads a second however
# many run at once. An IMAP sync uploads no attachment blobs any more (they are fetched on
# first download), so the S3 row no longer waits on it.
_S3_RIG_LIMIT = "no blobs uploaded at sync: attachments are fetched on first download"


def _client(env: BenchEnv, user: MailUser) -> IMAPClient:
    client = IMAPClient(env.dovecot.host, port=env.dovecot.imap_port, ssl=False, timeout=120)
    client._imap.debug = 0  # the fast client the baseline is meant to be
    client.login(user.email, user.password)
    return client


def fill(env: BenchEnv, user: MailUser, folders: dict[str, list[bytes]]) -> None:
    client = _client(env, user)
    try:
        for folder, messages in folders.items():
            if not client.folder_exists(folder):
                client.create_folder(folder)
            for raw in messages:
                client.append(folder, raw)
    finally:
        client.logout()


def big_message(size: int = 25 * 1024 * 1024) -> bytes:
    message = EmailMessage()
    message["From"] = "Big Sender <big@example.test>"
    message["To"] = "dana@example.test"
    message["Subject"] = "The 25 MB deck"
    message["Message-ID"] = "<big-25mb@example.test>"
    message["Date"] = "Mon, 02 Mar 2026 09:00:00 +0000"
    message.set_content("The deck is attached.")
    payload = (bytes(range(256)) * (size // 256 + 1))[:size]
    message.add_attachment(
        payload, maintype="application", subtype="octet-stream", filename="deck.bin"
    )
    return message.as_bytes()


def raw_fetch(env: BenchEnv, user: MailUser, folder: str = "INBOX") -> tuple[float, int]:
    """The baseline: the fastest plain fetch of every message, doing nothing with them."""
    began = time.perf_counter()
    client = _client(env, user)
    try:
        client.select_folder(folder, readonly=True)
        uids = client.search(["ALL"])
        count = 0
        for start in range(0, len(uids), FETCH_BATCH):
            fetched = client.fetch(uids[start : start + FETCH_BATCH], ["BODY.PEEK[]"])
            count += len(fetched)
    finally:
        client.logout()
    return time.perf_counter() - began, count


def select_loop(env: BenchEnv, user: MailUser, folders: list[str]) -> float:
    """The P2 baseline: log in, SELECT every folder, log out."""
    began = time.perf_counter()
    client = _client(env, user)
    try:
        for folder in folders:
            client.select_folder(folder, readonly=True)
    finally:
        client.logout()
    return time.perf_counter() - began


def new_account(env: BenchEnv, user: MailUser) -> tuple[Caller, str]:
    runtime = build_runtime(load_settings(**_settings_overrides(env)))
    caller = Caller(uuid.uuid4(), uuid.uuid4())
    try:
        with open_scope(runtime, caller) as scope:
            created = accounts.create_account(
                scope,
                {
                    "accountName": "Bench",
                    "emailAddress": user.email,
                    "protocol": "imap",
                    "hostname": env.dovecot.host,
                    "port": env.dovecot.imap_port,
                    "encryption": "none",
                    "username": user.email,
                    "password": user.password,
                },
            )
    finally:
        runtime.close()
    return caller, created["id"]


def _settings_overrides(env: BenchEnv) -> dict[str, Any]:
    return {key.lower(): value for key, value in env.env.items()}


def run_sync(
    env: BenchEnv,
    caller: Caller,
    account_id: str,
    *,
    force: bool = False,
    local_blobs: bool = False,
    search_index: bool = True,
    repeat: int = 1,
) -> list[dict[str, Any]]:
    """Sync in a child process (``repeat`` times in a row); the figures of each run."""
    command = [
        sys.executable, "-m", "bench.sync_child",
        str(caller.tenant_id), str(caller.user_id), account_id, "--repeat", str(repeat),
    ]  # fmt: skip
    if force:
        command.append("--force")
    extra = {"S3_ENDPOINT": ""} if local_blobs else {}
    if not search_index:
        extra["BENCH_SEARCH_INDEX"] = "off"
    profile = os.environ.get("BENCH_PYSPY")  # a path: record the sync's stacks with py-spy
    if profile:
        command = [
            "py-spy",
            "record",
            "--threads",
            "--format",
            "raw",
            "-o",
            profile,
            "--",
            *command,
        ]
    out = subprocess.run(
        command, env=env.child_env(**extra), check=True, capture_output=True, text=True
    )
    runs = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    for figures in runs:
        if figures["status"] != "success":
            raise RuntimeError(f"benchmark sync failed: {figures['error']}")
    return runs


def wipe(env: BenchEnv) -> None:
    """Empty the tables and the bucket between repetitions."""
    from db.session import make_engine

    engine = make_engine(env.database_url)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(TENANT_TABLES)} CASCADE"))
    engine.dispose()
    env.s3.delete_bucket(env.bucket)
    env.s3.client().make_bucket(env.bucket)


def _search_btree(env: BenchEnv, *, present: bool) -> None:
    """The message index that only search needs, dropped for P1's runs without search
    (on the emptied table, so it costs nothing either way)."""
    from db.session import make_engine

    engine = make_engine(env.owner_url or env.database_url)
    with engine.begin() as conn:
        if present:
            conn.execute(
                text(
                    "CREATE INDEX IF NOT EXISTS ix_messages_tenant_received "
                    "ON messages (tenant_id, received_at, id)"
                )
            )
        else:
            conn.execute(text("DROP INDEX IF EXISTS ix_messages_tenant_received"))
    engine.dispose()


def p1_initial_sync(env: BenchEnv, messages: int, reps: int) -> list[dict[str, Any]]:
    """P1 as the issue defines it (S3 included), and once more with blobs on local disk.

    The second row shows what the sync itself achieves where the S3 server is not the
    limit: moto, the S3 server we can run here, takes about 180 uploads a second.
    """
    user = env.dovecot.new_user("p1")
    print(f"P1: filling a mailbox with {messages} messages (+1 of 25 MB)...", flush=True)
    mail = list(bulk(messages, seed=1))
    mail.append(big_message())
    fill(env, user, {"INBOX": mail})
    total = len(mail)

    baseline = []
    for _ in range(reps):
        seconds, count = raw_fetch(env, user)
        assert count == total
        baseline.append(total / seconds)
    base = statistics.median(baseline)
    rows = []
    # Local blobs: the runs with the search index alternate with runs without it, so
    # the index's cost (issue 16: at most 10 %) is measured against the same conditions.
    unindexed: list[float] = []
    cpu: dict[bool, list[float]] = {True: [], False: []}  # ms per message
    # The completion of long bodies' entries after the commits (in the figures above too).
    completion: list[dict[str, float]] = []
    for local in (False, True):
        ours, rss = [], []
        ours_seconds: list[float] = []
        for rep in range(reps):
            for indexed in (True, False) if local else (True,):
                wipe(env)
                _search_btree(env, present=indexed)
                caller, account_id = new_account(env, user)
                [figures] = run_sync(
                    env, caller, account_id, local_blobs=local, search_index=indexed
                )
                assert figures["result"]["messagesAdded"] == total, figures["result"]
                speed = total / figures["seconds"]
                where = ("local blobs" if local else "S3") + ("" if indexed else ", no index")
                print(
                    f"  P1 ({where}) rep {rep + 1}: {speed:.0f} msg/s, "
                    f"{figures['cpu_seconds'] / total * 1000:.2f} ms CPU/msg "
                    f"({figures['main_thread_cpu_seconds'] / total * 1000:.2f} in the fetching "
                    "and parsing thread)"
                    + (
                        f" (of which completing {figures['index_completed']} long bodies' "
                        f"search entries after the commits: {figures['index_seconds']:.2f} s, "
                        f"{figures['index_cpu_seconds']:.2f} s CPU)"
                        if indexed
                        else ""
                    )
                )
                if local:
                    cpu[indexed].append(figures["cpu_seconds"] / total * 1000)
                    if indexed:
                        completion.append(
                            {
                                key: figures[key]
                                for key in ("index_completed", "index_seconds", "index_cpu_seconds")
                            }
                        )
                if not indexed:
                    unindexed.append(speed)
                    continue
                ours.append(speed)
                if local:
                    ours_seconds.append(figures["seconds"])
                rss.append(figures["maxrss_mib"])
        value = statistics.median(ours)
        row: dict[str, Any] = {
            "id": "P1",
            "what": f"initial sync of {total} messages (fetch, parse, PostgreSQL, "
            + ("attachments on local disk)" if local else f"S3; {_S3_RIG_LIMIT})"),
            "baseline": f"{base:.0f} msg/s raw BODY.PEEK[] fetch",
            "value": f"{value:.0f} msg/s",
            "ratio": value / base,
            "target": ">= 0.5",
            "met": value / base >= 0.5,
            "raw": {"baseline_msg_s": baseline, "ours_msg_s": ours, "rss_mib": rss},
        }
        if not local:
            row["worker_peak_rss_mib"] = max(rss)
            print(f"  P1 (S3): {_S3_RIG_LIMIT}")
        rows.append(row)
    _search_btree(env, present=True)
    # The sync itself (its messages findable when it ends, by their fields and the first
    # 600 characters of their bodies) against the same sync without the index; then the
    # completion of long bodies' entries, which a worker runs after the commits.
    without = statistics.median(unindexed)
    sync_only = statistics.median(
        total / (seconds - done["index_seconds"])
        for seconds, done in zip(ours_seconds, completion, strict=True)
    )
    rows.append(
        {
            "id": "P1",
            "what": "search index cost in the sync's transactions (fields + body prefix): "
            "local-disk sync with the index against without",
            "baseline": f"{without:.0f} msg/s without the index",
            "value": f"{sync_only:.0f} msg/s",
            "ratio": sync_only / without,
            "target": ">= 0.9",
            "met": sync_only / without >= 0.9,
            "raw": {"with_msg_s": ours, "without_msg_s": unindexed},
        }
    )
    # Elapsed time on a shared machine moves by tens of per cent between runs; CPU time
    # (the sync process and its database backends) does not.
    without_cpu = statistics.median(cpu[False])
    sync_cpu = statistics.median(
        ms - done["index_cpu_seconds"] / total * 1000
        for ms, done in zip(cpu[True], completion, strict=True)
    )
    rows.append(
        {
            "id": "P1",
            "what": "search index cost in CPU in the sync's transactions: sync process + "
            "database backends, per message",
            "baseline": f"{without_cpu:.2f} ms without the index",
            "value": f"{sync_cpu:.2f} ms",
            "ratio": without_cpu / sync_cpu,
            "target": ">= 0.9",
            "met": without_cpu / sync_cpu >= 0.9,
            "raw": {"with_cpu_ms": cpu[True], "without_cpu_ms": cpu[False]},
        }
    )
    whole_cpu = statistics.median(cpu[True])
    completed = statistics.median(done["index_completed"] for done in completion)
    rows.append(
        {
            "id": "P1",
            "what": f"the same with the whole bodies indexed after the commits "
            f"({completed:.0f} long bodies completed by the job, "
            f"{statistics.median(d['index_cpu_seconds'] for d in completion) / total * 1000:.2f}"
            " ms CPU per message of the sync)",
            "baseline": f"{without_cpu:.2f} ms without the index",
            "value": f"{whole_cpu:.2f} ms",
            "ratio": without_cpu / whole_cpu,
            "target": "reported (after the commit, off the sync's path)",
            "raw": {"completion_after_commit": completion},
        }
    )
    return rows


def p2_resync(env: BenchEnv, folders: int, per_folder: int, reps: int) -> dict[str, Any]:
    user = env.dovecot.new_user("p2")
    names = [f"Folder{i:02d}" for i in range(folders)]
    print(f"P2: filling {folders} folders x {per_folder} messages...", flush=True)
    generated = bulk(folders * per_folder, seed=2, attachment_ratio=0.0)
    fill(env, user, {name: [next(generated) for _ in range(per_folder)] for name in names})
    wipe(env)
    caller, account_id = new_account(env, user)
    run_sync(env, caller, account_id)  # the initial sync, not timed

    # Dovecot's own folders (INBOX, Sent, ...) are selected by both sides.
    client = _client(env, user)
    try:
        every = [name for _flags, _delim, name in client.list_folders()]
    finally:
        client.logout()
    # Each timed resync runs right after a baseline loop, so both sides of a pair meet
    # the same load (the shared machine swings either side 2-4x within a minute).
    # A worker is a long-running process: in each, a first resync warms it up (its
    # session pool, its database pool) and is not timed.
    baseline: list[float] = []
    runs: list[dict[str, Any]] = []
    for _ in range(reps):
        baseline.append(select_loop(env, user, every))
        runs.extend(run_sync(env, caller, account_id, repeat=2)[1:])
    for figures in runs:
        assert figures["result"]["messagesAdded"] == 0 and figures["result"]["messagesUpdated"] == 0
    ours = [figures["seconds"] for figures in runs]
    trips = [figures["round_trips"] / len(every) for figures in runs]
    # Counts that do not move with the machine's load: per resync, the IMAP commands,
    # and the database statements, transactions and round trips of the sync itself.
    imap_trips = statistics.median(figures["round_trips"] for figures in runs)
    statements = statistics.median(figures["statements"] for figures in runs)
    transactions = statistics.median(figures["transactions"] for figures in runs)
    db_trips = statistics.median(figures["db_round_trips"] for figures in runs)
    base, value = statistics.median(baseline), statistics.median(ours)
    # The ratio is the median of the pairs' ratios (each pair measured back to back).
    ratio = statistics.median(o / b for o, b in zip(ours, baseline, strict=True))
    return {
        "id": "P2",
        "what": f"resync, no changes, {folders} folders x {per_folder} messages",
        "baseline": f"{base * 1000:.0f} ms bare SELECT loop over {len(every)} folders",
        "value": (
            f"{value * 1000:.0f} ms (ratio: median of {reps} back-to-back pairs); "
            f"per resync {imap_trips:.0f} IMAP commands, "
            f"{statements:.0f} statements in {transactions:.0f} transactions, "
            f"{db_trips:.0f} database round trips"
        ),
        "ratio": ratio,
        "target": "<= 1.5",
        "met": ratio <= 1.5,
        "raw": {
            "baseline_s": baseline,
            "ours_s": ours,
            "round_trips_per_folder": trips,
            "imap_round_trips": [figures["round_trips"] for figures in runs],
            "statements": [figures["statements"] for figures in runs],
            "transactions": [figures["transactions"] for figures in runs],
            "db_round_trips": [figures["db_round_trips"] for figures in runs],
        },
    }
