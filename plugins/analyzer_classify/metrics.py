"""How good a classification is: ground truth, scores against it, what can be said without it, and
their drawing.

Imported by the classify command only when metrics are asked for. numpy, scikit-learn and
matplotlib are imported inside the functions that use them, so importing this module is cheap.

Ground truth
    :func:`read_truth` gives each image's true label: its folder's name (``"folders"``), or a line of
    a CSV (``path,label``, header optional) or JSONL (``{"path": ..., "label": ...}``) file. The
    result, a :class:`Truth`, is a dict image -> label that also keeps the file's paths that matched
    no image. A malformed line is a :class:`~analyzer.errors.ConfigError` naming the file and line.

With truth
    :func:`evaluate` compares each image's ranked predictions with its true label: accuracy, top-k
    accuracy, per-class precision/recall/F1/support, their macro averages, and the confusion matrix.
    The result is an :class:`Evaluation` (``.to_dict()`` for JSON).

Without truth
    :func:`describe` summarises what the scores alone say: the distributions of the top-1 cosine
    similarity and of the confidence, how many labels are used and how evenly (normalised entropy),
    the share of images at or above the confidence threshold, and the balance between classes.

Writing (every file atomically: a temporary file in the same folder, then a rename)
    :func:`write_confusion_csv` writes a confusion matrix as CSV; :func:`draw_confusion_png` draws one
    (counts in the cells, colour normalised per truth row); :func:`side_by_side_png` draws a
    zero-shot and a refined evaluation next to each other.

Text
    :func:`format_table` is the report section of one evaluation (for a terminal and report.txt);
    :func:`format_side_by_side` compares a zero-shot evaluation with a refined one.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from analyzer.errors import ConfigError
from analyzer.sidecar import atomic_write_bytes

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.image import AxesImage

log = logging.getLogger(__name__)

__all__ = [
    "FOLDERS",
    "UNKNOWN",
    "ClassScores",
    "Evaluation",
    "Truth",
    "describe",
    "draw_confusion_png",
    "evaluate",
    "format_side_by_side",
    "format_table",
    "read_truth",
    "side_by_side_png",
    "write_confusion_csv",
]

FOLDERS = "folders"
"""The truth spec that takes each image's label from its folder's name."""
UNKNOWN = "unknown"
"""The top-1 of an image whose best confidence is below ``min_confidence``: always wrong."""
HEADER_NAMES = frozenset({"path", "file", "image"})
"""A CSV's first row is a header when its first cell is one of these (any case)."""
PATH_KEYS = ("path", "file", "image")
"""The keys a JSONL line may give its path under (the first one present is used)."""
JSONL_SUFFIXES = frozenset({".jsonl", ".ndjson", ".json"})
"""Truth files read as JSON lines; any other is read as CSV."""
ALL_LABELS_UP_TO = 50
"""A label set this small has every label in the per-class table and the confusion matrix; a bigger
one (the concept bank) only the labels that occur in the truth or the predictions."""
CELL_NUMBERS_UP_TO = 30
"""A drawn matrix with more rows or columns than this has no numbers in its cells."""
TICK_LABELS_UP_TO = 100
"""A drawn matrix with more rows or columns than this has no label names on its axes."""
TEXT_MATRIX_UP_TO = 30
"""A text matrix with more columns than this is left out of :func:`format_table` (see the CSV)."""
OUTSIDE_NOTE = "truth labels not in the label set can never be predicted, so these images always count as wrong"


# --- ground truth ---------------------------------------------------------------------------------


class Truth(dict[Path, str]):
    """Each image's true label, keyed by the image's path as given to :func:`read_truth`."""

    def __init__(self, labels: dict[Path, str], source: str, unmatched: Sequence[str] = (), unlabelled: int = 0):
        super().__init__(labels)
        self.source = source
        """Where the labels come from: ``"folders"`` or the truth file's path."""
        self.unmatched = list(unmatched)
        """Paths in the truth file that are none of the images (counted and logged, not an error)."""
        self.unlabelled = unlabelled
        """Images that have no label in the truth (they are left out of the evaluation)."""


