"""Posting a signed delivery to a receiver we do not trust.

The receiver's URL was given by a user, so it passes the same outbound guard as mail
hosts (:mod:`email_service.netguard`), once when it is saved and again before every
attempt, and the connection goes to the address that was checked (the name is resolved
once, so a DNS answer that changes in between cannot redirect it). Everything the
receiver sends back is bounded: one deadline covers connecting, sending and reading;
only the status line and headers are read, up to :data:`MAX_RESPONSE_BYTES`. Redirects
are not followed (a 3xx is a failed attempt). TLS certificates and host names are
verified.

Each attempt opens its own connection (``Connection: close``): nothing of one
receiver's answer can leak into the next attempt, and a slow receiver holds nothing.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import SplitResult, urlsplit

from email_service.config import Settings
from email_service.errors import InvalidRequest
from email_service.mail.endpoint import tls_context
from email_service.netguard import (
    HostNotAllowed,
    HostPolicy,
    HostUnresolvable,
    PlaintextNotAllowed,
    Resolver,
    system_resolver,
)

if TYPE_CHECKING:
    from email_service.runtime import Runtime

__all__ = [
    "MAX_RESPONSE_BYTES",
    "PostResult",
    "ReceiverPolicy",
    "post",
]

#: The most of a receiver's answer that is read (status line and headers).
MAX_RESPONSE_BYTES = 16 * 1024
USER_AGENT = "email-service-webhooks/1"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Target:
    """A checked receiver URL: where to connect and what to ask for."""

    scheme: str
    host: str
    port: int
    path: str  # path and query, as sent in the request line

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


@dataclass(frozen=True)
class PostResult:
    """What became of one attempt: a status code, or an error in words (never both)."""

    status_code: int | None
    duration_ms: int
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class ReceiverPolicy:
    """Which receiver URLs may be used, built from the ``WEBHOOK_*`` settings."""

    def __init__(self, settings: Settings, resolver: Resolver = system_resolver) -> None:
        self.allow_http = settings.webhook_allow_http
        self.ca_file = settings.webhook_ca_file
        self.timeout = settings.webhook_timeout_seconds
        # The mail hosts' policy, fed with the webhook allow-list instead of the mail one.
        self.hosts = HostPolicy.from_settings(
            settings.model_copy(
                update={
                    "mail_allowed_hosts": settings.webhook_allowed_hosts,
                    "mail_allow_plaintext": settings.webhook_allow_http,
                }
            ),
            resolver=resolver,
        )

    @classmethod
    def for_runtime(cls, runtime: Runtime) -> ReceiverPolicy:
        """The policy of ``runtime``'s settings, resolving names as its mail guard does."""
        return cls(runtime.settings, runtime.host_policy.resolver)

    def parse(self, url: str) -> Target:
        """Check the form of ``url``; raises ``InvalidRequest`` (400) naming the problem."""
        try:
            parts: SplitResult = urlsplit(url)
            port = parts.port
        except ValueError:
            raise InvalidRequest("'url' is not a valid URL") from None
        if parts.scheme not in ("https", "http"):
            raise InvalidRequest("'url' must be an https URL")
        if parts.scheme == "http" and not self.allow_http:
            raise PlaintextNotAllowed(
                "'url' must use https: this service does not send events unencrypted"
            )
        if not parts.hostname:
            raise InvalidRequest("'url' has no host")
        if parts.username is not None or parts.password is not None:
            raise InvalidRequest("'url' cannot hold credentials; check the signature instead")
        if parts.fragment:
            raise InvalidRequest("'url' cannot hold a fragment")
        path = parts.path or "/"
        if parts.query:
            path = f"{path}?{parts.query}"
        if any(ord(ch) <= 0x20 or ord(ch) == 0x7F for ch in path):
            raise InvalidRequest("'url' cannot hold spaces or control characters")
        return Target(
            scheme=parts.scheme,
            host=parts.hostname,
            port=port or (443 if parts.scheme == "https" else 80),
            path=path,
        )

    def check(self, url: str) -> Target:
        """Check ``url`` as it is saved: its form and where its host resolves (400s)."""
        target = self.parse(url)
        self.addresses(target, saving=True)
        return target

    def addresses(self, target: Target, *, saving: bool = False) -> list[IPAddress]:
        """The addresses to connect to, every one of them checked by the mail hosts' guard.

        Raises ``HostUnresolvable`` or ``HostNotAllowed``. An allow-listed name need not
        resolve when saving (as for mail hosts); it must when delivering.
        """
        try:
            found = self.hosts.check_host(target.host, target.port)
        except (HostNotAllowed, HostUnresolvable) as exc:
            # The guard speaks of mail hosts; the refusal is the same for receivers.
            message = exc.message.replace("The mail host", "The webhook host").replace(
                "mail connections", "webhook deliveries"
            )
            raise type(exc)(message) from None
        if not found and not saving:
            raise HostUnresolvable(f"The webhook host '{target.host}' does not resolve")
        return list(dict.fromkeys(found))

    def tls(self) -> ssl.SSLContext:
        return tls_context(self.ca_file)


