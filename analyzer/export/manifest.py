"""The manifest of an exported dataset: what each file in OUT is and where it came from.

``OUT/.analyzer-export/manifest.json`` is rewritten (atomically) at the end of every export;
while one runs, each finished file is appended to ``journal.jsonl`` beside it, so an interrupted
export knows what is done and resumes. A second export compares what it wants with the manifest:
it adds what is new, moves what changed class or split, rewrites changed captions, removes what
left, and keeps every earlier split assignment.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..sidecar import atomic_write_bytes

log = logging.getLogger(__name__)

FOLDER = ".analyzer-export"
VERSION = 1


@dataclass(frozen=True)
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


@dataclass
class Manifest:
    folder: Path
    files: dict[str, Entry]
    """Path in OUT -> what is there."""
    options: dict[str, Any]

    @staticmethod
    def load(out: Path) -> Manifest:
        folder = out / FOLDER
        files: dict[str, Entry] = {}
        options: dict[str, Any] = {}
        try:
            data = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
            if data.get("version") == VERSION:
                files = {path: Entry(**entry) for path, entry in data.get("files", {}).items()}
                options = dict(data.get("options", {}))
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError) as exc:
            log.warning("%s: the manifest cannot be read (%s): the export starts over", folder, exc)
        manifest = Manifest(folder, files, options)
        for path, entry in manifest.journal():  # an interrupted export's finished work
            if entry is None:
                manifest.files.pop(path, None)
            else:
                manifest.files[path] = entry
        return manifest

    def journal(self) -> Iterator[tuple[str, Entry | None]]:
        try:
            lines = (self.folder / "journal.jsonl").read_text(encoding="utf-8").splitlines()
        except OSError:
            return
        for line in lines:
            try:
                record = json.loads(line)
                yield record["path"], Entry(**record["entry"]) if record.get("entry") else None
            except (ValueError, TypeError, KeyError):
                break  # a line cut short by the interruption: what follows was not done

    def splits(self) -> dict[str, str]:
        """Content hash -> the split it was given (every earlier assignment is kept)."""
        return {entry.hash: entry.split for entry in self.files.values()}

    def by_hash(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for path, entry in self.files.items():
            found.setdefault(entry.hash, []).append(path)
        return found


class Journal:
    """Appends each finished change, flushed, so an interruption loses at most the file in progress."""

    def __init__(self, manifest: Manifest) -> None:
        manifest.folder.mkdir(parents=True, exist_ok=True)
        self.manifest = manifest
        self._handle = (manifest.folder / "journal.jsonl").open("a", encoding="utf-8")
        self._pending = 0

    def record(self, path: str, entry: Entry | None) -> None:
        if entry is None:
            self.manifest.files.pop(path, None)
        else:
            self.manifest.files[path] = entry
        self._handle.write(json.dumps({"path": path, "entry": asdict(entry) if entry else None}) + "\n")
        self._pending += 1
        if self._pending >= 256:
            self.flush()

    def flush(self) -> None:
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._pending = 0

    def close(self, options: Mapping[str, Any]) -> None:
        """Write the whole manifest and drop the journal."""
        self.flush()
        self._handle.close()
        data = {
            "version": VERSION,
            "options": dict(options),
            "files": {path: asdict(entry) for path, entry in sorted(self.manifest.files.items())},
        }
        atomic_write_bytes(self.manifest.folder / "manifest.json", json.dumps(data, indent=1).encode() + b"\n")
        (self.manifest.folder / "journal.jsonl").unlink(missing_ok=True)

    def abandon(self) -> None:
        """Interrupted: keep the journal for the next export."""
        try:
            self.flush()
        finally:
            self._handle.close()
