"""Self-tests: the test servers really work (no mocks)."""

from __future__ import annotations

import email
import email.policy
import hashlib
import io
import poplib
import re
import smtplib
import socket
import ssl
import statistics
import time
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta, timezone
from email.message import EmailMessage, Message
from typing import Any

import imapclient
import pytest
from imapclient.exceptions import LoginError

from tests.servers.dovecot import Dovecot, DovecotError, MailUser, _group_alive
from tests.servers.mailgen import EXPECTED, bulk, corpus
from tests.servers.s3 import S3Server
from tests.servers.smtp import SmtpServer

CORPUS = corpus()
CRLF_POLICY = email.policy.default.clone(linesep="\r\n")


def _message(sender: MailUser, to: list[str], subject: str, body: str = "Hello there.\n") -> bytes:
    msg = EmailMessage()
    msg["From"] = sender.email
    msg["To"] = ", ".join(to)
    msg["Subject"] = subject
    msg["Message-ID"] = email.utils.make_msgid(domain="example.test")
    msg["Date"] = email.utils.format_datetime(datetime.now(UTC))
    msg.set_content(body)
    return msg.as_bytes(policy=email.policy.SMTP)


def _fetch_all(dovecot: Dovecot, user: MailUser, folder: str = "INBOX") -> dict[int, bytes]:
    client = dovecot.imap(user)
    try:
        client.select_folder(folder, readonly=True)
        uids = client.search("ALL")
        if not uids:
            return {}
        data = client.fetch(uids, ["BODY.PEEK[]"])
        return {uid: d[b"BODY[]"] for uid, d in data.items()}
    finally:
        client.logout()


# --------------------------------------------------------------------------
# Dovecot
# --------------------------------------------------------------------------


def test_imap_login_right_and_wrong_password(dovecot: Dovecot, mail_user: MailUser) -> None:
    client = dovecot.imap(mail_user)
    assert client.select_folder("INBOX")[b"EXISTS"] == 0
    client.logout()
    with pytest.raises(LoginError):
        dovecot.imap(MailUser(mail_user.email, mail_user.password + "x"))
    with pytest.raises(LoginError):
        dovecot.imap(MailUser("nobody-here@example.test", "whatever-password"))


def test_new_users_can_log_in_immediately(dovecot: Dovecot) -> None:
    # Dovecot re-reads a changed passwd-file at most once a second; per-user files avoid that.
    for _ in range(15):
        user = dovecot.new_user("burst")
        assert len(user.password) >= 16
        assert user.email.endswith("@example.test")
        dovecot.imap(user).logout()


def test_login_name_is_case_insensitive(dovecot: Dovecot, mail_user: MailUser) -> None:
    dovecot.imap(MailUser(mail_user.email.upper(), mail_user.password)).logout()


def test_password_change_takes_effect(dovecot: Dovecot, mail_user: MailUser) -> None:
    dovecot.imap(mail_user).logout()
    dovecot.add_user(mail_user.email, "a-new:password with spaces")
    dovecot.imap(MailUser(mail_user.email, "a-new:password with spaces")).logout()
    assert not dovecot.authenticate(mail_user.email, mail_user.password)


def test_imaps_verifies_against_ca_file(dovecot: Dovecot, mail_user: MailUser) -> None:
    ctx = ssl.create_default_context(cafile=str(dovecot.ca_file))
    for host in ("127.0.0.1", "localhost"):
        client = imapclient.IMAPClient(
            host, port=dovecot.imaps_port, ssl=True, ssl_context=ctx, timeout=10
        )
        client.login(mail_user.email, mail_user.password)
        assert client.select_folder("INBOX")[b"EXISTS"] == 0
        client.logout()
    dovecot.imaps(mail_user).logout()


def test_imaps_fails_verification_with_default_ca_store(dovecot: Dovecot) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        imapclient.IMAPClient(
            dovecot.host,
            port=dovecot.imaps_port,
            ssl=True,
            ssl_context=ssl.create_default_context(),
            timeout=10,
        )


