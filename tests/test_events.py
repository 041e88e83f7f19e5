"""Events: a change on one host reaches every worker of every other host through Redis, a
missed message is caught up, and a Redis outage shortens what the caches keep."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from modelyard.changes.epochs import Epoch, Epochs
from modelyard.changes.events import Event, EventKind, LocalEvents, RedisEvents
from tests.support.polling import wait_until
from tests.support.settings import REDIS_TEST_URL as REDIS_URL
from tests.support.tcpproxy import TcpProxy

WAIT_SECONDS = 10.0  # a bound, not a measurement: conditions are met in milliseconds


class Host:
    """One replica's host: its epochs file, and one worker's events over its own Redis client."""

    def __init__(self, folder: Path, url: str, namespace: str) -> None:
        self.epochs = Epochs(folder)
        self.redis = Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
        self.health: list[bool] = []
        self.events = RedisEvents(
            self.epochs,
            self.redis,
            on_health=self.health.append,
            catch_up_seconds=0.05,
            namespace=namespace,
        )

    def read(self) -> tuple[int, int]:
        return self.epochs.read(Epoch.AUTH), self.epochs.read(Epoch.REGISTRY)

    async def aclose(self) -> None:
        await self.events.aclose()
        await self.redis.aclose()
        self.epochs.close()


@pytest.fixture
async def hosts(tmp_path: Path, redis_proxy: TcpProxy) -> AsyncIterator[tuple[Host, Host]]:
    namespace = f"modelyard-test-{uuid.uuid4().hex[:8]}"
    a = Host(tmp_path / "a", REDIS_URL, namespace)
    b = Host(tmp_path / "b", f"redis://127.0.0.1:{redis_proxy.port}/0", namespace)
    for host in (a, b):
        host.events.start()
    yield a, b
    await a.aclose()
    await b.aclose()


async def test_a_change_on_one_host_bumps_the_other_hosts_epoch(hosts: tuple[Host, Host]) -> None:
    a, b = hosts
    auth_before, registry_before = b.read()

    await a.events.registry_changed(model_id=uuid.uuid4())

    await wait_until(lambda: b.read()[1] > registry_before)
    assert a.epochs.read(Epoch.REGISTRY) > 0  # its own host at once
    await a.events.credentials_changed(user_id=uuid.uuid4())
    await wait_until(lambda: b.read()[0] > auth_before)


async def test_a_redis_outage_degrades_and_recovery_forgets_what_was_missed(
    hosts: tuple[Host, Host], redis_proxy: TcpProxy
) -> None:
    a, b = hosts
    await redis_proxy.cut()
    await wait_until(lambda: b.health == [False])
    during = b.read()
    # A promotion on A while B cannot hear it.
    await a.events.registry_changed()
    assert b.read() == during

    await redis_proxy.restore()

    await wait_until(lambda: b.health == [False, True])
    assert b.read()[1] > during[1]


async def test_an_event_that_could_not_be_sent_is_caught_up_later(
    tmp_path: Path, redis_proxy: TcpProxy
) -> None:
    namespace = f"modelyard-test-{uuid.uuid4().hex[:8]}"
    sender = Host(tmp_path / "sender", f"redis://127.0.0.1:{redis_proxy.port}/0", namespace)
    listener = Host(tmp_path / "listener", REDIS_URL, namespace)
    try:
        listener.events.start()
        await redis_proxy.cut()
        before = listener.read()
        await sender.events.registry_changed()  # committed, but Redis cannot be reached
        assert sender.events._unsent

        await redis_proxy.restore()
        sender.events.start()

        await wait_until(lambda: listener.read()[1] > before[1])
    finally:
        await sender.aclose()
        await listener.aclose()


async def test_local_events_reach_this_processes_listeners(tmp_path: Path) -> None:
    epochs = Epochs(tmp_path)
    events = LocalEvents(epochs)
    seen: list[Event] = []
    events.subscribe(seen.append)
    user_id = uuid.uuid4()

    await events.credentials_changed(user_id=user_id)

    assert seen == [Event(EventKind.CREDENTIALS, user_id=user_id)]
    assert epochs.read(Epoch.AUTH) == 1
    epochs.close()
