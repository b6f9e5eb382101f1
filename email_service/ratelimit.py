"""Per-caller rate limits, read from the contract's ``x-rate-limits`` block.

The policy comes from the loaded spec, so changing the spec changes the limits::

    x-rate-limits:
      byEndpoint:
        - {endpoint: /api/accounts, method: POST, limit: 10, window: 1 minute}
        - {endpoint: /api/sync/*, method: POST, limit: 5, window: 1 minute}
        - {endpoint: ALL_OTHER, limit: 50, window: 1 minute}

Each rule is matched against the spec's path templates (``*`` matches any run of
characters, ``/`` included; no ``method`` means any method), first match wins, and
``ALL_OTHER`` holds every authenticated operation no other rule matched. Operations
without security (``/health``) and everything outside the spec (``/openapi.json``,
``/ui``, ``/metrics``) are not limited.

Counting is per caller (tenant and user of a verified token) and per rule: the
operations under ``ALL_OTHER`` share one allowance. The window is a *fixed window that
starts at the caller's first request*: that request opens a counter that expires one
window later, and at most ``limit`` requests are admitted until then. Compared with a
sliding window this admits a burst of up to twice the limit across a window's edge, in
exchange for one counter per caller and rule and an exact, cheap, atomic check.

Two stores sit behind :class:`RateLimiter`: :class:`RedisRateLimiter` (one Lua script,
so concurrent requests from many processes are counted exactly, on Redis' clock) and
:class:`MemoryRateLimiter` for the embedded default (one process; a lock). If Redis
cannot be reached the request is admitted: a warning is logged and
``email_service_rate_limit_store_errors_total`` counts it (rate limits protect the
service, but an outage of their store should not become an outage of the API).
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from email_service import metrics
from email_service.config import Settings
from email_service.identity import Caller

log = logging.getLogger(__name__)

__all__ = [
    "Decision",
    "MemoryRateLimiter",
    "RateLimitPolicy",
    "RateLimitStoreError",
    "RateLimiter",
    "RateLimits",
    "RedisRateLimiter",
    "Rule",
    "build_rate_limiter",
    "parse_window",
]

ALL_OTHER = "ALL_OTHER"
_HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
_UNITS_MS = {
    "millisecond": 1,
    "ms": 1,
    "second": 1000,
    "sec": 1000,
    "s": 1000,
    "minute": 60_000,
    "min": 60_000,
    "m": 60_000,
    "hour": 3_600_000,
    "h": 3_600_000,
    "day": 86_400_000,
    "d": 86_400_000,
}
_WINDOW = re.compile(r"^\s*(\d+)?\s*([a-z]+)\s*$", re.IGNORECASE)


def parse_window(text: str) -> int:
    """``"1 minute"``, ``"30 seconds"``, ``"2h"``, ``"day"`` → milliseconds.

    Raises ``ValueError`` for anything else (a typo in the spec must stop the start-up,
    not silently change a limit).
    """
    match = _WINDOW.match(str(text))
    unit = match.group(2).lower() if match else ""
    if unit not in _UNITS_MS and unit.endswith("s"):
        unit = unit[:-1]  # plural
    if match is None or unit not in _UNITS_MS:
        raise ValueError(f"x-rate-limits: cannot read the window {text!r}")
    count = int(match.group(1) or 1)
    if count <= 0:
        raise ValueError(f"x-rate-limits: the window {text!r} must be positive")
    return count * _UNITS_MS[unit]


@dataclass(frozen=True)
class Rule:
    """``limit`` requests per ``window_ms``; ``name`` identifies its counters."""

    name: str
    limit: int
    window_ms: int
    window: str = ""  # as the spec words it, for messages


@dataclass(frozen=True)
class Decision:
    """The outcome of one counted request.

    ``reset_ms`` (epoch milliseconds) is when the caller's current window ends and the
    full allowance returns; ``now_ms`` is the store's clock at the decision.
    """

    allowed: bool
    limit: int
    remaining: int
    reset_ms: int
    now_ms: int

    @property
    def retry_after_seconds(self) -> int:
        """Whole seconds until the window ends, at least 1 (for ``Retry-After``)."""
        return max(1, math.ceil((self.reset_ms - self.now_ms) / 1000))


class RateLimitPolicy:
    """Which rule governs each operation of the spec."""

    def __init__(self, by_operation: Mapping[str, Rule]) -> None:
        self._by_operation = dict(by_operation)

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> RateLimitPolicy:
        """Read ``x-rate-limits.byEndpoint`` and assign every secured operation its rule.

        Raises ``ValueError`` when the block is malformed, when a rule matches no
        operation (a typo would otherwise leave an operation at the default), or when
        a secured operation is left without a rule and there is no ``ALL_OTHER``.
        """
        entries = (spec.get("x-rate-limits") or {}).get("byEndpoint") or []
        rules: list[tuple[re.Pattern[str] | None, str | None, Rule]] = []
        for entry in entries:
            endpoint = str(entry.get("endpoint", ""))
            method = entry.get("method")
            limit = entry.get("limit")
            if not endpoint or not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
                raise ValueError(f"x-rate-limits: malformed rule {entry!r}")
            window_ms = parse_window(entry.get("window", ""))
            if endpoint == ALL_OTHER:
                rules.append((None, None, Rule(ALL_OTHER, limit, window_ms, str(entry["window"]))))
                continue
            name = f"{method.upper()} {endpoint}" if method else endpoint
            pattern = re.compile("^" + ".*".join(map(re.escape, endpoint.split("*"))) + "$")
            rule = Rule(name, limit, window_ms, str(entry["window"]))
            rules.append((pattern, method.lower() if method else None, rule))

        global_security = spec.get("security")
        by_operation: dict[str, Rule] = {}
        used: set[str] = set()
        for template, item in (spec.get("paths") or {}).items():
            for method, operation in item.items():
                if method not in _HTTP_METHODS or not isinstance(operation, dict):
                    continue
                if not operation.get("security", global_security):
                    continue  # unauthenticated operations are not counted per caller
                matched = _first_match(rules, template, method)
                if matched is None:
                    raise ValueError(
                        f"x-rate-limits: no rule (and no {ALL_OTHER}) for {method.upper()} "
                        f"{template}"
                    )
                by_operation[operation["operationId"]] = matched
                used.add(matched.name)
        unused = [r.name for _, _, r in rules if r.name not in used and r.name != ALL_OTHER]
        if unused:
            raise ValueError(f"x-rate-limits: rules that match no operation: {unused}")
        return cls(by_operation)

    def rule_for(self, operation_id: str | None) -> Rule | None:
        """The rule of ``operation_id``, or None for an operation that is not limited."""
        if operation_id is None:
            return None
        return self._by_operation.get(operation_id)

    @property
    def rules(self) -> dict[str, Rule]:
        """operationId → rule, for documentation checks."""
        return dict(self._by_operation)


def _first_match(
    rules: list[tuple[re.Pattern[str] | None, str | None, Rule]], template: str, method: str
) -> Rule | None:
    for pattern, rule_method, rule in rules:
        if pattern is None:
            return rule
        if pattern.match(template) and rule_method in (None, method):
            return rule
    return None


class RateLimitStoreError(Exception):
    """The counter store could not be reached or answered nonsense."""


class RateLimiter(Protocol):
    """A store of per-key request counters in fixed windows."""

    def hit(self, key: str, limit: int, window_ms: int) -> Decision:
        """Count one request against ``key`` and say whether it is admitted.

        The first hit of a key opens a window of ``window_ms``; within it the first
        ``limit`` hits are admitted. Atomic: of N concurrent hits on a fresh key exactly
        ``min(N, limit)`` are admitted. Raises :class:`RateLimitStoreError` when the
        store is unavailable.
        """
        ...

    def close(self) -> None: ...


class MemoryRateLimiter:
    """Counters in this process's memory (the embedded default: one server process).

    ``clock`` returns epoch milliseconds; tests pass their own to move time.
    """

    # Windows that ended are dropped once this many counters exist.
    _SWEEP_AT = 10_000

    def __init__(self, clock: Callable[[], int] | None = None) -> None:
        self._clock = clock or (lambda: time.time_ns() // 1_000_000)
        self._lock = threading.Lock()
        self._windows: dict[str, list[int]] = {}  # key → [window end (ms), count]

    def hit(self, key: str, limit: int, window_ms: int) -> Decision:
        with self._lock:
            now = self._clock()
            window = self._windows.get(key)
            if window is None or window[0] <= now:
                if len(self._windows) >= self._SWEEP_AT:
                    self._sweep(now)
                window = self._windows[key] = [now + window_ms, 0]
            window[1] += 1
            count, reset = window[1], window[0]
        return _decision(count, limit, reset, now)

    def _sweep(self, now: int) -> None:
        for key in [k for k, (end, _) in self._windows.items() if end <= now]:
            del self._windows[key]

    def close(self) -> None:
        with self._lock:
            self._windows.clear()


# One round trip, atomic: count, open the window on the first hit, read what is left of
# it and Redis' own clock (so every API process reports the same reset time). Rejected
# hits are counted too; they cannot extend the window, whose expiry is set only once.
_HIT_SCRIPT = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  -- a counter without expiry (written by something else) would block forever
  redis.call('SET', KEYS[1], 1, 'PX', ARGV[1])
  count = 1
  ttl = tonumber(ARGV[1])
end
local now = redis.call('TIME')
return {count, ttl, now[1], now[2]}
"""


