"""Logging: plain text for people, JSON for machines; secrets are redacted either way."""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

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
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = (
                    value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
                )
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


def configure(settings: Settings) -> None:
    root = logging.getLogger()
    root.setLevel(settings.log_level.upper())
    handler = logging.StreamHandler()
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    root.handlers[:] = [handler]
    # imaplib via IMAPClient logs protocol lines, LOGIN included, at DEBUG.
    logging.getLogger("imapclient").setLevel(logging.WARNING)
