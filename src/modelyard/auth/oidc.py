"""OpenID Connect relying party: discovery, the authorization request, the code exchange, and
the ID token check against the provider's published keys.

This server is a confidential client (it holds the client secret); the browser and the command
line only ever see the provider's login pages and this server's own session or one-time code.
Nothing here runs per API request: only at sign-in.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import jwt

from modelyard.config import Settings
from modelyard.errors import ModelyardError

log = logging.getLogger(__name__)

DISCOVERY_TTL_SECONDS = 3600.0
# An ID token naming a key we do not have makes us fetch the keys again (the provider rotated
# them), but at most this often: a stream of forged key ids must not turn into a stream of
# fetches.
JWKS_REFETCH_SECONDS = 30.0
# Clock difference tolerated between the provider and this server for exp and iat.
LEEWAY_SECONDS = 60
HTTP_TIMEOUT_SECONDS = 10.0
# Asymmetric algorithms only: an HMAC-signed ID token would be keyed by the client secret, and
# `none` is no signature; both are refused whatever the provider advertises.
ALLOWED_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)


class SsoProviderUnavailable(ModelyardError):
    status, title, type = 502, "Bad Gateway", "sso-provider-unavailable"

    def __init__(self) -> None:
        super().__init__(
            "the identity provider cannot be reached or answered unexpectedly; try again later"
        )


class SsoFailed(ModelyardError):
    """A sign-in that cannot be trusted: wrong state or nonce, a spent code, a bad ID token."""

    status, title, type = 400, "Sign-in failed", "sso-failed"


@dataclass(frozen=True, slots=True)
class ProviderMetadata:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str


@dataclass(frozen=True, slots=True)
class Identity:
    """The verified claims of an ID token that sign-in uses."""

    issuer: str
    subject: str
    email: str | None
    email_verified: bool | None  # None: the provider did not say
    name: str | None
    groups: list[str] | None


def new_pkce_pair() -> tuple[str, str]:
    """Return a PKCE verifier and its S256 challenge (RFC 7636)."""
    verifier = secrets.token_urlsafe(48)
    return verifier, pkce_challenge(verifier)


def pkce_challenge(verifier: str) -> str:
    """Return the S256 challenge of a PKCE verifier."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


