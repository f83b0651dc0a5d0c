from django.urls import path

from . import assignments, auth, export, images, imports, loop, projects

urlpatterns = [
    path("auth/token", auth.TokenObtainApi.as_view(), name="token"),
    path("auth/tokens", auth.TokenListApi.as_view(), name="tokens"),
    path("auth/tokens/<str:token_key>", auth.TokenRevokeApi.as_view(), name="token-revoke"),
    path("users", auth.UserCreateApi.as_view(), name="users"),
    path("projects", projects.ProjectListCreateApi.as_view(), name="projects"),
    path("projects/<int:project_id>", projects.ProjectDetailApi.as_view(), name="project"),
    path(
        "projects/<int:project_id>/members",
        projects.MembershipListCreateApi.as_view(),
        name="members",
    ),
    path(
        "projects/<int:project_id>/members/<str:username>",
        projects.MembershipDetailApi.as_view(),
        name="member",
    ),
    path("projects/<int:project_id>/imports", imports.ImportCreateApi.as_view(), name="imports"),
    path(
        "projects/<int:project_id>/assignments",
        assignments.AssignmentCreateApi.as_view(),
        name="assignments",
    ),
    path("projects/<int:project_id>/export", export.ExportApi.as_view(), name="export"),
    path(
        "projects/<int:project_id>/export/images",
        images.ExportImagesApi.as_view(),
        name="export-images",
    ),
    path("projects/<int:project_id>/images", images.ImageUploadApi.as_view(), name="images"),
    path(
        "projects/<int:project_id>/images/<str:image_id>",
        images.ImageApi.as_view(),
        name="image",
    ),
    path("imports/<int:import_id>", imports.ImportDetailApi.as_view(), name="import"),
    path(
        "assignments/<int:assignment_id>",
        assignments.AssignmentDetailApi.as_view(),
        name="assignment",
    ),
    path(
        "assignments/<int:assignment_id>/judgement",
        assignments.JudgementApi.as_view(),
        name="judgement",
    ),
    path("assignments/<int:assignment_id>/skip", assignments.SkipApi.as_view(), name="skip"),
    path("projects/<int:project_id>/loop", loop.LoopSettingsApi.as_view(), name="loop"),
    path("projects/<int:project_id>/rounds", loop.RoundsApi.as_view(), name="rounds"),
    path("models", loop.ModelListApi.as_view(), name="models"),
    path("models/<int:model_id>/download", loop.ModelDownloadApi.as_view(), name="model-download"),
]
