"""An SMTP submission server for tests that really delivers into Dovecot.

:class:`SmtpServer` runs an aiosmtpd ``Controller`` on a free loopback port.
Each accepted message is handed to Dovecot over LMTP, one recipient per LMTP
transaction, so "sent" mail can be read back from the recipient's INBOX.

- AUTH PLAIN / LOGIN are checked by Dovecot's own auth service (same e-mail and
  password as IMAP), offered without TLS too (``auth_require_tls=False``).
- STARTTLS (port ``port``) and implicit TLS (port ``smtps_port``) use the Dovecot
  instance's self-signed certificate (verify with ``dovecot.ca_file``).
- Recipients are checked with Dovecot at RCPT time, so an unknown recipient
  gets Dovecot's ``550 5.1.1`` there (``smtplib`` raises ``SMTPRecipientsRefused``).
- :meth:`SmtpServer.fail_next` makes the next N transactions fail, for retry tests.
- ``pipelining=True`` adds PIPELINING (RFC 2920) to the EHLO answer, as Postfix and
  Gmail have it (aiosmtpd reads commands one after the other either way); each
  transaction records whether the client's commands came pipelined (``pipelined``).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import smtplib
import threading
import time
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Self

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from tests.servers.dovecot import Dovecot, DovecotError, free_ports

Stage = Literal["mail", "rcpt", "data"]


class _DropLoginDataWarning(logging.Filter):
    """aiosmtpd logs a deprecation warning on every successful AUTH; drop that noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "login_data is deprecated" not in record.getMessage()


logging.getLogger("mail.log").addFilter(_DropLoginDataWarning())


class ReceivedMessage(NamedTuple):
    """An accepted message: unpacks as ``(mail_from, rcpt_tos, raw)``."""

    mail_from: str
    rcpt_tos: list[str]
    raw: bytes


@dataclass
class SmtpTransaction:
    """One transaction that got a final answer (accepted, rejected or injected failure)."""

    mail_from: str | None
    rcpt_tos: list[str]
    raw: bytes | None
    reply: str
    auth_user: str | None
    tls: bool
    delivery_errors: dict[str, str] = field(default_factory=dict)
    at: float = field(default_factory=time.time)
    #: The client's (address, port): transactions over one connection share it.
    peer: Any = None
    #: Whether the commands after MAIL FROM were already waiting when MAIL FROM was read
    #: (the client sent them without waiting for its reply: pipelining).
    pipelined: bool = False

    @property
    def accepted(self) -> bool:
        return self.reply.startswith("250")


@dataclass
class _Failure:
    stage: Stage
    code: int
    message: str

    @property
    def reply(self) -> str:
        return f"{self.code} {self.message}"


class _NullSender(str):
    """``MAIL FROM:<>`` as a truthy empty string.

    aiosmtpd 1.4 answers RCPT with "503 need MAIL command" when ``mail_from`` is
    falsy, which would make bounces/DSNs (null reverse-path) impossible.
    """

    def __bool__(self) -> bool:
        return True


class _Controller(Controller):
    def factory(self) -> SMTP:
        with warnings.catch_warnings():
            # "Requiring AUTH while not requiring TLS": deliberate for a loopback test server.
            warnings.filterwarnings("ignore", "Requiring AUTH while not requiring TLS", UserWarning)
            return super().factory()


