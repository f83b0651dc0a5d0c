from django.urls import path

from . import views, views_projects

urlpatterns = [
    path("", views.home, name="home"),
    path("projects/new", views_projects.project_create, name="project-create"),
    path("projects/<int:project_id>/", views_projects.project_detail, name="project"),
    path("projects/<int:project_id>/annotate", views.annotate, name="annotate"),
    path("projects/<int:project_id>/progress", views.annotate_progress, name="annotate-progress"),
    path("projects/<int:project_id>/instructions", views.instructions, name="instructions"),
    path(
        "projects/<int:project_id>/assignments/<int:assignment_id>/judgement",
        views.judgement_submit,
        name="judgement-submit",
    ),
    path(
        "projects/<int:project_id>/assignments/<int:assignment_id>/skip",
        views.assignment_skip,
        name="assignment-skip",
    ),
    path(
        "projects/<int:project_id>/kind-settings",
        views_projects.kind_settings_set,
        name="kind-settings",
    ),
    path("projects/<int:project_id>/imports", views_projects.import_create, name="import-create"),
    path("projects/<int:project_id>/members", views_projects.member_set, name="member-set"),
    path(
        "projects/<int:project_id>/members/remove",
        views_projects.member_remove,
        name="member-remove",
    ),
    path("imports/<int:import_id>", views_projects.import_detail, name="import"),
    path("projects/<int:project_id>/loop", views.loop_dashboard, name="loop"),
    path("projects/<int:project_id>/loop/jobs", views.loop_jobs, name="loop-jobs"),
    path("projects/<int:project_id>/loop/settings", views.loop_settings, name="loop-settings"),
    path("projects/<int:project_id>/loop/rounds", views.loop_round_start, name="loop-round-start"),
]
