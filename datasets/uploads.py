"""Resumable archive uploads: the browser (or a script) announces a file, then sends it
in chunks at explicit offsets. A failed chunk is simply sent again; after a page reload
the client asks for the received offset and goes on from there. Bytes go straight to
disk, never whole into memory.
"""
from __future__ import annotations

import tarfile
import uuid
import zipfile
from collections.abc import Callable

from django.conf import settings
from django.contrib.auth.models import AnonymousUser, User
from django.core.files.uploadedfile import UploadedFile

from workers.errors import JobError

from .models import Upload
from .sources import ARCHIVE_SUFFIXES

READ_BLOCK = 1 << 20


def upload_start(*, owner: User, filename: str, size: int) -> Upload:
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1][:255]
    if not name.lower().endswith(ARCHIVE_SUFFIXES):
        raise JobError(f"Upload a {', '.join(ARCHIVE_SUFFIXES)} archive of class folders (got {name or 'no name'}).", field="archive")
    limit = settings.MAX_UPLOAD_ARCHIVE_BYTES
    if size <= 0:
        raise JobError("The archive is empty.", field="archive")
    if size > limit:
        raise JobError(
            f"The archive is {size / 2**20:.0f} MiB; the limit is {limit / 2**20:.0f} MiB "
            "(DIGITS_MAX_UPLOAD_ARCHIVE_BYTES). Put the images in a server folder under a data root instead.",
            field="archive",
        )
    upload = Upload.objects.create(owner=owner, filename=name, size=size)
    upload.path.parent.mkdir(parents=True, exist_ok=True)
    upload.path.write_bytes(b"")
    return upload


def upload_append(upload: Upload, offset: int, read: Callable[[int], bytes], length: int) -> Upload:
    """Append `length` bytes, read from `read`, at `offset`, which must be the number of
    bytes already received (the client resumes from there after a failure)."""
    if upload.complete:
        raise JobError("This upload is already complete.")
    if offset != upload.received:
        raise JobError(f"Expected the chunk at offset {upload.received}, got {offset}. Resume from {upload.received}.")
    if length > settings.MAX_UPLOAD_CHUNK_BYTES:
        raise JobError(f"Send chunks of at most {settings.MAX_UPLOAD_CHUNK_BYTES >> 20} MiB.")
    if offset + length > upload.size:
        raise JobError(f"The chunk goes past the announced size of {upload.size} bytes.")
    written = 0
    with upload.path.open("r+b") as out:
        # Chunks that failed half-way left bytes beyond `received`: overwrite them.
        out.seek(offset)
        while written < length:
            block = read(min(READ_BLOCK, length - written))
            if not block:
                break
            out.write(block)
            written += len(block)
        out.truncate(offset + written)
    if written != length:
        raise JobError(f"The chunk ended after {written} of {length} bytes; send it again from offset {offset}.")
    # Only one request may advance a given offset (a filtered update is atomic).
    if not Upload.objects.filter(pk=upload.pk, received=offset).update(received=offset + length):
        raise JobError("Another request sent this chunk at the same time; ask for the offset and resume.")
    upload.received = offset + length
    if upload.received == upload.size:
        _finish(upload)
    return upload


def upload_whole(*, owner: User, file: UploadedFile) -> Upload:
    """A whole archive sent in one request (already spooled to disk by Django): stored
    through the same chunked path, so it gets the same checks. Nothing is kept on failure."""
    upload = upload_start(owner=owner, filename=file.name or "", size=file.size or 0)
    file.seek(0)
    try:
        while upload.received < upload.size:
            upload_append(upload, upload.received, file.read, min(settings.MAX_UPLOAD_CHUNK_BYTES, upload.size - upload.received))
    except JobError:
        if Upload.objects.filter(pk=upload.pk).exists():
            upload_delete(upload)
        raise
    return upload


def _finish(upload: Upload) -> None:
    """Check the whole file is an archive we can read before anyone builds from it."""
    path = upload.path
    ok = zipfile.is_zipfile(path)
    if not ok:
        try:
            with tarfile.open(path, "r:*") as tf:
                ok = tf.next() is not None
        except (tarfile.TarError, OSError, EOFError):
            ok = False
    if not ok:
        path.unlink(missing_ok=True)
        upload.delete()
        raise JobError(f"{upload.filename} is not a readable zip or tar archive; check the file and upload it again.")
    upload.complete = True
    upload.save(update_fields=["complete"])


def upload_get(upload_id: str, owner: User | AnonymousUser) -> Upload:
    try:
        return Upload.objects.get(pk=uuid.UUID(str(upload_id)), owner_id=owner.pk)
    except (ValueError, Upload.DoesNotExist):
        raise JobError("No such upload (it may have been deleted); upload the archive again.", field="upload") from None


def upload_for_build(upload_id: str, user: User) -> Upload:
    """A complete upload that `user` may build from: their own, or one that a dataset they
    can see (any dataset: teammates see them all) was built from, for clones."""
    try:
        upload = Upload.objects.get(pk=uuid.UUID(str(upload_id)))
    except (ValueError, Upload.DoesNotExist):
        raise JobError("Upload an archive first (no upload was given, or it was deleted).", field="upload") from None
    if upload.owner_id != user.pk and not upload.datasets.exists():
        raise JobError("That upload belongs to someone else.", field="upload")
    if not upload.complete:
        raise JobError(f"The upload of {upload.filename} is not finished ({upload.received} of {upload.size} bytes).", field="upload")
    return upload


def upload_delete(upload: Upload) -> None:
    path = upload.path
    upload.delete()
    path.unlink(missing_ok=True)


def upload_release(upload: Upload) -> None:
    """After a dataset is deleted: remove its archive when no other dataset uses it."""
    if not upload.datasets.exists():
        upload_delete(upload)
