"""The WSGI bridge under Connexion's Flask app (email_service/web/wsgi.py)."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from email_service.web.wsgi import BUFFER_LIMIT, WSGIBridge

tag: contextvars.ContextVar[str] = contextvars.ContextVar("tag", default="unset")


def _scope(method: str = "GET", body: bool = False) -> dict[str, Any]:
    headers = [(b"host", b"test")]
    if body:
        headers.append((b"content-length", b"11"))
    return {
        "type": "http",
        "http_version": "1.1",
        "method": method,
        "path": "/x",
        "root_path": "",
        "query_string": b"a=1",
        "headers": headers,
        "server": ("127.0.0.1", 80),
        "client": ("127.0.0.1", 5000),
        "scheme": "http",
    }


def _serve(app: Any, scope: dict[str, Any], request_body: bytes = b"") -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": request_body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def main() -> None:
        tag.set("request-7")
        await WSGIBridge(app, threads=2)(scope, receive, send)

    asyncio.run(main())
    return sent


def test_a_small_response_is_sent_whole_with_its_status_and_headers() -> None:
    seen: dict[str, Any] = {}

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        seen["query"] = environ["QUERY_STRING"]
        seen["tag"] = tag.get()  # the request's context, in the handler's thread
        seen["body"] = environ["wsgi.input"].read()
        start_response("201 Created", [("Content-Type", "application/json"), ("X-A", "b ")])
        return [b'{"a":', b" 1}"]

    sent = _serve(app, _scope("POST", body=True), b"hello world")
    assert sent == [
        {
            "type": "http.response.start",
            "status": 201,
            "headers": [(b"content-type", b"application/json"), (b"x-a", b"b")],
        },
        {"type": "http.response.body", "body": b'{"a": 1}', "more_body": False},
    ]
    assert seen == {"query": "a=1", "tag": "request-7", "body": b"hello world"}


def test_a_large_body_streams_in_bounded_pieces_and_the_iterable_is_closed() -> None:
    chunk = b"x" * 65536
    count = 4 * BUFFER_LIMIT // len(chunk)
    closed: list[bool] = []

    class Chunks:
        def __iter__(self) -> Iterator[bytes]:
            for _ in range(count):
                yield chunk

        def close(self) -> None:
            closed.append(True)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Chunks:
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return Chunks()

    sent = _serve(app, _scope())
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
    bodies = sent[1:]
    assert b"".join(m["body"] for m in bodies) == chunk * count
    assert all(len(m["body"]) <= BUFFER_LIMIT + len(chunk) for m in bodies)
    assert [m["more_body"] for m in bodies] == [True] * (len(bodies) - 1) + [False]
    assert len(bodies) > 2
    assert closed == [True]


def test_an_error_in_the_app_propagates_and_nothing_is_sent() -> None:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"partial"
        raise LookupError("boom")

    with pytest.raises(LookupError, match="boom"):
        _serve(app, _scope())


def test_start_response_with_exc_info_replaces_the_headers_before_anything_is_sent() -> None:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [("X-First", "1")])
        try:
            raise ValueError("late")
        except ValueError:
            import sys

            start_response("500 Oops", [("X-Second", "2")], sys.exc_info())
        return [b"error"]

    # As with a2wsgi before: the exception passed as exc_info is raised once the call
    # returns (Connexion's exception middleware answers it); nothing went out.
    with pytest.raises(ValueError, match="late"):
        _serve(app, _scope())
