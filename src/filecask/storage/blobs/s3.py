"""Blobs as objects in an S3-compatible bucket (`FILECASK_STORAGE=s3://bucket/prefix`).

Layout under the prefix:
- `store/ab/<sha256>`: the blobs, the same fan-out as on disk (fsck judges keys the same);
- `tmp/upload-<random>`: scratch of uploads being staged (one object, or a multipart upload
  in progress under that key);
- `tmp/commit-<sha256>`: an empty object recording a commit in progress until `settle`;
- `quarantine/...`: what fsck moved out of the store.

How the disk store's guarantees carry over:
- An upload streams into a multipart upload at a scratch key, hashed as it streams; only
  one part (plus the chunk just received) is held in memory. Nothing is visible under a
  hash until `commit` copies the finished scratch object there server-side, so an object
  under `store/` is always complete, and its hash was computed from the very bytes sent.
- Every failure or cancellation of a stage aborts the multipart upload and deletes the
  scratch object, in a shielded task that outlives a client hanging up.
- There is no flock to tell a live upload's scratch from a dead one's, and several
  instances share the bucket: scratch (objects and unfinished multipart uploads) is
  abandoned when it is older than `LEFTOVER_GRACE`, the rule S3 lifecycle rules apply,
  and it is only ever removed by fsck/gc, never when a server starts.
- A commit intent is resolved under the hash's lock (`FileStore.recover`), which every
  commit holds until it settles, so an intent seen by another instance is either settled
  by the time the lock is ours, or its writer is gone.

Errors: a missing key is NotFound (FileNotFoundError in `digest`, as fsck expects of a
file); an unreachable endpoint, a 5xx or a throttle is ServiceUnavailable (503). Messages
name the operation and S3's error code, never the endpoint's credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import logging
import os
import re
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
    ResponseStreamingError,
)

from filecask.errors import InsufficientStorage, NotFound, PayloadTooLarge, ServiceUnavailable
from filecask.hashes import StreamHasher, fanout
from filecask.settings import Settings
from filecask.storage.blobs.base import Leftover, OpenBlob, StagedBlob, StoredBlob

if TYPE_CHECKING:
    from types_aiobotocore_s3.client import S3Client
    from types_aiobotocore_s3.type_defs import CopySourceTypeDef

log = logging.getLogger("filecask.s3")

HEAD_BYTES = 8192
READ_CHUNK = 256 << 10
"""Largest piece a ranged read hands out; the next one is read only once it is written."""
READ_WINDOW = 1 << 20
"""Bytes one ranged GetObject fetches for a download (held in memory until written)."""
POOL_CONNECTIONS = 64
"""HTTP connections to S3 per process (botocore's default of 10 is easily used up)."""
READY_TIMEOUT = 5.0
"""Seconds /readyz waits for the bucket before it calls the store unusable."""
DIGEST_CHUNK = 1 << 20
COPY_LIMIT = 5 << 30
"""Largest object CopyObject copies in one request; larger ones go by UploadPartCopy."""
COPY_PART = 1 << 30
"""Part size of a multipart server-side copy (S3 allows 5 MiB to 5 GiB, 10,000 parts)."""
MAX_PARTS = 10_000
LEFTOVER_GRACE = 24 * 3600.0
"""Seconds after which scratch is taken for abandoned (no lock can tell; see the module)."""
PRESIGN_MAX = 7 * 24 * 3600
"""SigV4 presigned URLs are valid at most seven days."""
SCRATCH_PREFIX = "upload-"
INTENT_PREFIX = "commit-"
MULTIPART_MARK = "?uploadId="
"""Joins a key and an upload id in the name of a leftover multipart upload."""
_HASH = re.compile(r"[0-9a-f]{64}")
_MISSING = frozenset({"NoSuchKey", "NotFound", "NoSuchUpload", "404"})
_UNAVAILABLE = frozenset(
    {
        "SlowDown",
        "ServiceUnavailable",
        "InternalError",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "Throttling",
        "ThrottlingException",
        "NoSuchBucket",
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
    }
)
_FULL = frozenset({"XMinioStorageFull", "QuotaExceeded", "507"})
"""The store has no room (MinIO, Ceph RGW quotas): 507, as a full disk is."""
"""Codes that mean the store cannot be used right now (or at all, as configured): 503."""


class S3BlobStore:
    """The `BlobStore` protocol over one aiobotocore client, opened in `open`."""

    gives_fds = False

    def __init__(self, settings: Settings) -> None:
        bucket = settings.s3_bucket
        if bucket is None:
            raise ValueError("S3BlobStore needs storage = s3://bucket/prefix")
        self.settings = settings
        self.bucket = bucket
        self.prefix = settings.s3_prefix
        self.store_prefix = self.prefix + "store/"
        self.tmp_prefix = self.prefix + "tmp/"
        self.quarantine_prefix = self.prefix + "quarantine/"
        # S3 takes at most MAX_PARTS parts: the largest allowed upload must fit in them.
        self.part_size = max(settings.s3_part_size, -(-settings.max_upload_size // MAX_PARTS))
        self.copy_limit = COPY_LIMIT
        self.copy_part = COPY_PART
        self.leftover_grace = LEFTOVER_GRACE
        self.tmp_dir = settings.tmp_dir
        """Local: resumable uploads' partial files stay on this machine until finished."""
        self._stack = contextlib.AsyncExitStack()
        self._client: S3Client | None = None
        self._intents: set[str] = set()
        """Scratch keys whose commit wrote an intent that `settle` must remove."""
        self._cleanups: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ life cycle

    async def open(self) -> None:
        """Open the client. Nothing is reaped: scratch is judged by age, by fsck and gc."""
        session = get_session()
        settings = self.settings
        config = AioConfig(
            signature_version="s3v4",
            # Most S3-compatible servers (MinIO, Ceph) want path-style URLs; AWS decides.
            s3={
                "addressing_style": "path" if settings.s3_endpoint_url else "auto",
                # UNSIGNED-PAYLOAD: botocore would otherwise SHA-256 every part a second time
                # inside the request signer, on the event loop (ms per 8 MiB part); the
                # content is hashed already, off the loop, and checked before it is named.
                "payload_signing_enabled": False,
            },
            max_pool_connections=POOL_CONNECTIONS,
            retries={"mode": "standard", "max_attempts": 3},
            connect_timeout=10,
            read_timeout=60,
            # Checksums only where S3 demands them: the trailing-checksum encoding newer
            # botocore sends by default is not understood by many S3-compatible servers.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        await asyncio.get_running_loop().run_in_executor(None, self._make_local_dirs)
        client = session.create_client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            region_name=settings.s3_region or "us-east-1",
            aws_access_key_id=settings.s3_access_key_id,
            aws_secret_access_key=settings.s3_secret_access_key,
            config=config,
        )
        self._client = await self._stack.enter_async_context(client)

    def _make_local_dirs(self) -> None:
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

    async def close(self) -> None:
        """Let cleanups still running (aborts of cut uploads) finish, then close."""
        if self._cleanups:
            await asyncio.wait(set(self._cleanups), timeout=30)
        self._client = None
        await self._stack.aclose()

    @property
    def client(self) -> S3Client:
        if self._client is None:
            raise RuntimeError("the S3 blob store is not open")
        return self._client

    def blob_key(self, hex_hash: str) -> str:
        return self.store_prefix + fanout(hex_hash)

    def _intent_key(self, hex_hash: str) -> str:
        return f"{self.tmp_prefix}{INTENT_PREFIX}{hex_hash}"

    def _relative(self, key: str) -> str:
        return key.removeprefix(self.prefix)

    # ------------------------------------------------------------------ staging

    async def stage(
        self, chunks: AsyncIterator[bytes], *, max_size: int, reserve: int = 0
    ) -> StagedBlob:
        """Stream `chunks` into a scratch object, hashing them.

        `reserve` (bytes of local disk to keep free) does not apply: nothing is written to
        this machine's disk, and a bucket has no free space to keep."""
        upload = _Upload(self, f"{self.tmp_prefix}{SCRATCH_PREFIX}{secrets.token_hex(16)}")
        hasher = StreamHasher()
        head = b""
        pending: list[bytes] = []
        buffered = 0
        received = 0
        try:
            async for chunk in chunks:
                received += len(chunk)
                if received > max_size:
                    raise PayloadTooLarge(
                        f"The upload exceeds the limit of {max_size} bytes.", limit=max_size
                    )
                if len(head) < HEAD_BYTES:
                    head += chunk[: HEAD_BYTES - len(head)]
                pending.append(chunk)
                buffered += len(chunk)
                if buffered >= self.part_size:
                    await upload.part(hasher, _joined(pending))
                    buffered = 0
            await upload.finish(hasher, _joined(pending))
        except BaseException:
            await self._shielded(upload.abort())
            raise
        return StagedBlob(hasher.hexdigest, hasher.size, hasher.crc32, bytes(head), upload.key)

    async def adopt(self, fd: int, path: Path) -> StagedBlob:
        """Upload a finished resumable upload's local file (read in part-size pieces in a
        worker thread, hashed there) to a scratch object; then unlink the file and close
        `fd`. If this fails, `fd` is left open for the caller to close, as on disk."""
        if path.parent != self.tmp_dir:
            raise ValueError(f"{path} is not in {self.tmp_dir}")
        loop = asyncio.get_running_loop()
        upload = _Upload(self, f"{self.tmp_prefix}{SCRATCH_PREFIX}{secrets.token_hex(16)}")
        hasher = StreamHasher()
        try:
            head = await loop.run_in_executor(None, os.pread, fd, HEAD_BYTES, 0)
            position = 0
            while True:
                piece = await loop.run_in_executor(None, os.pread, fd, self.part_size, position)
                position += len(piece)
                if len(piece) < self.part_size:
                    await upload.finish(hasher, piece)
                    break
                await upload.part(hasher, piece)
            await loop.run_in_executor(None, os.unlink, path)
        except BaseException:
            await self._shielded(upload.abort())
            raise
        await loop.run_in_executor(None, os.close, fd)
        return StagedBlob(hasher.hexdigest, hasher.size, hasher.crc32, head, upload.key)

    async def _shielded(self, cleanup: Awaitable[None]) -> None:
        """Run `cleanup` to its end even if the caller is cancelled again meanwhile; a
        failure is logged (the scratch is then a leftover for gc), never raised over the
        error that caused the cleanup."""

        async def run() -> None:
            try:
                await cleanup
            except Exception:
                log.warning("could not clean up S3 scratch; gc will remove it", exc_info=True)

        task = asyncio.ensure_future(run())
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(task)

    # ------------------------------------------------------------------ commits

    async def commit(self, staged: StagedBlob) -> bool:
        """Under the caller's hash lock: copy the scratch object under its hash (server
        side), with an intent object recording the commit until `settle`."""
        scratch = str(staged.scratch)
        try:
            if await self.exists(staged.hash):
                await self._delete_key(scratch)
                return False
            self._intents.add(scratch)  # before the write: a lost reply still counts
            await self._put_empty(self._intent_key(staged.hash))
            await self._copy(scratch, self.blob_key(staged.hash), staged.size)
            await self._delete_key(scratch)
            return True
        except BaseException:
            await self._shielded(self._undo_commit(staged, scratch))
            raise

    async def _undo_commit(self, staged: StagedBlob, scratch: str) -> None:
        """A commit failed half-way. We hold the hash's lock and the blob was absent when we
        looked, so a blob there now is ours: remove it, then the intent and the scratch."""
        if scratch in self._intents:
            self._intents.discard(scratch)
            await self._delete_key(self.blob_key(staged.hash))
            await self._delete_key(self._intent_key(staged.hash))
        await self._delete_key(scratch)

    async def settle(self, staged: StagedBlob) -> None:
        """Remove the intent. A failure is only logged: the reference is stored (or the
        blob deleted again) already, and a stale intent is resolved by `recover`."""
        scratch = str(staged.scratch)
        if scratch not in self._intents:
            return
        self._intents.discard(scratch)
        try:
            await self._delete_key(self._intent_key(staged.hash))
        except Exception:
            log.warning("could not remove the commit record of %s", staged.hash, exc_info=True)

    async def discard(self, staged: StagedBlob) -> None:
        try:
            await self._delete_key(str(staged.scratch))
        except Exception:
            log.warning("could not remove scratch %s; gc will", staged.scratch, exc_info=True)

    async def interrupted_commits(self) -> list[str]:
        """Every intent in the bucket: whether its writer lives cannot be known, but each is
        resolved under the hash's lock, which a live writer holds until it settles."""
        hashes = []
        async for item in self._list(self.tmp_prefix + INTENT_PREFIX):
            hex_hash = item["Key"].rpartition("/")[2].removeprefix(INTENT_PREFIX)
            if _HASH.fullmatch(hex_hash):
                hashes.append(hex_hash)
        return sorted(hashes)

    async def commit_pending(self, hex_hash: str) -> bool:
        return await self._key_exists(self._intent_key(hex_hash))

    async def forget_commit(self, hex_hash: str) -> None:
        await self._delete_key(self._intent_key(hex_hash))

    # ------------------------------------------------------------------ reading

    async def delete(self, hex_hash: str) -> None:
        await self._delete_key(self.blob_key(hex_hash))

    async def open_blob(self, hex_hash: str) -> OpenBlob:
        """Its size and time (HeadObject); there is no fd: read it with `read_range`."""
        with _s3_errors("HeadObject", missing=_not_found(hex_hash)):
            head = await self.client.head_object(Bucket=self.bucket, Key=self.blob_key(hex_hash))
        return OpenBlob(None, head["ContentLength"], head["LastModified"].timestamp())

    async def read_blob(self, hex_hash: str) -> bytes:
        with _s3_errors("GetObject", missing=_not_found(hex_hash)):
            response = await self.client.get_object(Bucket=self.bucket, Key=self.blob_key(hex_hash))
            async with response["Body"] as body:
                data: bytes = await body.read()
        return data

    def blob_opener(self) -> Callable[[str], int] | None:
        """No local files: blobs are read over the network."""
        return None

    async def read_range(
        self, hex_hash: str, offset: int, length: int
    ) -> AsyncGenerator[bytes, None]:
        """`length` bytes from `offset`, as ranged GetObjects of at most READ_WINDOW bytes,
        each read in full before it is handed out. A slow client therefore holds one window
        of memory but never an S3 connection: were a response body left open while the
        client dawdles, a few slow downloads would take every connection of the pool and
        stall every S3 call of the process. EOFError if the object is shorter."""
        end = offset + length
        while offset < end:
            size = min(READ_WINDOW, end - offset)
            window = await self._read_window(hex_hash, offset, size)
            if len(window) != size:
                raise EOFError(f"blob {hex_hash} ended {end - offset - len(window)} bytes early")
            offset += size
            for start in range(0, size, READ_CHUNK):
                yield window[start : start + READ_CHUNK]

    async def _read_window(self, hex_hash: str, offset: int, size: int) -> bytes:
        with _s3_errors("GetObject", missing=_not_found(hex_hash)):
            response = await self.client.get_object(
                Bucket=self.bucket,
                Key=self.blob_key(hex_hash),
                Range=f"bytes={offset}-{offset + size - 1}",
            )
            async with response["Body"] as body:
                data: bytes = await body.read()
        return data

    async def download_url(
        self, hex_hash: str, *, content_type: str, disposition: str
    ) -> str | None:
        """A presigned GetObject URL (`--s3-presign` seconds), answering with our own
        Content-Type and Content-Disposition; None when downloads stream through us."""
        seconds = min(int(self.settings.s3_presign), PRESIGN_MAX)
        if seconds <= 0:
            return None
        params = {
            "Bucket": self.bucket,
            "Key": self.blob_key(hex_hash),
            "ResponseContentType": content_type,
            "ResponseContentDisposition": disposition,
        }
        with _s3_errors("presign"):
            return await self.client.generate_presigned_url(
                "get_object", Params=params, ExpiresIn=seconds
            )

    async def exists(self, hex_hash: str) -> bool:
        return await self._key_exists(self.blob_key(hex_hash))

    async def ready(self) -> bool:
        """The bucket answers (HeadBucket), and resumable uploads have their local dir."""
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                await self.client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError, TimeoutError):
            return False
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, os.access, self.tmp_dir, os.W_OK)

    async def holds_blobs(self) -> bool:
        """Any object under `store/`: the start-up guard against a lost database."""
        with _s3_errors("ListObjectsV2"):
            page = await self.client.list_objects_v2(
                Bucket=self.bucket, Prefix=self.store_prefix, MaxKeys=1
            )
        return bool(page.get("KeyCount", len(page.get("Contents", []))))

    async def iter_blobs(self) -> AsyncIterator[StoredBlob]:
        """Every object under `store/`, in key order (S3 lists in UTF-8 binary order)."""
        async for item in self._list(self.store_prefix):
            key = item["Key"].removeprefix(self.store_prefix)
            yield StoredBlob(key, item["Size"], item["LastModified"].timestamp())

    async def digest(self, key: str) -> tuple[str, int]:
        """SHA-256 and size, re-read in full; FileNotFoundError if it is gone (fsck's
        contract with a file), OSError if it cannot be read."""
        sha = hashlib.sha256()
        size = 0
        try:
            with _s3_errors("GetObject", missing=FileNotFoundError(key)):
                response = await self.client.get_object(
                    Bucket=self.bucket, Key=self.store_prefix + key
                )
                async with response["Body"] as body:
                    while chunk := await body.read(DIGEST_CHUNK):
                        sha.update(chunk)
                        size += len(chunk)
        except ClientError as exc:
            raise OSError(f"S3 GetObject failed: {_code(exc)}") from exc
        return sha.hexdigest(), size

    async def quarantine(self, key: str) -> str:
        """Copy the object under `quarantine/` (never over an earlier find), then delete it."""
        source = self.store_prefix + key
        with _s3_errors("HeadObject", missing=FileNotFoundError(key)):
            size = (await self.client.head_object(Bucket=self.bucket, Key=source))["ContentLength"]
        name = key.replace("/", "_")
        target = self.quarantine_prefix + name
        n = 0
        while await self._key_exists(target):
            n += 1
            target = f"{self.quarantine_prefix}{name}.{n}"
        await self._copy(source, target, size)
        await self._delete_key(source)
        return f"s3://{self.bucket}/{target}"

    # ------------------------------------------------------------------ leftovers

    async def leftovers(self) -> list[Leftover]:
        """Scratch objects and unfinished multipart uploads older than `leftover_grace`
        (a multipart copy cut under `store/` too); names are relative to the prefix."""
        cutoff = time.time() - self.leftover_grace
        found = []
        async for item in self._list(self.tmp_prefix + SCRATCH_PREFIX):
            mtime = item["LastModified"].timestamp()
            if mtime <= cutoff:
                found.append(Leftover(self._relative(item["Key"]), item["Size"], mtime))
        for prefix in (self.tmp_prefix, self.store_prefix, self.quarantine_prefix):
            async for key, upload_id, initiated in self._multipart_uploads(prefix):
                if initiated.timestamp() <= cutoff:
                    size = await self._parts_size(key, upload_id)
                    name = f"{self._relative(key)}{MULTIPART_MARK}{upload_id}"
                    found.append(Leftover(name, size, initiated.timestamp()))
        return sorted(found, key=lambda leftover: leftover.name)

    async def remove_leftover(self, leftover: Leftover) -> bool:
        """Abort the multipart upload, or delete the scratch object if it is still there
        and still older than the grace; True if it went."""
        relative, _, upload_id = leftover.name.partition(MULTIPART_MARK)
        key = self.prefix + relative
        if upload_id:
            try:
                with _s3_errors("AbortMultipartUpload", missing=FileNotFoundError(key)):
                    await self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=key, UploadId=upload_id
                    )
            except FileNotFoundError:
                return False
            return True
        try:
            with _s3_errors("HeadObject", missing=FileNotFoundError(key)):
                head = await self.client.head_object(Bucket=self.bucket, Key=key)
        except FileNotFoundError:
            return False
        if head["LastModified"].timestamp() > time.time() - self.leftover_grace:
            return False
        await self._delete_key(key)
        return True

    async def _multipart_uploads(self, prefix: str) -> AsyncIterator[tuple[str, str, datetime]]:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        while True:
            with _s3_errors("ListMultipartUploads"):
                page = await self.client.list_multipart_uploads(**kwargs)
            for upload in page.get("Uploads", []):
                yield upload["Key"], upload["UploadId"], upload["Initiated"]
            if not page.get("IsTruncated"):
                return
            kwargs["KeyMarker"] = page["NextKeyMarker"]
            kwargs["UploadIdMarker"] = page["NextUploadIdMarker"]

    async def _parts_size(self, key: str, upload_id: str) -> int:
        size = 0
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "UploadId": upload_id}
        while True:
            try:
                with _s3_errors("ListParts", missing=FileNotFoundError(key)):
                    page = await self.client.list_parts(**kwargs)
            except FileNotFoundError:  # completed or aborted meanwhile
                return size
            size += sum(part["Size"] for part in page.get("Parts", []))
            if not page.get("IsTruncated"):
                return size
            kwargs["PartNumberMarker"] = page["NextPartNumberMarker"]

    # ------------------------------------------------------------------ helpers

    async def _list(self, prefix: str) -> AsyncIterator[Any]:
        """ListObjectsV2 pages by hand (a paginator would load its model from disk on the
        event loop the first time)."""
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        while True:
            with _s3_errors("ListObjectsV2"):
                page = await self.client.list_objects_v2(**kwargs)
            for item in page.get("Contents", []):
                yield item
            if not page.get("IsTruncated"):
                return
            kwargs["ContinuationToken"] = page["NextContinuationToken"]

    async def _key_exists(self, key: str) -> bool:
        try:
            with _s3_errors("HeadObject", missing=FileNotFoundError(key)):
                await self.client.head_object(Bucket=self.bucket, Key=key)
        except FileNotFoundError:
            return False
        return True

    async def _put_empty(self, key: str) -> None:
        with _s3_errors("PutObject"):
            await self.client.put_object(Bucket=self.bucket, Key=key, Body=b"")

    async def _delete_key(self, key: str) -> None:
        """Deleting a missing key is not an error (S3 answers 204 either way)."""
        with _s3_errors("DeleteObject"):
            await self.client.delete_object(Bucket=self.bucket, Key=key)

    async def _copy(self, source: str, target: str, size: int) -> None:
        """Server-side copy: CopyObject up to `copy_limit`, UploadPartCopy above."""
        copy_source: CopySourceTypeDef = {"Bucket": self.bucket, "Key": source}
        if size <= self.copy_limit:
            with _s3_errors("CopyObject", missing=FileNotFoundError(source)):
                await self.client.copy_object(
                    Bucket=self.bucket, Key=target, CopySource=copy_source
                )
            return
        part = max(self.copy_part, -(-size // MAX_PARTS))
        with _s3_errors("CreateMultipartUpload"):
            created = await self.client.create_multipart_upload(Bucket=self.bucket, Key=target)
        upload_id = created["UploadId"]
        try:
            parts = []
            for number, start in enumerate(range(0, size, part), start=1):
                end = min(start + part, size) - 1
                with _s3_errors("UploadPartCopy", missing=FileNotFoundError(source)):
                    copied = await self.client.upload_part_copy(
                        Bucket=self.bucket,
                        Key=target,
                        UploadId=upload_id,
                        PartNumber=number,
                        CopySource=copy_source,
                        CopySourceRange=f"bytes={start}-{end}",
                    )
                parts.append({"PartNumber": number, "ETag": copied["CopyPartResult"]["ETag"]})
            with _s3_errors("CompleteMultipartUpload"):
                await self.client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=target,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},  # type: ignore[typeddict-item]
                )
        except BaseException:
            await self._shielded(self._abort(target, upload_id))
            raise

    async def _abort(self, key: str, upload_id: str) -> None:
        with (
            contextlib.suppress(FileNotFoundError),
            _s3_errors("AbortMultipartUpload", missing=FileNotFoundError(key)),
        ):
            await self.client.abort_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id
            )


