"""REST endpoints for evaluations: run a snapshot over a dataset split or over images from
a list or an upload (classify many), read its metrics,
page through the images it gets wrong (or one confusion-matrix cell, or the top-N of a
class), download every prediction as CSV, delete it."""
from __future__ import annotations

from typing import Any, cast

from django.db.models import QuerySet
from django.http import HttpResponse
from django.shortcuts import get_object_or_404
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import generics, serializers, status
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from datasets.uploads import upload_get
from workers.api import JobSerializer
from workers.errors import JobError
from workers.listing import job_prefetches
from workers.permissions import AnyUser, current_user, visible_q
from workers.schema import ErrorSerializer
from workers.services import job_delete

from .evaluations import (
    evaluation_compare,
    evaluation_create,
    evaluation_csv,
    evaluation_images,
    evaluation_input_image,
    evaluation_list,
)
from .models import Evaluation, EvaluationSource
from .selectors import model_list
from .spatial_results import SHOWS, check_dataset_visible, is_spatial, spatial_csv, spatial_image, spatial_images


class EvaluationSerializer(serializers.ModelSerializer):
    id = serializers.IntegerField(source="pk")
    job = JobSerializer()
    model = serializers.IntegerField(source="model_id")
    labels = serializers.ListField(child=serializers.CharField())
    metrics = serializers.JSONField(
        help_text="Classification: images, top1, top5, confusion (rows: given class, columns: predicted), per_class "
        "(precision, recall, f1, support), calibration (ece, 15 bins), suspects (confident-learning label issues), "
        "seconds. Segmentation (task): images, miou, pixel_accuracy, iou and pixels per class, confusion (pixels). "
        "Detection (task): images, map50, map, ap50 and ap per class, objects per class, found, missed and "
        "false_alarms at IoU 0.5 for detections scoring at least shown_score."
    )

    class Meta:
        model = Evaluation
        fields = ["id", "job", "model", "epoch", "source", "split", "description", "image_folder", "labels", "metrics"]


class EvaluationInputSerializer(serializers.Serializer):
    """One source: `split` (the default, "val"), an image list (`image_list` as text or
    `list_path` on the server, with `image_folder` for relative paths), or `images`
    (uploaded image files and archives, multipart) and/or `upload` (a finished resumable
    upload's id)."""

    epoch = serializers.FloatField(required=False, allow_null=True, default=None, help_text="The snapshot; default: the latest.")
    split = serializers.ChoiceField(choices=["train", "val", "test"], required=False)
    image_list = serializers.CharField(
        required=False, trim_whitespace=False, help_text="`path [label]` lines; the label is a class index or name.",
    )
    list_path = serializers.CharField(required=False, help_text="A list file on the server, under a data root.")
    image_folder = serializers.CharField(required=False, allow_blank=True, default="", help_text="Relative list paths are under it.")
    images = serializers.ListField(
        child=serializers.FileField(), required=False, default=list,
        help_text="Images and archives (.zip, .tar, .tar.gz); an archive's class folders give ground truth.",
    )
    upload = serializers.CharField(required=False, help_text="The id of a finished resumable upload (an archive).")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if not any(attrs.get(k) for k in ("split", "image_list", "list_path", "images", "upload")):
            attrs["split"] = "val"
        return attrs


class ModelEvaluationsApi(generics.ListAPIView):
    """A model's evaluations, newest first; POST evaluates a snapshot on a split (a job)."""

    serializer_class = EvaluationSerializer

    def get_queryset(self) -> QuerySet[Evaluation]:
        if getattr(self, "swagger_fake_view", False):  # the schema generator has no pk
            return Evaluation.objects.none()
        model = get_object_or_404(model_list(), pk=self.kwargs["pk"])
        return (
            evaluation_list().filter(visible_q(self.request.user, "job__"), model=model)
            .prefetch_related(*job_prefetches("job__")).order_by("-job__created_at", "-pk")
        )

    @extend_schema(operation_id="models_evaluations_list")
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)

    parser_classes = [JSONParser, MultiPartParser, FormParser]

    @extend_schema(
        request={"application/json": EvaluationInputSerializer, "multipart/form-data": EvaluationInputSerializer},
        responses={201: EvaluationSerializer},
    )
    def post(self, request: Request, pk: int) -> Response:
        model = get_object_or_404(model_list(), pk=pk)
        raw = cast(dict[str, Any], request.data)
        # Multipart data is a QueryDict holding open files (it cannot be deep-copied): take
        # each field's value, then every file of `images`, not only the last one.
        payload: dict[str, Any] = {key: raw.get(key) for key in raw.keys() if key != "images"}
        if request.FILES:  # multipart: every file of `images`, not only the last one
            payload["images"] = request.FILES.getlist("images")
        data = EvaluationInputSerializer(data=payload)
        data.is_valid(raise_exception=True)
        fields = dict(data.validated_data)
        user = current_user(request.user)
        upload_id = fields.pop("upload", None)
        evaluation = evaluation_create(
            owner=user, model=model, files=fields.pop("images"),
            upload=upload_get(upload_id, user) if upload_id else None, **fields,
        )
        return Response(EvaluationSerializer(evaluation_list().get(pk=evaluation.pk)).data, status=status.HTTP_201_CREATED)


