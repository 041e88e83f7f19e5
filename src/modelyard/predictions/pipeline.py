"""The predict sequence, written once for every protocol and the fast path: route → admit → answer.

Whoever takes a predict request (the REST route, the V2 routes, the fast path, the dashboard's
form) resolves what it names to a `Target` first (`targets`; the fast path from its cache
only), then:

1. route: a target that carries its model's traffic policy (a request naming no version) takes
   the version the policy draws, and perhaps a shadow copy (`traffic.routing`);
2. admit: the request counts against the caller's rate limit (`Predictor.admit`);
3. answer: the protocol decodes the body, the predictor predicts and logs, the protocol encodes
   the answer (`rest.predict_rest`, `v2.predict_v2`); a shadow copy runs once it is sent.

The fast path stops after the route when the routed version's model is not loaded in this
process (it never does I/O): FastAPI then runs the same steps from the start.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol

from starlette.background import BackgroundTask

from modelyard.auth.service import Caller
from modelyard.predictions.predictor import Predictor
from modelyard.predictions.targets import Target
from modelyard.predictions.traffic import routing

JSON_HEADERS: Mapping[str, str] = MappingProxyType({"content-type": "application/json"})


@dataclass(frozen=True, slots=True)
class Answer:
    """A predict response, encoded for its protocol: what a route or the fast path sends."""

    body: bytes
    headers: Mapping[str, str]
    # What runs once the answer is sent (a shadow copy of the request), if anything.
    background: BackgroundTask | None = None


class Codec(Protocol):
    """A protocol's answer to a request body on a routed version (`rest.predict_rest`...)."""

    def __call__(
        self,
        predictor: Predictor,
        target: Target,
        body: bytes,
        *,
        caller: Caller,
        shadow: Target | None,
    ) -> Awaitable[Answer]: ...


@dataclass(frozen=True, slots=True)
class Routed:
    """The version that answers a request, and the shadow version that gets a copy of it."""

    target: Target
    shadow: Target | None = None


def route(predictor: Predictor, target: Target, routing_key: str | None) -> Routed:
    """Step 1: the version a request takes (its traffic policy's draw, if it carries one)."""
    if target.traffic is None:
        return Routed(target)
    chosen, shadow = routing.route(target.traffic, routing_key, predictor.rng)
    return Routed(chosen, shadow)


async def answer(
    predictor: Predictor,
    routed: Routed,
    *,
    caller: Caller,
    body: Callable[[], Awaitable[bytes]],
    codec: Codec,
) -> Answer:
    """Steps 2 and 3: admit the caller, then read the body and answer it with `codec`.

    Raises:
        RateLimited: the caller is past its limit (the body is not read).
        As the codec: a refused request (logged as a failed prediction).
    """
    await predictor.admit(caller)
    return await codec(predictor, routed.target, await body(), caller=caller, shadow=routed.shadow)


async def predict(
    predictor: Predictor,
    target: Target,
    *,
    caller: Caller,
    routing_key: str | None,
    body: Callable[[], Awaitable[bytes]],
    codec: Codec,
) -> Answer:
    """The whole sequence on a resolved target: route, admit, answer."""
    routed = route(predictor, target, routing_key)
    return await answer(predictor, routed, caller=caller, body=body, codec=codec)
