"""Settings from the environment.

Every setting is read through `env()`, which also accepts `NAME_FILE` pointing at a
file that holds the value (Docker/Kubernetes secrets), so secrets never live in the repo.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path


def env(name: str, default: str = "") -> str:
    path = os.environ.get(f"{name}_FILE")
    if path:
        return Path(path).read_text().strip()
    return os.environ.get(name, default)


def env_bool(name: str, default: bool = False) -> bool:
    value = env(name, "1" if default else "0").strip().lower()
    return value in {"1", "true", "yes", "on"}


def env_paths(name: str, default: str = "") -> list[Path]:
    """A PATH-like list (entries separated by os.pathsep), resolved to absolute paths."""
    return [Path(item).expanduser().resolve() for item in env(name, default).split(os.pathsep) if item]


def persistent_secret(data_dir: Path, name: str = "secret_key") -> str:
    """Return a secret kept in the data directory, creating it (mode 600) on first use."""
    path = data_dir / name
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(50)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value)
    return value
