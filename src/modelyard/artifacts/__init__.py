"""Artifact storage: one `ArtifactStore` interface over a local folder or an S3 bucket."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from modelyard.artifacts.local import LocalStore
from modelyard.artifacts.store import (
    ArtifactStore,
    ObjectInfo,
    ObjectNotFound,
    ObjectStream,
    StorageUnavailable,
)
from modelyard.config import Settings

if TYPE_CHECKING:
    from modelyard.artifacts.s3 import S3Store

__all__ = [
    "ArtifactStore",
    "LocalStore",
    "ObjectInfo",
    "ObjectNotFound",
    "ObjectStream",
    "S3Store",
    "StorageUnavailable",
    "make_store",
]


def __getattr__(name: str) -> Any:
    # boto3 takes ~10 MiB and half a second to import: only processes that use S3 pay for it.
    if name == "S3Store":
        from modelyard.artifacts.s3 import S3Store

        return S3Store
    raise AttributeError(name)


def make_store(settings: Settings) -> ArtifactStore:
    """Build the store `settings.storage_url` names (default: `data_dir/artifacts`).

    Raises:
        ValueError: the URL is neither `file:///absolute/path` nor `s3://bucket[/prefix]`.
    """
    url = settings.storage_url
    if not url:
        return LocalStore(settings.data_dir / "artifacts")
    parts = urlsplit(url)
    if parts.scheme == "file":
        path = Path(unquote(parts.path))
        if parts.netloc not in ("", "localhost") or not path.is_absolute():
            raise ValueError("MODELYARD_STORAGE_URL: use file:///absolute/path for a folder")
        return LocalStore(path)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ValueError("MODELYARD_STORAGE_URL: use s3://bucket or s3://bucket/prefix")
        from modelyard.artifacts.s3 import S3Store

        secret = settings.s3_secret_access_key
        return S3Store(
            parts.netloc,
            unquote(parts.path).strip("/"),
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            access_key_id=settings.s3_access_key_id,
            secret_access_key=secret.get_secret_value() if secret else None,
            addressing_style=settings.s3_addressing_style,
        )
    raise ValueError("MODELYARD_STORAGE_URL must start with file:// or s3://")
