"""The Django admin for datasets and uploads."""
from django.contrib import admin

from .models import Dataset, Upload


@admin.register(Dataset)
class DatasetAdmin(admin.ModelAdmin):
    list_display = ["job_id", "name", "owner", "status", "source", "image_width", "image_height", "image_mode", "encoding"]
    list_filter = ["source", "image_mode", "encoding", "job__status"]
    search_fields = ["job__name", "folder", "job__owner__username"]
    list_select_related = ["job", "job__owner"]

    @admin.display(ordering="job__name")
    def name(self, obj: Dataset) -> str:
        return obj.job.name

    @admin.display(ordering="job__owner__username")
    def owner(self, obj: Dataset) -> str:
        return obj.job.owner.username

    @admin.display(ordering="job__status")
    def status(self, obj: Dataset) -> str:
        return obj.job.status


@admin.register(Upload)
class UploadAdmin(admin.ModelAdmin):
    list_display = ["id", "filename", "owner", "size", "received", "complete", "created_at"]
    list_filter = ["complete"]
    search_fields = ["filename", "owner__username"]
