"""Classification metrics (plugins/analyzer_classify/metrics.py): ground truth from folders, CSV and
JSONL files; scores against it, checked against values computed by hand; statistics without truth;
and the CSV, PNG and text they are written as."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
from pathlib import Path

import pytest

from analyzer.errors import ConfigError
from analyzer_classify.metrics import (
    Evaluation,
    describe,
    draw_confusion_png,
    evaluate,
    format_side_by_side,
    format_table,
    read_truth,
    side_by_side_png,
    write_confusion_csv,
)

needs_sklearn = pytest.mark.skipif(importlib.util.find_spec("sklearn") is None, reason="scikit-learn is not installed")
needs_numpy = pytest.mark.skipif(importlib.util.find_spec("numpy") is None, reason="numpy is not installed")

LABELS = ["cat", "dog", "bird"]

# Ten images, three labels. Each image's labels best first; the top-1 is wrong for images 2, 6 and 8.
TRUTH = ["cat", "cat", "cat", "cat", "dog", "dog", "dog", "bird", "bird", "bird"]
RANKED = [
    ["cat", "dog", "bird"],
    ["cat", "bird", "dog"],
    ["dog", "cat", "bird"],  # a cat taken for a dog; cat second
    ["cat", "dog", "bird"],
    ["dog", "cat", "bird"],
    ["dog", "bird", "cat"],
    ["cat", "bird", "dog"],  # a dog taken for a cat; dog only third
    ["bird", "dog", "cat"],
    ["dog", "bird", "cat"],  # a bird taken for a dog; bird second
    ["bird", "cat", "dog"],
]
# By hand:               predicted  cat dog bird
CONFUSION = [  # truth cat            3   1   0
    [3, 1, 0],  #        dog          1   2   0
    [1, 2, 0],  #        bird         0   1   2
    [0, 1, 2],
]
# precision = right / predicted as it (a column); recall = right / truly it (a row)
PRECISION = {"cat": 3 / 4, "dog": 2 / 4, "bird": 2 / 2}
RECALL = {"cat": 3 / 4, "dog": 2 / 3, "bird": 2 / 3}
F1 = {"cat": 3 / 4, "dog": 4 / 7, "bird": 4 / 5}  # 2PR / (P + R)


def approx(value: float) -> object:
    return pytest.approx(value, abs=1e-9)


# --- scores against the truth ---------------------------------------------------------------------


@needs_sklearn
def test_accuracy_per_class_scores_and_confusion_matrix_match_the_hand_computed_ones():
    e = evaluate(TRUTH, RANKED, LABELS, k=2)

    assert e.n == 10
    assert e.correct == 7
    assert e.accuracy == approx(0.7)
    assert e.rows == e.columns == LABELS
    assert e.matrix == CONFUSION
    for label in LABELS:
        scores = e.per_class[label]
        assert scores.precision == approx(PRECISION[label])
        assert scores.recall == approx(RECALL[label])
        assert scores.f1 == approx(F1[label])
    assert [s.support for s in e.per_class.values()] == [4, 3, 3]
    assert e.macro_precision == approx((3 / 4 + 2 / 4 + 1) / 3)
    assert e.macro_recall == approx((3 / 4 + 2 / 3 + 2 / 3) / 3)
    assert e.macro_f1 == approx((3 / 4 + 4 / 7 + 4 / 5) / 3)
    assert e.unknown == 0
    assert e.outside == {}


@needs_sklearn
def test_top_k_accuracy_counts_the_true_label_among_the_first_k():
    # top-2 recovers images 2 and 8 (their true label is second), not 6 (third)
    assert evaluate(TRUTH, RANKED, LABELS, k=1).top_k_accuracy == approx(0.7)
    two = evaluate(TRUTH, RANKED, LABELS, k=2)
    assert (two.k, two.top_k_correct, two.top_k_accuracy) == (2, 9, approx(0.9))
    assert evaluate(TRUTH, RANKED, LABELS, k=3).top_k_accuracy == approx(1.0)
    assert evaluate(TRUTH, RANKED, LABELS).k == 5  # more than there are labels: every one counts


@needs_sklearn
def test_unknown_is_wrong_and_a_column_of_its_own_only_when_it_occurs():
    e = evaluate(["cat", "dog", "dog"], [["cat"], ["unknown"], ["unknown", "dog"]], LABELS, k=2)

    assert e.accuracy == approx(1 / 3)
    assert e.unknown == 2
    assert e.columns == ["cat", "dog", "bird", "unknown"]
    assert e.rows == ["cat", "dog", "bird"]
    assert e.matrix == [
        [1, 0, 0, 0],
        [0, 0, 0, 2],
        [0, 0, 0, 0],
    ]
    assert e.per_class["dog"].recall == 0.0
    assert e.top_k_correct == 2  # the third image's dog is second
    assert evaluate(["cat"], [[]], LABELS).columns[-1] == "unknown"  # no labels at all is unknown too


@needs_sklearn
def test_true_labels_outside_the_label_set_are_counted_listed_and_never_right():
    truth = ["cat", "cat", "tiger", "dog", "tiger"]
    ranked = [["cat"], ["dog"], ["cat"], ["dog"], ["tiger"]]  # a stale "tiger" prediction is no label of the set
    e = evaluate(truth, ranked, ["cat", "dog"])

    assert e.outside == {"tiger": 2}
    assert e.outside_images == 2
    assert e.rows == ["cat", "dog", "tiger"]
    assert e.columns == ["cat", "dog", "tiger"]
    assert e.matrix == [
        [1, 1, 0],
        [0, 1, 0],
        [1, 0, 1],  # even predicted as "tiger", a tiger is wrong: tiger is not in the set
    ]
    assert e.accuracy == approx(2 / 5)
    assert e.per_class["tiger"].recall == 0.0
    assert e.per_class["tiger"].support == 2
    # cat: right 1 of 2 predicted, 1 of 2 true; dog: 1 of 2, 1 of 1; tiger 0 and 0
    assert e.macro_recall == approx((1 / 2 + 1 + 0) / 3)
    assert e.macro_precision == approx((1 / 2 + 1 / 2 + 0) / 3)
    report = e.to_dict()["outside_label_set"]
    assert report["labels"] == {"tiger": 2}
    assert "never" in report["note"]
    assert "tiger (2)" in format_table(e)
    assert "never" in format_table(e)


@needs_sklearn
def test_a_big_label_set_keeps_only_the_labels_that_occur():
    labels = [f"label{i}" for i in range(200)]
    e = evaluate(["label3", "label7"], [["label3"], ["label150"]], labels)
    assert e.rows == e.columns == ["label3", "label7", "label150"]
    assert e.matrix == [[1, 0, 0], [0, 0, 1], [0, 0, 0]]
    assert e.macro_recall == approx((1 + 0 + 0) / 3)


@needs_sklearn
def test_the_evaluation_is_json_ready():
    e = evaluate(TRUTH, RANKED, LABELS, k=2)
    doc = json.loads(json.dumps(e.to_dict()))
    assert doc["accuracy"] == approx(0.7)
    assert doc["top_k_accuracy"] == approx(0.9)
    assert doc["confusion"] == {"rows": LABELS, "columns": LABELS, "matrix": CONFUSION}
    assert doc["per_class"]["dog"] == {"precision": 0.5, "recall": approx(2 / 3), "f1": approx(4 / 7), "support": 3}
    assert e.confusion_axes() == (LABELS, LABELS)
    assert e.confusion == CONFUSION


@needs_sklearn
@pytest.mark.parametrize(
    ("truth", "ranked", "labels", "k", "message"),
    [
        (["cat"], [], LABELS, 5, "1 true labels but 0 predictions"),
        ([], [], LABELS, 5, "nothing to evaluate"),
        (["cat"], [["cat"]], ["cat", "cat"], 5, "twice"),
        (["cat"], [["cat"]], LABELS, 0, "k must be"),
    ],
)
def test_what_cannot_be_evaluated_is_a_value_error(truth, ranked, labels, k, message):
    with pytest.raises(ValueError, match=message):
        evaluate(truth, ranked, labels, k=k)


# --- without truth --------------------------------------------------------------------------------


@needs_numpy
def test_describe_summarises_scores_label_use_and_balance():
    d = describe(
        confidences=[0.9, 0.5, 0.2, 0.8],
        top_scores=[0.30, 0.25, 0.20, 0.28],
        top_labels=["cat", "cat", "unknown", "dog"],
        labels=LABELS,
        threshold=0.5,
    )

    assert d["n"] == 4
    conf = d["confidence"]
    assert conf["mean"] == approx(0.6)
    assert conf["std"] == approx(math.sqrt((0.3**2 + 0.1**2 + 0.4**2 + 0.2**2) / 4))  # population std
    assert (conf["min"], conf["max"]) == (0.2, 0.9)
    assert conf["p50"] == approx(0.65)  # between 0.5 and 0.8
    assert conf["p5"] == approx(0.2 + 0.15 * 0.3)  # 5% of the way through three gaps: 0.15 into the first
    assert conf["p95"] == approx(0.8 + 0.85 * 0.1)
    assert d["similarity"]["mean"] == approx(1.03 / 4)
    assert d["similarity"]["min"] == approx(0.20)
    assert d["above_threshold"] == {"count": 3, "share": 0.75}  # 0.5 itself counts, as min_confidence keeps it
    # two of three labels used, two cats to one dog: entropy of (2/3, 1/3) over that of three even labels
    assert d["diversity"]["used"] == 2
    assert d["diversity"]["share_used"] == approx(2 / 3)
    expected = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3)) / math.log(3)
    assert d["diversity"]["entropy"] == approx(expected)
    balance = d["balance"]
    assert balance["counts"] == {
        "cat": {"count": 2, "share": 0.5},
        "dog": {"count": 1, "share": 0.25},
        "unknown": {"count": 1, "share": 0.25},
    }
    assert balance["unknown"] == 1
    assert balance["unused"] == 1  # bird
    assert balance["largest_to_smallest"] == 2.0
    json.dumps(d)


@needs_numpy
def test_describe_even_use_has_entropy_one_and_nothing_has_no_statistics():
    even = describe([0.5] * 3, [0.3] * 3, LABELS, LABELS, 0.25)
    assert even["diversity"]["entropy"] == approx(1.0)
    assert even["balance"]["largest_to_smallest"] == 1.0
    empty = describe([], [], [], LABELS, 0.25)
    assert empty["n"] == 0
    assert empty["similarity"] is None
    assert empty["diversity"]["entropy"] is None


# --- ground truth ---------------------------------------------------------------------------------


def touch(*paths: Path) -> list[Path]:
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    return list(paths)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "photos"


@pytest.fixture
def images(root: Path) -> list[Path]:
    return touch(root / "dog" / "a.png", root / "cat" / "b.png", root / "c.png", root / "zoo" / "bird" / "d.png")


def test_folders_give_each_image_its_folders_name_and_none_to_the_root(images, root):
    a, b, _, d = images
    truth = read_truth("folders", images, root)
    assert truth == {a: "dog", b: "cat", d: "bird"}
    assert truth.unlabelled == 1  # c.png is directly in the root
    assert truth.source == "folders"


def test_folders_with_every_image_in_the_root_is_a_config_error(root):
    with pytest.raises(ConfigError, match="sub-folder"):
        read_truth("folders", touch(root / "a.png", root / "b.png"), root)


def test_csv_without_header_relative_to_the_root(images, root, tmp_path):
    a, b, c, _ = images
    truth_file = tmp_path / "truth.csv"
    truth_file.write_text("dog/a.png,dog\ncat/b.png , cat\n\nc.png,cat\n", encoding="utf-8")
    truth = read_truth(str(truth_file), images, root)
    assert truth == {a: "dog", b: "cat", c: "cat"}
    assert truth.unmatched == []
    assert truth.unlabelled == 1


def test_csv_with_header_bom_crlf_and_paths_of_every_kind(images, root, tmp_path):
    a, b, c, d = images
    folder = tmp_path / "labels"
    folder.mkdir()
    truth_file = folder / "truth.csv"
    rows = [
        "Path,Label",
        "dog/a.png,dog",  # relative to the root
        "../photos/cat/b.png,cat",  # relative to the truth file's folder
        f"{d},bird",  # absolute
        "zoo\\bird\\d.png,bird",  # written on Windows: the same image, the same label
        '"c.png","a cat, maybe"',  # quoted, with a comma
        "gone.png,dog",  # no such image: counted, not an error
    ]
    truth_file.write_text("\r\n".join(rows) + "\r\n", encoding="utf-8-sig")  # as Excel saves it
    truth = read_truth(str(truth_file), images, root)
    assert truth == {a: "dog", b: "cat", c: "a cat, maybe", d: "bird"}
    assert truth.unmatched == ["gone.png"]


def test_a_relative_truth_file_name_is_also_looked_for_in_the_root(images, root):
    (root / "truth.csv").write_text("image,label\ndog/a.png,dog\n", encoding="utf-8")
    assert read_truth("truth.csv", images, root) == {images[0]: "dog"}


def test_jsonl_one_object_a_line(images, root, tmp_path):
    a, b, *_ = images
    truth_file = tmp_path / "truth.jsonl"
    lines = [
        json.dumps({"path": "dog/a.png", "label": "dog"}),
        "",
        json.dumps({"path": str(b), "label": "cat", "note": "extra keys are ignored"}),
        json.dumps({"path": "nowhere.png", "label": "cat"}),
    ]
    truth_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    truth = read_truth(str(truth_file), images, root)
    assert truth == {a: "dog", b: "cat"}
    assert truth.unmatched == ["nowhere.png"]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("t.csv", "dog/a.png,dog\ncat/b.png,cat\nc.png,cat,extra\n", r"t\.csv, line 3: expected two columns"),
        ("t.csv", "path,label\ndog/a.png\n", r"t\.csv, line 2: expected two columns"),
        ("t.csv", "dog/a.png,dog\n,cat\n", r"t\.csv, line 2: expected two columns"),
        ("t.jsonl", '{"path": "dog/a.png", "label": "dog"}\n{"path": "cat/b.png",\n', r"t\.jsonl, line 2: not JSON"),
        ("t.jsonl", '{"path": "dog/a.png"}\n', r't\.jsonl, line 1: "label" is missing'),
        ("t.jsonl", '\n["dog/a.png", "dog"]\n', r"t\.jsonl, line 2: expected a JSON object"),
        ("t.jsonl", '{"path": "dog/a.png", "label": 3}\n', r'line 1: "label" is missing, empty or not a string'),
    ],
)
def test_a_malformed_line_is_a_config_error_naming_the_file_and_line(images, root, tmp_path, name, text, message):
    truth_file = tmp_path / name
    truth_file.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        read_truth(str(truth_file), images, root)


def test_a_file_that_labels_no_image_is_a_config_error(images, root, tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("path,label\n\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="no entries"):
        read_truth(str(empty), images, root)
    strangers = tmp_path / "strangers.csv"
    strangers.write_text("x.png,dog\ny.png,cat\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="none of the 2 paths"):
        read_truth(str(strangers), images, root)
    with pytest.raises(ConfigError, match="not found"):
        read_truth(str(tmp_path / "missing.csv"), images, root)


def test_one_image_given_two_labels_is_a_config_error(images, root, tmp_path):
    truth_file = tmp_path / "t.csv"
    truth_file.write_text(f"dog/a.png,dog\n{images[0]},cat\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"line 2: .* labelled 'cat' here but 'dog' on line 1"):
        read_truth(str(truth_file), images, root)


def test_a_file_that_is_not_utf8_is_a_config_error_with_its_line(images, root, tmp_path):
    truth_file = tmp_path / "t.csv"
    truth_file.write_bytes(b"dog/a.png,dog\ncat/b.png,ch\xe2t\n")
    with pytest.raises(ConfigError, match="line 2: not UTF-8"):
        read_truth(str(truth_file), images, root)


# --- files and text -------------------------------------------------------------------------------


def test_the_confusion_csv_round_trips(tmp_path):
    path = tmp_path / "out" / "confusion.csv"
    write_confusion_csv(path, LABELS, [*LABELS, "unknown"], [[3, 1, 0, 0], [1, 2, 0, 1], [0, 1, 2, 0]])
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["truth\\predicted", "cat", "dog", "bird", "unknown"]
    assert {row[0]: [int(v) for v in row[1:]] for row in rows[1:]} == {
        "cat": [3, 1, 0, 0],
        "dog": [1, 2, 0, 1],
        "bird": [0, 1, 2, 0],
    }
    assert sorted(p.name for p in path.parent.iterdir()) == ["confusion.csv"]  # no temporary file left
    with pytest.raises(ValueError, match="3x4 matrix"):
        write_confusion_csv(path, LABELS, [*LABELS, "unknown"], [[1, 2]])


@needs_sklearn
def test_the_confusion_png_is_a_real_png(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is not installed (the clip extra)")
    from PIL import Image

    path = tmp_path / "report" / "confusion.png"
    draw_confusion_png(path, evaluate(TRUTH, RANKED, LABELS), "zero-shot")
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.mode == "RGBA"
        assert image.width > 100 and image.height > 100
    assert sorted(p.name for p in path.parent.iterdir()) == ["confusion.png"]  # no temporary file left


@needs_sklearn
def test_side_by_side_png_and_a_matrix_too_big_for_numbers(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is not installed (the clip extra)")
    from PIL import Image

    zero = evaluate(TRUTH, RANKED, LABELS)
    refined = evaluate(TRUTH, [[t] for t in TRUTH], LABELS)
    side_by_side_png(tmp_path / "both.png", zero, refined)
    with Image.open(tmp_path / "both.png") as image:
        assert image.format == "PNG"
        assert image.width > image.height
    labels = [f"label {i}" for i in range(31)]  # one more than gets numbers in its cells
    big = evaluate(labels, [[labels[(i + 1) % 31]] for i in range(31)], labels)
    draw_confusion_png(tmp_path / "big.png", big, "31 classes")
    with Image.open(tmp_path / "big.png") as image:
        assert image.format == "PNG"


@needs_sklearn
def test_the_text_report_has_scores_a_class_table_and_the_matrix():
    text = format_table(evaluate(TRUTH, RANKED, LABELS, k=2))
    lines = text.splitlines()
    assert lines[0].split() == ["accuracy", "70.0%", "(7", "of", "10)"]
    assert lines[1].split() == ["top-2", "accuracy", "90.0%", "(9", "of", "10)"]
    assert lines[3].split() == ["class", "precision", "recall", "f1", "support"]
    assert next(line for line in lines if line.startswith("cat ")).split() == ["cat", "0.750", "0.750", "0.750", "4"]
    assert next(line for line in lines if line.startswith("dog ")).split() == ["dog", "0.500", "0.667", "0.571", "3"]
    matrix = lines[lines.index("confusion matrix (rows: truth, columns: predicted)") + 1 :]
    assert matrix[0].split() == ["truth", "\\", "predicted", "cat", "dog", "bird"]
    assert [row.split()[1:] for row in matrix[1:]] == [["3", "1", "0"], ["1", "2", "0"], ["0", "1", "2"]]


@needs_sklearn
def test_long_label_names_are_abbreviated_in_the_text_matrix():
    labels = ["golden retriever", "golden eagle", "cat"]
    text = format_table(evaluate(labels, [[x] for x in labels], labels))
    lines = text.splitlines()
    # cut to eight characters both goldens would read "golden …": the columns are numbered instead
    assert lines[-5].split() == ["truth", "\\", "predicted", "1", "2", "3"]
    assert lines[-1] == "columns: 1 golden retriever, 2 golden eagle, 3 cat"
    labels = ["a very long label", "cat"]
    text = format_table(evaluate(labels, [[x] for x in labels], labels))
    assert "a very …" in text  # a column head
    labels = ["a photo of a rather large dog in the snow", "a photo of a rather large cat in the snow"]
    text = format_table(evaluate(labels, [[x] for x in labels], labels))
    # cut in the middle, where they differ, and longer where a shorter cut would make them the same
    assert "\na photo of a ra…at in the snow  " in text  # the class table (30 characters)
    assert "\na photo of a rather …rge cat in the snow  " in text  # the matrix: 20 would end both in " the snow"


@needs_sklearn
def test_side_by_side_text_gives_the_change_in_points():
    zero = evaluate(TRUTH, RANKED, LABELS)
    refined = evaluate(TRUTH, [[t] for t in TRUTH[:9]] + [["dog"]], LABELS)  # one bird still wrong
    text = format_side_by_side(zero, refined)
    rows = {line.split("  ")[0].strip(): line.split() for line in text.splitlines() if line.strip()}
    assert rows["accuracy"][-3:] == ["90.0%", "+20.0", "pts"]
    assert rows["accuracy"][1] == "70.0%"
    assert rows["cat"][-4:] == ["75.0%", "100.0%", "+25.0", "pts"]
    assert rows["bird"][-4:] == ["66.7%", "66.7%", "+0.0", "pts"]
    assert isinstance(zero, Evaluation)
