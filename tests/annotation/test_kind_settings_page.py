"""The project page's "Feedback settings" card: built from the kind's settings_fields, posted with
htmx, saved through the same service as PATCH /api/v1/projects/{id}."""

import re

import pytest
from django.test import Client
from django.utils.html import escape

from annotation import services
from annotation.kinds.hallucination.payload import DEFAULT_CATEGORIES
from annotation.models import Project, Role
from tests.factories import ProjectFactory, UserFactory

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def project():
    return ProjectFactory(name="Shapes", kind="hallucination")


@pytest.fixture
def manager(project):
    user = UserFactory()
    services.membership_set(project=project, username=user.username, role=Role.MANAGER)
    return user


def url(project) -> str:
    return f"/projects/{project.pk}/kind-settings"


def post(client, project, categories, show_context=True, htmx=True):
    data = {"settings-categories": categories}
    if show_context:
        data["settings-show_context"] = "on"
    return client.post(url(project), data, **(HTMX if htmx else {}))


def stored(project) -> dict:
    return Project.objects.get(pk=project.pk).kind_settings


def field_errors(html: str) -> list[tuple[str, str]]:
    """(setting, message) of each error under a field, found by the id aria-describedby names."""
    return re.findall(r'<div id="id_settings-(\w+)_error"><p class="field-error">([^<]*)</p>', html)


def test_the_card_shows_the_current_settings(client, project, manager):
    client.force_login(manager)
    html = client.get(f"/projects/{project.pk}/").content.decode()
    assert 'id="kind-settings"' in html and "Feedback settings" in html
    textarea = re.search(r'<textarea name="settings-categories"[^>]*>(.*?)</textarea>', html, re.S)
    assert textarea, html
    assert textarea.group(1).split() == list(DEFAULT_CATEGORIES)
    assert re.search(r'<input type="checkbox" name="settings-show_context"[^>]* checked', html)
    assert f'hx-post="/projects/{project.pk}/kind-settings"' in html


def test_a_manager_changes_the_categories_on_the_page(client, project, manager):
    client.force_login(manager)
    response = post(client, project, "object\ncount, colour\n\n", show_context=False)
    assert response.status_code == 200, response.content
    html = response.content.decode()
    # Only the card comes back, saying so, with the values as now stored.
    assert "<html" not in html and html.lstrip().startswith('<section id="kind-settings"')
    assert "Settings saved." in html
    assert stored(project) == {"categories": ["object", "count", "colour"], "show_context": False}
    assert "object\ncount\ncolour</textarea>" in html
    assert not re.search(r'name="settings-show_context"[^>]* checked', html)


def test_a_plain_form_post_comes_back_to_the_page(client, project, manager):
    client.force_login(manager)
    response = post(client, project, "object", htmx=False)
    assert response.status_code == 302
    assert response["Location"] == f"/projects/{project.pk}/"
    assert stored(project)["categories"] == ["object"]


@pytest.mark.parametrize(
    ("typed", "message"),
    [
        ("object\nBad Name", "entry 2 (&#x27;Bad Name&#x27;): must be 1 to 32 lower-case"),
        ("object, object", "entry 2 (&#x27;object&#x27;): &#x27;object&#x27; is listed twice"),
        ("  \n , ", "must be a list of 1 to 20 category names"),
        (
            "<script>alert(1)</script>",
            "entry 1 (&#x27;&lt;script&gt;alert(1)&lt;/script&gt;&#x27;)",
        ),
        ("x" * 10_001, "at most 10000 characters"),
    ],
)
def test_a_bad_value_is_shown_under_its_field_and_nothing_is_saved(
    client, project, manager, typed, message
):
    client.force_login(manager)
    response = post(client, project, typed, show_context=False)
    assert response.status_code == 400
    html = response.content.decode()
    errors = field_errors(html)
    assert [name for name, _ in errors] == ["categories"], html
    assert errors[0][1].startswith(message), errors
    assert "<script>alert" not in html
    assert "Nothing was saved" in html
    if len(typed) < 100:
        # What was typed stays in the field, to be fixed.
        assert f"{escape(typed)}</textarea>" in html
    assert stored(project) == {"categories": list(DEFAULT_CATEGORIES), "show_context": True}


def test_only_managers_may_post(client, project):
    members = {}
    for role in (Role.ANNOTATOR, Role.REVIEWER, Role.TRAINER):
        members[role] = UserFactory()
        services.membership_set(project=project, username=members[role].username, role=role)
    for user in members.values():
        client.force_login(user)
        assert post(client, project, "object").status_code == 403
    client.force_login(UserFactory())
    assert post(client, project, "object").status_code == 404
    client.logout()
    assert post(client, project, "object", htmx=False).status_code == 302
    assert stored(project)["categories"] == list(DEFAULT_CATEGORIES)


def test_post_only_and_csrf_checked(project, manager):
    client = Client(enforce_csrf_checks=True)
    client.force_login(manager)
    assert client.get(url(project)).status_code == 405
    assert post(client, project, "object").status_code == 403
    assert stored(project)["categories"] == list(DEFAULT_CATEGORIES)


def test_an_archived_project_shows_its_settings_read_only(client, project, manager):
    Project.objects.filter(pk=project.pk).update(archived=True)
    client.force_login(manager)
    html = client.get(f"/projects/{project.pk}/").content.decode()
    assert re.search(r'<textarea name="settings-categories"[^>]* disabled', html)
    assert "Save settings" not in html
    response = post(client, project, "object")
    assert response.status_code == 409
    assert "archived" in response.content.decode()
    assert stored(project)["categories"] == list(DEFAULT_CATEGORIES)


def test_a_kind_without_settings_has_no_card(client):
    creator = UserFactory(is_staff=True)
    pairwise = ProjectFactory(creator=creator)
    client.force_login(creator)
    html = client.get(f"/projects/{pairwise.pk}/").content.decode()
    assert 'id="kind-settings"' not in html
    # Posting to it anyway stores nothing: the kind takes no settings.
    assert client.post(url(pairwise), {}, **HTMX).status_code == 200
    assert stored(pairwise) == {}
