"""``/livez`` and ``/readyz``: the kubelet's questions, answered before any routing.

* ``/livez`` - is this process able to answer at all? Always 200 while the event loop
  runs. It never asks PostgreSQL, Redis or the blob store: restarting a healthy pod
  cures none of their outages, and a Redis outage is one the service is built to
  survive (rate limits fail open, jobs whose enqueue failed are sent again by the
  outbox sweep), so it must not restart every pod at once.
* ``/readyz`` - should this pod receive traffic? 200 when the database answers (every
  operation needs it), 503 otherwise. Redis and the blob store are left out for the
  same reason as above: every pod shares them, so dropping all pods from the Service
  helps no one.

``/health`` (the contract's operation) keeps its meaning: every dependency, the blob
store included. Neither probe needs a token, and both skip the rate limits and the
spec's validation: they sit outside all of it.
"""

from __future__ import annotations

import asyncio
import json
import logging

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from email_service.present import JSON_SEPARATORS
from email_service.runtime import Runtime

log = logging.getLogger(__name__)

LIVE_PATH = "/livez"
READY_PATH = "/readyz"
#: How long the readiness check waits for the database before saying "not ready".
READY_TIMEOUT_S = 2.0


class ProbeMiddleware:
    """Answers ``/livez`` and ``/readyz`` itself; passes everything else on."""

    def __init__(self, app: ASGIApp, runtime: Runtime) -> None:
        self.app = app
        self.runtime = runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path") if scope["type"] == "http" else None
        if path == LIVE_PATH:
            await _answer(send, 200, {"status": "alive"}, scope["method"])
            return
        if path == READY_PATH:
            ready = await self._database_answers()
            status, body = (200, {"status": "ready"}) if ready else (503, {"status": "not ready"})
            await _answer(send, status, body, scope["method"])
            return
        await self.app(scope, receive, send)

    async def _database_answers(self) -> bool:
        try:
            await asyncio.wait_for(run_in_threadpool(self.runtime.db.ping), READY_TIMEOUT_S)
            return True
        except Exception as exc:
            log.warning("readiness: database unavailable: %s", type(exc).__name__)
            return False


async def _answer(send: Send, status: int, body: dict[str, str], method: str) -> None:
    payload = json.dumps(body, separators=JSON_SEPARATORS).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"cache-control", b"no-store"),
        (b"content-length", str(len(payload)).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if method == "HEAD" else payload})