class RedisRateLimiter:
    """Counters in Redis, shared by every API process.

    The client is its own, with short timeouts and no retries: a rate-limit check
    must not hold a request for seconds when Redis is slow, and retrying an ``INCR``
    after a timeout could count one request twice.
    """

    def __init__(self, client: Any, *, prefix: str = "ratelimit") -> None:
        self._client = client
        self._prefix = prefix
        self._script = client.register_script(_HIT_SCRIPT)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = "ratelimit",
        timeout: float = 0.5,
        max_connections: int = 50,
    ) -> RedisRateLimiter:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # A bounded pool that makes a burst wait its turn (for at most ``timeout``) rather
        # than fail: redis-py's default pool refuses the 101st concurrent request.
        pool = redis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
        return cls(redis.Redis(connection_pool=pool), prefix=prefix)

    def hit(self, key: str, limit: int, window_ms: int) -> Decision:
        import redis

        try:
            count, ttl, seconds, micros = self._script(
                keys=[f"{self._prefix}:{key}"], args=[window_ms]
            )
        except redis.RedisError as exc:
            raise RateLimitStoreError(f"{type(exc).__name__}: {exc}") from exc
        now = int(seconds) * 1000 + int(micros) // 1000
        return _decision(int(count), limit, now + int(ttl), now)

    def close(self) -> None:
        self._client.close()