def read_truth(spec: str, images: Sequence[Path], root: Path) -> Truth:
    """The true label of each of ``images`` (under ``root``) that has one.

    ``spec`` is ``"folders"`` (an image's label is its parent folder's name; an image directly in
    the root has none) or the path of a CSV or JSONL file (``.jsonl``, ``.ndjson`` or ``.json``).
    A CSV has ``path,label`` rows, with an optional header whose first cell is ``path``, ``file`` or
    ``image``; a JSONL file has one ``{"path": ..., "label": ...}`` object a line. A path may be
    absolute, relative to the root or relative to the truth file's folder. Paths that match no image
    are counted in :attr:`Truth.unmatched`. Raises ConfigError for a missing or unreadable file, a
    malformed line (naming the line), a path given two labels, and a truth that labels no image.
    """
    if spec == FOLDERS:
        return _truth_from_folders(images, root)
    path = _truth_file(spec, root)
    entries = _read_jsonl(path) if path.suffix.lower() in JSONL_SUFFIXES else _read_csv(path)
    return _match(entries, path, images, root)


def _truth_from_folders(images: Sequence[Path], root: Path) -> Truth:
    top = _resolve(root)
    labels: dict[Path, str] = {}
    for image in images:
        folder = Path(os.path.abspath(image)).parent  # the folder's own name, even through a symlink
        if _resolve(folder) != top and folder.name:
            labels[image] = folder.name
    if not labels:
        raise ConfigError(
            f"no image under {root} is in a sub-folder: with truth 'folders' each image's label is its folder's "
            "name (root/dog/a.jpg is a dog); move the images into one folder per label or give a CSV/JSONL file"
        )
    return Truth(labels, FOLDERS, unlabelled=len(set(images)) - len(labels))


def _truth_file(spec: str, root: Path) -> Path:
    path = Path(spec).expanduser()
    if not path.is_absolute() and not path.exists() and (root / path).exists():
        path = root / path
    if not path.is_file():
        raise ConfigError(
            f"truth file {spec} not found: give 'folders' or a CSV (path,label) or JSONL "
            '({"path": ..., "label": ...}) file'
        )
    return path


Entry = tuple[int, str, str]
"""A truth file's line number, path and label."""


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read truth file {path}: {exc.strerror or exc}") from exc
    try:
        return raw.decode("utf-8-sig")  # a BOM (as Excel writes) is dropped
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{path}, line {line}: not UTF-8 text ({exc.reason}); save the file as UTF-8") from exc


def _read_csv(path: Path) -> list[Entry]:
    reader = csv.reader(io.StringIO(_read_text(path), newline=""))
    entries: list[Entry] = []
    first = True
    try:
        for row in reader:
            cells = [cell.strip() for cell in row]
            while cells and not cells[-1]:  # a trailing comma, or a blank line
                cells.pop()
            if not cells:
                continue
            if first:
                first = False
                if cells[0].lower() in HEADER_NAMES:
                    continue
            if len(cells) != 2 or not cells[0] or not cells[1]:
                raise ConfigError(
                    f"{path}, line {reader.line_num}: expected two columns, path,label; found {len(row)} "
                    f"cell(s): {','.join(row)!r}"
                )
            entries.append((reader.line_num, cells[0], cells[1]))
    except csv.Error as exc:
        raise ConfigError(f"{path}, line {reader.line_num}: not valid CSV ({exc})") from exc
    return entries


