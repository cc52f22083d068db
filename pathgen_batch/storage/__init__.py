"""Storage: every artefact of the project (slides, features, bundles, cohorts, output tables)
is read and written through here, so each can live in a local folder or on S3.

A location is ``s3://bucket/key`` or a local path (``file://`` accepted). :func:`store_for`
picks the :class:`Store` once from the URI (:class:`LocalStore` or :class:`S3Store`, the only
code that talks to boto3); the module-level functions (:func:`read_bytes`,
:func:`write_bytes`, :func:`create_exclusive`, ...) are the short form of its methods. Every
write is whole (local: temporary name then rename; S3: one PUT or a completed multipart
upload) and :func:`create_exclusive` has exactly one winner. Which credentials reach which
location (one profile for the archive, another for the output) is
:mod:`pathgen_batch.storage.credentials`. Slide archives (listing,
manifests, staging) are in :mod:`pathgen_batch.storage.archive`.
"""

from pathgen_batch.storage.archive import (
    MANIFEST_SUFFIXES,
    ArchiveListing,
    SkippedFile,
    SlideSource,
    list_archive,
    read_manifest,
    scan_archive,
    stage,
)
from pathgen_batch.storage.base import DEFAULT_RETRY, RetryPolicy, Staged, StorageError, Store
from pathgen_batch.storage.credentials import WORKER_ENV, profile_for, use_profiles
from pathgen_batch.storage.files import (
    arrow_filesystem,
    check_access,
    create_exclusive,
    delete,
    delete_prefix,
    exists,
    list_files,
    read_bytes,
    sha256,
    stage_file,
    store_for,
    upload_file,
    write_bytes,
)
from pathgen_batch.storage.local import LocalStore
from pathgen_batch.storage.locations import (
    SLIDE_EXTENSIONS,
    basename,
    check_run_id,
    check_slide_id,
    is_s3,
    join,
    local_path,
    normalise,
    redact,
    scratch_name,
    slide_id_for,
    split_s3,
)
from pathgen_batch.storage.s3 import S3Store

__all__ = [
    "DEFAULT_RETRY",
    "MANIFEST_SUFFIXES",
    "SLIDE_EXTENSIONS",
    "WORKER_ENV",
    "ArchiveListing",
    "LocalStore",
    "RetryPolicy",
    "S3Store",
    "SkippedFile",
    "SlideSource",
    "Staged",
    "StorageError",
    "Store",
    "arrow_filesystem",
    "basename",
    "check_access",
    "check_run_id",
    "check_slide_id",
    "create_exclusive",
    "delete",
    "delete_prefix",
    "exists",
    "is_s3",
    "join",
    "list_archive",
    "list_files",
    "local_path",
    "normalise",
    "profile_for",
    "read_bytes",
    "read_manifest",
    "redact",
    "scan_archive",
    "scratch_name",
    "sha256",
    "slide_id_for",
    "split_s3",
    "stage",
    "stage_file",
    "store_for",
    "upload_file",
    "use_profiles",
    "write_bytes",
]
