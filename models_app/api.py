"""REST endpoints for models: create (standard, fine-tuned or custom networks), inspect,
edit, metrics, abort, resume, clone, delete, classify (exports and downloads: export_api.py); the network catalogue,
visualize and the learning-rate preview."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

from django.db import transaction
from django.db.models import QuerySet
from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_serializer, inline_serializer
from rest_framework import generics, serializers, status
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from datasets.models import Task
from datasets.selectors import dataset_list
from workers.api import IdRelatedField, JobEditSerializer, JobSerializer
from workers.models import Priority, Visibility
from workers.errors import JobError
from workers.permissions import current_user, visible_q
from workers.listing import job_prefetches
from workers.services import job_abort, job_update, placement_check

from .compare import model_compare, parse_ids
from .filters import ModelFilter
from .importing import model_import
from .models import MeanSubtraction, Network, Snapshot, TrainedModel
from .selectors import MAX_POINTS, model_list, model_metric_points, model_metric_rows, model_metrics
from .services import (
    PARAM_FIELDS,
    model_classify_upload,
    model_clone_params,
    model_create,
    model_delete,
    model_resume,
)
from .authoring import lr_preview, network_catalogue, network_details, visualize


class SnapshotSerializer(serializers.ModelSerializer):
    class Meta:
        model = Snapshot
        fields = ["epoch", "iteration", "created_at", "val_loss", "val_accuracy", "val_top5"]


class ModelOutputSerializer(serializers.ModelSerializer):
    id = serializers.IntegerField(source="pk")
    job = JobSerializer()
    dataset = serializers.IntegerField(source="dataset_id")
    base_model = serializers.IntegerField(source="base_model_id", allow_null=True)
    snapshots = SnapshotSerializer(many=True)

    class Meta:
        model = TrainedModel
        fields = [
            "id", "job", "dataset", *[f for f in PARAM_FIELDS if f != "base_model"], "base_model", "imported_from",
            "best_val_accuracy", "best_epoch", "record", "notices", "timings", "snapshots",
        ]


class ModelInputSerializer(serializers.ModelSerializer):
    """Every training parameter with the model's defaults and validators."""

    name = serializers.CharField(max_length=200)
    group = serializers.CharField(max_length=100, required=False, allow_blank=True, default="")
    notes = serializers.CharField(required=False, allow_blank=True, default="")
    visibility = serializers.ChoiceField(choices=Visibility.choices, required=False, default=Visibility.TEAM, help_text="Who may see it: private (you and admins), team (your teams; everyone if you are in none), public.")
    dataset = IdRelatedField(queryset=dataset_list())
    base_model = IdRelatedField(queryset=model_list(), required=False, allow_null=True)

    # Placement and queue (see workers/scheduler.py).
    devices = serializers.IntegerField(min_value=1, required=False, default=1, help_text="Devices (ranks) to train on.")
    device_ids = serializers.ListField(
        child=serializers.IntegerField(), required=False, default=list,
        help_text="Exactly these devices (GET /api/devices/); overrides `devices`.",
    )
    multi_host = serializers.BooleanField(required=False, default=False, help_text="May the ranks span several hosts?")
    time_limit_hours = serializers.FloatField(
        required=False, allow_null=True, default=None, min_value=0,
        help_text="Stop each run after this many hours, with a snapshot (resumable); null: the default; 0: none (admins).",
    )
    preemptible = serializers.BooleanField(
        required=False, default=False,
        help_text="A higher-priority job may take its devices: it stops with a snapshot and resumes by itself.",
    )
    priority = serializers.ChoiceField(
        choices=[p.name.lower() for p in Priority], required=False, default="normal",
        help_text="low or normal; admins may also use high and urgent.",
    )

    class Meta:
        model = TrainedModel
        fields = [
            "name", "group", "notes", "visibility", "dataset", *PARAM_FIELDS, "devices", "device_ids", "multi_host", "priority",
            "time_limit_hours", "preemptible",
        ]


def _create(request: Request, data: Any) -> Response:
    """Validate `data`, create the model; a service error names its field when it can."""
    serializer = ModelInputSerializer(data=data)
    serializer.is_valid(raise_exception=True)
    values = dict(serializer.validated_data)
    user = current_user(request.user)
    placement = placement_check(
        user,
        devices=values.pop("devices"),
        device_ids=values.pop("device_ids"),
        multi_host=values.pop("multi_host"),
        priority=Priority[values.pop("priority").upper()],
        time_limit_hours=values.pop("time_limit_hours"),
        preemptible=values.pop("preemptible"),
    )
    model = model_create(owner=user, placement=placement, **values)
    return Response(ModelOutputSerializer(model).data, status=status.HTTP_201_CREATED)


