"""Putting files into a dataset: folder and file names, links or copies, and new (resized, stripped) images."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PIL import ExifTags, Image, ImageCms
from PIL.PngImagePlugin import PngInfo

from analyzer.errors import ImageTooLarge
from analyzer.export.files import (
    MAX_NAME_BYTES,
    FileNames,
    FolderNames,
    LinkNotSupported,
    file_name,
    folder_name,
    place,
    transform,
    write_small,
)
from analyzer.hashing import hash_file

SD_SAMPLES = Path("/work/shared/testdata/sd-metadata")
if not SD_SAMPLES.is_dir():
    SD_SAMPLES = Path(__file__).parent / "data" / "sd-metadata"

HOSTILE_LABELS = [
    "a/b",
    "a\\b",
    "..",
    ".",
    "",
    "   ",
    ".hidden",
    "trailing.",
    "trailing ",
    " leading",
    "tab\there",
    "new\nline",
    "nul\x00byte",
    "bell\x07",
    'all:*?"<>|of them',
    "CON",
    "con",
    "Con.txt",
    "prn",
    "AUX",
    "nul.tar.gz",
    "COM1",
    "com9",
    "LPT1",
    "lpt9.png",
    "COM¹",
    "猫" * 100,  # 300 bytes of UTF-8
    "e\u0301",  # é, decomposed (NFD)
    "\u00e9",  # é, composed (NFC)
    "Cat",
    "cat",
    "red dress",
    "🙂 smile",
]


def _hash8(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()[:8]


def _is_portable(name: str) -> bool:
    base = name.split(".", 1)[0].rstrip(" ").casefold()
    return (
        0 < len(name.encode()) <= MAX_NAME_BYTES
        and not any(c in name for c in '/\\:*?"<>|')
        and all(ord(c) >= 32 and not 0x7F <= ord(c) <= 0x9F for c in name)
        and name == name.strip(" .")
        and base not in {"con", "prn", "aux", "nul"} | {f"{d}{n}" for d in ("com", "lpt") for n in "0123456789¹²³"}
    )


# --- folder names -------------------------------------------------------------------------------


def test_every_hostile_label_becomes_a_usable_distinct_folder(tmp_path: Path) -> None:
    names = FolderNames(HOSTILE_LABELS)

    assert set(names) == set(HOSTILE_LABELS)
    assert len({name.casefold() for name in names.values()}) == len(HOSTILE_LABELS)  # apart even on Windows/macOS
    for label, name in names.items():
        assert _is_portable(name), (label, name)
        (tmp_path / "dataset" / name).mkdir(parents=True)  # really a folder name
    assert sorted(os.listdir(tmp_path / "dataset")) == sorted(names.values())


def test_folder_names_read_like_the_labels() -> None:
    assert folder_name("red dress") == "red dress"
    assert folder_name("a/b") == "a_b"
    assert folder_name('all:*?"<>|of them') == "all_______of them"
    assert folder_name("tab\there") == "tab here"
    assert folder_name("bell\x07") == "bell_"
    assert folder_name(" .hidden. ") == "hidden"
    assert folder_name("") == folder_name(".") == folder_name("..") == folder_name("  ") == "unnamed"
    assert folder_name("CON") == "CON_"
    assert folder_name("con.txt") == "con_.txt"
    assert folder_name("lpt9") == "lpt9_"
    assert folder_name("COM¹") == "COM¹_"
    assert folder_name("console") == "console"  # only the device names themselves
    assert folder_name("e\u0301") == "\u00e9"  # NFC
    assert folder_name("猫の写真") == "猫の写真"


def test_labels_that_sanitise_alike_stay_apart() -> None:
    names = FolderNames(["a/b", "a_b", "a\\b", "Cat", "cat", "", "."])

    assert names["a_b"] == "a_b"  # the label that is already its own name keeps it
    assert names["a/b"] == f"a_b-{_hash8('a/b')}"
    assert names["a\\b"] == "a_b-" + _hash8("a\\b")
    assert names["Cat"] == "Cat"  # else the first in code-point order keeps it
    assert names["cat"] == f"cat-{_hash8('cat')}"
    assert {names[""], names["."]} == {"unnamed", f"unnamed-{_hash8('.')}"}


def test_the_same_labels_get_the_same_names_in_any_order() -> None:
    first = dict(FolderNames(HOSTILE_LABELS))
    shuffled = list(HOSTILE_LABELS)
    random.Random(7).shuffle(shuffled)

    assert dict(FolderNames(shuffled)) == first
    assert dict(FolderNames(reversed(HOSTILE_LABELS))) == first
    assert dict(FolderNames(HOSTILE_LABELS + HOSTILE_LABELS)) == first


def test_long_unicode_labels_are_cut_between_characters_and_stay_apart(tmp_path: Path) -> None:
    one, two = "猫" * 100 + "a", "猫" * 100 + "b"
    names = FolderNames([one, two])

    assert names[one] != names[two]
    for label in (one, two):
        name = names[label]
        assert len(name.encode()) <= MAX_NAME_BYTES
        assert name == "猫" * len(name.split("-")[0]) + f"-{_hash8(label)}"
        (tmp_path / "dataset" / name).mkdir(parents=True)
    # an accent is not cut from its letter
    accented = folder_name("x\u0301" * 200)
    assert accented.rsplit("-", 1)[0].endswith("x\u0301")
    # room for what a caller puts in front: kohya's "10_<concept>"
    kohya = "10_" + FolderNames([one], max_bytes=MAX_NAME_BYTES - 3)[one]
    (tmp_path / "dataset" / kohya).mkdir()


def test_a_label_asked_for_later_gets_a_free_name() -> None:
    names = FolderNames(["dog", "a/b"])

    assert names.name("dog") == "dog"
    assert names.name("woman") == "woman"  # not in the set: added
    assert names.name("a_b") == f"a_b-{_hash8('a_b')}"  # "a_b" was given to "a/b" already
    assert names.name("woman") == "woman"


# --- file names ---------------------------------------------------------------------------------


def test_files_of_the_same_name_from_several_roots_are_told_apart_by_content(tmp_path: Path) -> None:
    (tmp_path / "root1").mkdir()
    (tmp_path / "root2").mkdir()
    (tmp_path / "root3").mkdir()
    first = tmp_path / "root1" / "img.png"
    second = tmp_path / "root2" / "img.png"
    copy = tmp_path / "root3" / "the same.png"
    first.write_bytes(b"first")
    second.write_bytes(b"second")
    copy.write_bytes(b"first")
    hashes = [hash_file(path)[0] for path in (first, second, copy)]
    names = FileNames()

    assert names.name_for(first.name, hashes[0]) == "img.png"
    assert names.name_for(second.name, hashes[1]) == f"img-{hashes[1].removeprefix('sha256:')[:8]}.png"
    assert hashes[2] in names  # the same content as the first file...
    assert names.name_for(copy.name, hashes[2]) == "img.png"  # ...is exported once, under its first name
    assert len(names) == 2


def test_file_names_follow_from_the_order_of_requests() -> None:
    requests = [("a.png", "sha256:" + "1" * 64), ("a.png", "sha256:" + "2" * 64), ("A.PNG", "sha256:" + "3" * 64)]
    one, two = FileNames(), FileNames()

    assert [one.name_for(*r) for r in requests] == [two.name_for(*r) for r in requests]
    assert [FileNames().name_for(*r) for r in requests[:1]] == ["a.png"]
    # compared case-folded (one file on Windows and macOS), the extension kept as it was
    assert one.name_for("A.PNG", "sha256:" + "3" * 64) == "A-33333333.PNG"


def test_names_kept_from_an_earlier_export_come_before_any_request() -> None:
    earlier, newcomer = "sha256:" + "1" * 64, "sha256:" + "2" * 64
    names = FileNames()

    assert names.keep("a.png", earlier)
    assert names.name_for("a.png", newcomer) == "a-22222222.png"  # the newcomer is told apart
    assert names.name_for("a.png", earlier) == "a.png"
    assert not names.keep("a.PNG", "sha256:" + "3" * 64)  # taken (case-folded)
    assert not names.keep("b.png", earlier)  # that content has its name already
    assert not names.keep("..", "sha256:" + "4" * 64)  # not a name file_name would give: named afresh
    assert not names.keep("con.png", "sha256:" + "5" * 64)


def test_stems_stay_apart_so_captions_do() -> None:
    names = FileNames()
    assert names.name_for("a.png", "sha256:" + "1" * 64) == "a.png"
    assert names.name_for("a.jpg", "sha256:" + "2" * 64) == "a-22222222.jpg"  # a.txt would be shared

    whole = FileNames(unique_stems=False)
    assert whole.name_for("a.png", "sha256:" + "1" * 64) == "a.png"
    assert whole.name_for("a.jpg", "sha256:" + "2" * 64) == "a.jpg"


def test_file_names_are_sanitised_and_keep_their_extension(tmp_path: Path) -> None:
    assert file_name("con.png") == "con_.png"
    assert file_name("what?.JPG") == "what_.JPG"
    assert file_name(".hidden.png") == "hidden.png"
    assert file_name("..png") == "unnamed.png"
    assert file_name("no extension") == "no extension"
    assert file_name("trailing.png. ") == "trailing.png"
    long = file_name("猫" * 100 + ".webp")
    assert long.endswith(".webp") and len(long.encode()) <= MAX_NAME_BYTES
    (tmp_path / long).write_bytes(b"")


# --- placing files ------------------------------------------------------------------------------


@pytest.fixture
def source(tmp_path: Path) -> Path:
    src = tmp_path / "input" / "cat.png"
    src.parent.mkdir()
    src.write_bytes(b"\x89PNG pretend image bytes" * 100)
    os.utime(src, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    return src


def _fingerprint(path: Path) -> tuple[bytes, int, int, int]:
    st = path.stat()
    return path.read_bytes(), st.st_mtime_ns, st.st_ino, st.st_mode


def _leftovers(folder: Path) -> list[str]:
    return sorted(name for name in os.listdir(folder) if name.endswith(".tmp"))


@pytest.mark.parametrize("link", ["auto", "reflink", "hard", "sym", "copy"])
def test_every_method_leaves_the_source_untouched(source: Path, tmp_path: Path, link: str) -> None:
    before = _fingerprint(source)
    dst = tmp_path / "dataset" / "cats" / "cat.png"  # folders are created
    try:
        method = place(source, dst, link)
    except LinkNotSupported:
        assert link == "reflink"  # a file system without copy-on-write clones (ext4, tmpfs)
    else:
        assert method == link or link == "auto"
        assert dst.read_bytes() == before[0]
    assert _fingerprint(source) == before
    assert _leftovers(dst.parent) == []


def test_a_hard_link_shares_the_source_inode(source: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dataset" / "cat.png"

    assert place(source, dst, "hard") == "hard"
    assert os.path.samefile(source, dst)
    assert source.stat().st_nlink == 2


def test_a_symlink_points_to_the_absolute_source(source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(source.parent)

    assert place(Path("cat.png"), tmp_path / "dataset" / "cat.png", "sym") == "sym"
    assert os.readlink(tmp_path / "dataset" / "cat.png") == str(source)


def test_reflink_says_cleanly_when_the_file_system_cannot_and_auto_falls_back(source: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dataset" / "cat.png"
    try:
        method = place(source, dst, "reflink")
    except LinkNotSupported as exc:
        assert isinstance(exc, OSError)
        assert exc.errno in {errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EINVAL, errno.ENOTTY, errno.ENOSYS}
        assert "reflinks" in str(exc) and str(dst) in str(exc)
        assert not dst.exists() and _leftovers(dst.parent) == []
        assert place(source, dst) == "hard"  # auto: the next best on one file system
    else:  # btrfs, XFS: an independent file sharing the blocks
        assert method == "reflink"
        assert not os.path.samefile(source, dst) and dst.read_bytes() == source.read_bytes()
        assert place(source, tmp_path / "dataset" / "again.png") == "reflink"


def test_a_reflink_is_an_independent_file_sharing_the_blocks(tmp_path: Path, mount: Callable[..., Path]) -> None:
    if shutil.which("mkfs.btrfs") is None:
        pytest.skip("no mkfs.btrfs (apt-get install btrfs-progs) to make a file system with reflinks")
    image = tmp_path / "btrfs.img"
    with open(image, "wb") as handle:
        handle.truncate(120 << 20)
    subprocess.run(["mkfs.btrfs", "-q", str(image)], check=True, capture_output=True)
    disk = mount("loop", "btrfs", str(image))
    src = disk / "input" / "cat.png"
    src.parent.mkdir()
    src.write_bytes(b"image bytes" * 1000)
    before = _fingerprint(src)

    assert place(src, disk / "dataset" / "cat.png") == "reflink"  # auto: the best there is
    assert place(src, disk / "dataset" / "again.png", "reflink") == "reflink"
    with open(disk / "dataset" / "cat.png", "r+b") as exported:
        exported.write(b"edited")  # editing the export...
    assert _fingerprint(src) == before  # ...leaves the original as it was
    assert sorted(os.listdir(disk / "dataset")) == ["again.png", "cat.png"]


@pytest.mark.parametrize("link", ["auto", "hard", "sym", "copy"])
def test_an_existing_destination_is_replaced_in_one_rename(source: Path, tmp_path: Path, link: str) -> None:
    dst = tmp_path / "dataset" / "cat.png"
    dst.parent.mkdir()
    dst.write_bytes(b"old export")
    with open(dst, "rb") as reader:  # a reader of the old file...
        place(source, dst, link)
        assert reader.read() == b"old export"  # ...keeps reading it whole: it was not rewritten in place
    assert dst.read_bytes() == source.read_bytes()
    place(source, dst, link)  # again over its own earlier result (two links to one file: rename does nothing)
    assert os.listdir(dst.parent) == ["cat.png"]


def test_the_source_itself_is_never_a_destination(source: Path) -> None:
    before = _fingerprint(source)
    for link in ("auto", "copy", "hard", "sym"):
        with pytest.raises(ValueError, match="source itself"):
            place(source, source, link)
    with pytest.raises(ValueError, match="source itself"):
        transform(source, source, max_side=8, strip_metadata=True)
    assert _fingerprint(source) == before


@pytest.mark.parametrize("where", ["write", "fsync"])
def test_a_full_disk_leaves_the_old_destination_and_no_temporary_file(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    dst = tmp_path / "dataset" / "cat.png"
    dst.parent.mkdir()
    dst.write_bytes(b"old export")

    def disk_full(*args: object) -> int:
        if where == "write":
            os.write(args[0], b"half")  # type: ignore[arg-type]
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    # fault injection at the OS boundary: the kernel's copy (sendfile) or the flush to disk (fsync)
    monkeypatch.setattr(os, "sendfile" if where == "write" else "fsync", disk_full)
    with pytest.raises(OSError) as caught:
        place(source, dst, "copy")

    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(dst)
    assert dst.read_bytes() == b"old export"
    assert os.listdir(dst.parent) == ["cat.png"]


def test_a_caption_is_written_in_place_when_new_and_renamed_over_the_old_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    new, old = tmp_path / "dataset" / "cat.txt", tmp_path / "dataset" / "dog.txt"
    write_small(new, b"a cat\n")  # its folder made on the way
    old.write_bytes(b"an old dog\n")
    write_small(old, b"a dog\n")
    assert new.read_bytes() == b"a cat\n" and old.read_bytes() == b"a dog\n"
    assert sorted(os.listdir(new.parent)) == ["cat.txt", "dog.txt"]  # no temporary file left

    real_write = os.write

    def disk_full(fd: int, data: bytes) -> int:
        real_write(fd, data[:2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", disk_full)
    for dst in (tmp_path / "dataset" / "bird.txt", old):
        with pytest.raises(OSError) as caught:
            write_small(dst, b"half of it never fits\n")
        assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(dst)
    monkeypatch.undo()
    assert old.read_bytes() == b"a dog\n"  # the old caption, whole; and nothing half-written
    assert sorted(os.listdir(new.parent)) == ["cat.txt", "dog.txt"]


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """Mount a file system (root on Linux only): a small tmpfs is a real full or read-only disk."""
    mounted: list[Path] = []

    def mount(options: str, kind: str = "tmpfs", device: str = "tmpfs") -> Path:
        if sys.platform != "linux" or os.geteuid() != 0:
            pytest.skip("mounting needs root on Linux")
        where = tmp_path / f"disk{len(mounted)}"
        where.mkdir()
        done = subprocess.run(["mount", "-t", kind, "-o", options, device, str(where)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a {kind} here: {done.stderr.decode().strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", str(where)], check=True)


def test_a_really_full_disk_leaves_no_half_file(source: Path, tmp_path: Path, mount: Callable[..., Path]) -> None:
    disk = mount("size=1m")
    big = tmp_path / "input" / "big.bin"
    big.write_bytes(os.urandom(2 << 20))
    noise = tmp_path / "input" / "noise.png"
    Image.frombytes("RGB", (1024, 1024), os.urandom(3 << 20)).save(noise, compress_level=0)

    assert place(source, disk / "small" / "cat.png") == "copy"  # another device: no reflink, no hard link
    with pytest.raises(OSError) as caught:
        place(big, disk / "big" / "big.bin")
    assert caught.value.errno == errno.ENOSPC and str(disk / "big" / "big.bin") in str(caught.value)
    assert os.listdir(disk / "big") == []
    with pytest.raises(OSError) as caught:
        transform(noise, disk / "big" / "noise.png", max_side=None, strip_metadata=True)
    assert caught.value.errno == errno.ENOSPC
    assert os.listdir(disk / "big") == []


@pytest.mark.parametrize("link", ["auto", "copy", "hard", "sym"])
def test_a_read_only_destination_is_a_clear_error(source: Path, mount: Callable[..., Path], link: str) -> None:
    disk = mount("size=1m,ro")

    with pytest.raises(OSError) as caught:
        place(source, disk / "cat.png", link)

    assert caught.value.errno == errno.EROFS
    assert "Read-only file system" in str(caught.value) and str(disk / "cat.png") in str(caught.value)


def test_a_read_only_destination_for_a_new_image(tmp_path: Path, mount: Callable[..., Path]) -> None:
    disk = mount("size=1m,ro")
    Image.new("RGB", (2, 2)).save(tmp_path / "real.png")

    with pytest.raises(OSError, match="Read-only file system") as caught:
        transform(tmp_path / "real.png", disk / "real.png", max_side=None, strip_metadata=False)
    assert caught.value.filename == str(disk / "real.png")


# --- new images ---------------------------------------------------------------------------------

ICC = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
PARAMETERS = "a cat\nNegative prompt: dog\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 64x32"


def _text(image: Image.Image) -> dict[str, str]:
    """A PNG's text chunks (``parameters``...)."""
    return dict(getattr(image, "text", {}))


