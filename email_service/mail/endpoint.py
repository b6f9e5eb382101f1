"""Where and how to reach a mail server, TLS policy, and the outbound connection guard.

Every outbound connection to a user-supplied host (IMAP, POP3, SMTP here; the watcher
and webhook delivery elsewhere) starts with :func:`resolve_target`: the name is resolved
*once*, by the guard installed with :func:`set_connect_guard` (for example "no private
addresses"), which returns the addresses it checked. The connection then goes to exactly
those addresses (:meth:`ConnectTarget.connect` and the ``Pinned*`` client classes),
while TLS - SNI and the certificate's name check - still uses the name the account
gave. Resolving again at connect time would let a DNS server answer a public address to
the guard and a private one to the client a moment later (DNS rebinding).
"""

from __future__ import annotations

import functools
import imaplib
import ipaddress
import poplib
import smtplib
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from imapclient import IMAPClient
from imapclient.imap4 import IMAP4WithTimeout
from imapclient.tls import IMAP4_TLS

from .errors import MailConnectionError, describe_network_error

__all__ = [
    "ConnectGuard",
    "ConnectTarget",
    "Encryption",
    "MailEndpoint",
    "PinnedIMAPClient",
    "PinnedPOP3",
    "PinnedPOP3_SSL",
    "PinnedSMTP",
    "PinnedSMTP_SSL",
    "endpoint_guard",
    "resolve_target",
    "set_connect_guard",
    "tls_context",
]

Encryption = Literal["tls", "starttls", "none"]

#: A guard gets ``(host, port)``, raises to refuse the connection, and returns the
#: addresses it resolved and checked: the only ones the connection may use. A guard
#: returning ``None`` vetted the name only; the addresses are then resolved here.
ConnectGuard = Callable[[str, int], Sequence[Any] | None]

_connect_guard: ConnectGuard | None = None


@dataclass(frozen=True)
class MailEndpoint:
    """A mail server account endpoint.

    ``encryption``: ``"tls"`` = TLS from the first byte (IMAPS 993, POP3S 995, SMTPS 465),
    ``"starttls"`` = plain connection upgraded with STARTTLS/STLS (refused if the server
    does not offer it), ``"none"`` = plaintext. Certificates are always verified; ``ca_file``
    adds a CA bundle to trust on top of the system store.

    The password is excluded from ``repr()`` so that logging an endpoint is safe.

    ``sasl`` set (``"XOAUTH2"`` or ``"OAUTHBEARER"``): an OAuth2 login, and ``password``
    holds the bearer access token (so every redaction of the password covers the token).
    ``token_refresh``, when given, is called once with the refused token if the server
    refuses it, and returns a fresh one to try again (see :mod:`email_service.mail.sasl`).

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
    sasl: Literal["XOAUTH2", "OAUTHBEARER"] | None = None
    token_refresh: Callable[[str], str] | None = field(default=None, repr=False, compare=False)

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
        if self.sasl not in (None, "XOAUTH2", "OAUTHBEARER"):
            raise ValueError("sasl must be XOAUTH2 or OAUTHBEARER")

    @property
    def address(self) -> str:
        """``host:port`` for messages (brackets around IPv6 literals)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def set_connect_guard(fn: ConnectGuard | None) -> None:
    """Install (or with ``None`` remove) the process-wide outbound connection guard.

    The guard is called with ``(host, port)`` before every connection attempt, and does
    the connection's only name resolution: it returns the addresses it checked, which
    the connection is pinned to. It refuses by raising; its exception reaches the caller
    unchanged (it is not wrapped into a :class:`~email_service.mail.errors.MailError`), so
    the guard decides how a refusal is reported.
    """
    global _connect_guard
    _connect_guard = fn


def endpoint_guard(host: str, port: int) -> None:
    """Run the installed connection guard for ``(host, port)``; no-op when none is set.

    Raises whatever the guard raises. Connections use :func:`resolve_target` instead,
    which also keeps the addresses the guard checked.
    """
    guard = _connect_guard
    if guard is not None:
        guard(host, port)


@dataclass(frozen=True)
class ConnectTarget:
    """A host name and the checked addresses a connection to it may use.

    ``host`` is what TLS verifies (SNI and the certificate name); ``addresses`` are
    what sockets connect to, tried in order.
    """

    host: str
    port: int
    addresses: tuple[str, ...]

    def connect(self, timeout: float | None) -> socket.socket:
        """A TCP connection to the first address that answers; never resolves ``host``.

        Raises the last ``OSError`` when no address answers.
        """
        error: OSError | None = None
        for address in self.addresses:
            try:
                # A numeric address: getaddrinfo inside create_connection does no lookup.
                return socket.create_connection((address, self.port), timeout=timeout)
            except OSError as exc:
                error = exc
        raise error or OSError(f"no address to connect to for {self.host}")


