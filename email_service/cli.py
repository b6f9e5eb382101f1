"""The ``email-service`` command: serve, migrate, token, rotate-keys, worker, scheduler,
watcher."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from email_service.config import Settings, load_settings

log = logging.getLogger("email_service")


def _configure_logging(settings: Settings) -> None:
    from email_service.logging_setup import configure

    configure(settings)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    if settings.database_url is None:
        # The embedded default has nobody to run migrations for it.
        _migrate(settings)
    elif not settings.database_allow_privileged_role:
        # The server processes check again as they build their runtime; checking here
        # first refuses with one clear message instead of a traceback per process.
        _refuse_privileged_role(settings)
    if settings.embedded and args.workers > 1:
        # Its job queue, scheduler and rate limits live in the memory of one process;
        # several would each run a scheduler and count requests apart.
        log.warning("the embedded default serves with one process (set REDIS_URL for more)")
        args.workers = 1
    with _metrics_multiprocess_dir(args.workers):
        uvicorn.run(
            "email_service.app:create_app_from_env",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_level=settings.log_level.lower(),
            # Keep our handler (JSON, redaction, request ids) for uvicorn's records too.
            log_config=None,
            timeout_graceful_shutdown=args.graceful_timeout,
            access_log=False,  # email_service.web.middleware writes the access log
        )
    return 0


PROMETHEUS_MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"


@contextlib.contextmanager
def _metrics_multiprocess_dir(workers: int) -> Iterator[None]:
    """Give the server processes one prometheus-client multiprocess directory.

    With several processes each would otherwise count only its own requests, and a
    scrape would see whichever process answered it. An operator-provided directory is
    emptied of the previous run's files (as prometheus-client requires); without one,
    N > 1 workers get a temporary directory, removed on exit. The variable must be set
    before the server processes start and import ``email_service.metrics``, so this
    process does not import prometheus-client at all.
    """
    configured = os.environ.get(PROMETHEUS_MULTIPROC_DIR)
    if configured:
        directory = Path(configured)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):
            stale.unlink()
        yield
        return
    if workers <= 1:
        yield
        return
    directory = Path(tempfile.mkdtemp(prefix="email-service-metrics-"))
    os.environ[PROMETHEUS_MULTIPROC_DIR] = str(directory)
    try:
        yield
    finally:
        del os.environ[PROMETHEUS_MULTIPROC_DIR]
        shutil.rmtree(directory, ignore_errors=True)


def _migrate(settings: Settings) -> None:
    from db.migrate import upgrade
    from db.session import make_engine

    engine = make_engine(settings.resolved_database_url())
    try:
        upgrade(engine)
    finally:
        engine.dispose()


def _refuse_privileged_role(settings: Settings) -> None:
    from db.roles import refuse_privileged_role
    from db.session import make_engine

    engine = make_engine(settings.resolved_database_url(), pool_size=1)
    try:
        refuse_privileged_role(engine)
    finally:
        engine.dispose()


def cmd_migrate(_args: argparse.Namespace, settings: Settings) -> int:
    _migrate(settings)
    print("database is at the latest schema")
    return 0


def cmd_token(args: argparse.Namespace, settings: Settings) -> int:
    from email_service.auth import issue_token, token_policy

    assert settings.jwt_secret is not None
    try:
        token = issue_token(
            settings.jwt_secret.get_secret_value(),
            args.tenant,
            args.user,
            args.ttl,
            policy=token_policy(settings),
        )
    except ValueError as refusal:  # a lifetime the service would refuse
        log.error("%s", refusal)
        return 2
    print(token)
    return 0


def cmd_rotate_keys(_args: argparse.Namespace, settings: Settings) -> int:
    from email_service.runtime import build_runtime
    from email_service.services.keys import rotate_credentials

    on_terminal = sys.stderr.isatty()

    def progress(kind: str, done: int) -> None:
        # One line rewritten in place; only for a person watching, never in logs.
        sys.stderr.write(f"\rre-encrypting {kind} secrets: {done} done")
        sys.stderr.flush()

    runtime = build_runtime(settings)
    try:
        report = rotate_credentials(runtime, progress=progress if on_terminal else None)
    finally:
        runtime.close()
    if on_terminal:
        sys.stderr.write("\n")
    print(f"re-encrypted {report.changed} credential(s) with key '{report.primary_id}'")
    for name, reason in sorted(report.failures.items()):
        print(f"FAILED {name}: {reason}")
    left = {kind: n for kind, n in report.remaining.items() if n}
    if left:
        listed = ", ".join(f"{n} {kind} secret(s)" for kind, n in sorted(left.items()))
        print(
            f"still on old keys: {listed}; keep the old keys in CREDENTIAL_KEYS until "
            "these are fixed (update the account's password) or deleted, then run again"
        )
    if not report.complete:
        return 1
    print("no secret is left on an old key: the old keys can be removed")
    return 0


def _wait_for_signal() -> None:
    """Block until SIGTERM or SIGINT (the process manager asks us to stop)."""
    import signal
    import threading

    stop = threading.Event()
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    import workers
    from email_service.runtime import build_runtime

    if settings.embedded:
        log.error("the worker needs REDIS_URL: on the embedded default the API runs the jobs")
        return 2
    runtime = build_runtime(settings)
    jobs = workers.install(runtime)
    worker = workers.start_worker(jobs, args.threads)
    log.info("worker running with %d thread(s)", args.threads)
    try:
        _wait_for_signal()
    finally:
        # Jobs still running are left unacknowledged and go back to the queue, where
        # another worker picks them up; sync and send are safe to run again.
        log.info("worker stopping")
        worker.stop(timeout=args.stop_timeout * 1000)
        runtime.close()
    return 0


def cmd_scheduler(_args: argparse.Namespace, settings: Settings) -> int:
    import workers
    from email_service.runtime import build_runtime
    from workers.scheduler import run_scheduler

    if settings.embedded:
        log.error("the scheduler needs REDIS_URL: on the embedded default the API runs it")
        return 2
    runtime = build_runtime(settings)
    workers.install(runtime)
    return _run_until_signal(runtime, run_scheduler, "scheduler")


def _run_until_signal(runtime: Any, loop: Callable[[Any, Any], None], name: str) -> int:
    """Run ``loop(runtime, stop)`` on a thread until SIGTERM or SIGINT, then stop it and close."""
    import threading

    stop = threading.Event()
    thread = threading.Thread(target=loop, args=(runtime, stop), name=name)
    thread.start()
    try:
        _wait_for_signal()
    finally:
        stop.set()
        thread.join()
        runtime.close()
    return 0


def cmd_watcher(args: argparse.Namespace, settings: Settings) -> int:
    import workers
    from email_service.runtime import build_runtime
    from email_service.watcher import run_watcher

    if settings.embedded:
        log.error("the watcher needs REDIS_URL: on the embedded default the API runs it")
        return 2
    runtime = build_runtime(settings)
    workers.install(runtime)  # it queues syncs
    if args.metrics_port:
        from prometheus_client import start_http_server

        from email_service.metrics import registry

        start_http_server(args.metrics_port, addr=args.metrics_host, registry=registry())
    # On a signal, watches end and leases are handed back, so other watchers take over at once.
    return _run_until_signal(runtime, run_watcher, "watcher")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="email-service", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP API")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=5000)
    serve.add_argument("--workers", type=int, default=1, help="server processes")
    serve.add_argument(
        "--graceful-timeout",
        type=int,
        default=25,
        help="seconds to finish in-flight requests after SIGTERM",
    )
    serve.set_defaults(handler=cmd_serve)

    migrate = commands.add_parser("migrate", help="apply database migrations")
    migrate.set_defaults(handler=cmd_migrate)

    token = commands.add_parser("token", help="print a JWT for the configured secret")
    token.add_argument("--tenant", type=uuid.UUID, required=True)
    token.add_argument("--user", type=uuid.UUID, required=True)
    token.add_argument(
        "--ttl", type=int, default=3600, help="seconds of validity, at most JWT_MAX_TTL_SECONDS"
    )
    token.set_defaults(handler=cmd_token)

    rotate = commands.add_parser("rotate-keys", help="re-encrypt credentials with the primary key")
    rotate.set_defaults(handler=cmd_rotate_keys)

    worker = commands.add_parser("worker", help="run background jobs (sync, send)")
    worker.add_argument("--threads", type=int, default=4, help="jobs run at the same time")
    worker.add_argument(
        "--stop-timeout", type=int, default=25, help="seconds to let running jobs finish"
    )
    worker.set_defaults(handler=cmd_worker)

    scheduler = commands.add_parser("scheduler", help="queue syncs as their interval passes")
    scheduler.set_defaults(handler=cmd_scheduler)

    watcher = commands.add_parser("watcher", help="watch mailboxes (IDLE/NOTIFY) and sync changes")
    watcher.add_argument("--metrics-port", type=int, default=0, help="serve /metrics here")
    watcher.add_argument("--metrics-host", default="0.0.0.0")  # noqa: S104 - pod port
    watcher.set_defaults(handler=cmd_watcher)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from email_service.config import ConfigurationError

    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except ConfigurationError as refusal:
        print(f"email-service: {refusal}", file=sys.stderr)
        return 2
    _configure_logging(settings)
    from db.roles import PrivilegedRole

    try:
        result: int = args.handler(args, settings)
    except PrivilegedRole as refusal:
        log.error("%s", refusal)
        return 2
    return result


if __name__ == "__main__":
    sys.exit(main())
