"""Sending end to end: HTTP in, the Dramatiq worker, real SMTP delivering into Dovecot.

Recipients are other Dovecot users; what they received is read back over IMAP.
"""

from __future__ import annotations

import hashlib
import threading
import time
from email.message import EmailMessage
from typing import Any

import pytest

from email_service.jobs import Attempt
from email_service.mail import smtp
from email_service.mail.errors import MailConnectionError
from email_service.mail.imap import ImapSession, RemoteFolder
from email_service.runtime import Runtime
from email_service.services import delivery
from tests.compose.conftest import (
    await_task,
    detail,
    finished,
    imap_of,
    listed,
    mail_with_attachments,
    send,
    sender_for,
    server_messages,
    sync_now,
    task_row,
    with_message_id,
)
from tests.conftest import Identity, new_identity
from tests.servers.dovecot import Dovecot
from tests.servers.mailgen import make_pdf, make_png
from tests.servers.smtp import SmtpServer
from tests.sync.conftest import Mailbox


def received_with(smtp_server: SmtpServer, message_id: str) -> list[Any]:
    return [m for m in smtp_server.received if f"<{message_id}>".encode() in m.raw]


def header_text(message: EmailMessage) -> str:
    return "\n".join(f"{name}: {value}" for name, value in message.items())


def attachment_ids(api: Any, box: Mailbox, runtime: Runtime, identity: Identity) -> list[str]:
    """Sync ``box`` and return the attachment ids of its INBOX's message with files."""
    sync_now(api, runtime, box, identity)
    [message] = [m for m in listed(api, box, "INBOX") if m["attachmentCount"]]
    return [a["id"] for a in detail(api, box, message["id"])["attachments"]]


def test_send_reaches_every_recipient_keeps_bcc_hidden_and_files_one_sent_copy(
    api: Any, sync_runtime: Runtime, alice: Identity, sender: Mailbox, dovecot: Dovecot,
    smtp_server: SmtpServer,
) -> None:  # fmt: skip
    # Given a synced account whose INBOX holds a message with two files
    files = {
        "report.pdf": ("application/pdf", make_pdf("Quarterly", pages=3)),
        "chart.png": ("image/png", make_png(64, 48, seed=7)),
    }
    dovecot.append(
        sender.user, "INBOX", mail_with_attachments("x@example.test", sender.user.email, files)
    )
    ids = attachment_ids(api, sender, sync_runtime, alice)
    to = [dovecot.new_user("to"), dovecot.new_user("to")]
    hidden = dovecot.new_user("bcc")

    # When it sends to two recipients and a Bcc with those files attached
    queued = send(
        api,
        sender,
        to=[to[0].email, to[1].email],
        bcc=[hidden.email],
        subject="Plans for Friday",
        body="Let us meet at noon.",
        attachmentIds=ids,
    )
    assert queued["status"] == "pending" and "<" not in queued["messageId"]
    task = finished(api, sync_runtime, sender, alice, queued["taskId"])

    # Then the task succeeded for all three
    assert task["kind"] == "send" and task["status"] == "success", task
    result = task["result"]
    assert sorted(result["accepted"]) == sorted([to[0].email, to[1].email, hidden.email])
    assert result["refused"] == {} and result["sentFolder"] == "Sent"
    assert result["messageId"] == queued["messageId"]
    # and the message as submitted names the Bcc recipient in no header
    [submitted] = received_with(smtp_server, queued["messageId"])
    assert sorted(submitted.rcpt_tos) == sorted(result["accepted"])
    head = submitted.raw.split(b"\r\n\r\n", 1)[0]
    assert hidden.email.encode() not in head and b"\nBcc:" not in head
    # and each recipient has it once; only the Bcc recipient's own delivery trace
    # (Delivered-To, Received) mentions that address
    for user in [*to, hidden]:
        [(_, entry)] = with_message_id(server_messages(dovecot, user, "INBOX"), queued["messageId"])
        message = entry["message"]
        assert message["Bcc"] is None
        written = [(k, v) for k, v in message.items() if k not in ("Delivered-To", "Received")]
        assert (hidden.email in str(written)) is False
        assert (hidden.email in header_text(message)) is (user is hidden)
        assert message["Subject"] == "Plans for Friday"
        assert str(message["From"]) == f"Ada Sender <{sender.user.email}>"
        # and the files arrive byte for byte
        delivered = {part.get_filename(): part.get_content() for part in message.iter_attachments()}
        assert {name: hashlib.sha256(data).hexdigest() for name, data in delivered.items()} == {
            name: hashlib.sha256(data).hexdigest() for name, (_, data) in files.items()
        }
    # and the Sent folder on the server holds one copy, read, naming the Bcc
    [(_, copy)] = with_message_id(
        server_messages(dovecot, sender.user, "Sent"), queued["messageId"]
    )
    assert "\\Seen" in copy["flags"]
    assert hidden.email in str(copy["message"]["Bcc"])
    # and the API lists it there at once
    [row] = listed(api, sender, "Sent")
    assert row["id"] == result["sentMessageId"]
    shown = detail(api, sender, row["id"])
    assert shown["internetMessageId"] == queued["messageId"]
    assert shown["bcc"] == [hidden.email] and shown["isRead"] is True
    assert sorted(a["filename"] for a in shown["attachments"]) == sorted(files)

    # When the account is synced again, the Sent folder still lists it once
    sync_now(api, sync_runtime, sender, alice)
    assert [m["id"] for m in listed(api, sender, "Sent")] == [row["id"]]