def _read_jsonl(path: Path) -> list[Entry]:
    entries: list[Entry] = []
    example = '{"path": "dogs/a.jpg", "label": "dog"}'
    # split on "\n" only: str.splitlines would also split on characters allowed inside JSON strings
    for number, line in enumerate(_read_text(path).split("\n"), 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"{path}, line {number}: not JSON ({exc.msg}, column {exc.colno}); expected one object a line, "
                f"like {example}"
            ) from exc
        if not isinstance(doc, dict):
            raise ConfigError(f"{path}, line {number}: expected a JSON object like {example}, found {line.strip()!r}")
        name = next((doc[key] for key in PATH_KEYS if key in doc), None)
        label = doc.get("label")
        for key, value in (("path", name), ("label", label)):
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(
                    f'{path}, line {number}: "{key}" is missing, empty or not a string; expected {example}'
                )
        assert isinstance(name, str) and isinstance(label, str)
        entries.append((number, name.strip(), label.strip()))
    return entries


def _match(entries: list[Entry], path: Path, images: Sequence[Path], root: Path) -> Truth:
    if not entries:
        raise ConfigError(f"truth file {path} has no entries: expected path,label lines")
    by_resolved: dict[Path, Path] = {}
    for image in images:
        by_resolved.setdefault(_resolve(image), image)
    bases = (_resolve(root), _resolve(path.parent))
    labels: dict[Path, str] = {}
    lines: dict[Path, int] = {}
    unmatched: list[str] = []
    for line, name, label in entries:
        found = _find(name, by_resolved, bases)
        if found is None:
            unmatched.append(name)
            continue
        if found in labels and labels[found] != label:
            raise ConfigError(
                f"{path}, line {line}: {name} is labelled {label!r} here but {labels[found]!r} on line {lines[found]}"
            )
        labels[found], lines[found] = label, line
    if not labels:
        raise ConfigError(
            f"none of the {len(entries)} paths in {path} is one of the {len(images)} images under {root} "
            f"(the first is {entries[0][1]!r}): a path may be absolute, relative to the root or to the truth "
            "file's folder"
        )
    if unmatched:
        log.warning(
            "%d of the %d paths in %s match no image, e.g. %s", len(unmatched), len(entries), path, unmatched[0]
        )
    return Truth(labels, str(path), unmatched, unlabelled=len(set(images)) - len(labels))


def _find(name: str, by_resolved: dict[Path, Path], bases: Iterable[Path]) -> Path | None:
    names = [name, name.replace("\\", "/")] if "\\" in name else [name]  # a path written on Windows
    for candidate in map(Path, names):
        tries = [candidate] if candidate.is_absolute() else [base / candidate for base in bases]
        for attempt in tries:
            found = by_resolved.get(_resolve(attempt))
            if found is not None:
                return found
    return None


