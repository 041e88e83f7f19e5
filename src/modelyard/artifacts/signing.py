"""Signed download links served by the app: HMAC-SHA256 over what the link is bound to.

A link names an object key, and is bound to the object's sha256 and its owner (and, for a model
artifact, the version): serving it checks that all of these still hold (see `links`), so a link
to a deleted file never serves another file later put at the same path.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid
from dataclasses import dataclass
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


@dataclass(frozen=True)
class LinkTarget:
    """What a link downloads: the object under `key` with digest `sha256`, of `owner_id`, and
    for a model artifact the version `version_id`."""

    key: str
    owner_id: uuid.UUID
    sha256: str
    version_id: uuid.UUID | None = None


class UrlSigner:
    """Make and check the signatures of download links served by the app."""

    def __init__(self, secret: str) -> None:
        self._key = hmac.new(secret.encode(), PURPOSE, hashlib.sha256).digest()

    def signature(self, target: LinkTarget, expires_at: int, filename: str | None) -> str:
        """Return the URL-safe signature of one download."""
        # JSON makes the message unambiguous: no choice of key and filename can shift a boundary.
        version = str(target.version_id) if target.version_id else None
        message = orjson.dumps(
            [target.key, expires_at, filename, str(target.owner_id), target.sha256, version]
        )
        digest = hmac.new(self._key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def url(self, target: LinkTarget, expires_at: int, filename: str | None) -> str:
        """Return the app-relative URL that downloads `target` until `expires_at` (epoch s)."""
        query: dict[str, str | int] = {
            "expires": expires_at,
            "owner": str(target.owner_id),
            "sha256": target.sha256,
        }
        if target.version_id is not None:
            query["version"] = str(target.version_id)
        if filename is not None:
            query["filename"] = filename
        query["signature"] = self.signature(target, expires_at, filename)
        return f"{SIGNED_PATH}/{quote(target.key, safe='/')}?{urlencode(query)}"

    def verify(
        self,
        target: LinkTarget,
        expires_at: int,
        filename: str | None,
        signature: str,
        *,
        now: float | None = None,
    ) -> None:
        """Accept a download only with its exact signature and before it expires.

        Raises:
            BadSignature: anything (key, binding, expiry, filename) differs from what was signed.
            LinkExpired: the signature is right but `expires_at` has passed.
        """
        expected = self.signature(target, expires_at, filename)
        if not hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace")):
            raise BadSignature
        if (time.time() if now is None else now) >= expires_at:
            raise LinkExpired
