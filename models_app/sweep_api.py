"""REST endpoints for sweeps: create one (grid, random search or Optuna over a search
space, every trial an ordinary model), list them, read one with its trials (best first),
abort every unfinished trial, delete the record."""
from __future__ import annotations

from typing import Any, cast

from django.db.models import QuerySet
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import generics, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from datasets.selectors import dataset_list
from workers.api import IdRelatedField
from workers.errors import Forbidden, JobError
from workers.models import Priority
from workers.permissions import current_user
from workers.services import placement_check

from .models import Pruner, Sweep, SweepMode, Trial
from .sweeps import parse_space_text, sweep_abort, sweep_advance, sweep_create, sweep_list, sweep_summary


class TrialSerializer(serializers.ModelSerializer):
    model = serializers.IntegerField(source="model_id", allow_null=True)
    status = serializers.SerializerMethodField(help_text="The model's job status (null once the model is deleted).")

    class Meta:
        model = Trial
        fields = ["number", "model", "params", "state", "value", "best_epoch", "note", "status"]

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_status(self, trial: Trial) -> str | None:
        return trial.model.job.status if trial.model_id and trial.model else None


class SweepSerializer(serializers.ModelSerializer):
    id = serializers.IntegerField(source="pk")
    owner = serializers.CharField(source="owner.username")
    dataset = serializers.IntegerField(source="dataset_id")
    counts = serializers.SerializerMethodField(help_text="Trials per state.")
    best = serializers.SerializerMethodField(help_text="The best complete trial by the metric.")
    trials = serializers.SerializerMethodField()

    class Meta:
        model = Sweep
        fields = ["id", "name", "owner", "group", "dataset", "status", "mode", "space", "base", "metric", "max_trials",
                  "max_concurrent", "pruner", "seed", "created_at", "finished_at", "counts", "best", "trials"]

    def _summary(self, sweep: Sweep) -> dict[str, Any]:
        cache = cast(dict[str, Any], self.context).setdefault("summaries", {})
        if sweep.pk not in cache:
            cache[sweep.pk] = sweep_summary(sweep)
        return cache[sweep.pk]

    @extend_schema_field(serializers.DictField(child=serializers.IntegerField()))
    def get_counts(self, sweep: Sweep) -> dict[str, int]:
        return self._summary(sweep)["counts"]

    @extend_schema_field(TrialSerializer(allow_null=True))
    def get_best(self, sweep: Sweep) -> dict[str, Any] | None:
        best = self._summary(sweep)["best"]
        return TrialSerializer(best).data if best else None

    @extend_schema_field(TrialSerializer(many=True))
    def get_trials(self, sweep: Sweep) -> list[dict[str, Any]]:
        return list(TrialSerializer(self._summary(sweep)["trials"], many=True).data)


class SweepInputSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    dataset = IdRelatedField(queryset=dataset_list())
    mode = serializers.ChoiceField(choices=SweepMode.choices, default=SweepMode.GRID)
    space = serializers.JSONField(required=False, help_text='{"learning_rate": [0.1, 0.01], "batch_size": {"low": 16, "high": 128, '
                                  '"step": 16}, "weight_decay": {"low": 1e-6, "high": 1e-2, "log": true}}; ranges: random and optuna.')
    space_text = serializers.CharField(required=False, help_text="Instead of `space`: the model form's lines, "
                                       "`learning_rate = 0.1, 0.01` or `weight_decay = 1e-6 .. 1e-2 log`.")
    base = serializers.DictField(required=False, default=dict, help_text="Every other model parameter, shared by the trials.")
    max_trials = serializers.IntegerField(min_value=1, max_value=1000, default=16)
    max_concurrent = serializers.IntegerField(min_value=1, max_value=64, default=2)
    metric = serializers.ChoiceField(choices=["val_accuracy", "val_loss"], default="val_accuracy")
    pruner = serializers.ChoiceField(choices=Pruner.choices, default=Pruner.NONE)
    seed = serializers.IntegerField(min_value=0, default=0)
    group = serializers.CharField(max_length=100, required=False, allow_blank=True, default="")
    devices = serializers.IntegerField(min_value=1, default=1, help_text="Devices per trial.")
    priority = serializers.ChoiceField(choices=[p.name.lower() for p in Priority], default="normal")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        text = attrs.pop("space_text", None)
        if text is not None:
            try:
                attrs["space"] = parse_space_text(text)
            except JobError as exc:
                raise serializers.ValidationError({"space_text": [str(exc)]}) from None
        if "space" not in attrs:
            raise serializers.ValidationError({"space": ["Give the search space (space, or space_text)."]})
        return attrs


class SweepListApi(generics.ListAPIView):
    """Sweeps, newest first; POST starts one."""

    serializer_class = SweepSerializer

    def get_queryset(self) -> QuerySet[Sweep]:
        return sweep_list(self.request.user)

    @extend_schema(operation_id="sweeps_list")
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)

    @extend_schema(request=SweepInputSerializer, responses={201: SweepSerializer})
    def post(self, request: Request) -> Response:
        data = SweepInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        user = current_user(request.user)
        placement = placement_check(user, devices=values.pop("devices"), priority=Priority[values.pop("priority").upper()])
        sweep = sweep_create(owner=user, placement=placement, **values)
        return Response(SweepSerializer(sweep_list().get(pk=sweep.pk)).data, status=status.HTTP_201_CREATED)


def _own(request: Request, sweep: Sweep) -> None:
    if not (request.user.pk == sweep.owner_id or getattr(request.user, "is_staff", False)):
        raise Forbidden("Only the owner of this sweep (or an admin) can change it.")


class SweepDetailApi(APIView):
    @extend_schema(responses=SweepSerializer)
    def get(self, request: Request, pk: int) -> Response:
        sweep = get_object_or_404(sweep_list(), pk=pk)
        sweep_advance(sweep.pk)  # a trial cancelled while queued must not stall it
        return Response(SweepSerializer(sweep_list().get(pk=pk)).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, pk: int) -> Response:
        """The sweep's record; its trials' models stay (delete them from the models list)."""
        sweep = get_object_or_404(sweep_list(), pk=pk)
        _own(request, sweep)
        if sweep.status == "running":
            sweep_abort(sweep)
        sweep.delete()
        return Response(status=status.HTTP_204_NO_CONTENT)


class SweepAbortApi(APIView):
    @extend_schema(request=None, responses=SweepSerializer)
    def post(self, request: Request, pk: int) -> Response:
        sweep = get_object_or_404(sweep_list(), pk=pk)
        _own(request, sweep)
        sweep_abort(sweep)
        return Response(SweepSerializer(sweep_list().get(pk=pk)).data)
