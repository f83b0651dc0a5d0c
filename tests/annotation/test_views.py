"""The htmx pages through Django's test client against real Postgres: what each role sees, what a
submit stores, and what untrusted text turns into."""

import io
import re

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test.utils import CaptureQueriesContext

from annotation import selectors, services
from annotation.kinds import registered
from annotation.models import Assignment, FeedbackKind, ImportJob, Judgement, Membership, Role, Task
from tests.factories import ProjectFactory, UserFactory, import_tasks, jsonl, pairwise_lines

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}


def task_id_in(response) -> int | None:
    found = re.search(rb'data-task-id="(\d*)"', response.content)
    assert found, "no task panel in the response"
    return int(found.group(1)) if found.group(1) else None


def hidden(response, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"'.encode(), response.content)
    assert found, f"no hidden {name}"
    return found.group(1).decode()


def live_assignment(user, project) -> Assignment:
    return Assignment.objects.get(annotator=user, project=project, status="leased")


def submit(client, project, assignment, *, key="key-1", htmx=True, **fields):
    data = {"choice": "A", "strength": "2", "rationale": "", "idempotency_key": key}
    data.update(fields)
    return client.post(
        f"/projects/{project.pk}/assignments/{assignment.pk}/judgement",
        data,
        **(HTMX if htmx else {}),
    )


def project_with(lines, *, name="XSS project", instructions=""):
    project = ProjectFactory(name=name, instructions=instructions)
    body = jsonl(lines)
    job = services.import_create(
        project=project, user=project.created_by, stream=io.BytesIO(body), size=len(body)
    )
    assert job.status == "done", job.errors
    return project


# --- access -----------------------------------------------------------------------------------


def test_pages_require_login(client, cast):
    for url in ["/", f"/projects/{cast.project.pk}/annotate", f"/projects/{cast.project.pk}/"]:
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith("/accounts/login/?next=")
    # An htmx request gets a whole-page redirect instead of a login form inside a panel.
    response = client.post(f"/projects/{cast.project.pk}/assignments/1/skip", **HTMX)
    assert response.status_code == 200
    assert response["HX-Redirect"].startswith("/accounts/login/?next=")


def test_login_page_logs_in(client, cast):
    page = client.get("/accounts/login/")
    assert page.status_code == 200
    assert b'name="username"' in page.content
    response = client.post(
        "/accounts/login/",
        {"username": cast.annotator.username, "password": "correct-horse-battery"},
    )
    assert response.status_code == 302
    assert response["Location"] == "/"


def test_home_lists_only_my_projects(client, cast):
    hidden_project = ProjectFactory(name="Somebody else's project")
    client.force_login(cast.annotator)
    response = client.get("/")
    assert response.status_code == 200
    assert cast.project.name.encode() in response.content
    assert hidden_project.name.encode() not in response.content
    assert f"/projects/{cast.project.pk}/annotate".encode() in response.content
    # An annotator is not offered the manager page.
    assert f'href="/projects/{cast.project.pk}/"'.encode() not in response.content


def test_outsider_gets_404_and_annotator_403_on_manager_pages(client, cast):
    project = cast.project
    client.force_login(cast.outsider)
    for url in [
        f"/projects/{project.pk}/annotate",
        f"/projects/{project.pk}/",
        f"/projects/{project.pk}/instructions",
        f"/projects/{project.pk}/progress",
    ]:
        assert client.get(url).status_code == 404, url
    assert client.post(f"/projects/{project.pk}/imports").status_code == 404

    client.force_login(cast.annotator)
    assert client.get(f"/projects/{project.pk}/").status_code == 403
    upload = SimpleUploadedFile("t.jsonl", jsonl(pairwise_lines(1)))
    assert client.post(f"/projects/{project.pk}/imports", {"file": upload}).status_code == 403
    assert (
        client.post(
            f"/projects/{project.pk}/members", {"username": "x", "role": "manager"}
        ).status_code
        == 403
    )
    job = ImportJob.objects.filter(project=project).first()
    assert client.get(f"/imports/{job.pk}").status_code == 403
    assert Task.objects.filter(project=project).count() == 10

    client.force_login(cast.trainer)
    assert client.get(f"/projects/{project.pk}/annotate").status_code == 403


def test_cannot_submit_to_someone_elses_assignment(client, cast):
    theirs = services.assignment_lease(annotator=cast.other, project=cast.project)
    client.force_login(cast.annotator)
    response = submit(client, cast.project, theirs)
    assert response.status_code == 404
    assert not Judgement.objects.exists()


# --- annotating -------------------------------------------------------------------------------


def test_annotate_page_shows_the_task_and_a_reload_keeps_it(client, cast):
    client.force_login(cast.annotator)
    response = client.get(f"/projects/{cast.project.pk}/annotate")
    assert response.status_code == 200
    assert b"<html" in response.content
    assignment = live_assignment(cast.annotator, cast.project)
    view = selectors.task_view(task=assignment.task)
    assert task_id_in(response) == view.id
    html = response.content.decode()
    for message in view.prompt:
        assert message["content"] in html
    for shown in view.responses:
        assert shown.text in html
        assert f"Response {shown.label}" in html
    # The shortcuts are on the page, and the form carries a fresh idempotency key.
    assert 'data-key="1"' in html and "<kbd>Enter</kbd>" in html
    assert len(hidden(response, "idempotency_key")) == 32

    again = client.get(f"/projects/{cast.project.pk}/annotate")
    assert task_id_in(again) == view.id
    assert hidden(again, "idempotency_key") != hidden(response, "idempotency_key")
    assert Assignment.objects.filter(annotator=cast.annotator).count() == 1


def test_system_turns_are_labelled_and_styled_apart(client, db):
    lines = pairwise_lines(1)
    lines[0]["prompt"] = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hello?"},
    ]
    project = project_with(lines, name="Chat")
    client.force_login(project.created_by)
    html = client.get(f"/projects/{project.pk}/annotate").content.decode()
    assert re.search(r'class="turn turn-system">\s*<span class="role">system</span>', html)
    assert re.search(r'class="turn turn-user">\s*<span class="role">user</span>', html)


