"""Mail servers that answer in bad faith (or are just broken), for tests.

:class:`HostileProxy` sits on a free loopback port in front of the real Dovecot (plain
IMAP or POP3) and passes everything through, except that each line the server sends goes
through the proxy's *rules* first. A rule gets the line (CRLF included; literals are
passed through untouched and never shown to rules) and returns

* the line, changed or not,
* ``None`` to drop it,
* :data:`HANG`: from now on nothing more is sent to the client (the socket stays open),
* :data:`ENDLESS`: the line is replaced by bytes without end and without CRLF,
* :data:`DRIP`: the line is sent one byte every ``drip_interval`` seconds.

A rule can also change a literal's size: :func:`oversize_literal` makes the server
announce and send a bigger body than the message has. Rules apply to every line sent
while they are installed, on every connection, those opened before included (a server
can turn hostile on a session a worker keeps open across jobs); ``proxy.rules = [...]``
replaces them.

The habits of non-Dovecot servers that the tests need are rules too: ranges far beyond
the folder in ESEARCH and VANISHED answers, ``INTERNALDATE NIL``, silence after login.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Callable
from typing import Final

HANG: Final = b"\x00hang"
ENDLESS: Final = b"\x00endless"
DRIP: Final = b"\x00drip"

Rule = Callable[[bytes], bytes | None]

_LITERAL_RE = re.compile(rb"\{(\d+)\}\r\n$")
_CLIENT_LITERAL_RE = re.compile(rb"\{(\d+)\+?\}\r\n$")


class Answer(bytes):
    """What a client rule answers in the server's place (the line is not passed on)."""


class HostileProxy:
    """A line-rewriting TCP proxy to ``upstream_port`` on loopback (see module doc)."""

    def __init__(self, upstream_port: int, *, host: str = "127.0.0.1") -> None:
        self.host = host
        self.upstream_port = upstream_port
        self.rules: list[Rule] = []
        #: Rules for what the client sends (literals are not shown to them): return the
        #: line to pass it on, or an :class:`Answer` to reply in the server's place.
        self.client_rules: list[Callable[[bytes], bytes | Answer]] = []
        self.drip_interval = 0.5
        self.connections = 0
        self._listener = socket.create_server((host, 0))
        self.port: int = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True, name="hostile-accept")
        self._thread.start()

    def close(self) -> None:
        self._stopped.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        for sock in list(self._sockets):
            with contextlib.suppress(OSError):
                sock.close()

    def __enter__(self) -> HostileProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ plumbing

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            upstream = socket.create_connection((self.host, self.upstream_port))
            self._sockets += [client, upstream]
            threading.Thread(target=self._pump_up, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump_down, args=(upstream, client), daemon=True).start()

    def _pump_up(self, client: socket.socket, upstream: socket.socket) -> None:
        reader = client.makefile("rb")
        with contextlib.suppress(OSError):
            while line := reader.readline():
                out: bytes | Answer = line
                for rule in list(self.client_rules):
                    out = rule(out)
                    if isinstance(out, Answer):
                        break
                if isinstance(out, Answer):
                    # A synchronizing literal is not sent after a refusal; the server's
                    # answer stands in for the "+" the client waited for.
                    client.sendall(bytes(out))
                    continue
                upstream.sendall(out)
                match = _CLIENT_LITERAL_RE.search(line)
                if match:
                    upstream.sendall(reader.read(int(match.group(1))))
        with contextlib.suppress(OSError):
            upstream.shutdown(socket.SHUT_WR)

    def _pump_down(self, upstream: socket.socket, client: socket.socket) -> None:
        reader = upstream.makefile("rb")
        try:
            while True:
                line = reader.readline()
                if not line:
                    break
                out: bytes | None = line
                for rule in list(self.rules):
                    if out is None or out in (HANG, ENDLESS, DRIP):
                        break
                    out = rule(out)
                if out is None:
                    pass
                elif out == HANG:
                    self._stopped.wait()
                    return
                elif out == ENDLESS:
                    chunk = b"x" * 65536
                    while not self._stopped.is_set():
                        client.sendall(chunk)
                    return
                elif out == DRIP:
                    for byte in line:
                        client.sendall(bytes([byte]))
                        if self._stopped.wait(self.drip_interval):
                            return
                else:
                    client.sendall(out)
                match = _LITERAL_RE.search(line)
                if match:
                    size = int(match.group(1))
                    announced = _LITERAL_RE.search(out) if isinstance(out, bytes) else None
                    body = reader.read(size)
                    if announced and int(announced.group(1)) > size:
                        body += b"X" * (int(announced.group(1)) - size)
                    client.sendall(body)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                client.close()