def test_ca_file_is_ec_self_signed_with_san(dovecot: Dovecot) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    cert = x509.load_pem_x509_certificate(dovecot.ca_file.read_bytes())
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert cert.issuer == cert.subject


def test_pop3_login_and_uidl_after_append(dovecot: Dovecot, mail_user: MailUser) -> None:
    raw = [CORPUS["plain_ascii"], CORPUS["alternative"]]
    for r in raw:
        dovecot.append(mail_user, "INBOX", r)
    pop = poplib.POP3(dovecot.host, dovecot.pop3_port, timeout=10)
    try:
        assert pop.getwelcome().startswith(b"+OK")
        pop.user(mail_user.email)
        pop.pass_(mail_user.password)
        count, _size = pop.stat()
        assert count == 2
        uidl = pop.uidl()[1]
        assert len(uidl) == 2 and len({line.split()[1] for line in uidl}) == 2
        _resp, lines, _octets = pop.retr(1)
        assert b"\r\n".join(lines) + b"\r\n" == raw[0]
    finally:
        pop.quit()


def test_pop3_wrong_password_and_pop3s(dovecot: Dovecot, mail_user: MailUser) -> None:
    pop = poplib.POP3_SSL(
        dovecot.host, dovecot.pop3s_port, context=dovecot.client_ssl_context(), timeout=10
    )
    try:
        pop.user(mail_user.email)
        with pytest.raises(poplib.error_proto):
            pop.pass_("wrong-password")
    finally:
        pop.close()
    pop = poplib.POP3_SSL(
        dovecot.host, dovecot.pop3s_port, context=dovecot.client_ssl_context(), timeout=10
    )
    try:
        pop.user(mail_user.email)
        pop.pass_(mail_user.password)
        assert pop.stat()[0] == 0
    finally:
        pop.quit()


def test_special_use_folders(dovecot: Dovecot, mail_user: MailUser) -> None:
    client = dovecot.imap(mail_user)
    try:
        flags = {name: set(f) for f, _sep, name in client.list_folders()}
        for name, flag in (
            ("Sent", b"\\Sent"),
            ("Drafts", b"\\Drafts"),
            ("Trash", b"\\Trash"),
            ("Junk", b"\\Junk"),
        ):
            assert flag in flags[name]
            assert client.find_special_folder(flag) == name
        assert "INBOX" in flags
        assert b"SPECIAL-USE" in client.capabilities()
    finally:
        client.logout()


def test_condstore_highestmodseq(dovecot: Dovecot, mail_user: MailUser) -> None:
    uid = dovecot.append(mail_user, "INBOX", CORPUS["plain_ascii"])
    plain = dovecot.imap(mail_user)
    try:
        assert {b"CONDSTORE", b"QRESYNC"} <= set(plain.capabilities())
        # Without CONDSTORE enabled, Dovecot's SELECT omits HIGHESTMODSEQ; STATUS has it anyway.
        assert b"HIGHESTMODSEQ" not in plain.select_folder("INBOX")
        status_before = plain.folder_status("INBOX", [b"HIGHESTMODSEQ"])[b"HIGHESTMODSEQ"]
    finally:
        plain.logout()
    client = dovecot.imap(mail_user)
    try:
        assert client.enable("CONDSTORE") == [b"CONDSTORE"]
        before = client.select_folder("INBOX")[b"HIGHESTMODSEQ"]
        assert before == status_before
        client.add_flags([uid], [b"\\Flagged"])
        modseq = client.fetch([uid], ["MODSEQ"])[uid][b"MODSEQ"][0]
        assert modseq > before
    finally:
        client.logout()
    status = dovecot.doveadm(
        "mailbox", "status", "-u", mail_user.email, "messages highestmodseq", "INBOX"
    )
    assert f"highestmodseq={modseq}" in status and "messages=1" in status


