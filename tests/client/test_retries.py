"""Retries on 429 and 503 honouring Retry-After, and problem+json errors (a scripted server
through httpx's MockTransport)."""

from __future__ import annotations

import time

import httpx
import pytest

from modelyard_client import ApiError, Client
from modelyard_client.errors import ModelyardClientError, RateLimited, Unavailable
from modelyard_client.transfer import RetryPolicy

ME = {"id": "u1", "email": "a@b.co"}


def scripted(*answers: httpx.Response) -> tuple[httpx.MockTransport, list[float]]:
    """A transport answering `answers` in order; also return when each request came."""
    queue = list(answers)
    seen: list[float] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(time.monotonic())
        return queue.pop(0)

    return httpx.MockTransport(handle), seen


def problem(status: int, detail: str, **headers: str) -> httpx.Response:
    body = {"type": "about:blank", "title": "Too Many Requests", "status": status, "detail": detail}
    return httpx.Response(
        status, json=body, headers={"content-type": "application/problem+json", **headers}
    )


def test_a_429_is_retried_after_the_servers_retry_after() -> None:
    transport, seen = scripted(
        problem(429, "slow down", **{"Retry-After": "0.3"}), httpx.Response(200, json=ME)
    )

    with Client("http://test", api_key="k", transport=transport) as client:
        assert client.me().email == "a@b.co"

    assert len(seen) == 2
    assert seen[1] - seen[0] >= 0.3


def test_a_503_is_retried_with_backoff_then_raised_with_its_details() -> None:
    transport, seen = scripted(*(problem(503, "database down") for _ in range(3)))
    policy = RetryPolicy(retries=2, backoff=0.01)

    with (
        Client("http://test", api_key="k", transport=transport, retry=policy) as client,
        pytest.raises(Unavailable) as caught,
    ):
        client.me()

    assert len(seen) == 3
    assert (caught.value.status, caught.value.detail) == (503, "database down")


def test_retry_after_is_capped_and_reported_on_the_error() -> None:
    transport, _ = scripted(problem(429, "slow down", **{"Retry-After": "3600"}))
    policy = RetryPolicy(retries=0)

    with (
        Client("http://test", api_key="k", transport=transport, retry=policy) as client,
        pytest.raises(RateLimited) as caught,
    ):
        client.me()

    assert caught.value.retry_after == 3600
    assert RetryPolicy(max_wait=5).wait_after(problem(429, "x", **{"Retry-After": "3600"}), 0) == 5


def test_other_refusals_are_not_retried() -> None:
    transport, seen = scripted(problem(409, "archived"))

    with Client("http://test", api_key="k", transport=transport) as client, pytest.raises(ApiError):
        client.me()

    assert len(seen) == 1


def test_a_non_json_error_still_raises_with_its_status() -> None:
    transport, _ = scripted(httpx.Response(502, text="bad gateway"))

    with (
        Client("http://test", api_key="k", transport=transport) as client,
        pytest.raises(ApiError) as caught,
    ):
        client.me()

    assert (caught.value.status, caught.value.detail) == (502, "bad gateway")


def test_validation_errors_list_each_field() -> None:
    body = {"title": "Unprocessable Content", "status": 422, "detail": "invalid request",
            "errors": [{"loc": ["body", "stage"], "msg": "Input should be 'production'"}]}  # fmt: skip
    transport, _ = scripted(httpx.Response(422, json=body))

    with (
        Client("http://test", api_key="k", transport=transport) as client,
        pytest.raises(ApiError) as caught,
    ):
        client.me()

    assert "body.stage: Input should be 'production'" in str(caught.value)


def test_an_expired_login_is_renewed_with_the_refresh_token_once() -> None:
    seen: list[tuple[str, str | None]] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.path, request.headers.get("authorization")))
        if request.url.path == "/api/v1/auth/login":
            return httpx.Response(200, json={"access_token": "old", "refresh_token": "r1"})
        if request.url.path == "/api/v1/auth/refresh":
            assert request.read() == b'{"refresh_token":"r1"}'
            return httpx.Response(200, json={"access_token": "new", "refresh_token": "r2"})
        if request.headers.get("authorization") == "Bearer new":
            return httpx.Response(200, json=ME)
        return problem(401, "token expired")

    with Client("http://test", transport=httpx.MockTransport(handle)) as client:
        client.login("a@b.co", "pw")
        assert client.me().email == "a@b.co"

    assert [path for path, _ in seen] == [
        "/api/v1/auth/login", "/api/v1/auth/me", "/api/v1/auth/refresh", "/api/v1/auth/me",
    ]  # fmt: skip


def test_a_refused_refresh_raises_the_original_401() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/v1/auth/login":
            return httpx.Response(200, json={"access_token": "old", "refresh_token": "r1"})
        return problem(401, "token expired")

    with Client("http://test", transport=httpx.MockTransport(handle)) as client:
        client.login("a@b.co", "pw")
        with pytest.raises(ApiError, match="token expired"):
            client.me()


def test_an_answer_that_is_not_modelyards_raises_a_clear_error() -> None:
    transport, _ = scripted(httpx.Response(200, text="<html>login page</html>"))

    with (
        Client("http://test", api_key="k", transport=transport) as client,
        pytest.raises(ModelyardClientError, match="is it a Modelyard server"),
    ):
        client.me()
