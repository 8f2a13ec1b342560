"""`analyzer export`: a classified folder becomes a dataset its trainer reads, and stays up to date.

Every layout is read back by its consumer: torchvision's ``ImageFolder``, Hugging Face
``datasets``' imagefolder builder, and kohya's folder and caption conventions, file by file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("open_clip", reason="the clip extra is not installed")

from analyzer_classify.testing import ColourEmbedder

from conftest import make_image

RED, GREEN, BLUE = (220, 20, 20), (20, 200, 30), (10, 30, 230)


@pytest.fixture(autouse=True)
def colour_model(colours: ColourEmbedder) -> ColourEmbedder:
    """Every test here classifies with the colour embedder (the ``colours`` fixture of conftest)."""
    return colours


@pytest.fixture
def photos(tmp_path: Path, cli) -> Path:  # type: ignore[no-untyped-def]
    """Twenty classified photos: eight red, six green, six blue, each a slightly different shade."""
    root = tmp_path / "photos"
    for colour, rgb, n in (("red", RED, 8), ("green", GREEN, 6), ("blue", BLUE, 6)):
        for i in range(n):
            shade = tuple(max(0, min(255, v + 7 * i - 20)) for v in rgb)
            make_image(root / f"{colour}-{i}.png", size=(12, 12), color=shade)
    outcome = cli("run", root, "--plugins", "classify")
    assert outcome.code == 0, outcome.log
    return root


def manifest_files(out: Path) -> dict[str, dict]:
    """The dataset's manifest: a header line, then one line per file in OUT (path, src, hash, split...),
    then one per image the filters left out (``filtered``: its source)."""
    header, *lines = (out / ".analyzer-export" / "manifest.jsonl").read_text().splitlines()
    assert json.loads(header)["version"] == 4
    return {record.pop("path"): record for record in map(json.loads, lines) if "filtered" not in record}


def exported(out: Path) -> list[str]:
    return sorted(
        p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and ".analyzer-export" not in p.parts
    )


def test_splits_are_read_by_torchvision_imagefolder(cli, photos, tmp_path):
    from torchvision.datasets import ImageFolder

    out = tmp_path / "dataset"
    # every shade of a colour is a near-duplicate to the colour embedder: count identical files only
    outcome = cli(
        "export", photos, "--to", out, "--layout", "splits", "--class", "classify.colours", "--near-duplicates", "0"
    )

    assert outcome.code == 0, outcome.log
    total = 0
    for split in ("train", "val", "test"):
        found = ImageFolder(str(out / split))
        assert set(found.classes) <= {"red", "green", "blue"}
        for path, index in found.samples:
            assert Path(path).name.startswith(found.classes[index])  # red-3.png sits in red/
        total += len(found)
    assert total == 20
    assert len(list((out / "train").rglob("*.png"))) == 14  # 70% of 20, stratified: 6 + 4 + 4 (rounded per class)
    for image in photos.glob("*.png"):
        assert image.is_file()  # sources untouched


def test_imagefolder_is_read_by_hugging_face_datasets(cli, photos, tmp_path):
    datasets = pytest.importorskip("datasets", reason="Hugging Face datasets is not installed")

    out = tmp_path / "hf"
    outcome = cli(
        "export",
        photos,
        "--to",
        out,
        "--layout",
        "imagefolder",
        "--class",
        "classify.colours",
        "--caption",
        "a photo, {classify.colours}",
        "--near-duplicates",
        "0",
    )

    assert outcome.code == 0, outcome.log
    loaded = datasets.load_dataset("imagefolder", data_dir=str(out), cache_dir=str(tmp_path / "hf-cache"))
    assert set(loaded) == {"train", "validation", "test"}
    train = loaded["train"]
    assert set(train["label"]) <= {"red", "green", "blue"}
    for row in train:
        assert row["text"] == f"a photo, {row['label']}"
        assert row["image"].size == (12, 12)
    assert sum(len(loaded[s]) for s in loaded) == 20


def test_kohya_folders_and_captions_file_by_file(cli, photos, tmp_path):
    out = tmp_path / "kohya"
    outcome = cli(
        "export",
        photos,
        "--to",
        out,
        "--layout",
        "kohya",
        "--class",
        "classify.colours",
        "--repeats",
        "10",
        "--caption",
        "mytoken, {classify.colours}",
    )

    assert outcome.code == 0, outcome.log
    folders = sorted(p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert folders == ["10_blue", "10_green", "10_red"]
    for image in (out / "10_red").glob("*.png"):
        caption = image.with_suffix(".txt")
        assert caption.read_text() == "mytoken, red\n"  # kohya: the caption beside the image, same stem
    assert len(list((out / "10_red").glob("*.png"))) == 8


def test_a_second_export_adds_moves_and_removes_and_keeps_every_split(cli, photos, tmp_path):
    out = tmp_path / "dataset"
    cli("export", photos, "--to", out, "--class", "classify.colours", "--near-duplicates", "0")
    first = manifest_files(out)
    split_of = {entry["hash"]: entry["split"] for entry in first.values()}

    make_image(photos / "green-new.png", size=(12, 12), color=(25, 190, 40))  # new
    (photos / "blue-5.png").unlink()  # gone
    relabel = cli("label", "set", photos / "red-0.png", "blue", "--set", "colours")  # a new label moves it
    assert relabel.code == 0, relabel.log
    cli("run", photos, "--plugins", "classify")
    again = cli("export", photos, "--to", out, "--class", "classify.colours", "--near-duplicates", "0")

    assert again.code == 0, again.log
    files = manifest_files(out)
    assert len(files) == 20
    assert not any("blue-5" in path for path in files)
    (red0,) = [path for path, entry in files.items() if entry["src"].endswith("red-0.png")]
    assert red0.split("/")[1] == "blue"
    for entry in files.values():
        if entry["hash"] in split_of:
            assert entry["split"] == split_of[entry["hash"]]  # no earlier image changed split
    assert exported(out) == sorted([*files, "labels.csv", "labels.jsonl", "metadata.json", "report.json", "report.txt"])


def test_near_duplicates_never_straddle_splits(cli, photos, tmp_path):
    out = tmp_path / "dataset"
    outcome = cli("export", photos, "--to", out, "--class", "classify.colours")  # cosine 0.95 by default

    assert outcome.code == 0, outcome.log
    files = manifest_files(out)
    splits_of_colour: dict[str, set[str]] = {}
    for entry in files.values():
        splits_of_colour.setdefault(entry["label"], set()).add(entry["split"])
    assert all(len(splits) == 1 for splits in splits_of_colour.values())  # each colour's shades: one group
    assert "groups" in json.loads((out / "metadata.json").read_text())["drift"]


def test_a_new_look_alike_joins_its_earlier_image_s_split_on_a_re_export(cli, photos, tmp_path):
    """A re-export looks for its new images' look-alikes among every stored vector (streamed past
    them, not all held): a new shade of red joins the reds' split, whatever its own hash says."""
    out = tmp_path / "dataset"
    assert cli("export", photos, "--to", out, "--class", "classify.colours").code == 0
    (red_split,) = {entry["split"] for entry in manifest_files(out).values() if entry["label"] == "red"}

    make_image(photos / "red-new.png", size=(12, 12), color=(231, 12, 9))
    assert cli("run", photos, "--plugins", "classify").code == 0
    again = cli("export", photos, "--to", out, "--class", "classify.colours")

    assert again.code == 0, again.log
    assert "1 to add" in again.out and "20 up to date" in again.out
    (new,) = [entry for entry in manifest_files(out).values() if entry["src"].endswith("red-new.png")]
    assert new["label"] == "red" and new["split"] == red_split


