"""Images are verified by decoding, stripped of metadata and stored once by content hash; hostile
files are refused naming the file, and a failed import keeps none of its images."""

import hashlib
import io
import threading

import pytest
from django.core.files.storage import storages
from django.db import connection, transaction
from PIL import ExifTags, ImageCms, PngImagePlugin
from PIL import Image as Pil

from annotation.errors import Conflict, InvalidInput, TooLarge
from annotation.models import Image, ProjectImage
from annotation.services.archives import ImportArchive
from annotation.services.images import (
    THUMB_SIDE,
    ImageBatch,
    image_store,
    image_upload,
    image_verify,
    images_resolve,
)
from tests.annotation import image_support
from tests.annotation.image_support import drawn, make_zip, noise, png_bomb
from tests.factories import ProjectFactory

pytestmark = pytest.mark.django_db
media = image_support.media


def stored_files(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def read_stored(name: str) -> bytes:
    with storages["default"].open(name, "rb") as f:
        return f.read()


def test_an_image_is_stored_under_the_hash_of_its_stored_bytes(media):
    project = ProjectFactory()
    image = image_store(project=project, data=drawn((64, 48)), name="shapes.png")
    body = read_stored(image.file)
    assert hashlib.sha256(body).hexdigest() == image.sha256
    assert image.file == f"images/{image.sha256[:2]}/{image.sha256}.png"
    assert (image.format, image.width, image.height, image.size_bytes) == ("png", 64, 48, len(body))
    row = Image.objects.get(pk=image.sha256)
    assert row.file == image.file
    assert ProjectImage.objects.filter(project=project, image=row).count() == 1
    # Small enough to be its own thumbnail: one file.
    assert row.thumbnail == row.file
    assert stored_files(media) == [image.file]


def test_the_same_image_twice_is_stored_once(media):
    first, second = ProjectFactory(), ProjectFactory()
    data = drawn((80, 60), fmt="JPEG")
    a = image_store(project=first, data=data, name="a.jpg")
    b = image_store(project=first, data=io.BytesIO(data), name="copy-of-a.jpg")
    c = image_store(project=second, data=data, name="again.jpg")
    assert a.sha256 == b.sha256 == c.sha256
    assert Image.objects.count() == 1
    assert ProjectImage.objects.filter(image_id=a.sha256).count() == 2
    assert stored_files(media) == [a.file]


def test_exif_and_gps_are_stripped_and_the_orientation_applied(media):
    exif = Pil.Exif()
    exif[ExifTags.Base.Orientation] = 6  # shown rotated a quarter turn clockwise
    exif[ExifTags.Base.Make] = "SpyCam"
    exif[ExifTags.IFD.GPSInfo] = {
        ExifTags.GPS.GPSLatitudeRef: "N",
        ExifTags.GPS.GPSLatitude: (48.0, 51.0, 29.0),
        ExifTags.GPS.GPSLongitudeRef: "E",
        ExifTags.GPS.GPSLongitude: (2.0, 17.0, 40.0),
    }
    original = drawn((120, 40), fmt="JPEG", exif=exif.tobytes())
    assert Pil.open(io.BytesIO(original)).getexif().get_ifd(ExifTags.IFD.GPSInfo)

    image = image_store(project=ProjectFactory(), data=original, name="holiday.jpg")
    body = read_stored(image.file)
    reopened = Pil.open(io.BytesIO(body))
    assert reopened.format == "JPEG"
    assert not reopened.getexif()
    assert "exif" not in reopened.info
    assert b"Exif" not in body and b"SpyCam" not in body
    # Turned upright, so it looks as the camera meant it.
    assert (image.width, image.height) == (40, 120) == reopened.size


def test_png_text_chunks_xmp_and_icc_profile_are_stripped(media):
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "taken at 12 Secret Street")
    info.add_itxt("XML:com.adobe.xmp", "<x:xmpmeta>secret-xmp</x:xmpmeta>")
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    original = drawn((50, 50), pnginfo=info, icc_profile=icc)
    assert b"Secret Street" in original and b"iCCP" in original

    image = image_store(project=ProjectFactory(), data=original, name="scan.png")
    body = read_stored(image.file)
    for leak in (b"Secret Street", b"secret-xmp", b"iCCP", b"tEXt", b"iTXt", b"eXIf"):
        assert leak not in body
    assert Pil.open(io.BytesIO(body)).info.get("icc_profile") is None


