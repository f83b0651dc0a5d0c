"""Zip imports are checked whole before a byte is used: hostile names, links, bombs and lying
sizes are refused naming the entry, and reads stream from disk."""

import stat
import struct
import zipfile

import pytest

from annotation.errors import InvalidInput, TooLarge
from annotation.services import archives
from annotation.services.archives import ImportArchive, is_zip
from tests.annotation.image_support import declare_size, drawn, make_zip


@pytest.fixture
def zip_path(tmp_path):
    return tmp_path / "import.zip"


def test_lines_and_images_are_read_from_the_archive(zip_path):
    lines = b'{"prompt": "a"}\n{"prompt": "b"}\n\n{"prompt": "c"}'
    image = drawn()
    make_zip(zip_path, {"tasks.jsonl": lines, "img/": b"", "img/a.png": image, "notes.txt": b"x"})
    with ImportArchive(zip_path) as archive:
        assert archive.jsonl_name() == "tasks.jsonl"
        assert list(archive.jsonl_lines()) == [
            b'{"prompt": "a"}\n',
            b'{"prompt": "b"}\n',
            b"\n",
            b'{"prompt": "c"}',
        ]
        assert archive.read("img/a.png") == image
        assert archive.read("./img/a.png") == image
        assert archive.has("img/a.png") and not archive.has("img/b.png")
        with pytest.raises(InvalidInput, match="'img/b.png' is not in the archive"):
            archive.read("img/b.png")


def test_a_zip_is_told_by_its_magic_bytes(zip_path, tmp_path):
    make_zip(zip_path, {"a.jsonl": b"{}"})
    assert is_zip(zip_path) and is_zip(zip_path.read_bytes()[:4])
    jsonl = tmp_path / "tasks.zip"  # the name proves nothing
    jsonl.write_bytes(b'{"prompt": "PK"}\n')
    assert not is_zip(jsonl) and not is_zip(b'{"prompt"')


def test_what_is_not_a_zip_is_refused(tmp_path):
    path = tmp_path / "fake.zip"
    path.write_bytes(b"PK\x03\x04 but nothing after")
    with pytest.raises(InvalidInput, match="not a readable zip archive"):
        ImportArchive(path)


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("../evil.png", "climbs out of the archive with '..'"),
        ("img/../../evil.png", "climbs out of the archive with '..'"),
        ("/etc/passwd", "is an absolute path"),
        ("C:/Windows/evil.png", "names a drive"),
        ("C:evil.png", "names a drive"),
        ("img\\..\\evil.png", "has a backslash in its name (zip names use /)"),
        ("img/\x1b[2Jevil.png", "has a control character in its name"),
    ],
)
def test_hostile_entry_names_are_refused(zip_path, name, problem):
    make_zip(zip_path, {"tasks.jsonl": b"{}\n", name: drawn()})
    with pytest.raises(InvalidInput) as refused:
        ImportArchive(zip_path)
    assert refused.value.message == f"archive entry {name!r} {problem}"


def test_a_symlink_entry_is_refused(zip_path):
    link = zipfile.ZipInfo("img/a.png")
    link.create_system = 3
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    make_zip(zip_path, {"tasks.jsonl": b"{}\n", link: b"/etc/passwd"})
    with pytest.raises(InvalidInput, match="archive entry 'img/a.png' is a symbolic link"):
        ImportArchive(zip_path)


def test_an_entry_named_twice_is_refused(zip_path):
    with pytest.warns(UserWarning, match="Duplicate name"):
        make_zip(zip_path, {"tasks.jsonl": b"{}\n", zipfile.ZipInfo("a.png"): b"1", "a.png": b"2"})
    with pytest.raises(InvalidInput, match="archive entry 'a.png' appears twice"):
        ImportArchive(zip_path)


def test_an_encrypted_entry_is_refused(zip_path):
    make_zip(zip_path, {"tasks.jsonl": b"{}\n"})
    raw = bytearray(zip_path.read_bytes())
    central = raw.find(b"PK\x01\x02")
    struct.pack_into("<H", raw, central + 8, 0x1)  # the "encrypted" flag bit
    zip_path.write_bytes(bytes(raw))
    with pytest.raises(InvalidInput, match="'tasks.jsonl' is encrypted"):
        ImportArchive(zip_path)


