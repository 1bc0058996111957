"""A worker that starts again requeues the dataset builds its killed predecessor was
running on this host (Celery would not redeliver their messages for days)."""
from __future__ import annotations

import os
import subprocess

import pytest
from django.conf import settings
from django.utils import timezone

from tests.factories import make_dataset
from workers.models import Job, JobEvent
from workers.runner import recover_lost_runs

pytestmark = pytest.mark.django_db


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_builds_of_a_lost_process_are_requeued_and_live_ones_kept(owner) -> None:
    lost = make_dataset(owner, name="lost", status="running")
    alive = make_dataset(owner, name="alive", status="running")
    elsewhere = make_dataset(owner, name="elsewhere", status="running")
    now = timezone.now()
    Job.objects.filter(pk=lost.pk).update(runner_host=settings.HOST_NAME, runner_pid=dead_pid(), started_at=now)
    Job.objects.filter(pk=alive.pk).update(runner_host=settings.HOST_NAME, runner_pid=os.getpid(), started_at=now)
    Job.objects.filter(pk=elsewhere.pk).update(runner_host="another-host", runner_pid=dead_pid(), started_at=now)
    assert recover_lost_runs() == 1
    assert Job.objects.get(pk=lost.pk).status == "queued"
    event = JobEvent.objects.filter(job_id=lost.pk, status="queued").get()
    assert event.message.startswith("Interrupted: the worker process running it (pid ")
    assert event.message.endswith("is gone. Building again from the start.")
    assert Job.objects.get(pk=alive.pk).status == "running"
    assert Job.objects.get(pk=elsewhere.pk).status == "running"  # its own host's worker recovers it
