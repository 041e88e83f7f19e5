"""Fixed-window rate limits: shared by every replica through Redis, else by the host's workers.

Without Redis the counts live in a small memory-mapped table in the data folder, so the workers
of one `modelyard serve --workers N` count together (counted per worker, a limit of 20 was 20 per
worker: an attacker spread over the workers got N times the attempts).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import math
import mmap
import os
import struct
import time
from pathlib import Path

from redis.asyncio import Redis
from redis.exceptions import RedisError

from modelyard.errors import RateLimited

log = logging.getLogger(__name__)

FILE_NAME = "ratelimits"
# Past this many tracked keys, expired windows are swept (bounds memory under a spray of IPs).
_SWEEP_AT = 10_000
# Most permits `take` reserves from Redis at once.
MAX_BLOCK = 100


def _redis_key(key: str, window: int) -> str:
    """Where Redis counts `key`'s hits in window number `window` (shared by every replica)."""
    return f"modelyard:ratelimit:{key}:{window}"


class SharedWindows:
    """Counts per key and window in a file every worker of the host maps.

    An open-addressing table of (key hash, end of window, count) slots: a key is looked for in
    `probes` slots from its hash; a slot whose window has ended is free. When every slot there
    holds a live window of other keys (a spray of addresses), `add` answers None and the caller
    counts in its own process instead: a limit is never lifted by a full table.
    """

    _SLOT = struct.Struct("<Qqq")

    def __init__(self, folder: Path, *, slots: int = 8192, probes: int = 16) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.slots = slots
        self.probes = probes
        size = self._SLOT.size * slots
        self._fd = os.open(folder / FILE_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        if os.fstat(self._fd).st_size < size:
            os.ftruncate(self._fd, size)
        self._map = mmap.mmap(self._fd, size)

    def add(self, key: str, window_end: int, now: float) -> int | None:
        """Count one hit on `key` in the window ending at `window_end`; return the count."""
        digest = self._digest(key)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            free = None
            for offset in self._offsets(digest):
                slot_key, end, count = self._SLOT.unpack_from(self._map, offset)
                if slot_key == digest:
                    count = count + 1 if end == window_end else 1
                    self._SLOT.pack_into(self._map, offset, digest, window_end, count)
                    return int(count)
                if free is None and end <= now:
                    free = offset
            if free is None:
                return None
            self._SLOT.pack_into(self._map, free, digest, window_end, 1)
            return 1
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def count(self, key: str, window_end: int) -> int | None:
        """Return the hits on `key` in the window ending at `window_end` (None: not tracked)."""
        digest = self._digest(key)
        fcntl.flock(self._fd, fcntl.LOCK_SH)
        try:
            for offset in self._offsets(digest):
                slot_key, end, count = self._SLOT.unpack_from(self._map, offset)
                if slot_key == digest:
                    return int(count) if end == window_end else 0
            return None
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)

    def _offsets(self, digest: int) -> list[int]:
        start = digest % self.slots
        return [((start + i) % self.slots) * self._SLOT.size for i in range(self.probes)]

    @staticmethod
    def _digest(key: str) -> int:
        # 64 bits: two keys are only ever counted together if they collide on all of them.
        value = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
        return value or 1  # 0 marks an empty slot