def test_an_exported_file_keeps_its_name_when_a_new_image_of_the_same_name_comes(cli, photos, tmp_path):
    """Names are made unique by content (``<stem>-<hash8>``): a newcomer whose name is taken gets the
    suffix, whichever folder it sorts in; the file exported earlier keeps its name."""
    out = tmp_path / "dataset"
    make_image(photos / "later" / "cat.png", size=(12, 12), color=(200, 30, 25))
    assert cli("run", photos, "--plugins", "classify").code == 0
    assert cli("export", photos, "--to", out, "--class", "classify.colours").code == 0
    before = {entry["src"]: path for path, entry in manifest_files(out).items()}
    assert before[str(photos / "later" / "cat.png")].endswith("/cat.png")

    make_image(photos / "a-first" / "cat.png", size=(12, 12), color=(210, 25, 30))  # sorts first
    assert cli("run", photos, "--plugins", "classify").code == 0
    again = cli("export", photos, "--to", out, "--class", "classify.colours")

    assert again.code == 0, again.log
    assert "1 to add, 0 to move, 0 to remove, 21 up to date" in again.out
    after = {entry["src"]: path for path, entry in manifest_files(out).items()}
    assert {src: after[src] for src in before} == before
    newcomer = after[str(photos / "a-first" / "cat.png")]
    assert newcomer.rpartition("/")[2].startswith("cat-") and newcomer not in before.values()