def test_html_is_sent_as_written_with_a_text_alternative_and_stored_sanitised(
    api: Any, sync_runtime: Runtime, alice: Identity, sender: Mailbox, dovecot: Dovecot
) -> None:
    sync_now(api, sync_runtime, sender, alice)
    reader = dovecot.new_user("reader")
    html = '<p>Hello <b>world</b></p><img src="x" onerror="alert(1)"><script>steal()</script>'

    queued = send(api, sender, to=[reader.email], body=html, isHtml=True, subject="Markup")
    task = finished(api, sync_runtime, sender, alice, queued["taskId"])
    assert task["status"] == "success", task

    [(_, entry)] = with_message_id(server_messages(dovecot, reader, "INBOX"), queued["messageId"])
    message = entry["message"]
    assert message.get_content_type() == "multipart/alternative"
    assert message.get_body(("plain",)).get_content().strip() == "Hello world"
    assert message.get_body(("html",)).get_content().strip() == html
    stored = detail(api, sender, task["result"]["sentMessageId"])
    assert "Hello <b>world</b>" in stored["bodyHtml"]
    assert "script" not in stored["bodyHtml"] and "onerror" not in stored["bodyHtml"]


def test_a_reply_carries_the_thread_and_joins_the_conversation(
    api: Any, sync_runtime: Runtime, alice: Identity, sender: Mailbox, dovecot: Dovecot,
    smtp_server: SmtpServer,
) -> None:  # fmt: skip
    # Given Ada (sender) and Bo, both with synced accounts, and a message from Ada to Bo
    bo_identity = new_identity()
    bo = sender_for(api, bo_identity, dovecot, smtp_server, dovecot.new_user("bo"))
    sync_now(api, sync_runtime, sender, alice)
    sync_now(api, sync_runtime, bo, bo_identity)
    first = send(api, sender, to=[bo.user.email], subject="Lunch?", body="Shall we?")
    assert finished(api, sync_runtime, sender, alice, first["taskId"])["status"] == "success"
    sync_now(api, sync_runtime, bo, bo_identity)
    [original] = listed(api, bo, "INBOX")

    # When Bo answers it by its id in Bo's account
    reply = send(api, bo, to=[sender.user.email], subject="Re: Lunch?", inReplyTo=original["id"])
    task = finished(api, sync_runtime, bo, bo_identity, reply["taskId"])
    assert task["status"] == "success", task

    # Then Ada's copy carries In-Reply-To and References
    [(_, entry)] = with_message_id(
        server_messages(dovecot, sender.user, "INBOX"), reply["messageId"]
    )
    assert entry["message"]["In-Reply-To"] == f"<{first['messageId']}>"
    assert entry["message"]["References"] == f"<{first['messageId']}>"
    # and after a sync it is in the conversation of Ada's Sent original
    sync_now(api, sync_runtime, sender, alice)
    [answer] = listed(api, sender, "INBOX")
    [sent] = listed(api, sender, "Sent")
    assert (
        detail(api, sender, answer["id"])["conversationId"]
        == (detail(api, sender, sent["id"])["conversationId"])
    )
    # and in Bo's account the reply joined the original's conversation at once
    bo_sent = detail(api, bo, task["result"]["sentMessageId"])
    assert bo_sent["conversationId"] == detail(api, bo, original["id"])["conversationId"]

    # When Ada answers the answer by its Message-ID header value
    again = send(
        api, sender, to=[bo.user.email], subject="Re: Re", inReplyTo=f"<{reply['messageId']}>"
    )
    assert finished(api, sync_runtime, sender, alice, again["taskId"])["status"] == "success"
    # Then References hold the whole chain, oldest first
    [(_, third)] = with_message_id(server_messages(dovecot, bo.user, "INBOX"), again["messageId"])
    assert third["message"]["References"] == f"<{first['messageId']}> <{reply['messageId']}>"