def test_htmx_submit_stores_the_judgement_and_returns_only_the_next_task(client, cast):
    client.force_login(cast.annotator)
    first = task_id_in(client.get(f"/projects/{cast.project.pk}/annotate"))
    assignment = live_assignment(cast.annotator, cast.project)

    response = submit(
        client,
        cast.project,
        assignment,
        choice="B",
        strength="3",
        rationale="B shows its work",
        time_spent_ms="4200",
    )
    assert response.status_code == 200
    assert b"<html" not in response.content
    assert b'id="task-panel"' in response.content
    following = task_id_in(response)
    assert following is not None and following != first

    judgement = Judgement.objects.get()
    assert judgement.task_id == first
    assert judgement.payload == {"choice": "B", "strength": 3}
    assert judgement.rationale == "B shows its work"
    assert judgement.time_spent_ms == 4200
    assert live_assignment(cast.annotator, cast.project).task_id == following
    assert b"Your judgements here: <strong>1</strong>" in response.content


def test_plain_form_submit_redirects_to_the_next_task(client, cast):
    client.force_login(cast.annotator)
    client.get(f"/projects/{cast.project.pk}/annotate")
    assignment = live_assignment(cast.annotator, cast.project)
    response = submit(client, cast.project, assignment, htmx=False, choice="tie", strength="")
    assert response.status_code == 302
    assert response["Location"] == f"/projects/{cast.project.pk}/annotate"
    assert Judgement.objects.get().payload == {"choice": "tie", "strength": None}


def test_double_submit_with_the_same_key_stores_one_judgement(client, cast):
    client.force_login(cast.annotator)
    client.get(f"/projects/{cast.project.pk}/annotate")
    assignment = live_assignment(cast.annotator, cast.project)

    once = submit(client, cast.project, assignment, key="same-key")
    twice = submit(client, cast.project, assignment, key="same-key")
    assert once.status_code == twice.status_code == 200
    assert Judgement.objects.count() == 1
    # The repeat shows the task the first submit leased; it does not lease yet another one.
    assert task_id_in(twice) == task_id_in(once)
    assert Assignment.objects.filter(annotator=cast.annotator).count() == 2


