"""Discovery and the index: a warm run touches nothing it does not have to."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from analyzer.discovery import glob_match, walk
from analyzer.store import Store
from analyzer.triage import Triage

from conftest import a1111_png, make_image, result


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Count the sidecar reads (through the store) and image hashes (through the triage's hasher)."""
    counts = {"read_sidecar": 0, "hash_file": 0}
    real_read, real_hash = Store.read_with_stat, Triage.hasher

    def read(self: Store, rel: str, plugin: str):  # type: ignore[no-untyped-def]
        counts["read_sidecar"] += 1
        return real_read(self, rel, plugin)

    def hasher(path: Path):  # type: ignore[no-untyped-def]
        counts["hash_file"] += 1
        return real_hash(path)

    monkeypatch.setattr(Store, "read_with_stat", read)
    monkeypatch.setattr(Triage, "hasher", staticmethod(hasher))
    return counts


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "imgs"
    for i in range(5):
        a1111_png(root / "a" / f"{i}.png", f"prompt {i}", color=(i, 0, 0))
    a1111_png(root / "b" / "c" / "deep.PNG", "deep prompt")
    return root


def test_warm_run_reads_no_sidecar_and_hashes_no_image(cli, tree, counted):
    cli("run", tree)
    assert counted["hash_file"] == 6
    counted.update(read_sidecar=0, hash_file=0)

    cli("run", tree)

    assert counted == {"read_sidecar": 0, "hash_file": 0}


def test_a_lost_index_is_rebuilt_from_sidecars_without_rehashing(cli, tree, counted):
    cli("run", tree)
    next((tree / ".analyzer" / "hosts").glob("*/index.sqlite")).unlink()
    counted.update(read_sidecar=0, hash_file=0)

    outcome = cli("run", tree)

    assert counted["hash_file"] == 0 and counted["read_sidecar"] == 6
    assert "metadata:" not in outcome.log  # nothing was analysed


def test_a_corrupt_index_is_rebuilt(cli, tree):
    cli("run", tree)
    (host,) = (tree / ".analyzer" / "hosts").iterdir()
    for leftover in host.glob("index.sqlite-*"):
        leftover.unlink()
    (host / "index.sqlite").write_bytes(b"garbage" * 1000)

    outcome = cli("run", tree)

    assert outcome.code == 0
    assert "is unreadable; rebuilding it" in outcome.log
    assert "6 already up to date" in cli("run", tree).log


def test_a_sidecar_edited_by_hand_is_read_again(cli, tree, counted):
    cli("run", tree)
    path = tree / "a" / "0.png.metadata.json"
    doc = json.loads(path.read_text())
    del doc["analysis"]["negative"]
    path.write_text(json.dumps(doc))
    counted.update(read_sidecar=0, hash_file=0)

    cli("run", tree)

    assert counted["read_sidecar"] >= 1 and counted["hash_file"] == 0
    assert result(tree / "a" / "0.png", "negative") == "blurry"


def test_deleted_images_leave_the_wildcards(cli, tree):
    cli("run", tree)
    (tree / "a" / "3.png").unlink()
    (tree / "b" / "c" / "deep.PNG").unlink()

    cli("run", tree)

    lines = (tree / "wildcards" / "metadata_prompt.txt").read_text().splitlines()
    assert lines == ["prompt 0", "prompt 1", "prompt 2", "prompt 4"]


def test_discovery_order_extensions_hidden_and_own_outputs(tmp_path):
    root = tmp_path / "r"
    for rel in (
        "b.PNG",
        "a.jpeg",
        "sub/z.webp",
        "sub/y.Tiff",
        "x.gif",
        "x.bmp",
        "x.jpg",
        ".hidden.png",
        ".cache/in-hidden.png",
        "notes.txt",
        "wildcards/w.png",
    ):
        make_image(root / rel, fmt="PNG")
    (root / "a.jpeg.metadata.json").write_text("{}")

    listings = list(walk(root, skip_dirs=[root / "wildcards"]))

    assert [(lst.rel_dir, [n for n, _ in lst.images]) for lst in listings] == [
        ("", ["a.jpeg", "b.PNG", "x.bmp", "x.gif", "x.jpg"]),
        ("sub", ["y.Tiff", "z.webp"]),
    ]
    assert set(listings[0].json_files) == {"a.jpeg.metadata.json"}


def test_include_and_exclude_globs(cli, tree):
    outcome = cli("run", tree, "--exclude", "b/**", "--include", "**/*.png")

    assert outcome.code == 0
    assert "5 images" in outcome.log
    assert not (tree / "b" / "c" / "deep.PNG.metadata.json").exists()


@pytest.mark.parametrize(
    ("path", "pattern", "matches"),
    [
        ("a/b/c.png", "*.png", True),
        ("a/b/c.png", "a/*.png", False),
        ("a/b/c.png", "a/**/*.png", True),
        ("c.png", "**/*.png", True),
        ("a/b", "a/**", True),
        ("a/x1.png", "a/x[0-9].png", True),
        ("a/x1.png", "a/x?.jpg", False),
    ],
)
def test_glob_semantics(path, pattern, matches):
    assert glob_match(path, pattern) is matches
