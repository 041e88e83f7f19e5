"""Routing a request by its model's traffic policy: the version it takes, and whether a shadow
copy of it is made."""

from __future__ import annotations

import bisect
import hashlib
import random
import uuid

from modelyard.predictions.targets import Target, Traffic

# The request header whose value makes a traffic split sticky: the same key, the same route.
ROUTING_KEY_HEADER = "x-routing-key"


def route(
    traffic: Traffic, routing_key: str | None, rng: random.Random
) -> tuple[Target, Target | None]:
    """Choose the version of a request naming none, and the shadow to copy it to (if sampled).

    With a routing key the choice is `sticky_point`'s (the same key, the same route while the
    policy holds); without, a weighted random draw. The shadow is sampled at random with the
    policy's rate, and never when the route chose the shadow's version.
    """
    total = traffic.total
    if routing_key is None:
        point = rng.randrange(total)
    else:
        point = sticky_point(traffic.routes[0].model_id, routing_key, total)
    chosen = traffic.routes[bisect.bisect_right(traffic.bounds, point)]
    shadow = traffic.shadow
    if shadow is not None and (
        shadow.version_id == chosen.version_id or rng.random() >= traffic.sample_rate
    ):
        shadow = None
    return chosen, shadow


def sticky_point(model_id: uuid.UUID, routing_key: str, total: int) -> int:
    """Return the draw in [0, total) that a routing key always makes on a model's split.

    A keyed BLAKE2b of the key: stable across processes, replicas and restarts (unlike
    `hash()`), and spread evenly over the draws.
    """
    digest = hashlib.blake2b(routing_key.encode(), digest_size=8, key=model_id.bytes).digest()
    return int.from_bytes(digest, "big") % total
