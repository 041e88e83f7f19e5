"""The one way tests wait for what happens in the background: poll a check until it holds,
failing with what was awaited past a bound. The bound is a limit, never a measurement: the
awaited things happen in milliseconds."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from modelyard_client.errors import NotFound

T = TypeVar("T")

WAIT_SECONDS = 60.0
INTERVAL_SECONDS = 0.05

# What is awaited, for the failure: a text, or a function giving it (with the last state seen).
What = str | Callable[[], str]
# Why waiting is pointless now (the process that should act exited), or None to go on.
Stop = Callable[[], str | None]


def _text(what: What) -> str:
    return what if isinstance(what, str) else what()


def _fail_if_over(what: What, deadline: float, stop: Stop | None) -> None:
    if stop is not None and (reason := stop()) is not None:
        pytest.fail(f"{_text(what)}: {reason}")
    if time.monotonic() > deadline:
        pytest.fail(f"{_text(what)}: not in time")


async def wait_until(
    check: Callable[[], Awaitable[bool] | bool],
    what: What = "the condition",
    *,
    seconds: float = WAIT_SECONDS,
    interval: float = INTERVAL_SECONDS,
    stop: Stop | None = None,
) -> None:
    """Poll `check` (a function or a coroutine function) until it returns true; fail past
    `seconds`, or as soon as `stop` gives a reason."""
    deadline = time.monotonic() + seconds
    while True:
        holds = check()
        if inspect.isawaitable(holds):
            holds = await holds
        if holds:
            return
        _fail_if_over(what, deadline, stop)
        await asyncio.sleep(interval)  # polling interval, not an assertion


def wait_until_blocking(
    check: Callable[[], bool],
    what: What = "the condition",
    *,
    seconds: float = WAIT_SECONDS,
    interval: float = INTERVAL_SECONDS,
    stop: Stop | None = None,
) -> None:
    """`wait_until` for code without an event loop (a server process, a thread)."""
    deadline = time.monotonic() + seconds
    while not check():
        _fail_if_over(what, deadline, stop)
        time.sleep(interval)  # polling interval, not an assertion


def eventually(check: Callable[[], T], *, seconds: float = 10.0) -> T:
    """Return `check()`'s value once it stops raising AssertionError or the client's NotFound
    (the prediction log is written in the background); fail with its last error past
    `seconds`."""
    outcome: list[T] = []
    last = ""

    def holds() -> bool:
        nonlocal last
        try:
            outcome.append(check())
        except (AssertionError, NotFound) as exc:
            last = f"{type(exc).__name__}: {exc}"
            return False
        return True

    wait_until_blocking(
        holds, lambda: f"{getattr(check, '__name__', 'check')} ({last})", seconds=seconds
    )
    return outcome[0]
