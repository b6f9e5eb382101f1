"""Handing each user's change feed to that user's webhooks: exactly once, in order.

The change feed (``db.changes``) writes a user's changes at commit, with positions that
grow in commit order per user. Fan-out is a reader of that feed with a cursor of its
own, one ``webhook_fanouts`` row per user with webhooks:

1. **Woken after commit.** A commit listener (:func:`install`) queues
   :data:`FANOUT_ACTOR` for each user whose changes just committed, if that user has a
   cursor row: the commit looks for it under the user's feed lock (``db.changes``,
   ``CommittedChanges.followed``). A cursor created at the same time cannot be missed:
   its transaction takes the same lock (shared, for the head it starts at), so either it
   committed before the lookup and is seen, or its head is at or after this commit's
   changes, which it is then not owed. It only queues: the committing transaction pays
   one EXISTS in its last statement, and a user without webhooks costs no job.
2. **Exactly once.** :func:`fan_out` locks the user's cursor row, reads the changes
   after it (in position order, a page at a time), records their deliveries
   (``dispatch.record_deliveries``) and moves the cursor, in one transaction: a change is
   handed over once, or not at all and then by the next run. The row lock keeps two
   runs for one user from interleaving. Reading "after the cursor" never skips a change
   that commits later, because a user's positions are drawn and committed under that
   user's lock (``db.changes``).
3. **Nothing lost.** A wake-up that is lost (a broker outage, a process killed right after
   its commit) is made good by :func:`sweep`, run by the scheduler: any user whose feed
   is ahead of their cursor is queued again.
4. **No replay.** A user's cursor starts at the feed's head when their first webhook is
   created (:func:`start_cursor`), and a webhook gets only changes made after its
   creation; a user with no enabled webhook has their cursor moved without deliveries.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from sqlalchemy import and_, exists, select

from db import changes as feed
from db.models import Change, Webhook, WebhookFanout, new_id, now_ms
from email_service.runtime import Runtime
from email_service.scope import Scope
from email_service.services.changes import present
from email_service.services.webhooks import dispatch

log = logging.getLogger(__name__)

FANOUT_ACTOR = "webhooks.fanout"
#: Changes read per transaction.
PAGE = 500
#: A feed ahead of its cursor for this long, with no run in between, is queued again.
SWEEP_GRACE_MS = 30_000


def start_cursor(scope: Scope, *, first_webhook: bool) -> None:
    """Make sure the caller has a fan-out cursor; for their first webhook, at the head.

    Called when a webhook is created, in the same transaction: the new webhook is owed
    the changes that commit after it, never the feed's past (a cursor left behind by
    webhooks since deleted is moved up rather than read through).
    """
    caller = scope.caller
    session = scope.session
    row = session.scalars(
        select(WebhookFanout)
        .where(
            WebhookFanout.tenant_id == caller.tenant_id,
            WebhookFanout.user_id == caller.user_id,
        )
        .with_for_update()
    ).one_or_none()
    if row is not None and not first_webhook:
        return
    head = feed.head_position(session, caller.tenant_id, caller.user_id)
    if row is None:
        session.add(
            WebhookFanout(tenant_id=caller.tenant_id, user_id=caller.user_id, position=head)
        )
    else:
        row.position = max(row.position, head)
    session.flush()


def queue_fanout(runtime: Runtime, tenant_id: uuid.UUID, user_id: uuid.UUID) -> None:
    runtime.jobs.prepare(
        FANOUT_ACTOR, new_id(), tenant_id=str(tenant_id), user_id=str(user_id)
    ).send()


def install(runtime: Runtime) -> None:
    """Queue a fan-out after every commit of this process that recorded changes."""
    feed.LISTENERS.install(
        runtime,
        runtime.db.engine,
        lambda owner: queue_fanout(runtime, *owner),
        job="webhook fan-out",
        key=lambda change: (change.tenant_id, change.user_id),
        only=lambda change: change.followed,
    )


def uninstall(runtime: Runtime) -> None:
    """Stop queueing fan-outs for ``runtime`` (a runtime being closed, or a test)."""
    feed.LISTENERS.uninstall(runtime)


def fan_out(runtime: Runtime, tenant_id: uuid.UUID, user_id: uuid.UUID) -> int:
    """Record deliveries for the user's changes after their cursor; returns how many
    changes were handed over. Queues the webhooks that got deliveries."""
    handed = 0
    while True:
        with runtime.db.transaction(tenant_id) as session:
            cursor = session.scalars(
                select(WebhookFanout)
                .where(WebhookFanout.tenant_id == tenant_id, WebhookFanout.user_id == user_id)
                .with_for_update()
            ).one_or_none()
            if cursor is None:
                return handed  # the user never had a webhook
            rows = session.scalars(
                select(Change)
                .where(
                    Change.tenant_id == tenant_id,
                    Change.user_id == user_id,
                    Change.position > cursor.position,
                )
                .order_by(Change.position)
                .limit(PAGE)
            ).all()
            if not rows:
                return handed
            bodies: list[dict[str, Any]] = [present(row) for row in rows]
            woken = dispatch.record_deliveries(session, tenant_id, bodies, owner=user_id)
            cursor.position = rows[-1].position
            cursor.updated_at = now_ms()
        handed += len(rows)
        dispatch.queue_webhooks(runtime, tenant_id, woken)
        if len(rows) < PAGE:
            return handed


def sweep(runtime: Runtime, now: int | None = None) -> int:
    """Queue a fan-out for every user whose feed has gone unread past the grace time."""
    moment = now or now_ms()
    with runtime.db.transaction(system=True) as session:
        behind = session.execute(
            select(WebhookFanout.tenant_id, WebhookFanout.user_id).where(
                exists().where(
                    and_(
                        Change.tenant_id == WebhookFanout.tenant_id,
                        Change.user_id == WebhookFanout.user_id,
                        Change.position > WebhookFanout.position,
                        Change.occurred_at <= moment - SWEEP_GRACE_MS,
                    )
                ),
                exists().where(
                    Webhook.tenant_id == WebhookFanout.tenant_id,
                    Webhook.user_id == WebhookFanout.user_id,
                ),
            )
        ).all()
    for tenant_id, user_id in behind:
        try:
            queue_fanout(runtime, tenant_id, user_id)
        except Exception:
            log.exception("could not queue the webhook fan-out of user %s", user_id)
    return len(behind)
