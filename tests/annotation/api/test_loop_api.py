"""The loop's endpoints for every role, and model downloads: only published artifacts, resumable."""

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from annotation.models import Membership, ModelVersion, Project, Role, Round
from annotation.services import membership_set, rounds
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

NAMES = ["annotator", "other", "manager", "trainer", "outsider", "anonymous", "removed"]


@pytest.fixture
def loop_cast(cast, tmp_path, settings):
    """The role cast, a loop configured on a hub id, one published policy and a removed member."""
    settings.TANDEM_ARTIFACT_ROOT = tmp_path / "artifacts"
    settings.TANDEM_MODEL_ROOTS = []
    rounds.loop_configure(
        project=cast.project, data={"policy_model": "org/pi0", "samples_per_prompt": 4}
    )
    cast.project.refresh_from_db()
    cast.pi1 = published_version(cast.project, "round-1-policy", round_number=1)
    cast.pi0 = ModelVersion.objects.create(
        project=cast.project, kind="policy", round=0, name="π0 (base)", artifact_path="org/pi0"
    )
    cast.removed = UserFactory()
    membership_set(project=cast.project, username=cast.removed.username, role=Role.TRAINER)
    return cast


def published_version(project, name, *, round_number, kind="policy", size=3 * 1024 * 1024):
    from django.conf import settings

    from training.artifacts import publish_run

    root = Path(settings.TANDEM_ARTIFACT_ROOT) / f"project-{project.pk}"
    with publish_run(root, name, kind=f"{kind}-test", config={}) as run:
        (run.path / "model.safetensors").write_bytes(os.urandom(size))
        (run.path / "sub").mkdir()
        (run.path / "sub" / "config.json").write_text('{"tiny": true}')
    return ModelVersion.objects.create(
        project=project, kind=kind, round=round_number, name=name, artifact_path=str(root / name)
    )


def client_for(api, cast, name):
    if name == "anonymous":
        return api()
    client = api(getattr(cast, name))
    if name == "removed":
        # Removed after their token was issued: the token alone must open nothing.
        Membership.objects.filter(project=cast.project, user=cast.removed).delete()
    return client


EXPORT_CODES = {
    "annotator": 403,
    "other": 403,
    "manager": 200,
    "trainer": 200,
    "outsider": 404,
    "anonymous": 401,
    "removed": 404,
}


@pytest.mark.parametrize("name", NAMES)
def test_loop_settings_read(loop_cast, api, name):
    response = client_for(api, loop_cast, name).get(f"/api/v1/projects/{loop_cast.project.pk}/loop")
    assert response.status_code == EXPORT_CODES[name]
    if response.status_code == 200:
        assert response.json()["policy_model"] == "org/pi0"
    else:
        assert "policy_model" not in response.json()


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("annotator", 403),
        ("other", 403),
        ("manager", 200),
        ("trainer", 403),
        ("outsider", 404),
        ("anonymous", 401),
        ("removed", 404),
    ],
)
def test_loop_settings_write(loop_cast, api, name, code):
    before = dict(loop_cast.project.loop)
    response = client_for(api, loop_cast, name).patch(
        f"/api/v1/projects/{loop_cast.project.pk}/loop",
        {"samples_per_prompt": 8, "policy_model": "org/other"},
        format="json",
    )
    assert response.status_code == code
    stored = Project.objects.get(pk=loop_cast.project.pk).loop
    if code == 200:
        assert stored["samples_per_prompt"] == 8 and stored["policy_model"] == "org/other"
        assert response.json() == stored
    else:
        assert stored == before


@pytest.mark.parametrize("name", NAMES)
def test_rounds_read(loop_cast, api, name):
    response = client_for(api, loop_cast, name).get(
        f"/api/v1/projects/{loop_cast.project.pk}/rounds"
    )
    assert response.status_code == EXPORT_CODES[name]
    if response.status_code == 200:
        assert response.json() == []


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("annotator", 403),
        ("other", 403),
        ("manager", 201),
        ("trainer", 201),
        ("outsider", 404),
        ("anonymous", 401),
        ("removed", 404),
    ],
)
def test_round_start(loop_cast, api, name, code, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False):
        response = client_for(api, loop_cast, name).post(
            f"/api/v1/projects/{loop_cast.project.pk}/rounds"
        )
    assert response.status_code == code
    assert Round.objects.filter(project=loop_cast.project).count() == (1 if code == 201 else 0)


@pytest.mark.parametrize(
    ("name", "code", "listed"),
    [
        ("annotator", 200, False),
        ("other", 200, False),
        ("manager", 200, True),
        ("trainer", 200, True),
        ("outsider", 200, False),
        ("anonymous", 401, False),
        ("removed", 200, False),
    ],
)
def test_model_list(loop_cast, api, name, code, listed):
    client = client_for(api, loop_cast, name)
    response = client.get("/api/v1/models")
    assert response.status_code == code
    if code == 200:
        ids = {m["id"] for m in response.json()}
        assert ids == ({loop_cast.pi0.pk, loop_cast.pi1.pk} if listed else set())
    scoped = client.get("/api/v1/models", {"project": loop_cast.project.pk})
    assert scoped.status_code == EXPORT_CODES[name]