def test_an_unknown_recipient_fails_at_once_with_the_servers_reply(
    api: Any, sync_runtime: Runtime, alice: Identity, sender: Mailbox, smtp_server: SmtpServer
) -> None:
    queued = send(api, sender, to=["nobody-here@example.test"])
    task = finished(api, sync_runtime, sender, alice, queued["taskId"])

    assert task["status"] == "failure"
    assert "550" in task["error"] and "nobody-here@example.test" in task["error"]
    assert task["result"]["refused"]["nobody-here@example.test"].startswith("550")
    assert task_row(sync_runtime, alice, queued["taskId"]).attempts == 1
    assert smtp_server.received == []


def test_an_unreachable_smtp_server_is_retried_then_the_task_fails(
    api: Any, sync_runtime: Runtime, alice: Identity, sender: Mailbox, dovecot: Dovecot,
    smtp_server: SmtpServer,
) -> None:  # fmt: skip
    # Given the SMTP server is down (the servers plugin starts it again after the test)
    smtp_server.stop()

    queued = send(api, sender, to=[dovecot.new_user("to").email])
    task = finished(api, sync_runtime, sender, alice, queued["taskId"])

    assert task["status"] == "failure"
    assert "cannot connect to the SMTP server" in task["error"]
    attempts = task_row(sync_runtime, alice, queued["taskId"]).attempts
    assert attempts == sync_runtime.settings.task_max_retries + 1


def test_a_temporary_refusal_is_retried_and_delivered_once(
    api: Any, sync_runtime: Runtime, alice: Identity, sender: Mailbox, dovecot: Dovecot,
    smtp_server: SmtpServer,
) -> None:  # fmt: skip
    recipient = dovecot.new_user("to")
    smtp_server.fail_next(1, 451, "4.3.0 try again later")

    queued = send(api, sender, to=[recipient.email])
    # The first attempt ends in "retry", with the server's reason
    retrying = await_task(
        sync_runtime, alice, queued["taskId"], until=lambda row: row.attempts >= 2
    )
    assert retrying.status != "failure"
    task = finished(api, sync_runtime, sender, alice, queued["taskId"])

    assert task["status"] == "success", task
    assert len(received_with(smtp_server, queued["messageId"])) == 1
    assert [t.reply[:3] for t in smtp_server.transactions] == ["451", "250"]
    assert (
        len(with_message_id(server_messages(dovecot, recipient, "INBOX"), queued["messageId"])) == 1
    )


