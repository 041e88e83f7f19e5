"""Webhook fixtures: an app whose deliveries the tests drive, a receiver on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from modelyard.config import Settings
from tests.support.settings import make_settings
from tests.webhooks.receiver import Receiver


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    # The tests send deliveries themselves (`run_once` at a time they choose), to a receiver on
    # loopback: the app's own worker stays off.
    return make_settings(
        tmp_path, database_url, webhook_delivery=False, webhook_allow_private_networks=True
    )


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    server = Receiver()
    await server.start()
    yield server
    await server.aclose()
