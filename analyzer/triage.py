"""Triage: from a folder walk and the index to the images that may need work, then their hashes.

Two steps, both blocking (run in threads):

1. :meth:`Triage.walk` / :meth:`Triage.names` compare each image's and sidecar's size and mtime
   with the index and drop the images that are provably up to date: a warm run reads no image
   and no sidecar. The rest become :class:`Candidate` objects, emitted in chunks.
2. :meth:`Triage.prepare` reads the sidecars the index does not know as they are, and hashes the
   image unless a sidecar already records the hash for its current size and mtime.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from stat import S_ISREG
from typing import Any, Literal

from .discovery import Listing, Stat, join_rel, walk
from .errors import FileChangedError
from .hashing import hash_file
from .index import ImageRow, SidecarRow
from .planner import Planner
from .plugin import Failure
from .progress import RunStats
from .sidecar import sidecar_name
from .store import Digester, Store

log = logging.getLogger("analyzer")

CHUNK = 64


class _NeedsRead:
    """Marker: the index does not know this sidecar as it is on disk; read it."""

    def __repr__(self) -> str:
        return "NEEDS_READ"


NEEDS_READ = _NeedsRead()


@dataclass
class Candidate:
    """An image the triage could not prove up to date."""

    store: Store
    rel_dir: str
    name: str
    path: Path
    stat: Stat
    known_hash: str | None
    known: dict[str, SidecarRow | _NeedsRead | None]
    """Per watched plugin: the index's digest of its sidecar, NEEDS_READ, or None (no sidecar)."""

    @property
    def rel(self) -> str:
        return join_rel(self.rel_dir, self.name)

    @property
    def key(self) -> tuple[Path, str]:
        return (self.store.root, self.rel)


@dataclass
class Prepared:
    """What preparing one candidate found."""

    cand: Candidate
    rows: dict[str, SidecarRow | None] = field(default_factory=dict)
    seen: dict[str, Stat | None] = field(default_factory=dict)
    """Per plugin, the (size, mtime_ns) of its sidecar as read here (None: there was none): a writer
    that finds the file otherwise knows another process wrote it meanwhile."""
    image_hash: str | None = None
    state: Literal["ok", "unhashed", "vanished", "busy", "unreadable"] = "ok"
    failure: Failure | None = None
    hashed: bool = False
    hashed_bytes: int = 0
    changed: bool = False
    corrupt: int = 0


Emit = Callable[[list[Candidate]], bool]
"""Hands a chunk on; False means stop."""
UpToDate = Callable[[Store, str, dict[str, "SidecarRow | None"], str, Stat], None]
"""Told of each image the walk proves up to date: (store, rel, its sidecars' rows, its hash, its stat)."""
Defer = Callable[[Store, str, Stat], bool]
"""True takes an image out of the walk (the watcher: it is too fresh)."""


