"""Shared REST pieces: job output fields, the error handler, the console listing."""
from __future__ import annotations

from datetime import datetime
from datetime import timezone as dt_timezone
from typing import Any, cast

from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import FileResponse, Http404
from django.db.models import QuerySet
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field, extend_schema_serializer, inline_serializer
import django_filters
from rest_framework import generics, serializers, status
from rest_framework.exceptions import ValidationError
from rest_framework.parsers import JSONParser
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import APIView, exception_handler

from . import kinds, storage
from .models import AuditEntry, Job, JobEvent, JobStatus, Priority, Visibility
from .errors import JobError
from .listing import JobFilterSet, Pagination, job_ordering, job_prefetches
from .permissions import IsStaff, current_user, visible_q
from .selectors import job_list


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """One error shape on every endpoint: `{"detail": "...", "errors": {"field": ["..."]}}`
    (`errors` when fields are to blame). Domain errors carry their own status (400, 403,
    404, 409); DRF's own (validation, authentication, permission, not found) are reshaped."""
    if isinstance(exc, JobError):
        body: dict[str, Any] = {"detail": str(exc)}
        if exc.field:
            body["errors"] = {exc.field: [str(exc)]}
        return Response(body, status=exc.status_code)
    if isinstance(exc, DjangoValidationError):
        exc = ValidationError(exc.message_dict if hasattr(exc, "error_dict") else exc.messages)
    response = exception_handler(exc, context)
    if response is not None and isinstance(exc, ValidationError):
        errors = flatten_errors(response.data)
        response.data = {"detail": summarize_errors(errors), "errors": errors}
    return response


