"""S3Store: artifacts in an S3-compatible bucket (AWS S3, MinIO, Ceph, ...)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable
from datetime import UTC
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import boto3
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from modelyard.artifacts.http import content_disposition
from modelyard.artifacts.store import (
    ArtifactStore,
    ObjectChanged,
    ObjectInfo,
    ObjectNotFound,
    ObjectStream,
    StorageUnavailable,
    file_sha256,
    validate_key,
)
from modelyard.errors import PayloadTooLarge

log = logging.getLogger(__name__)

T = TypeVar("T")

# S3's smallest multipart part (except the last) is 5 MiB; 8 MiB matches boto3's transfer default.
PART_BYTES = 8 * 1024 * 1024
DELETE_BATCH = 1000
SHA256_METADATA = "sha256"
_NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
_CLIENT_FAULT_CODES = frozenset({"400", "InvalidArgument", "InvalidRequest", "KeyTooLongError"})


class S3Store(ArtifactStore):
    """Objects under `prefix/` in one bucket; the bucket must exist (see `ensure_bucket`)."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        addressing_style: str = "path",
        max_attempts: int = 3,
        connect_timeout: float = 2.0,
        read_timeout: float = 10.0,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        config = Config(
            signature_version="s3v4",
            retries={"max_attempts": max_attempts, "mode": "standard"},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            s3={"addressing_style": addressing_style},
        )
        # One client for the process: boto3 clients are thread-safe (sessions are not).
        self._client: Any = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            config=config,
        )

    def full_key(self, key: str) -> str:
        """Return the bucket key for a store key (validated)."""
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    async def _call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        # boto3 is synchronous: each call blocks for at least one network round trip, which on
        # the event loop would stall every other request of this process.
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except (ClientError, BotoCoreError, S3UploadFailedError) as exc:
            _raise_mapped(exc)

    async def put_file(self, key: str, path: Path, *, sha256: str | None = None) -> ObjectInfo:
        full = self.full_key(key)
        if sha256 is None:
            sha256 = await asyncio.to_thread(file_sha256, path)
        # upload_file switches to a multipart upload for big files; either way the object
        # appears whole or not at all.
        await self._call(
            self._client.upload_file,
            str(path),
            self.bucket,
            full,
            ExtraArgs={"Metadata": {SHA256_METADATA: sha256}},
            Config=TransferConfig(multipart_chunksize=PART_BYTES, use_threads=True),
        )
        info = await self.stat(key)
        if info is None:
            raise StorageUnavailable("the artifact store lost an object just written")
        return info

    async def put_stream(
        self, key: str, chunks: AsyncIterable[bytes], *, max_bytes: int
    ) -> ObjectInfo:
        full = self.full_key(key)
        digest = hashlib.sha256()
        size = 0
        buffer = bytearray()
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []
        try:
            async for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise PayloadTooLarge(f"object exceeds {max_bytes} bytes")
                digest.update(chunk)
                buffer += chunk
                while len(buffer) >= PART_BYTES:
                    if upload_id is None:
                        # The digest is only known at the end, so it cannot go into metadata
                        # here: it is copied in by `_finish_multipart`.
                        created = await self._call(
                            self._client.create_multipart_upload, Bucket=self.bucket, Key=full
                        )
                        upload_id = created["UploadId"]
                    part, buffer = bytes(buffer[:PART_BYTES]), buffer[PART_BYTES:]
                    answer = await self._call(
                        self._client.upload_part,
                        Bucket=self.bucket,
                        Key=full,
                        UploadId=upload_id,
                        PartNumber=len(parts) + 1,
                        Body=part,
                    )
                    parts.append({"PartNumber": len(parts) + 1, "ETag": answer["ETag"]})
            sha256 = digest.hexdigest()
            if upload_id is None:
                await self._call(
                    self._client.put_object,
                    Bucket=self.bucket,
                    Key=full,
                    Body=bytes(buffer),
                    Metadata={SHA256_METADATA: sha256},
                )
            else:
                await self._finish_multipart(full, upload_id, parts, bytes(buffer), sha256)
                upload_id = None
        finally:
            if upload_id is not None:
                # Parts of an aborted upload are billed and invisible until aborted.
                await asyncio.to_thread(self._abort, full, upload_id)
        info = await self.stat(key)
        if info is None:
            raise StorageUnavailable("the artifact store lost an object just written")
        return info

    async def _finish_multipart(
        self, full: str, upload_id: str, parts: list[dict[str, Any]], rest: bytes, sha256: str
    ) -> None:
        if rest:
            answer = await self._call(
                self._client.upload_part,
                Bucket=self.bucket,
                Key=full,
                UploadId=upload_id,
                PartNumber=len(parts) + 1,
                Body=rest,
            )
            parts.append({"PartNumber": len(parts) + 1, "ETag": answer["ETag"]})
        await self._call(
            self._client.complete_multipart_upload,
            Bucket=self.bucket,
            Key=full,
            UploadId=upload_id,
            MultipartUpload={"Parts": parts},
        )
        # Metadata is fixed at creation; a copy onto itself records the digest.
        await self._call(
            self._client.copy_object,
            Bucket=self.bucket,
            Key=full,
            CopySource={"Bucket": self.bucket, "Key": full},
            Metadata={SHA256_METADATA: sha256},
            MetadataDirective="REPLACE",
        )

    def _abort(self, full: str, upload_id: str) -> None:
        try:
            self._client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)
        except (ClientError, BotoCoreError):
            log.warning("multipart_abort_failed", extra={"key": full})

    async def open(
        self, key: str, *, chunk_size: int = 1 << 20, sha256: str | None = None
    ) -> ObjectStream:
        full = self.full_key(key)
        answer = await self._call(self._client.get_object, Bucket=self.bucket, Key=full)
        info = _info(key, answer)
        # The digest recorded with the object describes this very GET's bytes (S3 replaces an
        # object with its metadata atomically); an object without one is not trusted.
        if sha256 is not None and info.sha256 != sha256:
            answer["Body"].close()
            raise ObjectChanged
        return ObjectStream(info, self._read_chunks(answer["Body"], chunk_size))

    async def _read_chunks(self, body: Any, chunk_size: int) -> AsyncIterator[bytes]:
        chunks = body.iter_chunks(chunk_size)
        try:
            while True:
                # Each read blocks on the socket: off the event loop, one chunk at a time.
                chunk = await self._call(next, chunks, b"")
                if not chunk:
                    return
                yield chunk
        finally:
            body.close()

    async def read_bytes(self, key: str) -> bytes:
        full = self.full_key(key)
        answer = await self._call(self._client.get_object, Bucket=self.bucket, Key=full)
        body = answer["Body"]
        try:
            data: bytes = await self._call(body.read)
        finally:
            body.close()
        return data

    async def stat(self, key: str) -> ObjectInfo | None:
        full = self.full_key(key)
        try:
            answer = await self._call(self._client.head_object, Bucket=self.bucket, Key=full)
        except ObjectNotFound:
            return None
        return _info(key, answer)

    async def delete(self, key: str) -> None:
        full = self.full_key(key)
        await self._call(self._client.delete_object, Bucket=self.bucket, Key=full)

    async def list(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        bucket_prefix = f"{self.prefix}/{prefix}" if self.prefix else prefix
        strip = len(self.prefix) + 1 if self.prefix else 0
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": bucket_prefix}
            if token:
                kwargs["ContinuationToken"] = token
            answer = await self._call(self._client.list_objects_v2, **kwargs)
            for item in answer.get("Contents", []):
                yield ObjectInfo(
                    key=item["Key"][strip:],
                    size=item["Size"],
                    modified_at=item["LastModified"].astimezone(UTC),
                )
            if not answer.get("IsTruncated"):
                return
            token = answer["NextContinuationToken"]

    async def presigned_url(
        self, key: str, *, expires_in: int, filename: str | None = None
    ) -> str | None:
        params: dict[str, str] = {"Bucket": self.bucket, "Key": self.full_key(key)}
        if filename is not None:
            params["ResponseContentDisposition"] = content_disposition(filename)
        url: str = await self._call(
            self._client.generate_presigned_url,
            "get_object",
            Params=params,
            ExpiresIn=expires_in,
        )
        return url

    async def check(self) -> None:
        try:
            await self._call(self._client.head_bucket, Bucket=self.bucket)
        except ObjectNotFound as exc:
            raise StorageUnavailable("the artifact bucket does not exist") from exc

    async def ensure_bucket(self) -> None:
        """Create the bucket if it is missing: for tests and MinIO quick starts, not production."""
        try:
            await self._call(self._client.head_bucket, Bucket=self.bucket)
        except ObjectNotFound:
            await self._call(self._client.create_bucket, Bucket=self.bucket)

    async def aclose(self) -> None:
        self._client.close()


def _raise_mapped(exc: Exception) -> NoReturn:
    """Re-raise a boto error as the store error it means."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "NoSuchBucket":
            raise StorageUnavailable("the artifact bucket does not exist") from exc
        if code in _NOT_FOUND_CODES or status == 404:
            raise ObjectNotFound from exc
        if code in _CLIENT_FAULT_CODES:
            raise exc
    # Connection refused, timeouts, 5xx, throttling, bad credentials or permissions: the store
    # cannot serve us, which is an outage to the client, never its fault.
    log.warning("storage_error", extra={"error": type(exc).__name__})
    raise StorageUnavailable from exc


def _info(key: str, answer: dict[str, Any]) -> ObjectInfo:
    return ObjectInfo(
        key=key,
        size=int(answer["ContentLength"]),
        modified_at=answer["LastModified"].astimezone(UTC),
        sha256=answer.get("Metadata", {}).get(SHA256_METADATA),
    )
