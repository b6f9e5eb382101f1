"""Drafts: stored in the service, appended once to the IMAP Drafts folder by a job."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from db.models import Draft
from email_service.jobs import Attempt
from email_service.runtime import Runtime
from email_service.services import delivery
from tests.compose.conftest import (
    detail,
    finished,
    listed,
    server_messages,
    sync_now,
    task_row,
    with_message_id,
)
from tests.conftest import Identity
from tests.servers.dovecot import Dovecot
from tests.sync.conftest import Mailbox, account_for


def save(client: Any, box: Mailbox, **body: Any) -> Any:
    values: dict[str, Any] = {
        "accountId": box.id,
        "to": ["later@example.test"],
        "subject": "Unfinished thoughts",
        "body": "To be continued",
    }
    values.update(body)
    return client.post("/api/compose/draft", json=values, headers=box.headers)


def test_a_draft_is_filed_once_in_drafts_and_listed_once_after_sync(
    api: Any, sync_runtime: Runtime, alice: Identity, sender: Mailbox, dovecot: Dovecot
) -> None:
    # Given a synced account
    sync_now(api, sync_runtime, sender, alice)

    # When a draft is saved
    response = save(api, sender, bcc=["quiet@example.test"])
    assert response.status_code == 201, response.text
    saved = response.json()
    assert saved["accountId"] == sender.id and set(saved) == {
        "draftId", "accountId", "createdAt", "taskId",
    }  # fmt: skip
    task = finished(api, sync_runtime, sender, alice, saved["taskId"])

    # Then the server's Drafts folder holds it once, flagged \Draft
    assert task["kind"] == "draft" and task["status"] == "success", task
    message_id = task["result"]["messageId"]
    [(uid, entry)] = with_message_id(server_messages(dovecot, sender.user, "Drafts"), message_id)
    assert "\\Draft" in entry["flags"] and task["result"]["uid"] == uid
    assert entry["message"]["Subject"] == "Unfinished thoughts"
    # and the draft row knows where it went
    with sync_runtime.db.transaction(alice.caller.tenant_id) as session:
        draft = session.get(Draft, saved["draftId"])
        assert draft is not None
        assert (draft.status, draft.folder_name, draft.imap_uid) == ("saved", "Drafts", uid)
    # and the API lists it in Drafts, before and after a sync, once
    [before] = listed(api, sender, "Drafts")
    assert detail(api, sender, before["id"])["internetMessageId"] == message_id
    sync_now(api, sync_runtime, sender, alice)
    assert [m["id"] for m in listed(api, sender, "Drafts")] == [before["id"]]

    # and a run of the finished task changes nothing
    delivery.run_draft(sync_runtime, alice.caller.tenant_id, saved["taskId"], Attempt(1, False))
    assert len(with_message_id(server_messages(dovecot, sender.user, "Drafts"), message_id)) == 1


def test_a_draft_job_cut_off_after_its_append_does_not_append_again(
    api: Any, sync_runtime: Runtime, alice: Identity, sender: Mailbox, dovecot: Dovecot,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    # Given a worker that dies right after the APPEND, before recording it
    class WorkerDied(Exception):  # not RetryLater: no retry follows, as after a crash
        pass

    real_set_draft = delivery._set_draft

    died = threading.Event()

    def die(*args: Any, **kwargs: Any) -> None:
        died.set()
        raise WorkerDied

    monkeypatch.setattr(delivery, "_set_draft", die)
    saved = save(api, sender).json()
    with sync_runtime.db.transaction(alice.caller.tenant_id) as session:
        draft = session.get(Draft, saved["draftId"])
        assert draft is not None
        message_id = draft.internet_message_id

    def appended() -> int:
        return len(with_message_id(server_messages(dovecot, sender.user, "Drafts"), message_id))

    assert died.wait(30)
    assert appended() == 1
    assert task_row(sync_runtime, alice, saved["taskId"]).status == "started"
    monkeypatch.setattr(delivery, "_set_draft", real_set_draft)

    # When the job runs again (the broker redelivering it)
    delivery.run_draft(sync_runtime, alice.caller.tenant_id, saved["taskId"], Attempt(0, False))

    # Then the Drafts folder still holds it once, and the task succeeded
    assert appended() == 1
    task = finished(api, sync_runtime, sender, alice, saved["taskId"])
    assert task["status"] == "success", task


def test_a_pop3_draft_stays_in_the_service(
    api: Any, alice: Identity, dovecot: Dovecot, mail_user: Any
) -> None:
    box = account_for(
        api, alice, dovecot, mail_user, protocol="pop3", port=dovecot.pop3s_port, encryption="tls"
    )
    response = save(api, box)
    assert response.status_code == 201, response.text
    assert "taskId" not in response.json()


def test_a_draft_for_another_callers_account_is_404(
    api: Any, sender: Mailbox, bob_same_tenant: Identity, mallory: Identity
) -> None:
    for stranger in (bob_same_tenant, mallory):
        response = api.post(
            "/api/compose/draft",
            json={"accountId": sender.id, "to": ["a@example.test"], "subject": "s", "body": "b"},
            headers=stranger.bearer,
        )
        assert response.status_code == 404
        assert response.json()["code"] == "ACCOUNT_NOT_FOUND"