def test_dry_run_prints_the_plan_and_writes_nothing(cli, photos, tmp_path):
    out = tmp_path / "dataset"
    outcome = cli("export", photos, "--to", out, "--class", "classify.colours", "--dry-run")

    assert outcome.code == 0, outcome.log
    assert "plan: 20 images: 20 to add" in outcome.out
    assert not out.exists()


def test_missing_results_are_named_with_the_command_that_makes_them(cli, photos, tmp_path, monkeypatch):
    monkeypatch.setenv("ANALYZER_CLASSIFY__LABELS__SHAPES", "round,square")

    outcome = cli("export", photos, "--to", tmp_path / "out", "--class", "classify.shapes")

    assert outcome.code == 1
    assert "20 images: no result for classify.shapes" in outcome.err
    assert "analyzer classify" in outcome.err and "--set shapes" in outcome.err
    assert not (tmp_path / "out").exists()


def test_a_corrupt_sidecar_is_named_and_nothing_is_exported(cli, photos, tmp_path):
    (photos / "red-3.png.classify.json").write_text('{"schema_version": 1, "analysis": {tru')

    outcome = cli("export", photos, "--to", tmp_path / "out", "--class", "classify.colours")

    assert outcome.code == 1
    assert "1 images: the classify sidecar is corrupt" in outcome.err and "red-3.png" in outcome.err
    assert not (tmp_path / "out").exists()


def test_an_output_folder_inside_the_input_is_refused(cli, photos):
    outcome = cli("export", photos, "--to", photos / "dataset", "--class", "classify.colours")

    assert outcome.code == 2
    assert "inside the folder" in outcome.err


def test_labels_that_are_no_valid_folder_names_are_kept_apart(cli, photos, tmp_path, monkeypatch):
    monkeypatch.setenv("ANALYZER_CLASSIFY__LABELS__ODD", "a/b,a_b,CON,..")
    cli("run", photos, "--plugins", "classify")
    for name, label in (("red-0.png", "a/b"), ("red-1.png", "a_b"), ("green-0.png", "CON"), ("blue-0.png", "..")):
        assert cli("label", "set", photos / name, label, "--set", "odd").code == 0

    out = tmp_path / "odd"
    outcome = cli("export", photos, "--to", out, "--layout", "classes", "--class", "classify.odd")

    assert outcome.code == 0, outcome.log
    folders = [p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".analyzer")]
    assert len({p.name for p in folders}) == len(folders) >= 4
    for folder in folders:
        assert folder.parent == out and "/" not in folder.name and folder.name not in ("..", ".", "CON")
    records = [json.loads(line) for line in (out / "labels.jsonl").read_text().splitlines()]
    by_label = {r["top1"]: r["path"].split("/")[0] for r in records}
    assert by_label["a/b"] != by_label["a_b"]  # alike once cleaned up, kept apart


def test_zip_holds_the_dataset(cli, photos, tmp_path):
    out = tmp_path / "dataset"
    outcome = cli("export", photos, "--to", out, "--class", "classify.colours", "--zip", tmp_path / "dataset.zip")

    assert outcome.code == 0, outcome.log
    with zipfile.ZipFile(tmp_path / "dataset.zip") as archive:
        assert sorted(archive.namelist()) == exported(out)
        assert archive.read("labels.csv") == (out / "labels.csv").read_bytes()


