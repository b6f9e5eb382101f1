"""Send one message over SMTP (smtplib) and classify the outcome.

:func:`send` opens a connection (after the outbound connection guard), secures it per the
endpoint (``tls`` = SMTPS, ``starttls`` = STARTTLS, refused if not offered; certificates
always verified), authenticates when a username is set, and runs one MAIL/RCPT/DATA
transaction. Outcomes:

* every recipient accepted, or some refused → :class:`SmtpResult` (refusals listed; the
  caller decides what a partial delivery means);
* 4xx replies, network failures, timeouts → :class:`SmtpTransientError` (retry later);
* 5xx replies → :class:`SmtpPermanentError` with the server's reply (and the refused
  recipients when every recipient was refused with 5xx);
* rejected credentials → :class:`MailAuthError`.

The password is never logged: smtplib's debug output stays off and every message built
from server text is redacted.
"""

from __future__ import annotations

import logging
import re
import smtplib
from base64 import b64encode
from collections.abc import Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass, field

from .endpoint import MailEndpoint, PinnedSMTP, PinnedSMTP_SSL, resolve_target, tls_context
from .errors import (
    MailAuthError,
    MailError,
    SmtpPermanentError,
    SmtpTransientError,
    describe_network_error,
    redact,
)
from .limits import BoundedReader, MailLimitExceeded
from .pool import ConnectionPool, pool_key
from .sasl import (
    TokenRefused,
    describe_challenge,
    error_reply,
    initial_response,
    login_with_refresh,
)

__all__ = ["SmtpResult", "Submission", "close_connection", "send"]

log = logging.getLogger(__name__)

#: An open, authenticated submission connection (what the pool keeps).
Submission = smtplib.SMTP

_BARE_LINE_END_RE = re.compile(rb"\r\n|\r|\n")


@dataclass(frozen=True)
class SmtpResult:
    """A message the server accepted for at least one recipient.

    ``accepted``: recipients the server took; ``refused``: recipient → ``(code, reply)``
    for the ones it refused at RCPT; ``reply``: the server's final reply to DATA (usually
    carries the queue id).
    """

    accepted: tuple[str, ...]
    refused: dict[str, tuple[int, str]] = field(default_factory=dict)
    reply: str = ""


def send(
    endpoint: MailEndpoint,
    envelope_from: str,
    recipients: Sequence[str],
    raw: bytes,
    *,
    local_hostname: str | None = None,
    pool: ConnectionPool[Submission] | None = None,
    owner: str = "",
) -> SmtpResult:
    """Send ``raw`` (a complete RFC 5322 message) from ``envelope_from`` to ``recipients``.

    ``envelope_from`` may be ``""`` (null reverse-path). Bare LF/CR line ends in ``raw``
    are converted to CRLF (SMTP requires it; bare LFs are also the stuff of SMTP
    smuggling). ``local_hostname`` is the EHLO name (default: smtplib's FQDN lookup).

    With ``pool``, the connection is taken from it (filed under ``owner``, the account,
    and the endpoint's settings: see :mod:`email_service.mail.pool`) and given back after
    a transaction that ended with the server's 250. A pooled connection is checked with
    RSET first; one that turns out dead before the server accepted any recipient (RSET,
    MAIL FROM or the first RCPT fails on the wire, or the server says 421) is closed and
    the message goes over a fresh connection instead. Nothing can have been delivered at
    that point: a transaction without accepted recipients and data delivers nothing.
    A failure after that is reported like any other (never retried here).

    Raises :class:`SmtpTransientError`, :class:`SmtpPermanentError`,
    :class:`MailAuthError`, ``ValueError`` (no recipients), or the connection guard's own
    exception. A timeout after the message data was sent is reported as transient although
    the server may have accepted it: a retry can then deliver a duplicate.
    """
    if isinstance(recipients, str):
        raise ValueError("recipients must be a sequence of addresses, not one string")
    recipients = list(dict.fromkeys(recipients))
    if not recipients:
        raise ValueError("at least one recipient is required")
    key = pool_key(owner, endpoint, "smtp") if pool is not None else None
    if pool is not None and key is not None:
        pooled = pool.take(key)
        if pooled is not None:
            result = _send_pooled(pooled, endpoint, envelope_from, recipients, raw)
            if result is not None:
                pool.give(key, pooled)
                return result
    # Resolved once and checked by the guard (its refusal is not wrapped); the socket
    # goes to exactly the checked addresses.
    target = resolve_target(endpoint.host, endpoint.port)
    smtp: smtplib.SMTP | None = None
    stage = "connecting"
    try:
        context = tls_context(endpoint.ca_file) if endpoint.encryption != "none" else None
        # The target's name is smtplib's TLS server_hostname (SNI and certificate check),
        # for SMTPS and STARTTLS alike.
        if endpoint.encryption == "tls":
            smtp = PinnedSMTP_SSL(
                target, endpoint.limits, local_hostname=local_hostname, context=context
            )
        else:
            smtp = PinnedSMTP(target, endpoint.limits, local_hostname=local_hostname)
        smtp.ehlo_or_helo_if_needed()
        if endpoint.encryption == "starttls":
            stage = "starting TLS"
            if not smtp.has_extn("starttls"):
                # Plaintext would expose the password and the message; a missing STARTTLS
                # may also be a downgrade by someone in the path.
                raise SmtpTransientError(
                    None,
                    "STARTTLS not offered",
                    f"the SMTP server at {endpoint.address} does not offer STARTTLS; "
                    "refusing to continue without TLS",
                )
            smtp.starttls(context=context)
            smtp.ehlo()
        if endpoint.username:
            stage = "authenticating"
            _authenticate(smtp, endpoint)
        stage = "sending"
        result = _transaction(smtp, endpoint, envelope_from, recipients, raw, _Progress())
        assert result is not None  # only a pooled connection's RSET can come back refused
        if pool is not None and key is not None:
            pool.give(key, smtp)
            smtp = None
        return result
    except MailError:
        raise
    except Exception as exc:
        mapped = _mapped(exc, endpoint, stage)
        if mapped is None:
            raise
        raise mapped from exc
    finally:
        if smtp is not None:
            _close(smtp)


