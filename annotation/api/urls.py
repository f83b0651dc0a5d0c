from django.urls import path

from . import loop, views

urlpatterns = [
    path("auth/token", views.TokenObtainApi.as_view(), name="token"),
    path("users", views.UserCreateApi.as_view(), name="users"),
    path("projects", views.ProjectListCreateApi.as_view(), name="projects"),
    path("projects/<int:project_id>", views.ProjectDetailApi.as_view(), name="project"),
    path("projects/<int:project_id>/members", views.MembershipCreateApi.as_view(), name="members"),
    path("projects/<int:project_id>/imports", views.ImportCreateApi.as_view(), name="imports"),
    path(
        "projects/<int:project_id>/assignments",
        views.AssignmentCreateApi.as_view(),
        name="assignments",
    ),
    path("projects/<int:project_id>/export", views.ExportApi.as_view(), name="export"),
    path("imports/<int:import_id>", views.ImportDetailApi.as_view(), name="import"),
    path(
        "assignments/<int:assignment_id>/judgement", views.JudgementApi.as_view(), name="judgement"
    ),
    path("assignments/<int:assignment_id>/skip", views.SkipApi.as_view(), name="skip"),
    path("projects/<int:project_id>/loop", loop.LoopSettingsApi.as_view(), name="loop"),
    path("projects/<int:project_id>/rounds", loop.RoundsApi.as_view(), name="rounds"),
    path("models", loop.ModelListApi.as_view(), name="models"),
    path("models/<int:model_id>/download", loop.ModelDownloadApi.as_view(), name="model-download"),
]