def test_the_csv_alone(cli, photos, tmp_path):
    outcome = cli(
        "export",
        photos,
        "--to",
        tmp_path / "labels.csv",
        "--csv-only",
        "--layout",
        "classes",
        "--class",
        "classify.colours",
    )

    assert outcome.code == 0, outcome.log
    lines = (tmp_path / "labels.csv").read_text().splitlines()
    assert lines[0] == "path,top1,confidence" and len(lines) == 21
    assert f"{photos / 'red-0.png'},red," in (tmp_path / "labels.csv").read_text()


def test_an_interrupted_export_resumes(cli, photos, tmp_path, monkeypatch):
    from analyzer.export import files

    real = files.Placer.place
    calls = {"n": 0}

    def failing(self: files.Placer, src: Path, dst: Path) -> str:
        calls["n"] += 1
        if calls["n"] == 7:
            raise OSError(28, "No space left on device")
        return real(self, src, dst)

    out = tmp_path / "dataset"
    monkeypatch.setattr(files.Placer, "place", failing)
    stopped = cli("export", photos, "--to", out, "--class", "classify.colours")
    monkeypatch.setattr(files.Placer, "place", real)

    assert stopped.code == 1
    assert "No space left on device" in stopped.err and "run it again to resume" in stopped.err
    journal = (out / ".analyzer-export" / "journal.jsonl").read_text().splitlines()
    assert len(journal) < 20  # what was placed and journaled before the failure (in threads: which, varies)
    resumed = cli("export", photos, "--to", out, "--class", "classify.colours")
    assert resumed.code == 0, resumed.log
    assert f"{len(journal)} up to date" in resumed.out  # what the journal says was done is not done again
    assert not [p for p in out.rglob("*") if p.name.startswith(".") and p.suffix == ".tmp"]
    assert len(manifest_files(out)) == 20


def test_prune_lists_then_sets_aside_then_restores(cli, photos, tmp_path, monkeypatch):
    monkeypatch.setenv("ANALYZER_CLASSIFY__LABELS__PETS", "cat,dog")  # no photo looks like either: 50/50
    cli("run", photos, "--plugins", "classify")
    ask = ("--class", "classify.pets", "--min-confidence", "0.9", "--where", "classify.colours=green")

    listed = cli("prune", photos, *ask)
    assert listed.code == 0, listed.log
    doubtful = sorted(line.split("\t")[0] for line in listed.out.splitlines())
    assert doubtful == sorted(str(photos / f"green-{i}.png") for i in range(6))

    moved = cli("prune", photos, *ask, "--yes")
    assert moved.code == 0, moved.log
    assert not any(os.path.exists(p) for p in doubtful)
    assert not any(os.path.exists(p + ".classify.json") for p in doubtful)  # sidecars went with them
    (trash,) = (photos / ".analyzer" / "trash").iterdir()

    back = cli("prune", photos, "--restore", trash.name)
    assert back.code == 0, back.log
    assert all(os.path.exists(p) and os.path.exists(p + ".classify.json") for p in doubtful)


def test_resize_and_strip_make_new_files_without_the_generation_parameters(cli, tmp_path):
    from PIL import Image

    root = tmp_path / "renders"
    params = "a red square\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 64x32"
    make_image(root / "big.png", size=(64, 32), color=RED, text={"parameters": params})
    assert cli("run", root, "--plugins", "metadata,classify").code == 0

    out = tmp_path / "shared"
    outcome = cli(
        "export",
        root,
        "--to",
        out,
        "--layout",
        "classes",
        "--class",
        "classify.colours",
        "--resize",
        "16",
        "--strip-metadata",
        "--caption",
        "metadata.prompt",
    )

    assert outcome.code == 0, outcome.log
    exported_image = out / "red" / "big.png"
    with Image.open(exported_image) as image:
        assert image.size == (16, 8)
        assert "parameters" not in image.info
    assert exported_image.stat().st_ino != (root / "big.png").stat().st_ino  # a new file, never a link
    assert (out / "red" / "big.txt").read_text() == "a red square\n"
    with Image.open(root / "big.png") as original:
        assert original.size == (64, 32) and "parameters" in original.info  # the source is untouched


