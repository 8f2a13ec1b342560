"""The store: one root's results, behind one interface that every command reads and writes through.

A :class:`Store` holds a root's sidecars (the truth: one JSON file per image per plugin, see
:mod:`analyzer.sidecar`), its index (an SQLite cache of what they say, :mod:`analyzer.index`) and
its state folder (``<root>/.analyzer``, or under ``state_dir``), where the root's persistent id
lives. Runs, the watcher, ``status`` and ``wildcards`` use it; so will export, grids and the server.

Ids: a root's id is made once and kept in its state folder (``root-id``), so it survives renaming
or remounting the folder; an image's id is the root's id and a digest of its path in the root:
stable while the image stays where it is, whatever the host or mount point.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import json
import logging
import os
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from . import hosts
from .discovery import join_rel, wanted_path
from .embeddings import EmbeddingStore
from .errors import ConfigError, CorruptSidecar
from .images import IMAGE_EXTENSIONS, is_image_name
from .index import INDEX_NAME, Index, SidecarRow
from .planner import Planner, item_key
from .selector import MANUAL, MISSING, Selector, value_digest
from .sidecar import (
    Layout,
    Staged,
    as_json,
    atomic_write_bytes,
    done_keys,
    dumps,
    failed_keys,
    file_info,
    merge_outcomes,
    new_doc,
    quarantine,
    read_sidecar_with_stat,
    stage,
)
from .wildcards import clean_entry

if TYPE_CHECKING:
    from .discovery import Stat
    from .plugin import AnalyzerPlugin
    from .settings import Settings

log = logging.getLogger("analyzer")

ROOT_ID_FILE = "root-id"
Entries = list[tuple[str, str, dict[str, Any]]]
"""(mode, model id, sidecar entry)"""


@dataclass(frozen=True)
class Digester:
    """How one plugin's sidecars are summarised in the index."""

    plugin: AnalyzerPlugin
    selectors: tuple[Selector, ...] = ()
    """Selectors other plugins read from this one: their values' digests are kept in the index."""
    preferred: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """mode -> the model ids the plugin is configured with now (which result a selector picks)."""

    def row(self, doc: dict[str, Any], stat: Stat) -> SidecarRow:
        retry, failed = failed_keys(doc)
        analysis = doc.get("analysis", {})
        wild: dict[str, list[str]] = {}
        for mode in self.plugin.wildcard_modes:
            by_model = analysis.get(mode, {})
            if MANUAL in by_model:  # a person's result wins over every model's
                by_model = {MANUAL: by_model[MANUAL]}
            for entry in by_model.values():
                for text in self.plugin.wildcard_entries(mode, entry.get("result")):
                    line = clean_entry(text)
                    if line:
                        wild.setdefault(mode, []).append(line)
        ctx = {
            item_key(mode, model): entry["context"]["digest"]
            for mode, by_model in analysis.items()
            for model, entry in by_model.items()
            if isinstance(entry.get("context"), dict) and isinstance(entry["context"].get("digest"), str)
        }
        sel = {}
        for selector in self.selectors:
            found = selector.resolve(analysis, self.preferred.get(selector.mode, ()))
            sel[selector.text] = value_digest(found.value if found is not None else MISSING)
        return SidecarRow(
            stat,
            doc.get("file_info", {}).get("hash"),
            frozenset(done_keys(doc)),
            frozenset(retry),
            frozenset(failed),
            json.dumps(wild, ensure_ascii=False) if wild else None,
            ctx or None,
            sel or None,
            results_json(analysis),
        )


def results_json(analysis: Mapping[str, Any]) -> str | None:
    """A sidecar's results as the index keeps them: each stored entry's ``result`` and
    ``created_at`` (what a selector reads and chooses by), by mode and model; None when there are
    none. Text, not orjson's bytes, which keep a 4 KB buffer each while a row waits to be written."""
    kept = {
        mode: {
            model: {"result": entry["result"], "created_at": entry.get("created_at")}
            for model, entry in by_model.items()
            if isinstance(entry, Mapping) and "result" in entry
        }
        for mode, by_model in analysis.items()
        if isinstance(by_model, Mapping)
    }
    kept = {mode: by_model for mode, by_model in kept.items() if by_model}
    return orjson.dumps(kept, option=orjson.OPT_NON_STR_KEYS).decode() if kept else None