class EvaluationDetailApi(APIView):
    @extend_schema(responses=EvaluationSerializer)
    def get(self, request: Request, pk: int) -> Response:
        return Response(EvaluationSerializer(get_object_or_404(evaluation_list(), pk=pk)).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, pk: int) -> Response:
        evaluation = get_object_or_404(evaluation_list(), pk=pk)
        self.check_object_permissions(request, evaluation)
        job_delete(evaluation.job)
        return Response(status=status.HTTP_204_NO_CONTENT)


def _int_param(request: Request, name: str) -> int | None:
    raw = request.query_params.get(name, "")
    if raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise JobError(f"{name} must be a whole number.", field=name) from None


_IMAGE_ROW = inline_serializer("EvaluationImage", {
    "index": serializers.IntegerField(help_text="The image's index in the split, or among the classified files."),
    "path": serializers.CharField(
        allow_null=True, help_text="The image's file in the dataset's source (relative to its folder), or its name in the list or upload."
    ),
    "label": serializers.IntegerField(required=False, help_text="Classification; -1: no ground truth"),
    "label_name": serializers.CharField(required=False, allow_null=True),
    "predicted": serializers.IntegerField(required=False), "predicted_name": serializers.CharField(required=False),
    "confidence": serializers.FloatField(required=False, help_text="The probability of the predicted class."),
    "score": serializers.FloatField(
        allow_null=True, help_text="view=top: the probability of the asked class; segmentation: the image's mean IoU; "
        "detection: the F1 of its boxes."
    ),
    "pixel_accuracy": serializers.FloatField(required=False, help_text="Segmentation."),
    "found": serializers.IntegerField(required=False, help_text="Detection: objects found (IoU >= 0.5)."),
    "missed": serializers.IntegerField(required=False, help_text="Detection: objects not found."),
    "false_alarms": serializers.IntegerField(required=False, help_text="Detection: boxes matching no object."),
    "has_prediction": serializers.BooleanField(required=False, help_text="Segmentation: its predicted mask was kept."),
    "image_url": serializers.CharField(),
    "truth_url": serializers.CharField(required=False, help_text="Segmentation and detection: the ground truth drawn."),
})


class EvaluationImagesApi(APIView):
    """A page of the evaluated images: `view=all` (every image, in order), `view=mistakes` (misclassified, most confident first;
    optionally of one `label` or `predicted` class), `view=cell` (one confusion-matrix cell:
    `label` given, `predicted` predicted) or `view=top` (the images scoring highest for
    class `label`, DIGITS' top-N per category). Segmentation and detection: `view=worst`
    (the lowest scores first, the default) or `view=all`."""

    @extend_schema(
        parameters=[
            OpenApiParameter("view", str, enum=["all", "mistakes", "cell", "top", "worst"]),
            OpenApiParameter("label", int), OpenApiParameter("predicted", int),
            OpenApiParameter("page", int), OpenApiParameter("per_page", int),
        ],
        responses=inline_serializer("EvaluationImages", {
            "view": serializers.CharField(), "label": serializers.IntegerField(allow_null=True),
            "predicted": serializers.IntegerField(allow_null=True), "page": serializers.IntegerField(),
            "pages": serializers.IntegerField(), "per_page": serializers.IntegerField(), "total": serializers.IntegerField(),
            "images": _IMAGE_ROW,
        }),
    )
    def get(self, request: Request, pk: int) -> Response:
        evaluation = get_object_or_404(evaluation_list(), pk=pk)
        if is_spatial(evaluation):
            check_dataset_visible(request.user, evaluation)
            page = spatial_images(
                evaluation, view=request.query_params.get("view", "worst"),
                page=_int_param(request, "page") or 1, per_page=_int_param(request, "per_page") or 48,
            )
            for row in page["images"]:
                row["image_url"] = image_url(evaluation, row["index"], api=True, show="prediction")
                row["truth_url"] = image_url(evaluation, row["index"], api=True, show="truth")
            return Response(page)
        page = evaluation_images(
            evaluation, view=request.query_params.get("view", "mistakes"),
            label=_int_param(request, "label"), predicted=_int_param(request, "predicted"),
            page=_int_param(request, "page") or 1, per_page=_int_param(request, "per_page") or 48,
        )
        for row in page["images"]:
            row["image_url"] = image_url(evaluation, row["index"], api=True)
        return Response(page)


