"""Manners toward mail servers: jittered exponential backoff and connection rate caps.

A watcher that restarts must not open thousands of connections at once (to one
provider, or at all), and one that loses a server must not hammer it with reconnects.
"""

from __future__ import annotations

import asyncio
import random
import time


class Backoff:
    """Delays between reconnects: doubling from ``base`` up to ``cap``, with jitter.

    Each delay is drawn from the upper half of the current step ("equal jitter"), so
    that many accounts that lost one server at the same moment spread out, yet none
    retries at once. ``reset()`` after a connection has proved healthy.
    """

    def __init__(self, base: float, cap: float, rng: random.Random | None = None) -> None:
        self.base = base
        self.cap = cap
        self.failures = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        step = min(self.cap, self.base * (2 ** min(self.failures, 30)))
        self.failures += 1
        return step / 2 + self._rng.uniform(0, step / 2)

    def reset(self) -> None:
        self.failures = 0


class TokenBucket:
    """At most ``rate`` takes a second on average, bursts up to ``burst``."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.burst = max(1.0, burst if burst is not None else rate)
        self._tokens = self.burst
        self._at = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now

    def wait_time(self) -> float:
        """Seconds until a token is available (0 when one is)."""
        self._refill()
        return 0.0 if self._tokens >= 1 else (1 - self._tokens) / self.rate

    def take(self) -> None:
        self._refill()
        self._tokens -= 1


class ConnectGate:
    """Caps new connections per second for the whole process and per server host.

    ``await gate.admit(host)`` returns when a connection to ``host`` may be opened;
    callers queue in arrival order per event loop (a lock), so a restart with many
    accounts opens them at the capped pace instead of all at once.
    """

    def __init__(self, per_process: float, per_host: float) -> None:
        self._process = TokenBucket(per_process)
        self._per_host_rate = per_host
        self._hosts: dict[str, TokenBucket] = {}
        self._lock = asyncio.Lock()

    async def admit(self, host: str) -> None:
        key = host.lower()
        async with self._lock:
            bucket = self._hosts.get(key)
            if bucket is None:
                bucket = self._hosts[key] = TokenBucket(self._per_host_rate)
            while True:
                wait = max(self._process.wait_time(), bucket.wait_time())
                if wait <= 0:
                    break
                await asyncio.sleep(wait)
            self._process.take()
            bucket.take()
            if len(self._hosts) > 10_000:
                # Forget idle hosts' buckets (they are full again by now anyway).
                self._hosts = {k: v for k, v in self._hosts.items() if v.wait_time() > 0}