@pytest.mark.parametrize("name", ["cat.png", "cat.jpg", "cat.webp", "cat"])
@pytest.mark.parametrize(
    "data",
    [b"hello, world\n", b"<html><script>alert(1)</script></html>", b"\x89PNG\r\n\x1a\nbroken"],
)
def test_what_is_not_an_image_is_refused_whatever_its_name(media, name, data):
    project = ProjectFactory()
    with pytest.raises(InvalidInput) as refused:
        image_store(project=project, data=data, name=name)
    assert repr(name) in refused.value.message
    assert "JPEG, PNG and WebP" in refused.value.message
    assert not Image.objects.exists() and not ProjectImage.objects.exists()
    assert stored_files(media) == []


@pytest.mark.parametrize("name", ["logo.svg", "logo.png"])
def test_svg_is_refused(media, name):
    svg = b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
    with pytest.raises(InvalidInput, match=r"is an SVG") as refused:
        image_store(project=ProjectFactory(), data=svg, name=name)
    assert repr(name) in refused.value.message


def test_gif_is_refused(media):
    with pytest.raises(InvalidInput, match=r"'anim.gif' is a GIF; only JPEG, PNG and WebP"):
        image_store(project=ProjectFactory(), data=drawn(fmt="GIF"), name="anim.gif")


def test_an_animated_png_is_refused(media):
    frames = [Pil.new("RGB", (20, 20), c) for c in ("red", "blue")]
    out = io.BytesIO()
    frames[0].save(out, format="PNG", save_all=True, append_images=frames[1:])
    with pytest.raises(InvalidInput, match="is animated"):
        image_store(project=ProjectFactory(), data=out.getvalue(), name="apng.png")


def test_a_decompression_bomb_is_refused_before_it_is_decoded(media, settings):
    # 8,000 × 8,000 real zero pixels: 64 MB decoded from about 60 KB, over the 40 MP cap.
    bomb = png_bomb(8000, 8000)
    assert len(bomb) < 200_000
    with pytest.raises(InvalidInput, match=r"'bomb.png' is 8000×8000 pixels; the limit is"):
        image_store(project=ProjectFactory(), data=bomb, name="bomb.png")
    # Past Pillow's own bomb limit too (its DecompressionBombError is a refusal like ours).
    settings.TANDEM_IMAGE_MAX_PIXELS = 10**12
    with pytest.raises(InvalidInput, match="too many pixels"):
        image_verify(png_bomb(60_000, 60_000, real=False), name="huge.png")
    # The cap is the setting: a small one refuses a small image.
    settings.TANDEM_IMAGE_MAX_PIXELS = 100
    with pytest.raises(InvalidInput, match="is 11×10 pixels; the limit is 100 pixels"):
        image_verify(drawn((11, 10)), name="eleven.png")
    assert stored_files(media) == []


def test_a_file_over_the_size_cap_is_refused(media, settings):
    settings.TANDEM_IMAGE_MAX_BYTES = 4000
    data = noise((64, 64))
    assert len(data) > 4000
    with pytest.raises(TooLarge, match=r"'noise.png' is over the limit of 4000 bytes"):
        image_store(project=ProjectFactory(), data=io.BytesIO(data), name="noise.png")
    assert TooLarge.status == 413


