"""Forged, tampered, expired and misused JWTs: each is refused on /auth/me with a 401 problem."""

from __future__ import annotations

import base64
import json
import uuid
import warnings
from datetime import UTC, datetime, timedelta

import httpx
import jwt
import pytest
from jwt.warnings import InsecureKeyLengthWarning

from tests.support import factories
from tests.support.settings import TEST_SECRET_KEY

ME = "/api/v1/auth/me"
REFRESH = "/api/v1/auth/refresh"
OTHER_SECRET_KEY = "another-deployment-secret-key-also-long-enough"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_json(part: str) -> dict[str, object]:
    decoded: dict[str, object] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return decoded


def access_claims(user_id: str, **overrides: object) -> dict[str, object]:
    """Claims of a valid access token for `user_id`, with `overrides` applied."""
    now = datetime.now(UTC)
    claims: dict[str, object] = {
        "sub": user_id,
        "type": "access",
        "jti": str(uuid.uuid4()),
        "iat": int(now.timestamp()),
        "exp": int((now + timedelta(minutes=5)).timestamp()),
        "fam": str(uuid.uuid4()),  # the session (no refresh token of it was revoked)
        "ver": 0,  # the user's credentials version: a new account's
    }
    claims.update(overrides)
    return claims


def sign(claims: dict[str, object], key: str = TEST_SECRET_KEY, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=algorithm)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_unauthorized(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"].split(";")[0] == "application/problem+json"
    assert response.headers["www-authenticate"].startswith("Bearer")
    body = response.json()
    assert body["status"] == 401
    assert body["title"] == "Unauthorized"


async def test_real_access_token_is_accepted(
    client: httpx.AsyncClient, user: factories.Account
) -> None:
    response = await client.get(ME, headers=user.headers)
    assert response.status_code == 200
    assert response.json()["id"] == user.id


async def test_hand_signed_access_token_with_the_test_key_is_accepted(
    client: httpx.AsyncClient, user: factories.Account
) -> None:
    # The control for the forgeries below: each differs from this token in one thing only.
    response = await client.get(ME, headers=bearer(sign(access_claims(user.id))))
    assert response.status_code == 200
    assert response.json()["id"] == user.id


async def test_token_signed_with_another_key_is_refused(
    client: httpx.AsyncClient, user: factories.Account
) -> None:
    token = sign(access_claims(user.id), key=OTHER_SECRET_KEY)
    assert_unauthorized(await client.get(ME, headers=bearer(token)))


async def test_token_signed_with_another_algorithm_is_refused(
    client: httpx.AsyncClient, user: factories.Account
) -> None:
    # The test key is too short for HS512 by RFC 7518; the point is only that it is the right key.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        token = sign(access_claims(user.id), algorithm="HS512")
    assert_unauthorized(await client.get(ME, headers=bearer(token)))


async def test_unsigned_alg_none_token_is_refused(
    client: httpx.AsyncClient, user: factories.Account
) -> None:
    header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = b64url(json.dumps(access_claims(user.id)).encode())
    token = f"{header}.{payload}."
    assert_unauthorized(await client.get(ME, headers=bearer(token)))


async def test_token_with_tampered_subject_is_refused(
    client: httpx.AsyncClient, user: factories.Account, other_user: factories.Account
) -> None:
    header, payload, signature = user.access_token.split(".")
    claims = b64url_json(payload)
    claims["sub"] = other_user.id
    token = f"{header}.{b64url(json.dumps(claims).encode())}.{signature}"
    assert_unauthorized(await client.get(ME, headers=bearer(token)))


async def test_expired_token_is_refused(client: httpx.AsyncClient, user: factories.Account) -> None:
    now = datetime.now(UTC)
    token = sign(
        access_claims(
            user.id,
            iat=int((now - timedelta(hours=2)).timestamp()),
            exp=int((now - timedelta(hours=1)).timestamp()),
        )
    )
    assert_unauthorized(await client.get(ME, headers=bearer(token)))


async def test_refresh_token_is_refused_as_access_token(
    client: httpx.AsyncClient, user: factories.Account
) -> None:
    assert_unauthorized(await client.get(ME, headers=bearer(user.refresh_token)))


async def test_access_token_is_refused_as_refresh_token(
    client: httpx.AsyncClient, user: factories.Account
) -> None:
    response = await client.post(REFRESH, json={"refresh_token": user.access_token})
    assert_unauthorized(response)


@pytest.mark.parametrize("claim", ["jti", "type", "sub", "exp", "iat", "fam", "ver"])
async def test_token_missing_a_required_claim_is_refused(
    client: httpx.AsyncClient, user: factories.Account, claim: str
) -> None:
    claims = access_claims(user.id)
    del claims[claim]
    assert_unauthorized(await client.get(ME, headers=bearer(sign(claims))))


async def test_garbage_bearer_token_is_refused(client: httpx.AsyncClient) -> None:
    assert_unauthorized(await client.get(ME, headers=bearer("not.a.jwt")))


async def test_request_without_credentials_is_refused(client: httpx.AsyncClient) -> None:
    assert_unauthorized(await client.get(ME))


async def test_basic_authorization_is_refused(
    client: httpx.AsyncClient, user: factories.Account
) -> None:
    basic = base64.b64encode(f"{user.email}:{user.password}".encode()).decode()
    assert_unauthorized(await client.get(ME, headers={"Authorization": f"Basic {basic}"}))


async def test_token_whose_subject_is_not_a_uuid_is_refused(client: httpx.AsyncClient) -> None:
    token = sign(access_claims("not-a-uuid"))
    assert_unauthorized(await client.get(ME, headers=bearer(token)))


async def test_valid_token_for_unknown_user_is_refused(client: httpx.AsyncClient) -> None:
    token = sign(access_claims(str(uuid.uuid4())))
    assert_unauthorized(await client.get(ME, headers=bearer(token)))