def test_a_failure_after_acceptance_never_delivers_twice(
    api: Any, sync_runtime: Runtime, alice: Identity, sender: Mailbox, dovecot: Dovecot,
    smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    # Given the step after SMTP's 250 (the Sent copy) breaks once with a transient error
    sync_now(api, sync_runtime, sender, alice)
    recipient = dovecot.new_user("to")
    real_append = delivery.append_once
    calls: list[str] = []

    def flaky_append(*args: Any, **kwargs: Any) -> int | None:
        calls.append("append")
        if len(calls) == 1:
            raise MailConnectionError("the IMAP connection broke (injected)")
        return real_append(*args, **kwargs)

    monkeypatch.setattr(delivery, "append_once", flaky_append)

    queued = send(api, sender, to=[recipient.email])
    task = finished(api, sync_runtime, sender, alice, queued["taskId"])

    # Then the task retried the Sent copy only: one delivery, one Sent copy, success
    assert task["status"] == "success", task
    assert calls == ["append", "append"]
    assert task_row(sync_runtime, alice, queued["taskId"]).attempts == 2
    assert len(received_with(smtp_server, queued["messageId"])) == 1
    assert len(smtp_server.transactions) == 1
    assert (
        len(with_message_id(server_messages(dovecot, recipient, "INBOX"), queued["messageId"])) == 1
    )
    assert (
        len(with_message_id(server_messages(dovecot, sender.user, "Sent"), queued["messageId"]))
        == 1
    )
    assert len(listed(api, sender, "Sent")) == 1


def test_a_worker_dying_after_acceptance_is_finished_by_the_next_run_without_resending(
    api: Any, sync_runtime: Runtime, alice: Identity, sender: Mailbox, dovecot: Dovecot,
    smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    # Given a worker that dies right after the SMTP server took the message: the step
    # after it raises something no retry handles, so the task is left "started"
    sync_now(api, sync_runtime, sender, alice)
    recipient = dovecot.new_user("to")

    class WorkerDied(Exception):  # not RetryLater: no retry follows, as after a crash
        pass

    died = threading.Event()

    def die(*args: Any, **kwargs: Any) -> None:
        died.set()
        raise WorkerDied

    monkeypatch.setattr(delivery, "append_once", die)
    queued = send(api, sender, to=[recipient.email])
    assert died.wait(30)
    stuck = task_row(sync_runtime, alice, queued["taskId"])
    assert stuck.status == "started" and "acceptedAt" in stuck.payload
    assert len(smtp_server.transactions) == 1
    monkeypatch.undo()

    # When the job runs again (the broker redelivering it), called directly; until the
    # dead run's worker thread has let go of the task, a run leaves it alone
    deadline = time.monotonic() + 30
    while task_row(sync_runtime, alice, queued["taskId"]).status == "started":
        assert time.monotonic() < deadline
        delivery.run_send(sync_runtime, alice.caller.tenant_id, queued["taskId"], Attempt(0, False))

    # Then nothing is sent again, and the task completes with its Sent copy
    task = finished(api, sync_runtime, sender, alice, queued["taskId"])
    assert task["status"] == "success", task
    assert len(smtp_server.transactions) == 1
    assert (
        len(with_message_id(server_messages(dovecot, recipient, "INBOX"), queued["messageId"])) == 1
    )
    assert (
        len(with_message_id(server_messages(dovecot, sender.user, "Sent"), queued["messageId"]))
        == 1
    )
    # and a further run of the finished task changes nothing
    delivery.run_send(sync_runtime, alice.caller.tenant_id, queued["taskId"], Attempt(1, False))
    assert len(smtp_server.transactions) == 1


def test_an_idempotency_key_repeated_returns_the_first_task_and_sends_once(
    api: Any, sync_runtime: Runtime, alice: Identity, sender: Mailbox, dovecot: Dovecot,
    smtp_server: SmtpServer,
) -> None:  # fmt: skip
    recipient = dovecot.new_user("to")
    first = send(api, sender, to=[recipient.email], idempotency_key="order-1234")
    again = send(api, sender, to=[recipient.email], idempotency_key="order-1234")

    assert again["taskId"] == first["taskId"] and again["messageId"] == first["messageId"]
    assert finished(api, sync_runtime, sender, alice, first["taskId"])["status"] == "success"
    late = send(api, sender, to=[recipient.email], idempotency_key="order-1234")
    assert late == {**first, "status": "success"}
    assert len(smtp_server.transactions) == 1
    # A key is the caller's own: another key sends again
    other = send(api, sender, to=[recipient.email], idempotency_key="order-1235")
    assert other["taskId"] != first["taskId"]


def test_a_send_before_the_first_sync_shows_up_once_after_it(
    api: Any, sync_runtime: Runtime, alice: Identity, sender: Mailbox, dovecot: Dovecot
) -> None:
    # Given an account never synced (no folder rows yet)
    queued = send(api, sender, to=[dovecot.new_user("to").email])
    task = finished(api, sync_runtime, sender, alice, queued["taskId"])
    assert task["status"] == "success", task
    assert task["result"]["sentFolder"] == "Sent" and task["result"]["sentMessageId"] is None

    # When it is synced, its Sent folder lists the message once
    sync_now(api, sync_runtime, sender, alice)
    [row] = listed(api, sender, "Sent")
    assert detail(api, sender, row["id"])["internetMessageId"] == queued["messageId"]


def test_headers_cannot_be_injected_and_limits_are_checked(
    api: Any, sender: Mailbox, dovecot: Dovecot
) -> None:
    base = {"accountId": sender.id, "to": [dovecot.new_user("to").email], "body": "x"}
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({**base, "subject": "Hi\r\nBcc: victim@example.test"}, 400, "VALIDATION_ERROR"),
        ({**base, "subject": "Hi", "to": ["a@example.test\r\nBcc: b@example.test"]}, 400,
         "VALIDATION_ERROR"),
        ({**base, "subject": "Hi", "inReplyTo": "no-such-message"}, 404, "MESSAGE_NOT_FOUND"),
        ({**base, "subject": "Hi", "attachmentIds": ["no-such-attachment"]}, 404,
         "ATTACHMENT_NOT_FOUND"),
    ]  # fmt: skip
    for body, status, code in cases:
        response = api.post("/api/compose/send", json=body, headers=sender.headers)
        assert (response.status_code, response.json()["code"]) == (status, code), body


def test_recipients_go_in_batches_and_a_retry_resends_no_batch_already_taken(
    api: Any, sync_runtime: Runtime, alice: Identity, sender: Mailbox, dovecot: Dovecot,
    smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    # Given batches of two recipients, and a server that refuses the second batch once
    monkeypatch.setattr(delivery, "SMTP_BATCH", 2)
    users = [dovecot.new_user("to") for _ in range(3)]
    real_send = smtp.send
    calls: list[list[str]] = []

    def second_batch_refused_once(
        endpoint: Any, sender_: str, batch: Any, raw: bytes, **options: Any
    ) -> Any:
        calls.append(list(batch))
        if len(calls) == 2:
            smtp_server.fail_next(1, 451, "4.3.0 not now")
        return real_send(endpoint, sender_, batch, raw, **options)

    monkeypatch.setattr(smtp, "send", second_batch_refused_once)

    # When a message goes to three recipients and one unknown address
    queued = send(api, sender, to=[u.email for u in users], cc=["nobody-here@example.test"])
    task = finished(api, sync_runtime, sender, alice, queued["taskId"])

    # Then the first batch went once, the second after its retry, each recipient got one
    assert task["status"] == "success", task
    first, second = [u.email for u in users[:2]], [users[2].email, "nobody-here@example.test"]
    assert calls == [first, second, second]
    assert [t.reply[:3] for t in smtp_server.transactions] == ["250", "451", "250"]
    assert sorted(task["result"]["accepted"]) == sorted(u.email for u in users)
    assert task["result"]["refused"]["nobody-here@example.test"].startswith("550")
    for user in users:
        inbox = server_messages(dovecot, user, "INBOX")
        assert len(with_message_id(inbox, queued["messageId"])) == 1


def _recording_send(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    real_send = smtp.send
    calls: list[list[str]] = []

    def recording(endpoint: Any, sender_: str, batch: Any, raw: bytes, **options: Any) -> Any:
        calls.append(list(batch))
        return real_send(endpoint, sender_, batch, raw, **options)

    monkeypatch.setattr(smtp, "send", recording)
    return calls


def test_recipients_deferred_with_a_4xx_are_retried_alone(
    api: Any, sync_runtime: Runtime, alice: Identity, sender: Mailbox, dovecot: Dovecot,
    smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    # Given a server that takes two recipients and answers 450 for the third, once
    users = [dovecot.new_user("to") for _ in range(3)]
    busy = users[1].email
    smtp_server.defer_recipient(busy, times=1)
    calls = _recording_send(monkeypatch)

    queued = send(api, sender, to=[u.email for u in users])
    task = finished(api, sync_runtime, sender, alice, queued["taskId"])

    # Then the retry went to the deferred recipient only, and everyone got one copy
    assert task["status"] == "success", task
    assert calls == [[u.email for u in users], [busy]]
    assert sorted(task["result"]["accepted"]) == sorted(u.email for u in users)
    assert task["result"]["refused"] == {}
    for user in users:
        inbox = server_messages(dovecot, user, "INBOX")
        assert len(with_message_id(inbox, queued["messageId"])) == 1


def test_a_recipient_deferred_on_every_attempt_ends_refused_and_the_others_keep_one_copy(
    api: Any, sync_runtime: Runtime, alice: Identity, sender: Mailbox, dovecot: Dovecot,
    smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    users = [dovecot.new_user("to") for _ in range(2)]
    busy = users[0].email
    smtp_server.defer_recipient(busy, times=100)
    calls = _recording_send(monkeypatch)

    queued = send(api, sender, to=[u.email for u in users])
    task = finished(api, sync_runtime, sender, alice, queued["taskId"])

    attempts = sync_runtime.settings.task_max_retries + 1
    assert task["status"] == "success", task  # the message went out to someone
    assert calls == [[u.email for u in users]] + [[busy]] * (attempts - 1)
    assert task["result"]["accepted"] == [users[1].email]
    assert task["result"]["refused"][busy].startswith("450")
    inbox = server_messages(dovecot, users[1], "INBOX")
    assert len(with_message_id(inbox, queued["messageId"])) == 1


def test_a_final_failure_after_a_batch_went_out_says_who_received_it(
    api: Any, sync_runtime: Runtime, alice: Identity, sender: Mailbox, dovecot: Dovecot,
    smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    # Given batches of two, and a server that fails every transaction after the first
    monkeypatch.setattr(delivery, "SMTP_BATCH", 2)
    users = [dovecot.new_user("to") for _ in range(3)]
    calls = _recording_send(monkeypatch)
    real_send = smtp.send

    def first_only(endpoint: Any, sender_: str, batch: Any, raw: bytes, **options: Any) -> Any:
        if len(calls) >= 1:
            smtp_server.fail_next(1, 451, "4.3.0 not now", stage="mail")
        return real_send(endpoint, sender_, batch, raw, **options)

    monkeypatch.setattr(smtp, "send", first_only)
    queued = send(api, sender, to=[u.email for u in users])
    task = finished(api, sync_runtime, sender, alice, queued["taskId"])

    assert task["status"] == "failure", task
    went = [u.email for u in users[:2]]
    assert f"after 2 recipient(s) had received the message: {', '.join(went)}" in task["error"]
    assert task["result"]["accepted"] == went


def test_sends_of_an_account_share_a_connection_until_its_password_changes(
    api: Any, sync_runtime: Runtime, alice: Identity, sender: Mailbox, dovecot: Dovecot,
    smtp_server: SmtpServer,
) -> None:  # fmt: skip
    # Given an account that sent two messages, one after the other
    sync_now(api, sync_runtime, sender, alice)
    recipient = dovecot.new_user("to")
    imap_reused = sync_runtime.mail_pools.imap.reused
    for _ in range(2):
        queued = send(api, sender, to=[recipient.email])
        assert finished(api, sync_runtime, sender, alice, queued["taskId"])["status"] == "success"
    # Then both went over one SMTP connection (one client port), and both Sent copies
    # over the IMAP session the account's sync left
    first, second = [t.peer for t in smtp_server.transactions]
    assert first is not None and first == second
    assert sync_runtime.mail_pools.imap.reused == imap_reused + 2
    assert (
        len(with_message_id(server_messages(dovecot, sender.user, "Sent"), queued["messageId"]))
        == 1
    )
    assert len(listed(api, sender, "Sent")) == 2

    # When the account's password changes (to a wrong one, which shows it is used)
    response = api.put(
        f"/api/accounts/{sender.id}", json={"password": "not-the-password"}, headers=sender.headers
    )
    assert response.status_code == 200, response.text
    queued = send(api, sender, to=[recipient.email])
    task = finished(api, sync_runtime, sender, alice, queued["taskId"])

    # Then the open connection, logged in with the old password, did not carry it
    assert task["status"] == "failure", task
    assert "rejected the username or password" in task["error"]
    assert len(smtp_server.received) == 2


def test_a_first_run_searches_sent_only_for_what_others_put_there(
    api: Any, sync_runtime: Runtime, alice: Identity, sender: Mailbox, dovecot: Dovecot,
    smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    sync_now(api, sync_runtime, sender, alice)
    recipient = dovecot.new_user("to")
    opened: list[str] = []
    real_select = ImapSession.select

    def select(self: ImapSession, name: str, readonly: bool = True) -> Any:
        opened.append(name)
        return real_select(self, name, readonly)

    monkeypatch.setattr(ImapSession, "select", select)

    def sent_copies(message_id: str) -> list[Any]:
        return with_message_id(server_messages(dovecot, sender.user, "Sent"), message_id)

    # Given two sends that filed their copies (the first found Sent by LIST, the
    # second's STATUS of it was this process's first look at the folder)
    for _ in range(2):
        queued = send(api, sender, to=[recipient.email])
        assert finished(api, sync_runtime, sender, alice, queued["taskId"])["status"] == "success"
    opened.clear()

    # When the next one finds in Sent nothing but what this process appended
    queued = send(api, sender, to=[recipient.email])
    task = finished(api, sync_runtime, sender, alice, queued["taskId"])

    # Then it appended its copy without opening or searching the folder
    assert task["status"] == "success", task
    assert opened == []
    assert len(sent_copies(queued["messageId"])) == 1

    # When the SMTP server files a copy of the message into Sent on its own
    def file_a_copy() -> None:
        with imap_of(dovecot, sender.user) as client:
            client.append("Sent", smtp_server.received[-1].raw, flags=["\\Seen"])

    smtp_server.on_accept = file_a_copy
    queued = send(api, sender, to=[recipient.email])
    task = finished(api, sync_runtime, sender, alice, queued["taskId"])

    # Then the new message in Sent was searched, found to be the copy, and kept alone
    assert task["status"] == "success", task
    assert opened == ["Sent"]
    [(uid, _copy)] = sent_copies(queued["messageId"])
    assert task_row(sync_runtime, alice, queued["taskId"]).payload["sentUid"] == uid
    assert len(listed(api, sender, "Sent")) == 4


def test_a_sent_folder_gone_since_it_was_listed_is_found_again(
    api: Any, sync_runtime: Runtime, alice: Identity, sender: Mailbox, dovecot: Dovecot
) -> None:
    recipient = dovecot.new_user("to")
    # Given a send that found Sent by LIST (the process keeps where it is)
    queued = send(api, sender, to=[recipient.email])
    assert finished(api, sync_runtime, sender, alice, queued["taskId"])["status"] == "success"
    known = sync_runtime.mail_pools.folders
    [key] = [key for key in list(known._kept) if key.owner == sender.id]
    assert known.get(key) is not None and known.get(key).name == "Sent"  # type: ignore[union-attr]

    # When the folder kept is no longer on the server (here: one that never was)
    known.put(key, RemoteFolder("Gone Sent", "/", (), "\\Sent", True))
    queued = send(api, sender, to=[recipient.email])
    task = finished(api, sync_runtime, sender, alice, queued["taskId"])

    # Then the copy went where LIST finds the Sent folder now, and that is kept
    assert task["status"] == "success", task
    assert task["result"]["sentFolder"] == "Sent"
    assert "sentCopyError" not in task["result"]
    copies = with_message_id(server_messages(dovecot, sender.user, "Sent"), queued["messageId"])
    assert len(copies) == 1
    assert known.get(key).name == "Sent"  # type: ignore[union-attr]