@dataclass
class _Progress:
    """How far a transaction got: whether a pooled connection may still be given up."""

    recipient_accepted: bool = False
    data_sent: bool = False


def _send_pooled(
    smtp: smtplib.SMTP,
    endpoint: MailEndpoint,
    envelope_from: str,
    recipients: list[str],
    raw: bytes,
) -> SmtpResult | None:
    """One transaction over a pooled connection; ``None`` when it proved dead in time.

    Closes the connection unless the transaction ended with the server's 250.
    """
    progress = _Progress()
    try:
        if not _pipelines(smtp):
            code, _reply = smtp.rset()
            if code != 250:
                _close(smtp)
                return None
        # With PIPELINING the RSET is the first command of the transaction's one write.
        return _transaction(smtp, endpoint, envelope_from, recipients, raw, progress, reset=True)
    except SmtpTransientError as exc:
        _close(smtp)
        if exc.code == 421 and not (progress.recipient_accepted or progress.data_sent):
            return None  # the server is closing this connection (an idle timeout)
        raise
    except MailError:
        _close(smtp)
        raise
    except Exception as exc:
        _close(smtp)
        on_the_wire = isinstance(exc, smtplib.SMTPServerDisconnected) or (
            isinstance(exc, OSError | EOFError) and not isinstance(exc, smtplib.SMTPException)
        )
        if on_the_wire and not (progress.recipient_accepted or progress.data_sent):
            log.info("a pooled SMTP connection to %s was dead; opening one", endpoint.address)
            return None
        mapped = _mapped(exc, endpoint, "sending")
        if mapped is None:
            raise
        raise mapped from exc


def _mapped(exc: BaseException, endpoint: MailEndpoint, stage: str) -> MailError | None:
    """The :class:`MailError` for an smtplib/socket failure while ``stage``, else ``None``."""
    if isinstance(exc, smtplib.SMTPResponseException):
        return _reply_error(exc.smtp_code, _text(exc.smtp_error), endpoint, stage)
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        if isinstance(exc.__context__, MailLimitExceeded):
            # smtplib turns our deadline or cap into "connection unexpectedly closed".
            reason = str(exc.__context__)
            return SmtpTransientError(
                None,
                reason,
                f"the SMTP connection to {endpoint.address} failed while {stage}: {reason}",
            )
        return SmtpTransientError(
            None,
            redact(str(exc) or "connection closed", endpoint.password),
            f"the SMTP server at {endpoint.address} closed the connection while {stage}",
        )
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        text = redact(str(exc), endpoint.password)
        return SmtpPermanentError(554, text, message=f"SMTP {stage} failed: {text}")
    if isinstance(exc, OSError | EOFError):
        description, _cert_error = describe_network_error(exc)
        description = redact(description, endpoint.password)
        if stage == "connecting":
            message = f"cannot connect to the SMTP server at {endpoint.address}: {description}"
        else:
            message = (
                f"the SMTP connection to {endpoint.address} failed while {stage}: {description}"
            )
        return SmtpTransientError(None, description, message)
    return None


