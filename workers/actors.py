"""Dramatiq actors: thin, idempotent, ids in; the work happens in ``email_service``."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

import dramatiq
from dramatiq.middleware import CurrentMessage
from sqlalchemy.exc import DBAPIError

from email_service.jobs import Attempt, RetryLater, infrastructure_trouble
from email_service.runtime import Runtime
from email_service.services import (
    compose,
    delivery,
    purge,
    syncing,
    tasks,
    webhooks,
    writeback,
)
from email_service.services.search import fullindex

log = logging.getLogger(__name__)


def _attempt(max_retries: int) -> Attempt:
    message = CurrentMessage.get_current_message()
    number = int(message.options.get("retries", 0)) if message is not None else 0
    return Attempt(number=number, last=number >= max_retries)


def declare_actors(
    broker: dramatiq.Broker, runtime: Runtime
) -> dict[str, dramatiq.Actor[Any, Any]]:
    """Bind this service's actors to ``broker``, working against ``runtime``."""
    settings = runtime.settings
    max_retries = settings.task_max_retries

    def retry_when(retries: int, exc: BaseException) -> bool:
        # Services raise RetryLater after recording why. An outage of the database,
        # Redis or the blob store may keep them from even recording it: run again too.
        # Anything else is a bug that another run would only repeat.
        transient = isinstance(exc, RetryLater) or infrastructure_trouble(exc) is not None
        return transient and retries < max_retries

    def failing_for_good(run: Callable[[str, str], None]) -> Callable[[str, str], None]:
        # A job that met a database error no retry passes (a program limit, say) would
        # leave its task active, and the outbox would send it again and again: its task
        # says why. Other errors its service did not expect are left as they were: they
        # stand for a worker that died (the task stays ``started`` and is taken up again).
        def job(task_id: str, tenant_id: str) -> None:
            try:
                run(task_id, tenant_id)
            except DBAPIError as exc:
                if infrastructure_trouble(exc) is None:
                    reason = tasks.describe_failure(exc)
                    try:
                        tasks.fail_unfinished(runtime, uuid.UUID(tenant_id), task_id, reason)
                    except Exception:
                        log.exception("task %s: its failure could not be recorded", task_id)
                raise

        return job

    options: dict[str, Any] = {
        "broker": broker,
        "retry_when": retry_when,
        "min_backoff": settings.task_min_backoff_ms,
        "max_backoff": settings.task_max_backoff_ms,
    }

    def sync_account(task_id: str, tenant_id: str) -> None:
        syncing.run_sync(runtime, uuid.UUID(tenant_id), task_id, _attempt(max_retries))

    def send_email(task_id: str, tenant_id: str) -> None:
        delivery.run_send(runtime, uuid.UUID(tenant_id), task_id, _attempt(max_retries))

    def save_draft(task_id: str, tenant_id: str) -> None:
        delivery.run_draft(runtime, uuid.UUID(tenant_id), task_id, _attempt(max_retries))

    def write_flags(task_id: str, tenant_id: str) -> None:
        writeback.run_flags(runtime, uuid.UUID(tenant_id), task_id, _attempt(max_retries))

    def purge_account(task_id: str, tenant_id: str) -> None:
        purge.run_purge(runtime, uuid.UUID(tenant_id), task_id, _attempt(max_retries))

    def deliver_webhook(task_id: str, tenant_id: str, webhook_id: str) -> None:
        webhooks.run_deliveries(runtime, uuid.UUID(tenant_id), webhook_id)

    def fan_out_changes(task_id: str, tenant_id: str, user_id: str) -> None:
        webhooks.fan_out(runtime, uuid.UUID(tenant_id), uuid.UUID(user_id))

    def complete_search_index(task_id: str, tenant_id: str) -> None:
        fullindex.complete_pending(runtime, uuid.UUID(tenant_id))

    declare = dramatiq.actor
    return {
        # Webhook jobs keep their own schedule (dispatch queues the next run with the
        # backoff it chose) and a queue of their own, so a slow receiver never holds up
        # mail; an unexpected error is left to the sweep rather than retried blindly.
        webhooks.DELIVER_ACTOR: declare(
            actor_name=webhooks.DELIVER_ACTOR,
            queue_name="webhooks",
            broker=broker,
            max_retries=0,
            time_limit=120_000,
        )(deliver_webhook),
        webhooks.FANOUT_ACTOR: declare(
            actor_name=webhooks.FANOUT_ACTOR,
            queue_name="webhooks",
            broker=broker,
            max_retries=0,
            time_limit=120_000,
        )(fan_out_changes),
        syncing.SYNC_ACTOR: declare(
            actor_name=syncing.SYNC_ACTOR,
            queue_name="sync",
            time_limit=settings.sync_time_limit_ms,
            **options,
        )(failing_for_good(sync_account)),
        # Search entries completed after a sync's commits: on the sync queue, behind the
        # syncs that made them; a failed run is left to the scheduler's sweep.
        fullindex.INDEX_ACTOR: declare(
            actor_name=fullindex.INDEX_ACTOR,
            queue_name="sync",
            broker=broker,
            max_retries=0,
            time_limit=300_000,
        )(complete_search_index),
        # Sends get a queue of their own: a backlog of syncs must not hold up mail.
        compose.SEND_ACTOR: declare(actor_name=compose.SEND_ACTOR, queue_name="send", **options)(
            failing_for_good(send_email)
        ),
        compose.DRAFT_ACTOR: declare(
            actor_name=compose.DRAFT_ACTOR, queue_name="writeback", **options
        )(failing_for_good(save_draft)),
        purge.PURGE_ACTOR: declare(actor_name=purge.PURGE_ACTOR, queue_name="writeback", **options)(
            failing_for_good(purge_account)
        ),
        writeback.FLAGS_ACTOR: declare(
            actor_name=writeback.FLAGS_ACTOR, queue_name="writeback", **options
        )(failing_for_good(write_flags)),
    }
