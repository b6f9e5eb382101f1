"""Delivering changes to webhooks: at least once, in order per webhook, bounded retries.

The guarantees, step by step:

1. **Recorded with the change.** :func:`record_deliveries` adds one ``webhook_deliveries``
   row per matching webhook in the caller's transaction, with the exact body every
   attempt will sign. A change that commits has its deliveries; one that rolls back has
   none.
2. **Queued after commit.** The caller queues :data:`DELIVER_ACTOR` for each webhook it
   was given back, after its commit (:func:`wake_after_commit`). A job that is lost
   (a broker outage, a process killed between commit and send) is made good by
   :func:`sweep`, which the scheduler runs: it queues every webhook with a due delivery
   that nobody is working on.
3. **One worker per webhook, in order.** :func:`run_deliveries` first takes the
   webhook's lease (a conditional UPDATE of ``lease_until``, which works the same on
   SQLite and PostgreSQL); a job that finds it taken returns, and the holder, after
   giving the lease back, looks once more for work that arrived meanwhile. Deliveries go
   out oldest first; the next waits until the one before it succeeded or was given up.
4. **At least once.** An attempt is recorded after the receiver answered: a worker that
   dies in between repeats the attempt (same ``webhook-id``, so receivers drop the
   duplicate). A non-2xx answer, a timeout or a connection failure is retried after an
   exponential backoff with jitter (``WEBHOOK_MIN_BACKOFF_MS`` doubling up to
   ``WEBHOOK_MAX_BACKOFF_MS``), for ``WEBHOOK_RETRY_HOURS``; then the delivery is marked
   failed and the next one goes.
5. **Failing endpoints stop.** A webhook that has taken no delivery for
   ``WEBHOOK_DISABLE_AFTER_HOURS`` is disabled, with the reason in ``disabledReason``;
   its pending deliveries are marked failed. Enabling it again starts afresh.
"""

from __future__ import annotations

import json
import logging
import random
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from db.models import Account, Webhook, WebhookAttempt, WebhookDelivery, new_id, now_ms
from email_service import metrics
from email_service.crypto import DecryptionError
from email_service.runtime import Runtime
from email_service.scope import Scope
from email_service.services.webhooks import registry, signing
from email_service.services.webhooks.outbound import PostResult, ReceiverPolicy, post

log = logging.getLogger(__name__)

DELIVER_ACTOR = "webhooks.deliver"

#: How long one job keeps delivering before it hands over to a fresh job (fairness
#: between webhooks sharing a worker), and how long a lease outlives its last renewal.
RUN_BUDGET_SECONDS = 20.0
#: Deliveries picked per transaction, and how long their attempts may take before the
#: outcomes are recorded (one attempt's timeout may come on top).
BATCH = 50
BATCH_SECONDS = 20.0


def _lease_ms(runtime: Runtime) -> int:
    """A lease outlives a batch's attempts and their recording by a wide margin."""
    return int((BATCH_SECONDS + 2 * runtime.settings.webhook_timeout_seconds + 30) * 1000)


#: A due delivery untouched for this long is re-queued by the sweep.
SWEEP_GRACE_MS = 30_000


def matches(hook: Webhook, change: Mapping[str, Any], owner: uuid.UUID | None) -> bool:
    """Whether ``hook`` wants ``change`` (of an account owned by ``owner``).

    A webhook gets the changes made from its creation on, never older ones.
    """
    if not hook.is_enabled or owner != hook.user_id:
        return False
    if change.get("occurredAt", hook.created_at) < hook.created_at:
        return False
    if "*" not in hook.events and change["type"] not in hook.events:
        return False
    return hook.account_ids is None or change.get("accountId") in hook.account_ids


def _owners(session: Session, tenant_id: uuid.UUID, account_ids: set[str]) -> dict[str, Any]:
    if not account_ids:
        return {}
    rows = session.execute(
        select(Account.id, Account.user_id).where(
            Account.tenant_id == tenant_id, Account.id.in_(account_ids)
        )
    ).all()
    return {account_id: user_id for account_id, user_id in rows}


