"""The interface services use to queue background work, without knowing the broker.

``workers/`` implements it with Dramatiq (Redis in production, an in-memory broker on the
embedded default) and installs it on the runtime. A job is prepared first, so its id can
be stored in the task row, and sent only after that row is committed (``Scope.after_commit``):
a worker can never pick up a job whose row does not exist yet.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


class PreparedJob(Protocol):
    @property
    def job_id(self) -> str:
        """The broker's message id; also the task's id."""

    def send(self) -> None:
        """Hand the job to the broker."""


class JobQueue(Protocol):
    def prepare(
        self, actor: str, task_id: str, *, delay_ms: int | None = None, **kwargs: Any
    ) -> PreparedJob:
        """A job for ``actor``, not yet sent; with ``delay_ms``, run no sooner than that.

        The job's id is ``task_id`` (the broker keeps it across retries); the actor is
        called with ``task_id`` and the other JSON-able keyword arguments.
        """


class NoJobQueue:
    """Stands in until a queue is installed: preparing a job is a programming error."""

    def prepare(
        self, actor: str, task_id: str, *, delay_ms: int | None = None, **kwargs: Any
    ) -> PreparedJob:
        raise RuntimeError(f"no job queue is installed; cannot queue {actor!r}")


class RetryLater(Exception):
    """Raised by a job's service when the job should run again after a backoff.

    The service has already recorded why (task status ``retry``); any other exception
    is a bug and is not retried blindly.
    """


@dataclass(frozen=True)
class Attempt:
    """Which run of a job this is: ``number`` counts from 0; ``last`` means no retry follows."""

    number: int
    last: bool


def infrastructure_trouble(exc: BaseException) -> str | None:
    """Why ``exc`` looks like a passing outage of a store the job needs, or ``None``.

    PostgreSQL restarting (a dropped or refused connection, a deadlock, a full pool),
    Redis away, the blob store answering 5xx or not at all: a job that meets one of
    these is run again with backoff, like a network error talking to a mail server.
    A database error is one only when ``db.session.passing_trouble`` says so (by
    SQLSTATE, or SQLite's result code): PostgreSQL files a program limit (54000, a
    tsvector too long) or a lock not available alike under OperationalError, and only
    the second passes by trying again.
    """
    from sqlalchemy import exc as sa_exc

    from db.session import passing_trouble

    if isinstance(exc, sa_exc.DBAPIError):
        return "the database was briefly unavailable" if passing_trouble(exc) else None
    if isinstance(exc, sa_exc.TimeoutError):
        return "no database connection was free in time"
    try:
        import redis.exceptions as redis_exc

        if isinstance(exc, redis_exc.ConnectionError | redis_exc.TimeoutError):
            return "Redis was briefly unavailable"
    except ImportError:  # pragma: no cover - redis is a dependency
        pass
    try:
        import urllib3.exceptions
        from minio.error import S3Error, ServerError

        if isinstance(exc, ServerError | urllib3.exceptions.HTTPError):
            return "the blob store was briefly unavailable"
        if isinstance(exc, S3Error) and exc.response is not None and exc.response.status >= 500:
            return "the blob store was briefly unavailable"
    except ImportError:  # pragma: no cover - minio is a dependency
        pass
    return None
