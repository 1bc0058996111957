"""REST endpoints for datasets and archive uploads: thin views that validate and call services."""
from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpResponse
from django.db.models import QuerySet
from django.shortcuts import get_object_or_404
from django.urls import reverse
from drf_spectacular.extensions import OpenApiSerializerFieldExtension
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_serializer
from rest_framework import generics, serializers, status
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from workers.api import JobEditSerializer, JobSerializer
from workers.errors import JobError
from workers.models import Visibility
from workers.permissions import current_user, visible_q
from workers.listing import job_prefetches
from workers.schema import ErrorSerializer
from workers.services import job_abort, job_update

from .filters import DatasetFilter
from .models import PARAM_FIELDS, Dataset, Upload
from .selectors import LABEL_VIEWS, dataset_gallery, dataset_image, dataset_label_view, dataset_list, dataset_objects
from .services import dataset_clone_params, dataset_create, dataset_delete
from .credentials import credential_create, credential_delete, credential_list
from .models import S3Credential
from .plugins import data_plugins
from .uploads import upload_append, upload_delete, upload_get, upload_start, upload_whole


class PluginOptionsField(serializers.JSONField):
    """source=plugin: the options of the data plugin named by `plugin` (its schema is one of
    the installed plugins' declared fields, below)."""

    def to_internal_value(self, data: Any) -> Any:
        value = super().to_internal_value(data)
        if isinstance(value, str):  # multipart: a JSON object as text
            import json

            try:
                value = json.loads(value or "{}")
            except ValueError:
                raise serializers.ValidationError("Give the plugin's options as a JSON object.") from None
        if not isinstance(value, dict):
            raise serializers.ValidationError("Give the plugin's options as an object.")
        return value


class PluginOptionsSchema(OpenApiSerializerFieldExtension):
    """The API schema of `plugin_options`: one object per installed data plugin, built from
    the fields it declares (found when the schema is made)."""

    target_class = "datasets.api.PluginOptionsField"

    def map_serializer_field(self, auto_schema: Any, direction: Any) -> dict[str, Any]:
        kinds: dict[str, dict[str, Any]] = {
            "text": {"type": "string"}, "path": {"type": "string", "description": "A server path under a data root."},
            "int": {"type": "integer"}, "float": {"type": "number"}, "bool": {"type": "boolean"}, "choice": {"type": "string"},
        }
        variants = []
        for name, plugin in sorted(data_plugins().plugins.items()):
            properties = {
                f.name: {**kinds[f.kind], "title": f.label, **({"description": f.help} if f.help else {}),
                         **({"enum": list(f.choices)} if f.choices else {}), **({"default": f.default} if f.default is not None else {})}
                for f in plugin.fields
            }
            variants.append({"type": "object", "title": f"{name} options", "description": plugin.label,
                             "properties": properties, "additionalProperties": False,
                             "required": [f.name for f in plugin.fields if f.required and f.default is None]})
        if not variants:
            return {"type": "object", "description": "source=plugin: no data plugin is installed."}
        return {"oneOf": variants, "description": "source=plugin: the options of the plugin named by `plugin`."}


class DatasetOutputSerializer(serializers.ModelSerializer):
    id = serializers.IntegerField(source="pk")
    job = JobSerializer()
    upload = serializers.CharField(source="upload_id", allow_null=True)
    s3_credential = serializers.CharField(source="s3_credential.name", allow_null=True, default=None,
                                          help_text="The name of the owner's S3 credential (source=s3).")

    class Meta:
        model = Dataset
        fields = [
            "id", "job", "task", "source", "s3_credential", "s3_bucket", "s3_prefix", "s3_val_prefix", "s3_test_prefix",
            "plugin", "plugin_options", "folder", "val_folder", "test_folder", "label_folder", "class_list", "annotations_file",
            "train_list", "val_list", "test_list",
            "labels_file", "image_folder", "shuffle", "upload", "image_width", "image_height", "image_mode",
            "resize_mode", "encoding", "jpeg_quality", "val_percent", "test_percent", "min_per_class", "max_per_class",
            "seed", "labels", "counts", "class_counts", "skipped", "dropped_classes", "mean_pixel", "build_seconds",
            "label_colours", "ignored_pixels",
        ]