def record_deliveries(
    session: Session,
    tenant_id: uuid.UUID,
    changes: Iterable[Mapping[str, Any]],
    owner: uuid.UUID | None = None,
) -> set[str]:
    """Add a delivery of each change to each webhook that wants it; only flushes.

    ``changes`` are Change bodies as the API shows them (``id``, ``type``, ``accountId``,
    ...), in order, all of user ``owner`` (when not given, each change's account tells).
    Returns the ids of the webhooks that got deliveries: queue them with
    :func:`queue_webhooks` once the transaction has committed.
    """
    batch = list(changes)
    if not batch:
        return set()
    query = select(Webhook).where(Webhook.tenant_id == tenant_id, Webhook.is_enabled.is_(True))
    if owner is not None:
        query = query.where(Webhook.user_id == owner)
    hooks = session.scalars(query.order_by(Webhook.created_at, Webhook.id)).all()
    if not hooks:
        return set()
    owners = (
        {}
        if owner is not None
        else _owners(session, tenant_id, {c["accountId"] for c in batch if c.get("accountId")})
    )
    woken: set[str] = set()
    moment = now_ms()
    for change in batch:
        change_owner = owner if owner is not None else owners.get(change.get("accountId") or "")
        body: str | None = None
        for hook in hooks:
            if not matches(hook, change, change_owner):
                continue
            body = body or json.dumps(change, separators=(",", ":"), ensure_ascii=False)
            session.add(
                WebhookDelivery(
                    tenant_id=tenant_id,
                    webhook_id=hook.id,
                    event_id=str(change["id"]),
                    event_type=change["type"],
                    body=body,
                    status="pending",
                    attempts=0,
                    next_attempt_at=moment,
                    created_at=moment,
                    updated_at=moment,
                )
            )
            woken.add(hook.id)
    session.flush()
    return woken


def queue_webhooks(
    runtime: Runtime, tenant_id: uuid.UUID, webhook_ids: Iterable[str], delay_ms: int = 0
) -> None:
    """Queue a delivery job for each webhook (call after the deliveries committed)."""
    for webhook_id in sorted(set(webhook_ids)):
        runtime.jobs.prepare(
            DELIVER_ACTOR,
            new_id(),
            tenant_id=str(tenant_id),
            webhook_id=webhook_id,
            delay_ms=delay_ms or None,
        ).send()


def wake_after_commit(scope: Scope, webhook_ids: set[str]) -> None:
    """Queue the webhooks' jobs once ``scope`` commits."""
    if webhook_ids:
        tenant = scope.caller.tenant_id
        scope.after_commit(lambda: queue_webhooks(scope.runtime, tenant, webhook_ids))


# --- delivering -----------------------------------------------------------------------


@dataclass
class _Sent:
    """An attempt made, to be recorded in the next transaction."""

    delivery_id: int
    result: PostResult


@dataclass(frozen=True)
class _Next:
    delivery_id: int
    event_id: str
    body: bytes
    url: str
    keys: list[bytes]


def backoff_ms(runtime: Runtime, attempts: int) -> int:
    """The wait after the ``attempts``-th failed attempt: doubling, capped, jittered."""
    settings = runtime.settings
    ceiling = min(
        settings.webhook_max_backoff_ms,
        settings.webhook_min_backoff_ms * 2 ** min(max(attempts - 1, 0), 30),
    )
    return max(1, int(ceiling * (0.5 + random.random() / 2)))


def _claim(runtime: Runtime, tenant_id: uuid.UUID, webhook_id: str) -> bool:
    moment = now_ms()
    with runtime.db.transaction(tenant_id) as session:
        claimed = session.execute(
            update(Webhook)
            .where(
                Webhook.tenant_id == tenant_id,
                Webhook.id == webhook_id,
                or_(Webhook.lease_until.is_(None), Webhook.lease_until < moment),
            )
            .values(lease_until=moment + _lease_ms(runtime))
            .execution_options(synchronize_session=False)
        )
        return bool(claimed.rowcount)  # type: ignore[attr-defined]


