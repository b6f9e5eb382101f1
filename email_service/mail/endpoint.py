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
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, get_args

from imapclient import IMAPClient
from imapclient.imap4 import IMAP4WithTimeout
from imapclient.tls import IMAP4_TLS

from .errors import MailConnectionError, describe_network_error
from .limits import BoundedReader, MailLimits

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

__all__ = [
    "ConnectGuard",
    "ConnectTarget",
    "Encryption",
    "MailEndpoint",
    "PinnedIMAPClient",
    "PinnedPOP3",
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
    #: Deadlines and byte caps for the connection (see :mod:`email_service.mail.limits`).
    limits: MailLimits = field(default_factory=MailLimits)
    #: Shorthand: when set, no deadline of ``limits`` is longer than this.
    timeout: float | None = None
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
        if self.timeout is not None:
            if not self.timeout > 0:
                raise ValueError("timeout must be positive")
            t = self.timeout
            limits = self.limits
            object.__setattr__(
                self,
                "limits",
                replace(
                    limits,
                    connect_timeout=min(limits.connect_timeout, t),
                    greeting_timeout=min(limits.greeting_timeout, t),
                    login_timeout=min(limits.login_timeout, t),
                    command_timeout=min(limits.command_timeout, t),
                ),
            )
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


# Every client also reads its server through a BoundedReader (limits.py) from the
# greeting on: deadlines for the greeting, the login and each command, and byte caps.


class _BoundedIMAP4Mixin:
    _limits: MailLimits
    sock: Any
    file: Any

    def open(self, host: str = "", port: int = 143, timeout: float | None = None) -> None:
        super().open(host, port, self._limits.connect_timeout)  # type: ignore[misc]
        reader = BoundedReader(self.sock, self._limits)
        reader.arm(self._limits.greeting_timeout, "waiting for the IMAP greeting")
        self.file = reader

    def readline(self) -> bytes:
        # imaplib's own cap is 1 MB whatever we configure; the reader enforces ours.
        line: bytes = self.file.readline()
        return line


class _PinnedIMAP4(_BoundedIMAP4Mixin, IMAP4WithTimeout):
    def __init__(self, target: ConnectTarget, limits: MailLimits) -> None:
        self._target = target
        self._limits = limits
        super().__init__(target.host, target.port, limits.connect_timeout)

    def _create_socket(self, timeout: float | None = None) -> socket.socket:
        return self._target.connect(timeout if timeout is not None else self._timeout)


class _PinnedIMAP4_TLS(_BoundedIMAP4Mixin, IMAP4_TLS):
    def __init__(
        self, target: ConnectTarget, ssl_context: ssl.SSLContext | None, limits: MailLimits
    ) -> None:
        self._target = target
        self._limits = limits
        super().__init__(target.host, target.port, ssl_context, limits.connect_timeout)

    def _create_socket(self, timeout: float | None) -> socket.socket:
        sock = self._target.connect(timeout if timeout is not None else self._timeout)
        context = self.ssl_context or tls_context(None)
        return context.wrap_socket(sock, server_hostname=self._target.host)


class PinnedIMAPClient(IMAPClient):
    """An ``IMAPClient`` whose connection goes to ``target``'s addresses only, bounded."""

    def __init__(
        self, target: ConnectTarget, *, limits: MailLimits | None = None, **kwargs: Any
    ) -> None:
        self._target = target  # before __init__, which connects
        self._limits = limits or MailLimits()
        super().__init__(target.host, target.port, **kwargs)

    def _create_IMAP4(self) -> imaplib.IMAP4:
        if self.ssl:
            return _PinnedIMAP4_TLS(self._target, self.ssl_context, self._limits)
        return _PinnedIMAP4(self._target, self._limits)


class PinnedPOP3(poplib.POP3):
    """``poplib.POP3`` connected to ``target``'s addresses, bounded from the greeting on.

    With ``context``: POP3S (TLS from the first byte, verifying ``target.host``); STLS
    verifies ``target.host`` too.
    """

    def __init__(
        self,
        target: ConnectTarget,
        limits: MailLimits,
        context: ssl.SSLContext | None = None,
    ) -> None:
        # poplib.POP3.__init__, with the reader in place before the greeting is read.
        self._target = target
        self._tls = context
        self.host = target.host
        self.port = target.port
        self._tls_established = False
        self.sock = self._create_socket(limits.connect_timeout)
        reader = BoundedReader(self.sock, limits)
        reader.arm(limits.greeting_timeout, "waiting for the POP3 greeting")
        self.file = reader  # type: ignore[assignment]
        self._debugging = 0
        self.welcome = self._getresp()  # type: ignore[attr-defined]

    def _create_socket(self, timeout: float) -> socket.socket:
        sock = self._target.connect(timeout)
        if self._tls is not None:
            sock = self._tls.wrap_socket(sock, server_hostname=self._target.host)
        return sock


class _BoundedSMTPMixin:
    """The greeting has ``greeting_timeout``; every other reply ``command_timeout`` from
    the moment the command (or the message data) was sent."""

    _limits: MailLimits
    sock: Any
    file: Any

    def getreply(self) -> tuple[int, bytes]:
        if self.file is None:  # a new connection, or the TLS socket after STARTTLS
            reader = BoundedReader(self.sock, self._limits)
            reader.arm(self._limits.greeting_timeout, "waiting for the SMTP greeting")
            self.file = reader
        reply: tuple[int, bytes] = super().getreply()  # type: ignore[misc]
        return reply

    def send(self, s: ReadableBuffer | str) -> None:
        super().send(s)  # type: ignore[misc]
        if isinstance(self.file, BoundedReader):
            self.file.arm(self._limits.command_timeout, "waiting for the SMTP server's reply")


class PinnedSMTP(_BoundedSMTPMixin, smtplib.SMTP):
    """``smtplib.SMTP`` connected to ``target``'s addresses; STARTTLS verifies its host."""

    def __init__(self, target: ConnectTarget, limits: MailLimits, **kwargs: Any) -> None:
        self._target = target
        self._limits = limits
        super().__init__(target.host, target.port, timeout=limits.connect_timeout, **kwargs)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        return self._target.connect(timeout)


class PinnedSMTP_SSL(_BoundedSMTPMixin, smtplib.SMTP_SSL):
    """``smtplib.SMTP_SSL`` connected to ``target``'s addresses, verifying its host."""

    def __init__(self, target: ConnectTarget, limits: MailLimits, **kwargs: Any) -> None:
        self._target = target
        self._limits = limits
        super().__init__(target.host, target.port, timeout=limits.connect_timeout, **kwargs)

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