class ModelListApi(generics.ListAPIView):
    """Models, newest first, paginated; filter by owner, status, group, dataset, network,
    name, or whether they have a snapshot."""

    serializer_class = ModelOutputSerializer
    filterset_class = ModelFilter

    def get_queryset(self) -> QuerySet[TrainedModel]:
        return model_list().filter(visible_q(self.request.user, "job__")).prefetch_related("snapshots", *job_prefetches("job__"))

    @extend_schema(operation_id="models_list")
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)

    @extend_schema(request=ModelInputSerializer, responses={201: ModelOutputSerializer})
    def post(self, request: Request) -> Response:
        return _create(request, request.data)


class ModelCompareApi(APIView):
    """Models side by side (`?ids=1,2,3`, 2 to 20): each run's best validation accuracy
    and its epoch, duration and device-hours, and every parameter with whether it differs.
    Their curves: each model's .../metrics/."""

    @extend_schema(
        parameters=[OpenApiParameter("ids", str, required=True, description="comma-separated model ids")],
        responses=inline_serializer("ModelComparison", {
            "runs": inline_serializer("ComparedRun", {
                "id": serializers.IntegerField(), "name": serializers.CharField(), "owner": serializers.CharField(),
                "status": serializers.CharField(), "best_val_accuracy": serializers.FloatField(allow_null=True),
                "best_epoch": serializers.FloatField(allow_null=True), "duration_seconds": serializers.FloatField(allow_null=True),
                "device_hours": serializers.FloatField(),
            }, many=True),
            "params": inline_serializer("ComparedParam", {
                "field": serializers.CharField(), "label": serializers.CharField(),
                "values": serializers.ListField(child=serializers.CharField()), "differs": serializers.BooleanField(),
            }, many=True),
        }),
    )
    def get(self, request: Request) -> Response:
        return Response(model_compare(parse_ids(request.query_params.get("ids", "")), request.user))


class ModelImportApi(APIView):
    """Import a model trained elsewhere, for a dataset whose classes and image size it fits:
    an archive downloaded from a model of this system (.tar.gz, .zip), or a PyTorch state
    dict (.pt, .pth) with its `network`. It is checked (loaded and run once, in a sandbox)
    before anything is stored; a malformed upload gets a 400 with the reason."""

    parser_classes = [MultiPartParser, FormParser]

    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=200)
        dataset = IdRelatedField(queryset=dataset_list(), help_text="Its labels, image size, mean and preprocessing.")
        file = serializers.FileField(help_text="An archive from a model's download, or a state dict (.pt/.pth).")
        network = serializers.ChoiceField(choices=Network.choices, required=False, allow_blank=True, default="",
                                          help_text="For a state dict: the network it belongs to.")
        custom_code = serializers.CharField(required=False, allow_blank=True, default="", trim_whitespace=False)
        crop_size = serializers.IntegerField(required=False, allow_null=True, default=None, min_value=1, max_value=4096)
        mean_subtraction = serializers.ChoiceField(choices=MeanSubtraction.choices, default=MeanSubtraction.IMAGE)
        group = serializers.CharField(max_length=100, required=False, allow_blank=True, default="")
        notes = serializers.CharField(required=False, allow_blank=True, default="")
        visibility = serializers.ChoiceField(choices=Visibility.choices, required=False, default=Visibility.TEAM)

    @extend_schema(
        request={"multipart/form-data": extend_schema_serializer(component_name="ModelImportRequest")(InputSerializer)},
        responses={201: ModelOutputSerializer},
    )
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        model = model_import(owner=current_user(request.user), **data.validated_data)
        return Response(ModelOutputSerializer(model_list().get(pk=model.pk)).data, status=status.HTTP_201_CREATED)


class ModelDetailApi(APIView):
    @extend_schema(responses=ModelOutputSerializer)
    def get(self, request: Request, pk: int) -> Response:
        return Response(ModelOutputSerializer(get_object_or_404(model_list(), pk=pk)).data)

    @extend_schema(request=JobEditSerializer, responses=ModelOutputSerializer)
    def patch(self, request: Request, pk: int) -> Response:
        model = get_object_or_404(model_list(), pk=pk)
        self.check_object_permissions(request, model)
        data = JobEditSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        job_update(model.job, **data.validated_data)
        return Response(ModelOutputSerializer(model).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, pk: int) -> Response:
        model = get_object_or_404(model_list(), pk=pk)
        self.check_object_permissions(request, model)
        model_delete(model)
        return Response(status=status.HTTP_204_NO_CONTENT)