def _release(runtime: Runtime, tenant_id: uuid.UUID, webhook_id: str) -> None:
    with runtime.db.transaction(tenant_id) as session:
        session.execute(
            update(Webhook)
            .where(Webhook.tenant_id == tenant_id, Webhook.id == webhook_id)
            .values(lease_until=None)
            .execution_options(synchronize_session=False)
        )


def _has_ready(runtime: Runtime, tenant_id: uuid.UUID, webhook_id: str) -> bool:
    with runtime.db.transaction(tenant_id) as session:
        head = _head(session, tenant_id, webhook_id)
        return head is not None and head.next_attempt_at <= now_ms()


def _head(session: Session, tenant_id: uuid.UUID, webhook_id: str) -> WebhookDelivery | None:
    return session.scalars(
        select(WebhookDelivery)
        .where(
            WebhookDelivery.tenant_id == tenant_id,
            WebhookDelivery.webhook_id == webhook_id,
            WebhookDelivery.status == "pending",
        )
        .order_by(WebhookDelivery.id)
        .limit(1)
    ).first()


def _record(
    runtime: Runtime,
    session: Session,
    hook: Webhook,
    delivery: WebhookDelivery | None,
    sent: _Sent,
) -> int | None:
    """Store an attempt's outcome; returns the wait before the next try, if it failed."""
    settings = runtime.settings
    moment = now_ms()
    if delivery is None or delivery.status != "pending":
        return None  # deleted or settled meanwhile (the webhook was disabled, say)
    result = sent.result
    delivery.attempts += 1
    delivery.last_attempt_at = moment
    delivery.last_status_code = result.status_code
    delivery.updated_at = moment
    session.add(
        WebhookAttempt(
            tenant_id=hook.tenant_id,
            delivery_id=delivery.id,
            number=delivery.attempts,
            status_code=result.status_code,
            duration_ms=result.duration_ms,
            error=result.error,
            created_at=moment,
            updated_at=moment,
        )
    )
    seconds = result.duration_ms / 1000
    if result.ok:
        metrics.observe_webhook_attempt("delivered", seconds)
        delivery.status = "succeeded"
        delivery.last_error = None
        delivery.finished_at = moment
        hook.consecutive_failures = 0
        hook.failing_since = None
        hook.last_success_at = moment
        return None
    error = result.error or f"the receiver answered {result.status_code}"
    delivery.last_error = error
    hook.consecutive_failures += 1
    hook.failing_since = hook.failing_since or moment
    hook.last_failure_at = moment
    if moment - hook.failing_since >= settings.webhook_disable_after_hours * 3_600_000:
        hook.is_enabled = False
        hook.disabled_at = moment
        hook.disabled_reason = (
            f"No delivery was taken for {settings.webhook_disable_after_hours:g} hours "
            f"({hook.consecutive_failures} attempts); the last attempt: {error}"
        )
        delivery.status = "failed"
        delivery.finished_at = moment
        session.flush()
        session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.tenant_id == hook.tenant_id,
                WebhookDelivery.webhook_id == hook.id,
                WebhookDelivery.status == "pending",
            )
            .values(
                status="failed",
                last_error="the webhook was disabled",
                finished_at=moment,
                updated_at=moment,
            )
            .execution_options(synchronize_session=False)
        )
        log.warning("webhook disabled after a long failure streak", extra={"webhook_id": hook.id})
        metrics.observe_webhook_attempt("disabled", seconds)
        return None
    if moment - delivery.created_at >= settings.webhook_retry_hours * 3_600_000:
        delivery.status = "failed"
        delivery.finished_at = moment
        metrics.observe_webhook_attempt("given_up", seconds)
        return None  # given up: the next delivery may go at once
    metrics.observe_webhook_attempt("failed", seconds)
    wait = backoff_ms(runtime, delivery.attempts)
    delivery.next_attempt_at = moment + wait
    return wait