@extend_schema_serializer(component_name="DatasetInput")
class DatasetInputSerializer(serializers.ModelSerializer):
    """A dataset request: the options come from the Dataset model (defaults, choices,
    validators and help declared there once); the job's name, group and notes, the upload
    id and the list files are added here."""

    name = serializers.CharField(max_length=200)
    group = serializers.CharField(max_length=100, required=False, allow_blank=True, default="")
    notes = serializers.CharField(required=False, allow_blank=True, default="")
    visibility = serializers.ChoiceField(choices=Visibility.choices, required=False, default=Visibility.TEAM, help_text="Who may see it: private (you and admins), team (your teams; everyone if you are in none), public.")
    upload = serializers.CharField(required=False, allow_blank=True, default="", help_text="Upload id (source=upload).")
    s3_credential = serializers.CharField(
        required=False, allow_blank=True, default="", help_text="source=s3: the name of one of your S3 credentials.",
    )
    plugin_options = PluginOptionsField(required=False, default=dict)
    train_list_upload = serializers.FileField(required=False, help_text="Multipart: the training list itself.")
    val_list_upload = serializers.FileField(required=False)
    test_list_upload = serializers.FileField(required=False)
    labels_file_upload = serializers.FileField(required=False)

    class Meta:
        model = Dataset
        fields = [
            "name", "group", "notes", "visibility", *PARAM_FIELDS, "upload", "s3_credential", "plugin_options",
            "train_list_upload", "val_list_upload", "test_list_upload", "labels_file_upload",
        ]


def _create(request: Request, data: Any) -> Dataset:
    serializer = DatasetInputSerializer(data=data)
    serializer.is_valid(raise_exception=True)
    values = dict(serializer.validated_data)
    uploaded = {k[: -len("_upload")]: values.pop(k) for k in list(values) if k.endswith("_upload")}
    return dataset_create(owner=current_user(request.user), uploaded=uploaded, **values)


class DatasetListApi(generics.ListAPIView):
    """Datasets, newest first, paginated; filter by owner, status, group, source or name."""

    parser_classes = [JSONParser, MultiPartParser, FormParser]
    serializer_class = DatasetOutputSerializer
    filterset_class = DatasetFilter

    def get_queryset(self) -> QuerySet[Dataset]:
        return dataset_list().filter(visible_q(self.request.user, "job__")).select_related("upload").prefetch_related(
            *job_prefetches("job__")
        )

    @extend_schema(operation_id="datasets_list")
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)

    @extend_schema(request=DatasetInputSerializer, responses={201: DatasetOutputSerializer})
    def post(self, request: Request) -> Response:
        dataset = _create(request, request.data)
        return Response(DatasetOutputSerializer(dataset).data, status=status.HTTP_201_CREATED)


class DatasetDetailApi(APIView):
    @extend_schema(responses=DatasetOutputSerializer)
    def get(self, request: Request, pk: int) -> Response:
        return Response(DatasetOutputSerializer(get_object_or_404(dataset_list(), pk=pk)).data)

    @extend_schema(request=JobEditSerializer, responses=DatasetOutputSerializer)
    def patch(self, request: Request, pk: int) -> Response:
        dataset = get_object_or_404(dataset_list(), pk=pk)
        self.check_object_permissions(request, dataset)
        data = JobEditSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        job_update(dataset.job, **data.validated_data)
        return Response(DatasetOutputSerializer(dataset).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, pk: int) -> Response:
        dataset = get_object_or_404(dataset_list(), pk=pk)
        self.check_object_permissions(request, dataset)
        dataset_delete(dataset)
        return Response(status=status.HTTP_204_NO_CONTENT)


