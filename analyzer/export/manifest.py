"""The manifest of an exported dataset: what each file in OUT is and where it came from.

``OUT/.analyzer-export/manifest.jsonl`` is rewritten (atomically) at the end of every export: a
first line ``{"version": 4, "options": {...}, "reading": ...}``, then one line per file in OUT,
``{"path": ..., "src": ..., "hash": ..., "split": ..., ...}`` (:class:`Entry`), in path order. It is written and
read a line at a time, so memory holds the entries, never the whole text or its parse tree (a
100,000-image manifest is about 40 MB of JSON). While an export runs, each finished file is
appended to ``journal.jsonl`` beside it, so an interrupted export knows what is done and resumes.
A second export compares what it wants with the manifest: it adds what is new, moves what
changed class or split, rewrites changed captions, removes what left, and keeps every earlier
split assignment.

Each entry also keeps what the export read for its image (class, confidence, labels, caption) and
a fingerprint of the sidecars it read them from (:attr:`analyzer.survey.Seen.sidecars`), and the
head a digest of how they were read (``reading``: the selectors, filters and configured models):
while both are the same, the next export takes them from here instead of reading the store again.
After the entries, one line per image that ``--where`` or ``--min-confidence`` left out,
``{"filtered": src, "hash": ..., "sidecars": ...}`` (:class:`Filtered`): it stays out, unread,
while its sidecars are the same. Manifests of versions 2 (without any of this: their images are
read again, once) and 3 (without the filtered images) are read as they are.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ..sidecar import atomic_write_lines

log = logging.getLogger(__name__)

FOLDER = ".analyzer-export"
VERSION = 4
READABLE = (2, 3, 4)
MANIFEST = "manifest.jsonl"


@dataclass(frozen=True, slots=True)
class Entry:
    """One exported image (its caption file, if any, is ``caption`` beside it)."""

    src: str
    """The source image, absolute."""
    hash: str
    split: str
    label: str | None
    method: str
    """How it was placed: reflink, hard, sym, copy, or new (resized or stripped)."""
    size: int
    caption: str | None = None
    """The caption file's path in OUT, if one was written."""
    caption_digest: str | None = None
    recipe: str = ""
    """What a new file was made with (``resize=512,strip``): another recipe makes it again."""
    sidecars: int | None = None
    """The fingerprint of the sidecars its class and caption were read from (None: not known)."""
    confidence: float | None = None
    labels: str | None = None
    """A classification's ``[{name, score}]`` as JSON text (``labels.jsonl``)."""
    text: str | None = None
    """The caption's text."""


@dataclass(frozen=True, slots=True)
class Filtered:
    """An image the export's filters left out (``--where``, ``--min-confidence`` without ``--below
    folder``), as it was when they did."""

    hash: str
    sidecars: int | None
    """The fingerprint of the sidecars it was read from (None: not known, read it again)."""


@dataclass
class Manifest:
    folder: Path
    files: dict[str, Entry]
    """Path in OUT -> what is there."""
    options: dict[str, Any]
    reading: str | None = None
    """How the entries' classes and captions were read (see the module's doc): reuse them only if
    this export reads the same way."""
    interrupted: bool = False
    """An earlier export was interrupted (its journal was there)."""
    finished: float | None = None
    """When the last export finished (epoch seconds)."""
    filtered: dict[str, Filtered] = field(default_factory=dict)
    """Source path -> the image the filters left out last time."""

    @property
    def trusted(self) -> bool:
        """Whether every file it lists is as it was written, if it is there at all: the last export
        finished, and the machine has not restarted since (a power cut may have left a new file
        empty, its data not yet on disk). Else each kept file's size is checked."""
        if self.interrupted or self.finished is None:
            return False
        booted = booted_at()
        return booted is not None and booted < self.finished

    @staticmethod
    def load(out: Path) -> Manifest:
        folder = out / FOLDER
        files: dict[str, Entry] = {}
        filtered: dict[str, Filtered] = {}
        options: dict[str, Any] = {}
        reading = finished = None
        try:
            with (folder / MANIFEST).open("rb") as handle:
                head = orjson.loads(handle.readline())
                if head.get("version") in READABLE:
                    options = dict(head.get("options", {}))
                    reading = head.get("reading")
                    finished = head.get("finished")
                    for line in handle:
                        record = orjson.loads(line)
                        if "filtered" in record:
                            filtered[record["filtered"]] = Filtered(record["hash"], record.get("sidecars"))
                            continue
                        path = record.pop("path")
                        files[path] = Entry(**record)
                else:
                    log.warning("%s: a manifest of another version: the export starts over", folder)
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError, AttributeError, KeyError) as exc:
            log.warning("%s: the manifest cannot be read (%s): the export starts over", folder, exc)
            files, filtered, options, reading, finished = {}, {}, {}, None, None
        manifest = Manifest(
            folder,
            files,
            options,
            reading if isinstance(reading, str) else None,
            finished=finished if isinstance(finished, (int, float)) else None,
            filtered=filtered,
        )
        for path, entry in manifest.journal():  # an interrupted export's finished work
            manifest.interrupted = True
            if entry is None:
                manifest.files.pop(path, None)
            else:
                manifest.files[path] = entry
        if manifest.interrupted:
            manifest.reading = None  # its entries may have been read another way: read them again, once
        return manifest

    def journal(self) -> Iterator[tuple[str, Entry | None]]:
        try:
            lines = (self.folder / "journal.jsonl").read_bytes().splitlines()
        except OSError:
            return
        for line in lines:
            try:
                record = orjson.loads(line)
                yield record["path"], Entry(**record["entry"]) if record.get("entry") else None
            except (ValueError, TypeError, KeyError):
                break  # a line cut short by the interruption: what follows was not done

    def splits(self) -> dict[str, str]:
        """Content hash -> the split it was given (every earlier assignment is kept)."""
        return {entry.hash: entry.split for entry in self.files.values()}