class OidcClient:
    """The provider as this server sees it; its metadata and keys are cached."""

    def __init__(self, settings: Settings, *, http: httpx.AsyncClient | None = None) -> None:
        issuer, client_id = settings.oidc_issuer, settings.oidc_client_id
        secret = settings.oidc_client_secret
        if not (issuer and client_id and secret):
            raise ValueError("single sign-on needs an issuer, a client id and a client secret")
        self.issuer = issuer.rstrip("/")
        self.client_id = client_id
        self._secret = secret
        scopes = settings.oidc_scopes.split()
        self.scopes = " ".join(dict.fromkeys(["openid", "email", *scopes]))
        self.groups_claim = settings.oidc_groups_claim
        self._http = http or httpx.AsyncClient(timeout=HTTP_TIMEOUT_SECONDS, follow_redirects=False)
        self._lock = asyncio.Lock()
        self._metadata: tuple[float, ProviderMetadata] | None = None
        self._keys: dict[str, jwt.PyJWK] = {}
        self._keys_fetched_at: float | None = None

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _get_json(self, url: str) -> dict[str, Any]:
        try:
            answer = await self._http.get(url, headers={"Accept": "application/json"})
            answer.raise_for_status()
            body = answer.json()
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("sso_provider_unavailable", extra={"url": url, "error": repr(exc)})
            raise SsoProviderUnavailable from exc
        if not isinstance(body, dict):
            raise SsoProviderUnavailable
        return body

    async def metadata(self) -> ProviderMetadata:
        """Return the provider's endpoints from its discovery document (cached an hour).

        Raises:
            SsoProviderUnavailable: unreachable, or a document for another issuer.
        """
        cached = self._metadata
        if cached is not None and time.monotonic() - cached[0] < DISCOVERY_TTL_SECONDS:
            return cached[1]
        async with self._lock:
            cached = self._metadata
            if cached is not None and time.monotonic() - cached[0] < DISCOVERY_TTL_SECONDS:
                return cached[1]
            body = await self._get_json(f"{self.issuer}/.well-known/openid-configuration")
            try:
                found = ProviderMetadata(
                    issuer=str(body["issuer"]),
                    authorization_endpoint=str(body["authorization_endpoint"]),
                    token_endpoint=str(body["token_endpoint"]),
                    jwks_uri=str(body["jwks_uri"]),
                )
            except KeyError as exc:
                raise SsoProviderUnavailable from exc
            # OpenID Connect Discovery 4.3: the document must name the issuer it was asked for.
            if found.issuer.rstrip("/") != self.issuer:
                log.warning("sso_issuer_mismatch", extra={"issuer": found.issuer})
                raise SsoProviderUnavailable
            self._metadata = (time.monotonic(), found)
            return found

    async def authorization_url(
        self, *, redirect_uri: str, state: str, nonce: str, code_challenge: str
    ) -> str:
        """Return the provider URL that starts a sign-in (authorization code with PKCE S256)."""
        meta = await self.metadata()
        query = urlencode(
            {
                "response_type": "code",
                "client_id": self.client_id,
                "redirect_uri": redirect_uri,
                "scope": self.scopes,
                "state": state,
                "nonce": nonce,
                "code_challenge": code_challenge,
                "code_challenge_method": "S256",
            }
        )
        separator = "&" if "?" in meta.authorization_endpoint else "?"
        return f"{meta.authorization_endpoint}{separator}{query}"

    async def exchange_code(self, code: str, *, redirect_uri: str, code_verifier: str) -> str:
        """Spend an authorization code at the token endpoint; return the ID token.

        Raises:
            SsoFailed: the provider refused the code (spent, expired, or not ours).
            SsoProviderUnavailable: unreachable, or an answer without an ID token.
        """
        meta = await self.metadata()
        # client_secret_basic, with the id and secret form-encoded first (RFC 6749 2.3.1).
        auth = (quote(self.client_id, safe=""), quote(self._secret.get_secret_value(), safe=""))
        try:
            answer = await self._http.post(
                meta.token_endpoint,
                data={
                    "grant_type": "authorization_code",
                    "code": code,
                    "redirect_uri": redirect_uri,
                    "code_verifier": code_verifier,
                },
                auth=auth,
                headers={"Accept": "application/json"},
            )
        except httpx.HTTPError as exc:
            log.warning("sso_provider_unavailable", extra={"error": repr(exc)})
            raise SsoProviderUnavailable from exc
        try:
            body = answer.json()
        except ValueError:
            body = None
        if answer.status_code == 400 and isinstance(body, dict):
            log.info("sso_code_refused", extra={"error": str(body.get("error"))[:64]})
            raise SsoFailed("the identity provider refused the sign-in code; sign in again")
        if answer.status_code != 200 or not isinstance(body, dict):
            # A 401 here is this server's client id or secret: the operator's to fix.
            log.warning("sso_token_endpoint_failed", extra={"status": answer.status_code})
            raise SsoProviderUnavailable
        id_token = body.get("id_token")
        if not isinstance(id_token, str):
            raise SsoProviderUnavailable
        return id_token

    def _known_key(self, kid: str | None) -> jwt.PyJWK | None:
        if kid:
            return self._keys.get(kid)
        # A token without `kid` is accepted only from a provider that publishes one key.
        return next(iter(self._keys.values())) if len(self._keys) == 1 else None

    async def _key(self, kid: str | None) -> jwt.PyJWK:
        meta = await self.metadata()
        async with self._lock:
            key = self._known_key(kid)
            now = time.monotonic()
            if key is None and (
                self._keys_fetched_at is None or now - self._keys_fetched_at >= JWKS_REFETCH_SECONDS
            ):
                body = await self._get_json(meta.jwks_uri)
                self._keys_fetched_at = now
                try:
                    keys = jwt.PyJWKSet.from_dict(body).keys
                except jwt.PyJWTError as exc:
                    raise SsoProviderUnavailable from exc
                self._keys = {k.key_id or "": k for k in keys if k.public_key_use in (None, "sig")}
                key = self._known_key(kid)
        if key is None:
            raise SsoFailed(
                "the ID token is signed with a key the identity provider does not publish"
            )
        return key

    async def verify_id_token(self, token: str, *, nonce: str) -> Identity:
        """Check an ID token and return who it names.

        Checked: the signature with the provider's published key (an asymmetric algorithm),
        `iss` (the configured issuer), `aud` (this client; `azp` too when there are several),
        `exp` and `iat` with a minute's leeway, `sub`, and `nonce` (the one this sign-in sent).

        Raises:
            SsoFailed: any check fails.
            SsoProviderUnavailable: the keys cannot be fetched.
        """
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise SsoFailed("the identity provider sent an unreadable ID token") from exc
        algorithm = header.get("alg")
        if algorithm not in ALLOWED_ALGORITHMS:
            raise SsoFailed("the ID token is not signed with an allowed algorithm")
        kid = header.get("kid")
        key = await self._key(kid if isinstance(kid, str) else None)
        meta = await self.metadata()
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key,
                algorithms=[algorithm],
                audience=self.client_id,
                issuer=meta.issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": ["iss", "aud", "sub", "exp", "iat", "nonce"]},
            )
        except jwt.InvalidAudienceError as exc:
            raise SsoFailed("the ID token was issued for another application") from exc
        except jwt.PyJWTError as exc:
            log.info("sso_id_token_refused", extra={"reason": type(exc).__name__})
            raise SsoFailed("the ID token is invalid or expired; sign in again") from exc
        audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        if len(audiences) > 1 and claims.get("azp") != self.client_id:
            raise SsoFailed("the ID token was issued for another application")
        if not isinstance(claims["nonce"], str) or not _same(claims["nonce"], nonce):
            raise SsoFailed("the ID token does not belong to this sign-in; sign in again")
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject or len(subject) > 255:
            raise SsoFailed("the ID token names no valid subject")
        return Identity(
            issuer=meta.issuer,
            subject=subject,
            email=_text(claims.get("email"), 320),
            email_verified=_flag(claims.get("email_verified")),
            name=_text(claims.get("name"), 200),
            groups=self._groups(claims),
        )

    def _groups(self, claims: dict[str, Any]) -> list[str] | None:
        if not self.groups_claim:
            return None
        value = claims.get(self.groups_claim)
        if not isinstance(value, list):
            return None
        return [g[:200] for g in value if isinstance(g, str)][:500]


def _text(value: object, limit: int) -> str | None:
    return value[:limit] if isinstance(value, str) and value else None


def _flag(value: object) -> bool | None:
    # Some providers send "true" as a string (e.g. older Cognito).
    if isinstance(value, bool):
        return value
    if value in ("true", "false"):
        return value == "true"
    return None
