"""The Django admin shows images (served to staff by its own view) and each project's images."""

import hashlib

import pytest
from django.test import Client
from django.urls import reverse

from annotation.services.images import image_store
from tests.annotation import image_support
from tests.annotation.image_support import drawn
from tests.factories import PASSWORD, ProjectFactory, UserFactory

pytestmark = pytest.mark.django_db
media = image_support.media


@pytest.fixture
def staff():
    user = UserFactory(is_staff=True)
    user.is_superuser = True
    user.save(update_fields=["is_superuser"])
    client = Client()
    assert client.login(username=user.username, password=PASSWORD)
    return client


@pytest.fixture
def image(media):
    project = ProjectFactory(name="Scenes")
    return project, image_store(project=project, data=drawn((800, 400)), name="scene.png")


def test_the_image_list_shows_thumbnails(staff, image):
    _, img = image
    page = staff.get(reverse("admin:annotation_image_changelist"))
    assert page.status_code == 200
    thumb = reverse("admin:annotation_image_file", args=[img.sha256]) + "?size=thumb"
    assert f'src="{thumb}"' in page.content.decode()
    assert 'width="96" height="48"' in page.content.decode()


def test_an_image_page_shows_it_and_its_projects(staff, image):
    project, img = image
    page = staff.get(reverse("admin:annotation_image_change", args=[img.sha256]))
    assert page.status_code == 200
    text = page.content.decode()
    assert img.sha256 in text and project.name in text
    assert 'width="512" height="256"' in text


def test_the_admin_serves_the_image_and_its_thumbnail_to_staff(staff, image):
    _, img = image
    full = staff.get(reverse("admin:annotation_image_file", args=[img.sha256]))
    assert full.status_code == 200
    assert full["Content-Type"] == "image/png"
    assert full["X-Content-Type-Options"] == "nosniff"
    assert hashlib.sha256(b"".join(full.streaming_content)).hexdigest() == img.sha256
    thumb = staff.get(reverse("admin:annotation_image_file", args=[img.sha256]) + "?size=thumb")
    assert thumb.status_code == 200
    assert staff.get(reverse("admin:annotation_image_file", args=["0" * 64])).status_code == 404


def test_the_admin_image_view_is_closed_to_others(image):
    _, img = image
    target = reverse("admin:annotation_image_file", args=[img.sha256])
    assert Client().get(target).status_code == 302  # to the admin login
    member = UserFactory()
    client = Client()
    assert client.login(username=member.username, password=PASSWORD)
    assert client.get(target).status_code == 302


def test_the_project_page_lists_its_images(staff, image):
    project, img = image
    page = staff.get(reverse("admin:annotation_project_change", args=[project.pk]))
    assert page.status_code == 200
    text = page.content.decode()
    assert "Images (the 50 most recent)" in text
    assert reverse("admin:annotation_image_file", args=[img.sha256]) in text


def test_images_cannot_be_added_changed_or_deleted_in_the_admin(staff, image):
    _, img = image
    assert staff.get(reverse("admin:annotation_image_add")).status_code == 403
    deleted = staff.post(
        reverse("admin:annotation_image_delete", args=[img.sha256]), {"post": "yes"}
    )
    assert deleted.status_code == 403


def test_the_project_page_still_saves_with_its_images_listed(staff, image):
    """The images inline lists a slice of the project's images; the page must still save."""
    project, _ = image
    target = reverse("admin:annotation_project_change", args=[project.pk])
    page = staff.get(target).context
    form = page["adminform"].form
    data = {name: "" if form[name].value() is None else form[name].value() for name in form.fields}
    data["name"] = "Scenes, renamed"
    for inline in page["inline_admin_formsets"]:
        formset = inline.formset
        for i, shown in enumerate(formset.forms):
            data[f"{formset.prefix}-{i}-id"] = shown.instance.pk
            data[f"{formset.prefix}-{i}-project"] = project.pk
        count = len(formset.forms)
        data.update(
            {
                f"{formset.prefix}-TOTAL_FORMS": count,
                f"{formset.prefix}-INITIAL_FORMS": count,
                f"{formset.prefix}-MIN_NUM_FORMS": 0,
                f"{formset.prefix}-MAX_NUM_FORMS": 1000,
            }
        )
    assert any(inline.formset.prefix == "images" for inline in page["inline_admin_formsets"])
    saved = staff.post(target, data)
    assert saved.status_code == 302
    project.refresh_from_db()
    assert project.name == "Scenes, renamed"
