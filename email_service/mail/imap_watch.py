"""A small asyncio IMAP client for watching a mailbox: IDLE, NOTIFY and LIST-STATUS.

The sync engine's :class:`~email_service.mail.imap.ImapSession` is blocking (one thread
per connection); a watcher holds thousands of mostly silent connections, so it speaks
the few commands it needs itself, on asyncio streams: one coroutine and a few kilobytes
per connection instead of a thread and its stack.

Everything the server sends is untrusted: a line longer than ``MAX_LINE`` or a literal
larger than ``MAX_LITERAL`` breaks the connection (a watcher never fetches message
bodies, so nothing legitimate comes near those sizes), and every command has a deadline
(the endpoint's ``timeout``). Waiting inside IDLE is the only open-ended read, and it
ends by our own deadline too (:meth:`WatchSession.idle`).

Logging in goes through :meth:`WatchSession._login`, one method, so that a SASL
mechanism (XOAUTH2, OAUTHBEARER) can replace LOGIN by overriding it.

Raises :class:`MailConnectionError` (network, TLS, deadline, dropped connection, BYE),
:class:`MailAuthError` (login refused) and :class:`MailProtocolError` (a refused command,
a reply that makes no sense, a bound exceeded); the connection guard's own exception
propagates unchanged, as in the other clients.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from imapclient.imap_utf7 import decode as decode_utf7
from imapclient.imap_utf7 import encode as encode_utf7
from imapclient.response_parser import parse_response

from .endpoint import ConnectTarget, MailEndpoint, resolve_target, tls_context
from .errors import (
    MailAuthError,
    MailConnectionError,
    MailError,
    MailProtocolError,
    describe_network_error,
    redact,
)
from .sasl import TokenRefused, initial_response

__all__ = [
    "MAX_LINE",
    "MAX_LITERAL",
    "Change",
    "FolderStatus",
    "WatchSession",
]

#: Longest response line accepted (bytes, without literals).
MAX_LINE = 64 * 1024
#: Largest literal accepted: folder names and STATUS replies, never message bodies.
MAX_LITERAL = 64 * 1024
#: Largest response (lines and literals together): a LIST of many folders is one
#: response per folder, so this only bounds a single folder's line.
MAX_RESPONSE = 256 * 1024
#: Read buffer of a TLS connection (see ``_shrink_tls_buffer``).
TLS_READ_BUFFER = 16 * 1024

_LITERAL_RE = re.compile(rb"\{(\d{1,10})\+?\}$")
_TAGGED_RE = re.compile(rb"^(A\d+) (OK|NO|BAD)\b ?(.*)$", re.IGNORECASE | re.DOTALL)
_CODE_RE = re.compile(r"^\[([A-Z-]+)", re.IGNORECASE)
_CAPS_IN_CODE_RE = re.compile(rb"\[CAPABILITY ([^\]]*)\]", re.IGNORECASE)
_NUMBERED_RE = re.compile(rb"^\* (\d{1,10}) (EXISTS|EXPUNGE|FETCH|RECENT)\b", re.IGNORECASE)
_STATUS_ITEMS = ("MESSAGES", "UIDNEXT", "UIDVALIDITY", "HIGHESTMODSEQ")


@dataclass(frozen=True)
class FolderStatus:
    """What LIST-STATUS / STATUS / a NOTIFY STATUS said of a folder (None = not said)."""

    messages: int | None = None
    uidnext: int | None = None
    uidvalidity: int | None = None
    highestmodseq: int | None = None


@dataclass(frozen=True)
class Change:
    """Something changed in ``folder`` (decoded name); ``at`` is ``time.time()`` of receipt."""

    folder: str
    at: float


@dataclass
class _Response:
    """One response from the server: its lines, in imaplib's shape for the parser.

    ``parts`` holds bytes for text and ``(text, literal)`` tuples where a line ended
    in a literal, exactly what ``imapclient.response_parser.parse_response`` expects.
    """

    parts: list[bytes | tuple[bytes, bytes]] = field(default_factory=list)

    @property
    def first(self) -> bytes:
        head = self.parts[0]
        return head[0] if isinstance(head, tuple) else head


class WatchSession:
    """One connection to an IMAP server, for watching (use ``async with``; one task).

    After :meth:`open`: ``capabilities`` (post-login, upper case), ``has_notify``,
    ``has_list_status``, ``delimiter``. Then :meth:`examine` a folder, optionally
    :meth:`notify` for every folder, and :meth:`idle` to wait for changes.
    """

    def __init__(self, endpoint: MailEndpoint) -> None:
        self._endpoint = endpoint
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._tag = 0
        self._pending: asyncio.Task[_Response] | None = None
        self._selected: str | None = None
        self._untagged: list[_Response] = []
        self._missed: list[Change] = []
        self.capabilities: frozenset[str] = frozenset()
        self.notify_active = False

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> WatchSession:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def has_notify(self) -> bool:
        return "NOTIFY" in self.capabilities

    @property
    def has_list_status(self) -> bool:
        return "LIST-STATUS" in self.capabilities

    @property
    def has_condstore(self) -> bool:
        return "CONDSTORE" in self.capabilities or "QRESYNC" in self.capabilities

    async def open(self) -> None:
        """Connect (after the guard), secure, read the greeting, log in, read capabilities."""
        ep = self._endpoint
        # The guard resolves the name once (off the event loop) and checks the addresses;
        # the connection goes to exactly those (no second lookup to rebind).
        target = await asyncio.to_thread(resolve_target, ep.host, ep.port)
        try:
            limits = ep.limits
            await self._deadline(
                self._connect(target),
                "connecting",
                limits.connect_timeout + limits.greeting_timeout + 2 * limits.login_timeout,
            )
        except BaseException:
            await self.close()
            raise

    async def _connect(self, target: ConnectTarget) -> None:
        ep = self._endpoint
        context = tls_context(ep.ca_file) if ep.encryption != "none" else None
        error: BaseException | None = None
        for address in target.addresses:
            try:
                # TLS verifies the account's host name, not the address connected to.
                self._reader, self._writer = await asyncio.open_connection(
                    address,
                    target.port,
                    ssl=context if ep.encryption == "tls" else None,
                    server_hostname=target.host if ep.encryption == "tls" else None,
                    limit=MAX_LINE,
                )
                break
            except (OSError, ssl.SSLError) as exc:
                error = exc
        else:
            raise self._network_error(error or OSError("no address"), "connecting") from error
        assert self._writer is not None
        _shrink_tls_buffer(self._writer)
        greeting = (await self._read_response()).first
        if greeting.upper().startswith(b"* BYE"):
            raise MailConnectionError(
                f"the IMAP server at {ep.address} refused the connection: {self._text(greeting)}"
            )
        if not greeting.upper().startswith((b"* OK", b"* PREAUTH")):
            raise MailProtocolError(f"the server at {ep.address} did not greet like an IMAP server")
        self._caps_from(greeting)
        if ep.encryption == "starttls":
            if not self.capabilities:
                await self._command("CAPABILITY")
            if "STARTTLS" not in self.capabilities:
                raise MailConnectionError(
                    f"the IMAP server at {ep.address} does not offer STARTTLS; "
                    "refusing to continue without TLS"
                )
            await self._command("STARTTLS")
            assert self._writer is not None and context is not None
            try:
                await self._writer.start_tls(context, server_hostname=ep.host)
            except (OSError, ssl.SSLError) as exc:
                raise self._network_error(exc, "starting TLS") from exc
            _shrink_tls_buffer(self._writer)
            self.capabilities = frozenset()
        if not greeting.upper().startswith(b"* PREAUTH"):
            if not self.capabilities or ep.encryption == "starttls":
                await self._command("CAPABILITY")
            await self._login()
        # Servers announce more after login; the LOGIN reply often carries them.
        if not self._caps_after_login:
            await self._command("CAPABILITY")

    async def _login(self) -> None:
        """Authenticate. Override for another mechanism (SASL XOAUTH2, OAUTHBEARER).

        Raises :class:`MailAuthError` when the server refuses the credentials.
        """
        ep = self._endpoint
        if ep.sasl is not None:
            await self._login_oauth()
            return
        if "LOGINDISABLED" in self.capabilities:
            raise MailAuthError(
                "the IMAP server does not allow logging in on this connection"
                + (" without TLS; use TLS or STARTTLS" if ep.encryption == "none" else "")
            )
        if ep.username.isascii() and ep.password.isascii():
            user, password = _quote(ep.username), _quote(ep.password)
            status, text = await self._command_status(b"LOGIN " + user + b" " + password)
        elif "AUTH=PLAIN" in self.capabilities:
            # LOGIN's quoted strings are ASCII by the book; SASL PLAIN carries UTF-8.
            plain = b"\0" + ep.username.encode() + b"\0" + ep.password.encode()
            status, text = await self._authenticate("PLAIN", plain)
        else:
            raise MailAuthError(
                "the IMAP server offers no way to log in with a non-ASCII user name or password"
            )
        if status != "OK":
            raise self._login_error(text)
        self._logged_in(text)

    def _logged_in(self, text: bytes) -> None:
        """Note the capabilities a successful login's reply carried (``text``)."""
        self._caps_after_login = bool(_CAPS_IN_CODE_RE.search(text))
        if self._caps_after_login:
            self._caps_from(text)

    _caps_after_login = False

    async def _login_oauth(self) -> None:
        # As email_service.mail.sasl.login_with_refresh, with the (blocking) refresh on a
        # thread: one fresh token after a refusal, then the refusal stands.
        ep = self._endpoint
        assert ep.sasl is not None
        if f"AUTH={ep.sasl}" not in self.capabilities:
            raise MailAuthError(
                f"the IMAP server at {ep.address} does not offer {ep.sasl} (OAuth2) logins"
            )
        try:
            await self._authenticate_oauth(ep.password)
        except TokenRefused:
            if ep.token_refresh is None:
                raise
            fresh = await asyncio.to_thread(ep.token_refresh, ep.password)
            await self._authenticate_oauth(fresh)

    async def _authenticate_oauth(self, token: str) -> None:
        ep = self._endpoint
        assert ep.sasl is not None
        credentials = initial_response(ep.sasl, ep.username, token)
        status, text = await self._authenticate(ep.sasl, credentials)
        if status == "OK":
            self._logged_in(text)
            return
        error = self._login_error(text)
        if isinstance(error, MailConnectionError):
            raise error
        message = redact(self._text(text), token)
        raise TokenRefused(f"the IMAP server refused the OAuth2 access token ({message})")

    async def _authenticate(self, mechanism: str, response: bytes) -> tuple[str, bytes]:
        """AUTHENTICATE with a one-step SASL ``response`` (SASL-IR where offered, else on
        the server's first ``+``); any further challenge is answered with ``*`` (cancel),
        which is how XOAUTH2/OAUTHBEARER servers deliver an error. Returns the tagged
        status and text (the caller maps a refusal)."""
        encoded = base64.b64encode(response) or b"="
        if "SASL-IR" in self.capabilities:
            tag = self._send(b"AUTHENTICATE " + mechanism.encode() + b" " + encoded)
            answer = b"*"
        else:
            tag = self._send(b"AUTHENTICATE " + mechanism.encode())
            answer = encoded
        assert self._writer is not None
        while True:
            await self._writer.drain()
            reply = await self._next(self._endpoint.limits.login_timeout)
            if reply is None:
                raise MailConnectionError(
                    f"the IMAP server at {self._endpoint.address} did not answer the login"
                )
            first = reply.first
            tagged = _TAGGED_RE.match(first)
            if tagged and tagged.group(1) == tag:
                return tagged.group(2).decode().upper(), tagged.group(3)
            if first.startswith(b"+"):
                self._writer.write(answer + b"\r\n")
                answer = b"*"
                continue
            self._dispatch(reply, None)

    def _login_error(self, text: bytes) -> MailError:
        message = redact(self._text(text), self._endpoint.password)
        code_match = _CODE_RE.match(message)
        code = code_match.group(1).upper() if code_match else ""
        # RFC 5530: these say "try later", not "wrong password".
        if code in ("UNAVAILABLE", "INUSE", "LIMIT"):
            return MailConnectionError(
                f"the IMAP server at {self._endpoint.address} cannot log in now: {message}"
            )
        return MailAuthError(f"the IMAP server rejected the username or password ({message})")

    async def close(self) -> None:
        """Log out (briefly) and close; never raises."""
        writer, self._writer = self._writer, None
        pending, self._pending = self._pending, None
        if pending is not None and not pending.done():
            pending.cancel()
        if writer is None:
            return
        try:
            if not writer.is_closing():
                self._tag += 1
                writer.write(b"A%d LOGOUT\r\n" % self._tag)
                await asyncio.wait_for(writer.drain(), 1.0)
        except Exception:  # noqa: S110 - closing anyway
            pass
        writer.close()
        with contextlib.suppress(Exception):  # the peer may be gone already
            await asyncio.wait_for(writer.wait_closed(), 1.0)

    # ------------------------------------------------------------------ commands

    async def examine(self, folder: str = "INBOX") -> FolderStatus:
        """Open ``folder`` read-only (so that IDLE has a mailbox); returns what it said."""
        self._untagged.clear()
        await self._deadline(self._command(b"EXAMINE " + _mailbox(folder)), "opening " + folder)
        self._selected = folder
        status: dict[str, int] = {}
        for response in self._untagged:
            line = response.first.upper()
            number = _NUMBERED_RE.match(line)
            if number and number.group(2) == b"EXISTS":
                status["MESSAGES"] = int(number.group(1))
            for item in ("UIDNEXT", "UIDVALIDITY", "HIGHESTMODSEQ"):
                found = re.search(rb"\[" + item.encode() + rb" (\d{1,20})\]", line)
                if found:
                    status[item] = int(found.group(1))
        self._untagged.clear()
        return _status(status)

    async def notify(self) -> bool:
        """Ask for changes of every personal folder on this connection (RFC 5465).

        Returns whether the server took it; False when it lacks NOTIFY or refused
        the request (the caller then polls the other folders).
        """
        if not self.has_notify:
            return False
        events = "(MessageNew MessageExpunge FlagChange)"
        command = f"NOTIFY SET (selected {events}) (personal {events})".encode()
        status, _text = await self._deadline(self._command_status(command), "asking to NOTIFY")
        self.notify_active = status == "OK"
        self._untagged.clear()
        return self.notify_active

    async def list_status(self) -> dict[str, FolderStatus]:
        """Every folder's status: one LIST-STATUS (RFC 5819), else LIST then STATUS each."""
        items = "MESSAGES UIDNEXT UIDVALIDITY" + (" HIGHESTMODSEQ" if self.has_condstore else "")
        self._untagged.clear()
        if self.has_list_status:
            await self._deadline(
                self._command(f'LIST "" "*" RETURN (STATUS ({items}))'.encode()), "listing folders"
            )
            found = self._statuses(self._untagged)
            self._untagged.clear()
            return found
        await self._deadline(self._command(b'LIST "" "*"'), "listing folders")
        names = [name for name, selectable in self._list_names(self._untagged) if selectable]
        self._untagged.clear()
        found = {}
        for name in names:
            if name == self._selected:
                continue  # RFC 3501 advises against STATUS of the selected folder
            await self._deadline(
                self._command(b"STATUS " + _mailbox(name) + f" ({items})".encode()),
                "reading folder status",
            )
            found.update(self._statuses(self._untagged))
            self._untagged.clear()
        return found

    async def idle(self, seconds: float, on_change: Callable[[Change], None]) -> None:
        """Wait in IDLE (RFC 2177) for up to ``seconds``, reporting changes as they come.

        ``on_change`` is called for each notice: EXISTS/EXPUNGE/FETCH/VANISHED for the
        selected folder, STATUS for others (NOTIFY). Ends by sending DONE when the time
        is up; returns normally then. A BYE or a broken connection raises.
        """
        if "IDLE" not in self.capabilities:
            raise MailProtocolError(f"the IMAP server at {self._endpoint.address} lacks IDLE")
        missed, self._missed = self._missed, []
        for change in missed:
            on_change(change)
        tag = self._send(b"IDLE")
        await self._deadline(self._await_continuation(tag, on_change), "starting IDLE")
        end = time.monotonic() + seconds
        while True:
            remaining = end - time.monotonic()
            if remaining <= 0:
                break
            response = await self._next(remaining)
            if response is None:
                break
            self._dispatch(response, on_change)
        assert self._writer is not None
        self._writer.write(b"DONE\r\n")
        await self._deadline(self._await_tagged(tag, on_change), "ending IDLE")

    # ------------------------------------------------------------------ reading

    async def _next(self, timeout: float) -> _Response | None:
        """The next response, or None if none came within ``timeout``.

        A read left waiting by a timeout is kept and awaited next time, so no byte is
        lost to a cancelled read (a literal read halfway would desynchronise us).
        """
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._read_response())
        done, _ = await asyncio.wait({self._pending}, timeout=timeout)
        if not done:
            return None
        task, self._pending = self._pending, None
        return task.result()

    async def _read_response(self) -> _Response:
        reader = self._reader
        if reader is None:
            raise MailConnectionError(f"the IMAP connection to {self._endpoint.address} is closed")
        response = _Response()
        size = 0
        while True:
            line = await self._read_line(reader)
            size += len(line)
            literal = _LITERAL_RE.search(line)
            if literal is None:
                response.parts.append(line)
                return response
            length = int(literal.group(1))
            if length > MAX_LITERAL or size + length > MAX_RESPONSE:
                raise MailProtocolError(
                    f"the IMAP server at {self._endpoint.address} sent a literal of "
                    f"{length} bytes; a watcher accepts {MAX_LITERAL} at most"
                )
            try:
                data = await reader.readexactly(length)
            except (OSError, asyncio.IncompleteReadError) as exc:
                raise self._network_error(exc, "reading") from exc
            size += length
            response.parts.append((line, data))

    async def _read_line(self, reader: asyncio.StreamReader) -> bytes:
        try:
            line = await reader.readuntil(b"\r\n")
        except asyncio.LimitOverrunError as exc:
            raise MailProtocolError(
                f"the IMAP server at {self._endpoint.address} sent a line longer than "
                f"{MAX_LINE} bytes"
            ) from exc
        except asyncio.IncompleteReadError as exc:
            raise MailConnectionError(
                f"the IMAP server at {self._endpoint.address} closed the connection"
            ) from exc
        except (OSError, ssl.SSLError) as exc:
            raise self._network_error(exc, "reading") from exc
        return line[:-2]

    # ------------------------------------------------------------------ plumbing

    def _send(self, command: bytes) -> bytes:
        if self._writer is None:
            raise MailConnectionError(f"the IMAP connection to {self._endpoint.address} is closed")
        self._tag += 1
        tag = b"A%d" % self._tag
        self._writer.write(tag + b" " + command + b"\r\n")
        return tag

    async def _command(self, command: bytes | str) -> bytes:
        """Send ``command``, wait for its tagged OK; returns the OK's text."""
        raw = command.encode() if isinstance(command, str) else command
        status, text = await self._command_status(raw)
        if status != "OK":
            name = raw.split(b" ", 1)[0].decode("ascii", "replace")
            raise MailProtocolError(
                f"the IMAP server at {self._endpoint.address} refused {name}: {self._text(text)}"
            )
        return text

    async def _command_status(self, command: bytes) -> tuple[str, bytes]:
        tag = self._send(command)
        assert self._writer is not None
        try:
            await self._writer.drain()
        except (OSError, ssl.SSLError) as exc:
            raise self._network_error(exc, "writing") from exc
        return await self._await_tagged(tag, None)

    async def _await_tagged(
        self, tag: bytes, on_change: Callable[[Change], None] | None
    ) -> tuple[str, bytes]:
        while True:
            response = await self._next(self._endpoint.limits.command_timeout)
            if response is None:
                raise MailConnectionError(
                    f"the IMAP server at {self._endpoint.address} did not answer within "
                    f"{self._endpoint.limits.command_timeout:.0f}s"
                )
            first = response.first
            tagged = _TAGGED_RE.match(first)
            if tagged and tagged.group(1) == tag:
                return tagged.group(2).decode().upper(), tagged.group(3)
            if first.startswith(b"+"):
                raise MailProtocolError(
                    f"the IMAP server at {self._endpoint.address} asked for more input "
                    "where none was due"
                )
            self._dispatch(response, on_change)

    async def _await_continuation(self, tag: bytes, on_change: Callable[[Change], None]) -> None:
        assert self._writer is not None
        await self._writer.drain()
        while True:
            response = await self._next(self._endpoint.limits.command_timeout)
            if response is None:
                raise MailConnectionError(
                    f"the IMAP server at {self._endpoint.address} did not answer IDLE"
                )
            first = response.first
            if first.startswith(b"+"):
                return
            tagged = _TAGGED_RE.match(first)
            if tagged and tagged.group(1) == tag:
                raise MailProtocolError(
                    f"the IMAP server at {self._endpoint.address} refused IDLE: "
                    f"{self._text(tagged.group(3))}"
                )
            self._dispatch(response, on_change)

    def _dispatch(self, response: _Response, on_change: Callable[[Change], None] | None) -> None:
        """Handle an untagged response: a change notice, BYE, capabilities, or keep it."""
        first = response.first
        upper = first.upper()
        if upper.startswith(b"* BYE"):
            raise MailConnectionError(
                f"the IMAP server at {self._endpoint.address} closed the session: "
                f"{self._text(first)}"
            )
        if upper.startswith(b"* CAPABILITY "):
            self.capabilities = frozenset(first[13:].decode("ascii", "replace").upper().split())
            return
        if upper.startswith(b"* OK [CAPABILITY "):
            self._caps_from(first)
            return
        now = time.time()
        number = _NUMBERED_RE.match(upper)
        selected_changed = (number and number.group(2) != b"RECENT") or upper.startswith(
            b"* VANISHED"
        )
        if on_change is None:
            self._untagged.append(response)
            if selected_changed and self._selected is not None:
                # Unsolicited news of the open folder during another command (a poll):
                # kept for the next IDLE to report, not lost with the command's replies.
                self._missed.append(Change(self._selected, now))
            return
        if selected_changed:
            if self._selected is not None:
                on_change(Change(self._selected, now))
            return
        if upper.startswith(b"* STATUS "):
            for name in self._statuses([response]):
                on_change(Change(name, now))

    def _statuses(self, responses: list[_Response]) -> dict[str, FolderStatus]:
        found: dict[str, FolderStatus] = {}
        for response in responses:
            if not response.first.upper().startswith(b"* STATUS "):
                continue
            try:
                parsed = parse_response(_strip(response, 9))
            except Exception as exc:  # the parser raises ProtocolError and friends
                raise MailProtocolError(
                    f"the IMAP server at {self._endpoint.address} sent a STATUS "
                    "reply that cannot be read"
                ) from exc
            if len(parsed) < 2 or not isinstance(parsed[1], tuple):
                continue
            name, values = parsed[0], parsed[1]
            items: dict[str, int] = {}
            for key, value in zip(values[::2], values[1::2], strict=False):
                label = self._text(key).upper() if isinstance(key, bytes) else str(key)
                if label in _STATUS_ITEMS and isinstance(value, int):
                    items[label] = value
            found[_decode_name(name)] = _status(items)
        return found

    def _list_names(self, responses: list[_Response]) -> list[tuple[str, bool]]:
        names: list[tuple[str, bool]] = []
        for response in responses:
            if not response.first.upper().startswith(b"* LIST "):
                continue
            try:
                parsed = parse_response(_strip(response, 7))
            except Exception as exc:
                raise MailProtocolError(
                    f"the IMAP server at {self._endpoint.address} sent a LIST "
                    "reply that cannot be read"
                ) from exc
            if len(parsed) < 3:
                continue
            flags = {self._text(f).lower() for f in parsed[0]} if parsed[0] else set()
            selectable = not flags & {"\\noselect", "\\nonexistent"}
            names.append((_decode_name(parsed[2]), selectable))
        return names

    def _caps_from(self, line: bytes) -> None:
        match = _CAPS_IN_CODE_RE.search(line)
        if match:
            self.capabilities = frozenset(match.group(1).decode("ascii", "replace").upper().split())

    async def _deadline(self, work: Any, action: str, seconds: float | None = None) -> Any:
        limit = seconds if seconds is not None else self._endpoint.limits.command_timeout
        try:
            return await asyncio.wait_for(work, limit)
        except TimeoutError as exc:
            raise MailConnectionError(
                f"the IMAP server at {self._endpoint.address} did not answer within "
                f"{limit:.0f}s while {action}"
            ) from exc

    def _network_error(self, exc: BaseException, action: str) -> MailConnectionError:
        description, cert_error = describe_network_error(exc)
        description = redact(description, self._endpoint.password)
        return MailConnectionError(
            f"the IMAP connection to {self._endpoint.address} failed while {action}: {description}",
            certificate_error=cert_error,
        )

    def _text(self, value: bytes) -> str:
        return redact(value.decode("utf-8", "replace"), self._endpoint.password)[:300]


