"""What an export writes besides the images: the tables (``labels.jsonl``, ``labels.csv``,
``metadata.json``, ``report.txt``/``.json``, imagefolder's ``metadata.jsonl``), the CSV alone
(``--csv-only``), and the dataset streamed into a ZIP (``--zip``; what the server's export will
return)."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from ..selector import Selector
from ..sidecar import atomic_write_bytes, atomic_write_lines
from ..store import Store
from .items import Item
from .manifest import FOLDER
from .plan import ExportOptions, Plan

TABLES = ("labels.jsonl", "labels.csv", "metadata.json", "report.txt", "report.json")


def write_tables(out: Path, plan: Plan, options: ExportOptions, report: Mapping[str, Any]) -> None:
    """labels.jsonl, labels.csv, metadata.json, report.txt/.json (and imagefolder's metadata.jsonl),
    each written a few thousand lines at a time."""
    exported = plan.exported
    line = orjson.OPT_APPEND_NEWLINE
    atomic_write_lines(
        out / "labels.jsonl",
        (
            orjson.dumps(
                {
                    "path": wish.path,
                    "labels": orjson.Fragment(wish.item.labels),
                    "top1": wish.item.label,
                    "confidence": wish.item.confidence,
                    "split": wish.split,
                    "source": f"{wish.item.root}/{wish.item.rel}",
                },
                option=line,
            )
            for wish in exported
        ),
    )
    atomic_write_bytes(out / "labels.csv", labels_csv((w.path, w.item) for w in exported))
    splits_written: set[str] = set()
    if options.layout == "imagefolder":
        for split_dir in sorted({wish.path.partition("/")[0] for wish in exported}):
            prefix = f"{split_dir}/"
            rows = (
                orjson.dumps(
                    {
                        "file_name": wish.path[len(prefix) :],
                        "label": wish.item.label,
                        "text": wish.item.caption,
                        "confidence": wish.item.confidence,
                    },
                    option=line,
                )
                for wish in exported
                if wish.path.startswith(prefix)
            )
            atomic_write_lines(out / split_dir / "metadata.jsonl", rows)
            splits_written.add(split_dir)
    for stale in out.glob("*/metadata.jsonl"):  # a split that is empty now, or another layout before
        if stale.parent.name not in splits_written:
            stale.unlink(missing_ok=True)
    counts = Counter((w.split, w.item.label) for w in exported)
    per_class: dict[str, dict[str, int]] = {}
    for (split, label), n in sorted(counts.items(), key=lambda kv: (str(kv[0][1]), kv[0][0])):
        per_class.setdefault(str(label), {})[split] = n
    metadata = {
        "images": len(exported),
        "layout": options.layout,
        "class": options.label,
        "caption": options.caption,
        "splits": dict(Counter(w.split for w in exported)),
        "per_class": per_class,
        "drift": plan.drift.to_dict() if plan.drift is not None else None,
        "options": options.record(),
        "sources": sorted({str(w.item.root) for w in exported}),
    }
    atomic_write_bytes(out / "metadata.json", (json.dumps(metadata, indent=2, ensure_ascii=False) + "\n").encode())
    text = report_text(metadata, report)
    atomic_write_bytes(out / "report.txt", text.encode())
    full = {"export": metadata, "classification": dict(report)}
    atomic_write_bytes(
        out / "report.json", (json.dumps(full, indent=2, ensure_ascii=False, default=str) + "\n").encode()
    )


def labels_csv(rows: Iterable[tuple[str, Item]]) -> bytes:
    """``path,top1,confidence``, one row per (path, image)."""
    text = io.StringIO()
    table = csv.writer(text, lineterminator="\n")
    table.writerow(["path", "top1", "confidence"])
    for path, item in rows:
        table.writerow([path, item.label or "", "" if item.confidence is None else f"{item.confidence:.5f}"])
    return text.getvalue().encode()


def write_csv(target: Path, plan: Plan) -> None:
    """``path,top1,confidence`` of the source images the dataset would hold (``--csv-only``)."""
    atomic_write_bytes(target, labels_csv((str(w.item.path), w.item) for w in plan.wishes))


def report_text(metadata: Mapping[str, Any], report: Mapping[str, Any]) -> str:
    splits = sorted(metadata["splits"])
    lines = [
        f"dataset: {metadata['images']:,} images, layout {metadata['layout']}, class {metadata['class']}, "
        f"caption {metadata['caption']}",
        "",
        "images per class and split:",
        "  " + "class".ljust(24) + "".join(f"{s:>10}" for s in splits),
    ]
    for label, by_split in metadata["per_class"].items():
        lines.append("  " + label[:24].ljust(24) + "".join(f"{by_split.get(s, 0):>10,}" for s in splits))
    if metadata["drift"]:
        lines += ["", "split drift from the target ratios:", json.dumps(metadata["drift"], indent=2)]
    if report.get("text"):
        lines += ["", "classification report (from analyzer classify):", str(report["text"])]
    return "\n".join(lines) + "\n"


def classification_report(stores: Sequence[Store], label: str | None) -> dict[str, Any]:
    """The refinement issue's report of the class's label set, if ``analyzer classify`` wrote one."""
    if label is None:
        return {}
    sel = Selector.parse(label)
    if sel.plugin != "classify":
        return {}
    for store in stores:
        folder = store.state_dir / "reports" / f"classify-{sel.mode}"
        try:
            return {
                "text": (folder / "report.txt").read_text(encoding="utf-8"),
                "data": json.loads((folder / "report.json").read_text(encoding="utf-8")),
                "from": str(folder),
            }
        except (OSError, ValueError):
            continue
    return {}


# -- zip --------------------------------------------------------------------------------------------
def write_zip(out: Path, target: Path) -> Path:
    """The dataset folder streamed into a ZIP (images stored, tables deflated; memory flat)."""
    target = target.resolve()
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        with tmp.open("wb") as handle:
            stream_zip(zip_members(out), handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def zip_members(out: Path) -> list[tuple[str, Path]]:
    found = []
    for folder, dirs, files in os.walk(out):
        dirs[:] = sorted(d for d in dirs if d != FOLDER)
        for name in sorted(files):
            path = Path(folder) / name
            found.append((path.relative_to(out).as_posix(), path))
    return found


def stream_zip(members: Sequence[tuple[str, Path]], handle: Any, chunk: int = 1 << 20) -> None:
    """Write ``(name in the archive, file)`` pairs as a ZIP to a binary file object, a chunk at a time."""
    import zipfile

    text = {".txt", ".json", ".jsonl", ".csv", ".caption"}
    with zipfile.ZipFile(handle, "w", allowZip64=True) as archive:
        for name, path in members:
            compress = zipfile.ZIP_DEFLATED if path.suffix.lower() in text else zipfile.ZIP_STORED
            info = zipfile.ZipInfo.from_file(path, name)
            info.compress_type = compress
            with path.open("rb") as source, archive.open(info, "w", force_zip64=True) as dest:
                shutil.copyfileobj(source, dest, chunk)