def test_unsure_images_go_to_their_own_folder_and_classes_are_capped(cli, photos, tmp_path, monkeypatch):
    monkeypatch.setenv("ANALYZER_CLASSIFY__LABELS__PETS", "cat,dog")  # every photo 50/50: all unsure
    cli("run", photos, "--plugins", "classify")
    out = tmp_path / "pets"

    outcome = cli(
        "export",
        photos,
        "--to",
        out,
        "--layout",
        "classes",
        "--class",
        "classify.pets",
        "--min-confidence",
        "0.9",
        "--below",
        "folder",
    )
    assert outcome.code == 0, outcome.log
    assert {p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")} == {"_unsure"}

    capped = tmp_path / "capped"
    outcome = cli(
        "export", photos, "--to", capped, "--layout", "classes", "--class", "classify.colours", "--max-per-class", "2"
    )
    assert outcome.code == 0, outcome.log
    assert sorted(
        len(list(d.glob("*.png"))) for d in capped.iterdir() if d.is_dir() and not d.name.startswith(".")
    ) == [2, 2, 2]


def test_an_image_deleted_after_planning_is_left_out_and_the_rest_exported(cli, photos, tmp_path, monkeypatch):
    from analyzer.export import files

    real = files.Placer.place

    def vanishing(self: files.Placer, src: str | Path, dst: str | Path) -> str:
        if Path(src).name == "green-2.png":
            Path(src).unlink()  # deleted by someone else between the plan and its file
        return real(self, src, dst)

    monkeypatch.setattr(files.Placer, "place", vanishing)
    out = tmp_path / "dataset"
    outcome = cli("export", photos, "--to", out, "--layout", "classes", "--class", "classify.colours")

    assert outcome.code == 0, outcome.log
    assert "green-2.png: not exported: gone since it was analysed" in outcome.log
    assert len(manifest_files(out)) == 19
    assert "green-2" not in (out / "labels.csv").read_text()


def test_analyse_computes_the_missing_results_first(cli, tmp_path):
    root = tmp_path / "new"
    for i, rgb in enumerate([RED, GREEN, BLUE]):
        make_image(root / f"{i}.png", size=(8, 8), color=rgb)

    refused = cli("export", root, "--to", tmp_path / "a", "--layout", "classes", "--class", "classify.colours")
    assert refused.code == 1 and "3 images: not analysed since it was added or changed" in refused.err

    outcome = cli(
        "export", root, "--to", tmp_path / "b", "--layout", "classes", "--class", "classify.colours", "--analyse"
    )
    assert outcome.code == 0, outcome.log
    assert sorted(p.name for p in (tmp_path / "b").iterdir() if p.is_dir() and not p.name.startswith(".")) == [
        "blue",
        "green",
        "red",
    ]


def test_refined_classes_with_hand_given_labels_winning(cli, photos, tmp_path):
    refined = cli("classify", photos, "--set", "colours", "--refine", "--min-images", "0")
    assert refined.code == 0, refined.log
    assert cli("label", "set", photos / "green-1.png", "blue", "--set", "colours").code == 0

    out = tmp_path / "refined"
    outcome = cli("export", photos, "--to", out, "--layout", "classes", "--class", "classify.colours@refined")

    assert outcome.code == 0, outcome.log
    assert (out / "blue" / "green-1.png").is_file()  # the hand-given label, over the refinement's
    assert (out / "green" / "green-0.png").is_file() and (out / "red" / "red-0.png").is_file()


def kohya_export(cli, photos: Path, out: Path, caption: str):  # type: ignore[no-untyped-def]
    """Export the photos for kohya into OUT, with this caption."""
    outcome = cli(
        "export", photos, "--to", out, "--layout", "kohya", "--class", "classify.colours", "--caption", caption
    )
    assert outcome.code == 0, outcome.log
    return outcome


def test_a_caption_left_empty_by_a_power_cut_is_written_again(cli, photos, tmp_path):
    out = tmp_path / "kohya"
    kohya_export(cli, photos, out, "tok, {classify.colours}")
    caption = out / "1_red" / "red-0.txt"
    caption.write_bytes(b"")  # what a power cut before the data reached the disk can leave...
    restarted_since(out)  # ...and the machine restarted after it

    again = kohya_export(cli, photos, out, "tok, {classify.colours}")

    assert "1 captions to rewrite" in again.out
    assert caption.read_text() == "tok, red\n"


def restarted_since(out: Path) -> None:
    """Make the export's manifest say it finished before this machine last started."""
    path = out / ".analyzer-export" / "manifest.jsonl"
    header, rest = path.read_bytes().split(b"\n", 1)
    head = json.loads(header)
    head["finished"] = 0.0
    path.write_bytes(json.dumps(head).encode() + b"\n" + rest)


def test_a_re_export_trusts_its_manifest_for_sizes_until_the_machine_restarts(cli, photos, tmp_path):
    """Kept files are looked for by listing their folders, not stat'ed one by one (a caption that
    changed size without a restart was edited by hand: the export leaves it); a deleted one is
    always put back."""
    out = tmp_path / "kohya"
    kohya_export(cli, photos, out, "{classify.colours}")
    edited, deleted = out / "1_red" / "red-0.txt", out / "1_red" / "red-1.txt"
    edited.write_text("red, my own words\n")
    deleted.unlink()

    again = kohya_export(cli, photos, out, "{classify.colours}")

    assert "1 captions to rewrite" in again.out
    assert deleted.read_text() == "red\n"
    assert edited.read_text() == "red, my own words\n"


@pytest.fixture
def sidecar_reads(monkeypatch) -> list[str]:  # type: ignore[no-untyped-def]
    """The sidecar files read from now on (every read goes through ``read_sidecar_with_stat``)."""
    from analyzer import store

    reads: list[str] = []
    real = store.read_sidecar_with_stat
    monkeypatch.setattr(store, "read_sidecar_with_stat", lambda path: reads.append(str(path)) or real(path))
    return reads


def test_an_export_reads_the_results_from_the_index_not_from_each_sidecar(cli, photos, tmp_path, sidecar_reads):
    import sqlite3

    reads = sidecar_reads
    first = cli("export", photos, "--to", tmp_path / "a", "--layout", "classes", "--class", "classify.colours")
    assert first.code == 0, first.log
    assert reads == []  # the walk found every sidecar as indexed, and the index holds their results

    # an index that lost its copy of the results (an older layout, a failed write): the sidecars are read
    for db in (photos / ".analyzer" / "hosts").glob("*/index.sqlite"):
        with sqlite3.connect(db) as connection:
            connection.execute("DELETE FROM results")
    again = cli("export", photos, "--to", tmp_path / "b", "--layout", "classes", "--class", "classify.colours")
    assert again.code == 0, again.log
    assert len(reads) == 20
    assert exported(tmp_path / "a") == exported(tmp_path / "b")
    assert (tmp_path / "a" / "labels.jsonl").read_text() == (tmp_path / "b" / "labels.jsonl").read_text()


def test_an_ad_hoc_label_set_does_not_make_the_next_command_read_every_sidecar_again(cli, photos, sidecar_reads):
    assert cli("classify", photos, "--labels", "cat,dog", "--name", "pets").code == 0
    sidecar_reads.clear()
    reads = sidecar_reads

    outcome = cli("export", photos, "--to", photos.parent / "out", "--layout", "classes", "--class", "classify.pets")

    assert outcome.code == 0, outcome.log
    assert reads == []  # the classify command indexed what it wrote, under the same reading rules


def test_a_sidecar_fingerprint_is_the_same_in_every_process():
    """A re-export runs in another process than the export before it: the fingerprint it compares
    must not depend on the process (Python's hash of text, or of None before 3.12, does)."""
    code = (
        "from analyzer.index import SidecarRow; from analyzer.survey import sidecars_fingerprint; "
        "row = SidecarRow((1234, 1_700_000_000_123_456_789), 'sha256:ab', frozenset(), frozenset(), frozenset()); "
        "print(sidecars_fingerprint({'metadata': row, 'classify': None, 'llm': row}))"
    )
    env = dict(os.environ, PYTHONHASHSEED="random")
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env).stdout for _ in "ab"}
    assert len(runs) == 1 and runs.pop().strip().lstrip("-").isdigit()