def test_service_errors_show_inline_and_keep_the_answer(client, cast):
    client.force_login(cast.annotator)
    shown = task_id_in(client.get(f"/projects/{cast.project.pk}/annotate"))
    assignment = live_assignment(cast.annotator, cast.project)

    response = submit(
        client, cast.project, assignment, choice="A", strength="", rationale="half-written thought"
    )
    assert response.status_code == 400
    assert b"<html" not in response.content
    assert task_id_in(response) == shown
    html = response.content.decode()
    assert "must be 1 (slightly), 2 (clearly) or 3 (much better)" in html
    assert "half-written thought" in html
    assert 'value="A" data-key="1" checked' in html
    assert hidden(response, "idempotency_key") == "key-1"
    assert not Judgement.objects.exists()

    fixed = submit(client, cast.project, assignment, choice="A", strength="1")
    assert fixed.status_code == 200
    assert Judgement.objects.get().payload == {"choice": "A", "strength": 1}


def test_skip_moves_on_and_never_shows_the_task_again(client, cast):
    client.force_login(cast.annotator)
    skipped = task_id_in(client.get(f"/projects/{cast.project.pk}/annotate"))
    assignment = live_assignment(cast.annotator, cast.project)

    response = client.post(f"/projects/{cast.project.pk}/assignments/{assignment.pk}/skip", **HTMX)
    assert response.status_code == 200
    assert b"<html" not in response.content
    assert task_id_in(response) not in (None, skipped)
    assignment.refresh_from_db()
    assert assignment.status == "skipped"
    assert not Judgement.objects.exists()


def test_empty_queue_says_thank_you(client, db):
    project = project_with(pairwise_lines(1), name="Tiny")
    annotator = UserFactory()
    services.membership_set(project=project, username=annotator.username, role=Role.ANNOTATOR)
    client.force_login(annotator)
    client.get(f"/projects/{project.pk}/annotate")
    response = submit(client, project, live_assignment(annotator, project))
    assert response.status_code == 200
    assert task_id_in(response) is None
    assert "Queue empty — thank you" in response.content.decode()
    assert b"You gave <strong>1</strong> judgement here" in response.content
    # The page header is told to refresh the project's progress, which is now complete.
    assert "tandem:queue-empty" in response["HX-Trigger"]
    progress = client.get(f"/projects/{project.pk}/progress", **HTMX).content.decode()
    assert "Project 100% complete" in progress and "<html" not in progress

    page = client.get(f"/projects/{project.pk}/annotate")
    assert "Queue empty — thank you" in page.content.decode()


def test_annotate_partial_takes_a_small_constant_number_of_queries(
    client, cast, django_assert_max_num_queries
):
    client.force_login(cast.annotator)
    url = f"/projects/{cast.project.pk}/annotate"
    client.get(url)

    def count_partial() -> int:
        with CaptureQueriesContext(connection) as queries:
            response = client.get(url, **HTMX)
        assert response.status_code == 200 and b"<html" not in response.content
        return len(queries)

    small = count_partial()
    import_tasks(cast.project, 300, start=100)
    for _ in range(5):
        other = services.assignment_lease(annotator=cast.other, project=cast.project)
        services.judgement_submit(
            assignment=other, data={"choice": "tie"}, idempotency_key=f"o{other.pk}"
        )
    assert count_partial() == small
    with django_assert_max_num_queries(8):
        client.get(url, **HTMX)

    # A submit that stores a judgement and leases the next task stays small too.
    assignment = live_assignment(cast.annotator, cast.project)
    with django_assert_max_num_queries(25):
        assert submit(client, cast.project, assignment).status_code == 200


# --- untrusted text ---------------------------------------------------------------------------


def test_response_prompt_and_names_render_inert(client, db):
    line = {
        "prompt": [{"role": "user", "content": "<b>bold?</b><script>alert('p')</script>"}],
        "responses": ["<script>alert(1)</script>", "<img src=x onerror=alert(1)>"],
    }
    project = project_with([line], name="<img src=x onerror=alert('name')>")
    client.force_login(project.created_by)
    html = client.get(f"/projects/{project.pk}/annotate").content.decode()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "&lt;b&gt;bold?&lt;/b&gt;" in html
    assert "<script>alert" not in html
    assert "<img src=x" not in html
    assert "<b>bold" not in html

    home = client.get("/").content.decode()
    manage = client.get(f"/projects/{project.pk}/").content.decode()
    for page in (home, manage):
        assert "&lt;img src=x onerror=alert(&#x27;name&#x27;)&gt;" in page
        assert "<img src=x" not in page