def _gps_exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    exif[ExifTags.Base.Make] = "Camera"
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSLatitudeRef] = "N"
    gps[ExifTags.GPS.GPSLatitude] = (52.0, 31.0, 0.0)
    return exif


def _red_left_blue_right(size: tuple[int, int] = (40, 20)) -> Image.Image:
    image = Image.new("RGB", size, (255, 0, 0))
    image.paste((0, 0, 255), (size[0] // 2, 0, size[0], size[1]))
    return image


def test_strip_metadata_drops_png_generation_parameters_and_keeps_the_colour_profile(tmp_path: Path) -> None:
    src = tmp_path / "sd.png"
    info = PngInfo()
    info.add_text("parameters", PARAMETERS)
    info.add_itxt("XML:com.adobe.xmp", "<x:xmpmeta>secret</x:xmpmeta>")
    _red_left_blue_right().save(src, pnginfo=info, icc_profile=ICC, exif=_gps_exif(1))
    before = _fingerprint(src)

    transform(src, tmp_path / "out" / "sd.png", max_side=None, strip_metadata=True)

    with Image.open(tmp_path / "out" / "sd.png") as out:
        assert out.format == "PNG"
        assert _text(out) == {}  # parameters and XMP gone
        assert not out.getexif()  # EXIF (with GPS) gone
        assert out.info.get("icc_profile") == ICC  # colours still mean what they meant
        assert out.tobytes() == _red_left_blue_right().tobytes()  # lossless, pixels untouched
    assert _fingerprint(src) == before


@pytest.mark.parametrize("sample", ["automatic1111_cropped.png", "fooocus1_cropped.png", "img2img_cropped.png"])
def test_strip_metadata_on_real_generated_pngs(tmp_path: Path, sample: str) -> None:
    src = SD_SAMPLES / sample
    with Image.open(src) as original:
        assert _text(original)  # parameters, ComfyUI prompt and workflow...

    transform(src, tmp_path / sample, max_side=None, strip_metadata=True)

    with Image.open(tmp_path / sample) as out:
        assert _text(out) == {}


def test_strip_metadata_drops_jpeg_exif_gps_and_comment_and_keeps_the_image_upright(tmp_path: Path) -> None:
    src = tmp_path / "photo.jpg"
    # stored lying down: EXIF orientation 6 says "turn 90° clockwise to show"
    _red_left_blue_right().save(src, exif=_gps_exif(6), icc_profile=ICC, comment=b"at home", quality=95)

    transform(src, tmp_path / "out.jpg", max_side=None, strip_metadata=True)

    with Image.open(tmp_path / "out.jpg") as out:
        assert not out.getexif()  # no EXIF at all, so no GPS and no orientation tag
        assert "comment" not in out.info
        assert out.info.get("icc_profile") == ICC
        assert out.size == (20, 40)  # the turn is in the pixels now
        red, blue = out.getpixel((10, 5)), out.getpixel((10, 35))
        assert isinstance(red, tuple) and isinstance(blue, tuple)
        assert red[0] > 200 > red[2] and blue[2] > 200 > blue[0]  # left went to the top, as a viewer shows it


def test_strip_metadata_on_a_real_generated_jpeg(tmp_path: Path) -> None:
    src = SD_SAMPLES / "automatic1111_cropped.jpg"
    with Image.open(src) as original:
        assert original.getexif()  # the parameters are in EXIF UserComment

    transform(src, tmp_path / "a.jpg", max_side=None, strip_metadata=True)

    with Image.open(tmp_path / "a.jpg") as out:
        assert not out.getexif()


def test_without_stripping_metadata_stays_but_the_orientation_is_applied(tmp_path: Path) -> None:
    src = tmp_path / "photo.jpg"
    _red_left_blue_right().save(src, exif=_gps_exif(6), comment=b"at home")
    png = tmp_path / "sd.png"
    info = PngInfo()
    info.add_text("parameters", PARAMETERS)
    _red_left_blue_right().save(png, pnginfo=info)

    transform(src, tmp_path / "out.jpg", max_side=None, strip_metadata=False)
    transform(png, tmp_path / "out.png", max_side=None, strip_metadata=False)

    with Image.open(tmp_path / "out.jpg") as out:
        exif = out.getexif()
        assert ExifTags.Base.Orientation not in exif  # applied, so not applied twice
        assert exif[ExifTags.Base.Make] == "Camera"
        assert exif.get_ifd(ExifTags.IFD.GPSInfo)[ExifTags.GPS.GPSLatitudeRef] == "N"
        assert out.info["comment"] == b"at home"
        assert out.size == (20, 40)
    with Image.open(tmp_path / "out.png") as out:
        assert _text(out) == {"parameters": PARAMETERS}


def _format_and_size(path: Path) -> tuple[str | None, tuple[int, int]]:
    with Image.open(path) as image:
        return image.format, image.size


def test_resize_shrinks_the_longest_side_and_never_enlarges(tmp_path: Path) -> None:
    big, small = tmp_path / "big.png", tmp_path / "small.jpg"
    _red_left_blue_right((300, 200)).save(big)
    _red_left_blue_right((30, 20)).save(small)

    transform(big, tmp_path / "out" / "big.png", max_side=150, strip_metadata=False)
    transform(small, tmp_path / "out" / "small.jpg", max_side=150, strip_metadata=False)
    transform(big, tmp_path / "out" / "exact.png", max_side=300, strip_metadata=False)

    assert _format_and_size(tmp_path / "out" / "big.png") == ("PNG", (150, 100))
    assert _format_and_size(tmp_path / "out" / "small.jpg") == ("JPEG", (30, 20))
    assert _format_and_size(tmp_path / "out" / "exact.png") == ("PNG", (300, 200))
    assert not os.path.samefile(big, tmp_path / "out" / "exact.png")  # always a new file, never a link


def test_resize_keeps_a_palette_image_transparent(tmp_path: Path) -> None:
    src = tmp_path / "icon.png"
    image = Image.new("P", (64, 64), 1)
    image.putpalette([0, 0, 0, 255, 0, 0])
    image.paste(0, (0, 0, 32, 64))
    image.save(src, transparency=0)

    transform(src, tmp_path / "small.png", max_side=16, strip_metadata=True)

    with Image.open(tmp_path / "small.png") as out:
        assert out.size == (16, 16) and out.mode == "RGBA"
        assert out.getpixel((2, 8)) == (0, 0, 0, 0)  # was transparent, still is
        assert out.getpixel((14, 8)) == (255, 0, 0, 255)


def test_webp_stays_lossless_or_lossy_as_it_was(tmp_path: Path) -> None:
    image = Image.frombytes("RGB", (32, 32), bytes(random.Random(1).randrange(256) for _ in range(32 * 32 * 3)))
    image.save(tmp_path / "lossless.webp", lossless=True)
    image.save(tmp_path / "lossy.webp", quality=80)

    transform(tmp_path / "lossless.webp", tmp_path / "out" / "lossless.webp", max_side=None, strip_metadata=True)
    transform(tmp_path / "lossy.webp", tmp_path / "out" / "lossy.webp", max_side=None, strip_metadata=True)

    with Image.open(tmp_path / "out" / "lossless.webp") as out:
        assert out.tobytes() == image.tobytes()
    assert (tmp_path / "out" / "lossless.webp").read_bytes()[12:16] == b"VP8L"
    assert (tmp_path / "out" / "lossy.webp").read_bytes()[12:16] == b"VP8 "


def test_transform_refuses_a_decompression_bomb(tmp_path: Path) -> None:
    src = tmp_path / "huge.png"
    Image.new("L", (100, 100)).save(src)

    with pytest.raises(ImageTooLarge):
        transform(src, tmp_path / "out.png", max_side=10, strip_metadata=True, max_pixels=1000)
    assert not (tmp_path / "out.png").exists()


def test_transform_writes_the_source_format_whatever_the_extension(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    _red_left_blue_right().save(buffer, format="PNG")
    (tmp_path / "actually-png.jpg").write_bytes(buffer.getvalue())

    transform(tmp_path / "actually-png.jpg", tmp_path / "out.jpg", max_side=None, strip_metadata=True)

    assert _format_and_size(tmp_path / "out.jpg") == ("PNG", (40, 20))