@pytest.mark.parametrize("name", NAMES)
def test_model_download(loop_cast, api, name):
    response = client_for(api, loop_cast, name).get(f"/api/v1/models/{loop_cast.pi1.pk}/download")
    assert response.status_code == EXPORT_CODES[name]
    if response.status_code == 200:
        assert response["Content-Type"] == "application/gzip"
        body = b"".join(response.streaming_content)
        assert len(body) == int(response["Content-Length"]) > 3 * 1024 * 1024
    else:
        assert not getattr(response, "streaming", False)


def test_model_list_rejects_a_bad_project_id(loop_cast, api):
    response = api(loop_cast.manager).get("/api/v1/models", {"project": "9" * 40})
    assert response.status_code == 400 and response.json()["errors"][0]["field"] == "project"


# --- what may be downloaded ------------------------------------------------------------------


def test_only_published_artifacts_of_the_project_are_downloadable(loop_cast, api, tmp_path):
    from django.conf import settings

    project = loop_cast.project
    root = Path(settings.TANDEM_ARTIFACT_ROOT) / f"project-{project.pk}"
    other = Project.objects.exclude(pk=project.pk).first() or loop_cast.project
    elsewhere = published_version(
        Project.objects.create(name="other", kind="pairwise", created_by=loop_cast.manager)
        if other == project
        else other,
        "round-1-reward",
        round_number=1,
        size=10,
    )
    secret = tmp_path / "var"
    secret.mkdir()
    (secret / "tandem.sqlite3").write_text("password hashes")
    (secret / "manifest.json").write_text("{}")  # even a planted manifest opens nothing
    (root / "escape").symlink_to(secret, target_is_directory=True)
    unpublished = root / "round-3-policy"
    unpublished.mkdir()
    (unpublished / "weights").write_text("half written")
    planted = {
        "the var folder": str(secret),
        "the artifact root": str(settings.TANDEM_ARTIFACT_ROOT),
        "the project folder": str(root),
        "another project's artifact": elsewhere.artifact_path,
        "dot-dot into another project": f"{root}/../project-{elsewhere.project_id}/round-1-reward",
        "a symlink out": str(root / "escape"),
        "no manifest": str(unpublished),
        "a relative path": f"var/artifacts/project-{project.pk}/round-1-policy",
        "a hub id": "org/pi0",
    }
    versions = {
        label: ModelVersion.objects.create(
            project=project, kind="reward", round=10 + i, name=label, artifact_path=path
        )
        for i, (label, path) in enumerate(planted.items())
    }
    manager = api(loop_cast.manager)
    listed = {m["id"]: m["downloadable"] for m in manager.get("/api/v1/models").json()}
    assert listed[loop_cast.pi1.pk] is True
    assert listed[loop_cast.pi0.pk] is False  # a base-model reference never is
    for label, version in versions.items():
        assert listed[version.pk] is False, label
        response = manager.get(f"/api/v1/models/{version.pk}/download")
        assert response.status_code == 404, label
        assert not getattr(response, "streaming", False), label
    assert manager.get(f"/api/v1/models/{loop_cast.pi0.pk}/download").status_code == 404


