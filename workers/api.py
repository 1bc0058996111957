"""Shared REST pieces: job output fields, the error handler, the console listing."""
from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import FileResponse, Http404
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView, exception_handler

from .models import Job, JobEvent, JobKind, JobStatus, Priority
from .selectors import job_list
from .services import JobError


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """JobError carries a message the user can act on: a 400 with {"detail": ...}."""
    if isinstance(exc, JobError):
        return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
    return exception_handler(exc, context)


def job_log_response(job: Job, *, download: bool) -> FileResponse:
    """The job's whole log file, streamed (the page and the API both serve it)."""
    try:
        handle = job.log_path.open("rb")
    except FileNotFoundError:
        raise Http404("This job has no log yet.") from None
    return FileResponse(handle, content_type="text/plain; charset=utf-8", as_attachment=download, filename=f"job-{job.pk}.log")


def require_owner(job: Job, user) -> None:  # noqa: ANN001
    if not job.can_modify(user):
        raise PermissionDenied("Only the owner of this job (or an admin) can change it.")


class JobEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = JobEvent
        fields = ["status", "at", "message"]


class JobEditSerializer(serializers.Serializer):
    """What anyone may change on their job at any time (PATCH on datasets and models)."""

    name = serializers.CharField(max_length=200, required=False)
    group = serializers.CharField(max_length=100, required=False, allow_blank=True)
    notes = serializers.CharField(required=False, allow_blank=True)


class JobSerializer(serializers.ModelSerializer):
    owner = serializers.CharField(source="owner.username")
    duration_seconds = serializers.FloatField(read_only=True)
    timeline = JobEventSerializer(source="events", many=True, read_only=True)
    priority = serializers.SerializerMethodField()
    queue = serializers.SerializerMethodField(help_text="While queued: position, jobs ahead and why it waits.")
    devices = serializers.SerializerMethodField(help_text="The devices of its current (or last) run, by rank.")

    class Meta:
        model = Job
        fields = [
            "id", "kind", "name", "group", "notes", "owner", "status", "progress", "eta_seconds", "error",
            "created_at", "started_at", "finished_at", "duration_seconds", "priority", "devices_requested",
            "multi_host", "held", "queue", "devices", "timeline",
        ]

    def get_priority(self, job: Job) -> str:
        return Priority(job.priority).name.lower()

    def get_queue(self, job: Job) -> dict[str, Any] | None:
        if job.kind != JobKind.MODEL or job.status != JobStatus.QUEUED:
            return None
        from .scheduler import wait_reason

        return wait_reason(job)

    def get_devices(self, job: Job) -> list[str]:
        from .selectors import job_devices

        return [a.device.label for a in job_devices(job)]


class JobListApi(APIView):
    """The console: every job, newest first (filter with ?kind=dataset|model, ?status=..., ?group=...)."""

    class OutputSerializer(JobSerializer):
        class Meta(JobSerializer.Meta):
            fields = [f for f in JobSerializer.Meta.fields if f not in ("timeline", "queue", "devices")]

    @extend_schema(
        parameters=[
            OpenApiParameter("kind", str, enum=["dataset", "model"]), OpenApiParameter("status", str),
            OpenApiParameter("group", str),
        ],
        responses=OutputSerializer(many=True),
    )
    def get(self, request):  # noqa: ANN001, ANN201
        q = request.query_params
        jobs = job_list(kind=q.get("kind"), status=q.get("status"), group=q.get("group"))
        return Response(self.OutputSerializer(jobs[:500], many=True).data)


class JobLogApi(APIView):
    """A job's raw log as text/plain (?download=1 for an attachment)."""

    @extend_schema(responses={(200, "text/plain"): str})
    def get(self, request, pk: int):  # noqa: ANN001, ANN201
        return job_log_response(get_object_or_404(Job, pk=pk), download=request.query_params.get("download") == "1")
