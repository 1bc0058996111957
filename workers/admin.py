"""The Django admin for the engine's rows: jobs, devices and who held them, limits and quotas."""
from django.contrib import admin
from django.http import HttpRequest

from .models import AuditEntry, Allocation, Device, DeviceLimit, FairShareUsage, Job, TeamAdmin, TeamLimit


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ["id", "name", "kind", "owner", "status", "priority", "group", "created_at", "started_at", "finished_at"]
    list_filter = ["kind", "status", "priority", "owner"]
    search_fields = ["name", "group", "notes", "owner__username"]
    date_hierarchy = "created_at"
    readonly_fields = ["created_at", "started_at", "finished_at", "attempt", "runner_host", "runner_pid"]
    list_select_related = ["owner"]


@admin.register(Device)
class DeviceAdmin(admin.ModelAdmin):
    list_display = ["id", "label", "name", "host", "kind", "index", "enabled", "last_seen", "memory_total"]
    list_filter = ["kind", "host", "enabled"]
    search_fields = ["label", "name", "host", "uuid"]


@admin.register(Allocation)
class AllocationAdmin(admin.ModelAdmin):
    list_display = ["id", "job_name", "owner", "device", "rank", "world_size", "attempt", "allocated_at", "released_at", "outcome"]
    list_filter = ["outcome", "device", "owner"]
    search_fields = ["job_name", "owner__username"]
    list_select_related = ["owner", "device"]


@admin.register(DeviceLimit)
class DeviceLimitAdmin(admin.ModelAdmin):
    list_display = ["user", "max_devices", "max_device_hours_per_week"]
    search_fields = ["user__username"]


@admin.register(TeamLimit)
class TeamLimitAdmin(admin.ModelAdmin):
    """A team is a Django group (Authentication and authorization → Groups)."""

    list_display = ["team", "max_devices", "max_device_hours_per_week"]
    search_fields = ["team__name"]


@admin.register(FairShareUsage)
class FairShareUsageAdmin(admin.ModelAdmin):
    """Folded usage only: the console shows it with what is still running."""

    list_display = ["user", "device_seconds", "at"]
    readonly_fields = ["user", "device_seconds", "at"]


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin):
    """Read only: the log is written by workers/audit.py, never edited."""

    list_display = ["at", "username", "action", "target", "status", "method", "path", "address"]
    list_filter = ["action", "status"]
    search_fields = ["username", "target", "path"]
    date_hierarchy = "at"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(TeamAdmin)
class TeamAdminAdmin(admin.ModelAdmin):
    """Team admins may change their team members' jobs (teams: Authentication → Groups)."""

    list_display = ["team", "user"]
    list_filter = ["team"]
    search_fields = ["user__username", "team__name"]
