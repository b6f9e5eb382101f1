"""Servers that refuse what Dovecot allows: Courier-IMAP's read-only APPEND.

Courier refuses an APPEND to the mailbox that is selected read-only ("Current box is
selected READ-ONLY."). The draft and Sent-copy jobs look for their Message-ID with an
EXAMINE first; they must leave the folder before appending. Dovecot here sits behind
the proxy of ``tests/servers/hostile.py`` with Courier's habit added.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from email_service.mail.endpoint import MailEndpoint
from email_service.mail.errors import MailProtocolError
from email_service.mail.imap import ImapSession
from email_service.runtime import Runtime
from tests.compose.conftest import finished, send, sender_for
from tests.conftest import Identity
from tests.servers import hostile
from tests.servers.dovecot import Dovecot, MailUser
from tests.servers.smtp import SmtpServer
from tests.sync.conftest import Mailbox


@pytest.fixture
def courier(
    dovecot: Dovecot,
) -> Iterator[tuple[hostile.HostileProxy, hostile.CourierReadOnlyAppend]]:
    habit = hostile.CourierReadOnlyAppend()
    with hostile.HostileProxy(dovecot.imap_port) as proxy:
        proxy.client_rules = [habit]
        yield proxy, habit


def test_the_courier_habit_refuses_an_append_to_the_examined_folder(
    courier: tuple[hostile.HostileProxy, hostile.CourierReadOnlyAppend], mail_user: MailUser
) -> None:
    proxy, habit = courier
    endpoint = MailEndpoint(
        "127.0.0.1", proxy.port, "none", mail_user.email, mail_user.password, timeout=10
    )
    with ImapSession(endpoint) as imap:
        imap.select("Drafts", readonly=True)
        with pytest.raises(MailProtocolError, match="selected READ-ONLY"):
            imap.append("Drafts", b"Subject: x\r\n\r\nx\r\n")
        imap.unselect()
        assert imap.append("Drafts", b"Subject: x\r\n\r\nx\r\n") is not None
    assert habit.refused == 1


def courier_sender(
    api: Any, alice: Identity, dovecot: Dovecot, smtp_server: SmtpServer, user: MailUser,
    proxy: hostile.HostileProxy,
) -> Mailbox:  # fmt: skip
    return sender_for(
        api, alice, dovecot, smtp_server, user, hostname="127.0.0.1", port=proxy.port,
        encryption="none",
    )  # fmt: skip


def test_drafts_and_sent_copies_are_filed_on_a_courier_like_server(
    api: Any,
    sync_runtime: Runtime,
    alice: Identity,
    dovecot: Dovecot,
    smtp_server: SmtpServer,
    mail_user: MailUser,
    courier: tuple[hostile.HostileProxy, hostile.CourierReadOnlyAppend],
) -> None:
    proxy, habit = courier
    box = courier_sender(api, alice, dovecot, smtp_server, mail_user, proxy)

    # When a draft is saved and a message sent
    draft = api.post(
        "/api/compose/draft",
        json={"accountId": box.id, "to": ["later@example.test"], "subject": "U", "body": "."},
        headers=box.headers,
    )
    assert draft.status_code == 201, draft.text
    saved = finished(api, sync_runtime, box, alice, draft.json()["taskId"])
    to = dovecot.new_user("to")
    sent = finished(api, sync_runtime, box, alice, send(api, box, to=[to.email])["taskId"])

    # Then both were filed: nothing was appended to a folder selected read-only
    assert saved["status"] == "success", saved
    assert sent["status"] == "success", sent
    assert "sentCopyError" not in sent["result"] and sent["result"]["sentFolder"] == "Sent"
    assert habit.refused == 0
