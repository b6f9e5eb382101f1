"""Which commits wake the webhook fan-out: those of users whose feed a fan-out follows."""

from __future__ import annotations

import uuid

import pytest

from db.changes import record_change
from db.models import WebhookFanout
from email_service.runtime import Runtime
from email_service.services.webhooks import fanout


def test_only_users_with_a_fan_out_cursor_are_woken(
    webhook_runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    woken: list[tuple[uuid.UUID, uuid.UUID]] = []
    monkeypatch.setattr(fanout, "queue_fanout", lambda _rt, t, u: woken.append((t, u)))
    tenant, ann, ben = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    # Given ben's feed has a fan-out cursor (he has had a webhook) and ann's has none
    with webhook_runtime.db.transaction(tenant) as session:
        session.add(WebhookFanout(tenant_id=tenant, user_id=ben, position=0))

    # When one commit records changes for both
    with webhook_runtime.db.transaction(tenant) as session:
        for user in (ann, ben, ann):
            record_change(session, tenant_id=tenant, user_id=user, type="folder.updated")

    # Then only ben's fan-out is queued, once
    assert woken == [(tenant, ben)]