class _Upload:
    """One scratch object being written: a PutObject if it fits in one part, else a
    multipart upload created with its first part."""

    def __init__(self, store: S3BlobStore, key: str) -> None:
        self.store = store
        self.key = key
        self.upload_id: str | None = None
        self.parts: list[dict[str, Any]] = []

    async def part(self, hasher: StreamHasher, data: bytes) -> None:
        """Send one part while a worker thread hashes it (both only read `data`)."""
        store = self.store
        if self.upload_id is None:
            with _s3_errors("CreateMultipartUpload"):
                created = await store.client.create_multipart_upload(
                    Bucket=store.bucket, Key=self.key
                )
            self.upload_id = created["UploadId"]
        hashing = asyncio.get_running_loop().run_in_executor(None, hasher.update, data)
        number = len(self.parts) + 1
        with _s3_errors("UploadPart"):
            sent = await store.client.upload_part(
                Bucket=store.bucket,
                Key=self.key,
                UploadId=self.upload_id,
                PartNumber=number,
                # A file object, not bytes: aiohttp sends it in pieces (a large bytes body
                # is one write it warns may stall the loop); BytesIO shares the bytes.
                Body=io.BytesIO(data),
            )
        await hashing
        self.parts.append({"PartNumber": number, "ETag": sent["ETag"]})

    async def finish(self, hasher: StreamHasher, data: bytes) -> None:
        """The rest of the body: one PutObject if no part was sent, else the last part and
        CompleteMultipartUpload."""
        store = self.store
        if self.upload_id is None:
            hashing = asyncio.get_running_loop().run_in_executor(None, hasher.update, data)
            with _s3_errors("PutObject"):
                await store.client.put_object(
                    Bucket=store.bucket,
                    Key=self.key,
                    Body=io.BytesIO(data),
                )
            await hashing
            return
        if data:
            await self.part(hasher, data)
        with _s3_errors("CompleteMultipartUpload"):
            await store.client.complete_multipart_upload(
                Bucket=store.bucket,
                Key=self.key,
                UploadId=self.upload_id,
                MultipartUpload={"Parts": self.parts},  # type: ignore[typeddict-item]
            )
        self.upload_id = None

    async def abort(self) -> None:
        """Leave nothing: abort the multipart upload and delete the object, which a
        PutObject or CompleteMultipartUpload whose reply was lost may have made."""
        if self.upload_id is not None:
            await self.store._abort(self.key, self.upload_id)
            self.upload_id = None
        await self.store._delete_key(self.key)


