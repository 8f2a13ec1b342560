"""Finding images: a deterministic, loop-safe walk that stats each entry once.

Discovery yields one :class:`Listing` per folder: its images with size and mtime, and the
size and mtime of the JSON files beside them (the sidecars), so that deciding whether an image
is up to date needs no further system call.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from .images import is_image_name

log = logging.getLogger(__name__)

Stat = tuple[int, int]
"""(size in bytes, mtime in nanoseconds)"""


@dataclass(slots=True)
class Listing:
    root: Path
    rel_dir: str
    """Folder relative to the root, ``""`` for the root itself, ``/`` separators."""
    path: Path
    images: list[tuple[str, Stat]] = field(default_factory=list)
    """(file name, stat) of each image, sorted by name."""
    json_files: dict[str, Stat] = field(default_factory=dict)
    """Stats of the ``.json`` files in the folder, by name."""
    temps: list[str] = field(default_factory=list)
    """The analyzer's own temporary files in the folder (``.<name>~<host>~<pid>~<n>.tmp``)."""

    def rel(self, name: str) -> str:
        return join_rel(self.rel_dir, name)


def join_rel(rel_dir: str, name: str) -> str:
    """The path of ``name`` in the folder ``rel_dir`` (``""`` for the root), relative to its root."""
    return f"{rel_dir}/{name}" if rel_dir else name


@lru_cache(maxsize=256)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Translate a glob (``*``, ``?``, ``[..]``, ``**``) to a regex over ``/``-separated paths."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1 : end].replace("\\", "\\\\")
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append(f"[{body}]")
                i = end
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z", re.IGNORECASE if os.name == "nt" else 0)


def glob_match(rel_path: str, pattern: str) -> bool:
    """Match like .gitignore: a pattern without ``/`` matches the name at any depth."""
    pattern = pattern.strip("/") if pattern.endswith("/") else pattern
    if "/" not in pattern:
        return bool(_glob_regex(pattern).match(rel_path.rsplit("/", 1)[-1]))
    return bool(_glob_regex(pattern).match(rel_path))


def _dir_excluded(rel_dir: str, patterns: Sequence[str]) -> bool:
    for pattern in patterns:
        if glob_match(rel_dir, pattern):
            return True
        if pattern.endswith("/**") and glob_match(rel_dir, pattern[:-3]):
            return True
    return False


@dataclass
class _Walker:
    root: Path
    include: Sequence[str]
    exclude: Sequence[str]
    skip: set[str]
    follow_symlinks: bool
    visited: set[tuple[int, int]] = field(default_factory=set)

    def listing(self, rel_dir: str, path: Path) -> tuple[Listing, list[tuple[str, Path]]] | None:
        """List one folder; ``None`` when it cannot be read or was seen already (a loop).

        Entries are stat'ed relative to an open descriptor of the folder (``fstatat``), which
        spares the kernel a lookup of the whole path for every file.
        """
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except OSError as exc:
            log.warning("cannot read folder %r: %s", str(path), exc.strerror)
            return None
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) in self.visited:
                log.warning("skipping %r: symlink loop or folder already visited", str(path))
                return None
            self.visited.add((st.st_dev, st.st_ino))
            listing = Listing(self.root, rel_dir, path)
            subdirs: list[tuple[str, Path]] = []
            with os.scandir(fd) as it:
                for entry in it:
                    if entry.name.startswith("."):
                        if entry.name.endswith(".tmp") and "~" in entry.name:
                            listing.temps.append(entry.name)
                        continue
                    try:
                        self._entry(listing, entry, subdirs)
                    except FileNotFoundError:
                        continue  # vanished (or a dangling symlink) between listing and stat
                    except OSError as exc:
                        log.warning("cannot stat %r: %s", str(path / entry.name), exc.strerror)
        except OSError as exc:
            log.warning("cannot read folder %r: %s", str(path), exc.strerror)
            return None
        finally:
            os.close(fd)
        listing.images.sort()  # deterministic order, whatever order the file system lists in
        subdirs.sort()
        return listing, subdirs

    def _entry(self, listing: Listing, entry: os.DirEntry[str], subdirs: list[tuple[str, Path]]) -> None:
        # The hot loop of a warm run: one call per file in the tree, so no work it can skip.
        name = entry.name
        if entry.is_dir(follow_symlinks=self.follow_symlinks):
            rel = listing.rel(name)
            if self.exclude and _dir_excluded(rel, self.exclude):
                return
            child = listing.path / name
            if self.skip and os.path.realpath(child) in self.skip:
                return
            subdirs.append((rel, child))
        elif name.endswith(".json"):
            st = entry.stat()
            listing.json_files[name] = (st.st_size, st.st_mtime_ns)
        elif is_image_name(name):
            if (self.include or self.exclude) and not self._wanted(listing.rel(name)):
                return
            if not self.follow_symlinks and entry.is_symlink():
                return
            st = entry.stat(follow_symlinks=self.follow_symlinks)
            if entry.is_file(follow_symlinks=self.follow_symlinks):
                listing.images.append((name, (st.st_size, st.st_mtime_ns)))

    def _wanted(self, rel: str) -> bool:
        return _globs_allow(rel, self.include, self.exclude)


def walk(
    root: Path,
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    skip_dirs: Sequence[Path] = (),
    follow_symlinks: bool = True,
) -> Iterator[Listing]:
    """Yield a :class:`Listing` per folder under ``root``, depth first, in sorted order.

    Hidden files and folders (names starting with ``.``) are skipped, as are ``skip_dirs``
    (the analyzer's own output folders). A symlinked folder that leads back to one already on
    the walk is reported once and skipped.
    """
    walker = _Walker(root, include, exclude, {os.path.realpath(p) for p in skip_dirs}, follow_symlinks)
    stack: list[tuple[str, Path]] = [("", root)]
    while stack:
        found = walker.listing(*stack.pop())
        if found is not None:
            listing, subdirs = found
            yield listing
            stack.extend(reversed(subdirs))


def wanted_path(rel: str, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> bool:
    """Whether the walk would list the image at ``rel`` (``/``-separated, relative to its root).

    The watcher's test for a path named by an event: hidden files and folders, excluded folders,
    names that are not images (``x.png.part``, ``x.png~``, ``x.crdownload``) and the include and
    exclude globs rule a path out exactly as they do in a walk.
    """
    parts = rel.split("/")
    if any(part.startswith(".") or not part for part in parts) or not is_image_name(parts[-1]):
        return False
    if exclude:
        for i in range(1, len(parts)):
            if _dir_excluded("/".join(parts[:i]), exclude):
                return False
    return _globs_allow(rel, include, exclude)


def _globs_allow(rel: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    if include and not any(glob_match(rel, p) for p in include):
        return False
    return not (exclude and any(glob_match(rel, p) for p in exclude))
