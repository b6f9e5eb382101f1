"""Where attachment bytes live: S3/MinIO in production, a local directory when embedded.

Keys are chosen by the caller and always start with the tenant id, so a bucket listing
or a leaked key never mixes tenants.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Protocol

CHUNK = 256 * 1024


class BlobNotFound(Exception):
    """No blob under that key."""


class BlobStore(Protocol):
    """Stores immutable blobs by key."""

    def put(self, key: str, data: bytes, content_type: str) -> None:
        """Store ``data`` under ``key`` (overwriting is harmless: keys are content-bound)."""

    def stream(self, key: str) -> Iterator[bytes]:
        """The blob's bytes in chunks. Raises ``BlobNotFound``."""

    def presigned_url(
        self, key: str, ttl_seconds: int, filename: str, content_type: str
    ) -> str | None:
        """A time-limited GET URL, or None when this store cannot make one."""

    def delete(self, key: str) -> None:
        """Remove the blob if present."""

    def ping(self) -> None:
        """Raise if the store cannot be reached."""


class LocalBlobStore:
    """Blobs as files under a directory: the embedded default. No presigned URLs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        # Keys are ours, but a path that escapes the root must never be served.
        if not path.is_relative_to(self.root.resolve()):
            raise BlobNotFound(key)
        return path

    def put(self, key: str, data: bytes, content_type: str) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename, so a reader never sees half a file.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part-")
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)

    def stream(self, key: str) -> Iterator[bytes]:
        path = self._path(key)
        try:
            handle = path.open("rb")
        except FileNotFoundError as exc:
            raise BlobNotFound(key) from exc
        return _read_chunks(handle)

    def presigned_url(
        self, key: str, ttl_seconds: int, filename: str, content_type: str
    ) -> str | None:
        return None

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def ping(self) -> None:
        if not self.root.is_dir():
            raise OSError(f"blob directory {self.root} is missing")


def _read_chunks(handle: io.BufferedReader) -> Iterator[bytes]:
    with handle:
        while chunk := handle.read(CHUNK):
            yield chunk


class S3BlobStore:
    """Blobs in an S3-compatible bucket through the ``minio`` client."""

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        *,
        region: str = "us-east-1",
        secure: bool = True,
        public_endpoint: str | None = None,
        public_secure: bool | None = None,
    ) -> None:
        from minio import Minio

        self.bucket = bucket
        # The region is given so that presigning never asks the server for it.
        self._client = Minio(endpoint, access_key, secret_key, secure=secure, region=region)
        # Presigned URLs carry the host they were signed for: sign with the public one.
        self._public = Minio(
            public_endpoint or endpoint,
            access_key,
            secret_key,
            secure=secure if public_secure is None else public_secure,
            region=region,
        )

    def put(self, key: str, data: bytes, content_type: str) -> None:
        self._client.put_object(
            self.bucket, key, io.BytesIO(data), len(data), content_type=content_type
        )

    def stream(self, key: str) -> Iterator[bytes]:
        from minio.error import S3Error

        try:
            response = self._client.get_object(self.bucket, key)
        except S3Error as exc:
            if exc.code in {"NoSuchKey", "NoSuchBucket"}:
                raise BlobNotFound(key) from exc
            raise
        return _stream_response(response)

    def presigned_url(
        self, key: str, ttl_seconds: int, filename: str, content_type: str
    ) -> str | None:
        return self._public.presigned_get_object(
            self.bucket,
            key,
            expires=timedelta(seconds=ttl_seconds),
            response_headers={
                "response-content-type": content_type,
                "response-content-disposition": content_disposition(filename),
            },
        )

    def delete(self, key: str) -> None:
        self._client.remove_object(self.bucket, key)

    def ping(self) -> None:
        self._client.bucket_exists(self.bucket)


def _stream_response(response: object) -> Iterator[bytes]:
    try:
        yield from response.stream(CHUNK)  # type: ignore[attr-defined]
    finally:
        response.close()  # type: ignore[attr-defined]
        response.release_conn()  # type: ignore[attr-defined]


def content_disposition(filename: str, disposition: str = "attachment") -> str:
    """A Content-Disposition value safe for any file name (RFC 6266 / RFC 5987)."""
    from urllib.parse import quote

    ascii_name = (
        "".join(ch if 0x20 <= ord(ch) < 0x7F and ch not in '"\\' else "_" for ch in filename)
        or "attachment"
    )
    return f"{disposition}; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"
