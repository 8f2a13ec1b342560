"""``analyzer watch``: the engine kept running, fed by file system events.

::

    watchdog observer thread --(deque + one wake-up per burst)--> event loop
        created / modified / moved in  -> pending (quiet-period stability check, then a decode check)
        moved within                   -> sidecars follow the image, the index forgets the old path
        deleted / moved out            -> the index forgets it (wildcards drop it); sidecars per on_delete
    stable images -> Watcher.ready() -> watch() hands them to Engine.submit -> the engine's triage, plan...

The :class:`Watcher` knows nothing of the engine: it produces ready images (an async iterator,
like watchfiles' ``awatch``) and moves and forgets sidecars through the stores. :func:`watch` is
the consumer: it opens the engine, starts the observer before the first walk (so nothing that
lands during it is missed; images modified less than a quiet period ago are left to the
stability check instead), then feeds the engine what the watcher yields and writes the wildcard
files once the results stop changing for a while. An image already in the pipeline is never
queued twice: the engine tells the watcher (``on_released``) to look again at an image asked
for meanwhile, so a burst of events or the same content saved again costs one analysis.

The watcher's blocking work (moves, deletes, taking over moved results) runs in one thread of
its own, in the order the events arrived; stat and decode checks run in the default executor.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import logging
import os
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from watchdog.events import FileSystemEvent, FileSystemEventHandler

from .discovery import Stat, join_rel, wanted_path
from .engine import Engine, stop_on_signals
from .errors import ConfigError, FileChangedError, ImageError, ImageTooLarge
from .hashing import hash_file
from .images import has_end_marker, open_image
from .progress import RunStats
from .settings import Settings
from .store import Store

log = logging.getLogger("analyzer")

Verdict = Literal["gone", "wait", "ready", "undecodable"]

INOTIFY_HELP = {
    errno.ENOSPC: (
        "the inotify watch limit is reached (fs.inotify.max_user_watches = {watches}: one watch per folder). "
        "Raise it with `sudo sysctl fs.inotify.max_user_watches=524288` and keep it across reboots with "
        "`echo fs.inotify.max_user_watches=524288 | sudo tee /etc/sysctl.d/90-analyzer.conf`"
    ),
    errno.EMFILE: (
        "the inotify instance limit is reached (fs.inotify.max_user_instances = {instances}). "
        "Raise it with `sudo sysctl fs.inotify.max_user_instances=1024` (and in /etc/sysctl.d/ to keep it)"
    ),
}


def _proc_value(name: str) -> str:
    try:
        return Path(f"/proc/sys/fs/inotify/{name}").read_text().strip()
    except OSError:
        return "?"


def inotify_limit_message(exc: OSError) -> str | None:
    """What to do about an inotify limit, or None if ``exc`` is not one."""
    template = INOTIFY_HELP.get(exc.errno or 0)
    if template is None:
        return None
    return template.format(watches=_proc_value("max_user_watches"), instances=_proc_value("max_user_instances"))


def make_observer(polling: bool, interval: float) -> Any:
    """watchdog's native observer (inotify on Linux), or its polling observer."""
    if polling:
        from watchdog.observers.polling import PollingObserver

        return PollingObserver(timeout=interval)
    from watchdog.observers import Observer

    return Observer()


MOVE_PAIRING = 0.75
ORPHAN_SECONDS = 60.0
"""How long a deleted image's sidecars are remembered, for the same content reappearing elsewhere."""
MAX_ORPHANS = 10_000
"""At most this many are remembered (a whole archive deleted at once must not fill memory)."""


Key = tuple[Path, str]
"""(root, image path relative to it)"""


@dataclass(frozen=True)
class Ready:
    """Images of one folder that are complete and may be analysed."""

    store: Store
    rel_dir: str
    names: list[str]


RESCAN = "rescan"
"""Yielded by :meth:`Watcher.ready` when the folders should be walked again (after events were lost)."""


@dataclass
class Orphan:
    """A deleted image's sidecars, kept in memory for a while."""

    hash: str
    size: int
    ctx: Store
    rel: str
    docs: dict[str, dict[str, Any]]
    at: float


@dataclass
class Pending:
    """An image waiting to be complete: no event and no change of size or mtime for a quiet period."""

    ctx: Store
    rel: str
    last_event: float
    """Monotonic time of the last event (or request) for it."""
    due: float
    stat: Stat | None = None
    stat_since: float = 0.0
    undecodable_since: float | None = None

    @property
    def path(self) -> Path:
        return self.ctx.root / self.rel

    @property
    def key(self) -> Key:
        return (self.ctx.root, self.rel)


