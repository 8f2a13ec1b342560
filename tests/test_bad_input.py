"""Bad input gets a clear error, in the log and in the sidecar, and loses nothing."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

import analyzer

from conftest import DATA, a1111_png, make_image, result, sidecar
from fakes import SaboteurPlugin


def errors(image: Path, plugin: str = "metadata") -> dict[str, dict[str, dict]]:
    return sidecar(image, plugin)["errors"]


def error_for(image: Path, mode: str = "image", plugin: str = "metadata") -> dict:
    by_model = errors(image, plugin)[mode]
    return next(iter(by_model.values()))


def png_with_size(width: int, height: int) -> bytes:
    """A PNG header claiming ``width`` x ``height`` pixels, with almost no data behind it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "imgs"
    a1111_png(folder / "good.png", "a good prompt")
    return folder


def test_zero_byte_truncated_corrupt_and_fake_images_are_errors_and_the_run_goes_on(cli, root):
    shutil.copy(DATA / "bad-images" / "empty_file.png", root / "zero.png")
    noise = os.urandom(64 * 64 * 3)
    from PIL import Image

    Image.frombytes("RGB", (64, 64), noise).save(root / "full.png")
    data = (root / "full.png").read_bytes()
    (root / "truncated.png").write_bytes(data[: len(data) // 2])
    (root / "full.png").unlink()
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(300))
    (root / "notes.webp").write_text("this is a text file with an image name")

    outcome = cli("run", root)

    assert outcome.code == 1
    assert result(root / "good.png", "prompt") == "a good prompt"
    assert error_for(root / "zero.png")["message"] == "empty file (0 bytes)"
    assert "cannot decode image" in error_for(root / "truncated.png")["message"]
    assert "not a readable image" in error_for(root / "notes.webp")["message"]
    corrupt = error_for(root / "corrupt.jpg")
    assert corrupt["type"] == "ImageError" and corrupt["retryable"] is False and corrupt["attempts"] == 1
    for name in ("zero.png", "truncated.png", "notes.webp", "corrupt.jpg"):
        assert f"'{name}': metadata failed (image, parameters, prompt, negative)" in outcome.log
        assert sidecar(root / name)["analysis"] == {}
    assert (root / "wildcards" / "metadata_prompt.txt").read_text() == "a good prompt\n"


def test_the_real_broken_sample_images(cli, tmp_path):
    root = tmp_path / "bad"
    shutil.copytree(DATA / "bad-images", root)
    for path in root.iterdir():
        path.chmod(0o644)

    cli("run", root)

    assert error_for(root / "empty_file.png")["type"] == "ImageError"
    # a PNG whose text chunk follows the image data still decodes
    assert result(root / "text_after_idat.png", "image")["format"] == "PNG"


def test_decompression_bombs_are_refused_before_decoding(cli, root):
    (root / "bomb.png").write_bytes(png_with_size(60_000, 60_000))

    outcome = cli("run", root)

    error = error_for(root / "bomb.png")
    assert error["type"] == "ImageTooLarge"
    assert "max_image_pixels" in error["message"]
    assert outcome.code == 1


def test_the_pixel_limit_is_a_setting(cli, root, monkeypatch):
    monkeypatch.setenv("ANALYZER_MAX_IMAGE_PIXELS", "32")  # good.png is 8x8 = 64 pixels

    cli("run", root)

    assert error_for(root / "good.png")["type"] == "ImageTooLarge"


def test_a_huge_non_image_file_is_streamed_not_loaded(cli, root):
    with open(root / "huge.tiff", "wb") as handle:
        handle.truncate(300 * 1024 * 1024)  # sparse: 300 MB of zeros

    outcome = cli("run", root)

    assert error_for(root / "huge.tiff")["type"] == "ImageError"
    assert sidecar(root / "huge.tiff")["file_info"]["size"] == 300 * 1024 * 1024
    assert outcome.code == 1


@pytest.mark.parametrize("name", ["with space.png", "ünïcödé 猫.png", "new\nline.png", "semi;colon&$(x).png"])
def test_odd_file_names(cli, root, name):
    a1111_png(root / name, f"prompt for {name!r}")

    assert cli("run", root).code == 0

    assert result(root / name, "prompt") == f"prompt for {name!r}"
    assert sidecar(root / name)["file_info"]["file_name"] == name
    lines = (root / "wildcards" / "metadata_prompt.txt").read_text().splitlines()
    assert len(lines) == 2  # the newline in a name never splits an entry


def test_malformed_sidecar_is_moved_aside_reported_and_redone(cli, root):
    cli("run", root)
    (root / "good.png.metadata.json").write_text('{"analysis": {"prompt": ')  # cut short

    outcome = cli("run", root)

    assert "corrupt sidecar moved aside" in outcome.log
    moved = list(root.glob("good.png.metadata.json.corrupt-*"))
    assert len(moved) == 1 and moved[0].read_text() == '{"analysis": {"prompt": '
    assert result(root / "good.png", "prompt") == "a good prompt"


def test_sidecar_of_the_wrong_shape_counts_as_corrupt(cli, root):
    (root / "good.png.metadata.json").write_text(json.dumps(["not", "an", "object"]))

    cli("run", root)

    assert list(root.glob("good.png.metadata.json.corrupt-*"))
    assert result(root / "good.png", "prompt") == "a good prompt"


@pytest.fixture
def saboteur() -> Iterator[None]:
    analyzer.register(SaboteurPlugin)
    yield
    analyzer.unregister("saboteur")


def test_file_deleted_mid_run_writes_no_sidecar(cli, root, saboteur):
    make_image(root / "delete-me.png")

    outcome = cli("run", root, "--plugins", "saboteur")

    assert "'delete-me.png' vanished while it was analysed" in outcome.log
    assert not list(root.glob("delete-me.png*"))
    assert outcome.code == 0
    assert sidecar(root / "good.png", "saboteur")["analysis"]["look"]["s1"]["result"] == "seen"


def test_file_rewritten_mid_run_is_not_described_by_stale_results(cli, root, saboteur):
    make_image(root / "rewrite-me.png")

    outcome = cli("run", root, "--plugins", "saboteur")

    assert "'rewrite-me.png' changed while it was analysed" in outcome.log
    doc = sidecar(root / "rewrite-me.png", "saboteur")
    assert doc["analysis"] == {}
    assert doc["errors"]["look"]["s1"]["retryable"] is True
    # the next run notices the new content and analyses it again
    again = cli("run", root, "--plugins", "saboteur")
    assert "1 hashed" in again.log


def test_a_failed_write_keeps_the_previous_sidecar_whole(root, monkeypatch):
    from analyzer.sidecar import atomic_write_text

    target = root / "x.json"
    atomic_write_text(target, '{"old": true}\n')

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space"):
        atomic_write_text(target, '{"new": true}\n')

    assert target.read_text() == '{"old": true}\n'
    assert [p.name for p in root.iterdir() if p.name.startswith(".x.json")] == []


def test_symlink_loops_are_skipped(cli, root):
    (root / "sub").mkdir()
    os.symlink(root, root / "sub" / "loop")
    a1111_png(root / "sub" / "inner.png", "inner")

    outcome = cli("run", root)

    assert outcome.code == 0
    assert "symlink loop" in outcome.log
    assert len(list(root.rglob("*.metadata.json"))) == 2


# -- permissions --------------------------------------------------------------------------
# CI runs as root, whom chmod does not stop. The analyzer under test runs in a subprocess that
# drops the two capabilities that let root ignore permission bits, so a 0o000 file and a 0o555
# folder stop it exactly as they stop any other user.


def _drop_dac_capabilities() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "cannot drop capability")


