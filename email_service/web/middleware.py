"""The outermost ASGI middleware: request ids, request metrics, access log, ``/metrics``.

It sits in front of Connexion's exception middleware (``MiddlewarePosition.
BEFORE_EXCEPTION``), so every response passes through it - error responses made by
``email_service.web.errors`` included - and ``/metrics`` is answered before routing,
authentication and rate limiting ever see the request.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from email_service import metrics, request_context
from email_service.present import JSON_SEPARATORS
from email_service.request_context import RequestContext
from email_service.web.errors import error_body
from email_service.web.resolver import handler_name

REQUEST_ID_HEADER = "X-Request-ID"
METRICS_PATH = "/metrics"

_REQUEST_ID_KEY = REQUEST_ID_HEADER.lower().encode()
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
# Probes call these every few seconds: their access lines go to DEBUG.
_QUIET_OPERATIONS = frozenset({"healthCheck"})

access_log = logging.getLogger("email_service.access")


def request_id_from(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The client's ``X-Request-ID`` when it is 1-128 of ``[A-Za-z0-9._-]``, else a new one.

    A value outside that alphabet could forge log lines or carry markup into log
    viewers, so it is replaced rather than cleaned up.
    """
    for name, value in headers:
        if name.lower() == _REQUEST_ID_KEY:
            text = value.decode("latin-1")
            if _VALID_REQUEST_ID.fullmatch(text):
                return text
            break
    return uuid.uuid4().hex


def operation_names(spec: Mapping[str, Any]) -> dict[str, str]:
    """Handler name -> operationId for every operation of ``spec``."""
    names: dict[str, str] = {}
    for item in spec.get("paths", {}).values():
        for operation in item.values():
            if not isinstance(operation, dict):
                continue  # path-level "parameters" or "summary"
            operation_id, tags = operation.get("operationId"), operation.get("tags")
            if operation_id and tags:
                names[handler_name(tags[0], operation_id)] = operation_id
    return names


class ObservabilityMiddleware:
    """Tags each request with an id (echoed as ``X-Request-ID``), times and counts it.

    ``spec`` is the contract, for the operationIds that label metrics and log records.
    """

    def __init__(self, app: ASGIApp, spec: Mapping[str, Any]) -> None:
        self.app = app
        self.operation_names = operation_names(spec)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(scope.get("headers", []))
        # Connexion fills this dict in as the request is routed and authenticated.
        extensions = scope.setdefault("extensions", {})
        context = RequestContext(request_id, extensions, self.operation_names)
        status = 500  # what the server ends up sending if the app fails before answering
        started = time.perf_counter()

        async def send_with_request_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [
                    (name, value)
                    for name, value in message.get("headers", [])
                    if name.lower() != _REQUEST_ID_KEY
                ]
                headers.append((_REQUEST_ID_KEY, request_id.encode("ascii")))
                message = {**message, "headers": headers}
            await send(message)

        with request_context.bound(context):
            access_log.debug("started %s %s", scope["method"], _printable_path(scope))
            if scope["path"] == METRICS_PATH:
                await _serve_metrics(scope, send_with_request_id)
                return
            try:
                await self.app(scope, receive, send_with_request_id)
            finally:
                duration = time.perf_counter() - started
                metrics.observe_request(context.operation_id, status, duration)
                _log_access(scope, context, status, duration)


def _printable_path(scope: Scope) -> str:
    # The decoded path may hold control characters (%0A): keep log lines single lines.
    return quote(scope["path"], safe="/:@!$&'()*+,;=-._~")


def _log_access(scope: Scope, context: RequestContext, status: int, duration_s: float) -> None:
    level = logging.DEBUG if context.operation_id in _QUIET_OPERATIONS else logging.INFO
    if not access_log.isEnabledFor(level):
        return
    path, ms = _printable_path(scope), round(duration_s * 1000, 1)
    access_log.log(
        level,
        "%s %s -> %d in %.1f ms",
        scope["method"],
        path,
        status,
        ms,
        extra={"http_method": scope["method"], "path": path, "status": status, "duration_ms": ms},
    )


async def _serve_metrics(scope: Scope, send: Send) -> None:
    """``GET /metrics``: the Prometheus exposition, with no authentication (see README)."""
    if scope["method"] not in {"GET", "HEAD"}:
        message = f"Method {scope['method']} is not allowed here"
        body = json.dumps(error_body(405, message), separators=JSON_SEPARATORS).encode()
        headers = [(b"content-type", b"application/json"), (b"allow", b"GET, HEAD")]
        await _respond(send, 405, headers, body)
        return
    accept = next(
        (value.decode("latin-1") for name, value in scope.get("headers", []) if name == b"accept"),
        None,
    )
    # Multiprocess mode reads one file per process: keep that off the event loop.
    body, content_type = await run_in_threadpool(metrics.exposition, accept)
    headers = [(b"content-type", content_type.encode("latin-1")), (b"cache-control", b"no-store")]
    await _respond(send, 200, headers, b"" if scope["method"] == "HEAD" else body, len(body))


async def _respond(
    send: Send,
    status: int,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    length: int | None = None,
) -> None:
    headers = [*headers, (b"content-length", str(len(body) if length is None else length).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