class DatasetAbortApi(APIView):
    @extend_schema(request=None, responses=DatasetOutputSerializer)
    def post(self, request: Request, pk: int) -> Response:
        dataset = get_object_or_404(dataset_list(), pk=pk)
        self.check_object_permissions(request, dataset)
        job_abort(dataset.job)
        dataset.job.refresh_from_db()
        return Response(DatasetOutputSerializer(dataset).data)


class DatasetCloneApi(APIView):
    """Create a new dataset with the same parameters; any field in the body overrides."""

    @extend_schema(request=DatasetInputSerializer, responses={201: DatasetOutputSerializer})
    def post(self, request: Request, pk: int) -> Response:
        original = get_object_or_404(dataset_list(), pk=pk)
        data = {k: v for k, v in dataset_clone_params(original).items() if v is not None}
        data.update(request.data.dict() if hasattr(request.data, "dict") else request.data)
        dataset = _create(request, data)
        return Response(DatasetOutputSerializer(dataset).data, status=status.HTTP_201_CREATED)


class DatasetImagesApi(APIView):
    """The explore gallery as JSON: one page of a split, optionally of one class."""

    @extend_schema(
        parameters=[
            OpenApiParameter("split", str, enum=["train", "val", "test"]),
            OpenApiParameter("label", int), OpenApiParameter("page", int), OpenApiParameter("per_page", int),
        ],
        responses=dict,
    )
    def get(self, request: Request, pk: int) -> Response:
        dataset = get_object_or_404(dataset_list(), pk=pk)
        q = request.query_params
        label = int(q["label"]) if q.get("label", "").isdecimal() else None
        page = dataset_gallery(
            dataset, q.get("split", "train"), label=label,
            page=int(q.get("page", 1)) if str(q.get("page", "1")).isdecimal() else 1,
            per_page=int(q.get("per_page", 60)) if str(q.get("per_page", "60")).isdecimal() else 60,
        )
        return Response({
            "split": page.split, "label": page.label, "page": page.page, "pages": page.pages,
            "per_page": page.per_page, "total": page.total,
            "images": [
                {
                    # Segmentation and detection: no class per image.
                    "index": i, "label": lab if dataset.task == "classification" else None,
                    "label_name": dataset.labels[lab] if dataset.task == "classification" else None,
                    "url": reverse("api_dataset_image", args=[dataset.pk, page.split, i]),
                    # Detection: the image's boxes, in the stored image's pixels.
                    **({"objects": dataset_objects(dataset, page.split, i)} if dataset.is_detection else {}),
                }
                for i, lab in zip(page.indices, page.labels)
            ],
        })


class DatasetImageApi(APIView):
    @extend_schema(
        responses={(200, "image/png"): bytes}, operation_id="datasets_image_retrieve",
        parameters=[OpenApiParameter(
            "show", str, enum=list(LABEL_VIEWS),
            description="Segmentation datasets: the label image in its classes' colours, or over the image; "
            "detection datasets: the image with its boxes.",
        )],
    )
    def get(self, request: Request, pk: int, split: str, index: int) -> HttpResponse:
        dataset = get_object_or_404(dataset_list(), pk=pk)
        show = request.query_params.get("show", "image")
        if show != "image":
            return HttpResponse(dataset_label_view(dataset, split, index, show), content_type="image/png")
        data, content_type, label = dataset_image(dataset, split, index)
        response = HttpResponse(data, content_type=content_type)
        response["X-Label"] = str(label)
        return response


class UploadSerializer(serializers.ModelSerializer):
    offset = serializers.IntegerField(source="received", read_only=True)

    class Meta:
        model = Upload
        fields = ["id", "filename", "size", "offset", "complete", "created_at"]