def _value(sel: Selector, analysis: Mapping[str, Any], preferred: Mapping[str, Mapping[str, Sequence[str]]]) -> Any:
    """What ``sel`` names in a sidecar's results, or MISSING."""
    if not analysis.get(sel.mode):
        return MISSING
    found = sel.resolve(analysis, preferred.get(sel.plugin, {}).get(sel.mode, ()))
    return found.value if found is not None else MISSING


FEW_BY_NAME = 200
"""Up to this many of a folder's images, :meth:`Store.values_in` asks the index for them by name
(else for the whole folder's)."""

Preferred = dict[str, dict[str, tuple[str, ...]]]
"""plugin -> mode -> the model ids it is configured with now, in its order."""


def digesters(planner: Planner, plugins: Mapping[str, AnalyzerPlugin]) -> tuple[dict[str, Digester], Preferred]:
    """A digester for every plugin whose sidecars ``planner`` looks at, and the models each prefers."""
    preferred = preferred_models(plugins.values())
    found = {
        name: Digester(plugins[name], tuple(planner.selectors.get(name, ())), preferred[name])
        for name in planner.watched
    }
    return found, preferred


def preferred_models(plugins: Iterable[AnalyzerPlugin]) -> Preferred:
    """Per plugin and mode, the model ids it is configured with now: which result a selector picks."""
    return {p.name: {mode: tuple(p.model_ids(mode)) for mode in p.enabled_modes()} for p in plugins}


@dataclass(frozen=True)
class Target:
    """What a command works on in one root: the whole root, or some image files in it."""

    root: Path
    files: tuple[str, ...] | None = None
    """Paths relative to the root (``/``-separated) of the only images to look at; None: every image."""


def resolve_targets(settings: Settings, paths: Sequence[Path], *, files: bool = True) -> list[Target]:
    """The roots to work on and, for image files given alone (``files``), the files in their roots.

    An image file's root is the nearest enclosing folder that is a root already (it has a state
    folder), a configured root or a folder given in the same command, else the file's own folder:
    its sidecar and index row are the ones a run on that folder makes.
    """
    given = list(paths) or list(settings.roots)
    if not given:
        raise ConfigError("no folder given: name one (analyzer run PATH) or set roots in the settings")
    folders: list[Path] = []
    images: list[tuple[Path, Path]] = []
    for path in given:
        if path.is_dir():
            folders.append(path.resolve())
        elif not files:
            raise ConfigError(f"{path} is not a folder")
        elif not path.exists():
            raise ConfigError(f"{path} does not exist")
        elif not path.is_file():
            raise ConfigError(f"{path} is neither a folder nor a file")
        elif not is_image_name(path.name):
            kinds = ", ".join(f".{ext}" for ext in sorted(IMAGE_EXTENSIONS))
            raise ConfigError(f"{path} is not an image file (names ending in {kinds})")
        else:  # the folder is resolved, the name kept: a symlinked image is analysed as the walk would
            images.append((path, path.absolute().parent.resolve() / path.name))
    folders = list(dict.fromkeys(folders))
    single: dict[Path, list[str]] = {}
    for path, image in images:
        root = root_of_file(image, settings, folders)
        rel = image.relative_to(root).as_posix()
        if not wanted_path(rel, settings.include, settings.exclude):
            raise ConfigError(f"{path} is left out by the include/exclude settings or a hidden folder")
        if root not in folders:
            single.setdefault(root, []).append(rel)
    targets = [Target(root) for root in folders]
    targets += [Target(root, tuple(dict.fromkeys(rels))) for root, rels in single.items()]
    if settings.sidecar_dir is not None:
        names = [t.root.name for t in targets]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ConfigError(f"with sidecar_dir set, roots need distinct folder names ({', '.join(dupes)})")
    return targets


