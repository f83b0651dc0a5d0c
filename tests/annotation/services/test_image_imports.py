"""Importing image tasks: a zip of JSONL and pictures, or JSONL naming uploaded images by hash.

Everything or nothing: a refused line or entry leaves no task, no image row and no image file.
"""

import io
import json
import zipfile
from pathlib import Path

import pytest

from annotation import services
from annotation.errors import InvalidInput
from annotation.models import Image, ImportJob, ProjectImage, Prompt, Task
from annotation.services.images import image_upload
from tests.annotation.image_support import drawn, make_zip
from tests.factories import ProjectFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("media")]

SVG = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'


def line(image: str, n: int = 0) -> dict:
    return {
        "prompt": f"How many shapes are there in picture {n}?",
        "image": image,
        "responses": [f"Two shapes ({n}).", f"Five shapes ({n})."],
        "context": {"captions": [f"A red square and a blue circle ({n})."]},
    }


def jsonl(lines: list[dict]) -> bytes:
    return "".join(json.dumps(item) + "\n" for item in lines).encode()


def zipped(tmp_path: Path, entries: dict) -> bytes:
    path = tmp_path / "upload.zip"
    make_zip(path, entries)
    return path.read_bytes()


def create(project, body: bytes, name: str = "tasks.zip") -> ImportJob:
    return services.import_create(
        project=project,
        user=project.created_by,
        stream=io.BytesIO(body),
        size=len(body),
        filename=name,
    )


def stored_files(media_root: Path) -> list[Path]:
    return [p for p in (media_root / "images").rglob("*") if p.is_file()] if media_root else []


@pytest.fixture
def project():
    return ProjectFactory(kind="hallucination")


def test_a_zip_of_jsonl_and_images_imports_every_task_with_its_stored_image(
    project, tmp_path, media
):
    entries = {
        "tasks.jsonl": jsonl([line("img/a.png", 0), line("img/b.jpg", 1), line("img/a.png", 2)]),
        "img/a.png": drawn((120, 80), seed=1),
        "img/b.jpg": drawn((64, 64), fmt="JPEG", seed=2),
    }
    job = create(project, zipped(tmp_path, entries))
    assert job.status == ImportJob.Status.DONE, job.errors
    assert job.created == 3
    refs = list(
        Prompt.objects.filter(project=project).order_by("pk").values_list("image", flat=True)
    )
    assert refs[0] == refs[2] != refs[1]
    assert all(ref.startswith("sha256:") and len(ref) == 71 for ref in refs)
    images = Image.objects.filter(sha256__in=[ref[7:] for ref in refs])
    assert {(i.format, i.width, i.height) for i in images} == {("png", 120, 80), ("jpeg", 64, 64)}
    assert ProjectImage.objects.filter(project=project).count() == 2
    assert len(stored_files(media)) >= 2  # the images (their thumbnails may be themselves)
    prompt = Prompt.objects.filter(project=project).order_by("pk").first()
    assert prompt.context == {"captions": ["A red square and a blue circle (0)."]}
    assert Task.objects.filter(project=project).count() == 3


def test_a_large_zip_runs_as_a_job_from_disk(project, tmp_path, settings, media):
    settings.TANDEM_IMPORT_INLINE_BYTES = 10
    entries = {"tasks.jsonl": jsonl([line("a.png")]), "a.png": drawn((40, 30))}
    job = create(project, zipped(tmp_path, entries))
    assert job.status == ImportJob.Status.QUEUED
    assert job.source_path.endswith(".zip")
    job = services.import_run(job_id=job.pk)
    assert job.status == ImportJob.Status.DONE, job.errors
    assert job.lines_total == 1 and job.created == 1
    assert not Path(job.source_path).exists()


def test_lines_naming_uploaded_images_by_hash_import_from_plain_jsonl(project):
    image, _ = image_upload(project=project, data=drawn((50, 50)), name="up.png")
    job = create(project, jsonl([line(f"sha256:{image.sha256}")]), name="tasks.jsonl")
    assert job.status == ImportJob.Status.DONE, job.errors
    assert Prompt.objects.get(project=project).image == f"sha256:{image.sha256}"


