"""The Django admin for models, snapshots, evaluations, exports and sweeps."""
from django.contrib import admin

from .models import Evaluation, Export, Snapshot, Sweep, TrainedModel, Trial


class SnapshotInline(admin.TabularInline):
    model = Snapshot
    extra = 0
    fields = readonly_fields = ("epoch", "iteration", "filename", "val_loss", "val_accuracy", "val_top5", "created_at")


@admin.register(TrainedModel)
class TrainedModelAdmin(admin.ModelAdmin):
    list_display = ["job_id", "name", "owner", "status", "network", "dataset", "epochs", "batch_size", "learning_rate",
                    "best_val_accuracy", "best_epoch"]
    list_filter = ["network", "solver", "lr_policy", "job__status"]
    search_fields = ["job__name", "job__notes", "job__owner__username"]
    list_select_related = ["job", "job__owner", "dataset", "dataset__job"]
    inlines = [SnapshotInline]
    raw_id_fields = ["dataset", "base_model"]

    @admin.display(ordering="job__name")
    def name(self, obj: TrainedModel) -> str:
        return obj.job.name

    @admin.display(ordering="job__owner__username")
    def owner(self, obj: TrainedModel) -> str:
        return obj.job.owner.username

    @admin.display(ordering="job__status")
    def status(self, obj: TrainedModel) -> str:
        return obj.job.status


@admin.register(Snapshot)
class SnapshotAdmin(admin.ModelAdmin):
    list_display = ["id", "model", "epoch", "iteration", "val_accuracy", "val_loss", "created_at"]
    search_fields = ["model__job__name"]
    list_select_related = ["model", "model__job"]
    raw_id_fields = ["model"]


@admin.register(Evaluation)
class EvaluationAdmin(admin.ModelAdmin):
    list_display = ["job_id", "model", "epoch", "source", "split", "description"]
    list_filter = ["source", "split"]
    raw_id_fields = ["model"]


@admin.register(Export)
class ExportAdmin(admin.ModelAdmin):
    list_display = ["job_id", "model", "epoch"]
    raw_id_fields = ["model"]


class TrialInline(admin.TabularInline):
    model = Trial
    extra = 0
    fields = readonly_fields = ("number", "model", "params", "state", "value", "best_epoch", "note")


@admin.register(Sweep)
class SweepAdmin(admin.ModelAdmin):
    list_display = ["id", "name", "owner", "status", "mode", "metric", "max_trials", "max_concurrent", "pruner", "created_at"]
    list_filter = ["status", "mode", "pruner"]
    search_fields = ["name", "owner__username"]
    inlines = [TrialInline]
    raw_id_fields = ["dataset"]