def root_of_file(image: Path, settings: Settings, also: Sequence[Path] = ()) -> Path:
    """The root of an image file given alone (``image`` absolute): the nearest enclosing folder that
    is a root already (has a state folder with a root id), a configured root or one of ``also``,
    else the image's own folder."""
    known = {root.resolve() for root in settings.roots} | set(also)
    for folder in image.parents:
        if folder in known or (state_folder(folder, settings) / ROOT_ID_FILE).is_file():
            return folder
    return image.parent


def state_folder(root: Path, settings: Settings) -> Path:
    """The root's shared state folder: ``<root or its mirror>/.analyzer``, or under ``state_dir``."""
    if settings.state_dir is not None:
        key = hashlib.sha256(os.fsencode(root)).hexdigest()[:16]
        return settings.state_dir.resolve() / f"{root.name}-{key}"
    base = settings.sidecar_dir.resolve() / root.name if settings.sidecar_dir else None
    return (base or root) / ".analyzer"


def wildcards_dir(settings: Settings, stores: Sequence[Store]) -> Path:
    """Where the wildcard files go: the setting, else beside the mirrored sidecars, else in the first root."""
    if settings.wildcards_dir is not None:
        return settings.wildcards_dir.resolve()
    if settings.sidecar_dir is not None:
        return settings.sidecar_dir.resolve() / "wildcards"
    return stores[0].root / "wildcards"


def skip_dirs(settings: Settings, stores: Sequence[Store]) -> list[Path]:
    """The analyzer's own output folders, never scanned for images."""
    skip = [s.layout.sidecar_base for s in stores if s.layout.sidecar_base is not None]
    skip.append(wildcards_dir(settings, stores))
    if settings.state_dir is not None:
        skip.append(settings.state_dir)
    return skip


LOCK_STRIPES = 64


class SidecarLocks:
    """Advisory locks that make one sidecar's read-merge-write exclusive between the threads and
    processes of a host (and between hosts where the share supports ``flock``).

    Sidecars map onto ``LOCK_STRIPES`` lock files in the root's state folder; a batch takes the
    ones it needs in one order, so two writers never wait for each other in a circle.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._threads = [threading.Lock() for _ in range(LOCK_STRIPES)]
        self._fds: dict[int, int | None] = {}
        self._open_lock = threading.Lock()
        self._warned = False

    @staticmethod
    def stripe(rel: str, plugin: str) -> int:
        """The lock of a sidecar: one per folder and plugin (a batch, mostly of one folder, takes one or two)."""
        rel_dir = rel.rpartition("/")[0]
        return zlib.crc32(f"{rel_dir}\0{plugin}".encode()) % LOCK_STRIPES

    def _fd(self, stripe: int) -> int | None:
        with self._open_lock:
            if stripe not in self._fds:
                try:
                    self.folder.mkdir(parents=True, exist_ok=True)
                    self._fds[stripe] = os.open(self.folder / f"{stripe:02d}.lock", os.O_RDWR | os.O_CREAT, 0o644)
                except OSError as exc:  # a read-only share: only this process's threads are kept apart
                    if not self._warned:
                        self._warned = True
                        log.warning(
                            "cannot lock sidecars in %s (%s): other processes are not kept out", self.folder, exc
                        )
                    self._fds[stripe] = None
            return self._fds[stripe]

    def acquire(self, stripe: int) -> None:
        self._threads[stripe].acquire()
        fd = self._fd(stripe)
        if fd is not None:
            with contextlib.suppress(OSError):  # a file system without locks: as if the lock were taken
                fcntl.flock(fd, fcntl.LOCK_EX)

    def release(self, stripe: int) -> None:
        fd = self._fds.get(stripe)
        if fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
        self._threads[stripe].release()

    def close(self) -> None:
        with self._open_lock:
            for fd in self._fds.values():
                if fd is not None:
                    os.close(fd)
            self._fds.clear()


@contextlib.contextmanager
def locked(sidecars: Iterable[tuple[Store, str, str]]) -> Iterator[None]:
    """Hold the locks of these (store, image rel, plugin) sidecars, taken in one global order (blocking)."""
    wanted = sorted(
        {(store.id, id(store), SidecarLocks.stripe(rel, plugin)): store for store, rel, plugin in sidecars}.items()
    )
    taken: list[tuple[Store, int]] = []
    try:
        for (_, _, stripe), store in wanted:
            store.locks.acquire(stripe)
            taken.append((store, stripe))
        yield
    finally:
        for store, stripe in reversed(taken):
            store.locks.release(stripe)


def _root_id(state: Path, root: Path, *, create: bool = True) -> str:
    """The root's id from its state folder, made there (once, by whichever process is first) if absent."""
    path = state / ROOT_ID_FILE
    with contextlib.suppress(OSError):
        found = path.read_text().strip()
        if found:
            return found
    if not create:  # a dry run: an id for this run only
        return hashlib.sha256(os.fsencode(root)).hexdigest()[:16]
    new = uuid.uuid4().hex[:16]
    tmp = state / f".{ROOT_ID_FILE}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        state.mkdir(parents=True, exist_ok=True)
        tmp.write_text(new + "\n")
        with contextlib.suppress(FileExistsError):  # another process wrote one first: that one counts
            os.link(tmp, path)  # atomic, and never replaces an existing id
        return path.read_text().strip() or new
    except OSError as exc:
        fallback = hashlib.sha256(os.fsencode(root)).hexdigest()[:16]
        log.warning("cannot keep an id for %s in %s (%s); using one made from its path", root, state, exc)
        return fallback
    finally:
        tmp.unlink(missing_ok=True)


