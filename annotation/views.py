"""The htmx pages: each view parses, calls one service or selector, and renders a screen, or only
the screen's named partial when htmx asked for it (`request.htmx`).

The annotators' pages and the loop's live here; the managers' project page in `views_projects.py`."""

import uuid
from collections.abc import Callable
from functools import wraps

from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import HttpResponseClientRedirect, trigger_client_event

from . import selectors, services
from .errors import Conflict, TandemError
from .forms import JudgementForm, LoopSettingsForm, add_service_errors
from .kinds import kind_for
from .models import Assignment, Project
from .selectors import dashboard, pages
from .selectors import rounds as round_selectors
from .services import rounds as round_services

ANNOTATE_PAGE = "annotation/annotate.html"
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
            return error_page(request, exc.message, status=exc.status)

    return wrapped


_ERROR_TITLES = {403: "Not allowed", 404: "Not found"}


def error_page(request: HttpRequest, message: str, *, status: int) -> HttpResponse:
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
    kind = kind_for(assignment.task.kind if assignment else project.kind)
    context = {
        "project": project,
        "assignment": assignment,
        "task": selectors.task_view(task=assignment.task, project=project) if assignment else None,
        # The kind's part of the page: its partial (kind.template), its keys and its settings.
        "kind": kind,
        "keys": kind.keys(),
        "kind_settings": kind.settings_of(project.kind_settings),
        # A fresh idempotency key per rendered task; a re-render after an error keeps the posted
        # one, so retrying the same answer can never store it twice.
        "form": form or JudgementForm(initial={"idempotency_key": uuid.uuid4().hex}, kind=kind),
        "notice": notice,
        "my_count": selectors.annotator_judgement_count(project=project, annotator=request.user),
    }
    context.update(kind.page_context(context["kind_settings"]))
    if assignment is not None:
        # A kind with phases shows the phase due and what it reveals (never before its time).
        context.update(
            kind.assignment_context(assignment=assignment, settings=context["kind_settings"])
        )
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
    form = JudgementForm(request.POST, kind=kind_for(assignment.task.kind))
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
    kind_rounds = round_selectors.kind_rounds_panel(
        project=project, win_rates={line.round.number: line.win_rate for line in board.table}
    )
    can_manage = role in selectors.MANAGE
    if form is None and can_manage:
        form = LoopSettingsForm(initial=LoopSettingsForm.initial_from(board.settings))
    context = {
        "project": project,
        "board": board,
        "kind_rounds": kind_rounds,
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
