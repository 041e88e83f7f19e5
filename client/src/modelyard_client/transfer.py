"""Retries with backoff, and files that report upload progress."""

from __future__ import annotations

import io
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from modelyard_client.errors import parse_retry_after

Progress = Callable[[int, int], None]
"""Called with (done, in total) as work goes: the bytes of a transfer, the rows of a batch job
(total 0 while not known)."""

RETRY_STATUSES = frozenset({429, 503})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retry 429 and 503 answers (and connections that never opened) with backoff.

    A `Retry-After` header is honoured (up to `max_wait` seconds); without one the wait is
    `backoff * 2**attempt` with jitter, at most `max_wait`.
    """

    retries: int = 3
    backoff: float = 0.5
    max_wait: float = 60.0

    def wait_after(self, response: httpx.Response | None, attempt: int) -> float | None:
        """Seconds to wait before retrying, or None when the answer is final."""
        if attempt >= self.retries:
            return None
        if response is not None:
            if response.status_code not in RETRY_STATUSES:
                return None
            after = parse_retry_after(response.headers.get("retry-after"))
            if after is not None:
                return min(after, self.max_wait)
        # Jitter spreads clients that were refused together (S311: not for security).
        jitter = random.uniform(0.5, 1.0)  # noqa: S311
        return float(min(self.backoff * 2**attempt * jitter, self.max_wait))


def is_retryable_error(exc: httpx.TransportError) -> bool:
    """Only failures where the request never reached the server are safe to send again."""
    return isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)


class ProgressFile(io.FileIO):
    """A file opened for reading that reports how much of it has been read."""

    def __init__(self, path: Path, progress: Progress | None) -> None:
        super().__init__(path, "rb")
        self.total = Path(path).stat().st_size
        self._progress = progress

    def read(self, size: int | None = -1, /) -> Any:
        chunk = super().read(size)
        if self._progress is not None and chunk is not None:
            self._progress(self.tell(), self.total)
        return chunk