def _authenticate(smtp: smtplib.SMTP, endpoint: MailEndpoint) -> None:
    if not smtp.has_extn("auth"):
        hint = (
            "; it probably requires TLS first: use encryption 'starttls' or 'tls'"
            if endpoint.encryption == "none"
            else ""
        )
        raise MailAuthError(
            f"the SMTP server at {endpoint.address} does not offer authentication "
            f"on this connection{hint}"
        )
    mechanisms = smtp.esmtp_features.get("auth", "").upper().split()
    if endpoint.sasl is not None:
        if endpoint.sasl not in mechanisms:
            raise MailAuthError(
                f"the SMTP server at {endpoint.address} does not offer {endpoint.sasl} "
                "(OAuth2) logins"
            )
        login_with_refresh(endpoint, lambda token: _authenticate_oauth(smtp, endpoint, token))
        return
    try:
        if endpoint.username.isascii() and endpoint.password.isascii():
            smtp.login(endpoint.username, endpoint.password)
        elif "PLAIN" in mechanisms:
            # smtplib encodes AUTH data as ASCII; send SASL PLAIN in UTF-8 ourselves.
            token = b64encode(f"\0{endpoint.username}\0{endpoint.password}".encode()).decode()
            code, reply = smtp.docmd("AUTH", "PLAIN " + token)
            if code not in (235, 503):
                raise smtplib.SMTPAuthenticationError(code, reply)
        else:
            raise MailAuthError(
                "the SMTP server offers no authentication method that can carry a "
                "non-ASCII username or password"
            )
    except smtplib.SMTPAuthenticationError as exc:
        code, text = exc.smtp_code, redact(_text(exc.smtp_error), endpoint.password)
        if code == 538 or "encryption" in text.lower():
            raise MailAuthError(
                f"the SMTP server requires TLS before authenticating ({code} {text}); "
                "use encryption 'starttls' or 'tls'"
            ) from None
        if 400 <= code < 500:
            raise SmtpTransientError(
                code, text, f"the SMTP server cannot authenticate now: {code} {text}"
            ) from None
        raise MailAuthError(
            f"the SMTP server rejected the username or password ({code} {text})"
        ) from None
    except smtplib.SMTPNotSupportedError as exc:  # pragma: no cover - checked above
        raise MailAuthError(f"the SMTP server does not support authentication ({exc})") from None
    except smtplib.SMTPResponseException:
        raise
    except smtplib.SMTPException as exc:  # "No suitable authentication method found."
        offered = " ".join(mechanisms) or "none"
        raise MailAuthError(
            f"the SMTP server offers no supported authentication method (offered: {offered})"
        ) from exc


def _authenticate_oauth(smtp: smtplib.SMTP, endpoint: MailEndpoint, token: str) -> None:
    mechanism = endpoint.sasl
    assert mechanism is not None
    first = initial_response(mechanism, endpoint.username, token).decode()
    refusal: list[str] = []

    def respond(challenge: bytes | None = None) -> str:
        # smtplib sends the first answer as the initial response (RFC 4954); a 334
        # challenge after it is the server's error for a refused token.
        if challenge is None:
            return first
        refusal.append(describe_challenge(challenge))
        return error_reply(mechanism).decode()

    try:
        smtp.auth(mechanism, respond)
    except smtplib.SMTPAuthenticationError as exc:
        code, text = exc.smtp_code, redact(_text(exc.smtp_error), token)
        if 400 <= code < 500:
            raise SmtpTransientError(
                code, text, f"the SMTP server cannot authenticate now: {code} {text}"
            ) from None
        detail = "; ".join(refusal)
        raise TokenRefused(
            f"the SMTP server refused the OAuth2 access token ({code} {text}"
            + (f"; {detail}" if detail else "")
            + ")"
        ) from None