def _step(
    runtime: Runtime, tenant_id: uuid.UUID, webhook_id: str, sent: list[_Sent]
) -> list[_Next] | int | None:
    """Record the attempts just made and pick the next due deliveries, in one transaction.

    Returns up to :data:`BATCH` deliveries to attempt next, in order; or a wait in
    milliseconds before the head of the queue is due; or None when there is nothing
    (more) to do. One transaction per batch rather than per attempt is what lets one
    worker keep up with fast receivers.
    """
    with runtime.db.transaction(tenant_id) as session:
        hook = session.scalars(
            select(Webhook).where(Webhook.tenant_id == tenant_id, Webhook.id == webhook_id)
        ).one_or_none()
        if hook is None:
            return None
        if sent:
            # All in one query, rather than one per attempt.
            rows = {
                row.id: row
                for row in session.scalars(
                    select(WebhookDelivery).where(
                        WebhookDelivery.tenant_id == tenant_id,
                        WebhookDelivery.id.in_([item.delivery_id for item in sent]),
                    )
                )
            }
            for item in sent:
                wait = _record(runtime, session, hook, rows.get(item.delivery_id), item)
                if wait is not None:
                    return wait
        if not hook.is_enabled:
            return None
        heads = session.scalars(
            select(WebhookDelivery)
            .where(
                WebhookDelivery.tenant_id == tenant_id,
                WebhookDelivery.webhook_id == webhook_id,
                WebhookDelivery.status == "pending",
            )
            .order_by(WebhookDelivery.id)
            .limit(BATCH)
        ).all()
        if not heads:
            return None
        moment = now_ms()
        if heads[0].next_attempt_at > moment:
            return heads[0].next_attempt_at - moment
        hook.lease_until = moment + _lease_ms(runtime)
        try:
            keys = registry.signing_keys(runtime, hook, moment)
        except DecryptionError:
            # The key ring lost the key that sealed this secret: nothing can be signed
            # until the owner rotates the secret; retry as a failed attempt would.
            log.error("webhook secret cannot be decrypted", extra={"webhook_id": hook.id})
            return backoff_ms(runtime, heads[0].attempts + 1)
        due = []
        for head in heads:
            if head.next_attempt_at > moment:
                break
            due.append(_Next(head.id, head.event_id, head.body.encode(), hook.url, keys))
        return due


def run_deliveries(runtime: Runtime, tenant_id: uuid.UUID, webhook_id: str) -> None:
    """Deliver the webhook's due deliveries in order (the actor's work).

    Returns when the queue is empty, when its head must wait (a job is queued for that
    moment), or after :data:`RUN_BUDGET_SECONDS` (a job is queued to go on).
    """
    policy = ReceiverPolicy.for_runtime(runtime)
    budget_end = time.monotonic() + RUN_BUDGET_SECONDS
    while _claim(runtime, tenant_id, webhook_id):
        outcome: list[_Next] | int | None = None
        try:
            sent: list[_Sent] = []
            while True:
                outcome = _step(runtime, tenant_id, webhook_id, sent)
                if not isinstance(outcome, list):
                    break
                sent = _attempt_in_order(policy, outcome)
                if time.monotonic() > budget_end:
                    # Record these attempts, then hand over to a fresh job.
                    outcome = _step(runtime, tenant_id, webhook_id, sent)
                    if isinstance(outcome, list):
                        outcome = 0
                    break
        finally:
            _release(runtime, tenant_id, webhook_id)
        if isinstance(outcome, int):
            queue_webhooks(runtime, tenant_id, [webhook_id], delay_ms=outcome)
            return
        # Nothing left: unless a delivery arrived while we held the lease (its job found
        # the lease taken and returned), we are done.
        if not _has_ready(runtime, tenant_id, webhook_id):
            return


