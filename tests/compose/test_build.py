"""Building outgoing messages with the email package (no servers)."""

from __future__ import annotations

from dataclasses import replace
from email import policy
from email.parser import BytesParser

import pytest

from email_service.mail.compose import (
    MAX_REFERENCES,
    OutgoingMessage,
    build_message,
    thread_references,
)

BASE = OutgoingMessage(
    sender="ada@example.test",
    sender_name="Ada Lovelace",
    to=("bo@example.test",),
    subject="Hi",
    body="Hello",
)


def parsed(raw: bytes):  # type: ignore[no-untyped-def]
    return BytesParser(policy=policy.default).parsebytes(raw)


def test_headers_are_encoded_and_the_message_id_is_in_the_senders_domain() -> None:
    built = build_message(replace(BASE, sender_name="Zoë Ünal", subject="Grüße"))
    assert built.raw.isascii()
    message = parsed(built.raw)
    assert message["Subject"] == "Grüße"
    assert str(message["From"]) == "Zoë Ünal <ada@example.test>"
    assert message["Message-ID"] == f"<{built.message_id}>"
    assert built.message_id.endswith("@example.test") and message["Date"] is not None


@pytest.mark.parametrize("field", ["subject", "sender_name"], ids=["subject", "display name"])
def test_a_line_break_can_never_start_a_new_header(field: str) -> None:
    with pytest.raises(ValueError):
        build_message(replace(BASE, **{field: "x\r\nBcc: victim@example.test"}))


def test_bcc_is_in_the_envelope_and_the_senders_copy_only() -> None:
    built = build_message(replace(BASE, cc=("cy@example.test",), bcc=("di@example.test",)))
    assert built.recipients == ("bo@example.test", "cy@example.test", "di@example.test")
    assert b"di@example.test" not in built.raw
    assert parsed(built.copy)["Bcc"] == "di@example.test"
    assert parsed(built.copy)["Message-ID"] == parsed(built.raw)["Message-ID"]


def test_references_follow_the_parent_and_stay_short() -> None:
    chain = [f"m{i}@example.test" for i in range(30)]
    references = thread_references(["<root@example.test>", *chain, "not an id"], "p@example.test")
    assert len(references) == MAX_REFERENCES
    assert references[0] == "root@example.test" and references[-1] == "p@example.test"
    built = build_message(replace(BASE, in_reply_to="p@example.test", references=references))
    message = parsed(built.raw)
    assert message["In-Reply-To"] == "<p@example.test>"
    assert str(message["References"]).split() == [f"<{ref}>" for ref in references]
