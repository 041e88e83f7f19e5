"""The loop of the background pollers (batch jobs, webhook deliveries): a step again and again,
at once while it finds work, else after a pause or when woken; a failing step never ends it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from modelyard.errors import is_dependency_down

log = logging.getLogger(__name__)


async def poll_forever(
    step: Callable[[], Awaitable[bool]],
    *,
    every: float,
    failure: str,
    wake: asyncio.Event | None = None,
) -> None:
    """Await `step` until cancelled: again at once when it returns True (more work may be
    waiting), else after `every` seconds or as soon as `wake` is set.

    A step that raises is logged as `failure` (an unreachable dependency as one warning line,
    anything else with its traceback) and tried again after the pause.
    """
    wake = wake or asyncio.Event()
    while True:
        wake.clear()
        try:
            busy = await step()
        except Exception as exc:
            if is_dependency_down(exc):
                log.warning(failure, extra={"error": type(exc).__name__})
            else:
                log.exception(failure)
            busy = False
        if not busy:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(every):
                    await wake.wait()
