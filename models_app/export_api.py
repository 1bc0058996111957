"""REST endpoints for exports and downloads: export a snapshot to ONNX and torch.export
with its checks against PyTorch (a job), read the checks, and download a snapshot in a
format named in the path (`/download/archive/`, `/onnx/`, `/pt2/`, `/triton/`): DRF owns
`?format=`, for its own content negotiation."""
from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.http import FileResponse
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import generics, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from workers.api import JobSerializer
from workers.errors import NotFound
from workers.listing import job_prefetches
from workers.permissions import current_user, visible_q
from workers.schema import ErrorSerializer
from workers.services import job_delete

from .api import epoch_param
from .export import archive_name, build_archive, build_triton
from .exports import export_create, export_list, require_export_file
from .models import Export, ExportFormat
from .selectors import model_list
from .services import snapshot_for

DOWNLOADS = ("archive", "triton", *ExportFormat.values)


class ExportCheckSerializer(serializers.Serializer):
    format = serializers.CharField(help_text="pytorch (the reference), onnx or pt2")
    status = serializers.CharField(help_text="passed, failed, or reference (PyTorch itself)")
    file = serializers.CharField()
    bytes = serializers.IntegerField()
    export_seconds = serializers.FloatField(allow_null=True)
    max_abs_diff = serializers.FloatField(allow_null=True, help_text="Largest absolute difference from PyTorch's outputs.")
    tolerance = serializers.FloatField(allow_null=True, help_text="The difference allowed: 1e-4 × max(1, largest |output|).")
    top1_agreement = serializers.FloatField(allow_null=True, help_text="Share of images with PyTorch's top-1 (must be 1).")
    p50_ms = serializers.FloatField(allow_null=True, help_text="Latency at batch 1 (after 10 warm-up runs, of 100 runs).")
    p95_ms = serializers.FloatField(allow_null=True)
    error = serializers.CharField(allow_blank=True)


class ExportSerializer(serializers.ModelSerializer):
    id = serializers.IntegerField(source="pk")
    job = JobSerializer()
    model = serializers.IntegerField(source="model_id")
    checks = serializers.SerializerMethodField()
    images = serializers.SerializerMethodField(help_text="How many images of the dataset verified the exports.")

    class Meta:
        model = Export
        fields = ["id", "job", "model", "epoch", "images", "checks"]

    @extend_schema_field(ExportCheckSerializer(many=True))
    def get_checks(self, export: Export) -> list[dict[str, Any]]:
        return list(export.results.get("formats", {}).values())

    @extend_schema_field(OpenApiTypes.INT)
    def get_images(self, export: Export) -> int | None:
        return export.results.get("images")


class ExportInputSerializer(serializers.Serializer):
    epoch = serializers.FloatField(required=False, allow_null=True, default=None, help_text="The snapshot; default: the latest.")


class ModelExportsApi(generics.ListAPIView):
    """A model's exports, newest first; POST exports a snapshot to ONNX and torch.export and
    checks both against PyTorch on images of its dataset (a job)."""

    serializer_class = ExportSerializer

    def get_queryset(self) -> QuerySet[Export]:
        if getattr(self, "swagger_fake_view", False):  # the schema generator has no pk
            return Export.objects.none()
        model = get_object_or_404(model_list(), pk=self.kwargs["pk"])
        return (
            export_list().filter(visible_q(self.request.user, "job__"), model=model)
            .prefetch_related(*job_prefetches("job__")).order_by("-job__created_at", "-pk")
        )

    @extend_schema(operation_id="models_exports_list")
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)

    @extend_schema(request=ExportInputSerializer, responses={201: ExportSerializer})
    def post(self, request: Request, pk: int) -> Response:
        model = get_object_or_404(model_list(), pk=pk)
        data = ExportInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        export = export_create(owner=current_user(request.user), model=model, **data.validated_data)
        return Response(ExportSerializer(export_list().get(pk=export.pk)).data, status=status.HTTP_201_CREATED)


class ExportDetailApi(APIView):
    @extend_schema(responses=ExportSerializer)
    def get(self, request: Request, pk: int) -> Response:
        return Response(ExportSerializer(get_object_or_404(export_list(), pk=pk)).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, pk: int) -> Response:
        export = get_object_or_404(export_list(), pk=pk)
        self.check_object_permissions(request, export)
        job_delete(export.job)
        return Response(status=status.HTTP_204_NO_CONTENT)


def _file_response(path: Any, filename: str, content_type: str, *, temporary: bool) -> FileResponse:
    handle = path.open("rb")
    if temporary:
        path.unlink()  # the open handle keeps the data until the response is sent
    return FileResponse(handle, as_attachment=True, filename=filename, content_type=content_type)


class ModelDownloadApi(APIView):
    """A snapshot (?epoch=N, default: the latest) as a download. `archive` (the default):
    a .tar.gz that runs elsewhere with its classify.py (with model.onnx when the snapshot's
    ONNX export passed); `onnx` and `pt2`: the checked file of the snapshot's export (409
    until an export passed); `triton`: a Triton model-repository entry of that ONNX file."""

    @extend_schema(
        parameters=[
            OpenApiParameter("epoch", float, description="snapshot epoch; default: the latest"),
            OpenApiParameter("fmt", str, OpenApiParameter.PATH, enum=list(DOWNLOADS), description="archive, triton, onnx or pt2"),
        ],
        responses={(200, "application/octet-stream"): OpenApiTypes.BINARY, 404: ErrorSerializer, 409: ErrorSerializer},
        operation_id="models_download_format",
    )
    def get(self, request: Request, pk: int, fmt: str = "archive") -> FileResponse:
        model = get_object_or_404(model_list(), pk=pk)
        if fmt not in DOWNLOADS:
            raise NotFound(f"No download format {fmt!r}; choose one of {', '.join(DOWNLOADS)}.")
        snapshot = snapshot_for(model, epoch_param(request.query_params.get("epoch")))
        stem = archive_name(model, snapshot).removesuffix(".tar.gz")
        if fmt == "archive":
            return _file_response(build_archive(model, snapshot), f"{stem}.tar.gz", "application/gzip", temporary=True)
        if fmt == "triton":
            return _file_response(build_triton(model, snapshot), f"{stem}-triton.tar.gz", "application/gzip", temporary=True)
        _export, path = require_export_file(model, snapshot, fmt)
        return _file_response(path, f"{stem}.{fmt}", "application/octet-stream", temporary=False)


class ModelArchiveApi(ModelDownloadApi):
    """The snapshot's archive (?epoch=N, default: the latest): the same as /download/archive/."""

    @extend_schema(
        parameters=[OpenApiParameter("epoch", float, description="snapshot epoch; default: the latest")],
        responses={(200, "application/gzip"): OpenApiTypes.BINARY, 404: ErrorSerializer},
        operation_id="models_download",
    )
    def get(self, request: Request, pk: int, fmt: str = "archive") -> FileResponse:
        return super().get(request, pk, "archive")
