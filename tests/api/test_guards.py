"""Guard rails on input: mail hosts, plaintext, line breaks in headers, body size.

There is no DNS in the test environment, so names are resolved the real way only where
the hosts file answers (``localhost``); the numeric forms ``getaddrinfo`` reads itself
(``2130706433``, ``127.1``) need no DNS either. Where a test needs a name that resolves
to a chosen address it passes the policy a resolver of its own.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from typing import Any
from urllib.parse import urlsplit

import pytest

from email_service.config import Settings
from email_service.mail.endpoint import MailEndpoint
from email_service.mail.imap import ImapSession
from email_service.mail.pop3 import Pop3Session
from email_service.mail.smtp import send
from email_service.netguard import (
    HostNotAllowed,
    HostPolicy,
    HostUnresolvable,
    forbidden_reason,
)
from email_service.web.validation import ecma_anchors
from tests.conftest import Identity, serve_app
from tests.factories import account_body, create_account

# --- which addresses ------------------------------------------------------------------

FORBIDDEN = {
    "127.0.0.2": "loopback",
    "0.0.0.0": "unspecified",
    "10.1.2.3": "private",
    "172.16.0.1": "private",
    "192.168.1.1": "private",
    "169.254.1.1": "link-local",
    "169.254.169.254": "metadata",
    "100.100.100.200": "metadata",
    "100.64.0.1": "not publicly routable",
    "224.0.0.1": "multicast",
    "240.0.0.1": "reserved",
    "255.255.255.255": "reserved",
    "192.0.2.10": "private",
    "::1": "loopback",
    "::": "unspecified",
    "fe80::1": "link-local",
    "fd00:ec2::254": "metadata",
    "fc00::5": "private",
    "ff02::1": "multicast",
    "::ffff:10.0.0.1": "private",
    "64:ff9b::a9fe:a9fe": "metadata",  # NAT64 spelling of 169.254.169.254
    "64:ff9b::a00:1": "private",  # NAT64 spelling of 10.0.0.1
    "2002:7f00:1::": "loopback",  # 6to4 of 127.0.0.1
    "fec0::1": "site-local",  # deprecated, and Python counts it as global
    "169.254.170.2": "metadata",  # ECS task credentials
    "169.254.170.23": "metadata",  # EKS Pod Identity
    "fd00:ec2::23": "metadata",  # EKS Pod Identity over IPv6
}


@pytest.mark.parametrize("address", sorted(FORBIDDEN))
def test_internal_addresses_are_forbidden_with_a_reason(address: str) -> None:
    reason = forbidden_reason(ipaddress.ip_address(address))
    assert reason is not None and FORBIDDEN[address] in reason


@pytest.mark.parametrize("address", ["8.8.8.8", "93.184.216.34", "2001:4860:4860::8888"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert forbidden_reason(ipaddress.ip_address(address)) is None


def _policy(*allowed: str, resolves_to: list[str] | None = None, plaintext: bool = False):
    settings = Settings(mail_allowed_hosts=list(allowed), mail_allow_plaintext=plaintext)
    if resolves_to is None:
        return HostPolicy.from_settings(settings)
    addresses = [ipaddress.ip_address(a) for a in resolves_to]
    return HostPolicy.from_settings(settings, resolver=lambda host, port: addresses)


def test_a_name_resolving_to_a_private_address_is_refused() -> None:
    policy = _policy(resolves_to=["203.0.113.9", "10.0.0.7"])
    with pytest.raises(HostNotAllowed, match="private") as refused:
        policy.check_host("mail.attacker.example", 993)
    assert "10.0.0.7" not in refused.value.message  # what it resolves to is not disclosed


def test_localhost_is_refused_by_real_resolution_unless_listed() -> None:
    with pytest.raises(HostNotAllowed, match="loopback"):
        _policy().check_host("localhost", 993)
    _policy("localhost").check_host("localhost", 993)


@pytest.mark.parametrize("spelling", ["2130706433", "127.1", "0x7f.0.0.1", "0177.0.0.1", "0"])
def test_numeric_shorthands_are_read_as_the_socket_would(spelling: str) -> None:
    with pytest.raises(HostNotAllowed):
        _policy().check_host(spelling, 993)


def test_allow_list_takes_names_wildcards_and_networks() -> None:
    policy = _policy("mail.internal", "*.corp.example", "10.20.0.0/16", "127.0.0.1")
    policy.check_host("MAIL.internal.", 993)
    policy.check_host("imap.corp.example", 993)
    policy.check_host("10.20.1.2", 993)
    policy.check_host("127.0.0.1", 993)
    for refused in ("corp.example", "10.21.0.1", "127.0.0.2"):
        with pytest.raises((HostNotAllowed, HostUnresolvable)):
            policy.check_host(refused, 993)


def test_metadata_endpoints_stay_refused_whatever_the_allow_list_says() -> None:
    policy = _policy("169.254.0.0/16", "100.64.0.0/10")
    policy.check_host("169.254.10.10", 993)
    with pytest.raises(HostNotAllowed, match="metadata"):
        policy.check_host("169.254.169.254", 80)
    with pytest.raises(HostNotAllowed, match="metadata"):
        policy.check_host("100.100.100.200", 80)
    # A listed name is still checked when connecting, against the metadata endpoints.
    # A listed name is still checked against the metadata endpoints, on save and connect.
    listed = _policy("metadata.corp.example", "*.corp.example", resolves_to=["169.254.170.2"])
    with pytest.raises(HostNotAllowed, match="metadata"):
        listed.check_host("metadata.corp.example", 80)
    with pytest.raises(HostNotAllowed, match="metadata"):
        listed.connect_guard("imap.corp.example", 80)
    listed_network = _policy("169.254.0.0/16", resolves_to=["169.254.170.23"])
    with pytest.raises(HostNotAllowed, match="metadata"):
        listed_network.check_host("mail.example.org", 80)


def test_a_listed_name_need_not_resolve_when_saved() -> None:
    def nowhere(host: str, port: int) -> list[Any]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    policy = HostPolicy.from_settings(Settings(mail_allowed_hosts=["mail.internal"]), nowhere)
    assert policy.check_host("mail.internal", 993) == []


def test_the_guard_returns_the_addresses_it_checked() -> None:
    policy = _policy("10.20.0.0/16", resolves_to=["93.184.216.34", "10.20.1.2"])
    assert [str(a) for a in policy.connect_guard("mail.example.org", 993)] == [
        "93.184.216.34",
        "10.20.1.2",
    ]


@pytest.mark.parametrize("entry", ["*", "*.", "a*.example", "10.0.0.0/33", "foo/bar"])
def test_malformed_allow_list_entries_stop_the_start(entry: str) -> None:
    with pytest.raises(ValueError):
        _policy(entry)


# --- through HTTP: account create and update ------------------------------------------

HTTP_REFUSED = [
    "127.0.0.2",
    "10.0.0.1",
    "192.168.0.10",
    "169.254.169.254",
    "100.100.100.200",
    "100.64.0.1",
    "224.0.0.1",
    "240.0.0.1",
    "0",
    # Other spellings of 127.0.0.2 (the test settings list 127.0.0.1 itself, however
    # it is spelled: the allow-list judges addresses, not strings).
    "2130706434",
    "127.2",
    "0x7f.0.0.2",
]


@pytest.mark.parametrize("host", HTTP_REFUSED)
@pytest.mark.parametrize("field", ["hostname", "smtpHostname"])
def test_create_refuses_internal_hosts(client, alice: Identity, field: str, host: str) -> None:
    response = client.post(
        "/api/accounts", json=account_body(**{field: host}), headers=alice.bearer
    )
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "HOST_NOT_ALLOWED"
    assert client.get("/api/accounts", headers=alice.bearer).json()["pagination"]["total"] == 0


def test_create_refuses_a_host_that_does_not_resolve(client, alice: Identity) -> None:
    response = client.post(
        "/api/accounts", json=account_body(hostname="imap.nowhere.invalid"), headers=alice.bearer
    )
    assert response.status_code == 400
    assert response.json()["code"] == "HOST_UNRESOLVABLE"


def test_create_accepts_public_and_listed_hosts(client, alice: Identity) -> None:
    for host in ("8.8.8.8", "127.0.0.1", "localhost", "imap.example.test"):
        create_account(client, alice.bearer, hostname=host, smtpHostname="smtp.example.test")


@pytest.mark.parametrize(
    "change",
    [{"hostname": "10.0.0.1"}, {"smtpHostname": "169.254.169.254"}, {"hostname": "127.2"}],
)
def test_update_refuses_internal_hosts_and_changes_nothing(
    client, alice: Identity, change: dict[str, str]
) -> None:
    created = create_account(client, alice.bearer)
    # With the password, as a retarget needs (test_accounts); the host is what fails.
    body = {**change, "password": "a-new-password"}
    response = client.put(f"/api/accounts/{created['id']}", json=body, headers=alice.bearer)
    assert response.status_code == 400
    assert response.json()["code"] == "HOST_NOT_ALLOWED"
    assert client.get(f"/api/accounts/{created['id']}", headers=alice.bearer).json() == created


@pytest.fixture
def strict_client(app_factory):  # type: ignore[no-untyped-def]
    """An app with plaintext not allowed (the production default).

    Not to be combined with ``client`` in one test: handlers find the runtime through a
    process-wide ``get_runtime()``, which the ``client`` fixture points back at the
    session's.
    """
    _, app = app_factory(mail_allow_plaintext=False)
    with app.test_client() as client:
        yield client


PLAINTEXT = [{"encryption": "none"}, {"encryption": "tls", "smtpEncryption": "none"}]


@pytest.mark.parametrize("fields", PLAINTEXT)
def test_plaintext_is_refused_by_default(
    strict_client, alice: Identity, fields: dict[str, str]
) -> None:
    refused = strict_client.post("/api/accounts", json=account_body(**fields), headers=alice.bearer)
    assert refused.status_code == 400
    assert refused.json()["code"] == "PLAINTEXT_NOT_ALLOWED"
    assert "'none'" in refused.json()["message"]


@pytest.mark.parametrize("fields", PLAINTEXT)
def test_plaintext_is_accepted_where_allowed(
    client, alice: Identity, fields: dict[str, str]
) -> None:
    # The test settings allow plaintext (the local test servers speak it).
    create_account(client, alice.bearer, **fields)


def test_update_to_plaintext_is_refused_unless_allowed(strict_client, alice: Identity) -> None:
    created = create_account(strict_client, alice.bearer, encryption="starttls")
    for change in ({"encryption": "none"}, {"smtpEncryption": "none"}):
        response = strict_client.put(
            f"/api/accounts/{created['id']}",
            json={**change, "password": "a-new-password"},
            headers=alice.bearer,
        )
        assert response.status_code == 400
        assert response.json()["code"] == "PLAINTEXT_NOT_ALLOWED"


# --- at connect time: every mail client passes the guard build_runtime installs -------


def _endpoint(host: str, port: int = 993) -> MailEndpoint:
    return MailEndpoint(host, port, "tls", "user", "password-1", timeout=2)


@pytest.mark.parametrize("host", ["127.0.0.2", "10.0.0.1", "169.254.169.254", "2130706434"])
def test_mail_clients_refuse_internal_hosts_before_connecting(runtime, host: str) -> None:
    # The session runtime was built by build_runtime, which installed its policy.
    with pytest.raises(HostNotAllowed):
        ImapSession(_endpoint(host)).open()
    with pytest.raises(HostNotAllowed):
        Pop3Session(_endpoint(host, 995)).open()
    with pytest.raises(HostNotAllowed):
        send(_endpoint(host, 465), "a@example.test", ["b@example.test"], b"Subject: x\r\n\r\nx")


def test_the_guard_follows_the_runtime_settings(app_factory) -> None:
    # Given a runtime whose allow-list no longer holds 127.0.0.1 ...
    app_factory(mail_allowed_hosts=["*.example.test"])
    # ... a stored account pointing there is refused when the service connects.
    with pytest.raises(HostNotAllowed):
        ImapSession(_endpoint("127.0.0.1")).open()


def test_a_listed_host_is_let_through_to_the_connection(runtime) -> None:
    # 127.0.0.1 is listed in the test settings: the guard passes it and the client gets
    # as far as the socket (nothing listens on port 9 there).
    with pytest.raises(Exception) as raised:
        ImapSession(_endpoint("127.0.0.1", 9)).open()
    assert not isinstance(raised.value, (HostNotAllowed, HostUnresolvable))


# --- line breaks in names, addresses and subjects -------------------------------------

BREAKS = ["x\n", "x\r", "x\r\nBcc: victim@example.test", "x\nX-Injected: 1", "\nx"]
# Line breaks to Python's str.splitlines and to some readers: NEL, LINE/PARAGRAPH SEPARATOR.
UNICODE_BREAKS = ["x\u2028Bcc: victim@example.test", "x\u2029", "x\x85X-Injected: 1"]
ACCOUNT_TEXT_FIELDS = ["accountName", "username", "emailAddress", "hostname", "smtpHostname"]


def _with_break(field: str, value: str) -> str:
    base = {"emailAddress": "me@example.test", "hostname": "imap.example.test"}.get(
        field, "smtp.example.test" if field == "smtpHostname" else "Work"
    )
    return value.replace("x", base)


@pytest.mark.parametrize("value", BREAKS)
@pytest.mark.parametrize("field", [*ACCOUNT_TEXT_FIELDS, "password"])
def test_create_refuses_line_breaks(client, alice: Identity, field: str, value: str) -> None:
    text = (
        _with_break(field, value) if field != "password" else value.replace("x", "pw-long-enough")
    )
    response = client.post(
        "/api/accounts", json=account_body(**{field: text}), headers=alice.bearer
    )
    assert response.status_code == 400, (field, value, response.text)
    assert response.json()["code"] == "VALIDATION_ERROR"
    assert field in response.json()["message"]


@pytest.mark.parametrize("value", BREAKS)
@pytest.mark.parametrize("field", ["accountName", "username", "hostname", "smtpHostname"])
def test_update_refuses_line_breaks(client, alice: Identity, field: str, value: str) -> None:
    created = create_account(client, alice.bearer)
    response = client.put(
        f"/api/accounts/{created['id']}",
        json={field: _with_break(field, value)},
        headers=alice.bearer,
    )
    assert response.status_code == 400, (field, value, response.text)
    assert client.get(f"/api/accounts/{created['id']}", headers=alice.bearer).json() == created


def _compose(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "accountId": "no-such-account",
        "to": ["rcpt@example.com"],
        "cc": ["copy@example.com"],
        "bcc": ["blind@example.com"],
        "replyTo": "reply@example.com",
        "subject": "Hello",
        "body": "Line one\r\nLine two: a body may hold line breaks",
        "inReplyTo": "abc@example.com",
    }
    body.update(overrides)
    return body


COMPOSE_INJECTIONS = {
    "subject": [
        "Hello\r\nBcc: victim@example.com",
        "Hello\n",
        "Hello\rX: 1",
        "Hello\u2028Bcc: victim@example.com",
        "Hello\u2029",
        "Hello\x85X: 1",
    ],
    "to": [["rcpt@example.com\r\nBcc: victim@example.com"], ["rcpt@example.com\n"]],
    "cc": [["copy@example.com\n"]],
    "bcc": [["blind@example.com\r\n"]],
    "replyTo": ["reply@example.com\nBcc: victim@example.com", "reply@example.com\n"],
    "inReplyTo": ["abc@example.com\r\nBcc: victim@example.com", "abc@example.com\n"],
}


@pytest.mark.parametrize("path", ["/api/compose/send", "/api/compose/draft"])
def test_compose_baseline_is_not_a_validation_error(client, alice: Identity, path: str) -> None:
    # The account does not exist, so nothing is sent; the point is that the body passes.
    response = client.post(path, json=_compose(), headers=alice.bearer)
    assert response.status_code != 400, response.text


@pytest.mark.parametrize("path", ["/api/compose/send", "/api/compose/draft"])
@pytest.mark.parametrize(
    "field, value",
    [(field, value) for field, values in COMPOSE_INJECTIONS.items() for value in values],
)
def test_compose_refuses_line_breaks_in_headers(
    client, alice: Identity, path: str, field: str, value: Any
) -> None:
    response = client.post(path, json=_compose(**{field: value}), headers=alice.bearer)
    assert response.status_code == 400, (field, value, response.text)
    assert response.json()["code"] == "VALIDATION_ERROR"


@pytest.mark.parametrize(
    "pattern, text, matches",
    [
        ("^[a-z]*$", "abc", True),
        ("^[a-z]*$", "abc\n", False),
        (r"^a\$$", "a$", True),
        ("^[$]x$", "$x", True),
        ("^[^$]*$", "ab\n", True),  # \n is not excluded by this class, and is not at the end
        ("a$|^b", "a\n", False),
    ],
)
def test_json_schema_anchors_are_ecma_anchors(pattern: str, text: str, matches: bool) -> None:
    import re

    assert bool(re.search(ecma_anchors(pattern), text)) is matches


def test_a_lone_surrogate_is_a_400_not_a_500(client, alice: Identity) -> None:
    raw = (
        '{"accountName": "\\ud800Work", "emailAddress": "a@example.test", "protocol": "imap",'
        ' "hostname": "imap.example.test", "port": 993, "encryption": "tls",'
        ' "username": "u", "password": "long-enough-pw"}'
    )
    response = client.post(
        "/api/accounts",
        content=raw.encode(),
        headers={**alice.bearer, "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["code"] == "VALIDATION_ERROR"


# --- request body size ------------------------------------------------------------------

CAP = 4096


@pytest.fixture
def capped(app_factory):  # type: ignore[no-untyped-def]
    runtime, app = app_factory(max_request_bytes=CAP)
    return runtime, app


def _payload_too_large(response: Any) -> None:
    assert response.status_code == 413, response.text
    body = response.json()
    assert set(body) == {"error", "message", "code", "timestamp"}
    assert body["code"] == "PAYLOAD_TOO_LARGE"


def test_a_body_over_the_cap_is_413(capped, alice: Identity) -> None:
    _, app = capped
    with app.test_client() as client:
        create_account(client, alice.bearer)  # a normal body is well under the cap
        big = account_body(accountName="n" * 200, username="u" * 300)
        big["password"] = "p" * 1000
        big["extra"] = "x" * CAP  # the size is refused before validation sees the field
        _payload_too_large(client.post("/api/accounts", json=big, headers=alice.bearer))


def test_a_streamed_body_over_the_cap_is_413(capped, alice: Identity) -> None:
    _, app = capped

    def chunks():  # type: ignore[no-untyped-def]
        yield b'{"accountName": "'
        for _ in range(CAP // 512 + 1):
            yield b"a" * 512
        yield b'"}'

    with app.test_client() as client:
        response = client.post(
            "/api/accounts",
            content=chunks(),
            headers={**alice.bearer, "Content-Type": "application/json"},
        )
    _payload_too_large(response)


def test_a_streamed_body_within_the_cap_is_accepted(capped, alice: Identity) -> None:
    _, app = capped
    encoded = json.dumps(account_body()).encode()

    def chunks():  # type: ignore[no-untyped-def]
        for start in range(0, len(encoded), 64):
            yield encoded[start : start + 64]

    with app.test_client() as client:
        response = client.post(
            "/api/accounts",
            content=chunks(),
            headers={**alice.bearer, "Content-Type": "application/json"},
        )
    assert response.status_code == 201, response.text


def _raw_exchange(base: str, head: bytes, body: bytes) -> bytes:
    """Send ``head`` and ``body`` and read the answer without sending anything more."""
    parts = urlsplit(base)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(head + body)
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    return received


def test_the_cap_answers_before_the_body_is_sent(capped, alice: Identity) -> None:
    runtime, app = capped
    token = alice.bearer["Authorization"]
    with serve_app(app, runtime) as base:
        # A gigabyte announced, nothing sent: the answer comes without waiting for it.
        announced = _raw_exchange(
            base,
            b"POST /api/accounts HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Authorization: " + token.encode() + b"\r\nContent-Length: 1000000000\r\n\r\n",
            b"",
        )
        # Chunked, no length: refused once past the cap, the final chunk never sent.
        streamed = _raw_exchange(
            base,
            b"POST /api/accounts HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Authorization: " + token.encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"".join(b"400\r\n" + b"a" * 1024 + b"\r\n" for _ in range(CAP // 1024 + 2)),
        )
    assert announced.startswith(b"HTTP/1.1 413"), announced[:200]
    assert streamed.startswith(b"HTTP/1.1 413"), streamed[:200]


@pytest.mark.parametrize("value", UNICODE_BREAKS)
@pytest.mark.parametrize("field", ["accountName", "username"])
def test_account_names_refuse_unicode_line_breaks(
    client, alice: Identity, field: str, value: str
) -> None:
    response = client.post(
        "/api/accounts", json=account_body(**{field: value}), headers=alice.bearer
    )
    assert response.status_code == 400, (field, value, response.text)
    assert response.json()["code"] == "VALIDATION_ERROR"


@pytest.mark.parametrize("value", UNICODE_BREAKS)
def test_the_message_builder_refuses_unicode_line_breaks_on_its_own(value: str) -> None:
    from email_service.mail.compose import OutgoingMessage, build_message

    for field in ("subject", "sender_name"):
        values: dict[str, Any] = {
            "sender": "me@example.test",
            "sender_name": "Me",
            "to": ("you@example.test",),
            "subject": "Hi",
            "body": "text",
        }
        values[field] = value
        with pytest.raises(ValueError, match="line break"):
            build_message(OutgoingMessage(**values))
