from django.contrib import admin, messages

from . import models, services
from .errors import TandemError


class MembershipInline(admin.TabularInline):
    """Shown for reference; members change through the Memberships admin (or the project page),
    which goes through the services: a removed member's leases return to the queue, and the last
    manager stays."""

    model = models.Membership
    extra = 0
    can_delete = False
    fields = ["user", "role", "created_at"]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(models.Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "name",
        "kind",
        "overlap",
        "lease_seconds",
        "created_by",
        "created_at",
        "archived",
    ]
    list_filter = ["kind", "archived", "created_at"]
    search_fields = ["name"]
    inlines = [MembershipInline]


@admin.register(models.Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["id", "project", "user", "role", "created_at"]
    list_filter = ["role", "project"]
    search_fields = ["user__username", "project__name"]
    list_select_related = ["project", "user"]
    autocomplete_fields = ["user"]

    def get_readonly_fields(self, request, obj=None):
        # Who and where are fixed once a membership exists; only the role changes.
        return ["project", "user"] if obj is not None else []

    def save_model(self, request, obj, form, change):
        try:
            services.membership_set(
                project=obj.project, username=obj.user.get_username(), role=obj.role
            )
        except TandemError as exc:
            self.message_user(request, exc.message, messages.ERROR)

    def delete_model(self, request, obj):
        try:
            services.membership_remove(project=obj.project, username=obj.user.get_username())
        except TandemError as exc:
            self.message_user(request, exc.message, messages.ERROR)

    def delete_queryset(self, request, queryset):
        for membership in queryset.select_related("project", "user"):
            self.delete_model(request, membership)


@admin.register(models.ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Tokens can be looked at and revoked here; they are issued only to their owner (the API)."""

    list_display = ["token_key", "name", "user", "created", "expiry"]
    list_select_related = ["user"]
    search_fields = ["token_key", "name", "user__username"]
    fields = ["token_key", "name", "user", "created", "expiry"]
    readonly_fields = fields

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(models.Prompt)
class PromptAdmin(admin.ModelAdmin):
    list_display = ["id", "project", "external_id", "split", "created_at"]
    list_filter = ["split", "project"]
    search_fields = ["external_id"]
    list_select_related = ["project"]
    raw_id_fields = ["project"]


@admin.register(models.Response)
class ResponseAdmin(admin.ModelAdmin):
    list_display = ["id", "prompt", "model_name", "model_version", "created_at"]
    list_filter = ["model_name"]
    raw_id_fields = ["prompt", "model_version"]


class TaskResponseInline(admin.TabularInline):
    model = models.TaskResponse
    extra = 0
    raw_id_fields = ["response"]


@admin.register(models.Task)
class TaskAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "project",
        "kind",
        "round",
        "priority",
        "overlap",
        "judgement_count",
        "live_leases",
        "is_complete",
        "is_gold",
    ]
    list_filter = ["kind", "is_complete", "is_gold", "round", "project"]
    list_select_related = ["project"]
    raw_id_fields = ["prompt"]
    inlines = [TaskResponseInline]


@admin.register(models.Assignment)
class AssignmentAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "task",
        "annotator",
        "project",
        "status",
        "leased_at",
        "expires_at",
        "finished_at",
    ]
    list_filter = ["status", "project"]
    search_fields = ["annotator__username"]
    list_select_related = ["annotator", "project"]
    raw_id_fields = ["task"]


@admin.register(models.Judgement)
class JudgementAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "task",
        "annotator",
        "project",
        "kind",
        "answer",
        "late",
        "time_spent_ms",
        "created_at",
    ]
    list_filter = ["kind", "answer", "late", "project", "created_at"]
    search_fields = ["annotator__username", "rationale"]
    list_select_related = ["annotator", "project"]
    raw_id_fields = ["task", "assignment"]


@admin.register(models.ImportJob)
class ImportJobAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "project",
        "status",
        "filename",
        "lines_total",
        "lines_done",
        "created",
        "created_at",
    ]
    list_filter = ["status", "project"]
    list_select_related = ["project"]


@admin.register(models.ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ["id", "project", "kind", "round", "name", "created_at"]
    list_filter = ["kind", "project"]


class TrainingRunInline(admin.TabularInline):
    model = models.TrainingRun
    extra = 0
    fields = [
        "stage",
        "status",
        "attempts",
        "progress_step",
        "progress_total",
        "loss",
        "heartbeat_at",
        "error",
    ]
    readonly_fields = fields


@admin.register(models.Round)
class RoundAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "project",
        "number",
        "status",
        "trigger",
        "judgements",
        "reward_accuracy",
        "started_at",
        "finished_at",
    ]
    list_filter = ["status", "trigger", "project"]
    list_select_related = ["project"]
    inlines = [TrainingRunInline]


@admin.register(models.TrainingRun)
class TrainingRunAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "round",
        "stage",
        "status",
        "attempts",
        "progress_step",
        "progress_total",
        "heartbeat_at",
        "started_at",
        "finished_at",
    ]
    list_filter = ["status", "stage", "round__project"]
    list_select_related = ["round", "round__project"]
