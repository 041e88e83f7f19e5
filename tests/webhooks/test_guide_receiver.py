"""The webhooks guide's receiver example, run against real deliveries: what users copy works."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from modelyard.db.types import utcnow
from modelyard.webhooks.delivery import DeliveryWorker
from modelyard.webhooks.outbound import Sender
from tests.support import factories
from tests.webhooks.helpers import make_hook, record, state_of, version_created
from tests.webhooks.receiver import Receiver

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "guides" / "webhooks.md"

Verify = Callable[..., Any]


def guide_verifier() -> Verify:
    """Run the Python example of the webhooks guide; return its `verify_webhook`."""
    [example] = [
        block
        for block in re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.S)
        if "verify_webhook" in block
    ]
    namespace: dict[str, Any] = {"__name__": "guide_example"}  # not "__main__": no server
    exec(compile(example, "webhooks.md", "exec"), namespace)  # noqa: S102 - our own guide
    verify: Verify = namespace["verify_webhook"]
    return verify


@pytest.fixture
async def delivered(
    app: FastAPI, client: httpx.AsyncClient, user: factories.Account, receiver: Receiver
) -> tuple[str, dict[str, str], bytes]:
    """One real delivery: the secret, the headers and the body the receiver got."""
    hook = await make_hook(client, user, f"{receiver.url}/hook")
    await record(app, version_created(user))
    worker = DeliveryWorker(
        state_of(app).sessions, Sender(timeout_seconds=10, allow_private_networks=True)
    )
    try:
        assert await worker.run_once(utcnow()) == 1
    finally:
        await worker.aclose()
    [got] = receiver.received
    return hook["secret"], got.headers, got.body


async def test_the_guide_receiver_accepts_a_real_delivery(
    delivered: tuple[str, dict[str, str], bytes],
) -> None:
    secret, headers, body = delivered

    event = guide_verifier()(secret, headers, body)

    assert event["type"] == "model_version.created"


async def test_the_guide_receiver_refuses_a_changed_body_another_secret_or_an_old_request(
    delivered: tuple[str, dict[str, str], bytes],
) -> None:
    secret, headers, body = delivered
    verify = guide_verifier()
    other = "whsec_" + "A" * 43 + "="
    sent_at = int(headers["webhook-timestamp"])

    for args, kwargs in [
        ((secret, headers, body.replace(b"iris", b"wine")), {}),
        ((other, headers, body), {}),
        ((secret, {**headers, "webhook-timestamp": str(sent_at - 1)}, body), {}),
        ((secret, headers, body), {"now": sent_at + 5 * 60 + 1}),
    ]:
        with pytest.raises(ValueError):  # noqa: PT011 - the example raises plain ValueErrors
            verify(*args, **kwargs)