def test_instructions_markdown_is_sanitized(client, db):
    project = ProjectFactory(
        instructions=(
            "Pick the **more helpful** one.\n\n"
            "<script>alert('instructions')</script>\n\n"
            "[click me](javascript:alert(1)) and [the guide](https://example.org/guide)\n\n"
            '<a href="javascript:alert(2)" onclick="alert(3)">raw link</a>'
            ' <img src=x onerror="alert(4)">'
        )
    )
    client.force_login(project.created_by)
    for url in [f"/projects/{project.pk}/instructions", f"/projects/{project.pk}/annotate"]:
        html = client.get(url).content.decode()
        assert "<strong>more helpful</strong>" in html
        assert 'href="https://example.org/guide"' in html
        assert "<script>alert" not in html
        assert "javascript:" not in html
        assert "onclick" not in html
        assert "onerror" not in html


# --- managers ---------------------------------------------------------------------------------


def test_manager_page_shows_progress_annotators_and_links(client, cast):
    assignment = services.assignment_lease(annotator=cast.annotator, project=cast.project)
    services.judgement_submit(assignment=assignment, data={"choice": "tie"}, idempotency_key="m1")
    services.assignment_lease(annotator=cast.other, project=cast.project)

    client.force_login(cast.manager)
    response = client.get(f"/projects/{cast.project.pk}/")
    assert response.status_code == 200
    html = response.content.decode()
    assert re.search(r"<dt>Tasks</dt><dd>10</dd>", html)
    assert re.search(r"<dt>Complete</dt><dd>1</dd>", html)
    assert re.search(r"<dt>Judgements</dt><dd>1 / 10</dd>", html)
    assert re.search(r"<dt>Live leases</dt><dd>1</dd>", html)
    assert re.search(rf"<td>{cast.annotator.username}</td>\s*<td class=\"num\">1</td>", html)
    assert f"/api/v1/projects/{cast.project.pk}/export?shape=pairs" in html
    assert "/api/docs/" in html


def test_manager_imports_a_good_file_in_the_browser(client, cast):
    client.force_login(cast.manager)
    upload = SimpleUploadedFile("more.jsonl", jsonl(pairwise_lines(4, start=500)))
    response = client.post(f"/projects/{cast.project.pk}/imports", {"file": upload}, **HTMX)
    assert response.status_code == 200
    html = response.content.decode()
    assert "<html" not in html
    assert "<strong>4</strong> tasks created" in html
    assert 'id="imports-list" class="card" hx-swap-oob="true"' in html
    assert "more.jsonl" in html
    assert Task.objects.filter(project=cast.project).count() == 14


def test_manager_import_of_a_bad_file_lists_lines_and_creates_nothing(client, cast):
    client.force_login(cast.manager)
    lines = pairwise_lines(3, start=600)
    body = jsonl(lines[:1]) + b"{not json\n" + jsonl([{"prompt": "hi", "responses": ["one"]}])
    upload = SimpleUploadedFile("bad.jsonl", body)
    response = client.post(f"/projects/{cast.project.pk}/imports", {"file": upload})
    assert response.status_code == 400
    html = response.content.decode()
    assert "<html" in html  # without htmx the whole page comes back, with the result in place
    assert "nothing was imported" in html
    assert "<strong>line 2</strong>: not valid JSON" in html
    assert "<strong>line 3</strong>: responses:" in html
    assert Task.objects.filter(project=cast.project).count() == 10


def test_a_queued_import_polls_until_it_is_done(client, cast, settings, tmp_path):
    settings.TANDEM_IMPORT_INLINE_BYTES = 10
    settings.MEDIA_ROOT = tmp_path
    client.force_login(cast.manager)
    upload = SimpleUploadedFile("big.jsonl", jsonl(pairwise_lines(3, start=700)))
    response = client.post(f"/projects/{cast.project.pk}/imports", {"file": upload}, **HTMX)
    assert response.status_code == 200
    job = ImportJob.objects.get(filename="big.jsonl")
    assert job.status == "queued"
    poll = f'hx-get="/imports/{job.pk}" hx-trigger="every 1s"'
    assert poll in response.content.decode()

    still = client.get(f"/imports/{job.pk}", **HTMX)
    assert poll in still.content.decode()
    assert b"imports-list" not in still.content

    services.import_run(job_id=job.pk)
    done = client.get(f"/imports/{job.pk}", **HTMX).content.decode()
    assert "hx-trigger" not in done
    assert "<strong>3</strong> tasks created" in done
    assert 'hx-swap-oob="true"' in done


