"""Background work: the Dramatiq broker, actors, worker processes and the scheduler.

``install(runtime)`` gives a runtime its job queue; every process that queues or runs
jobs (API, worker, scheduler) calls it once after building its runtime.
"""

from __future__ import annotations

import weakref
from typing import Any

import dramatiq

from email_service.runtime import Runtime
from email_service.services import webhooks
from email_service.services.search import fullindex
from workers.actors import declare_actors
from workers.broker import DramatiqJobs, build_broker


def install(runtime: Runtime) -> DramatiqJobs:
    """Build the broker and actors for ``runtime`` and make them its job queue."""
    broker = build_broker(runtime.settings)
    jobs = DramatiqJobs(broker, declare_actors(broker, runtime))
    runtime.jobs = jobs
    # Changes committed by this process are handed to webhooks through these jobs.
    webhooks.install_fanout(runtime)
    # So are the search entries that a commit left to complete.
    fullindex.install(runtime)
    return jobs


_booted: weakref.WeakSet[Any] = weakref.WeakSet()


def start_worker(jobs: DramatiqJobs, threads: int) -> dramatiq.Worker:
    """Start consuming every queue of ``jobs`` on ``threads`` threads of this process."""
    broker: Any = jobs.broker
    # Middleware such as TimeLimit only starts its machinery on process boot, once per
    # broker: a worker started after another one stopped finds it running (TimeLimit's
    # thread cannot be started twice).
    if broker not in _booted:
        broker.emit_after("process_boot")
        _booted.add(broker)
    worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=100)
    worker.start()
    return worker


__all__ = ["DramatiqJobs", "install", "start_worker"]