def _joined(pending: list[bytes]) -> bytes:
    """The chunks as one part, emptying the list: the chunks are freed as soon as the
    part exists (two copies of a part live only for the length of the join)."""
    data = b"".join(pending)
    pending.clear()
    return data


def _not_found(hex_hash: str) -> NotFound:
    return NotFound("No file with this hash.", hash=hex_hash)


def _code(exc: ClientError) -> str:
    error = exc.response.get("Error", {})
    return str(error.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode"))


@contextlib.contextmanager
def _s3_errors(operation: str, *, missing: Exception | None = None) -> Iterator[None]:
    """Translate botocore's errors into ours: a missing key into `missing` (when given), an
    unusable store into ServiceUnavailable; anything else passes unchanged."""
    try:
        yield
    except ClientError as exc:
        code = _code(exc)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in _FULL or status == 507:
            raise InsufficientStorage(
                f"The object store has no room for this upload ({operation}: {code})."
            ) from exc
        if missing is not None and code not in _UNAVAILABLE and (code in _MISSING or status == 404):
            raise missing from exc
        # NoSuchUpload (with no `missing`): a multipart upload aborted under a running
        # upload (gc/fsck past LEFTOVER_GRACE, a lifecycle rule); the client sends it again.
        if code in _UNAVAILABLE or code == "NoSuchUpload" or status >= 500 or status == 403:
            raise ServiceUnavailable(
                f"The object store cannot be used right now ({operation}: {code})."
            ) from exc
        raise
    except (
        HTTPClientError,
        ConnectionError,
        ResponseStreamingError,
        NoCredentialsError,
        PartialCredentialsError,
    ) as exc:
        raise ServiceUnavailable(
            f"The object store cannot be reached ({operation}: {type(exc).__name__})."
        ) from exc