def run_without_privileges(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANALYZER_")}
    env.update(ANALYZER_PROGRESS="plain", ANALYZER_CLIP__ENABLED="false")
    preexec = _drop_dac_capabilities if os.geteuid() == 0 else None
    return subprocess.run(
        [sys.executable, "-m", "analyzer", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
        preexec_fn=preexec,
    )


def test_unreadable_image_is_recorded_and_the_rest_is_analysed(tmp_path, root):
    a1111_png(root / "secret.png", "secret")
    (root / "secret.png").chmod(0o000)

    proc = run_without_privileges(["run", str(root)], tmp_path)

    assert proc.returncode == 1, proc.stderr
    assert "'secret.png': cannot read the image: Permission denied" in proc.stderr
    assert result(root / "good.png", "prompt") == "a good prompt"
    error = error_for(root / "secret.png")
    assert error["type"] == "PermissionError" and error["retryable"] is True
    (root / "secret.png").chmod(0o644)
    retried = run_without_privileges(["run", str(root)], tmp_path)  # retryable: tried again
    assert retried.returncode == 0, retried.stderr
    assert result(root / "secret.png", "prompt") == "secret"


def test_read_only_folder_reports_unwritable_sidecars(tmp_path, root):
    root.chmod(0o555)
    try:
        proc = run_without_privileges(["run", str(root)], tmp_path)

        assert proc.returncode == 1
        assert "cannot write sidecar" in proc.stderr and "Permission denied" in proc.stderr
        assert "index for this root kept in" in proc.stderr
        assert [p.name for p in root.iterdir()] == ["good.png"]
        # the same folder with a mirrored sidecar tree elsewhere works
        out = tmp_path / "out"
        ok = run_without_privileges(["run", str(root), "--sidecar-dir", str(out)], tmp_path)
        assert ok.returncode == 0, ok.stderr
        assert (out / "imgs" / "good.png.metadata.json").exists()
    finally:
        root.chmod(0o755)