def _resolve(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a symlink loop, an unreadable folder
        return Path(os.path.abspath(path))


# --- metrics with truth ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassScores:
    """One class's scores: of the images predicted as it, the share that are (precision); of the
    images that are it, the share predicted as it (recall); their harmonic mean (F1); its images."""

    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class Evaluation:
    """Predictions scored against the truth (see :func:`evaluate`)."""

    n: int
    """Images evaluated."""
    correct: int
    accuracy: float
    """Share of images whose top-1 is their true label."""
    k: int
    top_k_correct: int
    top_k_accuracy: float
    """Share of images whose true label is among their first ``k`` labels."""
    labels: list[str]
    """The label set, in its order."""
    per_class: dict[str, ClassScores]
    """Per truth class, in the order of the matrix's rows."""
    macro_precision: float
    macro_recall: float
    macro_f1: float
    """Unweighted means over the classes that occur in the truth or the predictions."""
    rows: list[str]
    """The confusion matrix's rows: true labels (those of the set, then those outside it)."""
    columns: list[str]
    """Its columns: predicted labels (those of the set, then ``unknown`` and any other prediction outside the
    set, if predicted)."""
    matrix: list[list[int]]
    """``matrix[i][j]``: images of true label ``rows[i]`` predicted as ``columns[j]``."""
    outside: dict[str, int]
    """Truth labels that are not in the label set, with their images: they can never be right."""
    unknown: int
    """Images whose top-1 is ``unknown`` (below ``min_confidence``): counted as wrong."""

    @property
    def outside_images(self) -> int:
        """Images whose true label is not in the label set."""
        return sum(self.outside.values())

    @property
    def confusion(self) -> list[list[int]]:
        """The confusion matrix (:attr:`matrix`)."""
        return self.matrix

    def confusion_axes(self) -> tuple[list[str], list[str]]:
        """The confusion matrix's rows (truth) and columns (predicted): ``write_confusion_csv(path,
        *e.confusion_axes(), e.confusion)``."""
        return list(self.rows), list(self.columns)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "n": self.n,
            "correct": self.correct,
            "accuracy": self.accuracy,
            "k": self.k,
            "top_k_correct": self.top_k_correct,
            "top_k_accuracy": self.top_k_accuracy,
            "labels": list(self.labels),
            "per_class": {
                name: {"precision": s.precision, "recall": s.recall, "f1": s.f1, "support": s.support}
                for name, s in self.per_class.items()
            },
            "macro": {"precision": self.macro_precision, "recall": self.macro_recall, "f1": self.macro_f1},
            "confusion": {"rows": list(self.rows), "columns": list(self.columns), "matrix": self.matrix},
            "outside_label_set": {
                "labels": dict(self.outside),
                "images": self.outside_images,
                "note": OUTSIDE_NOTE if self.outside else "",
            },
            "unknown": self.unknown,
        }


