"""First-start preparation of a host, run by `manage.py serve` before anything else (and
by anything else that needs it): the data directory, the static folder and a persistent
secret key. Settings only read these, so importing them has no side effects."""
from __future__ import annotations

import os
import secrets
from pathlib import Path

from django.conf import settings


def prepare_data_dir() -> list[Path]:
    """Create the data folders and, unless SECRET_KEY is set, the secret key file (mode
    600). Returns what it created."""
    created = []
    for folder in (Path(settings.DATA_DIR), Path(settings.JOBS_DIR), Path(settings.STATIC_ROOT)):
        if not folder.exists():
            folder.mkdir(parents=True, exist_ok=True)
            created.append(folder)
    key_file = Path(settings.SECRET_KEY_FILE)
    if not os.environ.get("SECRET_KEY") and not os.environ.get("SECRET_KEY_FILE") and not key_file.exists():
        try:
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process wrote it first
            return created
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(50))
        created.append(key_file)
    return created