class _Handler:
    def __init__(self, owner: SmtpServer) -> None:
        self._owner = owner
        self._doomed: weakref.WeakKeyDictionary[Envelope, _Failure] = weakref.WeakKeyDictionary()
        self.pipelined: weakref.WeakKeyDictionary[Envelope, bool] = weakref.WeakKeyDictionary()

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname  # what aiosmtpd leaves to this hook
        if self._owner.pipelining:
            responses.insert(len(responses) - 1, "250-PIPELINING")
        return responses

    # aiosmtpd offers every ``auth_<MECHANISM>`` method of the handler. The bearer token
    # is checked by Dovecot (its oauth2 passdb), as IMAP logins are.
    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult:
        return await self._owner._oauth(server, args, "XOAUTH2")

    async def auth_OAUTHBEARER(self, server: SMTP, args: list[str]) -> AuthResult:
        return await self._owner._oauth(server, args, "OAUTHBEARER")

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        # Commands sent with MAIL FROM in one write are in the reader's buffer already.
        waiting = getattr(getattr(server, "_reader", None), "_buffer", b"")
        self.pipelined[envelope] = bool(waiting)
        failure = self._owner._take_failure()
        if failure is not None:
            if failure.stage == "mail":
                self._owner._record(server, session, envelope, failure.reply, mail_from=address)
                return failure.reply
            self._doomed[envelope] = failure
        envelope.mail_from = address if address not in ("", "<>") else _NullSender("")
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        failure = self._doomed.get(envelope)
        if failure is not None and failure.stage == "rcpt":
            self._owner._record(server, session, envelope, failure.reply, extra_rcpt=address)
            return failure.reply
        deferral = self._owner._take_deferral(address)
        if deferral is not None:
            return deferral  # this recipient only; the others of the transaction go on
        if self._owner.verify_recipients:
            try:
                code, text = await asyncio.to_thread(self._owner.dovecot.check_recipient, address)
            except OSError as exc:
                return f"451 4.4.1 mailbox server unavailable: {exc}"
            if code >= 300:
                return f"{code} {text}"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        failure = self._doomed.pop(envelope, None)
        if failure is not None:
            self._owner._record(server, session, envelope, failure.reply, raw=raw)
            return failure.reply
        mail_from = str(envelope.mail_from or "")
        errors: dict[str, tuple[int, str]] = {}
        for rcpt in envelope.rcpt_tos:
            error = await asyncio.to_thread(self._deliver, rcpt, raw, mail_from)
            if error is not None:
                errors[rcpt] = error
        if errors and len(errors) == len(envelope.rcpt_tos):
            code, text = next(iter(errors.values()))
            reply = f"{code} {text}"
        else:
            # Partial failures: a real MTA would accept and bounce later.
            reply = "250 2.0.0 OK: delivered"
        self._owner._record(
            server,
            session,
            envelope,
            reply,
            raw=raw,
            delivery_errors={r: f"{c} {t}" for r, (c, t) in errors.items()},
        )
        hook = self._owner.on_accept
        if hook is not None and reply.startswith("250"):
            await asyncio.to_thread(hook)
        return reply

    def _deliver(self, rcpt: str, raw: bytes, mail_from: str) -> tuple[int, str] | None:
        try:
            self._owner.dovecot.deliver(rcpt, raw, mail_from=mail_from)
        except smtplib.SMTPRecipientsRefused as exc:
            code, text = next(iter(exc.recipients.values()))
            return code, _text(text)
        except smtplib.SMTPResponseException as exc:  # SMTPDataError, SMTPSenderRefused
            return exc.smtp_code, _text(exc.smtp_error)
        except (OSError, smtplib.SMTPException) as exc:
            return 451, f"4.4.1 mailbox server unavailable: {exc}"
        return None


def _sasl_user(initial: bytes) -> str:
    """The user an XOAUTH2 (``user=...``) or OAUTHBEARER (``n,a=...,``) message names."""
    text = initial.decode("utf-8", errors="replace")
    for part in text.replace(",", "\x01").split("\x01"):
        if part.startswith(("user=", "a=")):
            return part.partition("=")[2].replace("=2C", ",").replace("=3D", "=")
    return ""


def _transport_is_tls(server: SMTP) -> bool:
    transport = getattr(server, "transport", None)
    return transport is not None and transport.get_extra_info("ssl_object") is not None


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


