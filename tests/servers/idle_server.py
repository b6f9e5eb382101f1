"""A minimal IMAP server speaking just enough for a watcher: LOGIN, EXAMINE, LIST,
STATUS, NOTIFY (optionally), IDLE and LOGOUT, with switches for misbehaviour.

For what Dovecot cannot show: thousands of logins on a small machine (bench P8), and
servers that misbehave (an endless line, a huge literal, a BYE in IDLE, silence).
It runs its own event loop on a thread; ``push()`` sends a notice to every connection
of a user that waits in IDLE. Every user's password is ``password`` unless listed in
``refuse`` (then LOGIN answers NO).

``python -m tests.servers.idle_server --port P`` runs it in a process of its own, with a
control port (``--control C``) that takes ``PUSH\\n`` (an EXISTS to every idling
connection) and ``STATS\\n`` (JSON counts), as bench P8 does.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import re
import ssl
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

CAPABILITIES = "IMAP4rev1 IDLE LITERAL+ LIST-STATUS AUTH=PLAIN"
_COMMAND_RE = re.compile(rb"^(\S+) (\S+)(?: (.*))?$")


@dataclass
class Behaviour:
    """What the server does wrong, switched on per test."""

    notify: bool = False
    list_status: bool = True
    # After IDLE's continuation: a line of this many bytes, without CRLF at first.
    huge_line: int = 0
    # After IDLE's continuation: an untagged response announcing a literal this large.
    huge_literal: int = 0
    # Answer IDLE with BYE and close.
    bye_in_idle: bool = False
    # Never answer IDLE (no continuation).
    silent_idle: bool = False
    # Tell of a new message in INBOX in the middle of a LIST's replies (unsolicited).
    exists_in_list: bool = False
    refuse: set[str] = field(default_factory=set)
    folders: tuple[str, ...] = ("INBOX", "Archive")


class IdleServer:
    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.behaviour = Behaviour()
        self.passwords: dict[str, str] = {}  # per user, instead of "password"
        self.ssl_context = ssl_context
        self.port = 0
        self.counts: Counter[str] = Counter()
        self.messages: Counter[str] = Counter()
        self._idlers: dict[str, set[asyncio.StreamWriter]] = {}
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None

    # ----- lifecycle -------------------------------------------------------

    def start(self, port: int = 0, backlog: int = 2048) -> IdleServer:
        ready = threading.Event()

        def main() -> None:
            asyncio.set_event_loop(self._loop)
            self._server = self._loop.run_until_complete(
                asyncio.start_server(
                    self._serve, "127.0.0.1", port, ssl=self.ssl_context, backlog=backlog
                )
            )
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=main, daemon=True, name="idle-server")
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._server is None:
            return

        async def close() -> None:
            assert self._server is not None
            self._server.close()
            for writers in self._idlers.values():
                for writer in writers:
                    writer.close()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._server = None

    # ----- control ---------------------------------------------------------

    def push(self, user: str | None = None, folder: str = "INBOX") -> int:
        """A new message for ``user`` (every user when None); returns notices sent."""

        async def send() -> int:
            sent = 0
            for name, writers in self._idlers.items():
                if user is not None and name != user:
                    continue
                self.messages[name] += 1
                line = b"* %d EXISTS\r\n" % self.messages[name]
                if folder != "INBOX":
                    line = b'* STATUS "%s" (MESSAGES %d UIDNEXT %d)\r\n' % (
                        folder.encode(),
                        self.messages[name],
                        self.messages[name] + 1,
                    )
                for writer in list(writers):
                    writer.write(line)
                    sent += 1
            return sent

        return asyncio.run_coroutine_threadsafe(send(), self._loop).result(30)

    def idling(self) -> int:
        return sum(len(w) for w in self._idlers.values())

    # ----- protocol --------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.counts["connections"] += 1
        user: str | None = None
        try:
            writer.write(f"* OK [CAPABILITY {CAPABILITIES}] idle server ready\r\n".encode())
            while True:
                line = await reader.readline()
                if not line:
                    return
                match = _COMMAND_RE.match(line.rstrip(b"\r\n"))
                if match is None:
                    writer.write(b"* BAD what\r\n")
                    continue
                tag, command, rest = match.group(1), match.group(2).upper(), match.group(3) or b""
                if command in (b"LOGIN", b"AUTHENTICATE"):
                    self.counts["logins"] += 1
                    if command == b"LOGIN":
                        name, password = _two_strings(rest)
                    else:  # PLAIN without SASL-IR: the response follows a "+"
                        writer.write(b"+ \r\n")
                        await writer.drain()
                        decoded = base64.b64decode((await reader.readline()).strip() or b"=")
                        _, raw_name, raw_password = [*decoded.split(b"\0"), b"", b""][:3]
                        name, password = raw_name.decode(), raw_password.decode()
                    expected = self.passwords.get(name, "password")
                    if name in self.behaviour.refuse or password != expected:
                        self.counts["refused"] += 1
                        writer.write(tag + b" NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")
                        continue
                    user = name
                    caps = CAPABILITIES if self.behaviour.list_status else "IMAP4rev1 IDLE"
                    caps += " NOTIFY" if self.behaviour.notify else ""
                    writer.write(tag + f" OK [CAPABILITY {caps}] Logged in\r\n".encode())
                elif command == b"CAPABILITY":
                    writer.write(f"* CAPABILITY {CAPABILITIES}\r\n".encode() + tag + b" OK\r\n")
                elif command == b"EXAMINE":
                    count = self.messages[user or ""]
                    writer.write(
                        b"* %d EXISTS\r\n* OK [UIDVALIDITY 1]\r\n* OK [UIDNEXT %d]\r\n"
                        % (count, count + 1)
                        + tag
                        + b" OK [READ-ONLY] done\r\n"
                    )
                elif command == b"NOTIFY":
                    writer.write(tag + (b" OK" if self.behaviour.notify else b" BAD no") + b"\r\n")
                elif command in (b"LIST", b"STATUS"):
                    if command == b"LIST" and self.behaviour.exists_in_list:
                        self.messages[user or ""] += 1
                        writer.write(b"* %d EXISTS\r\n" % self.messages[user or ""])
                    count = self.messages[user or ""]
                    for folder in self.behaviour.folders:
                        if command == b"STATUS" and f'"{folder}"'.encode() not in rest:
                            continue
                        if command == b"LIST":
                            writer.write(b'* LIST () "/" "%s"\r\n' % folder.encode())
                        if command == b"STATUS" or b"RETURN" in rest:
                            writer.write(
                                b'* STATUS "%s" (MESSAGES %d UIDNEXT %d UIDVALIDITY 1)\r\n'
                                % (folder.encode(), count, count + 1)
                            )
                    writer.write(tag + b" OK done\r\n")
                elif command == b"IDLE":
                    await self._idle(reader, writer, tag, user or "")
                elif command == b"LOGOUT":
                    writer.write(b"* BYE bye\r\n" + tag + b" OK\r\n")
                    await writer.drain()
                    return
                else:
                    writer.write(tag + b" OK\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            return
        finally:
            writer.close()

    async def _idle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tag: bytes, user: str
    ) -> None:
        self.counts["idles"] += 1
        behaviour = self.behaviour
        if behaviour.silent_idle:
            await reader.readline()
            return
        if behaviour.bye_in_idle:
            writer.write(b"* BYE going away\r\n")
            await writer.drain()
            raise ConnectionError("bye")
        writer.write(b"+ idling\r\n")
        if behaviour.huge_line:
            writer.write(b"* " + b"x" * behaviour.huge_line + b"\r\n")
        if behaviour.huge_literal:
            writer.write(b"* STATUS {%d}\r\n" % behaviour.huge_literal)
            writer.write(b"y" * behaviour.huge_literal + b" (MESSAGES 1)\r\n")
        await writer.drain()
        self._idlers.setdefault(user, set()).add(writer)
        try:
            line = await reader.readline()
        finally:
            self._idlers[user].discard(writer)
        if line.strip().upper() == b"DONE":
            writer.write(tag + b" OK idle done\r\n")


def _two_strings(rest: bytes) -> tuple[str, str]:
    parts = re.findall(rb'"((?:[^"\\]|\\.)*)"|(\S+)', rest)
    values = [(q or a).replace(b'\\"', b'"').replace(b"\\\\", b"\\").decode() for q, a in parts]
    padded = [*values, "", ""]
    return padded[0], padded[1]


async def _control(server: IdleServer, port: int) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            command = line.strip().upper()
            reply: Any
            if command == b"PUSH":
                reply = {"sent": await asyncio.to_thread(server.push)}
            else:
                reply = {**server.counts, "idling": server.idling()}
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        writer.close()

    control = await asyncio.start_server(handle, "127.0.0.1", port)
    async with control:
        await control.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--control", type=int, required=True)
    parser.add_argument("--cert", help="PEM certificate (TLS)")
    parser.add_argument("--key", help="PEM key (TLS)")
    args = parser.parse_args()
    context = None
    if args.cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.cert, args.key)
    server = IdleServer(context).start(args.port)
    print(f"ready {server.port}", flush=True)
    asyncio.run(_control(server, args.control))


if __name__ == "__main__":
    main()
