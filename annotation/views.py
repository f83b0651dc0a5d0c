"""The htmx pages: each view parses, calls one service or selector, and renders a screen, or only
the screen's named partial when htmx asked for it (`request.htmx`)."""

import uuid
from collections.abc import Callable
from functools import wraps

from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import HttpResponseClientRedirect, trigger_client_event

from . import selectors, services
from .errors import Conflict, TandemError
from .forms import (
    ImportForm,
    JudgementForm,
    LoopSettingsForm,
    MemberForm,
    MemberRemoveForm,
    ProjectCreateForm,
    add_service_errors,
)
from .models import Assignment, ImportJob, Project
from .selectors import dashboard, pages
from .services import rounds as round_services

ANNOTATE_PAGE = "annotation/annotate.html"
PROJECT_PAGE = "annotation/project.html"
LOOP_PAGE = "annotation/loop.html"


def page(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Login required, and the access selectors' NotFound / Forbidden shown as an error page.

    An htmx request whose session has ended is sent to the login page as a whole-page redirect;
    a plain redirect would be followed by htmx and the login form swapped into a panel.
    """

    @wraps(view)
    def wrapped(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        if not request.user.is_authenticated:
            if request.htmx:
                current = request.htmx.current_url_abs_path or request.get_full_path()
                return HttpResponseClientRedirect(redirect_to_login(current).url)
            return redirect_to_login(request.get_full_path())
        try:
            return view(request, *args, **kwargs)
        except TandemError as exc:
            return _error(request, exc.message, status=exc.status)

    return wrapped


_ERROR_TITLES = {403: "Not allowed", 404: "Not found"}


def _error(request: HttpRequest, message: str, *, status: int) -> HttpResponse:
    title = _ERROR_TITLES.get(status, "Something went wrong")
    return render(
        request, "annotation/error.html", {"title": title, "message": message}, status=status
    )


# --- annotators ------------------------------------------------------------------------------


@require_GET
@page
def home(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "annotation/home.html",
        {
            "rows": pages.project_rows_for(user=request.user),
            "can_create": pages.can_create_project(user=request.user),
        },
    )


def _render_task(
    request: HttpRequest,
    project: Project,
    *,
    assignment: Assignment | None = None,
    form: JudgementForm | None = None,
    notice: str = "",
    status: int = 200,
) -> HttpResponse:
    """The annotate screen for `assignment`, or for the annotator's next task when it is None.

    A lease the annotator already holds comes first, so a reload (or a double submit) shows the
    same task instead of leasing another one.
    """
    if assignment is None:
        assignment = services.assignment_current_or_lease(annotator=request.user, project=project)
    context = {
        "project": project,
        "assignment": assignment,
        "task": selectors.task_view(task=assignment.task) if assignment else None,
        # A fresh idempotency key per rendered task; a re-render after an error keeps the posted
        # one, so retrying the same answer can never store it twice.
        "form": form or JudgementForm(initial={"idempotency_key": uuid.uuid4().hex}),
        "notice": notice,
        "my_count": selectors.annotator_judgement_count(project=project, annotator=request.user),
    }
    if not request.htmx:
        # Counting over the whole project stays off the per-task path (DESIGN.md, Hot paths):
        # the full page shows it, and the header refreshes it now and then.
        context["progress"] = selectors.project_progress(project=project)
    template = f"{ANNOTATE_PAGE}#task-panel" if request.htmx else ANNOTATE_PAGE
    response = render(request, template, context, status=status)
    if request.htmx and assignment is None:
        # The queue just ran dry: the header's project progress is worth refreshing now.
        trigger_client_event(response, "tandem:queue-empty")
    return response


@require_GET
@page
def annotate(request: HttpRequest, project_id: int) -> HttpResponse:
    # Opening the page leases a task (a write on GET): the queue is the page, and a lease that
    # nobody works simply expires back into the queue after the project's lease seconds.
    project, _ = selectors.access_project(
        user=request.user, project_id=project_id, roles=selectors.ANNOTATE
    )
    return _render_task(request, project)


@require_POST
@page
def judgement_submit(request: HttpRequest, project_id: int, assignment_id: int) -> HttpResponse:
    project, assignment = pages.access_project_assignment(
        user=request.user, project_id=project_id, assignment_id=assignment_id
    )
    form = JudgementForm(request.POST)
    if not form.is_valid():
        return _render_task(request, project, assignment=assignment, form=form, status=400)
    try:
        services.judgement_submit(
            assignment=assignment,
            data=form.payload(),
            idempotency_key=form.cleaned_data["idempotency_key"],
        )
    except Conflict as exc:
        # The task was finished elsewhere (another tab): nothing to fix here, move on.
        return _render_task(request, project, notice=exc.message)
    except TandemError as exc:
        add_service_errors(form, exc)
        return _render_task(request, project, assignment=assignment, form=form, status=exc.status)
    if not request.htmx:
        return redirect("annotation:annotate", project_id=project.pk)
    return _render_task(request, project)


@require_POST
@page
def assignment_skip(request: HttpRequest, project_id: int, assignment_id: int) -> HttpResponse:
    project, assignment = pages.access_project_assignment(
        user=request.user, project_id=project_id, assignment_id=assignment_id
    )
    try:
        services.assignment_skip(assignment=assignment)
    except Conflict as exc:
        return _render_task(request, project, notice=exc.message)
    if not request.htmx:
        return redirect("annotation:annotate", project_id=project.pk)
    return _render_task(request, project)


@require_GET
@page
def annotate_progress(request: HttpRequest, project_id: int) -> HttpResponse:
    project, _ = selectors.access_project(
        user=request.user, project_id=project_id, roles=selectors.ANNOTATE
    )
    return render(
        request,
        f"{ANNOTATE_PAGE}#project-progress",
        {"project": project, "progress": selectors.project_progress(project=project)},
    )


@require_GET
@page
def instructions(request: HttpRequest, project_id: int) -> HttpResponse:
    project, _ = selectors.access_project(user=request.user, project_id=project_id)
    return render(request, "annotation/instructions.html", {"project": project})


# --- managers --------------------------------------------------------------------------------


@require_http_methods(["GET", "POST"])
@page
def project_create(request: HttpRequest) -> HttpResponse:
    if not pages.can_create_project(user=request.user):
        return _error(
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
    status: int = 200,
) -> HttpResponse:
    context = {
        "project": project,
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
    template = f"{PROJECT_PAGE}#{partial}" if partial and request.htmx else PROJECT_PAGE
    return render(request, template, context, status=status)


@require_GET
@page
def project_detail(request: HttpRequest, project_id: int) -> HttpResponse:
    project, _ = selectors.access_project(
        user=request.user, project_id=project_id, roles=selectors.MANAGE
    )
    return _render_project(request, project)


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


# --- the online loop ---------------------------------------------------------------------------


def _render_loop(
    request: HttpRequest,
    project: Project,
    role: str,
    *,
    partial: str = "",
    form: LoopSettingsForm | None = None,
    settings_message: str = "",
    start_message: str = "",
    start_error: str = "",
    status: int = 200,
) -> HttpResponse:
    board = dashboard.loop_dashboard(project=project)
    can_manage = role in selectors.MANAGE
    if form is None and can_manage:
        form = LoopSettingsForm(initial=LoopSettingsForm.initial_from(board.settings))
    context = {
        "project": project,
        "board": board,
        "jobs": board.jobs,
        "polling": board.polling,
        "can_manage": can_manage,
        "form": form,
        "settings_message": settings_message,
        "start_message": start_message,
        "start_error": start_error,
        # Responses to the start button and the last poll also refresh the rounds, out of band.
        "oob": bool(request.htmx),
    }
    template = f"{LOOP_PAGE}#{partial}" if partial and request.htmx else LOOP_PAGE
    return render(request, template, context, status=status)


@require_GET
@page
def loop_dashboard(request: HttpRequest, project_id: int) -> HttpResponse:
    project, role = selectors.access_project(
        user=request.user, project_id=project_id, roles=selectors.EXPORT
    )
    return _render_loop(request, project, role)


@require_GET
@page
def loop_jobs(request: HttpRequest, project_id: int) -> HttpResponse:
    """The jobs panel, polled every 2 s while a stage is queued or running.

    A poll only reads the runs; the one that finds nothing active any more also brings the rounds
    and charts up to date, out of band, and its panel carries no trigger, so the polling stops.
    """
    project, role = selectors.access_project(
        user=request.user, project_id=project_id, roles=selectors.EXPORT
    )
    if not request.htmx:
        return redirect("annotation:loop", project_id=project.pk)
    jobs = dashboard.jobs_of(project=project)
    if any(job.active for job in jobs):
        return render(
            request, f"{LOOP_PAGE}#jobs", {"project": project, "jobs": jobs, "polling": True}
        )
    return _render_loop(request, project, role, partial="jobs-final")


@require_POST
@page
def loop_settings(request: HttpRequest, project_id: int) -> HttpResponse:
    project, role = selectors.access_project(
        user=request.user, project_id=project_id, roles=selectors.MANAGE
    )
    form = LoopSettingsForm(request.POST)
    if form.is_valid():
        try:
            round_services.loop_configure(project=project, data=form.cleaned_data)
        except TandemError as exc:
            add_service_errors(form, exc)
        else:
            if not request.htmx:
                return redirect("annotation:loop", project_id=project.pk)
            return _render_loop(
                request, project, role, partial="settings", settings_message="Settings saved."
            )
    return _render_loop(request, project, role, partial="settings", form=form, status=400)


@require_POST
@page
def loop_round_start(request: HttpRequest, project_id: int) -> HttpResponse:
    project, role = selectors.access_project(
        user=request.user, project_id=project_id, roles=selectors.EXPORT
    )
    try:
        started = round_services.round_start(project=project, trigger="manual")
    except Conflict:
        return _render_loop(
            request,
            project,
            role,
            partial="start-response",
            start_error="A round is already running (or queued): wait for it to finish.",
            status=409,
        )
    except TandemError as exc:
        return _render_loop(
            request, project, role, partial="start-response", start_error=exc.message, status=400
        )
    if not request.htmx:
        return redirect("annotation:loop", project_id=project.pk)
    return _render_loop(
        request,
        project,
        role,
        partial="start-response",
        start_message=f"Round {started.number} queued.",
    )