class ModelAbortApi(APIView):
    @extend_schema(request=None, responses=ModelOutputSerializer)
    def post(self, request: Request, pk: int) -> Response:
        model = get_object_or_404(model_list(), pk=pk)
        self.check_object_permissions(request, model)
        job_abort(model.job)
        model.job.refresh_from_db()
        return Response(ModelOutputSerializer(model).data)


class ModelResumeApi(APIView):
    """Continue an aborted or failed model from its latest snapshot."""

    @extend_schema(request=None, responses=ModelOutputSerializer)
    def post(self, request: Request, pk: int) -> Response:
        model = get_object_or_404(model_list(), pk=pk)
        self.check_object_permissions(request, model)
        # Read back in the resume's transaction: the answer is the job as the resume left it
        # (queued); the scheduler, told on commit, may start it a moment later.
        with transaction.atomic():
            model_resume(model)
            model.job.refresh_from_db()
            data = ModelOutputSerializer(model).data
        return Response(data)


class ModelCloneApi(APIView):
    """A new model with this one's parameters; any field in the body overrides."""

    @extend_schema(request=ModelInputSerializer, responses={201: ModelOutputSerializer})
    def post(self, request: Request, pk: int) -> Response:
        model = get_object_or_404(model_list(), pk=pk)
        return _create(request, {**model_clone_params(model), **cast(dict[str, Any], request.data)})


# {series name: [{"iteration", "epoch", "value"}, ...]}: open-ended names, so a raw schema.
METRICS_SCHEMA = {
    "type": "object",
    "additionalProperties": {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {"iteration": {"type": "integer"}, "epoch": {"type": "number"}, "value": {"type": "number"}},
            "required": ["iteration", "epoch", "value"],
        },
    },
}


class ModelMetricsApi(APIView):
    """Chart series, each downsampled to at most `max_points` (default 2,000: min/max per
    bucket, the last point and every validation point exact); ?after=N returns only points
    after iteration N (for polling clients). Full resolution: .../metrics/points/ and
    .../metrics/csv/."""

    @extend_schema(
        parameters=[
            OpenApiParameter("after", int, description="only points after this iteration"),
            OpenApiParameter("max_points", int, description=f"per series, 2 to 20,000 (default {MAX_POINTS})"),
        ],
        responses={200: OpenApiResponse(
            response=METRICS_SCHEMA,
            description="Each series by name (train_loss, val_accuracy, learning_rate, ...), in iteration order.",
        )},
    )
    def get(self, request: Request, pk: int) -> Response:
        model = get_object_or_404(model_list(), pk=pk)
        after = request.query_params.get("after")
        raw = request.query_params.get("max_points", "")
        max_points = min(20_000, max(2, int(raw))) if raw.isdecimal() else MAX_POINTS
        return Response(model_metrics(model, after_iteration=int(after) if after and after.isdecimal() else None, max_points=max_points))


class ModelMetricPointsApi(APIView):
    """One series at full resolution, a page at a time: `?name=train_loss&after=N&limit=M`
    gives the points after iteration N (at most M, default and most 10,000); ask the next
    page with `after=next_after` until it is null."""

    @extend_schema(
        parameters=[
            OpenApiParameter("name", str, required=True), OpenApiParameter("after", int), OpenApiParameter("limit", int),
        ],
        responses=inline_serializer("MetricPoints", {
            "name": serializers.CharField(),
            "points": serializers.ListField(child=serializers.ListField(child=serializers.FloatField()),
                                            help_text="[iteration, epoch, value] triples"),
            "next_after": serializers.IntegerField(allow_null=True, help_text="The next page's `after`; null at the end."),
        }),
    )
    def get(self, request: Request, pk: int) -> Response:
        model = get_object_or_404(model_list(), pk=pk)
        name = request.query_params.get("name", "")
        if not name:
            raise JobError("Give the series' name (train_loss, val_accuracy, ...).", field="name")
        after_raw, limit_raw = request.query_params.get("after", ""), request.query_params.get("limit", "")
        after = int(after_raw) if after_raw.lstrip("-").isdecimal() else -1
        limit = min(10_000, max(1, int(limit_raw))) if limit_raw.isdecimal() else 10_000
        points = model_metric_points(model, name, after=after, limit=limit)
        return Response({
            "name": name, "points": [list(p) for p in points],
            "next_after": points[-1][0] if len(points) == limit else None,
        })