class Triage:
    """Walks roots and prepares candidates for one planner (thread-safe)."""

    hasher: Callable[[Path], tuple[str, int, int]] = staticmethod(hash_file)
    """How an image is hashed: ``(hash, size, mtime_ns)`` as of the read."""

    def __init__(
        self,
        planner: Planner,
        digesters: Mapping[str, Digester],
        *,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        follow_symlinks: bool = True,
        on_up_to_date: UpToDate | None = None,
        stats: RunStats | None = None,
    ) -> None:
        self.planner = planner
        self.digesters = digesters
        self.include = include
        self.exclude = exclude
        self.follow_symlinks = follow_symlinks
        self.on_up_to_date = on_up_to_date
        self.stats = stats if stats is not None else RunStats()
        """``images`` and ``up_to_date`` are counted here (under a lock: the walk and the watcher's thread)."""
        self._count_lock = threading.Lock()

    # -- step 1 ------------------------------------------------------------------------
    def walk(
        self,
        stores: Sequence[Store],
        emit: Emit,
        *,
        skip: Sequence[Path] = (),
        stop: threading.Event | None = None,
        defer: Defer | None = None,
    ) -> bool:
        """Triage every image under the stores' roots; the index forgets folders that are gone.

        Returns False when stopped (by ``stop`` or ``emit``).
        """
        for store in stores:
            if store.only is not None:  # image files given alone: just those, nothing forgotten
                by_dir: dict[str, list[str]] = {}
                for rel in store.only:
                    rel_dir, _, name = rel.rpartition("/")
                    by_dir.setdefault(rel_dir, []).append(name)
                for rel_dir, names in by_dir.items():
                    if stop is not None and stop.is_set():
                        return False
                    self.names(store, rel_dir, names, emit)
                continue
            seen_dirs: set[str] = set()
            for listing in walk(
                store.root,
                include=self.include,
                exclude=self.exclude,
                skip_dirs=skip,
                follow_symlinks=self.follow_symlinks,
            ):
                if stop is not None and stop.is_set():
                    return False
                seen_dirs.add(listing.rel_dir)
                if not self._listing(store, listing, emit, defer=defer):
                    return False
            stale_dirs = store.index.dirs() - seen_dirs
            if stale_dirs:
                store.index.delete_dirs(stale_dirs)
        return True

    def names(self, store: Store, rel_dir: str, names: Iterable[str], emit: Emit) -> None:
        """Triage some images of one folder, as the walk would (the watcher's images)."""
        listing = Listing(store.root, rel_dir, store.root / rel_dir if rel_dir else store.root)
        for name in sorted(set(names)):
            try:
                st = os.stat(listing.path / name, follow_symlinks=self.follow_symlinks)
            except OSError:
                continue  # gone again: its deletion event does the rest
            if S_ISREG(st.st_mode):
                listing.images.append((name, (st.st_size, st.st_mtime_ns)))
        for name, _ in listing.images:  # just these images' sidecars, not the whole folder's
            for pname in self.planner.watched:
                with contextlib.suppress(OSError):
                    st = os.stat(store.sidecar_path(listing.rel(name), pname))
                    listing.json_files[sidecar_name(name, pname)] = (st.st_size, st.st_mtime_ns)
        self._listing(store, listing, emit, partial=True)

    def _sidecar_stats(self, store: Store, listing: Listing) -> dict[str, Stat]:
        """The folder's sidecars' stats; temporary files of writers that are gone are removed on the way."""
        if store.layout.beside:
            if listing.temps:
                store.remove_abandoned(listing.path, listing.temps)
            return listing.json_files
        stats: dict[str, Stat] = {}
        temps: list[str] = []
        folder = store.layout.sidecar_dir(listing.rel_dir)
        try:
            with os.scandir(folder) as it:
                for entry in it:
                    if entry.name.endswith(".json"):
                        st = entry.stat()
                        stats[entry.name] = (st.st_size, st.st_mtime_ns)
                    elif entry.name.startswith(".") and entry.name.endswith(".tmp"):
                        temps.append(entry.name)
        except OSError:
            pass
        if temps:
            store.remove_abandoned(folder, temps)
        return stats

    def _listing(
        self, store: Store, listing: Listing, emit: Emit, *, partial: bool = False, defer: Defer | None = None
    ) -> bool:
        """Drop the up-to-date images of a folder's listing and emit the rest as candidates.

        A ``partial`` listing names only some images of the folder (the watcher's); otherwise the
        index forgets the images the listing no longer has.
        """
        index = store.index
        if partial:
            rows = index.load_dir(listing.rel_dir, [name for name, _ in listing.images])
            sc_files = listing.json_files
        else:
            rows = index.load_dir(listing.rel_dir)
            sc_files = self._sidecar_stats(store, listing)
        planner = self.planner
        chunk: list[Candidate] = []
        with self._count_lock:
            self.stats.images += len(listing.images)
        up_to_date = 0
        for name, stat in listing.images:  # the hot loop of a warm run
            if defer is not None and defer(store, listing.rel(name), stat):
                continue
            row = rows.get(name)
            fresh = row is not None and row.stat == stat and row.hash is not None
            known, current = self._known(store, listing.rel_dir, name, row if fresh else None, row, sc_files)
            if current and planner.satisfied(known):  # type: ignore[arg-type]  # no NEEDS_READ when current
                up_to_date += 1
                if self.on_up_to_date is not None:
                    self.on_up_to_date(store, listing.rel(name), known, row.hash, stat)  # type: ignore[arg-type,union-attr]
                continue
            chunk.append(
                Candidate(
                    store,
                    listing.rel_dir,
                    name,
                    listing.path / name,
                    stat,
                    row.hash if fresh and row is not None else None,
                    known,
                )
            )
            if len(chunk) >= CHUNK:
                if not emit(chunk):
                    return False
                chunk = []
        with self._count_lock:
            self.stats.up_to_date += up_to_date
        if chunk and not emit(chunk):
            return False
        if not partial:
            gone = set(rows) - {name for name, _ in listing.images}
            if gone:
                index.delete_names(listing.rel_dir, gone)
        return True

    def _known(
        self,
        store: Store,
        rel_dir: str,
        name: str,
        fresh: ImageRow | None,
        row: ImageRow | None,
        sc_files: dict[str, Stat],
    ) -> tuple[dict[str, SidecarRow | _NeedsRead | None], bool]:
        """Per watched plugin, what the index knows of the image's sidecar; and whether all of it is
        current (the image unchanged, ``fresh``, and every sidecar as indexed, made for its content)."""
        known: dict[str, SidecarRow | _NeedsRead | None] = {}
        current = fresh is not None
        for pname in self.planner.watched:
            st = sc_files.get(sidecar_name(name, pname))
            srow = row.sidecars.get(pname) if row is not None else None
            if st is None:
                if srow is not None:
                    store.index.delete_sidecar(rel_dir, name, pname)
                known[pname] = None
            elif srow is not None and srow.stat == st and not self.planner.needs_digest(pname, srow):
                known[pname] = srow
                if fresh is not None and srow.hash != fresh.hash:
                    current = False
            else:
                known[pname] = NEEDS_READ
                current = False
        return known, current

    # -- step 2 ------------------------------------------------------------------------
    def prepare(self, cand: Candidate, *, hash_images: bool, set_aside: bool) -> Prepared:
        """Read the sidecars the index does not know and hash the image if need be (blocking).

        Without ``hash_images`` (``status``, ``wildcards``) an image no sidecar vouches for is
        left ``unhashed``; ``set_aside`` moves corrupt sidecars aside (not in a dry run).
        """
        prepared = Prepared(cand)
        infos: list[dict[str, Any]] = []
        for pname, known in cand.known.items():
            if isinstance(known, _NeedsRead):
                row, info, corrupt = cand.store.load(
                    cand.rel_dir, cand.name, self.digesters[pname], set_aside=set_aside
                )
                prepared.rows[pname] = row
                prepared.corrupt += corrupt
                if info:
                    infos.append(info)
            else:
                prepared.rows[pname] = known
            row = prepared.rows[pname]
            prepared.seen[pname] = row.stat if row is not None else None
        image_hash = cand.known_hash or next(
            (i["hash"] for i in infos if i.get("hash") and (i.get("size"), i.get("mtime_ns")) == cand.stat), None
        )
        if image_hash is None:
            if not hash_images:
                prepared.state = "unhashed"
                return prepared
            image_hash = self._hash(prepared)
            if image_hash is None:
                return prepared
        if image_hash != cand.known_hash:
            cand.store.index.put_image(cand.rel_dir, cand.name, cand.stat, image_hash)
        prepared.image_hash = image_hash
        for pname, row in prepared.rows.items():
            if row is not None and row.hash != image_hash:
                prepared.changed = True
                log.info("%r changed since its %s analysis: analysing it again", cand.rel, pname)
                prepared.rows[pname] = None
        return prepared

    def _hash(self, prepared: Prepared) -> str | None:
        cand = prepared.cand
        try:
            image_hash, size, mtime_ns = self.hasher(cand.path)
        except FileNotFoundError:
            prepared.state = "vanished"
            log.warning("%r vanished before it could be analysed", cand.rel)
            return None
        except FileChangedError:
            prepared.state = "busy"
            log.warning("%r is still being written; skipped, it will be analysed on a later run", cand.rel)
            return None
        except OSError as exc:
            prepared.state = "unreadable"
            reason = exc.strerror or str(exc)
            prepared.failure = Failure.from_exception(exc, retryable=True)
            prepared.failure.message = f"cannot read the image: {reason}"
            log.error("%r: cannot read the image: %s", cand.rel, reason)
            return None
        prepared.hashed, prepared.hashed_bytes = True, size
        cand.stat = (size, mtime_ns)
        return image_hash
