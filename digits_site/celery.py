"""The Celery app. Queues: `datasets` (builds, their own worker, never behind training) and
`device.<uuid>`, one per device, consumed only by the worker pinned to it: the scheduler
(workers/scheduler.py) places every rank of a training job on a device's own queue."""
from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "digits_site.settings")

app = Celery("digits_site")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# Worker signals: device queues, registration, heartbeat (needs the app configured first).
import workers.worker_hooks  # noqa: E402, F401