@dataclass
class StagedSidecar:
    """A merged sidecar written under its temporary name (:meth:`Store.stage`)."""

    store: Store
    rel: str
    digester: Digester
    doc: dict[str, Any]
    staged: Staged
    corrupt: bool


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Store:
    """One root: its sidecars, index and id."""

    def __init__(
        self, root: Path, layout: Layout, index: Index, state_dir: Path, root_id: str, host: str | None = None
    ) -> None:
        self.root = root
        self.layout = layout
        self.index = index
        self.state_dir = state_dir
        """The root's shared state folder: its id, the sidecar locks, and ``hosts/<host id>/`` per machine."""
        self.id = root_id
        self.host = hosts.host_id(host)
        self.owner = hosts.owner(self.host)
        """This process, as its temporary files and claims name it."""
        self.locks = SidecarLocks(state_dir / "locks")
        self.only: tuple[str, ...] | None = None
        """The images (relative paths) a walk of this store looks at; None: every image under the root."""
        self.embeddings = EmbeddingStore(state_dir / "embeddings")
        """Image embeddings per model and content hash: apart from the index, never thrown away with it."""
        """The images (relative paths) a walk of this store looks at; None: every image under the root."""

    @classmethod
    def open(
        cls, root: Path, settings: Settings, *, read_only: bool = False, only: Sequence[str] | None = None
    ) -> Store:
        """Open the store of ``root`` (an absolute folder) with the layout ``settings`` ask for.

        ``read_only`` (a dry run): nothing is created or changed, not even the index or the root's id.
        ``only``: the images (relative paths) a walk of this store looks at; default every one.
        """
        base = settings.sidecar_dir.resolve() / root.name if settings.sidecar_dir else None
        key = hashlib.sha256(os.fsencode(root)).hexdigest()[:16]
        state = state_folder(root, settings)
        host = hosts.host_id(settings.host_id)
        # SQLite must not be shared between machines: one index (and its claims) per host
        if read_only:
            index = Index(state / "hosts" / host / INDEX_NAME, read_only=True)
            store = cls(root, Layout(root, base), index, state, _root_id(state, root, create=False), host)
        else:
            index = Index.open_for(state / "hosts" / host, f"{key}-{host}")
            store = cls(root, Layout(root, base), index, state, _root_id(state, root), host)
        store.only = tuple(only) if only is not None else None
        store.embeddings.read_only = read_only
        return store

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r}, id={self.id!r})"

    @property
    def changes(self) -> int:
        """A count that grows with every change of the store's index (sidecar written, image forgotten)."""
        return self.index.changes

    def image_id(self, rel: str) -> str:
        """The image's id: this root's id and a digest of its path in the root."""
        return f"{self.id}-{hashlib.sha256(rel.encode()).hexdigest()[:16]}"

    def sidecar_path(self, rel: str, plugin: str) -> Path:
        return self.layout.sidecar_path(rel, plugin)

    # -- reading -----------------------------------------------------------------------
    def read(self, rel: str, plugin: str) -> dict[str, Any] | None:
        """The image's sidecar of ``plugin`` (None if there is none). Raises CorruptSidecar, OSError."""
        found = self.read_with_stat(rel, plugin)
        return found[0] if found is not None else None

    def read_with_stat(self, rel: str, plugin: str) -> tuple[dict[str, Any], Stat] | None:
        """The sidecar and the (size, mtime_ns) of the very file read. Every sidecar read comes here."""
        return read_sidecar_with_stat(self.layout.sidecar_file(rel, plugin))

    def read_or_set_aside(self, rel: str, plugin: str, *, set_aside: bool) -> tuple[dict[str, Any] | None, bool]:
        """The sidecar (None if there is none) and whether it was corrupt. Raises OSError.

        A corrupt sidecar is reported and, with ``set_aside``, moved aside so it is redone.
        """
        found, corrupt = self._read_or_set_aside(rel, plugin, set_aside)
        return (found[0] if found is not None else None), corrupt

    def _read_or_set_aside(
        self, rel: str, plugin: str, set_aside: bool
    ) -> tuple[tuple[dict[str, Any], Stat] | None, bool]:
        try:
            return self.read_with_stat(rel, plugin), False
        except CorruptSidecar as exc:
            path = self.sidecar_path(rel, plugin)
            if set_aside:
                moved = quarantine(path)
                log.warning("corrupt sidecar moved aside to %s (%s); the image will be analysed again", moved, exc)
            else:
                log.warning("corrupt sidecar %s (%s); a run would move it aside and redo it", path, exc)
            return None, True

    def load(
        self, rel_dir: str, name: str, digester: Digester, *, set_aside: bool
    ) -> tuple[SidecarRow | None, dict[str, Any] | None, bool]:
        """Read a sidecar the index does not know and index it: (digest, its file_info, was corrupt)."""
        rel = join_rel(rel_dir, name)
        pname = digester.plugin.name
        try:
            found, corrupt = self._read_or_set_aside(rel, pname, set_aside)
            if found is None:
                if corrupt:
                    self.index.delete_sidecar(rel_dir, name, pname)
                return None, None, corrupt
        except OSError as exc:
            log.error("cannot read sidecar %s: %s", self.sidecar_path(rel, pname), exc.strerror or exc)
            return None, None, False
        doc, stat = found
        row = digester.row(doc, stat)
        self.index.put_sidecar(rel_dir, name, pname, row.stat, row)
        return row, doc.get("file_info"), False

    def values(
        self,
        rel: str,
        image_hash: str,
        selectors: Iterable[Selector],
        preferred: Mapping[str, Mapping[str, Sequence[str]]],
    ) -> tuple[dict[str, Any], set[str]]:
        """What ``selectors`` name for the image, by selector text (``MISSING`` where nothing is), and
        the selectors whose plugin failed for the image (an error for their mode, no result).

        Only results made for the image's current content (``image_hash``) count. ``preferred``
        gives, per plugin and mode, the model ids to prefer when a mode has several results.
        """
        docs: dict[str, dict[str, Any] | None] = {}
        out: dict[str, Any] = {}
        failed: set[str] = set()
        for sel in selectors:
            if sel.plugin not in docs:
                try:
                    doc = self.read(rel, sel.plugin)
                except (CorruptSidecar, OSError):
                    doc = None
                docs[sel.plugin] = doc if doc is not None and doc["file_info"].get("hash") == image_hash else None
            doc = docs[sel.plugin]
            analysis = doc["analysis"] if doc is not None else {}
            out[sel.text] = _value(sel, analysis, preferred)
            if not analysis.get(sel.mode) and doc is not None and doc["errors"].get(sel.mode):
                failed.add(sel.text)
        return out, failed

    def values_of(
        self,
        images: Sequence[tuple[str, str]],
        selectors: Sequence[Selector],
        preferred: Mapping[str, Mapping[str, Sequence[str]]],
    ) -> Iterator[tuple[dict[str, Any], set[str]]]:
        """For ``(rel, content hash)`` images, what :meth:`values` gives, in their order: a folder
        at a time from the index's copy of the results (give them sorted by folder: one query per
        run of one folder), reading sidecars only for an image the index has no results for."""
        for rel_dir, run in itertools.groupby(images, key=lambda image: image[0].rpartition("/")[0]):
            group = list(run)
            names = [(rel.rpartition("/")[2], image_hash) for rel, image_hash in group]
            stored = self.values_in(rel_dir, names, selectors, preferred) if selectors else [{}] * len(group)
            for (rel, image_hash), values in zip(group, stored, strict=True):
                yield (values, set()) if values is not None else self.values(rel, image_hash, selectors, preferred)

    def values_in(
        self,
        rel_dir: str,
        images: Sequence[tuple[str, str]],
        selectors: Sequence[Selector],
        preferred: Mapping[str, Mapping[str, Sequence[str]]],
    ) -> list[dict[str, Any] | None]:
        """For ``(name, content hash)`` images of one folder, what :meth:`values` gives, from the
        index's copy of the results (one query, no sidecar read); None for an image the index has
        no results for from one of the selectors' plugins (no such sidecar, or not indexed):
        :meth:`values` reads its sidecars and says which results failed."""
        plugins = sorted({sel.plugin for sel in selectors})
        few = len(images) <= FEW_BY_NAME  # a few of a folder's images: asked for by name
        stored = self.index.results_in(rel_dir, plugins, [name for name, _ in images] if few else None)
        out: list[dict[str, Any] | None] = []
        for name, image_hash in images:
            found = stored.get(name, {})
            if len(found) < len(plugins) or any(found[p][0] != image_hash for p in plugins):
                out.append(None)
                continue
            analyses = {plugin: orjson.loads(data) for plugin, (_, data) in found.items()}
            out.append({sel.text: _value(sel, analyses[sel.plugin], preferred) for sel in selectors})
        return out

    def read_docs(self, rel: str, plugins: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The image's readable sidecars, by plugin (a corrupt or unreadable one is left where it is)."""
        docs = {}
        for pname in plugins:
            try:
                doc = self.read(rel, pname)
            except (CorruptSidecar, OSError) as exc:
                log.warning("sidecar %s not carried over: %s", self.sidecar_path(rel, pname), exc)
                continue
            if doc is not None:
                docs[pname] = doc
        return docs

    # -- writing -----------------------------------------------------------------------
    def stage(
        self,
        rel: str,
        digester: Digester,
        *,
        image_hash: str | None,
        stat: Stat,
        created_ns: int | None,
        results: Entries,
        errors: Entries,
        now: str | None = None,
    ) -> StagedSidecar:
        """Merge results and errors into the image's sidecar under a temporary name (blocking).

        ``image_hash`` None means the image could not be read: what the sidecar knew is kept and
        the errors added. :func:`~analyzer.sidecar.publish` puts it in place, then :meth:`written`
        indexes it. Raises OSError.
        """
        plugin = digester.plugin
        doc, corrupt = self.read_or_set_aside(rel, plugin.name, set_aside=True)
        if doc is not None and not image_hash:
            info = doc["file_info"]  # unreadable now: keep what was known, add the errors
        else:
            if doc is None or doc["file_info"].get("hash") != image_hash:
                doc = new_doc(plugin.name, plugin.version)
            info = file_info(
                rel=rel, hash_=image_hash or None, size=stat[0], mtime_ns=stat[1], created_ns=created_ns, now=now
            )
        merge_outcomes(doc, info=info, plugin_version=plugin.version, results=results, errors=errors)
        staged = stage(self.layout.sidecar_file(rel, plugin.name), dumps(doc), self.owner)
        return StagedSidecar(self, rel, digester, doc, staged, corrupt)

    def written(self, sidecar: StagedSidecar, stat: Stat) -> None:
        """A staged sidecar is in place with this (size, mtime_ns): the index learns what it says."""
        row = sidecar.digester.row(sidecar.doc, stat)
        rel_dir, _, name = sidecar.rel.rpartition("/")
        self.index.put_sidecar(rel_dir, name, sidecar.digester.plugin.name, row.stat, row)

    def set_manual(self, rel: str, digester: Digester, mode: str, value: Any) -> None:
        """Record a person's result of ``mode`` for the image (``value`` None removes it), beside the
        models' results: it wins over them wherever results are read (selectors, wildcards) and
        stays when they are redone, until the image's content changes. Blocking; raises OSError."""
        from .hashing import hash_file

        plugin = digester.plugin
        image_hash, size, mtime_ns = hash_file(self.root / rel)
        with locked([(self, rel, plugin.name)]):
            doc, _ = self.read_or_set_aside(rel, plugin.name, set_aside=True)
            if doc is None or doc["file_info"].get("hash") != image_hash:
                doc = new_doc(plugin.name, plugin.version)
                doc["file_info"] = file_info(rel=rel, hash_=image_hash, size=size, mtime_ns=mtime_ns, created_ns=None)
            by_model = doc["analysis"].setdefault(mode, {})
            if value is None:
                by_model.pop(MANUAL, None)
                if not by_model:
                    del doc["analysis"][mode]
            else:
                by_model[MANUAL] = {"result": as_json(value), "created_at": _now(), "parameters": {"by": "hand"}}
            self._write_doc(rel, digester, doc)
        self.index.commit()

    def put_result(
        self,
        rel: str,
        digester: Digester,
        mode: str,
        model: str,
        value: Any,
        parameters: dict[str, Any],
        image_hash: str,
    ) -> bool:
        """Record a result made outside a run (a refinement of a whole collection, say) beside the
        image's others, if its sidecar still describes content ``image_hash``; False when the image
        changed or its sidecar is gone (the result would describe other content). Blocking; raises
        OSError; :meth:`commit` makes the index rows durable."""
        plugin = digester.plugin
        with locked([(self, rel, plugin.name)]):
            doc, _ = self.read_or_set_aside(rel, plugin.name, set_aside=False)
            if doc is None or doc["file_info"].get("hash") != image_hash:
                return False
            entry = {"result": as_json(value), "created_at": _now(), "parameters": as_json(parameters)}
            merge_outcomes(
                doc, info=doc["file_info"], plugin_version=plugin.version, results=[(mode, model, entry)], errors=[]
            )
            self._write_doc(rel, digester, doc)
        return True

    def _write_doc(self, rel: str, digester: Digester, doc: dict[str, Any]) -> None:
        stat = atomic_write_bytes(self.sidecar_path(rel, digester.plugin.name), dumps(doc), self.owner)
        row = digester.row(doc, stat)
        rel_dir, _, name = rel.rpartition("/")
        self.index.put_sidecar(rel_dir, name, digester.plugin.name, row.stat, row)

    def prune(self, digester: Digester, keep: Callable[[str, str], bool]) -> int:
        """Remove from every sidecar of the plugin the results and errors whose (mode, model id)
        ``keep`` refuses (label lists no longer configured, say); how many results went (blocking)."""
        plugin = digester.plugin
        removed = 0
        for rel in self.index.sidecar_images(plugin.name):
            with locked([(self, rel, plugin.name)]):
                try:
                    doc, _ = self.read_or_set_aside(rel, plugin.name, set_aside=False)
                except OSError:
                    continue
                if doc is None:
                    continue
                gone = changed = 0
                for section in ("analysis", "errors"):
                    for mode in list(doc.get(section, {})):
                        for model in list(doc[section][mode]):
                            if not keep(mode, model):
                                del doc[section][mode][model]
                                changed += 1
                                gone += section == "analysis"
                        if not doc[section][mode]:
                            del doc[section][mode]
                if not changed:
                    continue
                self._write_doc(rel, digester, doc)
                removed += gone
        self.index.commit()
        return removed

    def place(self, docs: Mapping[str, dict[str, Any]], rel: str, old: tuple[Store, str] | None = None) -> None:
        """Write ``docs`` as the sidecars of the image now at ``rel``; remove them from the ``old`` place.

        How sidecars follow an image that moved (the watcher's moves; blocking).
        """
        for pname, doc in docs.items():
            info = doc.setdefault("file_info", {})
            info["path"], info["file_name"] = rel, rel.rsplit("/", 1)[-1]
            with locked([(self, rel, pname)]):
                atomic_write_bytes(self.sidecar_path(rel, pname), dumps(doc), self.owner)
            if old is not None and (old[0] is not self or old[1] != rel):
                old[0].sidecar_path(old[1], pname).unlink(missing_ok=True)

    def remove_abandoned(self, folder: str | Path, names: Iterable[str]) -> int:
        """Remove the temporary files among ``names`` in ``folder`` whose writers are gone (a crash,
        a power cut), never a live writer's, of this host or another; returns how many (blocking)."""
        removed = 0
        now = time.time()
        if self.index.read_only:  # a dry run changes nothing
            return 0
        for name in names:
            path = os.path.join(folder, name)
            try:
                if hosts.abandoned_temp(name, os.stat(path).st_mtime_ns, self.host, now):
                    os.unlink(path)
                    removed += 1
            except OSError:
                continue  # gone already, or not ours to remove
        if removed:
            log.info("removed %d temporary files left by writers that are gone, in %s", removed, folder)
        return removed

    def delete_sidecars(self, rel: str, plugins: Iterable[str]) -> None:
        for pname in plugins:
            self.sidecar_path(rel, pname).unlink(missing_ok=True)

    def forget(self, rel: str) -> None:
        """The image is gone from this path: the index drops it (its results leave the wildcards)."""
        rel_dir, _, name = rel.rpartition("/")
        self.index.delete_names(rel_dir, [name])

    def forget_folder(self, rel_dir: str) -> list[str]:
        """A folder is gone: the index drops everything under it; returns the images it knew there."""
        gone: list[str] = []
        for d in sorted(self.index.dirs()):
            if d == rel_dir or d.startswith(rel_dir + "/"):
                gone.extend(join_rel(d, name) for name in self.index.load_dir(d))
                self.index.delete_dirs([d])
        return gone

    def wildcard_rows(self, plugins: Iterable[str]) -> Iterator[tuple[str, dict[str, list[str]]]]:
        """(plugin, {mode: wildcard entries}) for every indexed sidecar of these plugins, in path order."""
        return self.index.wildcard_rows(plugins)

    def note_reading_rules(self, plugins: Iterable[AnalyzerPlugin]) -> None:
        """Plugins whose reading rules changed since the last run get their sidecars read again
        (noted only by a walk of the whole root, which reads them all again)."""
        if self.only is not None:
            return
        for plugin in plugins:
            if self.index.reading_rules(plugin.name, plugin.reading_rules()):
                log.info("%s: %s reads its results by new rules: its sidecars are read again", self.root, plugin.name)

    def commit(self) -> None:
        self.index.commit()

    def close(self) -> None:
        try:
            self.embeddings.flush()
        except OSError as exc:  # a cache: losing it costs time, never results
            log.warning("cannot keep image embeddings in %s: %s", self.embeddings.folder, exc.strerror or exc)
        finally:
            try:
                self.index.close()
            finally:
                self.locks.close()
