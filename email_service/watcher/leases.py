"""Which watcher process watches which account: leases with a time to live.

A watcher holds a lease per account it watches and renews all of them every tick; a
lease that is not renewed expires (``WATCHER_LEASE_SECONDS``), so the accounts of a
watcher that died are taken by the others on their next tick. Watchers also announce
themselves (a heartbeat with the same time to live), so that each can compute its fair
share (accounts / live watchers) and give back what is above it when the Deployment
scales up, or take more when it scales down.

Two implementations: Redis (production, shared by every watcher process) and memory
(the embedded default: one process, one watcher).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any, Protocol

# Renew the keys that are still ours; answer 1 (renewed) or 0 (lost) for each.
_RENEW = """
local out = {}
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then
    redis.call('PEXPIRE', key, ARGV[2])
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""
# Delete the keys that are still ours.
_RELEASE = """
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then
    redis.call('DEL', key)
  end
end
return 1
"""


class LeaseStore(Protocol):
    async def heartbeat(self, owner: str, ttl: float) -> int:
        """Announce ``owner`` as alive for ``ttl`` seconds; returns live watchers."""

    async def acquire(self, owner: str, account_ids: Iterable[str], ttl: float) -> list[str]:
        """Take those of ``account_ids`` nobody holds; returns the ones taken."""

    async def renew(self, owner: str, account_ids: Iterable[str], ttl: float) -> list[str]:
        """Extend ``owner``'s leases; returns the ones *lost* (expired or taken)."""

    async def release(self, owner: str, account_ids: Iterable[str]) -> None:
        """Give leases back (only those still held by ``owner``)."""

    async def leave(self, owner: str) -> None:
        """``owner`` stops (its heartbeat is withdrawn)."""

    async def close(self) -> None: ...


class RedisLeases:
    """Leases as Redis keys ``{prefix}:lease:{account}`` = owner, with a PEXPIRE."""

    def __init__(self, client: Any, prefix: str) -> None:
        self._redis = client
        self._prefix = prefix
        self._members = f"{prefix}:members"
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    @classmethod
    def from_url(cls, url: str, prefix: str) -> RedisLeases:
        import redis.asyncio

        return cls(redis.asyncio.Redis.from_url(url, socket_timeout=5), prefix)

    def _key(self, account_id: str) -> str:
        return f"{self._prefix}:lease:{account_id}"

    async def heartbeat(self, owner: str, ttl: float) -> int:
        now = time.time()
        pipe = self._redis.pipeline(transaction=True)
        pipe.zadd(self._members, {owner: now + ttl})
        pipe.zremrangebyscore(self._members, "-inf", now)
        pipe.zcard(self._members)
        results = await pipe.execute()
        return int(results[-1])

    async def acquire(self, owner: str, account_ids: Iterable[str], ttl: float) -> list[str]:
        ids = list(account_ids)
        if not ids:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for account_id in ids:
            pipe.set(self._key(account_id), owner, nx=True, px=int(ttl * 1000))
        results = await pipe.execute()
        return [account_id for account_id, ok in zip(ids, results, strict=True) if ok]

    async def renew(self, owner: str, account_ids: Iterable[str], ttl: float) -> list[str]:
        ids = list(account_ids)
        lost: list[str] = []
        for start in range(0, len(ids), 1000):
            chunk = ids[start : start + 1000]
            kept = await self._renew(
                keys=[self._key(a) for a in chunk], args=[owner, int(ttl * 1000)]
            )
            lost.extend(a for a, ok in zip(chunk, kept, strict=True) if not ok)
        return lost

    async def release(self, owner: str, account_ids: Iterable[str]) -> None:
        ids = list(account_ids)
        for start in range(0, len(ids), 1000):
            chunk = ids[start : start + 1000]
            await self._release(keys=[self._key(a) for a in chunk], args=[owner])

    async def leave(self, owner: str) -> None:
        await self._redis.zrem(self._members, owner)

    async def close(self) -> None:
        await self._redis.aclose()


class MemoryLeases:
    """Leases in this process's memory (the embedded default: one watcher)."""

    def __init__(self) -> None:
        self._leases: dict[str, tuple[str, float]] = {}
        self._members: dict[str, float] = {}
        self._lock = asyncio.Lock()

    async def heartbeat(self, owner: str, ttl: float) -> int:
        now = time.monotonic()
        self._members[owner] = now + ttl
        self._members = {m: until for m, until in self._members.items() if until > now}
        return len(self._members)

    def _holder(self, account_id: str) -> str | None:
        held = self._leases.get(account_id)
        if held is None or held[1] <= time.monotonic():
            return None
        return held[0]

    async def acquire(self, owner: str, account_ids: Iterable[str], ttl: float) -> list[str]:
        taken = []
        for account_id in account_ids:
            if self._holder(account_id) is None:
                self._leases[account_id] = (owner, time.monotonic() + ttl)
                taken.append(account_id)
        return taken

    async def renew(self, owner: str, account_ids: Iterable[str], ttl: float) -> list[str]:
        lost = []
        for account_id in account_ids:
            if self._holder(account_id) == owner:
                self._leases[account_id] = (owner, time.monotonic() + ttl)
            else:
                lost.append(account_id)
        return lost

    async def release(self, owner: str, account_ids: Iterable[str]) -> None:
        for account_id in account_ids:
            if self._holder(account_id) == owner:
                del self._leases[account_id]

    async def leave(self, owner: str) -> None:
        self._members.pop(owner, None)

    async def close(self) -> None:
        return None
