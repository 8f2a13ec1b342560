"""``analyzer prune``: images whose class is not confident enough, listed, then set aside and back.

``analyzer prune PATH --class classify.animals --min-confidence 0.4`` lists the images below the
threshold; with ``--yes`` each goes, with its sidecars, into ``<state folder>/trash/<time>/``
(the state folder is skipped by every walk), a ``manifest.json`` there saying where each came
from. ``analyzer prune PATH --restore <time>`` puts them back. Nothing is deleted.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .export.items import Condition, Wanted, read_items
from .selector import Selector
from .store import Store
from .survey import Seen

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pruned:
    store: Store
    rel: str
    label: str | None
    confidence: float | None


def below(
    stores: Sequence[Store],
    label: str,
    min_confidence: float,
    preferred: Mapping[str, Mapping[str, Sequence[str]]],
    where: Sequence[str] = (),
    found: Mapping[Path, Sequence[Seen]] | None = None,
) -> list[Pruned]:
    """The images whose ``label`` result is less confident than ``min_confidence`` (or has none)."""
    wanted = Wanted(label=Selector.parse(label), where=tuple(Condition.parse(w) for w in where))
    items, _, _ = read_items(stores, wanted, preferred, found=found)
    by_root = {store.root: store for store in stores}
    return [
        Pruned(by_root[item.root], item.rel, item.label, item.confidence)
        for item in items
        if item.confidence is None or item.confidence < min_confidence
    ]


def _move(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        raise ConfigError(f"{dst} exists already: not moving {src} over it")
    try:
        os.replace(src, dst)
    except OSError:  # another file system (a state_dir elsewhere): copy, then remove
        shutil.move(src, dst)


def sidecars_of(store: Store, rel: str) -> list[Path]:
    """Every sidecar of the image (``<name>.<plugin>.json``), whichever plugin wrote it."""
    rel_dir, _, name = rel.rpartition("/")
    folder = store.layout.sidecar_dir(rel_dir)
    try:
        return sorted(p for p in folder.glob(f"{_glob_escape(name)}.*.json") if p.is_file())
    except OSError:
        return []


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def trash(found: Sequence[Pruned]) -> dict[Path, Path]:
    """Move the images and their sidecars into each root's trash; the trash folders made."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    folders: dict[Path, Path] = {}
    moved: dict[Path, list[dict[str, Any]]] = {}
    for item in found:
        store = item.store
        folder = folders.setdefault(store.root, store.state_dir / "trash" / stamp)
        entries = moved.setdefault(store.root, [])
        source = store.root / item.rel
        files = [(source, folder / "images" / item.rel)]
        for sidecar in sidecars_of(store, item.rel):
            files.append((sidecar, folder / "sidecars" / sidecar.relative_to(store.layout.sidecar_dir(""))))
        done = []
        try:
            for src, dst in files:
                _move(src, dst)
                done.append({"from": str(src), "to": str(dst)})
        except OSError as exc:
            log.error("%s: not moved to the trash: %s", source, exc)
        entries += done
        store.forget(item.rel)
        _write_manifest(folder, store.root, entries)
    for store in {item.store for item in found}:
        store.commit()
    return folders


def _write_manifest(folder: Path, root: Path, entries: list[dict[str, Any]]) -> None:
    from .sidecar import atomic_write_bytes

    data = {"root": str(root), "files": entries}
    atomic_write_bytes(folder / "manifest.json", json.dumps(data, indent=1).encode() + b"\n")


def trashes(store: Store) -> list[str]:
    folder = store.state_dir / "trash"
    try:
        return sorted(p.name for p in folder.iterdir() if (p / "manifest.json").is_file())
    except OSError:
        return []


def restore(store: Store, stamp: str) -> int:
    """Put back what ``trash`` moved at ``stamp``; how many files. A file whose place is taken stays."""
    folder = store.state_dir / "trash" / stamp
    if "/" in stamp or stamp in ("", ".", "..") or not (folder / "manifest.json").is_file():
        known = ", ".join(trashes(store)) or "none"
        raise ConfigError(f"no trash {stamp!r} in {store.root} (there are: {known})")
    data = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    back = 0
    kept = []
    for entry in data["files"]:
        src, dst = Path(entry["to"]), Path(entry["from"])
        try:
            _move(src, dst)
            back += 1
        except (OSError, ConfigError) as exc:
            log.error("%s: not restored: %s", dst, exc)
            kept.append(entry)
    if kept:
        _write_manifest(folder, store.root, kept)
    else:
        shutil.rmtree(folder, ignore_errors=True)
    return back
