"""Logging: plain text for people, JSON for machines; secrets are redacted either way.

During a request every record also carries ``request_id``, ``operation_id`` and (once
authenticated) ``tenant_id``: :class:`RequestContextFilter` takes them from
``email_service.request_context``.
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import IO, Any

from email_service import request_context
from email_service.config import Settings

# JWTs (three base64url parts) and anything labelled password/secret/token in a message.
_JWT = re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]*")
_LABELLED = re.compile(r"(?i)(password|passwd|secret|token|authorization)(\s*[=:]\s*)(\S+)")

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()) | {
    "message",
    "asctime",
}


def redact(text: str) -> str:
    text = _JWT.sub("[redacted-jwt]", text)
    return _LABELLED.sub(lambda m: f"{m.group(1)}{m.group(2)}[redacted]", text)


class RedactingFilter(logging.Filter):
    """Last line of defence: scrubs secrets that a library might put in a message."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


class RequestContextFilter(logging.Filter):
    """Puts the current request's id, operation and tenant on every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = request_context.current()
        if context is not None:
            record.request_id = context.request_id
            operation_id, tenant_id = context.operation_id, context.tenant_id
            if operation_id is not None:
                record.operation_id = operation_id
            if tenant_id is not None:
                record.tenant_id = tenant_id
        return True


class TextFormatter(logging.Formatter):
    """``time LEVEL logger [request id]: message``; the bracket only within a request."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(request_tag)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        request_id = getattr(record, "request_id", None)
        record.request_tag = f" [{request_id}]" if request_id else ""
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        # Exception messages bypass RedactingFilter, which only sees the log message.
        return redact(super().formatException(ei))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_") and key != "request_tag":
                if not isinstance(value, (int, float, bool, type(None))):
                    # `extra=` values bypass RedactingFilter, which only sees the message.
                    value = redact(str(value))
                entry[key] = value
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


def build_handler(settings: Settings, stream: IO[str] | None = None) -> logging.Handler:
    """The service's log handler (stderr by default): formatter, redaction, request context.

    Filters sit on the handler, not on a logger, so that records propagated from every
    library's logger pass through them.
    """
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    handler.addFilter(RedactingFilter())
    handler.addFilter(RequestContextFilter())
    return handler


def configure(settings: Settings) -> None:
    root = logging.getLogger()
    root.setLevel(settings.log_level.upper())
    root.handlers[:] = [build_handler(settings)]
    # imaplib via IMAPClient logs protocol lines, LOGIN included, at DEBUG.
    logging.getLogger("imapclient").setLevel(logging.WARNING)
