"""`manage.py prepare`: the data directory, static folder and secret key (workers/setup.py)
and the database migrations, for deployments that start the processes themselves
(docker-compose); `manage.py serve` does the same before it starts anything."""
from __future__ import annotations

from typing import Any

from django.core.management import call_command
from django.core.management.base import BaseCommand

from workers.setup import prepare_data_dir


class Command(BaseCommand):
    help = "Create the data folders and secret key if missing, and migrate the database."

    def handle(self, *args: Any, **opts: Any) -> None:
        for path in prepare_data_dir():
            self.stdout.write(f"created {path}")
        call_command("migrate", interactive=False, verbosity=0)
