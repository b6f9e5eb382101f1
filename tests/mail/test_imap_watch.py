"""The watcher's asyncio IMAP client: Dovecot for the real protocol, and our small IDLE
server for what a hostile or broken server does (endless lines, huge literals, BYE in
IDLE, silence)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from email_service.mail.endpoint import MailEndpoint
from email_service.mail.errors import MailAuthError, MailConnectionError, MailProtocolError
from email_service.mail.imap_watch import MAX_LINE, Change, WatchSession
from tests.servers.dovecot import Dovecot, MailUser
from tests.servers.idle_server import IdleServer


@pytest.fixture
def idle_server() -> Iterator[IdleServer]:
    server = IdleServer().start()
    yield server
    server.stop()


def endpoint(server: IdleServer, *, user: str = "u1", password: str = "password") -> MailEndpoint:
    return MailEndpoint("127.0.0.1", server.port, "none", user, password, timeout=1.0)


async def idle_once(session: WatchSession, seconds: float) -> list[Change]:
    changes: list[Change] = []
    await session.idle(seconds, changes.append)
    return changes


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_dovecot_reports_inbox_and_other_folders_on_one_connection(
    dovecot: Dovecot, mail_user: MailUser
) -> None:
    dovecot.append(mail_user, "Archive", b"Subject: a\r\n\r\nx\r\n")
    ep = MailEndpoint(
        "localhost", dovecot.imaps_port, "tls", mail_user.email, mail_user.password,
        ca_file=str(dovecot.ca_file), timeout=5.0,
    )  # fmt: skip

    async def main() -> tuple[list[Change], dict[str, Any], bool]:
        async with WatchSession(ep) as session:
            await session.examine("INBOX")
            notify = await session.notify()
            statuses = await session.list_status()

            def later() -> None:
                time.sleep(0.3)
                dovecot.append(mail_user, "Archive", b"Subject: b\r\n\r\nx\r\n")
                dovecot.append(mail_user, "INBOX", b"Subject: c\r\n\r\nx\r\n")

            threading.Thread(target=later).start()
            changes = await idle_once(session, 3.0)
        return changes, statuses, notify

    changes, statuses, notify = run(main())
    assert notify
    assert statuses["Archive"].messages == 1 and statuses["INBOX"].messages == 0
    # (Dovecot may also report folders it creates on first use, such as Sent.)
    assert {c.folder for c in changes} >= {"Archive", "INBOX"}


def test_a_refused_login_is_an_auth_error_without_the_password(idle_server: IdleServer) -> None:
    async def main() -> None:
        async with WatchSession(endpoint(idle_server, password="wrong-secret")):
            pass

    with pytest.raises(MailAuthError) as caught:
        run(main())
    assert "wrong-secret" not in str(caught.value)


def test_idle_reports_new_mail_and_ends_itself(idle_server: IdleServer) -> None:
    async def main() -> list[Change]:
        async with WatchSession(endpoint(idle_server)) as session:
            await session.examine()
            loop = asyncio.get_running_loop()
            loop.call_later(0.2, lambda: threading.Thread(target=idle_server.push).start())
            loop.call_later(
                0.3,
                lambda: threading.Thread(target=idle_server.push, args=(None, "Archive")).start(),
            )
            changes = await idle_once(session, 1.0)
            # The IDLE ended cleanly: the same connection takes the next one.
            await idle_once(session, 0.1)
            return changes

    changes = run(main())
    assert [c.folder for c in changes] == ["INBOX", "Archive"]
    assert idle_server.counts["idles"] == 2 and idle_server.counts["connections"] == 1


def test_list_status_without_the_extension_asks_each_folder(idle_server: IdleServer) -> None:
    idle_server.behaviour.list_status = False

    async def main() -> dict[str, Any]:
        async with WatchSession(endpoint(idle_server)) as session:
            await session.examine()
            assert not session.has_list_status
            return await session.list_status()

    statuses = run(main())
    assert set(statuses) == {"Archive"}  # the selected INBOX is not asked


@pytest.mark.parametrize(
    ("switch", "value", "error", "words"),
    [
        ("huge_line", MAX_LINE * 16, MailProtocolError, "longer than"),
        ("huge_literal", 10 * 1024 * 1024, MailProtocolError, "literal"),
        ("bye_in_idle", True, MailConnectionError, "closed the session"),
        ("silent_idle", True, MailConnectionError, "did not answer"),
    ],
)
def test_a_misbehaving_server_breaks_the_connection_within_bounds(
    idle_server: IdleServer, switch: str, value: object, error: type[Exception], words: str
) -> None:
    setattr(idle_server.behaviour, switch, value)

    async def main() -> None:
        async with WatchSession(endpoint(idle_server)) as session:
            await session.examine()
            await idle_once(session, 5.0)

    began = time.monotonic()
    with pytest.raises(error) as caught:
        run(main())
    assert words in str(caught.value)
    assert time.monotonic() - began < 4.0  # the endpoint's 1 s deadline, not the IDLE's 5 s


def test_non_ascii_credentials_log_in_with_sasl_plain(
    idle_server: IdleServer, dovecot: Dovecot, mail_user: MailUser
) -> None:
    # Dovecot answers AUTHENTICATE with SASL-IR; our server only after a "+".
    dovecot.add_user(mail_user.email, "pässwörd-ünïcode")
    idle_server.passwords["zoë"] = "mötley-crüe"
    endpoints = [
        MailEndpoint(
            "localhost", dovecot.imaps_port, "tls", mail_user.email, "pässwörd-ünïcode",
            ca_file=str(dovecot.ca_file), timeout=5.0,
        ),
        endpoint(idle_server, user="zoë", password="mötley-crüe"),
    ]  # fmt: skip

    async def main(ep: MailEndpoint) -> str:
        async with WatchSession(ep) as session:
            await session.examine()
            return "IDLE" if "IDLE" in session.capabilities else "?"

    assert [run(main(ep)) for ep in endpoints] == ["IDLE", "IDLE"]
    with pytest.raises(MailAuthError):
        run(main(endpoint(idle_server, user="zoë", password="wrong-ünïcode")))


def test_news_of_the_open_folder_during_a_poll_is_reported_by_the_next_idle(
    idle_server: IdleServer,
) -> None:
    idle_server.behaviour.exists_in_list = True

    async def main() -> list[Change]:
        async with WatchSession(endpoint(idle_server)) as session:
            await session.examine()
            await session.list_status()
            return await idle_once(session, 0.1)

    assert [c.folder for c in run(main())] == ["INBOX"]