def test_append_returns_uid_and_keeps_flags_and_internaldate(
    dovecot: Dovecot, mail_user: MailUser
) -> None:
    when = datetime(2025, 12, 24, 18, 30, tzinfo=timezone(timedelta(hours=2)))
    first = dovecot.append(
        mail_user, "Archive/2025", CORPUS["thread_1"], flags=[b"\\Seen"], when=when
    )
    second = dovecot.append(mail_user, "Archive/2025", CORPUS["thread_3"])
    assert second == first + 1
    client = dovecot.imap(mail_user)
    try:
        client.normalise_times = False
        client.select_folder("Archive/2025", readonly=True)
        data = client.fetch([first], ["FLAGS", "INTERNALDATE"])[first]
        assert b"\\Seen" in data[b"FLAGS"]
        assert data[b"INTERNALDATE"] == when
    finally:
        client.logout()


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_corpus_sample_appends_and_fetches_back_byte_identical(
    dovecot: Dovecot, mail_user: MailUser, name: str
) -> None:
    folder = EXPECTED[name]["folder"]
    uid = dovecot.append(mail_user, folder, CORPUS[name])
    client = dovecot.imap(mail_user)
    try:
        client.select_folder(folder, readonly=True)
        data = client.fetch([uid], ["BODY.PEEK[]", "RFC822.SIZE"])[uid]
    finally:
        client.logout()
    assert data[b"BODY[]"] == CORPUS[name]
    assert data[b"RFC822.SIZE"] == len(CORPUS[name])


def test_doveadm_and_stop_start_keep_mail(dovecot: Dovecot, mail_user: MailUser) -> None:
    uid = dovecot.append(mail_user, "INBOX", CORPUS["nested"])
    ports = (dovecot.imap_port, dovecot.imaps_port, dovecot.pop3_port, dovecot.pop3s_port)
    dovecot.stop()
    assert not dovecot.running
    with pytest.raises(OSError):
        socket.create_connection((dovecot.host, dovecot.imap_port), timeout=2).close()
    with pytest.raises(OSError):
        smtplib.LMTP(str(dovecot.lmtp_socket)).close()
    started = time.monotonic()
    dovecot.start()
    restart_seconds = time.monotonic() - started
    assert (dovecot.imap_port, dovecot.imaps_port, dovecot.pop3_port, dovecot.pop3s_port) == ports
    assert _fetch_all(dovecot, mail_user) == {uid: CORPUS["nested"]}
    assert restart_seconds < 5
    assert "messages=1" in dovecot.doveadm(
        "mailbox", "status", "-u", mail_user.email, "messages", "INBOX"
    )


def test_deliver_over_lmtp_adds_trace_headers(dovecot: Dovecot, mail_user: MailUser) -> None:
    dovecot.deliver(mail_user.email, CORPUS["koi8r_8bit"], mail_from="ivan@example.ru")
    (raw,) = _fetch_all(dovecot, mail_user).values()
    assert raw.startswith(
        b"Return-Path: <ivan@example.ru>\r\nDelivered-To: " + mail_user.email.encode()
    )
    assert raw.endswith(CORPUS["koi8r_8bit"])


def test_broken_config_reports_log_tail() -> None:
    server = Dovecot()
    try:
        server.config_path.write_text(
            server.config_path.read_text() + "\nno_such_setting_xyz = 1\n"
        )
        with pytest.raises(DovecotError, match="no_such_setting_xyz"):
            server.start(timeout=10)
        assert not server.running
    finally:
        server.close()
    assert not server.base_dir.exists()


def test_close_kills_processes_and_removes_dir() -> None:
    with Dovecot() as server:
        user = server.new_user()
        server.imap(user).logout()
        proc = server._rt.proc
        assert proc is not None
        pgid = proc.pid
        base = server.base_dir
        assert _group_alive(pgid)
    assert not _group_alive(pgid)
    assert not base.exists()


# --------------------------------------------------------------------------
# SMTP
# --------------------------------------------------------------------------