class RateLimiter:
    """Count hits per key in fixed windows: through Redis, else the host's shared table, else
    (no data folder, or the table is full) this process's own counts."""

    def __init__(self, redis: Redis | None = None, shared: SharedWindows | None = None) -> None:
        self._redis = redis
        self._shared = shared
        self._windows: dict[str, tuple[int, int]] = {}
        # key -> (window, permits reserved from Redis and not spent yet), for `take`
        self._blocks: dict[str, tuple[int, int]] = {}

    async def hit(self, key: str, *, limit: int, window_seconds: int) -> None:
        """Count one hit on `key`.

        Raises:
            RateLimited: past `limit` hits in the current window, with the seconds until it ends.
        """
        if limit <= 0:
            return
        if await self.add(key, window_seconds=window_seconds) > limit:
            raise self._limited(window_seconds)

    async def take(self, key: str, *, limit: int, window_seconds: int) -> None:
        """Count one hit on `key` like `hit`, for limits on the hot path.

        With Redis, permits are reserved in blocks (`INCRBY`) of up to 1% of the limit and
        spent from memory: a busy caller costs one round trip per block, not per request, and
        the replicas together never grant more than `limit` in a window. A block a worker does
        not spend is lost for the window, so the limit is at most a few percent stricter.

        Raises:
            RateLimited: past `limit` hits in the current window.
        """
        if limit <= 0:
            return
        if self._redis is None:
            await self.hit(key, limit=limit, window_seconds=window_seconds)
            return
        window = int(time.time() // window_seconds)
        held = self._blocks.get(key)
        if held is not None and held[0] == window and held[1] > 0:
            self._blocks[key] = (window, held[1] - 1)
            return
        block = max(1, min(MAX_BLOCK, limit // 100))
        redis_key = _redis_key(key, window)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.incrby(redis_key, block)
                pipe.expire(redis_key, window_seconds + 1)
                total, _ = await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("rate_limit_redis_unavailable", extra={"error": type(exc).__name__})
            if self._count_on_host(key, window_seconds) > limit:
                raise self._limited(window_seconds) from exc
            return
        granted = min(block, limit - (int(total) - block))
        if granted <= 0:
            raise self._limited(window_seconds)
        if len(self._blocks) > _SWEEP_AT:
            self._blocks = {k: v for k, v in self._blocks.items() if v[0] == window}
        self._blocks[key] = (window, granted - 1)

    async def check(self, key: str, *, limit: int, window_seconds: int) -> None:
        """Refuse if `key` already has `limit` hits in the current window; count nothing.

        For limits on failures: check before the attempt, `add` when it fails.

        Raises:
            RateLimited: `limit` hits or more in the current window.
        """
        if limit <= 0:
            return
        if await self._read(key, window_seconds) >= limit:
            raise self._limited(window_seconds)

    async def add(self, key: str, *, window_seconds: int) -> int:
        """Count one hit on `key` and return the hits in the current window."""
        if self._redis is not None:
            window = int(time.time() // window_seconds)
            redis_key = _redis_key(key, window)
            try:
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.incr(redis_key)
                    pipe.expire(redis_key, window_seconds + 1)
                    count, _ = await pipe.execute()
                return int(count)
            except (RedisError, OSError) as exc:
                # A Redis blip must not lock everyone out: fall back to this host's count.
                log.warning("rate_limit_redis_unavailable", extra={"error": type(exc).__name__})
        return self._count_on_host(key, window_seconds)

    def _count_on_host(self, key: str, window_seconds: int) -> int:
        """Count one hit in the host's shared table, else (full, or none) in this process."""
        now = time.time()
        window = int(now // window_seconds)
        if self._shared is not None:
            shared = self._shared.add(key, (window + 1) * window_seconds, now)
            if shared is not None:
                return shared
        return self._count_locally(key, window)

    async def _read(self, key: str, window_seconds: int) -> int:
        window = int(time.time() // window_seconds)
        if self._redis is not None:
            try:
                value = await self._redis.get(_redis_key(key, window))
                return int(value or 0)
            except (RedisError, OSError) as exc:
                log.warning("rate_limit_redis_unavailable", extra={"error": type(exc).__name__})
        if self._shared is not None:
            shared = self._shared.count(key, (window + 1) * window_seconds)
            if shared is not None:
                return max(shared, self._local(key, window))
        return self._local(key, window)

    def _local(self, key: str, window: int) -> int:
        seen_window, count = self._windows.get(key, (window, 0))
        return count if seen_window == window else 0

    def _count_locally(self, key: str, window: int) -> int:
        if len(self._windows) > _SWEEP_AT:
            self._windows = {k: v for k, v in self._windows.items() if v[0] == window}
        count = self._local(key, window) + 1
        self._windows[key] = (window, count)
        return count

    @staticmethod
    def _limited(window_seconds: int) -> RateLimited:
        now = time.time()
        retry_after = math.ceil((int(now // window_seconds) + 1) * window_seconds - now)
        return RateLimited("too many requests; slow down", retry_after_seconds=max(retry_after, 1))

    def close(self) -> None:
        """Unmap the shared table."""
        if self._shared is not None:
            self._shared.close()
