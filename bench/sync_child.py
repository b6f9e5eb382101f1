"""One sync, run the way a worker runs it, in a process of its own.

``python -m bench.sync_child TENANT USER ACCOUNT [--force] [--repeat N]`` prints one JSON
line per sync: the seconds the job took (with the completion of the search entries it
left pending, which a worker runs after its commits; also given apart), the process's
peak RSS and the task's result.
A process of its own gives a clean peak RSS for the worker figure (P4); ``--repeat``
runs further syncs in the same, warmed-up process, as a long-running worker would.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import uuid

from bench.memory import peak_rss_mib
from db import textindex
from email_service.config import load_settings
from email_service.identity import Caller
from email_service.jobs import Attempt
from email_service.mail import imap as imap_module
from email_service.runtime import build_runtime
from email_service.scope import JobUnit, open_scope
from email_service.services import syncing as sync
from email_service.services.accounts import load_account
from email_service.services.search import fullindex
from email_service.services.tasks import TaskReport


class _Unsent:
    """A job queue that only records: the benchmark runs the job itself, right here."""

    class _Job:
        def __init__(self, task_id: str) -> None:
            self.job_id = task_id

        def send(self) -> None:
            pass

    def prepare(self, actor: str, task_id: str, **kwargs: object) -> _Job:
        return self._Job(task_id)


def _watch_memory() -> None:
    """Diagnostics: at exit, print where the memory was allocated at its peak."""
    import atexit
    import threading
    import tracemalloc

    tracemalloc.start(8)
    best: dict[str, object] = {"size": 0, "snap": None}

    def sample() -> None:
        while True:
            current, _ = tracemalloc.get_traced_memory()
            if current > int(best["size"]):  # type: ignore[call-overload]
                best["size"], best["snap"] = current, tracemalloc.take_snapshot()
            time.sleep(0.05)

    threading.Thread(target=sample, daemon=True).start()

    def report() -> None:
        snap = best["snap"]
        if snap is not None:
            print(f"# peak traced {int(best['size']) / 2**20:.0f} MiB")  # type: ignore[call-overload]
            for stat in snap.statistics("traceback")[:8]:  # type: ignore[attr-defined]
                print(
                    f"# {stat.size / 2**20:.1f} MiB",
                    " <- ".join(
                        f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno}" for f in stat.traceback[:4]
                    ),
                )

    atexit.register(report)


def _cpu_seconds(runtime: object) -> float:
    """CPU time of this process and of the database backends serving this database.

    Unlike elapsed time, this hardly moves with what else runs on a shared machine, so
    it can tell a few per cent apart (P1's search index cost).
    """
    import resource

    from sqlalchemy import text

    own = resource.getrusage(resource.RUSAGE_SELF)
    total = own.ru_utime + own.ru_stime
    if not runtime.db.is_postgres:  # type: ignore[attr-defined]
        return total
    with runtime.db.engine.connect() as conn:  # type: ignore[attr-defined]
        pids = conn.execute(
            text(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND backend_type = 'client backend'"
            )
        ).scalars()
        ticks = os.sysconf("SC_CLK_TCK")
        for pid in pids:
            try:
                with open(f"/proc/{pid}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


class _SqlCounter:
    """Statements, transactions and database round trips of one process's engine.

    Unlike elapsed time these do not move with the machine's load. A round trip is a
    statement, a transaction's BEGIN (psycopg sends it before the first statement; the
    tenant's ``set_config`` goes with it in one pipeline, not counted as a statement) or
    its COMMIT/ROLLBACK; statements on autocommit connections (the account's lock)
    have no BEGIN or COMMIT.
    """

    def __init__(self, engine: object) -> None:
        from sqlalchemy import event

        self.statements = self.transactions = self.round_trips = 0
        event.listen(engine, "before_cursor_execute", self._statement)
        event.listen(engine, "begin", self._begin)
        event.listen(engine, "commit", self._end)
        event.listen(engine, "rollback", self._end)

    def _statement(self, *_args: object) -> None:
        self.statements += 1
        self.round_trips += 1

    def _begin(self, connection: object) -> None:
        if not _autocommit(connection):
            self.transactions += 1
            self.round_trips += 1

    def _end(self, connection: object) -> None:
        if not _autocommit(connection):
            self.round_trips += 1

    def snapshot(self) -> tuple[int, int, int]:
        return self.statements, self.transactions, self.round_trips


def _autocommit(connection: object) -> bool:
    options = connection.get_execution_options()  # type: ignore[attr-defined]
    return bool(options.get("isolation_level") == "AUTOCOMMIT")


def _without_search_index() -> None:
    """P1's comparison run: the mail store writes no search index (nor builds its text)."""
    from email_service.mailstore import messages as store

    store._documents = lambda rows, _attachments: [None] * len(rows)  # type: ignore[assignment,list-item]
    store.index_messages = lambda *_args, **_kwargs: None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("tenant", type=uuid.UUID)
    parser.add_argument("user", type=uuid.UUID)
    parser.add_argument("account")
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--repeat", type=int, default=1, help="syncs in this one process")
    args = parser.parse_args()

    runtime = build_runtime(load_settings())
    runtime.jobs = _Unsent()

    # Count IMAP commands: every ImapSession this process opens adds its round trips
    # (a session kept open by the worker's pool counts in every sync that uses it).
    sessions: list[imap_module.ImapSession] = []
    original_init = imap_module.ImapSession.__init__

    def counting_init(self: imap_module.ImapSession, *a: object, **k: object) -> None:
        original_init(self, *a, **k)  # type: ignore[arg-type]
        sessions.append(self)

    imap_module.ImapSession.__init__ = counting_init  # type: ignore[method-assign]

    if os.environ.get("BENCH_SEARCH_INDEX") == "off":
        _without_search_index()
    if os.environ.get("BENCH_TRACEMALLOC"):
        _watch_memory()
    sql = _SqlCounter(runtime.db.engine)
    # A worker completes search entries only after a commit that left some pending (the
    # listener ``fullindex.install`` registers queues the job); so does this process.
    left_pending: set[object] = set()
    textindex.LISTENERS.add(lambda _engine, tenants: left_pending.update(tenants))
    for _ in range(args.repeat):
        with open_scope(runtime, Caller(args.tenant, args.user)) as scope:
            account = load_account(scope, args.account, for_update=True)
            task_id = sync.request_sync(scope, account, force=args.force)["taskId"]
        cpu_before = _cpu_seconds(runtime)
        trips_before = sum(s.round_trips for s in sessions)
        sql_before = sql.snapshot()
        thread_cpu_before = time.thread_time()
        began = time.perf_counter()
        profile_to = os.environ.get("BENCH_PROFILE")
        if profile_to:
            import cProfile

            cProfile.runctx(
                "sync.run_sync(runtime, args.tenant, task_id, Attempt(0, last=True))",
                globals(),
                locals(),
                profile_to,
            )
        else:
            sync.run_sync(runtime, args.tenant, task_id, Attempt(0, last=True))
        sync_seconds = time.perf_counter() - began
        # The sync's fetching and parsing thread alone (the storing thread and the
        # database are in cpu_seconds): its share moves less with the machine's load.
        main_thread_cpu = time.thread_time() - thread_cpu_before
        trips = sum(s.round_trips for s in sessions) - trips_before
        statements, transactions, db_trips = (
            after - before for after, before in zip(sql.snapshot(), sql_before, strict=True)
        )
        sync_cpu = _cpu_seconds(runtime) - cpu_before
        # The search entries the sync left to complete, as the worker completes them after
        # its commits: part of the sync's cost, so counted in its figures (and shown apart).
        # (Timed apart: the CPU reading above is the bench's own, not the sync's.)
        completed, index_began = 0, time.perf_counter()
        if left_pending:
            left_pending.clear()
            completed = fullindex.complete_pending(runtime, args.tenant, seconds=None)
        seconds = sync_seconds + time.perf_counter() - index_began
        cpu = _cpu_seconds(runtime) - cpu_before
        task = TaskReport(JobUnit(runtime, args.tenant), task_id).load()
        assert task is not None
        print(
            json.dumps(
                {
                    "seconds": seconds,
                    "cpu_seconds": cpu,
                    "main_thread_cpu_seconds": main_thread_cpu,
                    "index_completed": completed,
                    "index_seconds": seconds - sync_seconds,
                    "index_cpu_seconds": cpu - sync_cpu,
                    "maxrss_mib": peak_rss_mib(),
                    "status": task.status,
                    "error": task.error,
                    "result": task.result,
                    "round_trips": trips,
                    # The sync's own database work (not the search completion after it).
                    "statements": statements,
                    "transactions": transactions,
                    "db_round_trips": db_trips,
                }
            ),
            flush=True,
        )
    runtime.close()


if __name__ == "__main__":
    main()