def test_manager_adds_members_by_username(client, cast):
    newcomer = UserFactory()
    client.force_login(cast.manager)
    url = f"/projects/{cast.project.pk}/members"
    response = client.post(url, {"username": newcomer.username, "role": "reviewer"}, **HTMX)
    assert response.status_code == 200
    assert f"{newcomer.username} is now reviewer." in response.content.decode()
    assert Membership.objects.get(user=newcomer, project=cast.project).role == Role.REVIEWER

    missing = client.post(url, {"username": "nobody-here", "role": "annotator"}, **HTMX)
    assert missing.status_code == 400
    assert "no user named &#x27;nobody-here&#x27;" in missing.content.decode()


def test_project_creation_is_for_staff_and_offers_only_supported_kinds(client, db):
    staff = UserFactory(is_staff=True)
    client.force_login(staff)
    form = client.get("/projects/new").content.decode()
    offered = re.findall(r'<option value="([^"]+)"', form)
    # The registered kinds, and only them: a kind without a module cannot be annotated.
    assert offered == [kind.name for kind in registered()] and FeedbackKind.PAIRWISE in offered
    assert FeedbackKind.RANKING not in offered

    response = client.post(
        "/projects/new",
        {
            "name": "Helpfulness",
            "kind": "pairwise",
            "overlap": "3",
            "lease_seconds": "900",
            "instructions": "Be fair.",
        },
    )
    assert response.status_code == 302
    project = selectors.project_visible_to(user=staff).get(name="Helpfulness")
    assert response["Location"] == f"/projects/{project.pk}/"
    assert (project.overlap, project.lease_seconds, project.instructions) == (3, 900, "Be fair.")
    assert Membership.objects.get(project=project, user=staff).role == Role.MANAGER

    refused = client.post(
        "/projects/new",
        {"name": "X", "kind": "pairwise", "overlap": "99", "lease_seconds": "900"},
    )
    assert refused.status_code == 400
    assert "must be between 1 and 50" in refused.content.decode()

    client.force_login(UserFactory())
    assert client.get("/projects/new").status_code == 403
    assert client.post("/projects/new", {"name": "Y", "kind": "pairwise"}).status_code == 403


def test_an_oversized_import_is_refused(client, cast, settings):
    settings.TANDEM_IMPORT_MAX_BYTES = 100
    client.force_login(cast.manager)
    upload = SimpleUploadedFile("huge.jsonl", jsonl(pairwise_lines(10, start=800)))
    response = client.post(f"/projects/{cast.project.pk}/imports", {"file": upload}, **HTMX)
    assert response.status_code == 413
    assert "the limit is 100 bytes" in response.content.decode()
    assert not ImportJob.objects.filter(filename="huge.jsonl").exists()


def test_a_tampered_time_spent_is_refused_inline(client, cast):
    client.force_login(cast.annotator)
    client.get(f"/projects/{cast.project.pk}/annotate")
    assignment = live_assignment(cast.annotator, cast.project)
    response = submit(client, cast.project, assignment, time_spent_ms=str(2**40))
    assert response.status_code == 400
    assert "time_spent_ms: Ensure this value is less than or equal to" in response.content.decode()
    assert not Judgement.objects.exists()


# --- members ----------------------------------------------------------------------------------


def members_url(project, tail: str = "") -> str:
    return f"/projects/{project.pk}/members{tail}"


def test_members_table_offers_a_role_select_and_a_confirmed_remove_per_member(client, cast):
    client.force_login(cast.manager)
    html = client.get(f"/projects/{cast.project.pk}/").content.decode()
    row = re.search(rf'<tr data-member="{cast.annotator.username}">(.*?)</tr>', html, re.S)
    assert row, "no row for the annotator"
    row_html = row.group(1)
    assert f'action="{members_url(cast.project)}"' in row_html
    assert '<option value="annotator" selected>' in row_html
    # Removing asks first, with a disclosure instead of a script, and posts to its own URL.
    assert '<details class="confirm">' in row_html
    assert f'action="{members_url(cast.project, "/remove")}"' in row_html
    assert f"Yes, remove {cast.annotator.username}" in row_html