def test_a_cut_short_download_resumes_byte_identical(loop_cast, api, tmp_path):
    client = api(loop_cast.trainer)
    url = f"/api/v1/models/{loop_cast.pi1.pk}/download"
    full_response = client.get(url)
    assert full_response.status_code == 200 and full_response["Accept-Ranges"] == "bytes"
    etag = full_response["ETag"]
    full = b"".join(full_response.streaming_content)
    assert len(full) == int(full_response["Content-Length"])

    # Half of it arrives, then the connection drops.
    cut = client.get(url)
    received = b""
    for chunk in cut.streaming_content:
        received += chunk
        if len(received) >= len(full) // 2:
            break
    received = received[: len(full) // 2]
    del cut  # the client goes away mid-body

    rest = client.get(url, HTTP_RANGE=f"bytes={len(received)}-", HTTP_IF_RANGE=etag)
    assert rest.status_code == 206 and rest["ETag"] == etag
    assert rest["Content-Range"] == f"bytes {len(received)}-{len(full) - 1}/{len(full)}"
    tail = b"".join(rest.streaming_content)
    assert len(tail) == int(rest["Content-Length"])
    assert received + tail == full

    with tarfile.open(fileobj=io.BytesIO(received + tail), mode="r:gz") as tar:
        tar.extractall(tmp_path / "out", filter="data")
    source = Path(loop_cast.pi1.artifact_path)
    out = tmp_path / "out" / source.name
    for path in source.rglob("*"):
        if path.is_file():
            assert (out / path.relative_to(source)).read_bytes() == path.read_bytes()


def test_ranges_and_a_changed_archive(loop_cast, api):
    from django.conf import settings

    client = api(loop_cast.trainer)
    url = f"/api/v1/models/{loop_cast.pi1.pk}/download"
    full = client.get(url)
    body = b"".join(full.streaming_content)
    size = len(body)

    last = client.get(url, HTTP_RANGE="bytes=-100")
    assert last.status_code == 206 and b"".join(last.streaming_content) == body[-100:]
    middle = client.get(url, HTTP_RANGE="bytes=10-19")
    assert middle.status_code == 206 and b"".join(middle.streaming_content) == body[10:20]
    past = client.get(url, HTTP_RANGE=f"bytes={size}-")
    assert past.status_code == 416 and past["Content-Range"] == f"bytes */{size}"
    stale = client.get(url, HTTP_RANGE="bytes=10-", HTTP_IF_RANGE='"not-this-one"')
    assert stale.status_code == 200 and b"".join(stale.streaming_content) == body
    nonsense = client.get(url, HTTP_RANGE="lines=1-2")
    assert nonsense.status_code == 200 and b"".join(nonsense.streaming_content) == body

    # The archive is deterministic: rebuilt from scratch, it is the same bytes and ETag.
    cache = Path(settings.TANDEM_ARTIFACT_ROOT) / f"project-{loop_cast.project.pk}" / ".downloads"
    for path in cache.iterdir():
        path.unlink()
    again = client.get(url)
    assert again["ETag"] == full["ETag"] and b"".join(again.streaming_content) == body


# --- bad settings: a 400 naming the field, nothing stored ------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"policy_model": "x" * 100_000}, "policy_model"),
        ({"policy_model": "/" + "a/" * 3000}, "policy_model"),
        ({"policy_model": "org/pi0\u0000"}, "policy_model"),
        ({"policy_model": "\ud800"}, "policy_model"),
        ({"policy_model": "/etc"}, "policy_model"),
        ({"policy_model": ["org/pi0"]}, "policy_model"),
        ({"reward_backbone": "../../var"}, "reward_backbone"),
        ({"reward": {"backbone": "/"}}, "reward.backbone"),
        ({"generation": {"k": 10_000}}, "generation.k"),
        ({"policy": {"nested": {"a": {"b": 1}}}}, "policy.nested"),
        ({"samples_per_prompt": 2**70}, "samples_per_prompt"),
        ({"human_share": "1"}, "human_share"),
        ({"surprise": 1}, "surprise"),
        ({"\ud800": 1}, "\\ud800"),
        ({"generation": {"\udfff" * 3: 1}}, "generation.\\udfff\\udfff\\udfff"),
        ({"k" * 10_000: 1}, "k" * 100 + "…"),
    ],
)
def test_bad_settings_are_a_400_naming_the_field(loop_cast, api, body, field):
    before = dict(Project.objects.get(pk=loop_cast.project.pk).loop)
    # json.dumps escapes a lone surrogate as \\ud800, which the server's parser then decodes.
    response = api(loop_cast.manager).patch(
        f"/api/v1/projects/{loop_cast.project.pk}/loop",
        json.dumps(body),
        content_type="application/json",
    )
    assert response.status_code == 400, response.content
    assert response.json()["errors"][0]["field"] == field
    assert Project.objects.get(pk=loop_cast.project.pk).loop == before


def test_a_body_that_is_not_an_object_is_a_400(loop_cast, api):
    response = api(loop_cast.manager).patch(
        f"/api/v1/projects/{loop_cast.project.pk}/loop", ["enabled"], format="json"
    )
    assert response.status_code == 400


def test_settings_stored_before_the_checks_show_and_can_be_fixed(loop_cast, api):
    Project.objects.filter(pk=loop_cast.project.pk).update(
        loop={**loop_cast.project.loop, "policy_model": "/"}
    )
    manager = api(loop_cast.manager)
    url = f"/api/v1/projects/{loop_cast.project.pk}/loop"
    shown = manager.get(url)
    assert shown.status_code == 200 and shown.json()["policy_model"] == "/"
    refused = manager.patch(url, {"human_share": 0.5}, format="json")
    assert refused.status_code == 400 and refused.json()["errors"][0]["field"] == "policy_model"
    fixed = manager.patch(url, {"policy_model": "org/pi0"}, format="json")
    assert fixed.status_code == 200 and fixed.json()["policy_model"] == "org/pi0"


def test_an_archived_projects_loop_is_read_only(loop_cast, api):
    Project.objects.filter(pk=loop_cast.project.pk).update(archived=True)
    before = dict(loop_cast.project.loop)
    manager = api(loop_cast.manager)
    url = f"/api/v1/projects/{loop_cast.project.pk}/loop"
    assert manager.patch(url, {"samples_per_prompt": 8}, format="json").status_code == 409
    assert manager.post(f"/api/v1/projects/{loop_cast.project.pk}/rounds").status_code == 409
    assert Project.objects.get(pk=loop_cast.project.pk).loop == before
    assert not Round.objects.filter(project=loop_cast.project).exists()
