"""The request body cap: a larger body answers 413 before the service reads it whole.

Two checks, because a client need not announce the size: a ``Content-Length`` above the
cap is refused before a byte of the body is read, and a chunked body (no length) is read
as it streams in and refused as soon as it passes the cap. Either way the refusal is
``PayloadTooLarge``, which ``email_service.web.errors`` answers with an
``ErrorResponse`` (code ``PAYLOAD_TOO_LARGE``).

A chunked body within the cap is handed on with the ``Content-Length`` it turned out to
have: Connexion's body validation treats a request without one as having no body at all
("RequestBody is required"), so without this a chunked JSON request could not succeed.

It sits after authentication and the rate limits (``BEFORE_VALIDATION``): buffering a
chunked body is done only for a caller who may make the request at all.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from email_service.errors import InvalidRequest, PayloadTooLarge

__all__ = ["BodyLimitMiddleware"]


def _too_large(max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The request body is larger than the {max_bytes} bytes accepted")


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                raise InvalidRequest("The Content-Length header is not a number") from None
            if length > self.max_bytes:
                raise _too_large(self.max_bytes)
            await self.app(scope, self._capped(receive), send)
            return
        if b"chunked" not in headers.get(b"transfer-encoding", b"").lower():
            await self.app(scope, receive, send)  # no body
            return
        body = bytearray()
        last: Message = {"type": "http.request", "body": b"", "more_body": False}
        while True:
            message = await receive()
            if message["type"] != "http.request":
                last = message  # the client went away; let the app see that
                break
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                raise _too_large(self.max_bytes)
            if not message.get("more_body", False):
                break
        sized = [(k, v) for k, v in scope["headers"] if k.lower() != b"transfer-encoding"]
        sized.append((b"content-length", str(len(body)).encode()))
        replay: list[Message] = [{"type": "http.request", "body": bytes(body), "more_body": False}]
        if last["type"] != "http.request":
            replay.append(last)

        async def buffered_receive() -> Message:
            return replay.pop(0) if replay else await receive()

        await self.app({**scope, "headers": sized}, buffered_receive, send)

    def _capped(self, receive: Receive) -> Receive:
        # The server holds a body to its Content-Length; counting costs nothing and does
        # not rely on that.
        received = 0
        max_bytes = self.max_bytes

        async def capped_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    raise _too_large(max_bytes)
            return message

        return capped_receive