def _pipelines(smtp: smtplib.SMTP) -> bool:
    """Whether the server said PIPELINING (RFC 2920) in its answer to our EHLO."""
    return bool(smtp.does_esmtp) and smtp.has_extn("pipelining")


def _transaction(
    smtp: smtplib.SMTP,
    endpoint: MailEndpoint,
    envelope_from: str,
    recipients: list[str],
    raw: bytes,
    progress: _Progress,
    *,
    reset: bool = False,
) -> SmtpResult | None:
    """MAIL, RCPT for each recipient, DATA; pipelined when the server offers it.

    ``reset``: a pooled connection whose RSET, sent first in the same write, still has to
    be answered (only when pipelining; ``None`` is returned when it is not, with the
    connection closed: see :func:`_send_pooled`).
    """
    password = endpoint.password
    data = raw
    if raw.count(b"\n") != raw.count(b"\r\n") or raw.count(b"\r") != raw.count(b"\r\n"):
        data = _BARE_LINE_END_RE.sub(b"\r\n", raw)

    options: list[str] = []
    if smtp.has_extn("size"):
        # Lets the server refuse an oversized message before we upload it.
        options.append(f"SIZE={len(data)}")
    if smtp.has_extn("8bitmime") and any(b > 0x7F for b in data):
        options.append("BODY=8BITMIME")
    if not all(a.isascii() for a in (envelope_from, *recipients)):
        if not smtp.has_extn("smtputf8"):
            raise SmtpPermanentError(
                553,
                "5.6.7 SMTPUTF8 not offered (reply generated by this client)",
                message="the SMTP server does not accept internationalised (non-ASCII) "
                "addresses (no SMTPUTF8)",
            )
        options.append("SMTPUTF8")

    if _pipelines(smtp):
        return _pipelined(
            smtp, endpoint, envelope_from, recipients, data, options, progress, reset=reset
        )

    code, reply = smtp.mail(envelope_from, options)
    if code != 250:
        _reset(smtp)
        raise _reply_error(code, redact(_text(reply), password), endpoint, "MAIL FROM")

    accepted: list[str] = []
    refused: dict[str, tuple[int, str]] = {}
    for recipient in recipients:
        code, reply = smtp.rcpt(recipient)
        if code in (250, 251):
            accepted.append(recipient)
            progress.recipient_accepted = True
        else:
            refused[recipient] = (code, redact(_text(reply), password))
    if not accepted:
        _reset(smtp)
        raise _all_refused(refused)

    progress.data_sent = True
    code, reply = smtp.data(data)  # raises SMTPDataError unless DATA got 354
    text = redact(_text(reply), password)
    if code != 250:
        raise _reply_error(code, text, endpoint, "DATA", dict.fromkeys(accepted, (code, text)))
    return SmtpResult(accepted=tuple(accepted), refused=refused, reply=f"{code} {text}")