# ---------------------------------------------------------------------- rules


def huge_esearch(line: bytes) -> bytes | None:
    """Every ESEARCH ALL answer names all four billion UIDs."""
    if line.startswith(b"* ESEARCH") and b" ALL " in line:
        return re.sub(rb" ALL [0-9:,]+", b" ALL 1:4294967295", line)
    return line


def huge_vanished(line: bytes) -> bytes | None:
    """Every tagged OK of a UID FETCH is preceded by a VANISHED naming every UID."""
    if re.match(rb"^\S+ OK Fetch completed", line):
        return b"* VANISHED (EARLIER) 1:4294967295\r\n" + line
    return line


def internaldate_nil(line: bytes) -> bytes | None:
    """INTERNALDATE NIL in every FETCH answer."""
    return re.sub(rb'INTERNALDATE "[^"]*"', b"INTERNALDATE NIL", line)


def silent_after_login(line: bytes) -> bytes | None:
    """Nothing more after the server accepted the login."""
    if re.match(rb"^\S+ OK .*Logged in", line):
        return HANG
    return line


def endless_after_login(line: bytes) -> bytes | None:
    """After the login, an endless line without CRLF."""
    if re.match(rb"^\S+ OK .*Logged in", line):
        return ENDLESS
    return line


def drip_after_login(line: bytes) -> bytes | None:
    """The login answer, one byte at a time."""
    if re.match(rb"^\S+ OK .*Logged in", line):
        return DRIP
    return line


def oversize_literal(extra: int) -> Rule:
    """Message literals announce (and carry) ``extra`` bytes more than the message has."""

    def rule(line: bytes) -> bytes | None:
        match = _LITERAL_RE.search(line)
        if match and b"BODY[]" in line:
            return line[: match.start()] + b"{%d}\r\n" % (int(match.group(1)) + extra)
        return line

    return rule


def lying_size(size: int) -> Rule:
    """Every RFC822.SIZE says ``size``."""

    def rule(line: bytes) -> bytes | None:
        return re.sub(rb"RFC822\.SIZE \d+", b"RFC822.SIZE %d" % size, line)

    return rule


class GarbledFetch:
    """The FETCH answer carrying the body of UID ``uid`` has items that cannot be parsed.

    Its UID and its literal stay as they are (so the stream stays in step), but its
    FLAGS list is broken off into an unterminated quoted string. ``count`` says how
    many such answers were sent.
    """

    def __init__(self, uid: int) -> None:
        self.uid = uid
        self.count = 0

    def __call__(self, line: bytes) -> bytes | None:
        if (
            line.startswith(b"* ")
            and b" FETCH (" in line
            and b"BODY[]" in line
            and re.search(rb"\bUID %d\b" % self.uid, line)
        ):
            self.count += 1
            return re.sub(rb"FLAGS \([^)]*\)", lambda _: b'FLAGS (\\Seen "broken off', line)
        return line


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


class CourierReadOnlyAppend:
    """Courier-IMAP's habit: an APPEND to the mailbox selected read-only is refused."""

    _COMMAND_RE = re.compile(
        rb'^(\S+) (EXAMINE|SELECT|UNSELECT|CLOSE|APPEND)(?: ("(?:[^"\\]|\\.)*"|\S+))?', re.I
    )

    def __init__(self) -> None:
        self.examined: bytes | None = None
        self.refused = 0

    def __call__(self, line: bytes) -> bytes | Answer:
        match = self._COMMAND_RE.match(line)
        if not match:
            return line
        tag, command, mailbox = match.group(1), match.group(2).upper(), match.group(3)
        if command == b"EXAMINE":
            self.examined = mailbox
        elif command in (b"SELECT", b"UNSELECT", b"CLOSE"):
            self.examined = None
        elif command == b"APPEND" and mailbox is not None and mailbox == self.examined:
            self.refused += 1
            return Answer(tag + b" NO Current box is selected READ-ONLY.\r\n")
        return line