def _shrink_tls_buffer(writer: asyncio.StreamWriter) -> None:
    """Give asyncio's TLS layer a 16 KiB read buffer instead of its 256 KiB.

    CPython's ``SSLProtocol`` (3.11+) allocates and zero-fills a 256 KiB buffer per
    connection for reading; a watcher reads a few short lines an hour, and 1,000
    connections would hold 256 MiB of it (bench P8). The attributes are private, so
    this changes nothing where they are missing; 16 KiB still holds a whole TLS record.
    """
    protocol = getattr(writer.transport, "_ssl_protocol", None)
    if (
        protocol is None
        or not hasattr(protocol, "_ssl_buffer")
        or not hasattr(protocol, "max_size")
    ):
        return
    protocol.max_size = TLS_READ_BUFFER
    protocol._ssl_buffer = bytearray(TLS_READ_BUFFER)
    protocol._ssl_buffer_view = memoryview(protocol._ssl_buffer)


def _strip(response: _Response, prefix: int) -> list[bytes | tuple[bytes, bytes]]:
    """The response's parts without its first ``prefix`` bytes (``* STATUS ``)."""
    parts = list(response.parts)
    head = parts[0]
    parts[0] = (head[0][prefix:], head[1]) if isinstance(head, tuple) else head[prefix:]
    return parts


def _decode_name(raw: object) -> str:
    if isinstance(raw, bytes):
        return str(decode_utf7(raw))
    return str(raw)


def _status(items: dict[str, int]) -> FolderStatus:
    return FolderStatus(
        messages=items.get("MESSAGES"),
        uidnext=items.get("UIDNEXT"),
        uidvalidity=items.get("UIDVALIDITY"),
        highestmodseq=items.get("HIGHESTMODSEQ"),
    )


def _quote(value: str) -> bytes:
    """An IMAP quoted string; refuses CR/LF/NUL, which no quoted string may hold."""
    if any(c in value for c in "\r\n\0"):
        raise MailAuthError("the user name or password holds a line break or NUL")
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return b'"' + escaped.encode("utf-8") + b'"'


def _mailbox(name: str) -> bytes:
    encoded = encode_utf7(name)
    return _quote(encoded.decode("ascii") if isinstance(encoded, bytes) else str(encoded))