def _pipelined(
    smtp: smtplib.SMTP,
    endpoint: MailEndpoint,
    envelope_from: str,
    recipients: list[str],
    data: bytes,
    options: list[str],
    progress: _Progress,
    *,
    reset: bool,
) -> SmtpResult | None:
    """The transaction with PIPELINING (RFC 2920): [RSET,] MAIL, the RCPTs and DATA in
    one write, their replies read in order, then the message and its final reply.

    Every reply is checked as in the one-at-a-time exchange, with the same outcomes. When
    DATA was answered 354 but the message is not to be sent (MAIL refused, or every
    recipient), the connection is closed without the final dot, so the server delivers
    nothing (RFC 2920 also allows ending such a transaction with a lone dot; closing
    leaves no doubt).
    """
    password = endpoint.password
    commands = ["RSET"] if reset else []
    extra = " " + " ".join(options) if options else ""
    commands.append(f"MAIL FROM:{smtplib.quoteaddr(envelope_from)}{extra}")
    commands.extend(f"RCPT TO:{smtplib.quoteaddr(recipient)}" for recipient in recipients)
    commands.append("DATA")
    for command in commands:
        if "\r" in command or "\n" in command:  # as smtplib's own putcmd refuses them
            raise ValueError("command and arguments contain prohibited newline characters")
    # What smtplib's mail() and rset() would leave: UTF-8 commands only with SMTPUTF8.
    smtp.command_encoding = "utf-8" if "SMTPUTF8" in options else "ascii"
    smtp.send("".join(f"{command}\r\n" for command in commands))
    replies = _replies(smtp, len(commands))
    if reset:
        code, _reply = next(replies)
        if code != 250:
            smtp.close()  # the rest may have been taken: no QUIT into a DATA phase
            return None
    mail_code, mail_reply = next(replies)
    accepted: list[str] = []
    refused: dict[str, tuple[int, str]] = {}
    for recipient in recipients:
        code, reply = next(replies)
        if mail_code == 250 and code in (250, 251):
            accepted.append(recipient)
            progress.recipient_accepted = True
        else:
            refused[recipient] = (code, redact(_text(reply), password))
    data_code, data_reply = next(replies)
    if mail_code != 250 or not accepted:
        if data_code == 354:
            smtp.close()
        else:
            _reset(smtp)
    if mail_code != 250:
        raise _reply_error(mail_code, redact(_text(mail_reply), password), endpoint, "MAIL FROM")
    if not accepted:
        raise _all_refused(refused)
    if data_code != 354:
        raise smtplib.SMTPDataError(data_code, data_reply)  # as smtplib's data() would
    progress.data_sent = True
    message = re.sub(rb"(?m)^\.", b"..", data)
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    smtp.send(message + b".\r\n")
    code, reply = smtp.getreply()
    text = redact(_text(reply), password)
    if code != 250:
        raise _reply_error(code, text, endpoint, "DATA", dict.fromkeys(accepted, (code, text)))
    return SmtpResult(accepted=tuple(accepted), refused=refused, reply=f"{code} {text}")


def _replies(smtp: smtplib.SMTP, count: int) -> Iterator[tuple[int, bytes]]:
    """The next ``count`` replies; each has the whole command timeout and response cap
    from the moment the one before it came (they are answers to one write)."""
    for index in range(count):
        if index:
            reader = smtp.file
            limits = getattr(smtp, "_limits", None)
            if isinstance(reader, BoundedReader) and limits is not None:
                reader.arm(limits.command_timeout, "waiting for the SMTP server's reply")
        yield smtp.getreply()


def _all_refused(refused: dict[str, tuple[int, str]]) -> MailError:
    """The error for a transaction whose every recipient the server refused."""
    first_code, first_reply = next(iter(refused.values()))
    summary = "; ".join(f"{r}: {c} {t}" for r, (c, t) in refused.items())
    if all(c >= 500 for c, _ in refused.values()):
        return SmtpPermanentError(
            first_code,
            first_reply,
            refused,
            message=f"the SMTP server refused every recipient: {summary}",
        )
    # At least one refusal was temporary (4xx): the whole message can be retried.
    transient_code, transient_reply = next((c, t) for c, t in refused.values() if c < 500)
    return SmtpTransientError(
        transient_code,
        transient_reply,
        f"the SMTP server refused every recipient, some temporarily: {summary}",
    )


def _reply_error(
    code: int,
    reply: str,
    endpoint: MailEndpoint,
    stage: str,
    recipients: dict[str, tuple[int, str]] | None = None,
) -> MailError:
    """Classify an SMTP reply code: 4xx (and unknown) transient, 5xx permanent."""
    reply = redact(reply, endpoint.password)
    if 500 <= code < 600:
        return SmtpPermanentError(
            code,
            reply,
            recipients,
            message=f"the SMTP server rejected the message ({stage}): {code} {reply}",
        )
    return SmtpTransientError(
        code, reply, f"the SMTP server could not take the message now ({stage}): {code} {reply}"
    )


def _reset(smtp: smtplib.SMTP) -> None:
    with suppress(Exception):  # the connection is closed right after anyway
        smtp.rset()


def close_connection(smtp: Submission) -> None:
    """Say QUIT and close (a pooled connection no longer wanted); never raises."""
    _close(smtp)


def _close(smtp: smtplib.SMTP) -> None:
    # Once DATA got its 250 the message is the server's; a failing QUIT must not turn a
    # delivered message into an error (a retry would send it twice).
    with suppress(Exception):
        smtp.quit()
    with suppress(Exception):
        smtp.close()


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
