"""A local OAuth2 provider for tests: a token endpoint and an introspection endpoint.

It behaves like the providers that matter here (Google, Microsoft) where it counts:

- ``POST /token`` takes ``grant_type=refresh_token`` with the client's id and secret (form
  fields or HTTP Basic) and answers ``{access_token, token_type, expires_in,
  refresh_token}``. Access tokens are short-lived; refresh tokens rotate: each refresh
  retires the one used and returns a new one. Using a retired refresh token again revokes
  the whole grant (``invalid_grant`` from then on), as real providers do when they suspect
  a stolen token; so does :meth:`revoke`.
- ``POST /introspect`` (RFC 7662) takes ``token=<access token>`` and answers
  ``{"active": true, "username": ...}`` for a live access token, ``{"active": false}``
  otherwise. Dovecot's ``oauth2`` passdb validates logins with it.

Failures can be injected (:meth:`fail_next`), the token endpoint stalled
(:meth:`hold_tokens`), and every token request is recorded
(:attr:`refreshes`), so tests can count how often the service really refreshed.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qs, unquote


@dataclass
class _Grant:
    user: str
    refresh_token: str
    revoked: bool = False
    retired: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Refresh:
    """One request to the token endpoint and how it was answered."""

    refresh_token: str
    status: int
    at: float


class OAuth2TestProvider:
    host = "127.0.0.1"

    def __init__(self, *, access_ttl: float = 3600.0) -> None:
        self.client_id = "test-client-" + secrets.token_hex(4)
        self.client_secret = "test-secret-" + secrets.token_hex(8)
        self.access_ttl = access_ttl
        # Seconds the token endpoint waits before answering (to widen race windows).
        self.token_delay = 0.0
        # Set while token requests are held (``hold_tokens``); ``token_asked`` is set as
        # one arrives, and it waits until ``let_tokens_through``.
        self.token_asked = threading.Event()
        self._tokens_through: threading.Event | None = None
        self.refreshes: list[Refresh] = []
        self.introspections = 0
        self._lock = threading.Lock()
        self._grants: dict[str, _Grant] = {}  # by current refresh token
        self._retired: dict[str, _Grant] = {}  # retired refresh token -> its grant
        self._access: dict[str, tuple[str, float]] = {}  # token -> (user, expires monotonic)
        self._failures: list[int] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # ----- lifecycle -------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def token_url(self) -> str:
        return f"{self.base_url}/token"

    @property
    def introspection_url(self) -> str:
        return f"{self.base_url}/introspect"

    def start(self) -> None:
        if self._server is not None:
            return
        owner = self

        class Handler(_Handler):
            provider = owner

        server = ThreadingHTTPServer((self.host, self.port), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    close = stop

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def provider_settings(self, mechanism: str = "XOAUTH2") -> dict[str, Any]:
        """This provider as an ``OAUTH2_PROVIDERS`` entry."""
        return {
            "tokenUrl": self.token_url,
            "clientId": self.client_id,
            "clientSecret": self.client_secret,
            "mechanism": mechanism,
            "scopes": ["mail"],
            "authorizeUrl": f"{self.base_url}/authorize",
        }

    # ----- grants and tokens ----------------------------------------------

    def grant(self, user: str) -> str:
        """A new grant (consent) for ``user``; returns its refresh token."""
        token = "rt-" + secrets.token_urlsafe(24)
        with self._lock:
            self._grants[token] = _Grant(user, token)
        return token

    def access_token(self, user: str, ttl: float | None = None) -> str:
        """An access token for ``user`` as if issued earlier (valid ``ttl`` seconds)."""
        token = "at-" + secrets.token_urlsafe(24)
        with self._lock:
            self._access[token] = (
                user,
                time.monotonic() + (self.access_ttl if ttl is None else ttl),
            )
        return token

    def expire_access_tokens(self, user: str | None = None) -> None:
        """Make every access token (of ``user``) inactive now."""
        with self._lock:
            for token, (owner, _) in list(self._access.items()):
                if user is None or owner == user:
                    self._access[token] = (owner, 0.0)

    def revoke(self, user: str) -> None:
        """Withdraw ``user``'s consent: refresh and access tokens stop working."""
        with self._lock:
            for grant in list(self._grants.values()) + list(self._retired.values()):
                if grant.user == user:
                    grant.revoked = True
        self.expire_access_tokens(user)

    def current_refresh_token(self, user: str) -> str | None:
        with self._lock:
            for token, grant in self._grants.items():
                if grant.user == user and not grant.revoked:
                    return token
        return None

    def is_revoked(self, user: str) -> bool:
        with self._lock:
            grants = [g for g in list(self._grants.values()) + list(self._retired.values())]
            return any(g.user == user and g.revoked for g in grants)

    def fail_next(self, count: int = 1, status: int = 503) -> None:
        """The next ``count`` token requests answer ``status`` (no token)."""
        with self._lock:
            self._failures = [status] * count

    def hold_tokens(self) -> None:
        """Stall the token endpoint: every request waits (up to 60 s) until released."""
        self.token_asked.clear()
        self._tokens_through = threading.Event()

    def let_tokens_through(self) -> None:
        through, self._tokens_through = self._tokens_through, None
        if through is not None:
            through.set()

    def reset(self) -> None:
        self.let_tokens_through()
        with self._lock:
            self._failures.clear()
            self.refreshes.clear()
            self.introspections = 0
            self.token_delay = 0.0

    # ----- endpoints -------------------------------------------------------

    def _token(
        self, form: dict[str, str], basic: tuple[str, str] | None
    ) -> tuple[int, dict[str, Any]]:
        self.token_asked.set()
        through = self._tokens_through
        if through is not None:
            through.wait(60)
        if self.token_delay:
            time.sleep(self.token_delay)
        refresh_token = form.get("refresh_token", "")
        with self._lock:
            status, body = self._token_locked(form, basic, refresh_token)
            self.refreshes.append(Refresh(refresh_token, status, time.time()))
        return status, body

    def _token_locked(
        self, form: dict[str, str], basic: tuple[str, str] | None, refresh_token: str
    ) -> tuple[int, dict[str, Any]]:
        if self._failures:
            return self._failures.pop(0), {"error": "temporarily_unavailable"}
        client = basic or (form.get("client_id", ""), form.get("client_secret", ""))
        if client != (self.client_id, self.client_secret):
            return 401, {"error": "invalid_client"}
        if form.get("grant_type") != "refresh_token":
            return 400, {"error": "unsupported_grant_type"}
        grant = self._grants.get(refresh_token)
        if grant is None:
            reused = self._retired.get(refresh_token)
            if reused is not None:
                # A retired refresh token came back: treat the grant as stolen.
                reused.revoked = True
            return 400, {"error": "invalid_grant", "error_description": "unknown or retired"}
        if grant.revoked:
            return 400, {"error": "invalid_grant", "error_description": "consent revoked"}
        new_refresh = "rt-" + secrets.token_urlsafe(24)
        del self._grants[refresh_token]
        self._retired[refresh_token] = grant
        grant.refresh_token = new_refresh
        self._grants[new_refresh] = grant
        access = "at-" + secrets.token_urlsafe(24)
        self._access[access] = (grant.user, time.monotonic() + self.access_ttl)
        return 200, {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": int(self.access_ttl),
            "refresh_token": new_refresh,
            "scope": "mail",
        }

    def _introspect(self, form: dict[str, str]) -> dict[str, Any]:
        token = form.get("token", "")
        with self._lock:
            self.introspections += 1
            entry = self._access.get(token)
        if entry is None or entry[1] <= time.monotonic():
            return {"active": False}
        return {"active": True, "username": entry[0]}


class _Handler(BaseHTTPRequestHandler):
    provider: OAuth2TestProvider
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep tokens out of test output

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(min(length, 65536)).decode("ascii", errors="replace")
        form = {k: v[0] for k, v in parse_qs(raw, keep_blank_values=True).items()}
        if self.path == "/token":
            status, body = self.provider._token(form, _basic(self.headers.get("Authorization")))
        elif self.path == "/introspect":
            status, body = 200, self.provider._introspect(form)
        else:
            status, body = 404, {"error": "not_found"}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _basic(header: str | None) -> tuple[str, str] | None:
    if not header or not header.startswith("Basic "):
        return None
    try:
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
    except ValueError:
        return None
    return unquote(user), unquote(password)