def test_too_many_entries_are_refused(zip_path, settings):
    settings.TANDEM_IMPORT_ZIP_MAX_ENTRIES = 5
    make_zip(zip_path, {"tasks.jsonl": b"{}\n", **{f"img/{i}.png": b"x" for i in range(5)}})
    with pytest.raises(TooLarge, match="the archive holds 6 entries; the limit is 5"):
        ImportArchive(zip_path)


def test_too_much_declared_content_is_refused(zip_path, settings):
    settings.TANDEM_IMPORT_ZIP_MAX_BYTES = 100_000
    make_zip(zip_path, {"tasks.jsonl": b"{}\n", "a.bin": b"a" * 60_000, "b.bin": b"b" * 60_000})
    with pytest.raises(TooLarge, match=r"unpacks to more than 100000 bytes \(at entry 'b.bin'\)"):
        ImportArchive(zip_path)


def test_a_zip_bomb_entry_is_refused_by_its_compression_ratio(zip_path):
    make_zip(zip_path, {"tasks.jsonl": b"{}\n", "bomb.png": b"\x00" * (8 << 20)})
    with pytest.raises(TooLarge, match=r"'bomb.png' unpacks 8388608 bytes from \d+: compressed"):
        ImportArchive(zip_path)


def test_a_jsonl_that_lies_about_its_size_is_refused(zip_path, settings):
    # It declares 100 bytes and holds 3 MB: the caps judged by the declared size pass it, the
    # bytes read do not.
    settings.TANDEM_IMPORT_ZIP_MAX_BYTES = 1 << 20
    body = b'{"prompt": "%d"}\n' * 200_000
    make_zip(zip_path, {"tasks.jsonl": body})
    declare_size(zip_path, "tasks.jsonl", 100)
    with ImportArchive(zip_path) as archive:
        with pytest.raises(InvalidInput, match="'tasks.jsonl' is damaged or does not match"):
            list(archive.jsonl_lines())


def test_an_image_that_lies_about_its_size_is_refused(zip_path):
    image = drawn((300, 300))
    make_zip(zip_path, {"tasks.jsonl": b"{}\n", "a.png": image}, compression=zipfile.ZIP_STORED)
    declare_size(zip_path, "a.png", len(image) // 2)
    with ImportArchive(zip_path) as archive:
        with pytest.raises(InvalidInput, match="'a.png' is damaged or does not match"):
            archive.read("a.png")


def test_bytes_read_count_against_the_archive_total(zip_path):
    make_zip(zip_path, {"tasks.jsonl": b"{}\n", "a.png": b"a" * 3000, "b.png": b"b" * 3000})
    with ImportArchive(zip_path, max_bytes=6100) as archive:
        archive.read("a.png")
        archive.read("b.png")
        with pytest.raises(TooLarge, match=r"more than 6100 bytes \(at entry 'a.png'\)"):
            archive.read("a.png")  # read again: counted again


def test_an_image_entry_over_the_image_cap_is_refused(zip_path, settings):
    settings.TANDEM_IMAGE_MAX_BYTES = 1000
    make_zip(zip_path, {"tasks.jsonl": b"{}\n", "big.png": b"x" * 5000})
    with ImportArchive(zip_path) as archive:
        with pytest.raises(TooLarge, match="'big.png' is 5000 bytes; the limit is 1000 bytes"):
            archive.read("big.png")


def test_the_archive_needs_exactly_one_jsonl_at_its_root(zip_path):
    make_zip(zip_path, {"data/tasks.jsonl": b"{}\n", "a.png": drawn()})
    with ImportArchive(zip_path) as archive:
        with pytest.raises(InvalidInput, match="no .jsonl file at its root"):
            archive.jsonl_name()
    make_zip(zip_path, {"a.jsonl": b"{}\n", "b.JSONL": b"{}\n"})
    with ImportArchive(zip_path) as archive:
        with pytest.raises(InvalidInput, match=r"2 .jsonl files at its root \(a.jsonl, b.JSONL\)"):
            list(archive.jsonl_lines())


def test_an_endless_line_is_refused(zip_path, monkeypatch):
    monkeypatch.setattr(archives, "MAX_LINE_BYTES", 100)
    make_zip(zip_path, {"tasks.jsonl": b"{}\n" + b"x" * 500})
    with ImportArchive(zip_path) as archive:
        lines = archive.jsonl_lines()
        assert next(lines) == b"{}\n"
        with pytest.raises(InvalidInput, match="a line longer than 100 bytes"):
            next(lines)
