"""Where file contents live: the interface (`base`), the data directory (`disk`) and an
S3 bucket (`s3`), chosen by `make_blob_store` from the settings."""

from __future__ import annotations

from filecask.settings import Settings
from filecask.storage.blobs.base import (
    BlobStore,
    Leftover,
    OpenBlob,
    StagedBlob,
    StoredBlob,
)

__all__ = [
    "BlobStore",
    "Leftover",
    "OpenBlob",
    "StagedBlob",
    "StoredBlob",
    "make_blob_store",
]


def make_blob_store(settings: Settings, *, reap_on_open: bool) -> BlobStore:
    """The store `settings.storage` names: the data directory, or an S3 bucket. (An S3
    store never reaps on open: see `storage.blobs.s3`.)"""
    if settings.storage is None:
        from filecask.storage.blobs.disk import DiskBlobStore

        return DiskBlobStore(settings.data_dir, reap_on_open=reap_on_open)
    from filecask.storage.blobs.s3 import S3BlobStore

    return S3BlobStore(settings)