def test_smtp_auth_delivers_into_recipient_inbox(
    dovecot: Dovecot, smtp_server: SmtpServer, mail_user: MailUser
) -> None:
    sender = dovecot.new_user("sender")
    raw = _message(sender, [mail_user.email], "Delivered for real")
    with smtplib.SMTP(smtp_server.host, smtp_server.port, timeout=10) as smtp:
        smtp.ehlo()
        assert "PLAIN" in smtp.esmtp_features["auth"] and "LOGIN" in smtp.esmtp_features["auth"]
        smtp.login(sender.email, sender.password)
        assert smtp.sendmail(sender.email, [mail_user.email], raw) == {}
    (stored,) = _fetch_all(dovecot, mail_user).values()
    assert stored.endswith(raw)
    assert b"Delivered-To: " + mail_user.email.encode() in stored
    assert smtp_server.received == [(sender.email, [mail_user.email], raw)]
    (transaction,) = smtp_server.transactions
    assert transaction.auth_user == sender.email and not transaction.tls


def test_smtp_starttls_auth_login_and_several_recipients(
    dovecot: Dovecot, smtp_server: SmtpServer
) -> None:
    sender, alice, bob = dovecot.new_user("s"), dovecot.new_user("alice"), dovecot.new_user("bob")
    raw = _message(sender, [alice.email, bob.email], "Two recipients")
    with smtplib.SMTP(smtp_server.host, smtp_server.port, timeout=10) as smtp:
        smtp.starttls(context=dovecot.client_ssl_context())
        smtp.ehlo()
        smtp.user, smtp.password = sender.email, sender.password
        code, _ = smtp.auth("LOGIN", smtp.auth_login)
        assert code == 235
        assert smtp.sendmail(sender.email, [alice.email, bob.email], raw) == {}
    for user in (alice, bob):
        (stored,) = _fetch_all(dovecot, user).values()
        assert stored.endswith(raw)
    assert smtp_server.transactions[-1].tls


def test_smtps_implicit_tls(dovecot: Dovecot, smtp_server: SmtpServer, mail_user: MailUser) -> None:
    with smtplib.SMTP_SSL(
        smtp_server.host, smtp_server.smtps_port, context=dovecot.client_ssl_context(), timeout=10
    ) as smtp:
        smtp.login(mail_user.email, mail_user.password)
        smtp.sendmail(
            mail_user.email, [mail_user.email], _message(mail_user, [mail_user.email], "to self")
        )
    assert len(_fetch_all(dovecot, mail_user)) == 1
    assert smtp_server.transactions[-1].tls


def test_smtp_wrong_password_is_535(smtp_server: SmtpServer, mail_user: MailUser) -> None:
    with (
        smtplib.SMTP(smtp_server.host, smtp_server.port, timeout=10) as smtp,
        pytest.raises(smtplib.SMTPAuthenticationError) as info,
    ):
        smtp.login(mail_user.email, "not-the-password")
    assert info.value.smtp_code == 535


def test_smtp_unknown_recipient_is_550(
    dovecot: Dovecot, smtp_server: SmtpServer, mail_user: MailUser
) -> None:
    raw = _message(mail_user, ["ghost@example.test", mail_user.email], "partly unknown")
    with smtplib.SMTP(smtp_server.host, smtp_server.port, timeout=10) as smtp:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
            smtp.sendmail(mail_user.email, ["ghost@example.test"], raw)
        assert info.value.recipients["ghost@example.test"][0] == 550
        refused = smtp.sendmail(mail_user.email, ["ghost@example.test", mail_user.email], raw)
    assert refused["ghost@example.test"][0] == 550
    assert len(_fetch_all(dovecot, mail_user)) == 1
    assert smtp_server.received[-1].rcpt_tos == [mail_user.email]


def test_fail_next_gives_451_then_delivers(
    dovecot: Dovecot, smtp_server: SmtpServer, mail_user: MailUser
) -> None:
    raw = _message(mail_user, [mail_user.email], "retry me")
    smtp_server.fail_next(2, code=451, message="4.3.0 try later")
    with smtplib.SMTP(smtp_server.host, smtp_server.port, timeout=10) as smtp:
        for _ in range(2):
            with pytest.raises(smtplib.SMTPDataError) as info:
                smtp.sendmail(mail_user.email, [mail_user.email], raw)
            assert info.value.smtp_code == 451
            assert b"try later" in info.value.smtp_error
        smtp.sendmail(mail_user.email, [mail_user.email], raw)
    assert [t.reply[:3] for t in smtp_server.transactions] == ["451", "451", "250"]
    assert len(smtp_server.received) == 1
    assert len(_fetch_all(dovecot, mail_user)) == 1


