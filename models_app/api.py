"""REST endpoints for models: create, inspect, metrics, abort, delete, classify, download."""
from __future__ import annotations

from django.http import FileResponse
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_serializer, inline_serializer
from rest_framework import serializers, status
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from datasets.selectors import dataset_list
from workers.api import JobSerializer, require_owner
from workers.services import JobError, job_abort

from .export import archive_name, build_archive
from .models import Network, Snapshot, Solver, TrainedModel
from .selectors import model_list, model_metrics
from .services import model_classify_upload, model_create, model_delete, snapshot_for


class SnapshotSerializer(serializers.ModelSerializer):
    class Meta:
        model = Snapshot
        fields = ["epoch", "created_at", "val_loss", "val_accuracy"]


class ModelOutputSerializer(serializers.ModelSerializer):
    id = serializers.IntegerField(source="pk")
    job = JobSerializer()
    dataset = serializers.IntegerField(source="dataset_id")
    snapshots = SnapshotSerializer(many=True)

    class Meta:
        model = TrainedModel
        fields = [
            "id", "job", "dataset", "network", "solver", "epochs", "batch_size", "learning_rate", "momentum",
            "weight_decay", "seed", "snapshots",
        ]


class ModelListApi(APIView):
    @extend_schema_serializer(component_name="ModelInput")
    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=200)
        dataset = serializers.IntegerField()
        network = serializers.ChoiceField(choices=Network.choices, default=Network.LENET)
        solver = serializers.ChoiceField(choices=Solver.choices, default=Solver.SGD)
        epochs = serializers.IntegerField(min_value=1, max_value=10_000, default=10)
        batch_size = serializers.IntegerField(min_value=1, max_value=65_536, default=64)
        learning_rate = serializers.FloatField(min_value=1e-12, max_value=10, default=0.01)
        momentum = serializers.FloatField(min_value=0, max_value=0.9999, default=0.9)
        weight_decay = serializers.FloatField(min_value=0, max_value=0.9999, default=0.0)
        seed = serializers.IntegerField(default=0)

        def validate_dataset(self, value: int):  # noqa: ANN201
            dataset = dataset_list().filter(pk=value).first()
            if dataset is None:
                raise serializers.ValidationError(f"Dataset {value} does not exist.")
            return dataset

    @extend_schema(responses=ModelOutputSerializer(many=True), operation_id="models_list")
    def get(self, request):  # noqa: ANN001, ANN201
        models = model_list().prefetch_related("job__events", "snapshots")
        return Response(ModelOutputSerializer(models[:500], many=True).data)

    @extend_schema(request=InputSerializer, responses={201: ModelOutputSerializer})
    def post(self, request):  # noqa: ANN001, ANN201
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        model = model_create(owner=request.user, **data.validated_data)
        return Response(ModelOutputSerializer(model).data, status=status.HTTP_201_CREATED)


class ModelDetailApi(APIView):
    @extend_schema(responses=ModelOutputSerializer)
    def get(self, request, pk: int):  # noqa: ANN001, ANN201
        return Response(ModelOutputSerializer(get_object_or_404(model_list(), pk=pk)).data)

    @extend_schema(responses={204: None})
    def delete(self, request, pk: int):  # noqa: ANN001, ANN201
        model = get_object_or_404(model_list(), pk=pk)
        require_owner(model.job, request.user)
        model_delete(model)
        return Response(status=status.HTTP_204_NO_CONTENT)


class ModelAbortApi(APIView):
    @extend_schema(request=None, responses=ModelOutputSerializer)
    def post(self, request, pk: int):  # noqa: ANN001, ANN201
        model = get_object_or_404(model_list(), pk=pk)
        require_owner(model.job, request.user)
        job_abort(model.job)
        model.job.refresh_from_db()
        return Response(ModelOutputSerializer(model).data)


class ModelMetricsApi(APIView):
    """Chart series; ?after=N returns only points after iteration N (for polling clients)."""

    @extend_schema(
        parameters=[OpenApiParameter("after", int, description="only points after this iteration")],
        responses=OpenApiTypes.OBJECT,
    )
    def get(self, request, pk: int):  # noqa: ANN001, ANN201
        model = get_object_or_404(model_list(), pk=pk)
        after = request.query_params.get("after")
        return Response(model_metrics(model, after_iteration=int(after) if after and after.isdigit() else None))


def _epoch_param(raw: object) -> int | None:
    if raw in (None, ""):
        return None
    try:
        return int(str(raw))
    except ValueError:
        raise JobError("epoch must be a whole number (the snapshot's epoch).") from None


class ModelClassifyApi(APIView):
    """Classify one uploaded image with a snapshot (default: the latest): top-5."""

    parser_classes = [MultiPartParser, FormParser]

    @extend_schema(
        request=inline_serializer("ClassifyInput", {"image": serializers.ImageField(), "epoch": serializers.IntegerField(required=False)}),
        responses=inline_serializer(
            "ClassifyOutput",
            {
                "epoch": serializers.IntegerField(),
                "predictions": inline_serializer(
                    "Prediction",
                    {"label": serializers.CharField(), "index": serializers.IntegerField(), "probability": serializers.FloatField()},
                    many=True,
                ),
            },
        ),
    )
    def post(self, request, pk: int):  # noqa: ANN001, ANN201
        model = get_object_or_404(model_list(), pk=pk)
        upload = request.FILES.get("image")
        if upload is None:
            raise JobError("Attach an image file in the 'image' field.")
        snapshot, predictions = model_classify_upload(model, _epoch_param(request.data.get("epoch")), upload)
        return Response({"epoch": snapshot.epoch, "predictions": predictions})


class ModelDownloadApi(APIView):
    """The model as a .tar.gz (?epoch=N, default: the latest snapshot)."""

    @extend_schema(
        parameters=[OpenApiParameter("epoch", int, description="snapshot epoch; default: the latest")],
        responses={(200, "application/gzip"): OpenApiTypes.BINARY},
    )
    def get(self, request, pk: int):  # noqa: ANN001, ANN201
        model = get_object_or_404(model_list(), pk=pk)
        snapshot = snapshot_for(model, _epoch_param(request.query_params.get("epoch")))
        path = build_archive(model, snapshot)
        handle = path.open("rb")
        path.unlink()  # the open handle keeps the data until the response is sent
        return FileResponse(handle, as_attachment=True, filename=archive_name(model, snapshot), content_type="application/gzip")
