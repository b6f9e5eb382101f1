"""ImapSession against a real Dovecot (plain IMAP, IMAPS, STARTTLS)."""

from __future__ import annotations

import imaplib
import os
import pickle
import socket
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from email.message import EmailMessage

import pytest

from email_service.mail.endpoint import MailEndpoint
from email_service.mail.errors import MailAuthError, MailConnectionError, MailProtocolError
from email_service.mail.imap import (
    _UNREADABLE,
    ImapSession,
    _parse_fetch,
    _parse_message_fetch,
    _parse_or_unreadable,
)
from email_service.mail.limits import MailLimits
from email_service.mail.mime import parse_message
from email_service.mail.mimeparts import decode_part
from tests.mail.conftest import nobody_connected, unused_port
from tests.servers import mailgen
from tests.servers.dovecot import Dovecot, MailUser

Endpoint = Callable[..., MailEndpoint]


def _simple(n: int, body: str = "hello") -> bytes:
    return (
        f"From: a@example.test\r\nTo: b@example.test\r\nSubject: test {n}\r\n"
        f"Message-ID: <t{n}@example.test>\r\n\r\n{body} {n}\r\n"
    ).encode()


def _status(dovecot: Dovecot, user: MailUser, folder: str = "INBOX") -> dict[str, int]:
    out = dovecot.doveadm(
        "mailbox", "status", "-u", user.email, "messages highestmodseq uidnext uidvalidity", folder
    )
    # "INBOX messages=3 uidnext=4 ..." (the folder name comes first)
    return {k: int(v) for k, _, v in (item.partition("=") for item in out.split() if "=" in item)}


# ---------------------------------------------------------------- connecting


def test_plain_login_reports_capabilities(imap_endpoint: Endpoint) -> None:
    with ImapSession(imap_endpoint()) as imap:
        assert {"IMAP4REV1", "CONDSTORE", "QRESYNC", "MOVE", "UIDPLUS"} <= imap.capabilities
        assert imap.supports_condstore and imap.supports_qresync
        assert imap.tls_version is None
        assert imap.round_trips >= 2


def test_implicit_tls_verified_with_ca_file(imap_endpoint: Endpoint) -> None:
    with ImapSession(imap_endpoint("tls")) as imap:
        assert imap.tls_version is not None and imap.tls_version.startswith("TLSv1.")
        assert imap.select("INBOX").exists == 0


def test_implicit_tls_refused_without_ca_file(imap_endpoint: Endpoint) -> None:
    with pytest.raises(MailConnectionError) as info:
        ImapSession(imap_endpoint("tls", ca_file=None)).open()
    assert info.value.certificate_error
    assert "certificate verification failed" in str(info.value)
    assert info.value.transient


def test_starttls_upgrades_and_verifies(imap_endpoint: Endpoint) -> None:
    with ImapSession(imap_endpoint("starttls")) as imap:
        assert imap.tls_version is not None
        imap.select("INBOX")
    with pytest.raises(MailConnectionError) as info:
        ImapSession(imap_endpoint("starttls", ca_file=None)).open()
    assert info.value.certificate_error