def test_fail_next_at_mail_and_rcpt_stage(smtp_server: SmtpServer, mail_user: MailUser) -> None:
    raw = _message(mail_user, [mail_user.email], "stages")
    with smtplib.SMTP(smtp_server.host, smtp_server.port, timeout=10) as smtp:
        smtp_server.fail_next(1, code=451, message="4.7.1 greylisted", stage="mail")
        with pytest.raises(smtplib.SMTPSenderRefused) as sender_info:
            smtp.sendmail(mail_user.email, [mail_user.email], raw)
        assert sender_info.value.smtp_code == 451
        smtp_server.fail_next(1, code=550, message="5.7.1 relaying denied", stage="rcpt")
        with pytest.raises(smtplib.SMTPRecipientsRefused) as rcpt_info:
            smtp.sendmail(mail_user.email, [mail_user.email], raw)
        assert rcpt_info.value.recipients[mail_user.email][0] == 550
        assert smtp.sendmail(mail_user.email, [mail_user.email], raw) == {}
    assert smtp_server.pending_failures == 0


def test_null_sender_is_accepted(
    dovecot: Dovecot, smtp_server: SmtpServer, mail_user: MailUser
) -> None:
    raw = _message(mail_user, [mail_user.email], "Delivery Status Notification")
    with smtplib.SMTP(smtp_server.host, smtp_server.port, timeout=10) as smtp:
        smtp.sendmail("", [mail_user.email], raw)
    assert smtp_server.received[-1].mail_from == ""
    (stored,) = _fetch_all(dovecot, mail_user).values()
    assert stored.startswith(b"Return-Path: <>")


def test_smtp_when_dovecot_is_down_is_temporary(
    dovecot: Dovecot, smtp_server: SmtpServer, mail_user: MailUser
) -> None:
    raw = _message(mail_user, [mail_user.email], "outage")
    dovecot.stop()
    try:
        with smtplib.SMTP(smtp_server.host, smtp_server.port, timeout=10) as smtp:
            with pytest.raises(smtplib.SMTPAuthenticationError) as auth_info:
                smtp.login(mail_user.email, mail_user.password)
            assert auth_info.value.smtp_code == 454
            with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
                smtp.sendmail(mail_user.email, [mail_user.email], raw)
            assert info.value.recipients[mail_user.email][0] == 451
    finally:
        dovecot.start()


def test_smtp_stop_start_same_port(smtp_server: SmtpServer) -> None:
    port = smtp_server.port
    smtp_server.stop()
    with pytest.raises(OSError):
        smtplib.SMTP(smtp_server.host, port, timeout=2)
    smtp_server.start()
    assert smtp_server.port == port
    with smtplib.SMTP(smtp_server.host, port, timeout=10) as smtp:
        assert smtp.noop()[0] == 250


def test_smtp_require_auth(dovecot: Dovecot, mail_user: MailUser) -> None:
    with SmtpServer(dovecot, require_auth=True) as server:
        raw = _message(mail_user, [mail_user.email], "auth required")
        with smtplib.SMTP(server.host, server.port, timeout=10) as smtp:
            with pytest.raises(smtplib.SMTPSenderRefused) as info:
                smtp.sendmail(mail_user.email, [mail_user.email], raw)
            assert info.value.smtp_code == 530
            smtp.login(mail_user.email, mail_user.password)
            smtp.sendmail(mail_user.email, [mail_user.email], raw)
    assert len(_fetch_all(dovecot, mail_user)) == 1


# --------------------------------------------------------------------------
# S3
# --------------------------------------------------------------------------


