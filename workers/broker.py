"""The Dramatiq broker and the job queue the services see.

Redis in production (``REDIS_URL``), an in-memory broker on the embedded default. Each
runtime gets a broker of its own and actors bound to it (no global broker), so a
process — or a test run — can hold more than one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import dramatiq
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import CurrentMessage, default_middleware

from email_service.config import Settings

#: Out of a million broker commands, how many also run the queue maintenance.
_MAINTENANCE_CHANCE = 50_000


def build_broker(settings: Settings) -> dramatiq.Broker:
    middleware = [m() for m in default_middleware] + [CurrentMessage()]
    if settings.redis_url:
        from dramatiq.brokers.redis import RedisBroker

        return RedisBroker(
            url=settings.redis_url,
            namespace=settings.queue_namespace,
            middleware=middleware,
            # A worker silent for this long is dead: its unacknowledged messages go back
            # to their queues at the next maintenance. Dramatiq runs maintenance on one
            # command in a thousand by default, which with a few idle workers took five
            # minutes; one in twenty keeps the whole delay near the timeout.
            heartbeat_timeout=settings.queue_heartbeat_timeout_ms,
            maintenance_chance=_MAINTENANCE_CHANCE,
        )
    return StubBroker(middleware=middleware)


@dataclass(frozen=True)
class _Job:
    broker: dramatiq.Broker
    message: dramatiq.Message[Any]
    delay_ms: int | None = None

    @property
    def job_id(self) -> str:
        return str(self.message.message_id)

    def send(self) -> None:
        self.broker.enqueue(self.message, delay=self.delay_ms)


class DramatiqJobs:
    """``email_service.jobs.JobQueue`` on a Dramatiq broker."""

    def __init__(self, broker: dramatiq.Broker, actors: dict[str, dramatiq.Actor[Any, Any]]):
        self.broker = broker
        self.actors = actors

    def prepare(
        self, actor: str, task_id: str, *, delay_ms: int | None = None, **kwargs: Any
    ) -> _Job:
        message = self.actors[actor].message_with_options(kwargs={"task_id": task_id, **kwargs})
        # The task row's id is the message id: stable across retries, and what the
        # worker is handed back.
        return _Job(self.broker, message.copy(message_id=task_id), delay_ms)

    @property
    def can_inspect(self) -> bool:
        """Whether :meth:`queued_job_ids` can answer (Redis; not the in-memory broker)."""
        return hasattr(self.broker, "client") and hasattr(self.broker, "namespace")

    def queued_job_ids(self, actors: Iterable[str]) -> set[str]:
        """The job ids the broker holds for ``actors``' queues: ready, delayed, or taken by
        a worker and not yet acknowledged (Redis keeps each message in its queue's hash
        until then, under an id of its own, so the hashes are read)."""
        broker: Any = self.broker
        client = broker.client
        found: set[str] = set()
        queues = {self.actors[actor].queue_name for actor in actors}
        for queue in queues:
            for key in (f"{broker.namespace}:{queue}.msgs", f"{broker.namespace}:{queue}.DQ.msgs"):
                for _redis_id, encoded in client.hscan_iter(key, count=500):
                    with suppress(ValueError, KeyError, TypeError):
                        found.add(str(json.loads(encoded)["message_id"]))
        return found