def test_an_image_of_another_project_is_refused_naming_the_line(project):
    other = ProjectFactory(kind="hallucination")
    image, _ = image_upload(project=other, data=drawn((50, 50)), name="theirs.png")
    body = jsonl([line("sha256:" + "0" * 64, 0), line(f"sha256:{image.sha256}", 1)])
    job = create(project, body, name="tasks.jsonl")
    assert job.status == ImportJob.Status.FAILED
    assert [e["line"] for e in job.errors] == [1, 2]
    assert all("is not an image of this project" in e["message"] for e in job.errors)
    assert not Task.objects.filter(project=project).exists()
    assert not ProjectImage.objects.filter(project=project).exists()


@pytest.mark.parametrize(
    "hostile",
    [
        pytest.param(SVG, id="svg"),
        pytest.param(b"GIF89a" + b"\x00" * 64, id="gif"),
        pytest.param(b"#!/bin/sh\necho not an image\n", id="script-named-png"),
    ],
)
def test_one_hostile_picture_fails_the_whole_import_and_keeps_nothing(
    project, tmp_path, media, hostile
):
    entries = {
        "tasks.jsonl": jsonl([line("good.png", 0), line("bad.png", 1)]),
        "good.png": drawn((90, 60), seed=5),
        "bad.png": hostile,
    }
    job = create(project, zipped(tmp_path, entries))
    assert job.status == ImportJob.Status.FAILED
    assert job.errors[0]["line"] == 2
    assert "bad.png" in job.errors[0]["message"]
    # Nothing of the import is kept: not the tasks, not the good picture's row, link or file.
    assert not Task.objects.filter(project=project).exists()
    assert not Image.objects.exists()
    assert not ProjectImage.objects.exists()
    assert stored_files(media) == []


def test_a_zip_entry_escaping_the_archive_is_refused_and_nothing_is_kept(project, tmp_path, media):
    entries = {"tasks.jsonl": jsonl([line("../etc/a.png")]), "../etc/a.png": drawn()}
    with pytest.raises(InvalidInput) as refused:
        create(project, zipped(tmp_path, entries))
    assert "../etc/a.png" in refused.value.message
    assert not Task.objects.filter(project=project).exists()
    assert stored_files(media) == []
    assert not any((Path(media) / "imports").glob("*"))  # the spooled upload is gone too
    job = ImportJob.objects.get(project=project)
    assert job.status == ImportJob.Status.FAILED


def test_a_missing_picture_is_refused_naming_the_line_and_the_entry(project, tmp_path):
    entries = {
        "tasks.jsonl": jsonl([line("here.png", 0), line("gone.png", 1)]),
        "here.png": drawn(),
    }
    job = create(project, zipped(tmp_path, entries))
    assert job.status == ImportJob.Status.FAILED
    assert job.errors[0]["line"] == 2 and "gone.png" in job.errors[0]["message"]
    assert not Image.objects.exists()


def test_a_jsonl_starting_with_a_blank_line_is_still_read_line_by_line(project):
    image, _ = image_upload(project=project, data=drawn((50, 50)), name="up.png")
    body = b"\n" + jsonl([line(f"sha256:{image.sha256}")])
    job = create(project, body, name="tasks.jsonl")
    assert job.status == ImportJob.Status.DONE, job.errors
    assert job.lines_total == 2


def test_a_zip_renamed_jsonl_is_still_read_as_a_zip(project, tmp_path):
    entries = {"t.jsonl": jsonl([line("a.png")]), "a.png": drawn()}
    job = create(project, zipped(tmp_path, entries), name="looks-like.jsonl")
    assert job.status == ImportJob.Status.DONE, job.errors


def test_the_zip_is_refused_when_a_pairwise_project_gets_image_lines(tmp_path):
    pairwise = ProjectFactory(kind="pairwise")
    entries = {"t.jsonl": jsonl([line("a.png")]), "a.png": drawn()}
    job = create(pairwise, zipped(tmp_path, entries))
    assert job.status == ImportJob.Status.FAILED
    assert "image" in job.errors[0]["message"]
    assert not Image.objects.exists()


def test_zip_reader_sanity(tmp_path):
    # The helper writes names exactly as given (what the hostile-entry test relies on).
    path = tmp_path / "z.zip"
    make_zip(path, {"../x": b"1"})
    with zipfile.ZipFile(path) as archive:
        assert archive.namelist() == ["../x"]
