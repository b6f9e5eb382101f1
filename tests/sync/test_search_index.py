"""Sync keeps the search index: mail found as soon as a sync stores it, gone with it."""

from __future__ import annotations

import time
from email.message import EmailMessage
from typing import Any

from tests.servers.dovecot import Dovecot
from tests.sync.conftest import Mailbox, sync


def _mail(subject: str, body: str, attachment: str | None = None) -> bytes:
    message = EmailMessage()
    message["Subject"] = subject
    message["From"] = "Zoë Archer <zoe.archer@example.test>"
    message["To"] = "owner@example.test"
    message.set_content(body)
    if attachment:
        message.add_attachment(b"data", maintype="application", subtype="pdf", filename=attachment)
    return message.as_bytes()


def _subjects(api: Any, box: Mailbox, q: str) -> list[str]:
    response = api.get("/api/messages/search", params={"q": q}, headers=box.headers)
    assert response.status_code == 200, response.text
    return [hit["subject"] for hit in response.json()["messages"]]


def test_synced_mail_is_searchable_and_leaves_the_index_with_the_server(
    api: Any, mailbox: Mailbox, dovecot: Dovecot
) -> None:
    # Given a mailbox with three messages in two folders, synced
    kept = dovecot.append(mailbox.user, "INBOX", _mail("Kayak trip", "Paddles and maps."))
    gone = dovecot.append(mailbox.user, "INBOX", _mail("Kayak rental", "The kayak is booked."))
    dovecot.append(mailbox.user, "Archive", _mail("Old plans", "kayak", attachment="route.pdf"))
    assert sync(api, mailbox)["status"] == "success"

    # Then search finds them by word, sender, attachment name and folder
    assert sorted(_subjects(api, mailbox, "kayak")) == ["Kayak rental", "Kayak trip", "Old plans"]
    assert sorted(_subjects(api, mailbox, "from:zoe kayak in:inbox")) == [
        "Kayak rental",
        "Kayak trip",
    ]
    assert _subjects(api, mailbox, "filename:route") == ["Old plans"]

    # When one message is expunged, one moved to another folder and a folder deleted
    client = dovecot.imap(mailbox.user)
    try:
        client.select_folder("INBOX")
        client.create_folder("Trips")
        client.copy([kept], "Trips")
        client.delete_messages([gone, kept])
        client.expunge()
        client.delete_folder("Archive")
    finally:
        client.logout()
    assert sync(api, mailbox)["status"] == "success"

    # Then the index follows at once
    assert _subjects(api, mailbox, "kayak") == ["Kayak trip"]
    assert _subjects(api, mailbox, "kayak in:trips") == ["Kayak trip"]
    assert _subjects(api, mailbox, "kayak in:inbox") == []
    assert _subjects(api, mailbox, "filename:route") == []


def test_words_deep_in_a_synced_body_are_found_once_the_index_is_completed(
    api: Any, mailbox: Mailbox, dovecot: Dovecot
) -> None:
    # Given a message whose body has words after its start and after 10 KB
    body = "Opening words. " + "a " * 400 + "kestrel " + "b " * 6000 + "osprey falcon"
    dovecot.append(mailbox.user, "INBOX", _mail("Bird survey", body))
    dovecot.append(mailbox.user, "INBOX", _mail("Short note", "An osprey flew by."))
    # When it is synced (the worker then completes its index entry, after the commit)
    assert sync(api, mailbox)["status"] == "success"

    # Then both words are found, through the whole body
    deadline = time.monotonic() + 60
    while _subjects(api, mailbox, "kestrel") == [] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _subjects(api, mailbox, "kestrel") == ["Bird survey"]
    assert sorted(_subjects(api, mailbox, "osprey")) == ["Bird survey", "Short note"]
    assert _subjects(api, mailbox, '"osprey falcon" from:zoe') == ["Bird survey"]

    # And an expunged message leaves the completed index with the next sync
    client = dovecot.imap(mailbox.user)
    try:
        client.select_folder("INBOX")
        client.delete_messages(client.search(["SUBJECT", "Bird survey"]))
        client.expunge()
    finally:
        client.logout()
    assert sync(api, mailbox)["status"] == "success"
    assert _subjects(api, mailbox, "osprey") == ["Short note"]
    assert _subjects(api, mailbox, "kestrel") == []