def test_manager_changes_a_role_from_the_table(client, cast):
    client.force_login(cast.manager)
    response = client.post(
        members_url(cast.project),
        {"username": cast.annotator.username, "role": "reviewer", "existing": "on"},
        **HTMX,
    )
    assert response.status_code == 200
    assert f"{cast.annotator.username} is now reviewer." in response.content.decode()
    assert Membership.objects.get(user=cast.annotator, project=cast.project).role == Role.REVIEWER
    # The table's form changes members only: it never adds back someone who is not one.
    outsider = client.post(
        members_url(cast.project),
        {"username": cast.outsider.username, "role": "manager", "existing": "on"},
        **HTMX,
    )
    assert outsider.status_code == 400
    assert "is not a member of this project" in outsider.content.decode()
    assert not Membership.objects.filter(user=cast.outsider, project=cast.project).exists()


def test_manager_removes_a_member_whose_leases_return_and_judgements_stay(client, cast):
    done = services.assignment_lease(annotator=cast.annotator, project=cast.project)
    services.judgement_submit(
        assignment=done, data={"choice": "A", "strength": 1}, idempotency_key="r1"
    )
    live = services.assignment_lease(annotator=cast.annotator, project=cast.project)

    client.force_login(cast.manager)
    response = client.post(
        members_url(cast.project, "/remove"), {"username": cast.annotator.username}, **HTMX
    )
    assert response.status_code == 200
    html = response.content.decode()
    assert "<html" not in html and 'id="members"' in html
    assert f"{cast.annotator.username} was removed from the project." in html
    assert f'data-member="{cast.annotator.username}"' not in html
    assert not Membership.objects.filter(user=cast.annotator, project=cast.project).exists()
    live.refresh_from_db()
    assert live.status != Assignment.Status.LEASED
    assert Judgement.objects.filter(annotator=cast.annotator, project=cast.project).count() == 1
    # Removed means removed: the annotate page is closed to them.
    client.force_login(cast.annotator)
    assert client.get(f"/projects/{cast.project.pk}/annotate").status_code == 404


def test_the_last_manager_cannot_be_removed_and_the_panel_says_why(client, cast):
    client.force_login(cast.manager)
    creator = cast.project.created_by.username
    assert (
        client.post(members_url(cast.project, "/remove"), {"username": creator}, **HTMX).status_code
        == 200
    )
    refused = client.post(
        members_url(cast.project, "/remove"), {"username": cast.manager.username}, **HTMX
    )
    assert refused.status_code == 409
    html = refused.content.decode()
    assert "<html" not in html and 'class="alert"' in html
    assert Membership.objects.get(user=cast.manager, project=cast.project).role == Role.MANAGER


def test_only_managers_remove_and_a_plain_post_redirects_back(client, cast):
    url = members_url(cast.project, "/remove")
    client.force_login(cast.annotator)
    assert client.post(url, {"username": cast.other.username}).status_code == 403
    assert client.get(url, {"username": cast.other.username}).status_code == 405
    assert Membership.objects.filter(user=cast.other, project=cast.project).exists()

    client.force_login(cast.manager)
    response = client.post(url, {"username": cast.other.username})
    assert response.status_code == 302
    assert response["Location"] == f"/projects/{cast.project.pk}/"
    assert not Membership.objects.filter(user=cast.other, project=cast.project).exists()


# --- CSRF -------------------------------------------------------------------------------------


def test_csrf_is_enforced_and_the_pages_token_is_accepted(cast):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(cast.annotator)
    page = client.get(f"/projects/{cast.project.pk}/annotate")
    assignment = live_assignment(cast.annotator, cast.project)
    url = f"/projects/{cast.project.pk}/assignments/{assignment.pk}/judgement"
    data = {"choice": "A", "strength": "2", "idempotency_key": "csrf-1"}

    refused = client.post(url, data, **HTMX)
    assert refused.status_code == 403
    assert not Judgement.objects.exists()

    # htmx sends the token the body's hx-headers carries.
    token = re.search(r"""hx-headers='\{"X-CSRFToken": "([^"]+)"\}'""", page.content.decode())
    assert token, "no CSRF token in the page's hx-headers"
    accepted = client.post(url, data, HTTP_X_CSRFTOKEN=token.group(1), **HTMX)
    assert accepted.status_code == 200
    assert Judgement.objects.get().payload == {"choice": "A", "strength": 2}