class Watcher:
    """Follows file system events under the stores' roots and yields the images that are ready."""

    def __init__(
        self, settings: Settings, stores: Sequence[Store], plugins: Sequence[str], skip: Sequence[Path]
    ) -> None:
        """``plugins``: whose sidecars follow a moved image; ``skip``: folders whose events are ignored."""
        self.core = settings
        self.settings = settings.watch
        self.ctxs = list(stores)
        self.plugins = list(plugins)
        self.skip = [os.path.realpath(p) + os.sep for p in skip]
        self.quiet = settings.watch.quiet_period
        self.pending: dict[Key, Pending] = {}
        self.polling = settings.watch.polling
        self.observer: Any = None
        self._next_check = 0.0
        """Monotonic time of the next look at the observer and the watched folders."""
        self._last_expiry = time.monotonic()
        self._closed = False
        self._events: deque[Any] = deque()
        self._events_lock = threading.Lock()
        self._wake_scheduled = False
        self._wake = asyncio.Event()
        self._rescan = False
        self._ops = concurrent.futures.ThreadPoolExecutor(1, "analyzer-watch")
        self._tasks: list[asyncio.Task[None]] = []
        self.events_seen = 0
        self.orphans: dict[int, list[Orphan]] = {}
        """Recently deleted images by size (touched only in the watcher's thread)."""
        self._orphan_count = 0

    # -- the consumer's side ------------------------------------------------------------
    def start(self) -> None:
        """Start the observer (on the event loop): events from now on are followed."""
        self.loop = asyncio.get_running_loop()
        self._ready: asyncio.Queue[Ready | str] = asyncio.Queue(maxsize=64)
        self._start_observer()
        self._tasks.append(asyncio.create_task(self._stabilize(), name="analyzer-watch-stabilize"))
        self._tasks.append(asyncio.create_task(self._look_after(), name="analyzer-watch-observer"))
        log.info(
            "watching %s (%s); an image is analysed once unchanged for %gs",
            ", ".join(str(c.root) for c in self.ctxs),
            self._how(),
            self.quiet,
        )

    async def ready(self) -> AsyncIterator[Ready | str]:
        """Images that are complete, folder by folder, as they become so; :data:`RESCAN` now and then."""
        while True:
            yield await self._ready.get()

    def retry(self, item: Ready) -> None:
        """Images the consumer could not take: looked at again after a quiet period, not lost."""
        for name in item.names:
            self._touch(item.store, join_rel(item.rel_dir, name))

    def _how(self) -> str:
        return f"polling every {self.settings.poll_interval:g}s" if self.polling else "file system events"

    def defer(self, ctx: Store, rel: str, stat: Stat) -> bool:
        """From the walk's thread: an image modified within the quiet period waits for the stability check."""
        if time.time_ns() - stat[1] >= self.quiet * 1e9:
            return False
        self._threadsafe(self._touch, ctx, rel)
        return True

    async def _look_after(self) -> None:
        """Keep the observer running, forget old orphans, ask for a walk when events may have been lost."""
        while True:
            await asyncio.sleep(0.25)
            try:
                await self._check_observer()
                if self._rescan:
                    self._rescan = False
                    await self._ready.put(RESCAN)
                if self.orphans and time.monotonic() - self._last_expiry >= 5:
                    self._last_expiry = time.monotonic()
                    await self._in_ops(self._expire_orphans)
            except Exception:  # a failing round (a full disk, say) is logged; the watcher keeps going
                log.exception("watch: looking after the observer failed; trying again")
                await asyncio.sleep(1.0)

    def released(self, root: Path, rel: str, recheck: bool) -> None:
        """The engine wrote all work of an image; ``recheck``: it was asked for again meanwhile."""
        if recheck:
            ctx = next((c for c in self.ctxs if c.root == root), None)
            if ctx is not None:
                self._touch(ctx, rel)

    def plugin_ready(self, name: str) -> None:
        self._rescan = True

    async def close(self) -> None:
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.observer is not None:
            observer, self.observer = self.observer, None
            await asyncio.to_thread(self._stop_observer, observer)
        self._ops.shutdown(wait=True)

    def heartbeat(self) -> str:
        return f" waiting={len(self.pending)} events={self.events_seen}"

    # -- the observer ------------------------------------------------------------------
    def _start_observer(self) -> None:
        handler = _Handler(self)
        try:
            self.observer = self._schedule(make_observer(self.polling, self.settings.poll_interval), handler)
            return
        except OSError as exc:
            message = inotify_limit_message(exc)
            if message is None or self.polling:
                raise ConfigError(f"cannot watch {', '.join(str(c.root) for c in self.ctxs)}: {exc}") from exc
            log.error("%s; falling back to polling every %gs", message, self.settings.poll_interval)
        self.polling = True
        try:
            self.observer = self._schedule(make_observer(True, self.settings.poll_interval), handler)
        except OSError as exc:
            raise ConfigError(f"cannot watch {', '.join(str(c.root) for c in self.ctxs)}: {exc}") from exc

    def _schedule(self, observer: Any, handler: Any) -> Any:
        for ctx in self.ctxs:
            observer.schedule(handler, str(ctx.root), recursive=True)
        try:
            observer.start()
        except BaseException:
            self._stop_observer(observer)
            raise
        return observer

    @staticmethod
    def _stop_observer(observer: Any) -> None:
        with contextlib.suppress(Exception):
            observer.stop()
            observer.join(timeout=10)

    async def _check_observer(self) -> None:
        """Keep an observer running: after its thread died (a new folder beyond the inotify limit)
        or a watched folder went away (an unmounted share), start one again once the folders are
        there, and walk them once to catch up with what happened meanwhile. Starting and stopping
        run in a thread: a polling observer's first snapshot of a big tree takes a while."""
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + min(self.settings.poll_interval, 1.0)
        observer = self.observer
        missing = [str(c.root) for c in self.ctxs if not c.root.is_dir()]
        alive = observer is not None and observer.is_alive() and all(e.is_alive() for e in observer.emitters)
        if alive and not missing:
            return
        if observer is not None:
            self.observer = None
            await asyncio.to_thread(self._stop_observer, observer)
        if missing:
            if observer is not None:
                log.error("watched folder %s is gone (unmounted?); watching again once it is back", ", ".join(missing))
            return
        if observer is not None and not self.polling:
            log.error(
                "file system events stopped arriving (most likely %s); falling back to polling every %gs",
                inotify_limit_message(OSError(errno.ENOSPC, "")),
                self.settings.poll_interval,
            )
            self.polling = True
        try:
            self.observer = await asyncio.to_thread(
                self._schedule, make_observer(self.polling, self.settings.poll_interval), _Handler(self)
            )
        except OSError as exc:
            log.error("cannot watch the folders (%s); trying again", exc.strerror or exc)
            return
        log.info("watching again (%s)", self._how())
        self._rescan = True

    # -- events (observer thread -> event loop) ----------------------------------------
    def hand_off(self, event: Any) -> None:
        """Called in the observer's thread: queue the event, wake the loop once per burst."""
        with self._events_lock:
            self._events.append(event)
            if self._wake_scheduled:
                return
            self._wake_scheduled = True
        self._threadsafe(self._drain)

    def _threadsafe(self, fn: Any, *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closing: the restart's walk finds it
            self.loop.call_soon_threadsafe(fn, *args)

    def _drain(self) -> None:
        with self._events_lock:
            events, self._events = self._events, deque()
            self._wake_scheduled = False
        if self._closed:
            return  # stopping: a restart's walk finds whatever these were about
        for event in events:
            self.events_seen += 1
            try:
                self._on_event(event)
            except Exception:  # one odd event never stops the watcher
                log.exception("could not handle %s", event)

    def _split(self, raw: bytes | str) -> tuple[Store, str] | None:
        """The root an event's path is in and the path relative to it (``/``-separated)."""
        path = os.fsdecode(raw)
        for ctx in self.ctxs:
            root = str(ctx.root)
            if path.startswith(root + os.sep):
                return ctx, path[len(root) + 1 :].replace(os.sep, "/")
        return None

    def _locate(self, raw: bytes | str) -> tuple[Store, str] | None:
        """The root and relative path of an event's path, if it names an image the walk would list."""
        if any(os.fsdecode(raw).startswith(s) for s in self.skip):
            return None
        found = self._split(raw)
        core = self.core
        return found if found is not None and wanted_path(found[1], core.include, core.exclude) else None

    def _on_event(self, event: Any) -> None:
        kind = event.event_type
        if kind in ("opened", "closed_no_write"):
            return
        if event.is_directory:
            if kind == "deleted":  # also a folder moved out of the tree: no event per file
                self._forget_folder(event.src_path)
            return  # a folder moved in or within comes with an event per file
        if kind == "moved":
            src, dest = self._locate(event.src_path), self._locate(event.dest_path)
            if src is not None:
                self.pending.pop((src[0].root, src[1]), None)
                if dest is not None:
                    self._ops.submit(self._guard, self._moved, src, dest)
                else:
                    self._ops.submit(self._guard, self._deleted, *src)
            if dest is not None:
                self._touch(*dest)
        elif kind == "deleted":
            src = self._locate(event.src_path)
            if src is not None:
                self.pending.pop((src[0].root, src[1]), None)
                self._ops.submit(self._guard, self._deleted, *src)
        else:  # created, modified, closed, attrib
            found = self._locate(event.src_path)
            if found is not None:
                self._touch(*found)

    def _touch(self, ctx: Store, rel: str) -> None:
        now = time.monotonic()
        item = self.pending.get((ctx.root, rel))
        if item is None:
            self.pending[(ctx.root, rel)] = Pending(ctx, rel, now, now + self._hold())
        else:
            item.last_event, item.due = now, now + self._hold()
        self._wake.set()

    def _hold(self) -> float:
        """Seconds from an image's last event to its check. watchdog holds the first half of an
        inotify move 0.5 s to pair it with the second, so with events an image waits a little longer:
        otherwise a move whose halves were not paired (into a folder made a moment before) could
        be taken for a new image before its deletion arrives."""
        return self.quiet if self.polling else max(self.quiet, MOVE_PAIRING)

    # -- stability ---------------------------------------------------------------------
    async def _stabilize(self) -> None:
        """Hand each pending image to the engine once it has been left alone for a quiet period."""
        while True:
            try:
                await self._stabilize_once()
            except Exception:  # never let one bad round end the watching
                log.exception("watch: checking waiting images failed; trying again")
                await asyncio.sleep(1.0)

    async def _stabilize_once(self) -> None:
        now = time.monotonic()
        due = [p for p in self.pending.values() if p.due <= now][:256]
        if not due:
            self._wake.clear()
            wait = min((p.due for p in self.pending.values()), default=now + 3600) - now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(wait, 0.01))
            return
        checked = [(p, p.last_event) for p in due]
        verdicts = await self.loop.run_in_executor(None, self._check_many, due)
        now = time.monotonic()
        ready: dict[tuple[int, str], list[str]] = {}
        for (item, seen), (verdict, retry_at) in zip(checked, verdicts, strict=True):
            if self.pending.get(item.key) is not item or item.last_event != seen:
                continue  # a newer event arrived meanwhile: its own check decides
            if verdict == "gone":
                del self.pending[item.key]
            elif verdict == "wait":
                item.due = retry_at
            elif verdict == "undecodable" and now - (item.undecodable_since or now) < self.settings.decode_timeout:
                item.undecodable_since = item.undecodable_since or now
                item.due = now + max(self.quiet, 1.0)
            else:  # ready, or undecodable for too long: the engine records why it cannot be read
                del self.pending[item.key]
                rel_dir, _, name = item.rel.rpartition("/")
                ready.setdefault((self.ctxs.index(item.ctx), rel_dir), []).append(name)
        for (i, rel_dir), names in ready.items():
            found = Ready(self.ctxs[i], rel_dir, names)
            try:
                if self.orphans:
                    await self._in_ops(self._adopt_all, found)
                await self._ready.put(found)
            except BaseException:
                self.retry(found)  # not lost: looked at again after a quiet period
                raise

    def _check_many(self, items: list[Pending]) -> list[tuple[Verdict, float]]:
        return [self._check(item) for item in items]

    def _check(self, item: Pending) -> tuple[Verdict, float]:
        """Stable (size and mtime unchanged for a quiet period) and decodable? (blocking)"""
        now = time.monotonic()
        try:
            st = os.stat(item.path)
        except FileNotFoundError:
            return "gone", 0.0
        except OSError:
            return "ready", 0.0  # unreadable: the engine records the error
        stat = (st.st_size, st.st_mtime_ns)
        if stat != item.stat:
            item.stat, item.stat_since = stat, now
        age = time.time() - st.st_mtime_ns / 1e9  # negative when a share's clock runs ahead
        unchanged_for = max(now - item.stat_since, age if age >= 0 else 0.0)
        if unchanged_for < self.quiet:
            return "wait", now + self.quiet - unchanged_for
        try:
            if has_end_marker(item.path):
                return "ready", 0.0  # finished, and the plugins decode it anyway: no decode here
            with open_image(item.path, max_pixels=self.core.max_image_pixels) as image:
                image.size  # noqa: B018  (open_image decodes every pixel)
        except ImageTooLarge:
            return "ready", 0.0
        except ImageError:
            return "undecodable", 0.0
        except OSError:
            return "ready", 0.0
        return "ready", 0.0

    # -- moves and deletes (in the watcher's thread, in event order) -------------------
    def _guard(self, fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("watch: %s%r failed", getattr(fn, "__name__", fn), args)

    def _moved(self, src: tuple[Store, str], dest: tuple[Store, str]) -> None:
        """An image moved within the watched folders: its sidecars follow it."""
        (sctx, srel), (dctx, drel) = src, dest
        docs = sctx.read_docs(srel, self.plugins)
        if docs:
            dctx.place(docs, drel, src)
        else:  # a folder moved with the sidecars beside its images: only their paths need fixing
            found = dctx.read_docs(drel, self.plugins)
            docs = {p: d for p, d in found.items() if d.get("file_info", {}).get("path") != drel}
            dctx.place(docs, drel)
        sctx.forget(srel)
        log.info("moved %r -> %r (%d sidecars followed)", srel, drel, len(docs))

    def _deleted(self, ctx: Store, rel: str) -> None:
        """An image deleted or moved out: forget it; keep its sidecars in memory a while in case it reappears."""
        if (ctx.root / rel).exists():
            return  # already back (saved again by delete and rename): nothing to forget
        ctx.forget(rel)
        docs = ctx.read_docs(rel, self.plugins)
        info = next((d["file_info"] for d in docs.values() if d.get("file_info", {}).get("hash")), None)
        if info is not None and self._orphan_count < MAX_ORPHANS:
            orphan = Orphan(info["hash"], int(info.get("size") or 0), ctx, rel, docs, time.monotonic())
            self.orphans.setdefault(orphan.size, []).append(orphan)
            self._orphan_count += 1
        if self.settings.on_delete == "delete":
            ctx.delete_sidecars(rel, docs)
            kept = f"{len(docs)} sidecars removed"
        else:
            kept = "sidecars kept"
        log.info("deleted %r: its results leave the wildcard files; %s", rel, kept)

    def _adopt(self, ctx: Store, rel: str) -> bool:
        """A new image with the content of one deleted moments ago (a move the events did not pair up,
        a move across file systems): it takes over that image's sidecars instead of being analysed again.
        """
        path = ctx.root / rel
        try:
            size = os.stat(path).st_size
        except OSError:
            return False
        candidates = self.orphans.get(size)
        if not candidates or any(ctx.sidecar_path(rel, p).exists() for p in self.plugins):
            return False
        try:
            image_hash = hash_file(path)[0]
        except (OSError, FileChangedError):
            return False
        orphan = next((o for o in candidates if o.hash == image_hash), None)
        if orphan is None:
            return False
        candidates.remove(orphan)
        self._orphan_count -= 1
        old = (orphan.ctx, orphan.rel) if self.settings.on_delete == "keep" else None
        ctx.place(orphan.docs, rel, old)
        log.info("moved %r -> %r (same content; %d sidecars followed)", orphan.rel, rel, len(orphan.docs))
        return True

    def _adopt_all(self, item: Ready) -> None:
        """Ready images take over the results of deleted ones with the same content (those that merely moved)."""
        for name in item.names:  # one failing (a full disk, say) never holds up the others
            self._guard(self._adopt, item.store, join_rel(item.rel_dir, name))

    def _expire_orphans(self, max_age: float = ORPHAN_SECONDS) -> None:
        limit = time.monotonic() - max_age
        for size in list(self.orphans):
            left = [o for o in self.orphans[size] if o.at > limit]
            self._orphan_count -= len(self.orphans[size]) - len(left)
            if left:
                self.orphans[size] = left
            else:
                del self.orphans[size]

    def _forget_folder(self, raw: bytes | str) -> None:
        found = self._split(raw)
        if found is None:
            return
        ctx, rel_dir = found
        for key in [k for k in self.pending if k[0] == ctx.root and k[1].startswith(rel_dir + "/")]:
            del self.pending[key]
        self._ops.submit(self._guard, self._deleted_folder, ctx, rel_dir)

    def _deleted_folder(self, ctx: Store, rel_dir: str) -> None:
        """A folder deleted or moved out: each image it held is forgotten as if deleted one by one."""
        if (ctx.root / rel_dir).is_dir():
            return
        for rel in ctx.forget_folder(rel_dir):
            self._deleted(ctx, rel)

    # -- helpers -----------------------------------------------------------------------
    async def _in_ops(self, fn: Any, *args: Any) -> Any:
        return await self.loop.run_in_executor(self._ops, fn, *args)


class _Handler(FileSystemEventHandler):
    """watchdog event handler: every event goes to :meth:`Watcher.hand_off`, nothing else here."""

    def __init__(self, watcher: Watcher) -> None:
        super().__init__()
        self.watcher = watcher

    def dispatch(self, event: FileSystemEvent) -> None:
        self.watcher.hand_off(event)


async def watch(engine: Engine, paths: Sequence[Path] = ()) -> RunStats:
    """``analyzer watch``: analyse what is missing, then every image that lands, until stopped."""
    engine.retry_setup = True
    engine.analysed_level = logging.INFO
    engine.progress, engine.progress_lines = "plain", False
    engine.wildcards_on_stop = True  # a watcher's stop is its normal end
    stores = await engine.open(paths, files=False)  # a watcher watches folders
    watcher = Watcher(engine.settings, stores, engine.planner.watched, engine.skip_dirs())
    engine.on_released = watcher.released
    engine.on_plugin_ready = watcher.plugin_ready
    engine.heartbeat_fields = watcher.heartbeat
    with stop_on_signals(engine):
        try:
            watcher.start()  # before the walk, so nothing landing during it is missed
            await engine.scan(defer=watcher.defer)
            if not engine.stopping.is_set():
                log.info("first walk done; following changes")
                await follow(engine, watcher)
            await engine.drain()  # in-flight work gets its grace period
        finally:
            await watcher.close()
            stats = await engine.close()
    return stats


async def follow(engine: Engine, watcher: Watcher) -> None:
    """Hand what ``watcher`` yields to ``engine`` until it stops; write the wildcard files once the
    results have not changed for ``wildcards_debounce`` seconds (at most 10x that while they keep
    changing), and save the indexes every 30 s."""
    feeder = asyncio.create_task(_feed(engine, watcher), name="analyzer-watch-feed")
    debounce = engine.settings.watch.wildcards_debounce
    seen = engine.changes
    first: float | None = None
    last_change = last_commit = last_elsewhere = time.monotonic()
    try:
        while not engine.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(engine.stopping.wait(), 0.25)
            if feeder.done():
                feeder.result()  # a bug in the feeder is not swallowed
            now, changes = time.monotonic(), engine.changes
            if changes != seen:
                seen, last_change = changes, now
                first = first or now
            try:
                if first is not None and (now - last_change >= debounce or now - first >= 10 * debounce):
                    first, last_commit = None, now
                    await engine.in_thread(engine.write_wildcards, True)
                    await engine.in_thread(engine.commit)  # changes made meanwhile differ from `seen`: written later
                elif now - last_commit >= 30:
                    last_commit = now
                    await engine.in_thread(engine.commit)
                if engine.waiting_elsewhere and now - last_elsewhere >= 2.0:  # done by the other process,
                    last_elsewhere = now  # or taken over once it is gone
                    await engine.look_again_elsewhere()
            except Exception:  # a full disk, say: logged, tried again
                log.exception("watch: writing the wildcard files or the index failed; trying again")
    finally:
        feeder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feeder


async def _feed(engine: Engine, watcher: Watcher) -> None:
    async for item in watcher.ready():
        if isinstance(item, Ready):
            try:
                await engine.submit(item.store, item.rel_dir, item.names)
            except Exception:
                watcher.retry(item)
                log.exception(
                    "watch: handing %d images to the engine failed; they are looked at again", len(item.names)
                )
                await asyncio.sleep(1.0)
        else:
            await engine.scan(defer=watcher.defer)
