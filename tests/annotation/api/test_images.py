"""/api/v1 images for every role: managers upload, members see, outsiders see nothing (404), and
an export's images come as one zip."""

import hashlib
import io
import zipfile

import pytest
from django.core.files.storage import storages
from PIL import Image as Pil
from rest_framework.test import APIClient

from annotation.models import Judgement, Project, Prompt
from annotation.selectors.export import Position
from annotation.services.images import image_store
from tests.annotation import image_support
from tests.annotation.image_support import drawn, noise
from tests.factories import PASSWORD, ProjectFactory

pytestmark = pytest.mark.django_db
media = image_support.media


def who(cast, name):
    return None if name == "anonymous" else getattr(cast, name)


def upload(client, project_id, data, name="shapes.png"):
    return client.post(
        f"/api/v1/projects/{project_id}/images",
        {"file": _named(data, name)},
        format="multipart",
    )


def _named(data: bytes, name: str):
    f = io.BytesIO(data)
    f.name = name
    return f


def url(project_id, sha, size=""):
    return f"/api/v1/projects/{project_id}/images/sha256:{sha}" + (f"?size={size}" if size else "")


@pytest.fixture
def image(cast, media):
    return image_store(project=cast.project, data=drawn((900, 600), fmt="JPEG"), name="scene.jpg")


@pytest.mark.parametrize(
    ("name", "code"),
    [("annotator", 403), ("other", 403), ("manager", 201), ("trainer", 403), ("outsider", 404),
     ("anonymous", 401)],
)  # fmt: skip
def test_upload_by_role(cast, api, media, name, code):
    response = upload(api(who(cast, name)), cast.project.pk, drawn((40, 30)))
    assert response.status_code == code, response.content
    if code == 201:
        body = response.json()
        sha = body["id"].removeprefix("sha256:")
        assert body == {"id": f"sha256:{sha}", "width": 40, "height": 30}
        stored = storages["default"].open(f"images/{sha[:2]}/{sha}.png").read()
        assert hashlib.sha256(stored).hexdigest() == sha
    else:
        assert not list(media.rglob("*.png"))


def test_an_upload_twice_is_200_the_second_time(cast, api, media):
    manager = api(cast.manager)
    first = upload(manager, cast.project.pk, drawn())
    second = upload(manager, cast.project.pk, drawn(), name="renamed.png")
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json() == second.json()


def test_a_raw_body_upload(cast, api, media):
    data = drawn((30, 20), fmt="WEBP")
    response = api(cast.manager).generic(
        "POST", f"/api/v1/projects/{cast.project.pk}/images", data, content_type="image/webp"
    )
    assert response.status_code == 201, response.content
    assert (response.json()["width"], response.json()["height"]) == (30, 20)


@pytest.mark.parametrize(
    ("data", "name", "code", "says"),
    [
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "logo.png", 400, "'logo.png' is an SVG"),
        (drawn(fmt="GIF"), "a.gif", 400, "'a.gif' is a GIF"),
        (b"MZ\x90\x00 an executable", "cat.jpg", 400, "'cat.jpg' is not a JPEG, PNG or WebP"),
        (image_support.png_bomb(8000, 8000), "bomb.png", 400, "'bomb.png' is 8000×8000 pixels"),
    ],
)
def test_hostile_uploads_are_refused_naming_the_file(cast, api, media, data, name, code, says):
    response = upload(api(cast.manager), cast.project.pk, data, name=name)
    assert response.status_code == code
    assert says in response.json()["detail"]
    assert not list(media.rglob("*.*"))


def test_an_upload_over_the_cap_is_413(cast, api, media, settings):
    settings.TANDEM_IMAGE_MAX_BYTES = 5000
    big = noise((80, 80))
    assert upload(api(cast.manager), cast.project.pk, big).status_code == 413
    raw = api(cast.manager).generic(
        "POST", f"/api/v1/projects/{cast.project.pk}/images", big, content_type="image/png"
    )
    assert raw.status_code == 413
    assert "limit is 5000 bytes" in raw.json()["detail"]


def test_an_upload_without_a_file_is_400(cast, api, media):
    response = api(cast.manager).post(
        f"/api/v1/projects/{cast.project.pk}/images", {"other": "x"}, format="multipart"
    )
    assert response.status_code == 400
    assert response.json()["errors"] == [{"field": "file", "message": "required"}]


def test_an_archived_project_takes_no_images(cast, api, media):
    Project.objects.filter(pk=cast.project.pk).update(archived=True)
    assert upload(api(cast.manager), cast.project.pk, drawn()).status_code == 409


@pytest.mark.parametrize(
    ("name", "code"),
    [("annotator", 200), ("other", 200), ("manager", 200), ("trainer", 200), ("outsider", 404),
     ("removed", 404), ("anonymous", 401)],
)  # fmt: skip
def test_an_image_is_served_to_members_only(cast, api, image, name, code):
    response = api(who(cast, name)).get(url(cast.project.pk, image.sha256))
    assert response.status_code == code
    if code == 200:
        body = b"".join(response.streaming_content)
        assert hashlib.sha256(body).hexdigest() == image.sha256


def test_a_session_serves_images_as_a_token_does(cast, image):
    browser = APIClient()
    assert browser.login(username=cast.annotator.username, password=PASSWORD)
    assert browser.get(url(cast.project.pk, image.sha256)).status_code == 200
    outsider = APIClient()
    assert outsider.login(username=cast.outsider.username, password=PASSWORD)
    assert outsider.get(url(cast.project.pk, image.sha256)).status_code == 404