# --- one way to write a share, and CSP-clean pages ------------------------------------------------


def test_progress_reads_the_same_on_every_page(client, cast):
    import_tasks(cast.project, 30, start=100)  # 40 judgements wanted
    assignment = services.assignment_lease(annotator=cast.annotator, project=cast.project)
    services.judgement_submit(assignment=assignment, data={"choice": "tie"}, idempotency_key="p1")
    client.force_login(cast.manager)
    services.membership_set(project=cast.project, username=cast.manager.username, role=Role.MANAGER)
    home = client.get("/").content.decode()
    manage = client.get(f"/projects/{cast.project.pk}/").content.decode()
    client.force_login(cast.annotator)
    annotate = client.get(f"/projects/{cast.project.pk}/annotate").content.decode()
    assert "2.5% complete" in home
    assert "<strong>2.5%</strong> of wanted judgements" in manage
    assert "Project 2.5% complete" in annotate
    for html in (home, manage, annotate):
        assert 'value="2.5" aria-label="Project progress"' in html
        assert "3%" not in html and "2%" not in html


def test_percent_filter_never_rounds_to_a_false_end():
    from annotation.templatetags.tandem import percent

    assert [percent(v) for v in (0, 0.01, 2.0, 2.5, 33.333, 99.96, 100)] == [
        "0%", "<0.1%", "2%", "2.5%", "33.3%", "99.9%", "100%"
    ]  # fmt: skip


def test_export_button_names_the_file(client, cast):
    client.force_login(cast.manager)
    html = client.get(f"/projects/{cast.project.pk}/").content.decode()
    assert (
        f'href="/api/v1/projects/{cast.project.pk}/export?shape=pairs" '
        f'download="project-{cast.project.pk}-pairs.jsonl"'
    ) in html


INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)(?![^>]*type=\"application/json\")[^>]*>", re.I)
EVENT_HANDLER = re.compile(r"<[^>]+\son[a-z]+\s*=", re.I)


def assert_csp_clean(html: str, where: str) -> None:
    assert not INLINE_SCRIPT.search(html), f"{where}: inline <script>"
    assert not EVENT_HANDLER.search(html), f"{where}: on*= handler"
    assert "hx-on" not in html, f"{where}: hx-on (htmx evals it)"
    assert "javascript:" not in html, f"{where}: javascript: URL"
    assert " style=" not in html, f"{where}: style attribute"


def test_main_pages_have_no_inline_script_handlers_or_styles(client, cast, settings):
    from annotation.models import TrainingRun
    from annotation.services import rounds as round_services

    # With DEBUG on, django-htmx adds its debug script: by URL, so it is no exception.
    settings.DEBUG = True
    round_services.loop_configure(project=cast.project, data={"policy_model": "tiny-policy"})
    running = round_services.round_start(project=cast.project)
    TrainingRun.objects.filter(round=running, stage="reward").update(
        status="running", attempts=1, progress_step=3, progress_total=10
    )
    job = ImportJob.objects.filter(project=cast.project).first()
    assert_csp_clean(client.get("/accounts/login/").content.decode(), "login")
    client.force_login(cast.manager)
    pages = {
        "home": "/",
        "project": f"/projects/{cast.project.pk}/",
        "annotate": f"/projects/{cast.project.pk}/annotate",
        "loop": f"/projects/{cast.project.pk}/loop",
        "import detail": f"/imports/{job.pk}",
        "instructions": f"/projects/{cast.project.pk}/instructions",
        "new project": "/projects/new",
    }
    client.force_login(cast.project.created_by)  # staff, and a manager: every page opens
    for name, url in pages.items():
        response = client.get(url)
        assert response.status_code == 200, name
        html = response.content.decode()
        assert "<html" in html, name
        assert_csp_clean(html, name)
    loop = client.get(pages["loop"]).content.decode()
    assert 'data-width="30.0"' in loop  # the running stage's bar gets its width from tandem.js
    assert (
        "includeIndicatorStyles&quot;: false" in loop or '"includeIndicatorStyles": false' in loop
    )
