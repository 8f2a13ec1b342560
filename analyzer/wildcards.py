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
from collections.abc import Iterable
from pathlib import Path

from .sidecar import atomic_write_text

log = logging.getLogger(__name__)

_SPACE = re.compile(r"\s+")


def clean_entry(text: str) -> str:
    """One wildcard line: no line breaks or control characters, no leading ``#``."""
    text = _SPACE.sub(" ", "".join(c if c.isprintable() else " " for c in text)).strip()
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
