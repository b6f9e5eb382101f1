"""Checking that a webhook delivery comes from the Email Service (Standard Webhooks).

Hand-written; ``scripts/sdk.sh`` copies it into the generated ``email_service_client``
package. Standard library only.

    from email_service_client.webhooks import InvalidWebhook, verify_webhook

    try:
        change = verify_webhook(secret, request.headers, request.get_data())
    except InvalidWebhook:
        return "", 400
    # change["id"] is also the webhook-id header: drop it if you have seen it before.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

__all__ = ["DEFAULT_TOLERANCE_SECONDS", "InvalidWebhook", "verify_webhook"]

#: How far ``webhook-timestamp`` may be from now, either way (the spec's five minutes).
DEFAULT_TOLERANCE_SECONDS = 300


class InvalidWebhook(Exception):
    """The delivery is not signed with the secret, is too old or too new, or is malformed."""


def _key(secret: str) -> bytes:
    encoded = secret[len("whsec_") :] if secret.startswith("whsec_") else secret
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a webhook secret is 'whsec_' followed by base64") from None


def verify_webhook(
    secret: str,
    headers: Mapping[str, str],
    body: bytes | str,
    *,
    tolerance: int = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> Any:
    """Check a delivery's signature and timestamp; return its body parsed from JSON.

    ``headers`` may be any mapping (names are matched without regard to case); ``body``
    must be the raw bytes received, before any parsing. During a secret rotation a
    delivery carries several signatures: one matching ``secret`` is enough.
    Raises :class:`InvalidWebhook`.
    """
    raw = body.encode() if isinstance(body, str) else bytes(body)
    lowered = {str(name).lower(): str(value) for name, value in headers.items()}
    event_id = lowered.get("webhook-id", "")
    stamp = lowered.get("webhook-timestamp", "")
    offered = lowered.get("webhook-signature", "")
    if not event_id or not stamp or not offered:
        raise InvalidWebhook("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        timestamp = int(stamp)
    except ValueError:
        raise InvalidWebhook("webhook-timestamp is not a number") from None
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise InvalidWebhook("webhook-timestamp is too far from now")
    signed = f"{event_id}.{timestamp}.".encode() + raw
    expected = base64.b64encode(hmac.new(_key(secret), signed, hashlib.sha256).digest())
    for candidate in offered.split(" "):
        version, _, signature = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(signature.encode(), expected):
            try:
                return json.loads(raw)
            except ValueError:
                raise InvalidWebhook("the body is not JSON") from None
    raise InvalidWebhook("no signature matches the secret")