class ModelMetricsCsvApi(APIView):
    """Every point of every series as CSV (name, iteration, epoch, value), streamed."""

    @extend_schema(responses={(200, "text/csv"): OpenApiTypes.STR})
    def get(self, request: Request, pk: int) -> StreamingHttpResponse:
        model = get_object_or_404(model_list(), pk=pk)

        def lines() -> Iterator[str]:
            yield "name,iteration,epoch,value\n"
            for name, iteration, epoch, value in model_metric_rows(model):
                yield f"{name},{iteration},{epoch!r},{value!r}\n"

        response = StreamingHttpResponse(lines(), content_type="text/csv")
        response["Content-Disposition"] = f'attachment; filename="model-{model.pk}-metrics.csv"'
        return response


def epoch_param(raw: object) -> float | None:
    if raw in (None, ""):
        return None
    try:
        return float(str(raw))
    except ValueError:
        raise JobError("epoch must be a number (the snapshot's epoch).") from None


_HISTOGRAM = inline_serializer("Histogram", {"counts": serializers.ListField(child=serializers.IntegerField()),
                                             "edges": serializers.ListField(child=serializers.FloatField())})
_STATISTICS = inline_serializer(
    "LayerStatistics",
    {"mean": serializers.FloatField(allow_null=True), "std": serializers.FloatField(allow_null=True),
     "min": serializers.FloatField(allow_null=True), "max": serializers.FloatField(allow_null=True), "histogram": _HISTOGRAM},
    allow_null=True,
)


class ModelClassifyApi(APIView):
    """Classify one uploaded image with a snapshot (default: the latest): top-5 (a
    segmentation model: each pixel's class, drawn, and the classes found), the image
    as the network saw it, and with `views=true` what every layer did (weights and
    activations as pictures and statistics) and a Grad-CAM map. Answered by the inference
    worker, so it works while every device trains."""

    parser_classes = [MultiPartParser, FormParser]

    @extend_schema(
        request=inline_serializer("ClassifyInput", {
            "image": serializers.ImageField(),
            "epoch": serializers.FloatField(required=False),
            "views": serializers.BooleanField(required=False, default=False, help_text="Add every layer's pictures and statistics, and Grad-CAM."),
        }),
        responses=inline_serializer(
            "ClassifyOutput",
            {
                "epoch": serializers.FloatField(),
                "predictions": inline_serializer(
                    "Prediction",
                    {"label": serializers.CharField(), "index": serializers.IntegerField(),
                     "probability": serializers.FloatField(help_text="Segmentation: the class's share of the pixels."),
                     "pixels": serializers.IntegerField(required=False, help_text="Segmentation: the pixels of the class."),
                     "confidence": serializers.FloatField(required=False, allow_null=True,
                                                          help_text="Segmentation: the mean probability of those pixels.")},
                    many=True,
                ),
                "segmentation": inline_serializer("SegmentationViews", {
                    "labels": serializers.CharField(help_text="PNG data URI: each pixel's class in its colour."),
                    "overlay": serializers.CharField(help_text="PNG data URI: the same over the image."),
                    "legend": inline_serializer("LegendEntry", {
                        "label": serializers.CharField(), "colour": serializers.ListField(child=serializers.IntegerField()),
                    }, many=True),
                }, required=False),
                "detection": inline_serializer("DetectionViews", {
                    "drawn": serializers.CharField(help_text="PNG data URI: the image with the boxes found."),
                    "objects": inline_serializer("DetectedObject", {
                        "label": serializers.CharField(), "index": serializers.IntegerField(), "score": serializers.FloatField(),
                        "box": serializers.ListField(child=serializers.FloatField(), help_text="left, top, right, bottom"),
                    }, many=True),
                }, required=False),
                "input": inline_serializer("ClassifyInputImages", {
                    "resized": serializers.CharField(help_text="PNG data URI: the image resized to the dataset's size."),
                    "network": serializers.CharField(help_text="PNG data URI: the network's input (cropped, mean subtracted), scaled for display."),
                }),
                "seconds": serializers.FloatField(help_text="Time spent in the inference worker."),
                "layers": inline_serializer("LayerView", {
                    "name": serializers.CharField(), "type": serializers.CharField(),
                    "output_shape": serializers.ListField(child=serializers.IntegerField(), allow_null=True),
                    "params": serializers.IntegerField(),
                    "weights": _STATISTICS, "weight_tiles": serializers.CharField(allow_null=True),
                    "activations": _STATISTICS, "activation_tiles": serializers.CharField(allow_null=True),
                }, many=True, required=False),
                "total_params": serializers.IntegerField(required=False),
                "gradcam": inline_serializer("GradCam", {
                    "layer": serializers.CharField(), "overlay": serializers.CharField(), "heatmap": serializers.CharField(),
                }, required=False, allow_null=True),
                "plugin_views": inline_serializer("PluginView", {
                    "plugin": serializers.CharField(help_text="The visualization plugin's name."),
                    "label": serializers.CharField(),
                    "image": serializers.CharField(required=False, help_text="PNG data URI."),
                    "text": serializers.CharField(required=False),
                    "error": serializers.CharField(required=False, help_text="Why this plugin could not render it."),
                }, many=True, required=False, help_text="Views of installed visualization plugins (models_app/view_plugins.py)."),
            },
        ),
    )
    def post(self, request: Request, pk: int) -> Response:
        model = get_object_or_404(model_list(), pk=pk)
        upload = request.FILES.get("image")
        if upload is None:
            raise JobError("Attach an image file in the 'image' field.", field="image")
        data = cast(dict[str, Any], request.data)
        views = str(data.get("views", "")).lower() in ("1", "true", "yes", "on")
        reply = model_classify_upload(model, epoch_param(data.get("epoch")), upload, views=views)
        reply.pop("ok", None)
        return Response(reply)


