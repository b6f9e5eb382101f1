"""Standard Webhooks signatures (standardwebhooks.com).

A secret is ``whsec_`` followed by the base64 of its key bytes. A delivery carries
``webhook-id`` (the change id, the same on every attempt), ``webhook-timestamp`` (Unix
seconds, fresh on every attempt) and ``webhook-signature``: space-separated
``v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>``, one per secret that signs
(two while a rotated secret is still honoured). Receivers accept a delivery when any
signature matches and the timestamp is within their tolerance (five minutes).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Iterable, Mapping

__all__ = [
    "SECRET_PREFIX",
    "InvalidSignature",
    "new_secret",
    "secret_key",
    "sign",
    "signature_headers",
    "verify",
]

SECRET_PREFIX = "whsec_"  # noqa: S105 - the format's prefix, not a secret
SECRET_BYTES = 32
TOLERANCE_SECONDS = 300


class InvalidSignature(Exception):
    """A delivery's headers do not prove it came from the holder of the secret."""


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_key(secret: str) -> bytes:
    """The key bytes of ``whsec_<base64>`` (the prefix is optional, as the spec allows)."""
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("a webhook secret is 'whsec_' followed by base64") from exc


def sign(key: bytes, event_id: str, timestamp: int, body: bytes) -> str:
    """One ``v1,<base64>`` signature of ``body`` for ``event_id`` at ``timestamp``."""
    signed = b"%s.%d.%s" % (event_id.encode(), timestamp, body)
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_headers(
    keys: Iterable[bytes], event_id: str, body: bytes, timestamp: int | None = None
) -> dict[str, str]:
    """The three Standard Webhooks headers, signed with every key of ``keys``."""
    moment = int(time.time()) if timestamp is None else timestamp
    signatures = " ".join(sign(key, event_id, moment, body) for key in keys)
    return {
        "webhook-id": event_id,
        "webhook-timestamp": str(moment),
        "webhook-signature": signatures,
    }


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance: int = TOLERANCE_SECONDS,
    now: float | None = None,
) -> None:
    """Check a delivery as a receiver would; raises :class:`InvalidSignature` if it fails.

    ``headers`` is looked up case-insensitively.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    event_id = lowered.get("webhook-id")
    stamp = lowered.get("webhook-timestamp")
    offered = lowered.get("webhook-signature")
    if not event_id or not stamp or not offered:
        raise InvalidSignature("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        timestamp = int(stamp)
    except ValueError:
        raise InvalidSignature("webhook-timestamp is not a number") from None
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise InvalidSignature("webhook-timestamp is outside the tolerance")
    expected = sign(secret_key(secret), event_id, timestamp, body)
    for candidate in offered.split(" "):
        if hmac.compare_digest(candidate.encode(), expected.encode()):
            return
    raise InvalidSignature("no signature matches")