class SmtpServer:
    """SMTP server delivering into ``dovecot``; not started until :meth:`start`.

    ``port`` speaks plain SMTP with optional STARTTLS; ``smtps_port`` speaks
    implicit TLS (SMTPS).  Both keep their ports across :meth:`stop` / :meth:`start`.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        dovecot: Dovecot,
        *,
        starttls: bool = True,
        require_auth: bool = False,
        verify_recipients: bool = True,
        hostname: str = "localhost",
        data_size_limit: int = 64 * 1024 * 1024,
        pipelining: bool = False,
    ) -> None:
        self.dovecot = dovecot
        #: Whether EHLO answers offer PIPELINING (read at each EHLO; ``reset`` restores it).
        self.pipelining = pipelining
        self._pipelining = pipelining
        self.starttls = starttls
        self.require_auth = require_auth
        self.verify_recipients = verify_recipients
        self.hostname = hostname
        self.data_size_limit = data_size_limit
        self.port, self.smtps_port = free_ports(2)
        self.received: list[ReceivedMessage] = []
        self.transactions: list[SmtpTransaction] = []
        self._lock = threading.Lock()
        self._failures: list[_Failure] = []
        # Recipient -> how many more RCPT TO it gets a 4xx for (partial acceptance).
        self._deferred: dict[str, tuple[int, str]] = {}
        self._controllers: list[Controller] = []
        self._handler = _Handler(self)
        #: Called (on a thread) after a message is taken and before the 250 is sent:
        #: what happens to the client between the server's acceptance and its record.
        self.on_accept: Callable[[], None] | None = None

    # ----- lifecycle -------------------------------------------------------

    @property
    def running(self) -> bool:
        return bool(self._controllers)

    def _controller(self, port: int, implicit_tls: bool) -> Controller:
        tls = self.dovecot.cert.server_context()
        kwargs: dict[str, Any] = {
            "hostname": self.host,
            "port": port,
            "server_hostname": self.hostname,
            "authenticator": self._authenticate,
            "auth_require_tls": False,
            "auth_required": self.require_auth,
            "data_size_limit": self.data_size_limit,
            # Dovecot's LMTP does not offer SMTPUTF8, so we cannot relay UTF-8 addresses.
            "enable_SMTPUTF8": False,
            "ready_timeout": 10.0,
        }
        if implicit_tls:
            kwargs["ssl_context"] = tls
        elif self.starttls:
            kwargs["tls_context"] = tls
        return _Controller(self._handler, **kwargs)

    def start(self) -> None:
        if self.running:
            return
        started: list[Controller] = []
        try:
            for port, implicit in ((self.port, False), (self.smtps_port, True)):
                controller = self._controller(port, implicit)
                controller.start()
                started.append(controller)
        except BaseException:
            for controller in started:
                controller.stop()
            raise
        self._controllers = started

    def stop(self) -> None:
        controllers, self._controllers = self._controllers, []
        for controller in controllers:
            controller.stop()

    def close(self) -> None:
        self.stop()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----- failure injection / inspection ----------------------------------

    def fail_next(
        self,
        count: int = 1,
        code: int = 451,
        message: str = "4.3.0 try later",
        stage: Stage = "data",
    ) -> None:
        """Make the next ``count`` transactions fail with ``code message``.

        ``stage`` picks where: at ``MAIL FROM`` (``"mail"``), at every ``RCPT TO``
        (``"rcpt"``) or after the message data (``"data"``, the default).
        ``fail_next(0)`` cancels pending failures.
        """
        if stage not in ("mail", "rcpt", "data"):
            raise ValueError(f"bad stage {stage!r}")
        if not 200 <= code <= 599:
            raise ValueError(f"bad SMTP code {code}")
        with self._lock:
            self._failures = [_Failure(stage, code, message) for _ in range(count)]

    def defer_recipient(
        self, address: str, times: int = 1, reply: str = "450 4.2.1 mailbox busy, try later"
    ) -> None:
        """Answer ``reply`` (a 4xx) to the next ``times`` RCPT TO of ``address`` alone,
        while other recipients of the same transaction are accepted."""
        with self._lock:
            self._deferred[address.lower()] = (times, reply)

    def _take_deferral(self, address: str) -> str | None:
        with self._lock:
            left, reply = self._deferred.get(address.lower(), (0, ""))
            if left <= 0:
                return None
            self._deferred[address.lower()] = (left - 1, reply)
            return reply

    def reset(self) -> None:
        """Forget received messages and transactions and cancel pending failures."""
        with self._lock:
            self._failures.clear()
            self._deferred.clear()
            self.received.clear()
            self.transactions.clear()
            self.on_accept = None
            self.pipelining = self._pipelining

    @property
    def pending_failures(self) -> int:
        with self._lock:
            return len(self._failures)

    def _take_failure(self) -> _Failure | None:
        with self._lock:
            return self._failures.pop(0) if self._failures else None

    def _record(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        reply: str,
        *,
        mail_from: str | None = None,
        extra_rcpt: str | None = None,
        raw: bytes | None = None,
        delivery_errors: dict[str, str] | None = None,
    ) -> None:
        rcpts = list(envelope.rcpt_tos) + ([extra_rcpt] if extra_rcpt else [])
        sender = mail_from if mail_from is not None else envelope.mail_from
        auth_user = session.auth_data if isinstance(session.auth_data, str) else None
        transaction = SmtpTransaction(
            mail_from=None if sender is None else str(sender),
            rcpt_tos=rcpts,
            raw=raw,
            reply=reply,
            auth_user=auth_user,
            tls=session.ssl is not None or _transport_is_tls(server),
            delivery_errors=delivery_errors or {},
            peer=session.peer,
            pipelined=self._handler.pipelined.get(envelope, False),
        )
        with self._lock:
            self.transactions.append(transaction)
            if transaction.accepted and raw is not None:
                self.received.append(ReceivedMessage(str(sender or ""), rcpts, raw))

    def wait_for(self, count: int, timeout: float = 10.0) -> list[ReceivedMessage]:
        """Wait until at least ``count`` messages were accepted; returns them."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if len(self.received) >= count:
                    return list(self.received)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.received)} of {count} messages after {timeout}s")
            time.sleep(0.01)

    # ----- auth ------------------------------------------------------------

    def _authenticate(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        mechanism: str,
        auth_data: Any,
    ) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login = auth_data.login.decode("utf-8", errors="replace")
        password = auth_data.password.decode("utf-8", errors="replace")
        try:
            ok = self.dovecot.authenticate(login, password, service="smtp")
        except DovecotError:
            return AuthResult(
                success=False, handled=False, message="454 4.7.0 Temporary authentication failure"
            )
        if not ok:
            return AuthResult(success=False, handled=False)
        return AuthResult(success=True, auth_data=login)

    async def _oauth(self, server: SMTP, args: list[str], mechanism: str) -> AuthResult:
        if len(args) > 1:
            try:
                initial = base64.b64decode(args[1], validate=True)
            except ValueError:
                return AuthResult(success=False, handled=False, message="501 5.5.2 bad base64")
        else:
            answer = await server.challenge_auth("")
            if not isinstance(answer, bytes):
                return AuthResult(success=False, handled=True)
            initial = answer
        try:
            ok, challenge = await asyncio.to_thread(
                self.dovecot.sasl_authenticate, mechanism, initial, "smtp"
            )
        except DovecotError:
            return AuthResult(
                success=False, handled=False, message="454 4.7.0 Temporary authentication failure"
            )
        if ok:
            return AuthResult(success=True, auth_data=_sasl_user(initial))
        if challenge is not None:
            # As Gmail does: the error as a 334 challenge; the client ends the exchange.
            await server.challenge_auth(challenge)
        return AuthResult(success=False, handled=False)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<SmtpServer {state} {self.host}:{self.port} smtps={self.smtps_port}>"