def _attempt_in_order(policy: ReceiverPolicy, batch: list[_Next]) -> list[_Sent]:
    """Attempt ``batch`` in order, stopping after the first failure (what follows it must
    wait for it) or once the lease's safe share of time is used."""
    sent: list[_Sent] = []
    started = time.monotonic()
    for item in batch:
        headers = signing.signature_headers(item.keys, item.event_id, item.body)
        result = post(policy, item.url, headers, item.body)
        sent.append(_Sent(item.delivery_id, result))
        if not result.ok or time.monotonic() - started > BATCH_SECONDS:
            break
    return sent


def sweep(runtime: Runtime, now: int | None = None) -> int:
    """Re-queue webhooks whose due deliveries nobody is working on; prune old ones.

    Run by the scheduler across tenants. Returns how many webhooks were queued.
    """
    moment = now or now_ms()
    settings = runtime.settings
    with runtime.db.transaction(system=True) as session:
        stale = session.execute(
            select(WebhookDelivery.tenant_id, WebhookDelivery.webhook_id)
            .distinct()
            .join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
            .where(
                WebhookDelivery.status == "pending",
                WebhookDelivery.next_attempt_at <= moment - SWEEP_GRACE_MS,
                Webhook.is_enabled.is_(True),
                or_(Webhook.lease_until.is_(None), Webhook.lease_until < moment),
            )
        ).all()
        horizon = moment - int(settings.webhook_delivery_retention_hours * 3_600_000)
        old = select(WebhookDelivery.id).where(
            WebhookDelivery.status != "pending", WebhookDelivery.finished_at < horizon
        )
        session.execute(delete(WebhookAttempt).where(WebhookAttempt.delivery_id.in_(old)))
        session.execute(delete(WebhookDelivery).where(WebhookDelivery.id.in_(old)))
    for tenant_id, webhook_id in stale:
        try:
            queue_webhooks(runtime, tenant_id, [webhook_id])
        except Exception:
            log.exception("could not re-queue webhook %s", webhook_id)
    if stale:
        log.info("webhook sweep re-queued %d webhook(s)", len(stale))
    return len(stale)


# --- reading --------------------------------------------------------------------------


def list_deliveries(scope: Scope, webhook_id: str, limit: int) -> dict[str, Any]:
    """The webhook's most recent deliveries, newest first, each with its attempts."""
    hook = registry.load_webhook(scope, webhook_id)
    rows = scope.session.scalars(
        select(WebhookDelivery)
        .where(
            WebhookDelivery.tenant_id == hook.tenant_id,
            WebhookDelivery.webhook_id == hook.id,
        )
        .order_by(WebhookDelivery.id.desc())
        .limit(limit)
    ).all()
    attempts: dict[int, list[dict[str, Any]]] = {row.id: [] for row in rows}
    if rows:
        for attempt in scope.session.scalars(
            select(WebhookAttempt)
            .where(
                WebhookAttempt.tenant_id == hook.tenant_id,
                WebhookAttempt.delivery_id.in_(list(attempts)),
            )
            .order_by(WebhookAttempt.id)
        ):
            attempts[attempt.delivery_id].append(
                {
                    "number": attempt.number,
                    "attemptedAt": attempt.created_at,
                    "statusCode": attempt.status_code,
                    "durationMs": attempt.duration_ms,
                    "error": attempt.error,
                }
            )
    return {
        "deliveries": [
            {
                "id": str(row.id),
                "webhookId": row.webhook_id,
                "eventId": row.event_id,
                "eventType": row.event_type,
                "status": row.status,
                "attemptCount": row.attempts,
                "createdAt": row.created_at,
                "lastAttemptAt": row.last_attempt_at,
                "nextAttemptAt": row.next_attempt_at if row.status == "pending" else None,
                "statusCode": row.last_status_code,
                "error": row.last_error,
                "attempts": attempts[row.id][-20:],
            }
            for row in rows
        ]
    }
