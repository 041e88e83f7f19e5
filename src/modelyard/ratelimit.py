"""Fixed-window rate limits per caller: in-process, or shared by every replica through Redis."""

from __future__ import annotations

import logging
import math
import time

from redis.asyncio import Redis
from redis.exceptions import RedisError

from modelyard.errors import RateLimited

log = logging.getLogger(__name__)

# Past this many tracked keys, expired windows are swept (bounds memory under a spray of IPs).
_SWEEP_AT = 10_000


class RateLimiter:
    """Count hits per key in fixed windows; with Redis, the count is shared by all replicas."""

    def __init__(self, redis: Redis | None = None) -> None:
        self._redis = redis
        self._windows: dict[str, tuple[int, int]] = {}

    async def hit(self, key: str, *, limit: int, window_seconds: int) -> None:
        """Count one hit on `key`.

        Raises:
            RateLimited: past `limit` hits in the current window, with the seconds until it ends.
        """
        if limit <= 0:
            return
        now = time.time()
        window = int(now // window_seconds)
        count = await self._count(key, window, window_seconds)
        if count > limit:
            retry_after = math.ceil((window + 1) * window_seconds - now)
            raise RateLimited("too many requests; slow down", retry_after_seconds=retry_after)

    async def _count(self, key: str, window: int, window_seconds: int) -> int:
        if self._redis is not None:
            redis_key = f"modelyard:ratelimit:{key}:{window}"
            try:
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.incr(redis_key)
                    pipe.expire(redis_key, window_seconds + 1)
                    count, _ = await pipe.execute()
                return int(count)
            except (RedisError, OSError) as exc:
                # A Redis blip must not lock everyone out: fall back to this process's count.
                log.warning("rate_limit_redis_unavailable", extra={"error": type(exc).__name__})
        return self._count_locally(key, window)

    def _count_locally(self, key: str, window: int) -> int:
        if len(self._windows) > _SWEEP_AT:
            self._windows = {k: v for k, v in self._windows.items() if v[0] == window}
        seen_window, count = self._windows.get(key, (window, 0))
        count = count + 1 if seen_window == window else 1
        self._windows[key] = (window, count)
        return count
