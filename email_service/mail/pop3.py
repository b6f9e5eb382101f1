"""POP3 client session (poplib) for accounts that only offer POP3.

:class:`Pop3Session` is a context manager: connect (after the outbound connection guard),
TLS per the endpoint (``tls`` = POP3S, ``starttls`` = STLS, ``none`` = plaintext; the
certificate is always verified), USER/PASS; on exit QUIT. Nothing is ever deleted.
All failures surface as :mod:`email_service.mail.errors` exceptions.
"""

from __future__ import annotations

import base64
import poplib
import re
import ssl
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from types import TracebackType
from typing import Any

from .endpoint import MailEndpoint, PinnedPOP3, resolve_target, tls_context
from .errors import (
    MailAuthError,
    MailConnectionError,
    MailError,
    MailProtocolError,
    describe_network_error,
    redact,
)
from .limits import BoundedReader, MailLimits
from .sasl import (
    TokenRefused,
    describe_challenge,
    error_reply,
    initial_response,
    login_with_refresh,
)

__all__ = ["MessageTooLarge", "Pop3Session"]

#: How much of a too-large message's header is kept.
_HEADER_BYTES = 64 * 1024


class MessageTooLarge(MailProtocolError):
    """A message is longer than ``MAX_MESSAGE_BYTES``; ``size`` is how long it was."""

    def __init__(self, size: int) -> None:
        super().__init__(f"the message is {size} bytes, more than MAX_MESSAGE_BYTES allows")
        self.size = size


# Read message lines in pieces of at most this size. poplib's own reader refuses lines
# over 2048 bytes, which real messages (unwrapped HTML, long base64) exceed.
_READ_CHUNK = 64 * 1024

_RESP_CODE_RE = re.compile(r"^-ERR \[([A-Z/-]+)\]", re.IGNORECASE)


def _raise_if_temporary(address: str, text: str) -> None:
    """RFC 2449/3206 response codes tell "try later" apart from a refused credential."""
    code_match = _RESP_CODE_RE.match(text)
    code = code_match.group(1).upper() if code_match else ""
    if code in ("IN-USE", "LOGIN-DELAY", "SYS/TEMP"):
        raise MailConnectionError(
            f"the POP3 server at {address} cannot log in now: {text}"
        ) from None