def _decision(count: int, limit: int, reset_ms: int, now_ms: int) -> Decision:
    return Decision(
        allowed=count <= limit,
        limit=limit,
        remaining=max(0, limit - count),
        reset_ms=reset_ms,
        now_ms=now_ms,
    )


def build_rate_limiter(settings: Settings) -> RateLimiter:
    """Redis when ``REDIS_URL`` is set, else this process's memory."""
    if settings.redis_url:
        return RedisRateLimiter.from_url(settings.redis_url)
    return MemoryRateLimiter()


def counter_key(rule: Rule, caller: Caller) -> str:
    return f"{caller.tenant_id}:{caller.user_id}:{rule.name}"


class _Throttled:
    """Log the first store failure at once, then at most one warning per interval."""

    def __init__(self, interval_s: float) -> None:
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._last: float | None = None
        self._suppressed = 0

    def warn(self, error: RateLimitStoreError) -> None:
        with self._lock:
            now = time.monotonic()
            if self._last is not None and now - self._last < self._interval_s:
                self._suppressed += 1
                return
            suppressed, self._suppressed, self._last = self._suppressed, 0, now
        log.warning(
            "rate limit store unavailable, admitting requests uncounted (%s; %d more "
            "failures since the last warning)",
            error,
            suppressed,
        )


class RateLimits:
    """The service's rate limits: a policy, and a store to count in.

    A store failure admits the request (see the module docstring); the first failure
    is logged at once, later ones at most once per ``warn_interval_s``, and every one
    is counted in the metrics.
    """

    def __init__(
        self, policy: RateLimitPolicy, limiter: RateLimiter, *, warn_interval_s: float = 60.0
    ) -> None:
        self.policy = policy
        self.limiter = limiter
        self._warnings = _Throttled(warn_interval_s)

    def rule_for(self, operation_id: str | None) -> Rule | None:
        return self.policy.rule_for(operation_id)

    def check(self, rule: Rule, caller: Caller) -> Decision | None:
        """Count one request of ``caller`` under ``rule``.

        Returns the decision, or None when the store is unavailable. Never raises for a
        store failure.
        """
        try:
            return self.limiter.hit(counter_key(rule, caller), rule.limit, rule.window_ms)
        except RateLimitStoreError as error:
            metrics.observe_rate_limit_store_error()
            self._warnings.warn(error)
            return None