def test_s3_put_get_and_presigned_get(s3_server: S3Server, s3_bucket: str) -> None:
    client = s3_server.client()
    data = CORPUS["mixed_attachments"]
    client.put_object(
        s3_bucket, "raw/0001.eml", io.BytesIO(data), len(data), content_type="message/rfc822"
    )
    response = client.get_object(s3_bucket, "raw/0001.eml")
    try:
        assert response.read() == data
    finally:
        response.close()
        response.release_conn()
    url = client.presigned_get_object(s3_bucket, "raw/0001.eml", expires=timedelta(minutes=5))
    parsed = urllib.parse.urlsplit(url)
    assert parsed.netloc == s3_server.endpoint
    query = urllib.parse.parse_qs(parsed.query)
    assert query["X-Amz-Expires"] == ["300"] and "X-Amz-Signature" in query
    with urllib.request.urlopen(url, timeout=10) as presigned:
        assert presigned.read() == data
    assert s3_server.url == f"http://{s3_server.endpoint}" and s3_server.region == "us-east-1"
    assert re.fullmatch(r"127\.0\.0\.1:\d+", s3_server.endpoint)


def test_s3_buckets_are_unique(s3_server: S3Server) -> None:
    names = {s3_server.new_bucket() for _ in range(3)}
    assert len(names) == 3
    for name in names:
        s3_server.delete_bucket(name)
    assert not any(s3_server.client().bucket_exists(n) for n in names)


# --------------------------------------------------------------------------
# mailgen
# --------------------------------------------------------------------------


def _walk_leaf_parts(msg: Message) -> list[Message]:
    """Leaf parts, not descending into message/rfc822 attachments."""
    if msg.get_content_type() == "message/rfc822":
        return [msg]
    if msg.is_multipart():
        payload = msg.get_payload()
        assert isinstance(payload, list)
        return [leaf for part in payload for leaf in _walk_leaf_parts(part)]
    return [msg]


def _summarize(msg: Any) -> dict[str, Any]:
    attachments: list[dict[str, Any]] = []
    inline: list[dict[str, Any]] = []
    text = html = None
    for part in _walk_leaf_parts(msg):
        ctype = part.get_content_type()
        disposition = part.get_content_disposition()
        if ctype == "message/rfc822":
            inner = part.get_payload(0)
            attachments.append(
                {
                    "filename": part.get_filename(),
                    "content_type": ctype,
                    "size": len(inner.as_bytes(policy=CRLF_POLICY)),
                }
            )
        elif part.get("Content-ID") and disposition != "attachment":
            inline.append(
                {
                    "content_id": part["Content-ID"],
                    "filename": part.get_filename(),
                    "content_type": ctype,
                    "size": len(part.get_payload(decode=True)),
                }
            )
        elif disposition == "attachment":
            payload = part.get_payload(decode=True)
            attachments.append(
                {
                    "filename": part.get_filename(),
                    "content_type": ctype,
                    "size": None if payload is None else len(payload),
                }
            )
        else:
            if ctype in ("text/plain", "text/html") and part.get_filename():
                # A named text file sent inline: in the body and among the attachments.
                attachments.append(
                    {
                        "filename": part.get_filename(),
                        "content_type": ctype,
                        "size": len(part.get_payload(decode=True)),
                    }
                )
            if ctype == "text/plain" and text is None:
                text = part.get_content()
            elif ctype == "text/html" and html is None:
                html = part.get_content()
    return {"attachments": attachments, "inline": inline, "text": text, "html": html}


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_corpus_expectations_match_stdlib_parser(name: str) -> None:
    raw, exp = CORPUS[name], EXPECTED[name]
    assert set(exp) >= {"subject", "from_addr", "attachments", "text_snippet", "folder", "broken"}
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    if exp.get("raw_header_bytes"):
        head = raw.split(b"\r\n\r\n", 1)[0]
        assert (
            re.search(rb"\r\nSubject: ([^\r]*)", head).group(1).decode("latin-1") == exp["subject"]
        )
        assert exp["from_name"].encode("latin-1") in head
    else:
        assert (str(msg["Subject"]) if msg["Subject"] is not None else None) == exp["subject"]
        (sender,) = msg["From"].addresses
        assert sender.addr_spec == exp["from_addr"]
        assert (sender.display_name or None) == exp["from_name"]
        assert [a.addr_spec for a in msg["To"].addresses] == exp["to"]
    assert msg["Message-ID"] == exp["message_id"]
    assert (msg["Date"].datetime if msg["Date"] else None) == exp["date"]
    assert msg["In-Reply-To"] == exp["in_reply_to"]
    assert (str(msg["References"]).split() if msg["References"] else []) == exp["references"]
    summary = _summarize(msg)
    if exp["text_snippet"] is not None:
        assert exp["text_snippet"] in summary["text"]
    if exp["html_snippet"] is not None:
        assert exp["html_snippet"] in summary["html"]
    if exp["broken"]:
        assert [a["filename"] for a in summary["attachments"]] == [
            a["filename"] for a in exp["attachments"]
        ]
    else:
        assert summary["attachments"] == exp["attachments"]
    assert summary["inline"] == exp["inline"]
    if exp["charset"] and not exp["broken"] and msg.get_content_type() == "text/plain":
        assert msg.get_content_charset() == exp["charset"]
    for needle in exp.get("dangerous", []):
        assert needle in summary["html"]