def _request(target: Target, headers: dict[str, str], body: bytes) -> bytes:
    lines = [
        f"POST {target.path} HTTP/1.1",
        f"Host: {target.host_header}",
        f"User-Agent: {USER_AGENT}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body


def _status_code(head: bytes) -> int:
    status_line = head.split(b"\r\n", 1)[0]
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise ValueError("the receiver did not answer HTTP/1.x")
    code = int(parts[1])
    if not 100 <= code <= 599:
        raise ValueError("the receiver answered an impossible status code")
    return code


def post(policy: ReceiverPolicy, url: str, headers: dict[str, str], body: bytes) -> PostResult:
    """POST ``body`` to ``url``; never raises for anything the receiver or network does.

    A refused URL (the guard) is reported as the attempt's error too: the URL was fine
    when it was saved, and the attempt is retried like any other failure.
    """
    started = time.monotonic()
    deadline = started + policy.timeout

    def result(code: int | None, error: str | None = None) -> PostResult:
        return PostResult(code, int((time.monotonic() - started) * 1000), error)

    try:
        target = policy.parse(url)
        addresses = policy.addresses(target)
    except InvalidRequest as exc:
        return result(None, exc.message)
    try:
        sock = _connect(addresses, target.port, deadline)
    except TimeoutError:
        return result(None, "timed out connecting to the receiver")
    except OSError as exc:
        return result(None, f"could not connect to the receiver: {exc.strerror or exc}")
    try:
        if target.scheme == "https":
            sock.settimeout(_remaining(deadline))
            sock = policy.tls().wrap_socket(sock, server_hostname=target.host)
        _send_all(sock, _request(target, headers, body), deadline)
        head = _read_head(sock, deadline)
        return result(_status_code(head))
    except ssl.SSLCertVerificationError as exc:
        return result(None, f"the receiver's certificate does not verify: {exc.verify_message}")
    except ssl.SSLError as exc:
        return result(None, f"TLS failed: {exc.reason or exc}")
    except TimeoutError:
        return result(None, f"the receiver did not answer within {policy.timeout:g} s")
    except ValueError as exc:
        return result(None, str(exc))
    except OSError as exc:
        return result(None, f"the connection failed: {exc.strerror or exc}")
    finally:
        sock.close()


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return left


def _connect(addresses: list[IPAddress], port: int, deadline: float) -> socket.socket:
    last: OSError = OSError("no address to connect to")
    for address in addresses:
        family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(_remaining(deadline))
            sock.connect((str(address), port))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except OSError as exc:  # TimeoutError included
            sock.close()
            last = exc
            if isinstance(exc, TimeoutError):
                raise
    raise last


def _send_all(sock: socket.socket, data: bytes, deadline: float) -> None:
    view = memoryview(data)
    while view:
        sock.settimeout(_remaining(deadline))
        sent = sock.send(view)
        view = view[sent:]


def _read_head(sock: socket.socket, deadline: float) -> bytes:
    """The response up to the end of its headers (or the cap, or the connection's end)."""
    buffer = bytearray()
    while len(buffer) < MAX_RESPONSE_BYTES:
        sock.settimeout(_remaining(deadline))
        chunk = sock.recv(MAX_RESPONSE_BYTES - len(buffer))
        if not chunk:
            break
        buffer += chunk
        if b"\r\n\r\n" in buffer or (b"\r\n" in buffer and not buffer.startswith(b"HTTP/")):
            break
    if not buffer:
        raise ValueError("the receiver closed the connection without answering")
    return bytes(buffer)