class Pop3Session:
    """An authenticated POP3 connection (context manager; not thread-safe).

    Raises (from every method): :class:`MailAuthError` (USER/PASS rejected),
    :class:`MailConnectionError` (network/TLS trouble, mailbox temporarily locked),
    :class:`MailProtocolError` (a command was refused, e.g. no such message or no UIDL).
    The connection guard's own exception propagates unchanged.
    """

    def __init__(self, endpoint: MailEndpoint) -> None:
        self._endpoint = endpoint
        self._pop: poplib.POP3 | None = None
        self._broken = False

    def __enter__(self) -> Pop3Session:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def open(self) -> None:
        """Connect, secure and log in (what ``__enter__`` does)."""
        if self._pop is not None:
            raise RuntimeError("the POP3 session is already open")
        ep = self._endpoint
        # Resolved once and checked by the guard (its refusal is not wrapped); the
        # socket goes to exactly the checked addresses.
        target = resolve_target(ep.host, ep.port)
        try:
            with self._errors("connecting"):
                context = tls_context(ep.ca_file) if ep.encryption == "tls" else None
                self._pop = PinnedPOP3(target, ep.limits, context)
                self._arm(ep.limits.login_timeout, "logging in")
                if ep.encryption == "starttls":
                    self._stls()
            with self._errors("logging in", ep.limits.login_timeout):
                self._login()
        except BaseException:
            self._broken = True
            self.close()
            raise

    def _stls(self) -> None:
        pop = self._require_open()
        try:
            caps = pop.capa()
        except poplib.error_proto:
            caps = {}  # no CAPA at all: certainly no STLS
        if "STLS" not in caps:
            # Going on in plaintext would expose the password; a missing STLS may also
            # mean someone in the path stripped it.
            raise MailConnectionError(
                f"the POP3 server at {self._endpoint.address} does not offer STLS; "
                "refusing to continue without TLS"
            )
        pop.stls(tls_context(self._endpoint.ca_file))
        # STLS put a plain socket file on the new TLS socket: bound it again.
        pop.file = BoundedReader(pop.sock, self._endpoint.limits)  # type: ignore[assignment]
        self._arm(self._endpoint.limits.login_timeout, "logging in")

    def _login(self) -> None:
        pop = self._require_open()
        ep = self._endpoint
        if ep.sasl is not None:
            try:
                caps = pop.capa()
            except poplib.error_proto:
                caps = {}
            if ep.sasl not in [m.upper() for m in caps.get("SASL", [])]:
                raise MailAuthError(
                    f"the POP3 server at {ep.address} does not offer {ep.sasl} (OAuth2) logins"
                )
            login_with_refresh(ep, self._authenticate_oauth)
            return
        try:
            pop.user(ep.username)
            pop.pass_(ep.password)
        except poplib.error_proto as exc:
            text = redact(_text(exc), ep.password)
            if text.endswith("EOF"):
                raise
            _raise_if_temporary(ep.address, text)
            raise MailAuthError(
                f"the POP3 server rejected the username or password ({text})"
            ) from None

    def _authenticate_oauth(self, token: str) -> None:
        # RFC 5034 AUTH. The credentials go in a continuation line rather than as an
        # initial response: a command line is limited to 255 octets, and a real access
        # token alone can be longer.
        pop: Any = self._require_open()  # poplib's command helpers are private
        ep = self._endpoint
        assert ep.sasl is not None
        first = base64.b64encode(initial_response(ep.sasl, ep.username, token)).decode()
        try:
            reply = pop._shortcmd(f"AUTH {ep.sasl}")
            if reply.startswith(b"+ ") or reply == b"+":
                reply = pop._shortcmd(first)
            detail = ""
            if reply.startswith(b"+") and not reply.startswith(b"+OK"):
                # The server's error challenge: decode it, then end the exchange.
                with suppress(ValueError):
                    detail = describe_challenge(base64.b64decode(reply[1:].strip()))
                pop._shortcmd(base64.b64encode(error_reply(ep.sasl)).decode())
                raise poplib.error_proto(b"-ERR token refused")
        except poplib.error_proto as exc:
            text = redact(_text(exc), token)
            if text.endswith("EOF"):
                raise
            _raise_if_temporary(ep.address, text)
            raise TokenRefused(
                f"the POP3 server refused the OAuth2 access token ({text}"
                + (f"; {detail}" if detail else "")
                + ")"
            ) from None

    def close(self) -> None:
        """QUIT and close; safe to call more than once. Never raises."""
        pop, self._pop = self._pop, None
        if pop is None:
            return
        if not self._broken:
            with suppress(Exception):  # the work is done; QUIT is courtesy
                reader = getattr(pop, "file", None)
                if isinstance(reader, BoundedReader):
                    reader.arm(min(self._endpoint.limits.command_timeout, 10.0), "logging out")
                pop.quit()
                return
        with suppress(Exception):
            pop.close()

    @property
    def tls_version(self) -> str | None:
        """The negotiated TLS version (``"TLSv1.3"``), or ``None`` for plaintext/closed."""
        sock = getattr(self._pop, "sock", None)
        return sock.version() if isinstance(sock, ssl.SSLSocket) else None

    def _arm(self, seconds: float, phase: str) -> None:
        reader = getattr(self._pop, "file", None)
        if isinstance(reader, BoundedReader):
            reader.arm(seconds, phase)

    @contextmanager
    def _errors(self, action: str, seconds: float | None = None) -> Iterator[None]:
        where = self._endpoint.address
        password = self._endpoint.password
        if action != "connecting":
            self._arm(seconds or self._endpoint.limits.command_timeout, action)
        try:
            yield
        except MailError:
            raise
        except poplib.error_proto as exc:
            text = redact(_text(exc), password)
            if text.endswith("EOF") or text == "line too long":
                self._broken = True
                raise MailConnectionError(
                    f"the POP3 connection to {where} broke while {action}: {text}"
                ) from exc
            raise MailProtocolError(f"the POP3 server at {where} refused {action}: {text}") from exc
        except (OSError, EOFError) as exc:
            self._broken = True
            description, cert_error = describe_network_error(exc)
            description = redact(description, password)
            if action == "connecting":
                message = f"cannot connect to the POP3 server at {where}: {description}"
            else:
                message = f"the POP3 connection to {where} failed while {action}: {description}"
            raise MailConnectionError(message, certificate_error=cert_error) from exc

    def _require_open(self) -> poplib.POP3:
        if self._pop is None:
            raise RuntimeError("the POP3 session is not open (use it as a context manager)")
        return self._pop

    def stat(self) -> tuple[int, int]:
        """``(message count, mailbox size in octets)`` from STAT."""
        pop = self._require_open()
        with self._errors("STAT"):
            count, size = pop.stat()
            return count, size

    def uidl(self) -> dict[str, int]:
        """Map each message's unique id to its message number (UIDL).

        Message numbers are valid for this session only; unique ids persist. Ids are
        decoded as Latin-1 so any byte string round-trips. Raises
        :class:`MailProtocolError` when the server has no UIDL.
        """
        pop = self._require_open()
        with self._errors("UIDL"):
            _resp, lines, _octets = pop.uidl()
        result: dict[str, int] = {}
        for line in lines:
            fields = line.split(None, 1)
            if len(fields) != 2 or not fields[0].isdigit():
                raise MailProtocolError(f"the POP3 server sent a malformed UIDL line: {line!r}")
            result[fields[1].strip().decode("latin-1")] = int(fields[0])
        return result

    @property
    def limits(self) -> MailLimits:
        """The deadlines and caps of this connection."""
        return self._endpoint.limits

    def sizes(self) -> dict[int, int]:
        """Each message's size in octets (LIST), by message number."""
        pop = self._require_open()
        with self._errors("LIST"):
            _resp, lines, _octets = pop.list()
        sizes: dict[int, int] = {}
        for line in lines:
            fields = line.split()
            if len(fields) >= 2 and fields[0].isdigit() and fields[1].isdigit():
                sizes[int(fields[0])] = int(fields[1])
        return sizes

    def retrieve(self, number: int) -> bytes:
        """The raw bytes of message ``number`` (RETR), with dot-stuffing undone.

        Line endings are kept as the server sent them (CRLF on the wire). Raises
        :class:`MailProtocolError` for a message number that does not exist, and
        :class:`MessageTooLarge` (the rest read and thrown away, the session still
        usable) when the message is longer than ``MAX_MESSAGE_BYTES``.
        """
        return self._multiline(f"RETR {int(number)}", f"retrieving message {number}")

    def headers(self, number: int) -> bytes:
        """The header of message ``number`` (``TOP n 0``), at most its first 64 KiB."""
        return self._multiline(
            f"TOP {int(number)} 0", f"reading the headers of message {number}", keep=_HEADER_BYTES
        )

    def _multiline(self, command: str, action: str, keep: int | None = None) -> bytes:
        pop = self._require_open()
        limit = self._endpoint.limits.max_message_bytes if keep is None else keep
        with self._errors(action):
            # poplib.retr() splits into lines and refuses lines over 2048 bytes; read the
            # multi-line reply ourselves instead.
            internals: Any = pop  # poplib's command helpers are private (not in typeshed)
            internals._putcmd(command)
            internals._getresp()  # raises error_proto on -ERR
            out = bytearray()
            total = 0
            at_line_start = True
            readline = pop.file.readline
            while True:
                piece = readline(_READ_CHUNK)
                if not piece:
                    raise poplib.error_proto("-ERR EOF")
                if at_line_start:
                    if piece in (b".\r\n", b".\n"):
                        break
                    if piece.startswith(b"."):
                        piece = piece[1:]  # a line starting with "." was sent as ".."
                total += len(piece)
                if total <= limit:
                    out += piece
                elif keep is None and out:
                    out = bytearray()  # over the cap: read on to the end, keep nothing
                at_line_start = piece.endswith(b"\n")
            if keep is None and total > limit:
                raise MessageTooLarge(total)
            return bytes(out)


def _text(exc: BaseException) -> str:
    value = exc.args[0] if exc.args else exc
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