def test_starttls_refused_when_server_does_not_offer_it() -> None:
    # A scripted server whose capabilities lack STARTTLS: the client must stop before
    # sending credentials.
    received: list[bytes] = []
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)

        def serve() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.sendall(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] no tls here\r\n")
                stream = conn.makefile("rb")
                for line in stream:
                    received.append(line)
                    tag = line.split(b" ", 1)[0]
                    if b"CAPABILITY" in line.upper():
                        conn.sendall(b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n")
                    if b"LOGOUT" in line.upper():
                        conn.sendall(b"* BYE bye\r\n")
                    conn.sendall(tag + b" OK done\r\n")

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        endpoint = MailEndpoint(
            "127.0.0.1", listener.getsockname()[1], "starttls", "u", "secret-pw", timeout=5
        )
        with pytest.raises(MailConnectionError, match="does not offer STARTTLS"):
            ImapSession(endpoint).open()
        thread.join(5)
    assert not any(b"secret-pw" in line or b"LOGIN" in line.upper() for line in received)


def test_wrong_password_is_auth_error(imap_endpoint: Endpoint) -> None:
    endpoint = imap_endpoint(password="not-the-password-123")
    with pytest.raises(MailAuthError) as info:
        ImapSession(endpoint).open()
    assert "rejected the username or password" in str(info.value)
    assert "not-the-password-123" not in str(info.value)
    assert "not-the-password-123" not in repr(endpoint)
    assert not info.value.transient


def test_non_ascii_password_logs_in(dovecot: Dovecot) -> None:
    user = MailUser(f"umlaut-{id(dovecot)}@example.test", "pässwörd-ü")
    dovecot.add_user(user.email, user.password)
    endpoint = MailEndpoint(dovecot.host, dovecot.imap_port, "none", user.email, user.password)
    with ImapSession(endpoint) as imap:
        assert imap.select("INBOX").exists == 0


def test_connection_refused_is_connection_error() -> None:
    endpoint = MailEndpoint("127.0.0.1", unused_port(), "none", "u", "p", timeout=5)
    with pytest.raises(MailConnectionError, match="connection refused"):
        ImapSession(endpoint).open()


def test_silent_server_times_out(listening_socket: socket.socket) -> None:
    endpoint = MailEndpoint(
        "127.0.0.1", listening_socket.getsockname()[1], "none", "u", "p", timeout=0.5
    )
    with pytest.raises(MailConnectionError, match=r"did not answer within 0\.5 s .* IMAP greeting"):
        ImapSession(endpoint).open()


def test_connect_guard_refuses_before_connecting(
    connect_guard: list[tuple[str, int]], listening_socket: socket.socket
) -> None:
    port = listening_socket.getsockname()[1]
    endpoint = MailEndpoint("127.0.0.1", port, "none", "u", "p", timeout=5)
    with pytest.raises(PermissionError):
        ImapSession(endpoint).open()
    assert connect_guard == [("127.0.0.1", port)]
    assert nobody_connected(listening_socket)


def test_dropped_connection_is_connection_error(
    dovecot: Dovecot, imap_endpoint: Endpoint, mail_user: MailUser
) -> None:
    with ImapSession(imap_endpoint()) as imap:
        imap.select("INBOX")
        dovecot.doveadm("kick", mail_user.email)
        with pytest.raises(MailConnectionError):
            imap.uids()


def test_errors_survive_pickling() -> None:
    error = MailConnectionError("x failed", certificate_error=True)
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes
    assert isinstance(copy, MailConnectionError)
    assert copy.certificate_error and str(copy) == "x failed"


# ---------------------------------------------------------------- folders


def test_list_folders_with_special_use(imap_endpoint: Endpoint) -> None:
    with ImapSession(imap_endpoint()) as imap:
        folders = {f.name: f for f in imap.list_folders()}
        assert {"INBOX", "Drafts", "Sent", "Trash", "Junk"} <= set(folders)
        assert folders["Sent"].special_use == "\\Sent"
        assert folders["Junk"].special_use == "\\Junk"
        assert folders["Drafts"].special_use == "\\Drafts"
        assert folders["Trash"].special_use == "\\Trash"
        assert folders["INBOX"].special_use is None
        assert folders["INBOX"].selectable and folders["INBOX"].delimiter == "/"
        assert imap.find_special_folder("\\Sent") == "Sent"
        assert imap.find_special_folder("junk") == "Junk"
        assert imap.find_special_folder("\\Archive") is None


def test_non_ascii_folder_names_round_trip(
    imap_endpoint: Endpoint, dovecot: Dovecot, mail_user: MailUser
) -> None:
    dovecot.append(mail_user, "Archiv/Geschäft & Co", _simple(1))
    with ImapSession(imap_endpoint()) as imap:
        names = [f.name for f in imap.list_folders()]
        assert "Archiv/Geschäft & Co" in names
        assert "Archiv" in names
        assert imap.select("Archiv/Geschäft & Co").exists == 1


def test_select_missing_folder_is_protocol_error(imap_endpoint: Endpoint) -> None:
    with ImapSession(imap_endpoint()) as imap:
        with pytest.raises(MailProtocolError, match="No-Such-Folder"):
            imap.select("No-Such-Folder")
        with pytest.raises(RuntimeError, match="select"):
            imap.uids()
        assert imap.select("INBOX").exists == 0  # the session is still usable


def test_select_state_matches_server(
    imap_endpoint: Endpoint, dovecot: Dovecot, mail_user: MailUser
) -> None:
    for n in range(3):
        dovecot.append(mail_user, "INBOX", _simple(n))
    expected = _status(dovecot, mail_user)
    with ImapSession(imap_endpoint()) as imap:
        state = imap.select("INBOX")
    assert state.exists == expected["messages"] == 3
    assert state.uidvalidity == expected["uidvalidity"]
    assert state.uidnext == expected["uidnext"] == 4
    assert state.highestmodseq == expected["highestmodseq"]
    assert state.highestmodseq is not None and state.highestmodseq > 1


def test_list_status_gives_every_folders_state_in_one_round_trip(
    imap_endpoint: Endpoint, dovecot: Dovecot, mail_user: MailUser
) -> None:
    for n in range(3):
        dovecot.append(mail_user, "INBOX", _simple(n))
    dovecot.append(mail_user, "Archiv/Geschäft & Co", _simple(9))
    with ImapSession(imap_endpoint()) as imap:
        before = imap.round_trips
        listed = {f.name: f for f in imap.list_folders(with_status=True)}
        assert imap.round_trips == before + 1
        for name in ("INBOX", "Archiv/Geschäft & Co"):
            assert listed[name].status == imap.select(name), name
        assert all(f.status is None for f in imap.list_folders())


# ---------------------------------------------------------------- message lists


def test_uids_and_uids_above(
    imap_endpoint: Endpoint, dovecot: Dovecot, mail_user: MailUser
) -> None:
    with ImapSession(imap_endpoint()) as imap:
        imap.select("INBOX")
        assert imap.uids() == []
        assert imap.uids_above(0) == []  # empty folder: "1:*" matches nothing
    uids = [dovecot.append(mail_user, "INBOX", _simple(n)) for n in range(3)]
    with ImapSession(imap_endpoint()) as imap:
        imap.select("INBOX")
        assert imap.uids() == uids
        assert imap.uids_above(0) == uids
        assert imap.uids_above(uids[0]) == uids[1:]
        # No new mail: "UID n+1:*" still matches the last message on the wire.
        assert imap.uids_above(uids[-1]) == []
        assert imap.uids_above(uids[-1] + 100) == []


# ---------------------------------------------------------------- fetch


def test_fetch_returns_exact_bytes_without_setting_seen(
    imap_endpoint: Endpoint, dovecot: Dovecot, mail_user: MailUser
) -> None:
    samples = mailgen.corpus()
    when = datetime(2025, 6, 1, 12, 30, 15, tzinfo=timezone(timedelta(hours=2)))
    by_uid = {
        dovecot.append(mail_user, "INBOX", raw, flags=("$seen-before",), when=when): raw
        for raw in samples.values()
    }
    with ImapSession(imap_endpoint()) as imap:
        state = imap.select("INBOX")
        fetched = list(imap.fetch(sorted(by_uid), batch_size=7))
    assert [m.uid for m in fetched] == sorted(by_uid)
    for message in fetched:
        assert message.raw == by_uid[message.uid]
        assert message.size == len(message.raw)
        assert message.internaldate == when and message.internaldate.tzinfo == UTC
        assert message.flags == ("$seen-before",)
        assert message.modseq is not None and message.modseq <= (state.highestmodseq or 0)
    client = dovecot.imap(mail_user)
    try:
        client.select_folder("INBOX", readonly=True)
        flags = client.get_flags(sorted(by_uid))
    finally:
        client.logout()
    assert all(b"\\Seen" not in f for f in flags.values())


def test_fetch_skips_missing_and_survives_early_stop(
    imap_endpoint: Endpoint, dovecot: Dovecot, mail_user: MailUser
) -> None:
    uids = [dovecot.append(mail_user, "INBOX", _simple(n)) for n in range(10)]
    with ImapSession(imap_endpoint()) as imap:
        imap.select("INBOX")
        got = [m.uid for m in imap.fetch([*uids, 999, 1000], batch_size=3)]
        assert got == uids
        assert list(imap.fetch([])) == []
        # Stop after one message while later batches are still in flight.
        stream = imap.fetch(uids, batch_size=2)
        assert next(stream).uid == uids[0]
        stream.close()  # type: ignore[attr-defined]
        assert imap.uids() == uids  # the connection is still in sync
        first = next(iter(imap.fetch(uids[-1:])))
        assert first.raw == _simple(9)


def test_fetch_part_gives_each_attachment_as_the_parser_read_it_without_setting_seen(
    imap_endpoint: Endpoint, dovecot: Dovecot, mail_user: MailUser
) -> None:
    samples = mailgen.corpus()
    big = EmailMessage()
    big["From"], big["To"], big["Subject"] = "a@example.test", "b@example.test", "big"
    big.set_content("see attached")
    big.add_attachment(os.urandom(120_000), maintype="application", subtype="octet-stream")
    samples["big"] = big.as_bytes()
    uids = {name: dovecot.append(mail_user, "INBOX", raw) for name, raw in samples.items()}
    checked = set()
    # A cap that keeps every corpus part (a literal may be 64 KiB over it) but not "big".
    limits = MailLimits(max_message_bytes=50_000)
    with ImapSession(imap_endpoint(limits=limits)) as imap:
        imap.select("INBOX")
        for name, raw in samples.items():
            for attachment in parse_message(raw).attachments:
                if attachment.section is None or name == "big":
                    continue
                body = imap.fetch_part(uids[name], attachment.section)
                assert body is not None
                data = decode_part(body, attachment.encoding)
                if attachment.mime_type == "message/rfc822":
                    data = data.removesuffix(b"\r\n")  # the fast parser drops the line break
                assert data == attachment.data, (name, attachment.section)
                checked.add(attachment.section)
        assert {"2", "3", "1.2.2"} <= checked
        # An expunged (or never used) UID is None; a part over the cap is refused.
        assert imap.fetch_part(max(uids.values()) + 100, "2") is None
        with pytest.raises(MailProtocolError, match="more than MAX_MESSAGE_BYTES"):
            imap.fetch_part(uids["big"], "2")
        assert imap.uids() == sorted(uids.values())  # still in step
        for section in ("", "2]", "2.MIME", "0", "1..2"):
            with pytest.raises(ValueError):
                imap.fetch_part(1, section)
    client = dovecot.imap(mail_user)
    try:
        client.select_folder("INBOX", readonly=True)
        flags = client.get_flags(sorted(uids.values()))
    finally:
        client.logout()
    assert all(b"\\Seen" not in f for f in flags.values())


def test_fetch_parser_fast_path_agrees_with_general_parser() -> None:
    head = (
        b'7 (UID 9 FLAGS (\\Seen $x) INTERNALDATE " 2-Jan-2024 03:04:05 -0130" '
        b"RFC822.SIZE 5 MODSEQ (12) BODY[] {5}"
    )
    parts = [(head, b"hello"), b")"]
    fast = list(_parse_message_fetch(parts))
    general = list(_parse_fetch(parts))
    assert len(fast) == len(general) == 1
    assert fast[0][b"INTERNALDATE"] == general[0][b"INTERNALDATE"]
    for key in (b"UID", b"FLAGS", b"RFC822.SIZE", b"MODSEQ", b"BODY[]"):
        assert fast[0][key] == general[0][key], key
    # A shape the fast path does not know (body not last) still parses.
    other = [
        (b"7 (BODY[] {5}", b"hello"),
        b' UID 9 FLAGS () INTERNALDATE "02-Jan-2024 03:04:05 +0000")',
    ]
    assert next(iter(_parse_message_fetch(other)))[b"UID"] == 9


# ---------------------------------------------------------------- changes


def test_changed_since_after_flag_change(
    imap_endpoint: Endpoint, dovecot: Dovecot, mail_user: MailUser
) -> None:
    uids = [dovecot.append(mail_user, "INBOX", _simple(n)) for n in range(3)]
    with ImapSession(imap_endpoint()) as imap:
        before = imap.select("INBOX")
        assert before.highestmodseq is not None
        changes, modseq = imap.changed_since(before.highestmodseq)
        assert changes == {} and modseq == before.highestmodseq
        client = dovecot.imap(mail_user)
        try:
            client.select_folder("INBOX")
            client.add_flags([uids[1]], [b"\\Flagged"])
        finally:
            client.logout()
        changes, modseq = imap.changed_since(before.highestmodseq)
        assert changes == {uids[1]: ("\\Flagged",)}
        assert modseq == before.highestmodseq  # the snapshot taken at SELECT
        after = imap.select("INBOX")
        assert after.highestmodseq is not None and after.highestmodseq > before.highestmodseq
        assert imap.changed_since(after.highestmodseq) == ({}, after.highestmodseq)
        everything = imap.flags()
        assert everything == {uids[0]: (), uids[1]: ("\\Flagged",), uids[2]: ()}
        assert imap.flags([uids[2], 12345]) == {uids[2]: ()}


def test_vanished_after_expunge(
    imap_endpoint: Endpoint, dovecot: Dovecot, mail_user: MailUser
) -> None:
    uids = [dovecot.append(mail_user, "INBOX", _simple(n)) for n in range(4)]
    with ImapSession(imap_endpoint()) as imap:
        state = imap.select("INBOX")
        assert imap.vanished_since(state.highestmodseq, uids) == []
        client = dovecot.imap(mail_user)
        try:
            client.select_folder("INBOX")
            client.delete_messages([uids[0], uids[2]])
            client.expunge()
        finally:
            client.logout()
        imap.select("INBOX")
        # QRESYNC path, and the UID-list comparison used without a mod-sequence.
        assert imap.vanished_since(state.highestmodseq, uids) == [uids[0], uids[2]]
        assert imap.vanished_since(None, uids) == [uids[0], uids[2]]
        # Only known UIDs are reported.
        assert imap.vanished_since(state.highestmodseq, uids[1:2]) == []
        assert imap.vanished_since(state.highestmodseq, []) == []


# ---------------------------------------------------------------- changing


def test_append_returns_uid(imap_endpoint: Endpoint) -> None:
    raw = _simple(1)
    when = datetime(2024, 2, 29, 23, 59, 1, tzinfo=UTC)
    with ImapSession(imap_endpoint()) as imap:
        uid = imap.append("Sent", raw, flags=["\\Seen", "$Forwarded"], when=when)
        assert uid is not None
        imap.select("Sent")
        assert imap.uids() == [uid]
        (message,) = imap.fetch([uid])
        assert message.raw == raw
        assert set(message.flags) == {"\\Seen", "$Forwarded"}
        assert message.internaldate == when
        with pytest.raises(MailProtocolError, match="Nope"):
            imap.append("Nope", raw)
        with pytest.raises(ValueError):
            imap.append("Sent", raw, flags=["bad flag"])


def test_move_to_junk_and_back(
    imap_endpoint: Endpoint, dovecot: Dovecot, mail_user: MailUser
) -> None:
    raw = _simple(1)
    uid = dovecot.append(mail_user, "INBOX", raw, flags=("\\Seen",))
    with ImapSession(imap_endpoint()) as imap:
        imap.select("INBOX")
        with pytest.raises(RuntimeError, match="read-only"):
            imap.move(uid, "Junk")
        imap.select("INBOX", readonly=False)
        junk_uid = imap.move(uid, "Junk")
        assert junk_uid is not None
        assert imap.uids() == []
        imap.select("Junk", readonly=False)
        assert imap.uids() == [junk_uid]
        (message,) = imap.fetch([junk_uid])
        assert message.raw == raw and message.flags == ("\\Seen",)
        back_uid = imap.move(junk_uid, "INBOX")
        assert back_uid is not None and back_uid > uid
        assert imap.uids() == []
        imap.select("INBOX")
        assert imap.uids() == [back_uid]


def test_flags_and_keywords(imap_endpoint: Endpoint, dovecot: Dovecot, mail_user: MailUser) -> None:
    uids = [dovecot.append(mail_user, "INBOX", _simple(n)) for n in range(2)]
    with ImapSession(imap_endpoint()) as imap:
        imap.select("INBOX", readonly=False)
        imap.add_flags(uids, ["\\Seen", "work"])
        imap.set_keywords([uids[0]], ["project-x", "$label2"])
        flags = imap.flags()
        assert set(flags[uids[0]]) == {"\\Seen", "project-x", "$label2"}
        assert set(flags[uids[1]]) == {"\\Seen", "work"}
        imap.remove_flags(uids, ["\\Seen"])
        imap.set_keywords(uids, [])
        assert imap.flags() == {uids[0]: (), uids[1]: ()}
        for bad in ("two words", "a(b", "ünïcode", "\\NotASystemFlag", 'quo"te'):
            with pytest.raises(ValueError):
                imap.add_flags(uids, [bad])


# ---------------------------------------------------------------- throughput sanity


@pytest.fixture
def bulk_user(dovecot: Dovecot) -> Iterator[MailUser]:
    user = dovecot.new_user("bulk")
    client = dovecot.imap(user)
    try:
        for raw in mailgen.bulk(60, seed=3):
            client.append("INBOX", raw)
    finally:
        client.logout()
    yield user


def test_fetch_matches_imapclient_on_bulk_messages(dovecot: Dovecot, bulk_user: MailUser) -> None:
    endpoint = MailEndpoint(
        dovecot.host, dovecot.imap_port, "none", bulk_user.email, bulk_user.password
    )
    client = dovecot.imap(bulk_user)
    try:
        client.select_folder("INBOX", readonly=True)
        expected = {
            uid: data[b"BODY[]"] for uid, data in client.fetch("1:*", ["BODY.PEEK[]"]).items()
        }
    finally:
        client.logout()
    with ImapSession(endpoint) as imap:
        imap.select("INBOX")
        got = {m.uid: m.raw for m in imap.fetch(imap.uids(), batch_size=16)}
        # One command per batch: 60 messages in batches of 16 = 4 UID FETCH commands,
        # after one that reads every size (bodies above MAX_MESSAGE_BYTES are not asked).
        assert got == expected
        rounds_before = imap.round_trips
        list(imap.fetch(imap.uids(), batch_size=16))
        assert imap.round_trips - rounds_before == 1 + 1 + 4  # SEARCH, sizes, 4 x FETCH


def test_imaplib_debug_is_off(imap_endpoint: Endpoint) -> None:
    with ImapSession(imap_endpoint()) as imap:
        assert imap._imap.debug == 0
        assert isinstance(imap._imap, imaplib.IMAP4)


def test_a_fetch_answer_that_cannot_be_parsed_becomes_its_uid_marked_unreadable() -> None:
    good = [
        (b'3 (UID 7 FLAGS () INTERNALDATE "02-Jan-2024 03:04:05 +0000" BODY[] {2}', b"hi"),
        b")",
    ]
    assert [d[b"UID"] for d in _parse_or_unreadable(_parse_message_fetch, good)] == [7]
    garbled = [(b'3 (UID 8 FLAGS (\\Seen "broken off BODY[] {2}', b"hi"), b")"]
    [unreadable] = _parse_or_unreadable(_parse_message_fetch, garbled)
    assert unreadable[b"UID"] == 8
    assert "could not be read" in unreadable[_UNREADABLE]
    # Without a UID to be found it is dropped, like an unsolicited answer.
    assert list(_parse_or_unreadable(_parse_fetch, [b'3 (FLAGS (\\Seen "x'])) == []