class Journal:
    """Appends each finished change, a few hundred at a time, so an interrupted process loses at
    most those (done again by the next export). It is not fsync'ed: after a power cut the files it
    names may be empty too, and the next export, finding it, checks each kept file's size anyway
    (:attr:`Manifest.trusted`); a journal lost with them only means redoing that work."""

    def __init__(self, manifest: Manifest) -> None:
        manifest.folder.mkdir(parents=True, exist_ok=True)
        self.manifest = manifest
        self._handle = (manifest.folder / "journal.jsonl").open("ab")
        self._pending = 0

    def record(self, path: str, entry: Entry | None) -> None:
        if entry is None:
            self.manifest.files.pop(path, None)
        else:
            self.manifest.files[path] = entry
        record = {"path": path, "entry": entry}  # orjson encodes the dataclass
        self._handle.write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))
        self._pending += 1
        if self._pending >= 256:
            self.flush()

    def flush(self) -> None:
        self._handle.flush()
        self._pending = 0

    def close(
        self, options: Mapping[str, Any], reading: str | None = None, filtered: Mapping[str, Filtered] | None = None
    ) -> None:
        """Write the whole manifest (with the images the filters left out now) and drop the journal."""
        self.flush()
        self._handle.close()
        write_manifest(self.manifest.folder / MANIFEST, options, self.manifest.files, reading, filtered)
        (self.manifest.folder / "journal.jsonl").unlink(missing_ok=True)

    def abandon(self) -> None:
        """Interrupted: keep the journal for the next export."""
        try:
            self.flush()
        finally:
            self._handle.close()


def booted_at() -> float | None:
    """When this machine last started (epoch seconds), where the system says (None elsewhere)."""
    clock = getattr(time, "CLOCK_BOOTTIME", None)
    if clock is None:
        return None
    return time.time() - time.clock_gettime(clock)


def write_manifest(
    path: Path,
    options: Mapping[str, Any],
    files: Mapping[str, Entry],
    reading: str | None = None,
    filtered: Mapping[str, Filtered] | None = None,
) -> None:
    """Write the manifest a line at a time under a temporary name, fsync, rename."""
    head = {"version": VERSION, "options": dict(options), "reading": reading, "finished": time.time()}
    head_line = orjson.dumps(head, option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS)
    lines = itertools.chain([head_line], _records(b"path", files), _records(b"filtered", filtered or {}))
    atomic_write_lines(path, lines)


def _records(key: bytes, records: Mapping[str, Entry] | Mapping[str, Filtered]) -> Iterator[bytes]:
    """``{"<key>": name, then the record's fields}`` per record, in name order: orjson encodes the
    (slotted) dataclass itself, fast."""
    for name in sorted(records):
        yield (
            b'{"'
            + key
            + b'":'
            + orjson.dumps(name)
            + b","
            + orjson.dumps(records[name], option=orjson.OPT_APPEND_NEWLINE)[1:]
        )