def evaluate(truth: Sequence[str], ranked: Sequence[Sequence[str]], labels: Sequence[str], k: int = 5) -> Evaluation:
    """Score predictions against the truth.

    ``truth[i]`` is image i's true label and ``ranked[i]`` its predicted labels, best first (an
    empty list counts as ``unknown``). A top-1 of ``unknown`` (when that is not a label of the set)
    is wrong, and is a column of the confusion matrix only if it occurs; so is any other prediction
    outside the set. A true label outside the set can never be right: it is counted in
    :attr:`Evaluation.outside` and is a row (after the set's labels) with precision and recall 0.
    Set labels: every one when the set has at most :data:`ALL_LABELS_UP_TO`, else those that occur.
    Raises ValueError for mismatched lengths, no images, an empty or duplicated label set, or k < 1.
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    label_list = list(labels)
    in_set = set(label_list)
    _check(truth, ranked, label_list, k)
    top1 = [str(r[0]) if len(r) else UNKNOWN for r in ranked]
    # a prediction outside the set gets a token no true label can equal: it is never right
    y_true = list(truth)
    y_pred = [p if p in in_set else "\0" + p for p in top1]
    occurring = set(y_true) | set(top1)
    shown = label_list if len(label_list) <= ALL_LABELS_UP_TO else [x for x in label_list if x in occurring]
    outside = Counter(t for t in y_true if t not in in_set)
    rows = shown + sorted(outside)
    extra = sorted({p for p in top1 if p not in in_set}, key=lambda p: (p != UNKNOWN, p))  # unknown first
    columns = shown + extra
    tokens = list(dict.fromkeys(rows + shown + ["\0" + p for p in extra]))
    full = confusion_matrix(y_true, y_pred, labels=tokens)
    index = {token: i for i, token in enumerate(tokens)}
    col_index = [index[c] for c in shown] + [index["\0" + p] for p in extra]
    matrix = [[int(full[index[r], j]) for j in col_index] for r in rows]

    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=rows, average=None, zero_division=0
    )
    per_class = {
        name: ClassScores(float(precision[i]), float(recall[i]), float(f1[i]), int(support[i]))
        for i, name in enumerate(rows)
    }
    macro_labels = [r for r in rows if r in occurring]
    macro = precision_recall_fscore_support(y_true, y_pred, labels=macro_labels, average="macro", zero_division=0)
    n = len(y_true)
    correct = sum(t == p for t, p in zip(y_true, y_pred, strict=True))
    top_k_correct = sum(t in in_set and t in r[:k] for t, r in zip(y_true, ranked, strict=True))
    return Evaluation(
        n=n,
        correct=correct,
        accuracy=float(accuracy_score(y_true, y_pred)),
        k=k,
        top_k_correct=top_k_correct,
        top_k_accuracy=top_k_correct / n,
        labels=label_list,
        per_class=per_class,
        macro_precision=float(macro[0]),
        macro_recall=float(macro[1]),
        macro_f1=float(macro[2]),
        rows=rows,
        columns=columns,
        matrix=matrix,
        outside=dict(sorted(outside.items())),
        unknown=top1.count(UNKNOWN) if UNKNOWN not in in_set else 0,
    )


def _check(truth: Sequence[str], ranked: Sequence[Sequence[str]], labels: list[str], k: int) -> None:
    if len(truth) != len(ranked):
        raise ValueError(f"{len(truth)} true labels but {len(ranked)} predictions")
    if not truth:
        raise ValueError("nothing to evaluate: no image has a true label")
    if not labels or len(set(labels)) != len(labels):
        raise ValueError("the label set is empty or has a label twice")
    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")


# --- without truth --------------------------------------------------------------------------------


def describe(
    confidences: Sequence[float] | npt.NDArray[Any],
    top_scores: Sequence[float] | npt.NDArray[Any],
    top_labels: Sequence[str],
    labels: Sequence[str],
    threshold: float,
) -> dict[str, Any]:
    """What the scores say without truth, as a JSON-ready dict.

    Per image: its top-1 confidence, its top-1 cosine similarity and its top-1 label (``unknown``
    allowed). Returns ``n``; ``similarity`` and ``confidence``, each {mean, std (population), min,
    p5, p50, p95, max} (None when there are no images); ``above_threshold`` {count, share} of
    confidences at or above ``threshold`` (as ``min_confidence`` keeps them); ``diversity``
    {labels, used, share_used, entropy}: set labels used as a top-1, and the entropy of the top-1
    distribution over the set divided by log(number of labels) (0: one label for all, 1: even);
    ``balance`` {counts: label -> {count, share}, most first, ``unknown`` included; unknown;
    unused: set labels never a top-1; largest_to_smallest: the ratio of the most used label's count
    to the least used one's, among labels used (None if none)}.
    """
    import numpy as np

    conf = np.asarray(confidences, dtype=np.float64).ravel()
    sims = np.asarray(top_scores, dtype=np.float64).ravel()
    if not len(conf) == len(sims) == len(top_labels):
        raise ValueError(f"{len(conf)} confidences, {len(sims)} similarities and {len(top_labels)} labels")
    n = len(top_labels)
    label_list = list(dict.fromkeys(labels))
    counts = Counter(top_labels)
    used = {name: counts[name] for name in label_list if counts[name]}
    above = int(np.count_nonzero(conf >= threshold))
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return {
        "n": n,
        "threshold": threshold,
        "similarity": _distribution(sims),
        "confidence": _distribution(conf),
        "above_threshold": {"count": above, "share": above / n if n else None},
        "diversity": {
            "labels": len(label_list),
            "used": len(used),
            "share_used": len(used) / len(label_list) if label_list else None,
            "entropy": _normalised_entropy(used.values(), len(label_list)),
        },
        "balance": {
            "counts": {name: {"count": count, "share": count / n} for name, count in ordered},
            "unknown": counts[UNKNOWN] if UNKNOWN not in label_list else 0,
            "unused": len(label_list) - len(used),
            "largest_to_smallest": max(used.values()) / min(used.values()) if used else None,
        },
    }


def _distribution(values: npt.NDArray[np.float64]) -> dict[str, float] | None:
    import numpy as np

    if not len(values):
        return None
    p5, p50, p95 = np.percentile(values, [5, 50, 95])
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "p5": float(p5),
        "p50": float(p50),
        "p95": float(p95),
        "max": float(values.max()),
    }


def _normalised_entropy(counts: Iterable[int], labels: int) -> float | None:
    values = list(counts)
    total = sum(values)
    if not total:
        return None
    if labels <= 1:
        return 0.0
    entropy = -sum(c / total * math.log(c / total) for c in values if c)
    return entropy / math.log(labels)


# --- files ----------------------------------------------------------------------------------------


def write_confusion_csv(
    path: Path,
    labels_rows: Sequence[str],
    labels_cols: Sequence[str],
    matrix: Sequence[Sequence[int]] | npt.NDArray[Any],
) -> None:
    """Write a confusion matrix as CSV (atomically): a header ``truth\\predicted,<column>...``, then
    one row per true label, ``<label>,<count>...``."""
    cells = [[int(value) for value in row] for row in matrix]
    if len(cells) != len(labels_rows) or any(len(row) != len(labels_cols) for row in cells):
        raise ValueError(f"a {len(labels_rows)}x{len(labels_cols)} matrix was expected")
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["truth\\predicted", *labels_cols])
    for name, row in zip(labels_rows, cells, strict=True):
        writer.writerow([name, *row])
    atomic_write_bytes(Path(path), out.getvalue().encode("utf-8"))


def draw_confusion_png(path: Path, evaluation: Evaluation, title: str = "") -> None:
    """Draw ``evaluation``'s confusion matrix as a PNG (atomically): rows truth, columns predicted,
    each cell coloured by its share of its row and, up to :data:`CELL_NUMBERS_UP_TO` classes, showing
    its count. The title is ``title`` over the accuracy, top-k accuracy and number of images."""
    width, height = _cells_size(evaluation)
    fig = _figure(width + 1.5, height + 0.6)
    ax = fig.add_subplot()
    heading = (
        f"accuracy {evaluation.accuracy:.1%} · top-{evaluation.k} {evaluation.top_k_accuracy:.1%} · n={evaluation.n}"
    )
    image = _draw_matrix(ax, evaluation, f"{title}\n{heading}" if title else heading)
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of the true label's images")
    _save(fig, path)


def side_by_side_png(path: Path, zero_shot: Evaluation, refined: Evaluation) -> None:
    """Draw two confusion matrices next to each other (atomically), titled ``zero-shot`` and
    ``refined`` with their accuracies, sharing one colour scale."""
    sizes = [_cells_size(e) for e in (zero_shot, refined)]
    fig = _figure(sum(w for w, _ in sizes) + 2.0, max(h for _, h in sizes) + 0.6)
    left, right = fig.subplots(1, 2, width_ratios=[w for w, _ in sizes])
    _draw_matrix(left, zero_shot, f"zero-shot (accuracy {zero_shot.accuracy:.1%})")
    image = _draw_matrix(right, refined, f"refined (accuracy {refined.accuracy:.1%})")
    fig.colorbar(image, ax=[left, right], shrink=0.8, label="share of the true label's images")
    _save(fig, path)


def _cells_size(evaluation: Evaluation) -> tuple[float, float]:
    """Inches for a matrix's cells and tick labels: about square cells, within limits."""
    rows, cols = len(evaluation.rows), len(evaluation.columns)
    cell = 0.45 if max(rows, cols) <= CELL_NUMBERS_UP_TO else 0.2
    names = 1.6 if max(rows, cols) <= TICK_LABELS_UP_TO else 0.3
    return min(max(cell * cols + names, 3.5), 24.0), min(max(cell * rows + names, 3.0), 24.0)


def _figure(width: float, height: float) -> Figure:
    # a Figure with its own Agg canvas: no pyplot, so no global state and no GUI backend
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _draw_matrix(ax: Axes, evaluation: Evaluation, title: str) -> AxesImage:
    import numpy as np

    counts = np.asarray(evaluation.matrix, dtype=np.float64).reshape(len(evaluation.rows), len(evaluation.columns))
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
    ax.set_title(title, fontsize=10)
    size = max(counts.shape)
    if size <= TICK_LABELS_UP_TO:
        font = 9 if size <= 12 else 7 if size <= CELL_NUMBERS_UP_TO else 5
        rows = [r + (" *" if r in evaluation.outside else "") for r in _names(evaluation.rows, 24, 40)]
        ax.set_yticks(range(len(rows)), rows, fontsize=font)
        ax.set_xticks(range(counts.shape[1]), _names(evaluation.columns, 24, 40), fontsize=font)
        ax.tick_params(axis="x", labelrotation=90 if size > 12 else 45)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    if size <= CELL_NUMBERS_UP_TO:
        font = 9 if size <= 12 else 7
        for (i, j), count in np.ndenumerate(counts):
            colour = "white" if shares[i, j] > 0.5 else "black"
            ax.text(j, i, str(int(count)), ha="center", va="center", color=colour, fontsize=font)
    note = "\n* a true label outside the label set: never right" if evaluation.outside else ""
    ax.set_xlabel("predicted" + note, fontsize=9)
    ax.set_ylabel("truth", fontsize=9)
    return image


def _save(fig: Figure, path: Path) -> None:
    out = io.BytesIO()
    fig.savefig(out, format="png")
    atomic_write_bytes(Path(path), out.getvalue())


# --- text -----------------------------------------------------------------------------------------


def format_table(evaluation: Evaluation) -> str:
    """The plain-text report section of one evaluation: accuracy, top-k accuracy, the labels outside
    the set and ``unknown`` predictions, a per-class table, and the confusion matrix (left out when it
    has more than :data:`TEXT_MATRIX_UP_TO` columns)."""
    e = evaluation
    topk = f"top-{e.k} accuracy"
    lines = [
        f"{'accuracy':<16}{e.accuracy:6.1%}  ({e.correct} of {e.n})",
        f"{topk:<16}{e.top_k_accuracy:6.1%}  ({e.top_k_correct} of {e.n})",
    ]
    if e.unknown:
        lines.append(f"{'unknown':<16}{e.unknown} image(s) below min_confidence, counted as wrong")
    if e.outside:
        listed = ", ".join(f"{name} ({count})" for name, count in e.outside.items())
        lines.append(f"{'not in the set':<16}{e.outside_images} image(s) labelled {listed}: {OUTSIDE_NOTE}")
    lines.append("")
    lines.extend(_class_table(e))
    lines.append("")
    lines.extend(_text_matrix(e))
    return "\n".join(lines) + "\n"


def _class_table(e: Evaluation) -> list[str]:
    names = _names(list(e.per_class), 30, 60)
    width = max([len("macro average"), *(len(name) + 2 for name in names)])
    out = [f"{'class':<{width}}  precision  recall      f1  support"]
    for short, (name, s) in zip(names, e.per_class.items(), strict=True):
        shown = short + (" *" if name in e.outside else "")
        out.append(f"{shown:<{width}}  {s.precision:9.3f}  {s.recall:6.3f}  {s.f1:6.3f}  {s.support:7d}")
    out.append(
        f"{'macro average':<{width}}  {e.macro_precision:9.3f}  {e.macro_recall:6.3f}  {e.macro_f1:6.3f}  {e.n:7d}"
    )
    if e.outside:
        out.append("* not in the label set")
    return out


def _text_matrix(e: Evaluation) -> list[str]:
    if len(e.columns) > TEXT_MATRIX_UP_TO:
        return [f"confusion matrix: {len(e.rows)} x {len(e.columns)}, too wide for text (see the CSV or PNG)"]
    digits = max(len(str(v)) for row in e.matrix for v in row) if e.matrix else 1
    width = max(digits, min(8, max(len(c) for c in e.columns)))
    heads = [_short(c, width) for c in e.columns]
    names = [r + (" *" if r in e.outside else "") for r in _names(e.rows, 20, 40)]
    key: list[str] = []
    if len(set(heads)) < len(heads):  # abbreviations that collide: number the columns instead
        heads = [str(i) for i in range(1, len(e.columns) + 1)]
        width = max(digits, len(heads[-1]))
        key = ["columns: " + ", ".join(f"{i} {c}" for i, c in enumerate(e.columns, 1))]
    corner = "truth \\ predicted"
    first = max(len(corner), *(len(n) for n in names))
    out = ["confusion matrix (rows: truth, columns: predicted)"]
    out.append(f"{corner:<{first}}  " + " ".join(f"{h:>{width}}" for h in heads))
    for name, row in zip(names, e.matrix, strict=True):
        out.append(f"{name:<{first}}  " + " ".join(f"{v:>{width}}" for v in row))
    return out + key


def format_side_by_side(zero_shot: Evaluation, refined: Evaluation) -> str:
    """Compare a zero-shot evaluation with a refined one: accuracy, top-k accuracy and macro F1 of
    each and their change, then each class's recall and its change (in percentage points)."""
    z, r = zero_shot, refined
    topk = f"top-{z.k} accuracy" if z.k == r.k else f"top-{z.k}/{r.k} accuracy"
    rows: list[tuple[str, str, str, str]] = [
        ("accuracy", f"{z.accuracy:.1%}", f"{r.accuracy:.1%}", _points(z.accuracy, r.accuracy)),
        (topk, f"{z.top_k_accuracy:.1%}", f"{r.top_k_accuracy:.1%}", _points(z.top_k_accuracy, r.top_k_accuracy)),
        ("macro F1", f"{z.macro_f1:.3f}", f"{r.macro_f1:.3f}", f"{r.macro_f1 - z.macro_f1:+.3f}"),
        ("images", str(z.n), str(r.n), ""),
    ]
    lines = _columns(("", "zero-shot", "refined", "change"), rows)
    if z.n != r.n:
        lines.append(f"note: evaluated on different numbers of images ({z.n} and {r.n})")
    recall: list[tuple[str, str, str, str]] = []
    classes = list(dict.fromkeys([*z.per_class, *r.per_class]))
    for name, short in zip(classes, _names(classes, 30, 60), strict=True):
        before, after = z.per_class.get(name), r.per_class.get(name)
        recall.append(
            (
                short,
                f"{before.recall:.1%}" if before else "-",
                f"{after.recall:.1%}" if after else "-",
                _points(before.recall, after.recall) if before and after else "",
            )
        )
    lines.append("")
    lines.extend(_columns(("recall per class", "zero-shot", "refined", "change"), recall))
    return "\n".join(lines) + "\n"


def _points(before: float, after: float) -> str:
    return f"{(after - before) * 100:+.1f} pts"


def _columns(head: tuple[str, str, str, str], rows: list[tuple[str, str, str, str]]) -> list[str]:
    table = [head, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    return [
        f"{row[0]:<{widths[0]}}  " + "  ".join(f"{cell:>{widths[i]}}" for i, cell in enumerate(row[1:], 1)).rstrip()
        for row in table
    ]


def _names(names: Sequence[str], *widths: int) -> list[str]:
    """``names`` shortened to the first of ``widths`` at which they all stay different, else whole."""
    for width in widths:
        short = [_short(name, width) for name in names]
        if len(set(short)) == len(set(names)):
            return short
    return list(names)


def _short(name: str, width: int) -> str:
    """``name`` in at most ``width`` characters, an ellipsis marking the cut: in the middle when there
    is room (names that differ only at their end, "photo of a dog" and "photo of a cat", stay apart),
    else at the end."""
    if len(name) <= width:
        return name
    if width < 12:
        return name[: max(width - 1, 1)] + "…"
    tail = (width - 1) // 2
    return name[: width - 1 - tail] + "…" + name[-tail:]
