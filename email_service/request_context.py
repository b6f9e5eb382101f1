"""What the service knows about the HTTP request being served, for log records.

``email_service.web.middleware`` binds a :class:`RequestContext` when a request arrives;
the logging filter of ``email_service.logging_setup`` reads :func:`current` for every
record. A context variable carries it into the Flask handler's worker thread
(``email_service.web.wsgi`` and starlette copy the context into the threads they run code in).

The operation and the tenant become known only after Connexion has routed and
authenticated the request, deeper in the middleware stack than the binding happens.
Connexion records both in the ASGI scope's ``extensions`` dict, which is shared down the
stack, so the context keeps a reference to that dict and reads them when asked.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

# Where Connexion 3 puts the routing result and the security result (token_info) in
# scope["extensions"] (connexion.middleware.abstract.ROUTING_CONTEXT and
# connexion.lifecycle's request context). tests/api/test_observability.py notices a change.
_ROUTING = "connexion_routing"
_CONNEXION_CONTEXT = "connexion_context"


@dataclass
class RequestContext:
    """``extensions`` is the request's ``scope["extensions"]``; ``operation_names`` maps
    the handler names Connexion routes to (``handlers.system.health_check``) back to the
    spec's operationIds (``healthCheck``)."""

    request_id: str
    extensions: dict[str, Any] = field(default_factory=dict)
    operation_names: Mapping[str, str] = field(default_factory=dict)

    @property
    def operation_id(self) -> str | None:
        """The spec's operationId, once the request has been routed to one."""
        routed = self.extensions.get(_ROUTING, {}).get("operation_id")
        if not isinstance(routed, str):
            return None
        return self.operation_names.get(routed, routed)

    @property
    def tenant_id(self) -> str | None:
        """The caller's tenant, once authentication has accepted the request."""
        token_info = self.extensions.get(_CONNEXION_CONTEXT, {}).get("token_info")
        if isinstance(token_info, dict):
            value = token_info.get("tenantId")
            return value if isinstance(value, str) else None
        return None


_current: ContextVar[RequestContext | None] = ContextVar("request_context", default=None)


def current() -> RequestContext | None:
    """The context of the request being served, or None outside a request."""
    return _current.get()


@contextmanager
def bound(context: RequestContext) -> Iterator[RequestContext]:
    """Make ``context`` the current one for the duration of the block."""
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)
