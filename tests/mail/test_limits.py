"""The bounded reader under each protocol client: deadlines and caps in words."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from email_service.mail.endpoint import MailEndpoint
from email_service.mail.errors import MailConnectionError, SmtpTransientError
from email_service.mail.limits import BoundedReader, MailLimitExceeded, MailLimits, ServerTimeout
from email_service.mail.pop3 import Pop3Session
from email_service.mail.smtp import send

FAST = MailLimits(
    connect_timeout=1,
    greeting_timeout=0.5,
    login_timeout=0.5,
    command_timeout=0.5,
    max_line_bytes=1024,
    max_message_bytes=4096,
)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        yield ours, theirs


def test_lines_come_whole_and_a_line_without_end_fails_at_the_cap(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    reader = BoundedReader(ours, FAST)
    theirs.sendall(b"* OK hello\r\n" + b"x" * 5000)
    assert reader.readline() == b"* OK hello\r\n"
    with pytest.raises(MailLimitExceeded, match="line longer than 1 KiB"):
        reader.readline()


def test_a_limit_smaller_than_the_line_returns_a_piece(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    reader = BoundedReader(ours, FAST)
    theirs.sendall(b"abcdef\r\n")
    assert reader.readline(4) == b"abcd"
    assert reader.readline(100) == b"ef\r\n"


def test_a_dripping_server_fails_at_the_deadline_not_per_byte(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    reader = BoundedReader(ours, FAST)
    reader.arm(0.5, "fetching messages")
    stop = threading.Event()

    def drip() -> None:
        while not stop.wait(0.1):
            theirs.sendall(b"x")

    threading.Thread(target=drip, daemon=True).start()
    started = time.monotonic()
    try:
        with pytest.raises(ServerTimeout, match=r"within 0\.5 s while fetching messages"):
            reader.readline()
    finally:
        stop.set()
    assert time.monotonic() - started < 1.5


def test_a_literal_above_the_cap_is_thrown_away_and_reported(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    reader = BoundedReader(ours, FAST)
    size = FAST.max_literal_bytes + 10
    threading.Thread(target=theirs.sendall, args=(b"y" * size + b")\r\n",), daemon=True).start()
    assert reader.read(size) == b""
    assert reader.take_discarded() == size
    assert reader.take_discarded() is None
    assert reader.readline() == b")\r\n"


def test_a_response_above_its_cap_fails(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    limits = MailLimits(max_response_bytes=2048, max_line_bytes=1024)
    reader = BoundedReader(ours, limits)
    theirs.sendall(b"* 1 EXISTS\r\n" * 300)
    with pytest.raises(MailLimitExceeded, match="more than 2 KiB in one response"):
        for _ in range(300):
            reader.readline()


@pytest.fixture
def silent_server() -> Iterator[int]:
    """Accepts connections and never says a word."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield listener.getsockname()[1]
    listener.close()
    for conn in accepted:
        conn.close()


def endpoint(port: int) -> MailEndpoint:
    return MailEndpoint("127.0.0.1", port, "none", "u", "p", limits=FAST)


def test_pop3_silent_greeting_fails_within_its_deadline(silent_server: int) -> None:
    started = time.monotonic()
    with pytest.raises(MailConnectionError, match=r"0\.5 s while waiting for the POP3 greeting"):
        Pop3Session(endpoint(silent_server)).open()
    assert time.monotonic() - started < 2


def test_smtp_silent_greeting_fails_within_its_deadline(silent_server: int) -> None:
    started = time.monotonic()
    with pytest.raises(SmtpTransientError, match=r"0\.5 s while waiting for the SMTP greeting"):
        send(endpoint(silent_server), "a@example.test", ["b@example.test"], b"Subject: x\r\n\r\nx")
    assert time.monotonic() - started < 2