class UploadListApi(APIView):
    """Start a resumable upload with JSON {filename, size}, then PUT its chunks; or send a
    small archive whole as multipart `file`."""

    parser_classes = [JSONParser, MultiPartParser]

    class StartSerializer(serializers.Serializer):
        filename = serializers.CharField(max_length=255)
        size = serializers.IntegerField(min_value=1)

    @extend_schema(request=StartSerializer, responses={201: UploadSerializer})
    def post(self, request: Request) -> Response:
        if request.content_type.startswith("multipart/"):
            # Refuse by the announced length before the body is read at all.
            if int(request.META.get("CONTENT_LENGTH") or 0) > settings.MAX_UPLOAD_ARCHIVE_BYTES:
                raise JobError(f"The archive is larger than {settings.MAX_UPLOAD_ARCHIVE_BYTES >> 20} MiB.")
            file = request.FILES.get("file")
            if file is None:
                raise JobError("Send the archive as the multipart field `file`.")
            upload = upload_whole(owner=current_user(request.user), file=file)
            return Response(UploadSerializer(upload).data, status=status.HTTP_201_CREATED)
        data = self.StartSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        upload = upload_start(owner=current_user(request.user), **data.validated_data)
        return Response(UploadSerializer(upload).data, status=status.HTTP_201_CREATED)


class UploadDetailApi(APIView):
    @extend_schema(responses=UploadSerializer)
    def get(self, request: Request, pk: str) -> Response:
        return Response(UploadSerializer(upload_get(pk, request.user)).data)

    @extend_schema(
        request={"application/octet-stream": bytes},
        parameters=[OpenApiParameter("Upload-Offset", int, OpenApiParameter.HEADER, required=True)],
        responses=UploadSerializer,
    )
    def put(self, request: Request, pk: str) -> Response:
        """Append one chunk (the raw request body) at the offset in the Upload-Offset header."""
        upload = upload_get(pk, request.user)
        try:
            offset = int(request.headers.get("Upload-Offset", ""))
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            raise JobError("Send the chunk's offset in the Upload-Offset header.") from None
        # Stream from the request itself, never loading the chunk via request.body.
        upload_append(upload, offset, request._request.read, length)
        return Response(UploadSerializer(upload).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, pk: str) -> Response:
        upload_delete(upload_get(pk, request.user))
        return Response(status=status.HTTP_204_NO_CONTENT)


class S3CredentialSerializer(serializers.ModelSerializer):
    """A stored credential as anyone sees it: never its secret."""

    class Meta:
        model = S3Credential
        fields = ["id", "name", "endpoint_url", "region", "access_key_id", "created_at"]


@extend_schema_serializer(component_name="S3CredentialInput")
class S3CredentialInputSerializer(serializers.ModelSerializer):
    secret_access_key = serializers.CharField(write_only=True, trim_whitespace=False, help_text="Stored encrypted; never returned.")

    class Meta:
        model = S3Credential
        fields = ["name", "endpoint_url", "region", "access_key_id", "secret_access_key"]
        # Names are unique per owner, checked by the service (409 Conflict).
        validators: list[Any] = []


class S3CredentialListApi(generics.ListAPIView):
    """Your S3 credentials (endpoint, access key id; never the secret); POST adds one."""

    serializer_class = S3CredentialSerializer

    def get_queryset(self) -> QuerySet[S3Credential]:
        if getattr(self, "swagger_fake_view", False):  # the schema generator has no user
            return S3Credential.objects.none()
        return credential_list(current_user(self.request.user)).order_by("name", "pk")

    @extend_schema(operation_id="s3_credentials_list")
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)

    @extend_schema(request=S3CredentialInputSerializer, responses={201: S3CredentialSerializer, 409: ErrorSerializer})
    def post(self, request: Request) -> Response:
        data = S3CredentialInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        credential = credential_create(owner=current_user(request.user), **data.validated_data)
        return Response(S3CredentialSerializer(credential).data, status=status.HTTP_201_CREATED)


class S3CredentialDetailApi(APIView):
    @extend_schema(responses={204: None})
    def delete(self, request: Request, pk: int) -> Response:
        credential_delete(get_object_or_404(credential_list(current_user(request.user)), pk=pk))
        return Response(status=status.HTTP_204_NO_CONTENT)