def test_an_image_of_another_project_is_404_to_members(cast, api, media):
    elsewhere = image_store(project=ProjectFactory(), data=drawn(seed=9), name="x.png")
    annotator = api(cast.annotator)
    assert annotator.get(url(cast.project.pk, elsewhere.sha256)).status_code == 404
    assert annotator.get(url(cast.project.pk, "0" * 64)).status_code == 404
    not_a_ref = f"/api/v1/projects/{cast.project.pk}/images/..%2F..%2Fetc%2Fpasswd"
    assert annotator.get(not_a_ref).status_code == 404


def test_image_headers(cast, api, image):
    response = api(cast.annotator).get(url(cast.project.pk, image.sha256))
    assert response["Content-Type"] == "image/jpeg"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Cache-Control"] == "private, max-age=31536000, immutable"
    assert response["ETag"] == f'"{image.sha256}"'
    assert response["Content-Disposition"] == f'inline; filename="{image.sha256}.jpg"'
    assert "sandbox" in response["Content-Security-Policy"]
    assert int(response["Content-Length"]) == image.size_bytes
    again = api(cast.annotator).get(
        url(cast.project.pk, image.sha256), HTTP_IF_NONE_MATCH=f'"{image.sha256}"'
    )
    assert again.status_code == 304
    assert again["Cache-Control"] == "private, max-age=31536000, immutable"
    # An <img> asks for image formats: no 406.
    assert (
        api(cast.annotator)
        .get(url(cast.project.pk, image.sha256), HTTP_ACCEPT="image/avif,image/webp")
        .status_code
        == 200
    )


def test_the_thumbnail(cast, api, image):
    response = api(cast.annotator).get(url(cast.project.pk, image.sha256, "thumb"))
    assert response.status_code == 200
    assert response["ETag"] == f'"{image.sha256}-thumb"'
    thumb = Pil.open(io.BytesIO(b"".join(response.streaming_content)))
    assert (thumb.format, thumb.size) == ("JPEG", (512, 341))
    assert api(cast.annotator).get(url(cast.project.pk, image.sha256, "huge")).status_code == 400


# --- the image archive of an export -------------------------------------------------------


@pytest.fixture
def judged(cast, api, media):
    """Three judgements, on prompts showing images A, B and B; image C is on a prompt not judged."""
    annotator = api(cast.annotator)
    for i in range(3):
        lease = annotator.post(f"/api/v1/projects/{cast.project.pk}/assignments").json()
        done = annotator.post(
            f"/api/v1/assignments/{lease['id']}/judgement",
            {"choice": "A", "strength": 1},
            format="json",
            HTTP_IDEMPOTENCY_KEY=f"k{i}",
        )
        assert done.status_code in (200, 201), done.content
    judgements = list(Judgement.objects.filter(project=cast.project).order_by("commit_seq", "id"))
    images = {
        key: image_store(project=cast.project, data=drawn(seed=seed), name=f"{key}.png")
        for seed, key in enumerate("ABC")
    }
    # The pairwise import takes no image: the prompts are given theirs here, as a hallucination
    # import would have written them.
    for judgement, key in zip(judgements, "ABB", strict=True):
        Prompt.objects.filter(tasks=judgement.task_id).update(image=f"sha256:{images[key].sha256}")
    unjudged = Prompt.objects.filter(project=cast.project, tasks__judgements=None).first()
    Prompt.objects.filter(pk=unjudged.pk).update(image=f"sha256:{images['C'].sha256}")
    return judgements, images


def archive_names(response) -> dict[str, bytes]:
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "application/zip"
    body = b"".join(response.streaming_content)
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        assert archive.testzip() is None
        assert {i.compress_type for i in archive.infolist()} <= {zipfile.ZIP_STORED}
        return {name: archive.read(name) for name in archive.namelist()}


def test_the_image_archive_holds_the_images_of_the_judged_prompts(cast, api, judged):
    judgements, images = judged
    export = f"/api/v1/projects/{cast.project.pk}/export/images"
    files = archive_names(api(cast.trainer).get(export))
    assert set(files) == {f"images/{images[k].sha256}.png" for k in "AB"}
    for key in "AB":
        stored = storages["default"].open(images[key].file).read()
        assert files[f"images/{images[key].sha256}.png"] == stored
    after_first = Position(judgements[0].commit_seq, judgements[0].pk).encode()
    assert set(archive_names(api(cast.manager).get(f"{export}?since={after_first}"))) == {
        f"images/{images['B'].sha256}.png"
    }
    after_last = Position(judgements[-1].commit_seq, judgements[-1].pk).encode()
    assert archive_names(api(cast.trainer).get(f"{export}?since={after_last}&shape=pairs")) == {}


@pytest.mark.parametrize(
    ("name", "code"),
    [("annotator", 403), ("manager", 200), ("trainer", 200), ("outsider", 404),
     ("anonymous", 401)],
)  # fmt: skip
def test_the_image_archive_by_role(cast, api, judged, name, code):
    response = api(who(cast, name)).get(f"/api/v1/projects/{cast.project.pk}/export/images")
    assert response.status_code == code


def test_the_image_archive_refuses_bad_arguments(cast, api, judged):
    trainer = api(cast.trainer)
    export = f"/api/v1/projects/{cast.project.pk}/export/images"
    assert trainer.get(f"{export}?since=nonsense").status_code == 400
    refused = trainer.get(f"{export}?shape=nonsense")
    assert refused.status_code == 400
    assert refused.json()["errors"] == [{"field": "shape", "message": "unknown"}]
