"""Where and how to reach a mail server, TLS policy, and the outbound connection guard.

Every IMAP/POP3/SMTP client in this package calls :func:`endpoint_guard` before it
resolves or connects to anything, so a policy installed with :func:`set_connect_guard`
(for example "no private addresses") sees every outbound connection first.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, get_args

__all__ = [
    "ConnectGuard",
    "Encryption",
    "MailEndpoint",
    "endpoint_guard",
    "set_connect_guard",
    "tls_context",
]

Encryption = Literal["tls", "starttls", "none"]

#: A guard gets ``(host, port)`` and raises to refuse the connection.
ConnectGuard = Callable[[str, int], None]

_connect_guard: ConnectGuard | None = None


@dataclass(frozen=True)
class MailEndpoint:
    """A mail server account endpoint.

    ``encryption``: ``"tls"`` = TLS from the first byte (IMAPS 993, POP3S 995, SMTPS 465),
    ``"starttls"`` = plain connection upgraded with STARTTLS/STLS (refused if the server
    does not offer it), ``"none"`` = plaintext. Certificates are always verified; ``ca_file``
    adds a CA bundle to trust on top of the system store.

    The password is excluded from ``repr()`` so that logging an endpoint is safe.

    Raises ``ValueError`` on an unknown encryption mode, a port outside 1-65535, an
    empty host or a non-positive timeout.
    """

    host: str
    port: int
    encryption: Encryption
    username: str
    password: str = field(repr=False)
    ca_file: str | None = None
    timeout: float = 30.0

    def __post_init__(self) -> None:
        # Endpoints are built from user input (account settings); fail at construction
        # rather than with an obscure socket error later.
        if self.encryption not in get_args(Encryption):
            raise ValueError(f"encryption must be one of {get_args(Encryption)}")
        if not self.host:
            raise ValueError("host must not be empty")
        if not 0 < self.port < 65536:
            raise ValueError(f"port {self.port} is outside 1-65535")
        if not self.timeout > 0:
            raise ValueError("timeout must be positive")

    @property
    def address(self) -> str:
        """``host:port`` for messages (brackets around IPv6 literals)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def set_connect_guard(fn: ConnectGuard | None) -> None:
    """Install (or with ``None`` remove) the process-wide outbound connection guard.

    The guard is called with ``(host, port)`` before every connection attempt, before
    any name resolution. It refuses by raising; its exception reaches the caller
    unchanged (it is not wrapped into a :class:`~email_service.mail.errors.MailError`), so
    the guard decides how a refusal is reported.
    """
    global _connect_guard
    _connect_guard = fn


def endpoint_guard(host: str, port: int) -> None:
    """Run the installed connection guard for ``(host, port)``; no-op when none is set.

    Raises whatever the guard raises.
    """
    guard = _connect_guard
    if guard is not None:
        guard(host, port)


@functools.lru_cache(maxsize=16)
def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """Build a client TLS context that always verifies the server.

    Built once per CA bundle and shared: loading the system trust store takes tens of
    milliseconds, more than the rest of an SMTP submission, and a client context is
    safe to use from several threads at once.

    Certificate and host name verification are on (``CERT_REQUIRED``, ``check_hostname``)
    and TLS 1.2 is the minimum. The system trust store is always loaded; ``ca_file``, when
    given, is trusted in addition (for servers with a private CA or a self-signed
    certificate). Raises ``OSError``/``ssl.SSLError`` if ``ca_file`` cannot be read.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    # create_default_context already sets these; restating them makes the promise local
    # and guards against a changed default.
    context.verify_mode = ssl.CERT_REQUIRED
    context.check_hostname = True
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context
