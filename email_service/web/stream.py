"""``streamChanges`` served on the ASGI side, as Server-Sent Events.

Flask handlers run on a pool of ten threads per process (``email_service.web.wsgi``):
a stream held by a handler would keep one of them for its whole life, and ten open
streams would stop every other request of the process. So the stream is answered by this middleware,
placed just before Connexion's context middleware (``BEFORE_CONTEXT``): the request has
been routed, authenticated, counted by the rate limits and validated by then, exactly
like any operation's, and the stream itself is a coroutine that holds no thread while
it waits. Database reads run briefly on the thread pool.

Each event is ``id:`` (the change's cursor), ``event:`` (its type) and ``data:`` (the
``Change`` as JSON). The stream starts after ``Last-Event-ID`` (a reconnecting
EventSource sends it) or ``since``, else at the current head; a comment line
(``: keep-alive``) goes out every ``CHANGES_KEEPALIVE_SECONDS``, so proxies do not take
the response for dead; after ``CHANGES_STREAM_MAX_SECONDS`` the stream ends and the
client reconnects where it stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any
from urllib.parse import parse_qs

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from email_service import metrics
from email_service.auth import caller_from_token_info
from email_service.present import JSON_SEPARATORS
from email_service.runtime import Runtime
from email_service.services import changes

#: The handler name Connexion routes ``streamChanges`` to.
STREAM_OPERATION = "handlers.changes.stream_changes"
_READ_LIMIT = 500


def _routed_name(scope: Scope) -> str | None:
    routing: dict[str, Any] = scope.get("extensions", {}).get("connexion_routing", {})
    return routing.get("operation_id")


def _token_info(scope: Scope) -> dict[str, Any] | None:
    context: dict[str, Any] = scope.get("extensions", {}).get("connexion_context", {})
    info = context.get("token_info")
    return info if isinstance(info, dict) else None


def _resume_from(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name.lower() == b"last-event-id" and value.strip():
            return value.decode("latin-1").strip()
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    since = query.get("since")
    return since[-1] if since else None


def format_event(event_id: str, event_type: str, body: dict[str, Any]) -> bytes:
    # JSON never holds a raw newline, so the data fits on one "data:" line.
    data = json.dumps(body, separators=JSON_SEPARATORS)
    return f"id: {event_id}\nevent: {event_type}\ndata: {data}\n\n".encode()


class ChangeStreamMiddleware:
    """Serves ``streamChanges``; every other request passes through untouched."""

    def __init__(self, app: ASGIApp, *, runtime: Runtime) -> None:
        self.app = app
        self.runtime = runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _routed_name(scope) != STREAM_OPERATION:
            await self.app(scope, receive, send)
            return
        token_info = _token_info(scope)
        if token_info is None:  # the security middleware lets nobody through without one
            await self.app(scope, receive, send)
            return
        caller = caller_from_token_info(token_info)
        runtime = self.runtime
        # Raises before anything is sent (bad or expired cursor): an ErrorResponse.
        cursor = await run_in_threadpool(
            changes.stream_cursor, runtime, caller, _resume_from(scope)
        )
        waker = runtime.change_waker()
        waiter = waker.subscribe(caller.tenant_id, caller.user_id)
        metrics.change_streams(1)
        gone = asyncio.Event()
        watcher = asyncio.create_task(_watch_disconnect(receive, gone))
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"text/event-stream; charset=utf-8"),
                        (b"cache-control", b"no-cache"),
                        (b"x-accel-buffering", b"no"),
                    ],
                }
            )
            await self._serve(send, caller, cursor, waiter, gone)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            metrics.change_streams(-1)
            waker.unsubscribe(waiter)
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _serve(
        self, send: Send, caller: Any, cursor: changes.Cursor, waiter: Any, gone: asyncio.Event
    ) -> None:
        settings = self.runtime.settings
        ends_at = time.monotonic() + settings.changes_stream_max_seconds
        # Tells EventSource clients how soon to reconnect when the stream ends.
        await send({"type": "http.response.body", "body": b"retry: 1000\n\n", "more_body": True})
        while not gone.is_set():
            waiter.event.clear()  # before reading, so a commit during the read wakes us
            events, cursor = await run_in_threadpool(
                changes.read_for_stream, self.runtime, caller, cursor, _READ_LIMIT
            )
            if events:
                chunk = b"".join(format_event(*event) for event in events)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                if len(events) >= _READ_LIMIT:
                    continue  # more waiting: read on before sleeping
            remaining = ends_at - time.monotonic()
            if remaining <= 0:
                return
            woken = await _first_of(
                waiter.event, gone, min(settings.changes_keepalive_seconds, remaining)
            )
            if not woken and not gone.is_set() and time.monotonic() < ends_at:
                await send(
                    {"type": "http.response.body", "body": b": keep-alive\n\n", "more_body": True}
                )


async def _first_of(event: asyncio.Event, gone: asyncio.Event, timeout: float) -> bool:
    """Wait until ``event`` or ``gone`` is set, or ``timeout``; True unless timed out."""
    waits = {asyncio.ensure_future(event.wait()), asyncio.ensure_future(gone.wait())}
    done, pending = await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    return bool(done)


async def _watch_disconnect(receive: Receive, gone: asyncio.Event) -> None:
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            gone.set()
            return
