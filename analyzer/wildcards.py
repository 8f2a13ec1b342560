"""Wildcard files for Dynamic Prompts (sd-dynamic-prompts): ``<plugin>_<mode>.txt``.

Dynamic Prompts reads ``__clip_best__`` in a prompt as "a random line of ``clip_best.txt``";
lines starting with ``#`` are comments and blank lines are ignored. Each entry here is made a
single line (newlines and runs of white space folded to one space), stripped, cleared of
leading ``#``, and written once, in the order of the images' paths. Files are written
atomically, so a reader never sees half a file.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from .sidecar import atomic_write_text

if TYPE_CHECKING:
    from .plugin import AnalyzerPlugin
    from .progress import RunStats

log = logging.getLogger(__name__)

_SPACE = re.compile(r"\s+")


def clean_entry(text: str) -> str:
    """One wildcard line: no line breaks or control characters, no leading ``#``."""
    if not text.isprintable():  # rare: most entries are one printable line already
        text = "".join(c if c.isprintable() else " " for c in text)
    text = _SPACE.sub(" ", text).strip()
    return text.lstrip("#").strip()


def wildcard_name(plugin: str, mode: str) -> str:
    return f"{plugin}_{mode}"


def write_wildcards(
    folder: Path,
    entries: dict[tuple[str, str], Iterable[str]],
) -> dict[str, int]:
    """Write one file per (plugin, mode) from its entries; return lines written per file name.

    A (plugin, mode) with no entries removes a stale file of that name.
    """
    written: dict[str, int] = {}
    for (plugin, mode), raw in sorted(entries.items()):
        seen: dict[str, None] = {}
        for item in raw:
            line = clean_entry(item)
            if line:
                seen.setdefault(line, None)
        path = folder / f"{wildcard_name(plugin, mode)}.txt"
        if not seen:
            if path.exists():
                path.unlink()
                log.info("removed %s: no entries left", path)
            continue
        atomic_write_text(path, "\n".join(seen) + "\n")
        written[path.name] = len(seen)
    return written


class WildcardSource(Protocol):
    """Where the entries come from: a store (its index keeps each sidecar's entries)."""

    def wildcard_rows(self, plugins: Iterable[str]) -> Iterator[tuple[str, dict[str, list[str]]]]:
        """(plugin, {mode: entries}) for every sidecar of these plugins, in path order."""
        ...


def refresh_wildcards(
    stores: Sequence[WildcardSource], plugins: Sequence[AnalyzerPlugin], folder: Path, stats: RunStats | None = None
) -> dict[str, int]:
    """Write one wildcard file per plugin and wildcard mode from the stores' indexes (blocking).

    Entries come in the order of the images' paths, root by root. Returns lines per file name.
    """
    entries: dict[tuple[str, str], dict[str, None]] = {(p.name, mode): {} for p in plugins for mode in p.wildcard_modes}
    for store in stores:
        for pname, wild in store.wildcard_rows(p.name for p in plugins):
            for mode, found in wild.items():
                bucket = entries.get((pname, mode))
                if bucket is not None:
                    for item in found:
                        bucket.setdefault(item, None)
    try:
        written = write_wildcards(folder, {k: list(v) for k, v in entries.items()})
    except OSError as exc:
        log.error("cannot write wildcard files in %s: %s", folder, exc.strerror or exc)
        if stats is not None:
            stats.write_errors += 1
        return {}
    if written:
        log.info("wildcards in %s: %s", folder, ", ".join(f"{name} ({n})" for name, n in written.items()))
    return written
