"""The project page of managers (progress, feedback settings, imports, members) and project
creation; split from `views.py`, whose `page` decorator they share."""

from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from . import selectors, services
from .errors import Conflict, TandemError
from .forms import (
    ImportForm,
    KindSettingsForm,
    MemberForm,
    MemberRemoveForm,
    ProjectCreateForm,
    add_service_errors,
)
from .kinds import kind_for
from .models import ImportJob, Project
from .selectors import pages
from .selectors.export import shapes_of
from .views import error_page, page

PROJECT_PAGE = "annotation/project.html"


@require_http_methods(["GET", "POST"])
@page
def project_create(request: HttpRequest) -> HttpResponse:
    if not pages.can_create_project(user=request.user):
        return error_page(
            request, "Only staff and users allowed to add projects can create one.", status=403
        )
    form = ProjectCreateForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            project = services.project_create(creator=request.user, **form.cleaned_data)
        except TandemError as exc:
            add_service_errors(form, exc)
        else:
            return redirect("annotation:project", project_id=project.pk)
    status = 400 if form.errors else 200
    return render(request, "annotation/project_new.html", {"form": form}, status=status)


def _render_project(
    request: HttpRequest,
    project: Project,
    *,
    partial: str = "",
    job: ImportJob | None = None,
    import_form: ImportForm | None = None,
    member_form: MemberForm | None = None,
    member_message: str = "",
    member_error: str = "",
    settings_form: KindSettingsForm | None = None,
    settings_message: str = "",
    status: int = 200,
) -> HttpResponse:
    kind = kind_for(project.kind)
    context = {
        "project": project,
        "kind": kind,
        # The feedback settings card, built from the kind's settings_fields (none: no card).
        # Only managers reach this page; an archived project's settings are shown, not edited.
        "settings_form": settings_form or _settings_form(project),
        "settings_message": settings_message,
        "job": job,
        "import_form": import_form or ImportForm(),
        "member_form": member_form or MemberForm(),
        "member_message": member_message,
        "member_error": member_error,
        "roles": MemberForm.base_fields["role"].choices,
        "imports": selectors.imports_of(project=project)[:10],
        "members": pages.members_of(project=project),
        # The import response also refreshes the list of imports, out of band.
        "oob": bool(request.htmx),
    }
    if not request.htmx:
        context["progress"] = selectors.project_progress(project=project)
        context["annotators"] = selectors.annotator_table(project=project)
        # The kind's own panel (pairwise: agreement with an imported dataset's preference).
        context["kind_stats"] = kind.stats(project) if kind.stats_template else {}
        context["export_shapes"] = list(shapes_of(project=project).values())
    template = f"{PROJECT_PAGE}#{partial}" if partial and request.htmx else PROJECT_PAGE
    return render(request, template, context, status=status)


@require_GET
@page
def project_detail(request: HttpRequest, project_id: int) -> HttpResponse:
    project, _ = selectors.access_project(
        user=request.user, project_id=project_id, roles=selectors.MANAGE
    )
    return _render_project(request, project)


def _settings_form(project: Project, data=None) -> KindSettingsForm:
    kind = kind_for(project.kind)
    return KindSettingsForm(
        data,
        kind=kind,
        settings=kind.settings_of(project.kind_settings),
        read_only=project.archived,
    )


@require_POST
@page
def kind_settings_set(request: HttpRequest, project_id: int) -> HttpResponse:
    """The feedback settings card's form: saved through the service, which the kind validates;
    a refused value is shown under its field and nothing is saved."""
    project, _ = selectors.access_project(
        user=request.user, project_id=project_id, roles=selectors.MANAGE
    )
    form = _settings_form(project, request.POST)
    status = 400
    if form.is_valid():
        try:
            services.project_kind_settings_set(project=project, kind_settings=form.settings())
        except TandemError as exc:
            add_service_errors(form, exc)
            status = exc.status
        else:
            if not request.htmx:
                return redirect("annotation:project", project_id=project.pk)
            return _render_project(
                request, project, partial="kind-settings", settings_message="Settings saved."
            )
    return _render_project(
        request, project, partial="kind-settings", settings_form=form, status=status
    )


@require_POST
@page
def import_create(request: HttpRequest, project_id: int) -> HttpResponse:
    project, _ = selectors.access_project(
        user=request.user, project_id=project_id, roles=selectors.MANAGE
    )
    form = ImportForm(request.POST, request.FILES)
    if not form.is_valid():
        return _render_project(
            request, project, partial="import-response", import_form=form, status=400
        )
    upload = form.cleaned_data["file"]
    try:
        job = services.import_create(
            project=project,
            user=request.user,
            stream=upload,
            size=upload.size,
            filename=upload.name,
        )
    except TandemError as exc:
        add_service_errors(form, exc)
        return _render_project(
            request, project, partial="import-response", import_form=form, status=exc.status
        )
    # A failed import is a finished job listing its bad lines; it is still the user's input at fault.
    status = 400 if job.status == ImportJob.Status.FAILED else 200
    return _render_project(request, project, partial="import-response", job=job, status=status)


@require_GET
@page
def import_detail(request: HttpRequest, import_id: int) -> HttpResponse:
    job = selectors.access_import(user=request.user, import_id=import_id)
    return _render_project(request, job.project, partial="import-status", job=job)


@require_POST
@page
def member_set(request: HttpRequest, project_id: int) -> HttpResponse:
    project, _ = selectors.access_project(
        user=request.user, project_id=project_id, roles=selectors.MANAGE
    )
    form = MemberForm(request.POST)
    message = ""
    status = 200
    if form.is_valid():
        data = form.cleaned_data
        try:
            membership = services.membership_set(
                project=project,
                username=data["username"],
                role=data["role"],
                create=not data["existing"],
            )
        except TandemError as exc:
            add_service_errors(form, exc)
            status = _inline_status(exc)
        else:
            message = f"{membership.user.username} is now {membership.get_role_display().lower()}."
            form = MemberForm()
    if form.errors and status == 200:
        status = 400
    return _members(request, project, member_form=form, member_message=message, status=status)


@require_POST
@page
def member_remove(request: HttpRequest, project_id: int) -> HttpResponse:
    project, _ = selectors.access_project(
        user=request.user, project_id=project_id, roles=selectors.MANAGE
    )
    form = MemberRemoveForm(request.POST)
    if not form.is_valid():
        return _members(request, project, member_error="Say whom to remove.", status=400)
    username = form.cleaned_data["username"]
    try:
        services.membership_remove(project=project, username=username)
    except TandemError as exc:
        # The last manager, someone already gone, an archived project: said in the members panel.
        return _members(request, project, member_error=exc.message, status=_inline_status(exc))
    return _members(request, project, member_message=f"{username} was removed from the project.")


def _inline_status(exc: TandemError) -> int:
    """A refused member change is shown in the panel: 409 when it conflicts (the last manager, an
    archived project), 400 for anything else wrong in what was typed (an unknown user, someone who
    is not a member); both are statuses htmx swaps into the panel."""
    return 409 if isinstance(exc, Conflict) else 400


def _members(
    request: HttpRequest,
    project: Project,
    *,
    member_form: MemberForm | None = None,
    member_message: str = "",
    member_error: str = "",
    status: int = 200,
) -> HttpResponse:
    """The members panel after a change; a plain form post gets the page back (after a success,
    through a redirect, so a reload cannot post it again)."""
    if not request.htmx and status == 200:
        return redirect("annotation:project", project_id=project.pk)
    return _render_project(
        request,
        project,
        partial="members",
        member_form=member_form,
        member_message=member_message,
        member_error=member_error,
        status=status,
    )
