"""Flask behind the ASGI stack: one thread hand-off for a response that fits in memory.

Connexion serves its Flask app through a2wsgi, which runs the WSGI call on a thread pool
and sends every part of the response back to the event loop as it is made: the status
and headers, each body chunk, and a final empty chunk, each a blocking round trip
between the handler's thread and the loop (``run_coroutine_threadsafe`` through a
queue and a sender task). Under the P3 load those hand-offs, their wake-ups and futures
were about a fifth of an API process's CPU (README "Performance").

:class:`WSGIBridge` runs the same WSGI call on a pool of the same size, but collects
the status, the headers and the body in the thread and returns them with the call: one
hand-off per request. A body that grows past ``BUFFER_LIMIT`` (an attachment download)
is streamed instead, chunk by chunk as a2wsgi does, so memory stays bounded. The
request side is a2wsgi's (its environ and its body reader, which reads the ASGI body
from the thread), the thread runs in a copy of the request's context (request ids in
log records), and an exception from the app propagates to Connexion's exception
middleware as before. Lifespan and websocket scopes are left to a2wsgi.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from a2wsgi import WSGIMiddleware
from a2wsgi.wsgi import Body, build_environ
from starlette.types import Message, Receive, Scope, Send

__all__ = ["BUFFER_LIMIT", "THREADS", "WSGIBridge", "install"]

#: Handler threads per process (a2wsgi's default; the database pool is sized for it).
THREADS = 10
#: A response body up to this size is sent from the loop in one piece; a larger one streams.
BUFFER_LIMIT = 256 * 1024

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


async def _sent(send: Send, message: Message) -> None:
    await send(message)


class _Exchange:
    """One request's WSGI call, run on a handler thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, send: Send) -> None:
        self.loop = loop
        self.send = send
        self.start: Message | None = None
        self.chunks: list[bytes] = []
        self.size = 0
        self.streaming = False
        self.exc_info: Any = None

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        if exc_info is not None and self.streaming:
            # PEP 3333: the headers are out already, so the error can only be raised.
            raise exc_info[1].with_traceback(exc_info[2])
        self.exc_info = exc_info
        self.start = {
            "type": "http.response.start",
            "status": int(status.split(" ", 1)[0]),
            "headers": [
                (name.strip().encode("latin-1").lower(), value.strip().encode("latin-1"))
                for name, value in headers
            ],
        }
        return self.write

    def write(self, chunk: bytes) -> None:
        if not chunk:
            return
        if self.streaming:
            self._send({"type": "http.response.body", "body": chunk, "more_body": True})
            return
        self.chunks.append(chunk)
        self.size += len(chunk)
        if self.size > BUFFER_LIMIT:
            self._start_streaming()

    def _start_streaming(self) -> None:
        assert self.start is not None, "the app wrote a body before start_response"
        self.streaming = True
        self._send(self.start)
        body, self.chunks = b"".join(self.chunks), []
        self._send({"type": "http.response.body", "body": body, "more_body": True})

    def _send(self, message: Message) -> None:
        asyncio.run_coroutine_threadsafe(_sent(self.send, message), self.loop).result()

    def run(self, app: WSGIApp, environ: dict[str, Any]) -> list[Message]:
        """Call the app; returns the messages left for the loop to send."""
        iterable = app(environ, self.start_response)
        try:
            for chunk in iterable:
                self.write(chunk)
        finally:
            close = getattr(iterable, "close", None)
            if close is not None:
                close()
        if self.exc_info is not None:
            raise self.exc_info[1].with_traceback(self.exc_info[2])
        assert self.start is not None, "the app returned without calling start_response"
        if self.streaming:
            return [{"type": "http.response.body", "body": b"", "more_body": False}]
        return [
            self.start,
            {"type": "http.response.body", "body": b"".join(self.chunks), "more_body": False},
        ]


class WSGIBridge:
    """An ASGI app serving ``wsgi_app`` on a pool of ``threads`` threads."""

    def __init__(self, wsgi_app: WSGIApp, threads: int = THREADS) -> None:
        self.app = wsgi_app
        self.executor = ThreadPoolExecutor(thread_name_prefix="WSGI", max_workers=threads)
        self._other = WSGIMiddleware(wsgi_app, workers=1)  # type: ignore[arg-type]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._other(scope, receive, send)  # type: ignore[arg-type]
            return
        loop = asyncio.get_running_loop()
        environ: dict[str, Any] = build_environ(scope, Body(loop, receive))  # type: ignore[arg-type,assignment]
        exchange = _Exchange(loop, send)
        context = contextvars.copy_context()
        messages = await loop.run_in_executor(
            self.executor, lambda: context.run(exchange.run, self.app, environ)
        )
        for message in messages:
            await send(message)


def install(app: Any, threads: int = THREADS) -> None:
    """Serve the Flask app of Connexion's ``FlaskApp`` ``app`` through a :class:`WSGIBridge`.

    Connexion keeps its ASGI-to-WSGI adapter as ``asgi_app`` of the Flask middleware app
    (connexion 3: ``connexion.apps.flask.FlaskASGIApp``); it is replaced before the app
    serves its first request.
    """
    flask_asgi = app._middleware_app
    if not isinstance(flask_asgi.asgi_app, WSGIMiddleware):
        raise RuntimeError("Connexion's Flask app no longer serves through a2wsgi")
    flask_asgi.asgi_app = WSGIBridge(flask_asgi.app.wsgi_app, threads)
