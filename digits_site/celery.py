"""The Celery app. Queues: `datasets` (builds), `training` (one worker per device)."""
from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "digits_site.settings")

app = Celery("digits_site")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
