"""``/openapi.json`` and ``/openapi.yaml`` built once per process, not once per request.

Connexion's Swagger UI middleware answers these on the event loop by deep-copying the
whole specification, setting its base path and serialising it, on every request: 0.3 to
0.45 s of CPU each (2026-12-03), during which the process answers nothing else. Both
paths need no token and have no rate limit (README "Rate limits and guard rails"), so a
client could stall a server by asking for them in a loop. The specification does not
change while a process runs: the first 200 answer for each path and mount point (the
server's ``root_path``, which the operator sets, not the client) is kept and replayed,
byte for byte.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: The documents Connexion serves; the Swagger UI's own pages are small and left alone.
SPEC_PATHS = frozenset({"/openapi.json", "/openapi.yaml"})
#: Mount points are the operator's; a bound all the same, so the cache cannot grow.
MAX_ENTRIES = 8


class SpecCacheMiddleware:
    """Replays the first successful answer for each spec document and mount point."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._answers: dict[tuple[str, str], list[Message]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or scope["path"] not in SPEC_PATHS:
            await self.app(scope, receive, send)
            return
        key = (scope["path"], str(scope.get("root_path", "")))
        kept = self._answers.get(key)
        if kept is not None:
            for message in kept:
                await send(_copy(message))
            return
        messages: list[Message] = []

        async def keep(message: Message) -> None:
            # A copy: the middlewares outside add headers to the message they are given.
            messages.append(_copy(message))
            await send(message)

        await self.app(scope, receive, keep)
        if (
            len(self._answers) < MAX_ENTRIES
            and messages
            and messages[0].get("type") == "http.response.start"
            and messages[0].get("status") == 200
        ):
            self._answers[key] = messages


def _copy(message: Message) -> Message:
    copied = dict(message)
    if "headers" in copied:
        copied["headers"] = list(copied["headers"])
    return copied