@pytest.fixture
def results_asked(monkeypatch) -> list[str]:  # type: ignore[no-untyped-def]
    """The images whose results are asked of the index from now on (folder-wide asks count every image)."""
    from analyzer.store import Store

    asked: list[str] = []
    real = Store.values_in

    def values_in(self, rel_dir, images, selectors, preferred):  # type: ignore[no-untyped-def]
        asked.extend(name for name, _ in images)
        return real(self, rel_dir, images, selectors, preferred)

    monkeypatch.setattr(Store, "values_in", values_in)
    return asked


def test_a_re_export_reads_again_only_the_images_whose_sidecars_changed(cli, photos, tmp_path, results_asked):
    out = tmp_path / "dataset"
    ask = ("export", photos, "--to", out, "--class", "classify.colours", "--caption", "a {classify.colours} photo")
    assert cli(*ask).code == 0
    assert len(results_asked) == 20
    before = {json.loads(line)["source"]: line for line in (out / "labels.jsonl").read_text().splitlines()}

    results_asked.clear()
    assert cli(*ask).code == 0
    assert results_asked == []  # nothing changed: every image as the manifest says it was read

    assert cli("label", "set", photos / "red-0.png", "blue", "--set", "colours").code == 0
    results_asked.clear()
    again = cli(*ask)

    assert again.code == 0, again.log
    assert results_asked == ["red-0.png"]
    (red0,) = [path for path, entry in manifest_files(out).items() if entry["src"].endswith("red-0.png")]
    assert red0.split("/")[1] == "blue" and (out / red0).with_suffix(".txt").read_text() == "a blue photo\n"
    after = {json.loads(line)["source"]: line for line in (out / "labels.jsonl").read_text().splitlines()}
    assert {source for source in after if after[source] != before[source]} == {str(photos / "red-0.png")}

    results_asked.clear()  # read another way (another caption): every image is read again
    assert cli(*ask[:-1], "{classify.colours}").code == 0
    assert sorted(results_asked) == sorted(p.name for p in photos.glob("*.png"))