def test_corpus_is_deterministic_and_wire_safe() -> None:
    assert corpus() == CORPUS
    names = (
        "plain_ascii alternative mixed_attachments rfc2231_filename latin1_qp cp1252_qp koi8r_8bit "
        "sjis_base64 utf8_qp utf8_base64 encoded_headers html_only_xss related_inline_image "
        "thread_1 thread_2 thread_3 nested forwarded_rfc822 broken_base64 broken_missing_boundary "
        "broken_8bit_header broken_no_date_no_msgid broken_empty_body inline_text_files"
    )
    required = set(names.split())
    assert set(CORPUS) == required == set(EXPECTED)
    assert EXPECTED["thread_2"]["folder"] == "Sent"
    for name, raw in CORPUS.items():
        assert b"\x00" not in raw, name
        assert b"\n" not in raw.replace(b"\r\n", b""), name
        assert all(len(line) <= 998 for line in raw.split(b"\r\n")), name


def test_bulk_size_distribution() -> None:
    started = time.monotonic()
    plain_sizes: list[int] = []
    attachment_sizes: list[int] = []
    ids: list[bytes] = []
    samples: list[bytes] = []
    plain_samples: list[bytes] = []
    first = hashlib.sha256()
    for n, raw in enumerate(bulk(600, seed=7)):
        head = raw.split(b"\r\n\r\n", 1)[0]
        ids.append(re.search(rb"\r\nMessage-ID: (<[^>]+>)", head).group(1))
        if n < 20:
            first.update(raw)
        if b"Content-Type: multipart/mixed" in head:
            declared = int(re.search(rb'attachment; filename="[^"]+"; size=(\d+)', raw).group(1))
            attachment_sizes.append(declared)
            if len(samples) < 5:
                samples.append(raw)
        else:
            plain_sizes.append(len(raw))
            if len(plain_samples) < 2:
                plain_samples.append(raw)
    elapsed = time.monotonic() - started
    assert len(ids) == 600 and len(set(ids)) == 600
    assert 0.15 <= len(attachment_sizes) / 600 <= 0.25
    assert 10_000 <= statistics.mean(plain_sizes) <= 12_500
    assert min(plain_sizes) >= 8_000 and max(plain_sizes) <= 15_000
    assert all(50 * 1024 <= size <= 500 * 1024 for size in attachment_sizes)
    assert statistics.mean(attachment_sizes) > 150 * 1024  # spread over the range
    for raw in samples + plain_samples:
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        assert msg["From"].addresses[0].addr_spec and msg["Date"].datetime and msg["Subject"]
        assert msg.get_body(("plain",)) is not None and msg.get_body(("html",)) is not None
        for attachment in msg.iter_attachments():
            size = int(attachment.get_param("size", header="Content-Disposition"))
            assert len(attachment.get_payload(decode=True)) == size
    other_ids = {re.search(rb"\r\nMessage-ID: (<[^>]+>)", m).group(1) for m in bulk(50, seed=8)}
    assert not other_ids & set(ids)
    again = hashlib.sha256()
    for raw in bulk(20, seed=7):
        again.update(raw)
    assert again.digest() == first.digest()
    assert elapsed < 5, f"bulk(600) took {elapsed:.2f}s"
