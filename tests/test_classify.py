"""Zero-shot classification: labels of the user's choosing, on image embeddings computed once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("open_clip", reason="the clip extra is not installed")

import numpy as np

from analyzer.embeddings import EmbeddingStore
from analyzer_classify import embedder

from conftest import make_image, result

RED, GREEN, BLUE = (220, 20, 20), (20, 200, 30), (10, 30, 230)


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    for name, colour in [("poppy.png", RED), ("leaf.png", GREEN), ("sea.jpg", BLUE), ("rose.png", RED)]:
        make_image(root / name, size=(16, 16), color=colour)
    return root


def test_each_image_gets_every_label_scored_and_the_right_one_on_top(cli, photos, colours):
    outcome = cli("run", photos, "--plugins", "classify")

    assert outcome.code == 0, outcome.log
    poppy = result(photos / "poppy.png", "colours", plugin="classify")
    assert poppy["top"] == "red"
    assert poppy["labels"][0]["label"] == "red"
    assert {e["label"] for e in poppy["labels"]} == {"red", "green", "blue"}
    confidences = [e["confidence"] for e in poppy["labels"]]
    assert confidences == sorted(confidences, reverse=True)  # best first
    assert abs(sum(e["confidence"] for e in poppy["labels"]) - 1) < 1e-3
    assert result(photos / "leaf.png", "colours", plugin="classify")["top"] == "green"
    assert result(photos / "sea.jpg", "colours", plugin="classify")["top"] == "blue"


def test_a_new_label_list_costs_no_decode_and_no_image_encode(cli, photos, colours, monkeypatch):
    cli("run", photos, "--plugins", "classify")
    assert colours.prepared == 4 and colours.encoded_images == 4

    monkeypatch.setenv("ANALYZER_CLASSIFY__LABELS__COLOURS", "red,green,blue,grey")
    outcome = cli("run", photos, "--plugins", "classify")

    assert outcome.code == 0, outcome.log
    assert "classify: 4 done" in outcome.log  # a changed list is a new result...
    assert colours.prepared == 4 and colours.encoded_images == 4  # ...made from the stored embeddings
    assert "was never loaded" not in outcome.log  # grey's prompts needed the model

    monkeypatch.setenv("ANALYZER_CLASSIFY__LABELS__COLOURS", "red,green,blue")
    again = cli("run", photos, "--plugins", "classify", "--force")

    assert again.code == 0, again.log
    assert "every embedding was stored, so the model" in again.log  # not even loaded
    doc = json.loads((photos / "poppy.png.classify.json").read_text())
    assert len(doc["analysis"]["colours"]) == 2  # the old list's result stays beside the new one


def test_embeddings_survive_deleting_the_index(cli, photos, colours):
    cli("run", photos, "--plugins", "classify")
    for index in (photos / ".analyzer" / "hosts").glob("*/index.sqlite*"):
        index.unlink()

    outcome = cli("run", photos, "--plugins", "classify", "--force")

    assert outcome.code == 0, outcome.log
    assert colours.encoded_images == 4  # not one more
    stored = EmbeddingStore(photos / ".analyzer" / "embeddings").model(colours.model_id)
    assert len(stored) == 3  # one per content: poppy.png and rose.png are the same picture


def test_label_texts_are_encoded_once_per_model_and_prompt(cli, photos, colours, monkeypatch):
    cli("run", photos, "--plugins", "classify")
    first = colours.encoded_texts
    monkeypatch.setenv("ANALYZER_CLASSIFY__LABELS__MORE", "red,green,blue,grey")

    cli("run", photos, "--plugins", "classify")

    assert first == 3 * 7  # three labels, seven templates
    assert colours.encoded_texts == first + 7  # only grey's prompts are new


def test_thresholds_are_applied_when_read_so_changing_one_needs_no_run(cli, tmp_path, colours, monkeypatch):
    root = tmp_path / "reds"
    make_image(root / "poppy.png", size=(16, 16), color=RED)
    cli("run", root, "--plugins", "classify")
    wildcards = root / "wildcards" / "classify_colours.txt"
    assert sorted(wildcards.read_text().split()) == ["blue", "green", "red"]  # the top 3 (top_k's default)

    monkeypatch.setenv("ANALYZER_CLASSIFY__MIN_CONFIDENCE", "0.5")
    cli("wildcards", root, "--plugins", "classify")
    assert wildcards.read_text().split() == ["red"]

    monkeypatch.delenv("ANALYZER_CLASSIFY__MIN_CONFIDENCE")
    monkeypatch.setenv("ANALYZER_CLASSIFY__TOP_K", "2")
    cli("wildcards", root, "--plugins", "classify")
    assert len(wildcards.read_text().split()) == 2
    assert colours.prepared == 1 and colours.encoded_images == 1  # nothing was classified again


def test_multi_label_tags_each_label_above_its_threshold(cli, tmp_path, colours, monkeypatch):
    root = tmp_path / "mixed"
    make_image(root / "purple.png", size=(16, 16), color=(200, 10, 210))  # red and blue
    monkeypatch.delenv("ANALYZER_CLASSIFY__LABELS__COLOURS")
    monkeypatch.setenv("ANALYZER_CLASSIFY__LABELS__COLOURS__LABELS", "red,green,blue")
    monkeypatch.setenv("ANALYZER_CLASSIFY__LABELS__COLOURS__MULTI_LABEL", "true")
    monkeypatch.setenv("ANALYZER_CLASSIFY__LABELS__COLOURS__THRESHOLD", "0.6")

    cli("run", root, "--plugins", "classify")

    assert sorted((root / "wildcards" / "classify_colours.txt").read_text().split()) == ["blue", "red"]


def test_an_unreadable_image_fails_alone(cli, photos, colours):
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")

    outcome = cli("run", photos, "--plugins", "classify")

    assert outcome.code == 1
    assert result(photos / "poppy.png", "colours", plugin="classify")["top"] == "red"
    assert "broken.png" in outcome.log


@pytest.mark.parametrize(
    ("labels", "message"),
    [("red,green,red", "labels given more than once: red"), ("", "an empty label set")],
)
def test_an_empty_or_duplicated_label_list_is_a_clear_error(cli, photos, colours, monkeypatch, labels, message):
    monkeypatch.setenv("ANALYZER_CLASSIFY__LABELS__COLOURS", labels)

    outcome = cli("run", photos, "--plugins", "classify")

    assert outcome.code == 2 and message in outcome.err
    assert not list(photos.glob("*.json"))


def test_the_real_open_clip_code_with_a_tiny_random_model(cli, photos, monkeypatch):
    import open_clip

    from analyzer_clip.testing import tiny_clip

    model, preprocess = tiny_clip()
    real = embedder.OpenClipEmbedder(
        "tiny-clip-test/random", model, preprocess, open_clip.get_tokenizer("ViT-B-32"), "cpu"
    )
    embedder.preload(real)
    monkeypatch.setenv("ANALYZER_CLASSIFY__MODEL", real.model_id)
    monkeypatch.setenv("ANALYZER_CLASSIFY__LABELS__ANIMALS", "dog,cat,tiger")
    try:
        outcome = cli("run", photos, "--plugins", "classify")
    finally:
        embedder.forget_preloaded()

    assert outcome.code == 0, outcome.log
    poppy = result(photos / "poppy.png", "animals", plugin="classify")
    assert {e["label"] for e in poppy["labels"]} == {"dog", "cat", "tiger"}
    stored = EmbeddingStore(photos / ".analyzer" / "embeddings").model(real.model_id)
    (vector,) = stored.get([json.loads((photos / "poppy.png.classify.json").read_text())["file_info"]["hash"]])
    assert vector is not None and vector.shape == (32,) and abs(float(np.linalg.norm(vector)) - 1) < 1e-5
    with (photos / "poppy.png").open("rb"):
        from PIL import Image

        direct = real.encode_images([real.prepare(Image.open(photos / "poppy.png"))])[0]
    assert np.allclose(vector, direct, atol=1e-6)


def test_analyzer_classify_takes_labels_on_the_command_line(cli, photos, colours, monkeypatch):
    monkeypatch.delenv("ANALYZER_CLASSIFY__LABELS__COLOURS")

    outcome = cli("classify", photos, "--labels", "red,green,blue", "--name", "hues")

    assert outcome.code == 0, outcome.log
    assert result(photos / "sea.jpg", "hues", plugin="classify")["top"] == "blue"
    assert "classify hues: red 2, green 1, blue 1" in outcome.log
    unnamed = cli("classify", photos, "--labels", "blue,red")
    doc = json.loads((photos / "sea.jpg.classify.json").read_text())
    assert unnamed.code == 0 and [m for m in doc["analysis"] if m.startswith("labels-")]  # labels-<hash8>
    assert colours.encoded_images == 4  # two label sets, each image encoded once


def test_classify_without_storing_prints_the_labels_and_writes_nothing(cli, photos, colours):
    outcome = cli("classify", photos / "leaf.png", "--labels", "red,green,blue", "--no-store")

    assert outcome.code == 0, outcome.err
    found = json.loads(outcome.out)
    (by_set,) = found.values()
    (value,) = by_set.values()
    assert value["top"] == "green"
    assert not list(photos.glob("*.json")) and not (photos / ".analyzer").exists()
    refused = cli("classify", photos / "nope.png", "--labels", "a,b", "--no-store")
    assert refused.code == 2


def test_in_memory_classification_of_bytes(colours, photos):
    from analyzer.errors import ImageError
    from analyzer_classify import ClassifyOptions, ClassifyPlugin

    plugin = ClassifyPlugin(ClassifyOptions(model=colours.model_id, labels={"colours": ["red", "green", "blue"]}))
    plugin.embedder = colours

    value = plugin.classify_bytes((photos / "poppy.png").read_bytes(), "colours")

    assert value["top"] == "red" and len(value["labels"]) == 3
    with pytest.raises(ImageError):
        plugin.classify_bytes(b"not an image", "colours")


def test_a_hand_given_label_wins_everywhere_and_survives_relabelling(cli, photos, colours, monkeypatch):
    cli("run", photos, "--plugins", "classify")

    outcome = cli("label", "set", photos / "poppy.png", "blue")

    assert outcome.code == 0, outcome.err
    shown = cli("show", photos / "poppy.png", "classify.colours.top", "--plugins", "classify")
    assert shown.out.splitlines()[-1] == "classify.colours.top\tblue"
    monkeypatch.setenv("ANALYZER_CLASSIFY__TOP_K", "1")
    cli("wildcards", photos, "--plugins", "classify")
    assert "blue" in (photos / "wildcards" / "classify_colours.txt").read_text().split()
    cli("run", photos, "--plugins", "classify", "--force")  # the model's result is made again...
    doc = json.loads((photos / "poppy.png.classify.json").read_text())
    assert doc["analysis"]["colours"]["manual"]["result"]["top"] == "blue"  # ...the hand's stays
    assert cli("show", photos / "poppy.png", "classify.colours.top", "--plugins", "classify").out.endswith("blue\n")

    cli("label", "clear", photos / "poppy.png")
    assert cli("show", photos / "poppy.png", "classify.colours.top", "--plugins", "classify").out.endswith("red\n")


def test_hand_given_labels_from_a_csv_and_unknown_labels_refused(cli, photos, colours):
    sheet = photos / "review.csv"
    sheet.write_text("path,label\nleaf.png,blue\nsea.jpg,green\n")

    imported = cli("label", "import", sheet)
    unknown = cli("label", "set", photos / "leaf.png", "purple")

    assert imported.code == 0, imported.err
    assert cli("show", photos / "sea.jpg", "classify.colours.top", "--plugins", "classify").out.endswith("green\n")
    assert unknown.code == 2 and "'purple' is not a label of set 'colours'" in unknown.err


def test_without_labels_the_bundled_concept_bank_is_used(cli, photos, colours, monkeypatch):
    from analyzer_classify.concepts import concept_bank

    monkeypatch.delenv("ANALYZER_CLASSIFY__LABELS__COLOURS")

    outcome = cli("classify", photos)

    assert outcome.code == 0, outcome.log
    value = result(photos / "leaf.png", "concepts", plugin="classify")
    assert len(value["labels"]) == 20  # store_top of a bank of thousands
    assert {e["label"] for e in value["labels"]} <= set(concept_bank())


def test_clean_removes_results_of_label_lists_no_longer_configured(cli, photos, colours, monkeypatch):
    monkeypatch.setenv("ANALYZER_CLASSIFY__LABELS__OLD", "red,blue")
    cli("run", photos, "--plugins", "classify")
    cli("label", "set", photos / "poppy.png", "green", "--set", "colours")
    monkeypatch.delenv("ANALYZER_CLASSIFY__LABELS__OLD")
    monkeypatch.setenv("ANALYZER_CLASSIFY__LABELS__COLOURS", "red,green,blue,grey")
    cli("run", photos, "--plugins", "classify")
    assert len(json.loads((photos / "poppy.png.classify.json").read_text())["analysis"]["colours"]) == 3

    outcome = cli("classify", photos, "--clean")

    assert outcome.code == 0, outcome.log
    assert "removed 8 results of label lists no longer configured" in outcome.log  # 4 of `old`, 4 of the first list
    doc = json.loads((photos / "poppy.png.classify.json").read_text())
    assert set(doc["analysis"]) == {"colours"}
    assert len(doc["analysis"]["colours"]) == 2  # the current list's result and the hand-given label
    assert "manual" in doc["analysis"]["colours"]


def test_a_model_that_cannot_be_loaded_gives_the_clip_plugins_one_message(cli, photos, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("ANALYZER_CLASSIFY__DEVICE", "cpu")

    outcome = cli("classify", photos, "--labels", "dog,cat")

    assert outcome.code == 1
    (message,) = [line for line in outcome.log.splitlines() if "cannot load CLIP model" in line]
    assert "cannot load CLIP model 'ViT-B-32/openai'" in message
    assert "hf download timm/vit_base_patch32_clip_224.openai" in message
    assert "Traceback" not in outcome.err and not list(photos.glob("*.json"))


def test_clean_finds_results_the_index_does_not_know(cli, photos, colours, monkeypatch):
    monkeypatch.setenv("ANALYZER_CLASSIFY__LABELS__OLD", "red,blue")
    cli("run", photos, "--plugins", "classify")
    monkeypatch.delenv("ANALYZER_CLASSIFY__LABELS__OLD")
    for index in (photos / ".analyzer" / "hosts").glob("*/index.sqlite*"):
        index.unlink()

    outcome = cli("classify", photos, "--clean")

    assert "removed 4 results" in outcome.log
    assert "old" not in json.loads((photos / "poppy.png.classify.json").read_text())["analysis"]


def test_editing_a_label_files_prompts_makes_a_new_result(cli, photos, colours, tmp_path, monkeypatch):
    labels = tmp_path / "labels.txt"
    labels.write_text("warm: a red thing\ncold: a blue thing\n")
    monkeypatch.delenv("ANALYZER_CLASSIFY__LABELS__COLOURS")
    monkeypatch.setenv("ANALYZER_CLASSIFY__LABELS__TEMP__FILE", str(labels))
    cli("run", photos, "--plugins", "classify")
    assert result(photos / "poppy.png", "temp", plugin="classify")["top"] == "warm"

    labels.write_text("warm: a blue thing\ncold: a red thing\n")
    cli("run", photos, "--plugins", "classify")

    doc = json.loads((photos / "poppy.png.classify.json").read_text())
    assert len(doc["analysis"]["temp"]) == 2  # the edited prompts are a new result beside the old
    newest = max(doc["analysis"]["temp"].values(), key=lambda e: e["created_at"])
    assert newest["result"]["top"] == "cold"


def test_prompts_are_encoded_up_to_their_end_token_with_the_same_result():
    import open_clip
    import torch

    from analyzer_clip.models import trims_text
    from analyzer_clip.testing import tiny_clip

    model, preprocess = tiny_clip()
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    real = embedder.OpenClipEmbedder("tiny-clip-test/random", model, preprocess, tokenizer, "cpu")
    prompts = ["a photo of a dog.", "a bad photo of the lighthouse keeper's old cat.", "tiger", "a"]

    trimmed = real.encode_texts(prompts)

    assert trims_text(model)
    with torch.no_grad():
        full = model.encode_text(tokenizer(prompts)).float()
    full = (full / full.norm(dim=-1, keepdim=True)).numpy()
    assert np.allclose(trimmed, full, atol=1e-5)


def test_big_label_sets_keep_the_most_confident_labelsbest_first():
    from analyzer_classify import best_first

    rng = np.random.default_rng(0)
    conf = rng.random((50, 300)).astype(np.float32)
    conf[3, [5, 9]] = 2.0  # a tie: the lower index first

    kept = best_first(conf, 10)

    assert (kept == np.argsort(-conf, axis=1, kind="stable")[:, :10]).all()
    assert list(kept[3, :2]) == [5, 9]


def test_where_the_weights_are_is_remembered_so_a_relabel_imports_no_torch(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    checkpoint = tmp_path / "open_clip_model.safetensors"
    checkpoint.write_bytes(b"weights")
    record = tmp_path / "weights.json"
    record.write_text(json.dumps({"ViT-B-32/openai": str(checkpoint)}))

    embedder.check("ViT-B-32/openai", None, record)  # found where it was: nothing to fetch

    checkpoint.unlink()
    with pytest.raises(Exception):  # noqa: B017 - whatever open_clip raises for weights it cannot fetch
        embedder.check("ViT-B-32/openai", None, record)


def test_classifying_from_stored_embeddings_imports_no_torch(photos, tmp_path):
    import subprocess
    import sys

    script = f"""
import os, sys
os.environ.update(ANALYZER_CLASSIFY__MODEL="colour/test", ANALYZER_CLASSIFY__CACHE_DIR={str(tmp_path / "cache")!r})
from analyzer_classify import embedder
from analyzer_classify.testing import ColourEmbedder
embedder.preload(ColourEmbedder())
from analyzer.cli import main
for labels in ("red,green,blue", "red,green,blue,grey"):
    assert main(["classify", {str(photos)!r}, "--labels", labels, "--progress", "plain"]) == 0
print("torch imported:", "torch" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)

    assert done.returncode == 0, done.stderr
    assert "torch imported: False" in done.stdout
