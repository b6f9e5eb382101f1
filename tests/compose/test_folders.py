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
