"""`analyzer run` end to end with the built-in metadata plugin, on real files."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from conftest import DATA, a1111_png, make_image, result, sidecar


def sidecar_mtimes(root: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*.json")}


def test_first_run_writes_one_sidecar_per_image_with_the_embedded_prompts(cli, sd_images, expected_metadata):
    outcome = cli("run", sd_images)

    assert outcome.code == 0, outcome.log
    for name, expected in expected_metadata.items():
        image = sd_images / name
        params = result(image, "parameters")
        assert params["generator"] == expected["generator"]
        assert params["prompts"] == expected["prompts"]
        assert params["negative_prompts"] == expected["negative_prompts"]
        assert result(image, "prompt") == ", ".join(expected["prompts"])
        assert result(image, "negative") == (", ".join(expected["negative_prompts"]) or None)


def test_generation_parameters_are_read_from_automatic1111_files(cli, sd_images):
    cli("run", sd_images)

    params = result(sd_images / "automatic1111_cropped.png", "parameters")
    assert params["seed"] == "235284042"
    assert params["steps"] == "15"
    assert params["sampler"] == "UniPC"
    assert params["cfg_scale"] == "5"
    assert params["model"] == "realistic_realisticVisionV20_v20"
    image = result(sd_images / "automatic1111_cropped.jpg", "image")
    assert image["format"] == "JPEG" and image["width"] >= 1 and image["height"] >= 1


def test_sidecar_records_file_info_and_per_model_timing(cli, sd_images):
    cli("run", sd_images)

    doc = sidecar(sd_images / "invokeai_dream1.png")
    assert doc["schema_version"] == 1
    info = doc["file_info"]
    data = (sd_images / "invokeai_dream1.png").read_bytes()
    import hashlib

    assert info["hash"] == "sha256:" + hashlib.sha256(data).hexdigest()
    assert info["hash_algorithm"] == "sha256"
    assert info["file_name"] == "invokeai_dream1.png" and info["path"] == "invokeai_dream1.png"
    assert info["size"] == len(data)
    assert {"created", "modified", "processed_at", "mtime_ns"} <= set(info)
    entry = doc["analysis"]["prompt"]["sd-parsers"]
    assert {"result", "created_at", "duration_s", "parameters"} <= set(entry)
    assert doc["errors"] == {}


def test_second_run_reads_no_image_and_writes_nothing(cli, sd_images):
    cli("run", sd_images)
    before = sidecar_mtimes(sd_images)

    outcome = cli("run", sd_images)

    assert outcome.code == 0
    assert "6 images: 6 already up to date, 0 hashed" in outcome.log
    assert sidecar_mtimes(sd_images) == before


def test_wildcard_files_hold_each_prompt_once_one_per_line(cli, tmp_path):
    root = tmp_path / "imgs"
    a1111_png(root / "a.png", "a red fox,\nin snow", seed=1, color=(1, 1, 1))
    a1111_png(root / "b.png", "a red fox, in snow", seed=2, color=(2, 2, 2))  # same prompt once folded
    a1111_png(root / "sub" / "c.png", "# not a comment", negative="ugly", seed=3, color=(3, 3, 3))
    make_image(root / "plain.png")  # no metadata: contributes nothing

    assert cli("run", root).code == 0

    prompts = (root / "wildcards" / "metadata_prompt.txt").read_text()
    assert prompts == "a red fox, in snow\nnot a comment\n"
    negatives = (root / "wildcards" / "metadata_negative.txt").read_text()
    assert negatives == "blurry\nugly\n"


def test_wildcards_command_regenerates_from_sidecars_alone(cli, sd_images, tmp_path):
    cli("run", sd_images)
    expected = (sd_images / "wildcards" / "metadata_prompt.txt").read_text()
    shutil.rmtree(sd_images / "wildcards")
    shutil.rmtree(sd_images / ".analyzer")  # even without the index

    outcome = cli("wildcards", sd_images, "--wildcards-dir", tmp_path / "wc")

    assert outcome.code == 0
    assert (tmp_path / "wc" / "metadata_prompt.txt").read_text() == expected
    assert "metadata_prompt.txt\t5" in outcome.out  # the two AUTOMATIC1111 files share a prompt
    assert "hashed" not in outcome.log or "0 hashed" in outcome.log


def test_changed_content_is_reanalysed_and_said_so(cli, tmp_path):
    root = tmp_path / "imgs"
    image = a1111_png(root / "a.png", "first prompt")
    cli("run", root)

    a1111_png(image, "second prompt", color=(9, 9, 9))
    outcome = cli("run", root)

    assert "changed since its metadata analysis" in outcome.log
    assert result(image, "prompt") == "second prompt"
    assert (root / "wildcards" / "metadata_prompt.txt").read_text() == "second prompt\n"


def test_touched_file_with_same_content_is_rehashed_but_not_reanalysed(cli, tmp_path):
    root = tmp_path / "imgs"
    image = a1111_png(root / "a.png", "a prompt")
    cli("run", root)
    doc_before = sidecar(image)
    os.utime(image, ns=(1_000_000_000, 1_000_000_000))

    outcome = cli("run", root)

    assert "1 hashed" in outcome.log
    assert sidecar(image)["analysis"] == doc_before["analysis"]


def test_other_modes_and_models_in_a_sidecar_are_kept(cli, tmp_path):
    root = tmp_path / "imgs"
    image = a1111_png(root / "a.png", "a prompt")
    cli("run", root, "--modes", "prompt")
    doc = sidecar(image)
    doc["analysis"]["prompt"]["older-parser"] = {"result": "kept", "created_at": "x", "duration_s": 0}
    image.with_name("a.png.metadata.json").write_text(json.dumps(doc))

    cli("run", root)

    analysis = sidecar(image)["analysis"]
    assert set(analysis) == {"image", "parameters", "prompt", "negative"}
    assert analysis["prompt"]["older-parser"]["result"] == "kept"
    assert analysis["prompt"]["sd-parsers"]["result"] == "a prompt"


def test_force_redoes_and_modes_limits(cli, tmp_path):
    root = tmp_path / "imgs"
    image = a1111_png(root / "a.png", "a prompt")
    cli("run", root, "--modes", "image")
    assert set(sidecar(image)["analysis"]) == {"image"}
    first = sidecar(image)["analysis"]["image"]["pillow"]["created_at"]

    cli("run", root, "--modes", "image", "--force")

    assert sidecar(image)["analysis"]["image"]["pillow"]["created_at"] != first
    assert set(sidecar(image)["analysis"]) == {"image"}


def test_dry_run_prints_the_plan_and_changes_nothing(cli, sd_images):
    outcome = cli("run", sd_images, "--dry-run")

    assert outcome.code == 0
    assert "plan: 24 items for 6 of 6 images; metadata: 24" in outcome.out
    assert f"{sd_images / 'novelai1_cropped.png'}\tmetadata\timage,parameters,prompt,negative" in outcome.out
    assert not list(sd_images.rglob("*.json"))
    assert not (sd_images / "wildcards").exists()


def test_status_counts_done_failed_and_missing(cli, sd_images):
    shutil.copy(DATA / "bad-images" / "empty_file.png", sd_images / "broken.png")
    cli("run", sd_images, "--modes", "image,prompt")

    outcome = cli("status", sd_images, "--json")

    counts = {
        (r["mode"], r["model"]): (r["done"], r["failed"], r["missing"]) for r in json.loads(outcome.out)["results"]
    }
    assert counts[("image", "pillow")] == (6, 1, 0)
    assert counts[("prompt", "sd-parsers")] == (6, 1, 0)
    assert counts[("negative", "sd-parsers")] == (0, 0, 7)
    table = cli("status", sd_images).out
    assert "metadata negative   sd-parsers        0        0        0        0        7" in table


def test_exit_codes(cli, tmp_path, sd_images):
    assert cli("run", sd_images).code == 0
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x.png").write_bytes(b"not an image")
    assert cli("run", broken).code == 1
    assert cli("run", tmp_path / "missing-folder").code == 2
    assert cli("run", sd_images, "--plugins", "nope").code == 2
    assert cli("run", sd_images, "--modes", "nope").code == 2


def test_failed_items_are_not_retried_unless_asked(cli, tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    (root / "x.png").write_bytes(b"not an image")
    cli("run", root)

    again = cli("run", root)
    assert again.code == 0 and "1 already up to date" in again.log

    retried = cli("run", root, "--retry-failed")
    assert retried.code == 1 and "metadata: 0 done, 4 failed of 4 planned" in retried.log


def test_mirrored_sidecar_tree(cli, sd_images, tmp_path):
    out = tmp_path / "out"
    outcome = cli("run", sd_images, "--sidecar-dir", out)

    assert outcome.code == 0
    assert not list(sd_images.glob("*.json"))
    doc: dict[str, Any] = json.loads((out / "images" / "fooocus1_cropped.png.metadata.json").read_text())
    assert doc["analysis"]["prompt"]["sd-parsers"]["result"] == "a smiling goldfish"
    assert list((out / "images" / ".analyzer" / "hosts").glob("*/index.sqlite"))
    assert "6 already up to date" in cli("run", sd_images, "--sidecar-dir", out).log


def _head(args: list[str], cwd: Path) -> subprocess.CompletedProcess[bytes]:
    """``analyzer ARGS | head -1`` in a shell: the reader goes away after the first line."""
    command = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "analyzer", *args]) + " | head -1"
    return subprocess.run(
        ["bash", "-o", "pipefail", "-c", command], capture_output=True, timeout=60, cwd=cwd, env=_clean_env()
    )


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("ANALYZER_")} | {"ANALYZER_CLIP__ENABLED": "false"}


def test_output_into_a_closed_pipe_ends_quietly_like_git_log_into_head(tmp_path):
    root = tmp_path / "imgs"
    for i in range(400):
        make_image(root / f"img_{i:03d}_with_a_longish_name_so_the_pipe_fills_up.png", color=(i % 256, 1, 2))
    dry = _head(["run", str(root), "--plugins", "metadata", "--dry-run", "--force"], tmp_path)
    assert dry.returncode == 141, dry.stderr
    assert dry.stdout.count(b"\n") == 1 and b"Traceback" not in dry.stderr and b"Error" not in dry.stderr

    subprocess.run(
        [sys.executable, "-m", "analyzer", "run", str(root), "--plugins", "metadata"],
        check=True,
        capture_output=True,
        env=_clean_env(),
        cwd=tmp_path,
    )
    status = _head(["status", str(root), "--plugins", "metadata"], tmp_path)
    assert status.returncode in (0, 141) and status.stderr.count(b"Traceback") == 0, status.stderr


def test_a_dry_run_writes_nothing_anywhere(cli, sd_images):
    before = sorted(p.relative_to(sd_images) for p in sd_images.rglob("*"))

    outcome = cli("run", sd_images, "--dry-run")

    assert outcome.code == 0 and "plan: " in outcome.out
    assert sorted(p.relative_to(sd_images) for p in sd_images.rglob("*")) == before  # no index, no id, no sidecar

    cli("run", sd_images)
    index = next(sd_images.glob(".analyzer/hosts/*/index.sqlite"))
    stamp = index.stat().st_mtime_ns
    assert "plan: 0 items" in cli("run", sd_images, "--dry-run").out  # it reads the index that exists
    assert index.stat().st_mtime_ns == stamp


def test_status_failed_lists_each_failed_item_with_its_error(cli, sd_images):
    shutil.copy(DATA / "bad-images" / "empty_file.png", sd_images / "broken.png")
    cli("run", sd_images, "--modes", "image,prompt")

    listed = cli("status", sd_images, "--failed").out.splitlines()

    assert len(listed) == 2 and all(line.startswith(str(sd_images / "broken.png") + "\t") for line in listed)
    assert "metadata\timage\tImageError: empty file (0 bytes) (retried with --retry-failed)" in listed[0]
    as_json = json.loads(cli("status", sd_images, "--failed", "--json").out)
    assert {(f["mode"], f["type"], f["retryable"]) for f in as_json} == {
        ("image", "ImageError", False),
        ("prompt", "ImageError", False),
    }


def test_a_single_image_file_is_analysed_in_its_folder_as_a_folder_run_would(cli, tmp_path):
    folder = tmp_path / "downloads"
    a1111_png(folder / "one.png", "a red fox in the snow")
    make_image(folder / "other.png")

    outcome = cli("run", folder / "one.png")

    assert outcome.code == 0, outcome.log
    assert result(folder / "one.png", "prompt")
    assert not (folder / "other.png.metadata.json").exists()  # only the file named
    assert (folder / ".analyzer").is_dir()  # the file's own folder became its root
    before = sidecar(folder / "one.png")
    again = cli("run", folder)
    assert "1 already up to date" in again.log  # the index row is the folder run's own
    assert sidecar(folder / "one.png") == before


def test_a_single_image_file_belongs_to_the_nearest_enclosing_root(cli, tmp_path, monkeypatch):
    root = tmp_path / "photos"
    make_image(root / "2024" / "may" / "a.png")
    cli("run", root)  # root has a state folder now
    make_image(root / "2024" / "may" / "new.png")

    outcome = cli("run", root / "2024" / "may" / "new.png")

    assert outcome.code == 0, outcome.log
    assert (root / "2024" / "may" / "new.png.metadata.json").exists()
    assert not (root / "2024" / "may" / ".analyzer").exists()  # no second root inside the first
    assert "2 already up to date" in cli("run", root).log
    status = json.loads(cli("status", root / "2024" / "may" / "new.png", "--json").out)
    assert status["images"] == 1

    configured = tmp_path / "configured"
    make_image(configured / "sub" / "b.png")
    monkeypatch.setenv("ANALYZER_ROOTS", str(configured))
    cli("run", configured / "sub" / "b.png")
    assert (configured / ".analyzer").is_dir() and not (configured / "sub" / ".analyzer").exists()


def test_a_path_that_is_no_image_is_refused_before_any_work(cli, tmp_path):
    (tmp_path / "notes.txt").write_text("hello")

    not_image = cli("run", tmp_path / "notes.txt")
    absent = cli("run", tmp_path / "gone.png")
    watched = cli("watch", make_image(tmp_path / "a.png"))

    assert not_image.code == 2 and "notes.txt is not an image file (names ending in .bmp" in not_image.err
    assert absent.code == 2 and "gone.png does not exist" in absent.err
    assert watched.code == 2 and "a.png is not a folder" in watched.err
    assert not (tmp_path / ".analyzer").exists()