def evaluation_image(evaluation: Evaluation, index: int, show: str, user: AnyUser) -> bytes:
    """The PNG behind an image URL of `image_url`."""
    if is_spatial(evaluation):
        check_dataset_visible(user, evaluation)
        return spatial_image(evaluation, index, show or "prediction")
    return evaluation_input_image(evaluation, index)


def image_url(evaluation: Evaluation, index: int, *, api: bool, show: str = "") -> str:
    if show:  # segmentation and detection: the image with the predicted or the true masks or boxes
        return reverse("api_evaluation_image" if api else "evaluation_image", args=[evaluation.pk, index]) + f"?show={show}"
    if evaluation.source == EvaluationSource.SPLIT:
        name = "api_dataset_image" if api else "dataset_image"
        return reverse(name, args=[evaluation.model.dataset_id, evaluation.split, index])
    return reverse("api_evaluation_image" if api else "evaluation_image", args=[evaluation.pk, index])


class EvaluationImageApi(APIView):
    """One classified file of a "classify many" run (a list or an upload), at the dataset's
    image size, as PNG. (A split's images are the dataset's: /api/datasets/ID/images/...)
    Segmentation and detection: image `index` of the split with the predicted masks or
    boxes drawn (`show=prediction`) or its ground truth (`show=truth`)."""

    @extend_schema(
        parameters=[OpenApiParameter("show", str, enum=list(SHOWS))],
        responses={(200, "image/png"): OpenApiTypes.BINARY, 404: ErrorSerializer}, operation_id="evaluations_image",
    )
    def get(self, request: Request, pk: int, index: int) -> HttpResponse:
        evaluation = get_object_or_404(evaluation_list(), pk=pk)
        response = HttpResponse(evaluation_image(evaluation, index, request.query_params.get("show", ""), request.user),
                                content_type="image/png")
        response["Cache-Control"] = "private, max-age=3600"
        return response


class EvaluationCsvApi(APIView):
    """Every image's given label and top-5 predictions with probabilities, as CSV;
    segmentation and detection: every image's score (and its detections)."""

    @extend_schema(responses={(200, "text/csv"): OpenApiTypes.STR})
    def get(self, request: Request, pk: int) -> HttpResponse:
        evaluation = get_object_or_404(evaluation_list(), pk=pk)
        if is_spatial(evaluation):
            check_dataset_visible(request.user, evaluation)
        text = spatial_csv(evaluation) if is_spatial(evaluation) else evaluation_csv(evaluation)
        response = HttpResponse(text, content_type="text/csv")
        response["Content-Disposition"] = f'attachment; filename="evaluation-{evaluation.pk}.csv"'
        return response


_SIDE = inline_serializer("CompareFigure", {"a": serializers.FloatField(), "b": serializers.FloatField(), "delta": serializers.FloatField()})


class EvaluationCompareApi(APIView):
    """Two evaluations side by side (`?a=ID&b=ID`): top-1, top-5 and ECE with their deltas
    (b - a), per-class precision, recall and F1 with deltas, and the confusion-matrix
    difference (b - a). Both must be on the same classes."""

    @extend_schema(
        parameters=[OpenApiParameter("a", int, required=True), OpenApiParameter("b", int, required=True)],
        responses={404: ErrorSerializer, 200: inline_serializer("EvaluationComparison", {
            "a": serializers.IntegerField(), "b": serializers.IntegerField(), "note": serializers.CharField(),
            "labels": serializers.ListField(child=serializers.CharField()),
            "top1": _SIDE, "top5": _SIDE, "ece": _SIDE,
            "classes": serializers.ListField(child=serializers.DictField()),
            "confusion_delta": serializers.ListField(child=serializers.ListField(child=serializers.IntegerField())),
        })},
    )
    def get(self, request: Request) -> Response:
        ids = {name: _int_param(request, name) for name in ("a", "b")}
        for name, value in ids.items():
            if value is None:
                raise JobError(f"Give the id of evaluation {name}.", field=name)
        visible = evaluation_list().filter(visible_q(request.user, "job__"), visible_q(request.user, "model__job__"))
        a = get_object_or_404(visible, pk=ids["a"])
        b = get_object_or_404(visible, pk=ids["b"])
        return Response(evaluation_compare(a, b))