def test_images_a_filter_left_out_are_not_read_again_until_their_sidecars_change(cli, photos, tmp_path, results_asked):
    """The manifest remembers which images ``--where`` left out (and from which sidecars): a re-export
    reads them again only when those change."""
    out = tmp_path / "dataset"
    ask = ("export", photos, "--to", out, "--class", "classify.colours", "--where", "classify.colours!=red")
    first = cli(*ask)
    assert first.code == 0, first.log
    assert "8 left out" in first.out and len(manifest_files(out)) == 12

    results_asked.clear()
    again = cli(*ask)
    assert again.code == 0, again.log
    assert results_asked == [] and "8 left out" in again.out  # still left out, not read again

    assert cli("label", "set", photos / "red-0.png", "blue", "--set", "colours").code == 0
    results_asked.clear()
    relabelled = cli(*ask)

    assert relabelled.code == 0, relabelled.log
    assert results_asked == ["red-0.png"]  # its sidecar changed: read, and now in
    assert "1 to add" in relabelled.out and "7 left out" in relabelled.out
    assert any(entry["src"].endswith("red-0.png") for entry in manifest_files(out).values())


def test_a_manifest_of_the_version_before_is_read_as_it_is(cli, photos, tmp_path):
    """Version 3 had no lines for the images the filters left out: its files are kept, and those
    images are read again, once."""
    out = tmp_path / "dataset"
    ask = ("export", photos, "--to", out, "--class", "classify.colours", "--where", "classify.colours!=red")
    assert cli(*ask).code == 0
    path = out / ".analyzer-export" / "manifest.jsonl"
    header, *lines = path.read_text().splitlines()
    older = [json.dumps({**json.loads(header), "version": 3}), *(line for line in lines if '"filtered"' not in line)]
    path.write_text("\n".join(older) + "\n")

    again = cli(*ask)

    assert again.code == 0, again.log
    assert "0 to add, 0 to move, 0 to remove, 12 up to date" in again.out and "8 left out" in again.out
    assert len(manifest_files(out)) == 12  # now version 4 again, with its filtered lines
    assert sum('"filtered"' in line for line in path.read_text().splitlines()) == 8
