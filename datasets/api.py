"""REST endpoints for datasets: thin views that validate and call services."""
from __future__ import annotations

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema, extend_schema_serializer
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from workers.api import JobSerializer, require_owner
from workers.services import job_abort

from .models import Dataset, ImageMode, ResizeMode
from .selectors import dataset_list
from .services import dataset_create, dataset_delete


class DatasetOutputSerializer(serializers.ModelSerializer):
    id = serializers.IntegerField(source="pk")
    job = JobSerializer()

    class Meta:
        model = Dataset
        fields = [
            "id", "job", "folder", "image_width", "image_height", "image_mode", "resize_mode", "val_percent",
            "seed", "labels", "counts", "class_counts", "skipped", "mean_pixel",
        ]


class DatasetListApi(APIView):
    @extend_schema_serializer(component_name="DatasetInput")
    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=200)
        folder = serializers.CharField(max_length=1000, help_text="Server folder of class subfolders.")
        image_width = serializers.IntegerField(min_value=1, max_value=4096, default=28)
        image_height = serializers.IntegerField(min_value=1, max_value=4096, default=28)
        image_mode = serializers.ChoiceField(choices=ImageMode.choices, default=ImageMode.COLOR)
        resize_mode = serializers.ChoiceField(choices=ResizeMode.choices, default=ResizeMode.SQUASH)
        val_percent = serializers.FloatField(min_value=0, max_value=99, default=25.0)
        seed = serializers.IntegerField(default=0)

    @extend_schema(responses=DatasetOutputSerializer(many=True), operation_id="datasets_list")
    def get(self, request):  # noqa: ANN001, ANN201
        datasets = dataset_list().prefetch_related("job__events")
        return Response(DatasetOutputSerializer(datasets[:500], many=True).data)

    @extend_schema(request=InputSerializer, responses={201: DatasetOutputSerializer})
    def post(self, request):  # noqa: ANN001, ANN201
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        dataset = dataset_create(owner=request.user, **data.validated_data)
        return Response(DatasetOutputSerializer(dataset).data, status=status.HTTP_201_CREATED)


class DatasetDetailApi(APIView):
    @extend_schema(responses=DatasetOutputSerializer)
    def get(self, request, pk: int):  # noqa: ANN001, ANN201
        return Response(DatasetOutputSerializer(get_object_or_404(dataset_list(), pk=pk)).data)

    @extend_schema(responses={204: None})
    def delete(self, request, pk: int):  # noqa: ANN001, ANN201
        dataset = get_object_or_404(dataset_list(), pk=pk)
        require_owner(dataset.job, request.user)
        dataset_delete(dataset)
        return Response(status=status.HTTP_204_NO_CONTENT)


class DatasetAbortApi(APIView):
    @extend_schema(request=None, responses=DatasetOutputSerializer)
    def post(self, request, pk: int):  # noqa: ANN001, ANN201
        dataset = get_object_or_404(dataset_list(), pk=pk)
        require_owner(dataset.job, request.user)
        job_abort(dataset.job)
        dataset.job.refresh_from_db()
        return Response(DatasetOutputSerializer(dataset).data)