def resolve_target(host: str, port: int) -> ConnectTarget:
    """Resolve ``host`` once, through the installed guard, for a pinned connection.

    Raises the guard's exception unchanged (a refusal), or
    :class:`~email_service.mail.errors.MailConnectionError` (transient) when the name
    does not resolve.
    """
    guard = _connect_guard
    checked = guard(host, port) if guard is not None else None
    if checked is None:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            description, _ = describe_network_error(exc)
            raise MailConnectionError(f"cannot connect to {host}: {description}") from None
        checked = [str(info[4][0]) for info in infos]
    addresses = tuple(dict.fromkeys(_address_text(a) for a in checked))
    if not addresses:
        raise MailConnectionError(f"cannot connect to {host}: the host name does not resolve")
    return ConnectTarget(host, port, addresses)


def _address_text(address: object) -> str:
    # Validates too: only numeric addresses may reach socket.create_connection, or it
    # would resolve a name after all.
    return str(ipaddress.ip_address(str(address).split("%", 1)[0]))


# --- clients that connect to the pinned addresses ------------------------------------
# Each library opens its socket in one overridable method, with the name it was given;
# the subclasses open it to the target's addresses instead and keep the name for TLS
# (the libraries' own STARTTLS/STLS also wrap with that name).


class _PinnedIMAP4(IMAP4WithTimeout):
    def __init__(self, target: ConnectTarget, timeout: float | None) -> None:
        self._target = target
        super().__init__(target.host, target.port, timeout)

    def _create_socket(self, timeout: float | None = None) -> socket.socket:
        return self._target.connect(timeout if timeout is not None else self._timeout)


class _PinnedIMAP4_TLS(IMAP4_TLS):
    def __init__(
        self, target: ConnectTarget, ssl_context: ssl.SSLContext | None, timeout: float | None
    ) -> None:
        self._target = target
        super().__init__(target.host, target.port, ssl_context, timeout)

    def _create_socket(self, timeout: float | None) -> socket.socket:
        sock = self._target.connect(timeout if timeout is not None else self._timeout)
        context = self.ssl_context or tls_context(None)
        return context.wrap_socket(sock, server_hostname=self._target.host)


class PinnedIMAPClient(IMAPClient):
    """An ``IMAPClient`` whose connection goes to ``target``'s addresses only."""

    def __init__(self, target: ConnectTarget, **kwargs: Any) -> None:
        self._target = target  # before __init__, which connects
        super().__init__(target.host, target.port, **kwargs)

    def _create_IMAP4(self) -> imaplib.IMAP4:
        timeout = getattr(self._timeout, "connect", None)
        if self.ssl:
            return _PinnedIMAP4_TLS(self._target, self.ssl_context, timeout)
        return _PinnedIMAP4(self._target, timeout)


class PinnedPOP3(poplib.POP3):
    """``poplib.POP3`` connected to ``target``'s addresses; STLS verifies ``target.host``."""

    def __init__(self, target: ConnectTarget, timeout: float) -> None:
        self._target = target
        super().__init__(target.host, target.port, timeout)

    def _create_socket(self, timeout: float) -> socket.socket:
        return self._target.connect(timeout)


class PinnedPOP3_SSL(poplib.POP3_SSL):
    """``poplib.POP3_SSL`` connected to ``target``'s addresses, verifying ``target.host``."""

    def __init__(self, target: ConnectTarget, timeout: float, context: ssl.SSLContext) -> None:
        self._target = target
        self._tls = context
        super().__init__(target.host, target.port, timeout=timeout, context=context)

    def _create_socket(self, timeout: float) -> socket.socket:
        sock = self._target.connect(timeout)
        return self._tls.wrap_socket(sock, server_hostname=self._target.host)


class PinnedSMTP(smtplib.SMTP):
    """``smtplib.SMTP`` connected to ``target``'s addresses; STARTTLS verifies its host."""

    def __init__(self, target: ConnectTarget, **kwargs: Any) -> None:
        self._target = target
        super().__init__(target.host, target.port, **kwargs)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        return self._target.connect(timeout)


class PinnedSMTP_SSL(smtplib.SMTP_SSL):
    """``smtplib.SMTP_SSL`` connected to ``target``'s addresses, verifying its host."""

    def __init__(self, target: ConnectTarget, **kwargs: Any) -> None:
        self._target = target
        super().__init__(target.host, target.port, **kwargs)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock = self._target.connect(timeout)
        return self.context.wrap_socket(sock, server_hostname=self._target.host)


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