def flatten_errors(data: Any, prefix: str = "") -> dict[str, list[str]]:
    """DRF's nested error structure as `{"field": [messages]}` (nested fields dotted)."""
    if isinstance(data, dict):
        out: dict[str, list[str]] = {}
        for key, value in data.items():
            out.update(flatten_errors(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(data, list) and any(isinstance(v, (dict, list)) for v in data):
        out = {}
        for index, value in enumerate(data):
            out.update(flatten_errors(value, f"{prefix}.{index}" if prefix else str(index)))
        return out
    messages = [str(m) for m in (data if isinstance(data, list) else [data])]
    return {prefix or "non_field_errors": messages} if messages else {}


def summarize_errors(errors: dict[str, list[str]]) -> str:
    parts = [
        messages[0] if field in ("non_field_errors", api_settings.NON_FIELD_ERRORS_KEY) else f"{field}: {messages[0]}"
        for field, messages in errors.items()
        if messages
    ]
    return "; ".join(parts) or "The request is not valid."


MAX_ID = 2**63 - 1  # what a 64-bit primary key column holds


class IdRelatedField(serializers.PrimaryKeyRelatedField):
    """A primary key that is checked to fit the column before the database sees it: a
    number too large is "does not exist", not an overflow in the driver (a 500)."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, int) and not 0 <= data <= MAX_ID:
            self.fail("does_not_exist", pk_value=data)
        return super().to_internal_value(data)


def job_log_response(job: Job, *, download: bool, offset: int = 0) -> FileResponse:
    """The job's log file from byte `offset` (the whole of it by default), streamed (the
    page and the API both serve it)."""
    if not job.log_path.exists() and job.status in JobStatus.finished():
        storage.fetch(job.log_path)  # run on another host: published when it ended
    try:
        handle = job.log_path.open("rb")
    except FileNotFoundError:
        raise Http404("This job has no log yet.") from None
    if offset:
        handle.seek(offset)
    return FileResponse(handle, content_type="text/plain; charset=utf-8", as_attachment=download, filename=f"job-{job.pk}.log")


class JobEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = JobEvent
        fields = ["status", "at", "message"]


class JobEditSerializer(serializers.Serializer):
    """What anyone may change on their job at any time (PATCH on datasets and models)."""

    name = serializers.CharField(max_length=200, required=False)
    group = serializers.CharField(max_length=100, required=False, allow_blank=True)
    notes = serializers.CharField(required=False, allow_blank=True)
    visibility = serializers.ChoiceField(choices=Visibility.choices, required=False, help_text="Who may see it: private (you and admins), team (your teams; everyone if you are in none), public.")


class QueuePlaceSerializer(serializers.Serializer):
    position = serializers.IntegerField(help_text="1: the next to start.")
    ahead = serializers.IntegerField(help_text="Jobs that would start before it.")
    reason = serializers.CharField(help_text="Why it waits.")
    estimated_start = serializers.DateTimeField(
        allow_null=True, required=False,
        help_text="When it should start, from the running jobs' ETAs and past runs of the jobs ahead; null: cannot be told.",
    )


class JobSerializer(serializers.ModelSerializer):
    owner = serializers.CharField(source="owner.username")
    duration_seconds = serializers.FloatField(read_only=True, allow_null=True, help_text="Run time; null before it starts.")
    timeline = JobEventSerializer(source="events", many=True, read_only=True)
    priority = serializers.SerializerMethodField()
    queue = serializers.SerializerMethodField(help_text="While queued: position, jobs ahead and why it waits.")
    devices = serializers.SerializerMethodField(help_text="The devices of its current (or last) run, by rank.")

    class Meta:
        model = Job
        fields = [
            "id", "kind", "name", "group", "notes", "owner", "status", "progress", "eta_seconds", "error",
            "created_at", "started_at", "finished_at", "duration_seconds", "priority", "devices_requested",
            "multi_host", "held", "time_limit_seconds", "preemptible", "stop_request", "visibility", "queue", "devices", "timeline",
        ]

    def get_priority(self, job: Job) -> str:
        return Priority(job.priority).name.lower()

    @extend_schema_field(QueuePlaceSerializer(allow_null=True))
    def get_queue(self, job: Job) -> dict[str, Any] | None:
        if job.status != JobStatus.QUEUED or job.kind not in kinds.device_kinds():
            return None
        from .scheduler import QueueView, wait_reason

        # One read of the queue and devices for a whole list (the context is shared).
        context = cast(dict[str, Any], self.context)
        if "queue_view" not in context:
            context["queue_view"] = QueueView.now()
        return QueuePlaceSerializer(wait_reason(job, context["queue_view"])).data

    def get_devices(self, job: Job) -> list[str]:
        # From the prefetched allocations in lists (workers/listing.py), a query otherwise.
        allocations = [a for a in job.allocations.all() if a.attempt == job.attempt] if job.attempt else []
        return [a.device.label for a in sorted(allocations, key=lambda a: a.rank)]


class JobFilter(JobFilterSet):
    kind = django_filters.CharFilter(help_text="dataset, model, or another registered kind.")
    ordering = job_ordering()

    class Meta:
        model = Job
        fields = ["kind"]


class JobListApi(generics.ListAPIView):
    """The console: every job, newest first, paginated; filter by kind, owner, status,
    group or name."""

    @extend_schema_serializer(component_name="JobSummary")
    class OutputSerializer(JobSerializer):
        class Meta(JobSerializer.Meta):
            fields = [f for f in JobSerializer.Meta.fields if f not in ("timeline", "queue", "devices")]

    serializer_class = OutputSerializer
    filterset_class = JobFilter
    queryset = job_list()

    def get_queryset(self) -> QuerySet[Job]:
        return job_list().filter(visible_q(self.request.user))


class JobBulkApi(APIView):
    """One action on many jobs: `{"ids": [...], "action": "abort" | "delete" | "group",
    "group": "..."}` (JSON). Each job is checked on its own; the answer lists the ids done
    and, for the others, why they were skipped (not yours, already finished, in use)."""

    parser_classes = [JSONParser]

    class InputSerializer(serializers.Serializer):
        ids = serializers.ListField(child=serializers.IntegerField(min_value=1), min_length=1, max_length=1000)
        action = serializers.ChoiceField(choices=["abort", "delete", "group"])
        group = serializers.CharField(max_length=100, required=False, allow_blank=True, default="")

    @extend_schema(request=InputSerializer, responses=inline_serializer("BulkResult", {
        "done": serializers.ListField(child=serializers.IntegerField()),
        "skipped": inline_serializer("BulkSkipped", {"id": serializers.IntegerField(), "reason": serializers.CharField()}, many=True),
    }))
    def post(self, request: Request) -> Response:
        from .services import jobs_bulk

        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        return Response(jobs_bulk(current_user(request.user), data.validated_data["ids"], data.validated_data["action"],
                                  group=data.validated_data["group"]))


class JobDetailApi(APIView):
    """One job of any kind (its kind says where its own endpoint is: /api/datasets/ID/,
    /api/models/ID/, /api/evaluations/ID/, /api/exports/ID/)."""

    @extend_schema(responses=JobSerializer)
    def get(self, request: Request, pk: int) -> Response:
        return Response(JobSerializer(get_object_or_404(job_list().prefetch_related(*job_prefetches()), pk=pk)).data)


class JobLogApi(APIView):
    """A job's raw log as text/plain (?download=1 for an attachment; ?offset=N for the bytes
    from N on, to follow a running job's log)."""

    @extend_schema(
        parameters=[OpenApiParameter("offset", int, description="start at this byte"), OpenApiParameter("download", int)],
        responses={(200, "text/plain"): str},
    )
    def get(self, request: Request, pk: int) -> FileResponse:
        raw = request.query_params.get("offset", "")
        offset = int(raw) if raw.isdecimal() else 0
        return job_log_response(get_object_or_404(Job, pk=pk), download=request.query_params.get("download") == "1", offset=offset)


# -- devices and the queue -------------------------------------------------------------


HIDDEN_NAME = "(not shared with you)"


def _device_row(row: dict[str, Any], visible: set[int] | None = None) -> dict[str, Any]:
    """One device; the name of a job `user` may not see is not given (`visible`: the
    visible job ids among those on devices; None: all)."""
    d, a = row["device"], row["allocation"]
    name = a.job_name if a is not None and (visible is None or a.job_id in visible) else HIDDEN_NAME
    return {
        "id": d.pk, "label": d.label, "host": d.host, "kind": d.kind, "index": d.index, "uuid": d.uuid, "name": d.name,
        "memory_total": d.memory_total, "enabled": d.enabled, "state": row["state"], "last_seen": d.last_seen,
        "stats": row["stats"],
        "job": {"id": a.job_id, "name": name, "owner": a.owner.username, "rank": a.rank, "world_size": a.world_size}
        if a is not None else None,
        "queued_for_it": [j.pk for j in row["asked"]],
    }


class DeviceStatsSerializer(serializers.Serializer):
    utilization = serializers.FloatField(allow_null=True, required=False, help_text="Percent.")
    memory_used = serializers.IntegerField(allow_null=True, required=False, help_text="Bytes.")
    memory_total = serializers.IntegerField(allow_null=True, required=False, help_text="Bytes.")
    temperature = serializers.FloatField(allow_null=True, required=False, help_text="°C.")
    power = serializers.FloatField(allow_null=True, required=False, help_text="W.")


class DeviceJobSerializer(serializers.Serializer):
    id = serializers.IntegerField(allow_null=True)
    name = serializers.CharField()
    owner = serializers.CharField()
    rank = serializers.IntegerField()
    world_size = serializers.IntegerField()


class DeviceSerializer(serializers.Serializer):
    """One device: its live stats, state, current job and the queued jobs asking for it."""

    id = serializers.IntegerField()
    label = serializers.CharField()  # type: ignore[assignment]  # a field named like Field.label
    host = serializers.CharField()
    kind = serializers.CharField()
    index = serializers.IntegerField()
    uuid = serializers.CharField()
    name = serializers.CharField()
    memory_total = serializers.IntegerField()
    enabled = serializers.BooleanField()
    state = serializers.ChoiceField(choices=["free", "busy", "draining", "drained", "offline"])
    last_seen = serializers.DateTimeField(allow_null=True)
    stats = DeviceStatsSerializer()
    job = DeviceJobSerializer(allow_null=True)
    queued_for_it = serializers.ListField(child=serializers.IntegerField())


def paginated(view: APIView, rows: list[dict[str, Any]], serializer: type[serializers.Serializer]) -> Response:
    """A list computed in Python (devices, the queue), paginated like every other list."""
    paginator = Pagination()
    page = paginator.paginate_queryset(rows, view.request, view=view)
    return paginator.get_paginated_response(serializer(page, many=True).data)


class DeviceListApi(APIView):
    """Every device with its live stats (utilisation %, memory bytes, °C, W), state
    (free, busy, draining, drained, offline), current job and the queued jobs asking for it."""

    pagination_class = Pagination  # read by `paginated` and by the schema

    @extend_schema(responses=DeviceSerializer(many=True))
    def get(self, request: Request) -> Response:
        from .selectors import device_board

        board = device_board()
        ids = [row["allocation"].job_id for row in board if row["allocation"] is not None]
        visible = set(Job.objects.filter(visible_q(request.user), pk__in=ids).values_list("pk", flat=True))
        return paginated(self, [_device_row(row, visible) for row in board], DeviceSerializer)


class DeviceDetailApi(APIView):
    """Admins: drain (`{"enabled": false}`) or enable a device."""

    permission_classes = [IsAuthenticated, IsStaff]

    @extend_schema_serializer(component_name="DeviceUpdate")
    class InputSerializer(serializers.Serializer):
        enabled = serializers.BooleanField()

    @extend_schema(request=InputSerializer, responses=DeviceSerializer)
    def patch(self, request: Request, pk: int) -> Response:
        from .models import Device
        from .selectors import device_board
        from .services import device_set_enabled

        device = get_object_or_404(Device, pk=pk)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        device_set_enabled(device, data.validated_data["enabled"])
        return Response(next(_device_row(r) for r in device_board() if r["device"].pk == device.pk))


class QueuedJobSerializer(serializers.Serializer):
    position = serializers.IntegerField()
    job = serializers.IntegerField()
    name = serializers.CharField()
    owner = serializers.CharField()
    priority = serializers.ChoiceField(choices=[p.name.lower() for p in Priority])
    devices = serializers.IntegerField()
    held = serializers.BooleanField()
    waited_seconds = serializers.FloatField()
    reason = serializers.CharField()
    estimated_start = serializers.DateTimeField(allow_null=True, help_text="null: cannot be told yet.")


class QueueApi(APIView):
    """The training queue in order: position, job, owner, priority, devices, held, how long
    it has waited and why (the names of jobs not shared with you are not given)."""

    pagination_class = Pagination  # read by `paginated` and by the schema

    @extend_schema(responses=QueuedJobSerializer(many=True))
    def get(self, request: Request) -> Response:
        from .selectors import queue_summary

        summary = queue_summary()
        visible = set(Job.objects.filter(visible_q(request.user), pk__in=[r["job"].pk for r in summary]).values_list("pk", flat=True))
        rows = [
            {
                "position": n, "job": r["job"].pk, "name": r["job"].name if r["job"].pk in visible else HIDDEN_NAME, "owner": r["job"].owner.username,
                "priority": Priority(r["job"].priority).name.lower(), "devices": r["job"].devices_requested,
                "held": r["job"].held, "waited_seconds": round(r["waited"], 1), "reason": r["reason"],
                "estimated_start": r["estimated_start"],
            }
            for n, r in enumerate(summary, start=1)
        ]
        return paginated(self, rows, QueuedJobSerializer)


class QueueJobApi(APIView):
    """Admins: `{"action": "up"|"down"|"top"|"bottom"|"hold"|"release"|"cancel"}`, or
    `{"action": "priority", "priority": "low"|"normal"|"high"|"urgent"}`."""

    permission_classes = [IsAuthenticated, IsStaff]

    @extend_schema_serializer(component_name="QueueAction")
    class InputSerializer(serializers.Serializer):
        action = serializers.ChoiceField(choices=["up", "down", "top", "bottom", "hold", "release", "cancel", "priority"])
        priority = serializers.ChoiceField(choices=[p.name.lower() for p in Priority], required=False)

    @extend_schema(request=InputSerializer, responses={204: None})
    def post(self, request: Request, pk: int) -> Response:
        from .services import job_abort, queue_hold, queue_move, queue_set_priority

        job = get_object_or_404(Job, pk=pk, kind__in=kinds.device_kinds())
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        action = data.validated_data["action"]
        if action == "priority":
            if "priority" not in data.validated_data:
                raise serializers.ValidationError({"priority": ["Give the new priority."]})
            queue_set_priority(job, Priority[data.validated_data["priority"].upper()])
        elif action in ("hold", "release"):
            queue_hold(job, action == "hold")
        elif action == "cancel":
            job_abort(job)
        else:
            queue_move(job, action)
        return Response(status=status.HTTP_204_NO_CONTENT)


class UsageApi(APIView):
    """Admins: device-hours and jobs per user; each user's limits, weekly use and
    fair-share usage (decayed device-hours, workers/fairshare.py); each team's quota."""

    permission_classes = [IsAuthenticated, IsStaff]

    @extend_schema(responses=inline_serializer("Usage", {
        "usage": inline_serializer("UserUsage", {
            "user": serializers.CharField(), "device_hours": serializers.FloatField(),
            "jobs": serializers.IntegerField(), "running": serializers.IntegerField(),
        }, many=True),
        "limits": inline_serializer("UserDeviceLimit", {
            "user": serializers.CharField(), "user_id": serializers.IntegerField(),
            "team": serializers.CharField(help_text="The team charged for the user's work; empty: none."),
            "limit": serializers.IntegerField(help_text="Devices at once; 0: no limit."),
            "override": serializers.BooleanField(help_text="An admin set this user's device limit."),
            "hours_limit": serializers.FloatField(help_text="Device-hours in any 7 days; 0: no limit."),
            "hours_override": serializers.BooleanField(help_text="An admin set this user's weekly quota."),
            "in_use": serializers.IntegerField(),
            "week_hours": serializers.FloatField(help_text="Device-hours used in the last 7 days."),
            "fair_share_hours": serializers.FloatField(help_text="Decayed device-hours: what fair share orders by."),
        }, many=True),
        "teams": inline_serializer("TeamUsage", {
            "team": serializers.CharField(), "team_id": serializers.IntegerField(), "members": serializers.IntegerField(),
            "max_devices": serializers.IntegerField(), "max_device_hours_per_week": serializers.FloatField(),
            "in_use": serializers.IntegerField(), "week_hours": serializers.FloatField(),
            "fair_share_hours": serializers.FloatField(),
        }, many=True),
    }))
    def get(self, request: Request) -> Response:
        from .selectors import team_limits, usage_by_user, user_limits

        return Response({
            "usage": [
                {"user": u["user"].username, "device_hours": round(u["device_hours"], 4), "jobs": u["jobs"], "running": u["running"]}
                for u in usage_by_user()
            ],
            "limits": [
                {
                    "user": u["user"].username, "user_id": u["user"].pk, "team": u["team"], "limit": u["limit"],
                    "override": u["override"], "hours_limit": u["hours_limit"], "hours_override": u["hours_override"],
                    "in_use": u["in_use"], "week_hours": round(u["week_hours"], 4),
                    "fair_share_hours": round(u["fair_share_hours"], 4),
                }
                for u in user_limits()
            ],
            "teams": [
                {
                    "team": t["team"].name, "team_id": t["team"].pk, "members": t["members"], "max_devices": t["max_devices"],
                    "max_device_hours_per_week": t["max_device_hours_per_week"], "in_use": t["in_use"],
                    "week_hours": round(t["week_hours"], 4), "fair_share_hours": round(t["fair_share_hours"], 4),
                }
                for t in team_limits()
            ],
        })


class UserLimitApi(APIView):
    """Admins: a user's limits, replaced as a whole: `{"max_devices": N,
    "max_device_hours_per_week": H, "max_job_hours": T}` (0: no limit; null or left out:
    the site's default)."""

    permission_classes = [IsAuthenticated, IsStaff]

    @extend_schema_serializer(component_name="DeviceLimitUpdate")
    class InputSerializer(serializers.Serializer):
        max_devices = serializers.IntegerField(min_value=0, max_value=10000, allow_null=True)
        max_device_hours_per_week = serializers.FloatField(min_value=0, max_value=1e8, allow_null=True, required=False, default=None)
        max_job_hours = serializers.FloatField(
            min_value=0, max_value=24 * 365, allow_null=True, required=False, default=None,
            help_text="A run's default time limit, and the most this user may set; 0: none.",
        )

    @extend_schema(request=InputSerializer, responses={204: None})
    def put(self, request: Request, user_id: int) -> Response:
        from django.contrib.auth import get_user_model

        from .services import user_limit_set

        user = get_object_or_404(get_user_model(), pk=user_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        user_limit_set(
            user, data.validated_data["max_devices"], data.validated_data["max_device_hours_per_week"],
            data.validated_data["max_job_hours"],
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


class TeamLimitApi(APIView):
    """Admins: a team's (a Django group's) quota: `{"max_devices": N,
    "max_device_hours_per_week": H}`, for all its members' jobs together (0: no limit)."""

    permission_classes = [IsAuthenticated, IsStaff]

    @extend_schema_serializer(component_name="TeamLimitUpdate")
    class InputSerializer(serializers.Serializer):
        max_devices = serializers.IntegerField(min_value=0, max_value=10000, default=0)
        max_device_hours_per_week = serializers.FloatField(min_value=0, max_value=1e8, default=0)

    @extend_schema(request=InputSerializer, responses={204: None})
    def put(self, request: Request, team_id: int) -> Response:
        from django.contrib.auth.models import Group

        from .services import team_limit_set

        team = get_object_or_404(Group, pk=team_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        team_limit_set(team, data.validated_data["max_devices"], data.validated_data["max_device_hours_per_week"])
        return Response(status=status.HTTP_204_NO_CONTENT)


class AuditEntrySerializer(serializers.ModelSerializer):
    class Meta:
        model = AuditEntry
        fields = ["id", "at", "username", "action", "target", "method", "path", "status", "address"]


class AuditFilter(django_filters.FilterSet):
    username = django_filters.CharFilter(help_text="Only this user's actions.")
    action = django_filters.CharFilter(lookup_expr="icontains", help_text="Words of the action, e.g. deleted.")
    since = django_filters.IsoDateTimeFilter(method="filter_since", help_text="Only actions at or after this time (ISO 8601).")

    class Meta:
        model = AuditEntry
        fields = ["username", "action", "since"]

    def filter_since(self, queryset: QuerySet[AuditEntry], name: str, value: datetime) -> QuerySet[AuditEntry]:
        # In UTC here: an offset the database does not take (beyond ±15:59) would fail there.
        try:
            return queryset.filter(at__gte=value.astimezone(dt_timezone.utc))
        except (OverflowError, ValueError):
            raise serializers.ValidationError({"since": ["Give a time between the years 1 and 9999."]}) from None


class AuditListApi(generics.ListAPIView):
    """Admins: who did what, when — every destructive and admin action, newest first,
    with its outcome (HTTP status: 2xx/3xx done, 4xx refused)."""

    permission_classes = [IsAuthenticated, IsStaff]
    serializer_class = AuditEntrySerializer
    filterset_class = AuditFilter
    queryset = AuditEntry.objects.all()
