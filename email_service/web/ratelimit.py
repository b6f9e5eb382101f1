"""The ASGI middlewares that apply ``email_service.ratelimit`` to requests.

:class:`RateLimitMiddleware` counts. It sits right after Connexion's security middleware
(``BEFORE_VALIDATION``), so:

* the caller is the one of a *verified* token - the ``token_info`` our own info
  functions (``email_service.auth``) put in the request context. A forged or expired
  token never reaches this point (401), so it cannot use up a victim's allowance;
  unauthenticated requests are not counted at all, since they are refused anyway;
* a request is counted whether or not its body then passes validation, so a flood of
  malformed requests is limited like any other;
* the route is the operation Connexion matched, not the raw path, so path variants
  cannot move a request into a more generous rule.

:class:`RateLimitHeadersMiddleware` sits outside Connexion's exception middleware
(``BEFORE_EXCEPTION``) and adds ``X-RateLimit-Limit``, ``X-RateLimit-Remaining`` and
``X-RateLimit-Reset`` (epoch milliseconds) to the response of every counted request -
error responses included, which the exception middleware sends past anything inside
it. A refused request raises ``RateLimited``, which ``email_service.web.errors``
answers with 429 and ``Retry-After`` (seconds); it gets the same three headers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from email_service.auth import caller_from_token_info
from email_service.errors import RateLimited
from email_service.ratelimit import Decision, RateLimits

__all__ = ["RateLimitHeadersMiddleware", "RateLimitMiddleware", "rate_limit_headers"]

# Where the counting middleware leaves the headers for the outer one: a dict the outer
# middleware puts into the scope's extensions, shared by every copy of the scope.
_SLOT = "email_service.rate_limit_headers"


def rate_limit_headers(decision: Decision) -> dict[str, str]:
    return {
        "X-RateLimit-Limit": str(decision.limit),
        "X-RateLimit-Remaining": str(decision.remaining),
        "X-RateLimit-Reset": str(decision.reset_ms),
    }


def _routed_name(scope: Scope) -> str | None:
    # Connexion's routing records the resolved handler ("handlers.accounts.list_accounts").
    routing: dict[str, Any] = scope.get("extensions", {}).get("connexion_routing", {})
    return routing.get("operation_id")


def _token_info(scope: Scope) -> dict[str, Any] | None:
    context: dict[str, Any] = scope.get("extensions", {}).get("connexion_context", {})
    info = context.get("token_info")
    return info if isinstance(info, dict) else None


class RateLimitHeadersMiddleware:
    """Adds the counting middleware's headers to whatever response the request gets."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        slot: dict[str, str] = {}
        scope.setdefault("extensions", {})[_SLOT] = slot

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start" and slot:
                extra = [
                    (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in slot.items()
                ]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class RateLimitMiddleware:
    """Counts each authenticated request against its caller's allowance.

    ``operation_names`` maps handler names to the spec's operationIds
    (``email_service.web.middleware.operation_names``).
    """

    def __init__(
        self, app: ASGIApp, *, limits: RateLimits, operation_names: Mapping[str, str]
    ) -> None:
        self.app = app
        self.limits = limits
        self.operation_names = dict(operation_names)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        routed = _routed_name(scope)
        rule = self.limits.rule_for(self.operation_names.get(routed) if routed else None)
        token_info = _token_info(scope)
        if rule is None or token_info is None:
            await self.app(scope, receive, send)
            return
        caller = caller_from_token_info(token_info)
        # Redis is a network round trip: off the event loop, like any blocking call.
        decision = await run_in_threadpool(self.limits.check, rule, caller)
        if decision is None:  # the store failed: admitted, uncounted, no headers
            await self.app(scope, receive, send)
            return
        slot = scope.get("extensions", {}).get(_SLOT)
        if slot is not None:
            slot.update(rate_limit_headers(decision))
        if not decision.allowed:
            raise RateLimited(
                f"At most {rule.limit} requests per {rule.window} are allowed for this "
                f"operation; retry in {decision.retry_after_seconds} s",
                retry_after=decision.retry_after_seconds,
            )
        await self.app(scope, receive, send)
