"""The IMAP pieces the jobs rely on, against the real Dovecot: special folders made when
missing, and an APPEND that happens once however often it is asked for."""

from __future__ import annotations

import pytest

from email_service.mail.endpoint import MailEndpoint
from email_service.mail.imap import ImapSession
from email_service.services.mailjobs import append_once, special_folder
from tests.servers.dovecot import Dovecot, MailUser


@pytest.fixture
def endpoint(dovecot: Dovecot, mail_user: MailUser) -> MailEndpoint:
    return MailEndpoint(
        host=dovecot.host,
        port=dovecot.imap_port,
        encryption="none",
        username=mail_user.email,
        password=mail_user.password,
        timeout=10.0,
    )


def test_a_missing_special_folder_is_created_and_then_found(endpoint: MailEndpoint) -> None:
    with ImapSession(endpoint) as imap:
        # Dovecot here marks Sent, Drafts, Junk and Trash, but no Archive
        assert imap.find_special_folder("\\Archive") is None
        created = special_folder(imap, "\\Archive", "Archive")
        assert created.name == "Archive"
        assert "Archive" in {folder.name for folder in imap.list_folders()}
        # found by its well-known name the next time, not created again
        assert special_folder(imap, "\\Archive", "Archive").name == "Archive"
        imap.create_folder("Archive")  # an existing folder is no error
        assert special_folder(imap, "\\Sent", "Sent").special_use == "\\Sent"


def test_append_once_appends_a_message_id_only_once(endpoint: MailEndpoint) -> None:
    raw = b"Message-ID: <once-1@example.test>\r\nSubject: once\r\n\r\nbody\r\n"
    with ImapSession(endpoint) as imap:
        first = append_once(imap, "Drafts", raw, "once-1@example.test", ("\\Draft",))
        again = append_once(imap, "Drafts", raw, "once-1@example.test", ("\\Draft",))
        assert first is not None and again == first
        imap.select("Drafts")
        assert imap.uids() == [first]
        assert imap.flags([first])[first] == ("\\Draft",)
        with pytest.raises(ValueError):
            imap.uids_with_header("Message-ID", "<x>\r\nA001 LOGOUT")


def _with_id(message_id: str) -> bytes:
    return f"Message-ID: <{message_id}>\r\nSubject: s\r\n\r\nbody\r\n".encode()


def test_append_once_given_newest_looks_only_among_the_newest_messages(
    endpoint: MailEndpoint,
) -> None:
    flags = ("\\Seen",)
    with ImapSession(endpoint) as imap:
        imap.create_folder("Window")
        # Given a folder with an old message and five newer ones
        deep = append_once(
            imap, "Window", _with_id("deep@example.test"), "deep@example.test", flags
        )
        newer = [
            append_once(imap, "Window", _with_id(f"n{i}@example.test"), f"n{i}@example.test", flags)
            for i in range(5)
        ]
        # Then a copy among the newest three is found, not appended again
        assert (
            append_once(
                imap, "Window", _with_id("n4@example.test"), "n4@example.test", flags, newest=3
            )
            == newer[4]
        )
        # and the old one is outside that window (the server reads no further back)
        outside = append_once(
            imap, "Window", _with_id("deep@example.test"), "deep@example.test", flags, newest=3
        )
        assert outside is not None and outside != deep
        # while without a window the whole folder is searched
        assert (
            append_once(imap, "Window", _with_id("n0@example.test"), "n0@example.test", flags)
            == newer[0]
        )
        imap.select("Window")
        assert len(imap.uids()) == 7
        # and an empty folder is not searched at all
        imap.create_folder("Empty")
        first = append_once(
            imap, "Empty", _with_id("e@example.test"), "e@example.test", flags, newest=3
        )
        assert first is not None
