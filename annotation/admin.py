from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.core.files.storage import storages
from django.forms.models import BaseInlineFormSet
from django.http import FileResponse, Http404
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils.html import format_html

from . import models, services
from .api.images import IMAGE_HEADERS
from .errors import TandemError
from .services.images import BY_NAME

# The project page lists this many of its images (the most recent); the Images list has them all.
INLINE_IMAGES = 50
_PREVIEW_SIDE = 96


def image_preview(image: models.Image, *, side: int = _PREVIEW_SIDE) -> str:
    """An <img> of the image's thumbnail, served to staff by ImageAdmin's own view."""
    scale = min(1.0, side / max(image.width, image.height, 1))
    return format_html(
        '<img src="{}" width="{}" height="{}" alt="sha256:{}" loading="lazy">',
        reverse("admin:annotation_image_file", args=[image.sha256]) + "?size=thumb",
        max(1, round(image.width * scale)),
        max(1, round(image.height * scale)),
        image.sha256,
    )


class _RecentImages(BaseInlineFormSet):
    def get_queryset(self):
        if not hasattr(self, "_recent"):
            self._recent = super().get_queryset().order_by("-id")[:INLINE_IMAGES]
            self._queryset = self._recent
        return self._recent


class ProjectImageInline(admin.TabularInline):
    """The project's images, shown: they are added by uploads and imports (which verify them)."""

    model = models.ProjectImage
    formset = _RecentImages
    extra = 0
    can_delete = False
    fields = ["preview", "image", "created_at"]
    readonly_fields = fields
    verbose_name_plural = f"Images (the {INLINE_IMAGES} most recent)"

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("image")

    @admin.display(description="Preview")
    def preview(self, obj: models.ProjectImage) -> str:
        return image_preview(obj.image)

    def has_add_permission(self, request, obj=None) -> bool:
        return False


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
    inlines = [MembershipInline, ProjectImageInline]


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


@admin.register(models.Image)
class ImageAdmin(admin.ModelAdmin):
    """Images, looked at only: they enter through uploads and imports, which verify and strip
    them, and they are deleted with nothing (a row lost would leave prompts naming nothing)."""

    list_display = ["preview", "sha256", "format", "width", "height", "size_bytes", "created_at"]
    list_filter = ["format", "created_at"]
    search_fields = ["sha256"]
    fields = [
        "large_preview",
        "sha256",
        "format",
        "width",
        "height",
        "size_bytes",
        "file",
        "thumbnail",
        "created_at",
        "in_projects",
    ]
    readonly_fields = fields

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="Preview")
    def preview(self, obj: models.Image) -> str:
        return image_preview(obj)

    @admin.display(description="Image")
    def large_preview(self, obj: models.Image) -> str:
        full = reverse("admin:annotation_image_file", args=[obj.sha256])
        return format_html('<a href="{}">{}</a>', full, image_preview(obj, side=512))

    @admin.display(description="Projects")
    def in_projects(self, obj: models.Image) -> str:
        names = obj.projects.select_related("project").values_list("project__name", flat=True)
        return ", ".join(names[:20])

    def get_urls(self):
        return [
            path(
                "<str:sha256>/file/",
                self.admin_site.admin_view(self.file_view),
                name="annotation_image_file",
            ),
            *super().get_urls(),
        ]

    def file_view(self, request, sha256: str):
        """The image or (?size=thumb) its thumbnail, to staff who may view images."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        image = get_object_or_404(models.Image, pk=sha256)
        thumb = request.GET.get("size") == "thumb"
        fmt = BY_NAME[image.format]
        try:
            stored = storages["default"].open(image.thumbnail if thumb else image.file, "rb")
        except FileNotFoundError:
            raise Http404("the image file is missing from storage") from None
        response = FileResponse(stored, content_type=fmt.mime)
        for header, value in IMAGE_HEADERS.items():
            response[header] = value
        return response
