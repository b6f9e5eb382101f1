"""Token authentication for both security schemes of the spec.

The spec names ``bearer_info`` and ``header_info`` as the schemes' info functions.
Both judge the *whole* request, not just their own credential: Connexion accepts a
request as soon as one scheme passes, so an invalid bearer token beside a valid
``X-Auth-Token`` would otherwise be let through (connexion issue #1767). Here any
credential that is present must be valid, and all of them must name the same caller.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import jwt
from connexion.exceptions import OAuthProblem

from email_service.config import Settings
from email_service.identity import Caller
from email_service.runtime import get_runtime

ALGORITHM = "HS256"
LEEWAY_SECONDS = 5
#: The default of ``JWT_MAX_TTL_SECONDS``: no token may live longer than a day.
DEFAULT_MAX_TTL_SECONDS = 86_400


class AuthError(Exception):
    """A credential is missing, malformed, expired or does not match."""


class _HasHeaders(Protocol):
    @property
    def headers(self) -> Mapping[str, str]: ...


@dataclass(frozen=True)
class TokenPolicy:
    """What a token must satisfy beyond its signature (``JWT_*`` settings)."""

    max_ttl_seconds: int = DEFAULT_MAX_TTL_SECONDS
    issuer: str | None = None
    audience: str | None = None


def issue_token(
    secret: str,
    tenant_id: uuid.UUID,
    user_id: uuid.UUID,
    ttl: int = 3600,
    *,
    policy: TokenPolicy | None = None,
) -> str:
    """A signed token for ``tenant_id``/``user_id`` valid for ``ttl`` seconds.

    With a ``policy``, ``ttl`` must be within its maximum (``ValueError`` otherwise) and
    the token carries its issuer and audience.
    """
    if ttl <= 0:
        raise ValueError("the token lifetime must be positive")
    if policy is not None and ttl > policy.max_ttl_seconds:
        raise ValueError(
            f"the token lifetime {ttl} s exceeds JWT_MAX_TTL_SECONDS ({policy.max_ttl_seconds} s)"
        )
    now = int(time.time())
    claims: dict[str, Any] = {
        "tenantId": str(tenant_id),
        "userId": str(user_id),
        "sub": str(user_id),
        "iat": now,
        "exp": now + ttl,
    }
    if policy is not None and policy.issuer:
        claims["iss"] = policy.issuer
    if policy is not None and policy.audience:
        claims["aud"] = policy.audience
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


class VerifiedTokens:
    """Tokens that passed ``decode_token``, so that each is verified once, not per request.

    Keyed by a digest of the token, the secret and the policy (a rotated secret or a
    changed policy never finds an entry made under the old one). An entry is used only
    before the token's ``exp`` - the full check then runs again and refuses it - and
    only a token that passed every check is ever stored. Bounded: the oldest entries
    make room.
    """

    def __init__(self, max_entries: int = 10_000) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[bytes, tuple[Caller, float]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _key(token: str, secret: str, policy: TokenPolicy) -> bytes:
        digest = hashlib.sha256()
        for part in (token, secret, repr(policy)):
            digest.update(part.encode())
            digest.update(b"\x00")
        return digest.digest()

    def decode(self, token: str, secret: str, policy: TokenPolicy | None = None) -> Caller:
        """``decode_token``, answered from the verified tokens while they are unexpired."""
        policy = policy or TokenPolicy()
        key = self._key(token, secret, policy)
        with self._lock:
            entry = self._entries.get(key)
        if entry is not None:
            caller, expires = entry
            if time.time() < expires:
                return caller
            with self._lock:
                self._entries.pop(key, None)
        caller, expires = _decode(token, secret, policy)
        with self._lock:
            self._entries[key] = (caller, expires)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return caller

    def __len__(self) -> int:
        return len(self._entries)


#: The process' verified tokens (``authenticate`` goes through them).
verified_tokens = VerifiedTokens()


def decode_token(token: str, secret: str, policy: TokenPolicy | None = None) -> Caller:
    """Verify ``token`` and return its caller. Raises ``AuthError`` with the reason.

    Beyond the signature: ``exp`` and ``iat`` must be numbers (NumericDate), the
    lifetime (``exp - iat``, and what is left of it now) may not exceed the policy's
    maximum - a token minted to last for years is refused even while "valid" - and
    ``iss``/``aud`` must match when the policy names them.
    """
    return _decode(token, secret, policy or TokenPolicy())[0]


def _decode(token: str, secret: str, policy: TokenPolicy) -> tuple[Caller, float]:
    """The caller of a verified ``token`` and its ``exp``."""
    if not token:
        raise AuthError("empty token")
    required = ["exp", "iat", "tenantId", "userId"]
    if policy.issuer:
        required.append("iss")
    if policy.audience:
        required.append("aud")
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            options={"require": required},
            leeway=LEEWAY_SECONDS,
            issuer=policy.issuer,
            audience=policy.audience,
        )
    except jwt.ExpiredSignatureError as exc:
        raise AuthError("token expired") from exc
    except jwt.MissingRequiredClaimError as exc:
        raise AuthError(f"token lacks the '{exc.claim}' claim") from exc
    except jwt.InvalidIssuerError as exc:
        raise AuthError("token is from another issuer") from exc
    except jwt.InvalidAudienceError as exc:
        raise AuthError("token is meant for another audience") from exc
    except jwt.ImmatureSignatureError as exc:
        raise AuthError("token is issued in the future") from exc
    except jwt.InvalidTokenError as exc:
        raise AuthError("token is malformed or its signature is invalid") from exc
    exp, iat = claims["exp"], claims["iat"]
    for name, value in (("exp", exp), ("iat", iat)):
        # PyJWT reads "exp": "9999999999" as a number; the JWT spec says NumericDate.
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise AuthError(f"the '{name}' claim must be a number")
    if exp - iat > policy.max_ttl_seconds or exp - time.time() > (
        policy.max_ttl_seconds + LEEWAY_SECONDS
    ):
        raise AuthError("token lifetime exceeds the allowed maximum")
    try:
        return Caller(_uuid_claim(claims, "tenantId"), _uuid_claim(claims, "userId")), exp
    except ValueError as exc:
        raise AuthError(str(exc)) from exc


def _uuid_claim(claims: Mapping[str, Any], name: str) -> uuid.UUID:
    value = claims.get(name)
    if not isinstance(value, str):
        raise ValueError(f"the '{name}' claim must be a UUID string")
    try:
        return uuid.UUID(value)
    except ValueError as exc:
        raise ValueError(f"the '{name}' claim must be a UUID string") from exc


def authenticate(
    headers: Mapping[str, str], secret: str, policy: TokenPolicy | None = None
) -> Caller:
    """The caller named by every credential in ``headers``. Raises ``AuthError``."""
    callers: list[Caller] = []
    authorization = headers.get("authorization")
    if authorization is not None:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer":
            raise AuthError("the Authorization header must use the Bearer scheme")
        callers.append(verified_tokens.decode(token.strip(), secret, policy))
    header_token = headers.get("x-auth-token")
    if header_token is not None:
        caller = verified_tokens.decode(header_token.strip(), secret, policy)
        tenant, user = headers.get("x-tenant-id"), headers.get("x-user-id")
        if tenant is None or user is None:
            raise AuthError("X-Auth-Token needs X-Tenant-ID and X-User-ID headers")
        if not _same_uuid(tenant, caller.tenant_id) or not _same_uuid(user, caller.user_id):
            raise AuthError("X-Tenant-ID or X-User-ID does not match the token")
        callers.append(caller)
    if not callers:
        raise AuthError("no credentials")
    if any(other != callers[0] for other in callers[1:]):
        raise AuthError("the credentials name different callers")
    return callers[0]


def _same_uuid(text: str, expected: uuid.UUID) -> bool:
    try:
        return uuid.UUID(text.strip()) == expected
    except ValueError:
        return False


def _token_info(request: _HasHeaders) -> dict[str, str]:
    settings = get_runtime().settings
    secret = settings.jwt_secret
    assert secret is not None  # load_settings always fills it
    try:
        caller = authenticate(request.headers, secret.get_secret_value(), token_policy(settings))
    except AuthError as exc:
        raise OAuthProblem(detail=f"Invalid credentials: {exc}") from None
    return {
        "sub": str(caller.user_id),
        "tenantId": str(caller.tenant_id),
        "userId": str(caller.user_id),
    }


def token_policy(settings: Settings) -> TokenPolicy:
    return TokenPolicy(
        max_ttl_seconds=settings.jwt_max_ttl_seconds,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
    )


def bearer_info(token: str, request: _HasHeaders) -> dict[str, str]:
    """Connexion info function of ``BearerAuth``."""
    return _token_info(request)


def header_info(api_key: str, request: _HasHeaders, required_scopes: Any = None) -> dict[str, str]:
    """Connexion info function of ``HeaderAuth``."""
    return _token_info(request)


def caller_from_token_info(token_info: Mapping[str, str]) -> Caller:
    return Caller(uuid.UUID(token_info["tenantId"]), uuid.UUID(token_info["userId"]))
