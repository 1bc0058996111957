"""Settings read the environment and nothing else: importing them creates no folder and
writes no secret; `manage.py prepare` (and `serve`) do that once."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
READ_KEY = (
    "import django; django.setup(); from django.conf import settings; "
    "print(settings.SECRET_KEY); print(settings.DATABASES['default']['ENGINE'])"
)


def run(args: list[str], data_dir: Path, **extra: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "SECRET_KEY", "SECRET_KEY_FILE")}
    env.update(DJANGO_SETTINGS_MODULE="digits_site.settings", DIGITS_DATA_DIR=str(data_dir), **extra)
    out = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_importing_settings_has_no_side_effects_and_prepare_makes_the_key(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = run(["-c", READ_KEY], data).split()
    assert not data.exists()  # nothing was created by importing the settings
    assert first[0].startswith("unset-") and first[1] == "django.db.backends.sqlite3"
    run(["manage.py", "prepare"], data)
    key_file = data / "secret_key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert (data / "static").is_dir() and (data / "digits.sqlite3").exists()
    # Every process now reads the same persistent key; a key from a *_FILE wins.
    assert run(["-c", READ_KEY], data).split()[0] == key_file.read_text().strip()
    secret = tmp_path / "mounted-secret"
    secret.write_text("from-a-file\n")
    assert run(["-c", READ_KEY], data, SECRET_KEY_FILE=str(secret)).split()[0] == "from-a-file"