class NetworkSerializer(serializers.Serializer):
    name = serializers.CharField()
    label = serializers.CharField()  # type: ignore[assignment]  # a field named like Field.label
    intended_input = serializers.ListField(child=serializers.IntegerField(), help_text="[height, width]")
    task = serializers.ChoiceField(choices=Task.choices, help_text="What datasets it trains on.")


class NetworkDetailSerializer(NetworkSerializer):
    description = serializers.CharField()
    source = serializers.CharField(help_text="The module's code: build(input_shape, num_classes).")  # type: ignore[assignment]


class NetworkListApi(APIView):
    """The standard networks with their intended input sizes (a fixed catalogue: one page)."""

    @extend_schema(responses=NetworkSerializer(many=True), operation_id="networks_list")
    def get(self, request: Request) -> Response:
        return Response(network_catalogue())


class NetworkDetailApi(APIView):
    """One standard network with its source code (the starting point of "Customize")."""

    @extend_schema(responses=NetworkDetailSerializer)
    def get(self, request: Request, name: str) -> Response:
        return Response(network_details(name))


class VisualizeApi(APIView):
    """The layer table of a network for a dataset's input: each layer's output shape and
    parameter count. Runs in a child process with a time limit, never in the web server."""

    @extend_schema_serializer(component_name="VisualizeRequest")
    class InputSerializer(serializers.Serializer):
        dataset = serializers.PrimaryKeyRelatedField(queryset=dataset_list())
        network = serializers.CharField()
        custom_code = serializers.CharField(required=False, allow_blank=True, default="", trim_whitespace=False)
        crop_size = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=4096)

    @extend_schema(request=InputSerializer, responses=inline_serializer("VisualizeResult", {
        "ok": serializers.BooleanField(),
        "error": serializers.CharField(required=False, help_text="When not ok: what failed in the network code."),
        "line": serializers.IntegerField(required=False, allow_null=True, help_text="The line of the code that failed."),
        "input_shape": serializers.ListField(child=serializers.IntegerField()),
        "layers": inline_serializer("VisualizeLayer", {
            "name": serializers.CharField(), "type": serializers.CharField(),
            "output_shape": serializers.ListField(child=serializers.IntegerField()),
            "params": serializers.IntegerField(), "depth": serializers.IntegerField(),
        }, many=True, required=False),
        "output_shape": serializers.ListField(child=serializers.IntegerField(), required=False),
        "total_params": serializers.IntegerField(required=False),
        "trainable_params": serializers.IntegerField(required=False),
    }))
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        return Response(visualize(request.user, **data.validated_data))


class LrPreviewApi(APIView):
    """The learning rate over the epochs for the given policy fields (the form's chart)."""

    @extend_schema(responses=inline_serializer("LrPreview", {
        "points": serializers.ListField(child=serializers.ListField(child=serializers.FloatField()), help_text="[epoch, lr] pairs"),
    }))
    def get(self, request: Request) -> Response:
        return Response(lr_preview(request.query_params))
