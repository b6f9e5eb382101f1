"""Errors raised by the mail protocol clients (IMAP, POP3, SMTP).

Every error is a :class:`MailError` whose message is written for people (it can be shown to
the account owner) and never contains the account password. ``transient`` tells a caller
whether retrying later can help: a refused connection can, a rejected password cannot.

This module imports nothing from the rest of the service so that every layer can catch
these errors without pulling in protocol code.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any, ClassVar

from .limits import MailLimitExceeded

__all__ = [
    "MailAuthError",
    "MailConnectionError",
    "MailError",
    "MailProtocolError",
    "SmtpPermanentError",
    "SmtpTransientError",
    "describe_network_error",
    "redact",
]


class MailError(Exception):
    """Base class of every mail protocol error.

    ``message`` is human readable and free of secrets; ``str(error)`` returns it.
    """

    #: Whether the same operation may succeed if retried later unchanged.
    transient: ClassVar[bool] = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class MailAuthError(MailError):
    """The server rejected the credentials (or refuses to authenticate this way).

    Permanent: retrying with the same settings fails again; the account owner must act.
    """


class MailConnectionError(MailError):
    """The server could not be reached or the connection broke.

    Covers refused connections, DNS failures, timeouts, TLS failures and dropped
    connections. Transient. ``certificate_error`` is true when the server's TLS
    certificate failed verification (the message then says "certificate verification
    failed"), which a user interface may want to explain differently.
    """

    transient = True

    def __init__(self, message: str, *, certificate_error: bool = False) -> None:
        super().__init__(message)
        self.certificate_error = certificate_error

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only state would be lost by Exception's default pickling (args only),
        # and task queues pickle exceptions.
        return (_rebuild, (type(self), self.message, {"certificate_error": self.certificate_error}))


class MailProtocolError(MailError):
    """The server answered something we did not expect, or refused a command.

    For example a folder that does not exist, a malformed response, or a ``NO``/``BAD``
    reply. Not marked transient: repeating the same command usually gets the same answer.
    """


class SmtpTransientError(MailError):
    """Sending failed in a way that may succeed later (4xx reply or network trouble).

    ``code`` is the SMTP reply code, or ``None`` when no reply was received (connection
    refused, timeout, TLS failure, connection dropped). ``reply`` is the server's reply
    text (or a description of the network failure).
    """

    transient = True

    def __init__(self, code: int | None, reply: str, message: str | None = None) -> None:
        self.code = code
        self.reply = reply
        if message is None:
            prefix = f"{code} " if code is not None else ""
            message = f"the SMTP server could not take the message now: {prefix}{reply}"
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.code, self.reply, self.message))


class SmtpPermanentError(MailError):
    """The SMTP server rejected the message for good (5xx reply).

    ``code``/``reply`` are the deciding reply. ``recipients`` maps each refused
    recipient to its own ``(code, reply)`` when the refusal was per recipient (empty when
    the sender or the message itself was rejected).
    """

    def __init__(
        self,
        code: int,
        reply: str,
        recipients: dict[str, tuple[int, str]] | None = None,
        message: str | None = None,
    ) -> None:
        self.code = code
        self.reply = reply
        self.recipients: dict[str, tuple[int, str]] = dict(recipients or {})
        if message is None:
            message = f"the SMTP server rejected the message: {code} {reply}"
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.code, self.reply, self.recipients, self.message))


def _rebuild(cls: type[MailError], message: str, kwargs: dict[str, Any]) -> MailError:
    return cls(message, **kwargs)


#: Secrets shorter than this are not redacted: a one- or two-character password would
#: otherwise blank out letters all over a message, and such a password is no secret.
MIN_REDACTED_LENGTH = 4


def redact(text: str, secret: str | None) -> str:
    """Return ``text`` with every occurrence of ``secret`` replaced by ``***``.

    Server replies and library exceptions do not normally echo the password, but a
    misbehaving server could; every piece of foreign text put into a message goes through
    this (our own wording never contains the password). Secrets shorter than
    :data:`MIN_REDACTED_LENGTH` are left alone.
    """
    if secret and len(secret) >= MIN_REDACTED_LENGTH and secret in text:
        return text.replace(secret, "***")
    return text


def describe_network_error(exc: BaseException) -> tuple[str, bool]:
    """Describe a socket/TLS level exception for people.

    Returns ``(description, certificate_error)``. Certificate verification failures keep
    the phrase "certificate verification failed" plus OpenSSL's reason (for example
    "self-signed certificate" or "Hostname mismatch") so they are recognisable.
    """
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = exc.verify_message or exc.reason or str(exc)
        return f"TLS certificate verification failed ({reason})", True
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or str(exc)
        if reason == "WRONG_VERSION_NUMBER":
            # The classic symptom of speaking TLS to a plaintext port.
            reason += ": the server did not answer with TLS; check the port and encryption"
        return f"TLS handshake failed ({reason})", False
    if isinstance(exc, MailLimitExceeded):
        return str(exc), False  # already in words: which cap or deadline, while doing what
    if isinstance(exc, TimeoutError):
        return "timed out", False
    if isinstance(exc, socket.gaierror):
        return f"the host name could not be resolved ({exc.strerror or exc})", False
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused", False
    if isinstance(exc, ConnectionResetError | BrokenPipeError | EOFError):
        return "the server closed the connection", False
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[0].lower() + exc.strerror[1:], False
    return str(exc) or type(exc).__name__, False