def test_a_truncated_image_is_refused(media):
    data = noise((64, 64), fmt="JPEG")
    with pytest.raises(InvalidInput, match="'half.jpg'"):
        image_store(project=ProjectFactory(), data=data[: len(data) // 2], name="half.jpg")


def test_webp_is_accepted_and_a_large_image_gets_a_thumbnail(media):
    image = image_store(project=ProjectFactory(), data=drawn((1200, 600), fmt="WEBP"), name="w")
    assert (image.format, image.width, image.height) == ("webp", 1200, 600)
    assert image.thumbnail == f"images/thumbs/{image.sha256[:2]}/{image.sha256}.webp"
    thumb = Pil.open(io.BytesIO(read_stored(image.thumbnail)))
    assert thumb.format == "WEBP"
    assert thumb.size == (THUMB_SIDE, THUMB_SIDE // 2)


@pytest.mark.parametrize(
    ("mode", "fill", "fmt", "stored_mode", "pixel"),
    [
        ("RGBA", (10, 20, 30, 40), "PNG", "RGBA", (10, 20, 30, 40)),  # alpha kept
        ("I;16", 30000, "PNG", "L", 117),  # 16-bit grey scaled, not clipped to white
        ("L", 100, "JPEG", "L", 100),
        ("CMYK", (0, 0, 0, 0), "JPEG", "RGB", (255, 255, 255)),
    ],
)
def test_each_mode_is_stored_as_it_looks(media, mode, fill, fmt, stored_mode, pixel):
    out = io.BytesIO()
    Pil.new(mode, (20, 20), fill).save(out, format=fmt)
    verified = image_verify(out.getvalue(), name="plain")
    stored = Pil.open(io.BytesIO(verified.content))
    assert stored.mode == stored_mode
    assert stored.getpixel((5, 5)) == pixel


def test_an_upload_says_whether_the_image_is_new_to_the_project(media):
    project = ProjectFactory()
    first, new = image_upload(project=project, data=drawn(), name="a.png")
    again, new_again = image_upload(project=project, data=drawn(), name="b.png")
    assert (new, new_again) == (True, False)
    assert first.sha256 == again.sha256


def test_a_failed_import_keeps_none_of_its_images(media):
    project = ProjectFactory()
    kept = image_store(project=project, data=drawn(seed=1), name="kept.png")
    with pytest.raises(RuntimeError), ImageBatch(project=project) as batch:
        with transaction.atomic():
            batch.store(drawn(seed=1), name="kept-again.png")  # found in storage
            new = batch.store(drawn(seed=2), name="new.png")
            batch.write_rows()
            assert Image.objects.filter(pk=new.sha256).exists()
            raise RuntimeError("the import failed while writing")
    assert list(Image.objects.values_list("pk", flat=True)) == [kept.sha256]
    assert stored_files(media) == [kept.file]


def test_a_refused_import_that_wrote_no_rows_keeps_none_of_its_files(media):
    project = ProjectFactory()
    with ImageBatch(project=project) as batch:
        batch.store(drawn((900, 700)), name="big.png")
        assert len(stored_files(media)) == 2  # the image and its thumbnail
    assert stored_files(media) == []


def test_a_committed_batch_keeps_its_files(media):
    project = ProjectFactory()
    with ImageBatch(project=project) as batch:
        image = batch.store(drawn((900, 700)), name="big.png")
        with transaction.atomic():
            batch.write_rows()
    assert stored_files(media) == sorted([image.file, image.thumbnail])
    assert ProjectImage.objects.filter(project=project, image_id=image.sha256).exists()


def test_rows_are_refused_when_a_found_file_vanished_meanwhile(media):
    project = ProjectFactory()
    earlier = image_store(project=project, data=drawn(seed=3), name="a.png")
    with ImageBatch(project=ProjectFactory()) as batch:
        batch.store(drawn(seed=3), name="a.png")
        storages["default"].delete(earlier.file)  # as a failed import's cleanup might
        with pytest.raises(Conflict, match="removed from storage"), transaction.atomic():
            batch.write_rows()


def test_references_resolve_to_images_of_this_project_only(media, tmp_path):
    project, other = ProjectFactory(), ProjectFactory()
    mine = image_store(project=project, data=drawn(seed=4), name="mine.png")
    theirs = image_store(project=other, data=drawn(seed=5), name="theirs.png")
    archive_path = tmp_path / "import.zip"
    make_zip(
        archive_path,
        {
            "tasks.jsonl": b"{}\n",
            "img/a.png": drawn(seed=6),
            "img/anim.gif": drawn(fmt="GIF"),
        },
    )
    refs = [
        (1, f"sha256:{mine.sha256}"),
        (2, f"sha256:{theirs.sha256}"),
        (3, "img/a.png"),
        (4, "./img/a.png"),
        (5, "img/a.png"),
        (6, "img/anim.gif"),
        (7, "img/missing.png"),
        (8, "sha256:NOTHEX"),
        (9, "../img/a.png"),
    ]
    with ImportArchive(archive_path) as archive, ImageBatch(project=project) as batch:
        resolved, errors = images_resolve(project=project, refs=refs, archive=archive, batch=batch)
        with transaction.atomic():
            batch.write_rows()
    stored = resolved["img/a.png"]
    assert resolved == {
        f"sha256:{mine.sha256}": f"sha256:{mine.sha256}",
        "img/a.png": stored,
        "./img/a.png": stored,
    }
    messages = {e["line"]: e["message"] for e in errors}
    assert [e["line"] for e in errors] == [2, 6, 7, 8, 9]
    assert messages[2] == (
        f"image: sha256:{theirs.sha256} is not an image of this project (upload it first: "
        f"POST /api/v1/projects/{project.pk}/images)"
    )
    assert (
        messages[6] == "image: 'img/anim.gif' is a GIF; only JPEG, PNG and WebP images are accepted"
    )
    assert messages[7] == "image: 'img/missing.png' is not in the archive"
    assert "not a reference" in messages[8]
    assert messages[9] == "image: '../img/a.png' is not in the archive"
    # The zip's image is now the project's, stored once however many lines named it.
    sha = stored.removeprefix("sha256:")
    assert ProjectImage.objects.filter(project=project, image_id=sha).count() == 1


def test_a_path_without_an_archive_is_refused(media):
    project = ProjectFactory()
    with ImageBatch(project=project) as batch:
        resolved, errors = images_resolve(project=project, refs=[(3, "a.png")], batch=batch)
    assert resolved == {}
    assert errors[0]["line"] == 3
    assert "is a path, but this import is not a zip archive" in errors[0]["message"]


@pytest.mark.django_db(transaction=True)
def test_a_failed_import_never_deletes_a_file_another_import_is_naming(media):
    """Import A stores a new image and fails; import B found A's file and is writing its rows.
    A's cleanup waits for B to commit, then sees B's row and keeps the file."""
    first, second = ProjectFactory(), ProjectFactory()
    data = drawn(seed=11)
    failing = ImageBatch(project=first)
    failing.store(data, name="a.png")  # creates the file
    writing = ImageBatch(project=second)
    image = writing.store(data, name="b.png")  # finds it
    in_transaction, commit = threading.Event(), threading.Event()

    def import_writing():
        try:
            with writing, transaction.atomic():
                writing.write_rows()
                in_transaction.set()
                commit.wait(10)
        finally:
            connection.close()

    def clean_up_failing():
        try:
            failing.discard()
        finally:
            connection.close()

    writer = threading.Thread(target=import_writing)
    writer.start()
    assert in_transaction.wait(10)
    cleaner = threading.Thread(target=clean_up_failing)
    cleaner.start()
    cleaner.join(1.0)
    assert cleaner.is_alive(), "the cleanup must wait for the import still writing rows"
    commit.set()
    writer.join(10)
    cleaner.join(10)
    assert not cleaner.is_alive()
    assert storages["default"].exists(image.file)
    assert ProjectImage.objects.filter(project=second, image_id=image.sha256).exists()
