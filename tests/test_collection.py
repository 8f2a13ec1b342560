"""A label set over the whole collection: refinement beside the zero-shot results, clusters of the
uncertain images named from the concept bank, metrics against the truth, and a report."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("open_clip", reason="the clip extra is not installed")
pytest.importorskip("sklearn", reason="the clip extra is not installed")

from analyzer_classify import embedder
from analyzer_classify.collection import refined_base
from analyzer_classify.testing import ColourEmbedder

from conftest import make_image, sidecar

SHADES = {
    "red": [(220, 20, 20), (200, 60, 40), (180, 30, 60), (150, 110, 100)],  # the last one is nearly grey
    "green": [(20, 200, 30), (60, 180, 60), (40, 150, 90)],
    "blue": [(10, 30, 230), (50, 60, 200), (30, 90, 160)],
}


@pytest.fixture
def colours() -> Iterator[ColourEmbedder]:
    fake = ColourEmbedder()
    embedder.preload(fake)
    yield fake
    embedder.forget_preloaded()


@pytest.fixture
def sorted_photos(tmp_path: Path) -> Path:
    """Photos sorted into folders named after their colour: the truth of ``--truth folders``."""
    root = tmp_path / "photos"
    for colour, shades in SHADES.items():
        for i, rgb in enumerate(shades):
            make_image(root / colour / f"{colour}{i}.png", size=(8, 8), color=rgb)
    return root


def classify(cli, root: Path, *more: str):  # type: ignore[no-untyped-def]
    return cli("classify", root, "--labels", "red,green,blue", "--name", "colours", "--progress", "plain", *more)


@pytest.fixture(autouse=True)
def colour_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANALYZER_CLASSIFY__MODEL", "colour/test")


def test_refine_stores_its_result_beside_the_zero_shot_one_and_reports_metrics(cli, sorted_photos, colours):
    outcome = classify(cli, sorted_photos, "--refine", "--min-images", "0", "--truth", "folders")

    assert outcome.code == 0, outcome.log
    assert "refine colours: iteration 1/10: mean confidence" in outcome.log
    doc = sidecar(sorted_photos / "red" / "red0.png", "classify")
    models = doc["analysis"]["colours"]
    assert len(models) == 2  # the zero-shot result, and the refinement beside it
    (refined,) = [m for m in models if m.startswith("refined:")]
    (zero_shot,) = [m for m in models if not m.startswith("refined:")]
    assert refined_base(refined) == zero_shot
    assert models[refined]["result"]["top"] == "red"
    assert models[refined]["parameters"]["images"] == 10
    report = json.loads((sorted_photos / ".analyzer" / "reports" / "classify-colours" / "report.json").read_text())
    assert report["images"] == 10
    assert report["metrics"]["zero_shot"]["accuracy"] == 1.0
    assert report["metrics"]["refined"]["accuracy"] == 1.0
    assert {"red", "green", "blue"} <= set(report["refined"])
    folder = sorted_photos / ".analyzer" / "reports" / "classify-colours"
    assert (folder / "report.txt").read_text() in outcome.out
    assert (folder / "confusion.png").read_bytes().startswith(b"\x89PNG")
    assert (folder / "confusion-refined.csv").is_file()


def test_the_refined_result_is_read_with_at_refined(cli, sorted_photos, colours):
    classify(cli, sorted_photos, "--refine", "--min-images", "0")

    outcome = cli("show", sorted_photos / "green" / "green1.png", "classify.colours@refined.top")

    assert outcome.code == 0, outcome.log
    assert outcome.out.splitlines()[-1].endswith("green")


def test_a_changed_collection_makes_a_new_refined_result_and_clean_keeps_both(cli, sorted_photos, colours):
    classify(cli, sorted_photos, "--refine", "--min-images", "0")
    make_image(sorted_photos / "blue" / "blue9.png", size=(8, 8), color=(20, 20, 250))

    classify(cli, sorted_photos, "--refine", "--min-images", "0")

    models = sidecar(sorted_photos / "red" / "red0.png", "classify")["analysis"]["colours"]
    assert len([m for m in models if m.startswith("refined:")]) == 2  # one per collection, none overwritten
    cleaned = cli("classify", sorted_photos, "--clean", "--labels", "red,green,blue", "--name", "colours")
    assert cleaned.code == 0, cleaned.log
    models = sidecar(sorted_photos / "red" / "red0.png", "classify")["analysis"]["colours"]
    assert len(models) == 3  # refinements of the label list still configured stay


def test_uncertain_images_are_clustered_and_named_from_the_concept_bank(cli, tmp_path, colours):
    root = tmp_path / "pets"
    for i, rgb in enumerate([(230, 10, 10), (210, 30, 20), (240, 20, 40), (10, 20, 240), (30, 30, 220), (20, 40, 230)]):
        make_image(root / f"pet{i}.png", size=(8, 8), color=rgb)

    # labels with no colour word: every image is as close to one as to the other, so all are uncertain
    outcome = cli("classify", root, "--labels", "cat,dog", "--clusters", "2", "--uncertain", "0.9")

    assert outcome.code == 0, outcome.log
    report = json.loads(next((root / ".analyzer" / "reports").glob("classify-*/report.json")).read_text())
    clusters = report["uncertain"]["clusters"]
    assert report["uncertain"]["images"] == 6
    assert sorted(c["size"] for c in clusters) == [3, 3]
    names = {c["names"][0] for c in clusters}
    assert names == {"red panda", "blue jay"}  # the bank's labels nearest each colour, not cat or dog


def test_a_truth_file_that_names_no_classified_image_is_a_clear_error(cli, sorted_photos, colours, tmp_path):
    truth = tmp_path / "truth.csv"
    truth.write_text("path,label\nelsewhere.png,red\n")

    outcome = classify(cli, sorted_photos, "--truth", str(truth))

    assert outcome.code == 2
    assert "Traceback" not in outcome.err
