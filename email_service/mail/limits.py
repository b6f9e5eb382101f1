"""Caps on what a mail server may send us and how long it may take.

Any tenant can point an account at any server, and the workers that talk to it are shared
by all tenants, so every byte from an IMAP, POP3 or SMTP server is untrusted. The numbers
here bound one connection's memory and time whatever the server answers:

* a line (everything up to LF, outside literals) is at most ``max_line_bytes``;
* a literal (a message body in a FETCH) above ``max_message_bytes`` is never kept in
  memory: the IMAP client reads ``RFC822.SIZE`` first and does not ask for such bodies,
  and a server that sends one anyway has it read and thrown away in pieces;
* what one response carries (a command's lines and literals; a FETCH stream counts per
  message) is at most ``max_response_bytes``;
* connecting, the greeting, logging in and each command have their own deadline. A
  deadline is a point in time, not a timeout per read, so a server that drips one byte at
  a time fails within it too.

:class:`MailLimits` travels with the :class:`~email_service.mail.endpoint.MailEndpoint`;
the service fills it from the settings (``MAIL_*_TIMEOUT``, ``MAX_MESSAGE_BYTES``,
``MAIL_MAX_LINE_BYTES``, ``MAIL_MAX_RESPONSE_BYTES``). :class:`BoundedReader` replaces the
socket file of imaplib, poplib and smtplib and enforces them.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

__all__ = [
    "MAX_FOLDER_UIDS",
    "BoundedReader",
    "MailLimitExceeded",
    "MailLimits",
    "ServerTimeout",
]

#: Most UIDs one folder may report (ESEARCH ALL, SEARCH). A folder of a million
#: messages is beyond what any mail client shows; a server claiming more is not believed.
MAX_FOLDER_UIDS = 1_000_000

#: Room for the framing around a literal that is exactly at the message cap.
LITERAL_SLACK_BYTES = 64 * 1024

_RECV_BYTES = 256 * 1024


@dataclass(frozen=True)
class MailLimits:
    """Deadlines (seconds) and byte caps for one mail connection. All must be positive."""

    connect_timeout: float = 15.0
    greeting_timeout: float = 30.0
    login_timeout: float = 30.0
    command_timeout: float = 120.0
    max_message_bytes: int = 50 * 1024 * 1024
    max_line_bytes: int = 4 * 1024 * 1024
    max_response_bytes: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        for name in (
            "connect_timeout",
            "greeting_timeout",
            "login_timeout",
            "command_timeout",
            "max_message_bytes",
            "max_line_bytes",
            "max_response_bytes",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")

    @property
    def max_literal_bytes(self) -> int:
        """Largest literal kept in memory: a message at the cap plus framing."""
        return self.max_message_bytes + LITERAL_SLACK_BYTES


class MailLimitExceeded(OSError):
    """The server broke a cap (line, response); the message says which, in words."""


class ServerTimeout(MailLimitExceeded, TimeoutError):
    """The server did not finish within a deadline; the message says what it was doing."""


def _size(count: int) -> str:
    if count >= 1024 * 1024:
        return f"{count / (1024 * 1024):.0f} MiB"
    if count >= 1024:
        return f"{count / 1024:.0f} KiB"
    return f"{count} bytes"


class BoundedReader:
    """A socket file (``readline``/``read``) with a deadline and byte caps.

    The protocol libraries read their server through ``self.file``; put an instance there
    (after connecting, and again after STARTTLS wraps the socket). Call :meth:`arm` before
    each phase (greeting, login, each command, each response of a stream): it sets the
    deadline and starts a new response count.

    A literal over ``max_literal_bytes`` is read and thrown away in pieces (within the
    deadline); :meth:`read` then returns ``b""`` and :attr:`discarded` holds its size, so
    the caller can record the message as too large instead of failing on it forever.
    """

    def __init__(self, sock: socket.socket, limits: MailLimits) -> None:
        self._sock = sock
        self.limits = limits
        self._buffer = bytearray()
        self._deadline = time.monotonic() + limits.command_timeout
        self._phase = "waiting for an answer"
        self._phase_timeout = limits.command_timeout
        self._response_bytes = 0
        self.discarded: int | None = None

    def arm(self, seconds: float, phase: str) -> None:
        """Start a phase: the server has ``seconds`` from now; the response count restarts."""
        self._deadline = time.monotonic() + seconds
        self._phase = phase
        self._phase_timeout = seconds
        self._response_bytes = 0

    def _count(self, size: int) -> None:
        self._response_bytes += size
        if self._response_bytes > self.limits.max_response_bytes:
            raise MailLimitExceeded(
                f"the server sent more than {_size(self.limits.max_response_bytes)} in one "
                f"response while {self._phase}"
            )

    def _fill(self) -> bool:
        """Receive more bytes into the buffer; False at end of stream."""
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise self._timeout()
        self._sock.settimeout(remaining)
        try:
            chunk = self._sock.recv(_RECV_BYTES)
        except TimeoutError:
            raise self._timeout() from None
        if not chunk:
            return False
        self._buffer += chunk
        return True

    def _timeout(self) -> ServerTimeout:
        return ServerTimeout(
            f"the server did not answer within {self._phase_timeout:g} s while {self._phase}"
        )

    def readline(self, limit: int = -1) -> bytes:
        """One line (LF included), or ``limit`` bytes of it; ``b""`` at end of stream."""
        cap = self.limits.max_line_bytes
        want = cap if limit is None or limit < 0 else min(limit, cap + 1)
        scanned = 0
        while True:
            end = self._buffer.find(b"\n", scanned)
            if end >= 0 and end < want:
                return self._take(end + 1)
            if len(self._buffer) >= want:
                if want > cap:
                    raise MailLimitExceeded(self._too_long())
                if limit is not None and 0 <= limit <= cap:
                    return self._take(want)
                raise MailLimitExceeded(self._too_long())
            scanned = len(self._buffer)
            if not self._fill():
                return self._take(len(self._buffer))

    def _too_long(self) -> str:
        return (
            f"the server sent a line longer than {_size(self.limits.max_line_bytes)} "
            f"while {self._phase}"
        )

    def _take(self, size: int) -> bytes:
        piece = bytes(self._buffer[:size])
        del self._buffer[:size]
        self._count(size)
        return piece

    def read(self, size: int = -1) -> bytes:
        """Exactly ``size`` bytes (fewer at end of stream); see the class doc for big ones."""
        if size is None or size < 0:
            raise ValueError("an unbounded read is not allowed on a mail connection")
        if size > self.limits.max_literal_bytes:
            self._discard(size)
            return b""
        while len(self._buffer) < size:
            if not self._fill():
                break
        return self._take(min(size, len(self._buffer)))

    def _discard(self, size: int) -> None:
        left = size
        while left > 0:
            if not self._buffer and not self._fill():
                break
            step = min(left, len(self._buffer))
            del self._buffer[:step]
            left -= step
        self.discarded = size

    def take_discarded(self) -> int | None:
        """The size of a literal thrown away since the last call, if any."""
        size, self.discarded = self.discarded, None
        return size

    def close(self) -> None:
        """The library closes the socket itself; only the buffer goes."""
        self._buffer.clear()
