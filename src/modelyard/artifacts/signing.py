"""Signed download URLs for the local store: HMAC-SHA256 over (key, expiry, filename)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from urllib.parse import quote, urlencode

import orjson

from modelyard.errors import Forbidden

SIGNED_PATH = "/api/v1/artifacts/signed"
# A key of its own, derived from the secret: a download signature can never be replayed as (or
# forged from) anything else the secret signs, such as a JWT.
PURPOSE = b"modelyard-download-url"


class LinkExpired(Forbidden):
    type = "download-link-expired"

    def __init__(self) -> None:
        super().__init__("download link expired")


class BadSignature(Forbidden):
    type = "download-link-invalid"

    def __init__(self) -> None:
        super().__init__("download link signature is not valid")


class UrlSigner:
    """Make and check the signatures of local download URLs."""

    def __init__(self, secret: str) -> None:
        self._key = hmac.new(secret.encode(), PURPOSE, hashlib.sha256).digest()

    def signature(self, key: str, expires_at: int, filename: str | None) -> str:
        """Return the URL-safe signature of one download."""
        # JSON makes the message unambiguous: no choice of key and filename can shift a boundary.
        message = orjson.dumps([key, expires_at, filename])
        digest = hmac.new(self._key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def url(self, key: str, expires_at: int, filename: str | None) -> str:
        """Return the app-relative URL that downloads `key` until `expires_at` (epoch seconds)."""
        query: dict[str, str | int] = {"expires": expires_at}
        if filename is not None:
            query["filename"] = filename
        query["signature"] = self.signature(key, expires_at, filename)
        return f"{SIGNED_PATH}/{quote(key, safe='/')}?{urlencode(query)}"

    def verify(
        self,
        key: str,
        expires_at: int,
        filename: str | None,
        signature: str,
        *,
        now: float | None = None,
    ) -> None:
        """Accept a download only with its exact signature and before it expires.

        Raises:
            BadSignature: anything (key, expiry, filename) differs from what was signed.
            LinkExpired: the signature is right but `expires_at` has passed.
        """
        expected = self.signature(key, expires_at, filename)
        if not hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace")):
            raise BadSignature
        if (time.time() if now is None else now) >= expires_at:
            raise LinkExpired
