"""The scheduler: scan → triage → hash → plan → analyse → merge and write, as one pipeline.

::

    walk + triage (1 thread)  --chunks-->  prepare (N tasks: read stale sidecars, hash)
        --jobs-->  one runner per plugin (batches, concurrency)  -->  atomic sidecar writes

Every queue is bounded, so memory does not grow with the number of images. The triage thread
compares each image's and sidecar's size and mtime with the index and drops the images that
are up to date before anything else happens: a warm run reads no image and no sidecar.
Blocking work (hashing, JSON, SQLite) runs in threads, never on the event loop.

Shutdown: the first SIGINT/SIGTERM stops taking new work and lets in-flight batches finish
within ``grace_period`` seconds, then cancels them; a write that has started always completes
(it is atomic), so no file is left half-written. A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from stat import S_ISREG
from typing import Any, Literal, Protocol, TypeVar

from .discovery import Listing, Stat, walk
from .errors import ConfigError
from .hashing import FileChangedError, hash_file
from .index import Index, SidecarRow
from .planner import PluginPlan
from .plugin import AnalyzerPlugin, Failure, ImageRef, Outcome, Result
from .progress import Reporter, RunStats
from .settings import Settings
from .sidecar import (
    CorruptSidecar,
    Layout,
    atomic_write_text,
    done_keys,
    dumps,
    failed_keys,
    file_info,
    merge_outcomes,
    new_doc,
    now_iso,
    quarantine,
    read_sidecar,
    sidecar_name,
)
from .wildcards import clean_entry, write_wildcards

log = logging.getLogger("analyzer")

T = TypeVar("T")
Action = Literal["run", "status", "refresh"]
CHUNK = 64


class _NeedsRead:
    """Marker: the index does not know this sidecar as it is on disk; read it."""


NEEDS_READ = _NeedsRead()


@dataclass
class RootContext:
    root: Path
    layout: Layout
    index: Index


@dataclass
class Candidate:
    """An image the triage could not prove up to date."""

    ctx: RootContext
    rel_dir: str
    name: str
    path: Path
    stat: Stat
    known_hash: str | None
    sidecar_stats: dict[str, Stat | None]
    known: dict[str, SidecarRow | _NeedsRead | None]

    @property
    def rel(self) -> str:
        return f"{self.rel_dir}/{self.name}" if self.rel_dir else self.name

    @property
    def key(self) -> Key:
        return (self.ctx.root, self.rel)


Item = tuple[str, str]
"""(mode, model id)"""
Outcomes = dict[Item, tuple[Outcome, float]]


@dataclass
class Job:
    cand: Candidate
    plugin: str
    items: list[Item]
    image: ImageRef


@dataclass
class Prepared:
    """What preparing one candidate found (in a worker thread), for the event loop to act on."""

    cand: Candidate
    rows: dict[str, SidecarRow | None]
    image_hash: str | None = None
    state: Literal["ok", "unhashed", "vanished", "busy", "unreadable"] = "ok"
    failure: Failure | None = None
    hashed: bool = False
    hashed_bytes: int = 0
    changed: bool = False
    corrupt: int = 0


@dataclass
class WriteReport:
    job: Job
    vanished: bool = False
    changed: bool = False
    corrupt: bool = False
    write_error: str | None = None
    ok: int = 0
    failed: int = 0
    failed_modes: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    """(error type, message) -> the modes that failed with it"""


Key = tuple[Path, str]
"""(root, image path relative to it): one image, wherever its work is in the pipeline."""


class Follower(Protocol):
    """What ``analyzer watch`` plugs into the engine to keep it running after the first walk."""

    def start(self, engine: Engine, ctxs: list[RootContext], chunks: asyncio.Queue[list[Candidate] | None]) -> None:
        """Called on the event loop before the first walk (so nothing landing during it is missed)."""

    def defer(self, ctx: RootContext, rel: str, stat: Stat) -> bool:
        """Called from the walk's thread: True takes an image out of the walk (it is too fresh)."""

    async def follow(self) -> None:
        """Called after the first walk; returns when the engine is asked to stop."""

    def released(self, key: Key, recheck: bool) -> None:
        """All work of an image is written; ``recheck`` if it was asked for again meanwhile."""

    def plugin_ready(self, name: str) -> None:
        """A plugin that had failed to start has started."""

    async def close(self) -> None:
        """Called when the engine has stopped."""

    def heartbeat(self) -> str:
        """Extra ``name=value`` fields for the heartbeat line."""


@dataclass
class Engine:
    settings: Settings
    plugins: list[AnalyzerPlugin]
    action: Action = "run"
    modes: list[str] | None = None
    force: bool = False
    retry_failed: bool = False
    dry_run: bool = False
    plan_printer: Callable[[str], None] = print
    stats: RunStats = field(default_factory=RunStats)
    counts: Counter[tuple[str, str, str, str]] = field(default_factory=Counter)
    wildcard_files: dict[str, int] = field(default_factory=dict)
    follower: Follower | None = None

    def __post_init__(self) -> None:
        self.by_name = {p.name: p for p in self.plugins}
        self.plans = {
            p.name: PluginPlan.for_plugin(p, modes=self.modes, force=self.force, retry_failed=self.retry_failed)
            for p in self.plugins
        }
        if self.modes:
            offered = {m for p in self.plugins for m in p.enabled_modes()}
            unknown = [m for m in self.modes if m not in offered]
            if unknown:
                raise ConfigError(f"no enabled plugin offers mode(s) {', '.join(unknown)}")
        self.stop = asyncio.Event()
        self.thread_stop = threading.Event()
        self.dirty = False
        self.runners: dict[str, PluginRunner] = {}
        self._io = concurrent.futures.ThreadPoolExecutor(self.settings.hash_workers, "analyzer-io")
        self._signals = 0
        self.summaries: list[str] = []
        self.stop_signal: int | None = None
        self.claims: dict[Key, int] = {}
        """Images whose work is in the pipeline, with the number of jobs (and plannings) not yet done."""
        self.rechecks: set[Key] = set()
        self.analysed_level = logging.INFO if self.follower is not None else logging.DEBUG

    # -- public ------------------------------------------------------------------------
    async def run(self, paths: list[Path]) -> RunStats:
        ctxs = [self._open_root(p) for p in self._resolve_roots(paths)]
        loop = asyncio.get_running_loop()
        self._install_signals(loop)
        chunks: asyncio.Queue[list[Candidate] | None] = asyncio.Queue(maxsize=max(2, self.settings.queue_size // CHUNK))
        try:
            async with Reporter(
                self.stats,
                mode=self.settings.progress if self.action == "run" and self.follower is None else "plain",
                heartbeat=self.settings.heartbeat_interval,
                progress_lines=self.follower is None,
                extra=self.heartbeat_extra,
            ):
                if self.follower is not None:
                    self.follower.start(self, ctxs, chunks)
                pipeline = asyncio.create_task(self._pipeline(ctxs, chunks), name="analyzer-pipeline")
                await self._wait(pipeline)
        finally:
            self._remove_signals(loop)
            await self._close_plugins()
            if self.follower is not None:
                await self.follower.close()
            self._io.shutdown(wait=True)  # lets a started write finish
            for ctx in ctxs:
                ctx.index.commit()
        finished = not self.stats.interrupted or self.follower is not None  # a watcher's stop is its normal end
        if self.action in ("run", "refresh") and not self.dry_run and finished:
            self._refresh_wildcards(ctxs)
        for ctx in ctxs:
            ctx.index.close()
        return self.stats

    def request_stop(self, reason: str = "stop requested") -> None:
        if not self.stop.is_set():
            log.warning(
                "%s: finishing in-flight work (up to %gs), then stopping; signal again to exit at once",
                reason,
                self.settings.grace_period,
            )
            self.stats.interrupted = True
        self.stop.set()
        self.thread_stop.set()

    def heartbeat_extra(self) -> str:
        return f" in_flight={len(self.claims)}" + (self.follower.heartbeat() if self.follower is not None else "")

    # -- roots -------------------------------------------------------------------------
    def _resolve_roots(self, paths: list[Path]) -> list[Path]:
        roots = paths or list(self.settings.roots)
        if not roots:
            raise ConfigError("no folder given: name one (analyzer run PATH) or set roots in the settings")
        resolved: list[Path] = []
        for path in roots:
            if not path.is_dir():
                raise ConfigError(f"{path} is not a folder")
            resolved.append(path.resolve())
        if self.settings.sidecar_dir is not None:
            names = [r.name for r in resolved]
            dupes = {n for n in names if names.count(n) > 1}
            if dupes:
                raise ConfigError(f"with sidecar_dir set, roots need distinct folder names ({', '.join(dupes)})")
        return list(dict.fromkeys(resolved))

    def _open_root(self, root: Path) -> RootContext:
        base = self.settings.sidecar_dir.resolve() / root.name if self.settings.sidecar_dir else None
        key = hashlib.sha256(os.fsencode(root)).hexdigest()[:16]
        if self.settings.state_dir is not None:
            state = self.settings.state_dir.resolve() / f"{root.name}-{key}"
        else:
            state = (base or root) / ".analyzer"
        return RootContext(root, Layout(root, base), Index.open_for(state, key))

    def wildcards_dir(self, first_root: Path) -> Path:
        if self.settings.wildcards_dir is not None:
            return self.settings.wildcards_dir.resolve()
        if self.settings.sidecar_dir is not None:
            return self.settings.sidecar_dir.resolve() / "wildcards"
        return first_root / "wildcards"

    # -- signals and waiting -----------------------------------------------------------
    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._on_signal, sig)

    def _remove_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        self._signals += 1
        if self._signals > 1:
            sys.stderr.write("second signal: exiting now\n")
            sys.stderr.flush()
            os._exit(128 + sig.value)
        self.stop_signal = sig.value
        self.request_stop(f"received {sig.name}")

    async def _wait(self, pipeline: asyncio.Task[None]) -> None:
        stopper = asyncio.create_task(self.stop.wait())
        try:
            await asyncio.wait({pipeline, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if not pipeline.done():
            try:
                await asyncio.wait_for(asyncio.shield(pipeline), self.settings.grace_period)
            except TimeoutError:
                log.warning("grace period over: abandoning the work still in flight")
                pipeline.cancel()
                for runner in self.runners.values():
                    runner.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pipeline
        if not pipeline.cancelled():
            pipeline.result()

    # -- the pipeline ------------------------------------------------------------------
    async def _pipeline(self, ctxs: list[RootContext], chunks: asyncio.Queue[list[Candidate] | None]) -> None:
        loop = asyncio.get_running_loop()
        preparers = [
            asyncio.create_task(self._prepare_worker(chunks), name=f"analyzer-prepare-{i}")
            for i in range(self.settings.hash_workers)
        ]
        with concurrent.futures.ThreadPoolExecutor(1, "analyzer-scan") as scan:
            try:
                await loop.run_in_executor(scan, self._triage_all, ctxs, loop, chunks)
                if self.follower is not None and not self.stop.is_set():
                    await self.follower.follow()
            finally:
                self.thread_stop.set()
                for _ in preparers:
                    await chunks.put(None)
                await asyncio.gather(*preparers)
        for runner in self.runners.values():
            await runner.finish()

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)

    # -- triage (runs in the scan thread) ----------------------------------------------
    def _emitter(
        self, loop: asyncio.AbstractEventLoop, chunks: asyncio.Queue[Any]
    ) -> Callable[[list[Candidate]], bool]:
        """From a worker thread: put a chunk on the queue, waiting for room; False once stopping."""

        def emit(chunk: list[Candidate]) -> bool:
            future = asyncio.run_coroutine_threadsafe(chunks.put(chunk), loop)
            while True:
                try:
                    future.result(timeout=0.2)
                    return True
                except concurrent.futures.TimeoutError:
                    if self.thread_stop.is_set():
                        future.cancel()
                        return False

        return emit

    def skip_dirs(self, ctxs: list[RootContext]) -> list[Path]:
        """The analyzer's own output folders, never scanned for images."""
        skip = [c.layout.sidecar_base for c in ctxs if c.layout.sidecar_base is not None]
        skip.append(self.wildcards_dir(ctxs[0].root))
        if self.settings.state_dir is not None:
            skip.append(self.settings.state_dir)
        return skip

    def _triage_all(self, ctxs: list[RootContext], loop: asyncio.AbstractEventLoop, chunks: asyncio.Queue[Any]) -> None:
        emit = self._emitter(loop, chunks)
        skip = self.skip_dirs(ctxs)
        for ctx in ctxs:
            seen_dirs: set[str] = set()
            for listing in walk(
                ctx.root,
                include=self.settings.include,
                exclude=self.settings.exclude,
                skip_dirs=skip,
                follow_symlinks=self.settings.follow_symlinks,
            ):
                if self.thread_stop.is_set():
                    return
                seen_dirs.add(listing.rel_dir)
                if not self._triage_listing(ctx, listing, emit):
                    return
            stale_dirs = ctx.index.dirs() - seen_dirs
            if stale_dirs:
                ctx.index.delete_dirs(stale_dirs)
                self.dirty = True

    def _sidecar_stats(self, ctx: RootContext, listing: Listing) -> dict[str, Stat]:
        if ctx.layout.beside:
            return listing.json_files
        stats: dict[str, Stat] = {}
        try:
            with os.scandir(ctx.layout.sidecar_dir(listing.rel_dir)) as it:
                for entry in it:
                    if entry.name.endswith(".json"):
                        st = entry.stat()
                        stats[entry.name] = (st.st_size, st.st_mtime_ns)
        except OSError:
            pass
        return stats

    def triage_names(
        self,
        ctx: RootContext,
        rel_dir: str,
        names: list[str],
        loop: asyncio.AbstractEventLoop,
        chunks: asyncio.Queue[Any],
    ) -> None:
        """Triage some images of one folder, as the walk would (blocking: for the watcher's thread)."""
        listing = Listing(ctx.root, rel_dir, ctx.root / rel_dir if rel_dir else ctx.root)
        for name in sorted(set(names)):
            try:
                st = os.stat(listing.path / name, follow_symlinks=self.settings.follow_symlinks)
            except OSError:
                continue  # gone again: its deletion event does the rest
            if S_ISREG(st.st_mode):
                listing.images.append((name, (st.st_size, st.st_mtime_ns)))
        for name, _ in listing.images:  # just these images' sidecars, not the whole folder's
            for pname in self.plans:
                with contextlib.suppress(OSError):
                    st = os.stat(ctx.layout.sidecar_path(listing.rel(name), pname))
                    listing.json_files[sidecar_name(name, pname)] = (st.st_size, st.st_mtime_ns)
        self._triage_listing(ctx, listing, self._emitter(loop, chunks), partial=True)

    def _triage_listing(
        self, ctx: RootContext, listing: Listing, emit: Callable[[list[Candidate]], bool], *, partial: bool = False
    ) -> bool:
        """Drop the up-to-date images of a folder's listing and emit the rest as candidates.

        A ``partial`` listing names only some images of the folder (the watcher's); otherwise the
        index forgets the images the listing no longer has.
        """
        if partial:
            rows = ctx.index.load_dir(listing.rel_dir, [name for name, _ in listing.images])
            sc_files = listing.json_files
        else:
            rows = ctx.index.load_dir(listing.rel_dir)
            sc_files = self._sidecar_stats(ctx, listing)
        chunk: list[Candidate] = []
        defer = self.follower.defer if self.follower is not None and not partial else None
        self.stats.images += len(listing.images)
        for name, stat in listing.images:  # the hot loop of a warm run
            if defer is not None and defer(ctx, listing.rel(name), stat):
                continue
            row = rows.get(name)
            fresh = row is not None and row.stat == stat and row.hash is not None
            complete = fresh
            sc_stats: dict[str, Stat | None] = {}
            known: dict[str, SidecarRow | _NeedsRead | None] = {}
            for pname, plan in self.plans.items():
                st = sc_files.get(sidecar_name(name, pname))
                sc_stats[pname] = st
                srow = row.sidecars.get(pname) if row is not None else None
                if st is None:
                    if srow is not None:
                        ctx.index.delete_sidecar(listing.rel_dir, name, pname)
                        self.dirty = True
                    known[pname] = None
                    complete = complete and plan.satisfied(None)
                elif srow is not None and srow.stat == st:
                    known[pname] = srow
                    if (fresh and row is not None and srow.hash != row.hash) or not plan.satisfied(srow):
                        complete = False
                else:
                    known[pname] = NEEDS_READ
                    complete = False
            if complete:
                self._up_to_date(known)
                continue
            chunk.append(
                Candidate(
                    ctx,
                    listing.rel_dir,
                    name,
                    listing.path / name,
                    stat,
                    row.hash if fresh and row is not None else None,
                    sc_stats,
                    known,
                )
            )
            if len(chunk) >= CHUNK:
                if not emit(chunk):
                    return False
                chunk = []
        if chunk and not emit(chunk):
            return False
        if not partial:
            self._forget_gone(ctx, listing, rows.keys())
        return True

    def _up_to_date(self, known: dict[str, SidecarRow | _NeedsRead | None]) -> None:
        self.stats.up_to_date += 1
        if self.action == "status":
            for pname, plan in self.plans.items():
                value = known[pname]
                plan.tally(value if isinstance(value, SidecarRow) else None, self.counts)

    def _forget_gone(self, ctx: RootContext, listing: Listing, known: Iterable[str]) -> None:
        gone = set(known) - {name for name, _ in listing.images}
        if gone:
            ctx.index.delete_names(listing.rel_dir, gone)
            self.dirty = True

    # -- prepare (event loop, blocking parts in threads) --------------------------------
    async def _prepare_worker(self, chunks: asyncio.Queue[list[Candidate] | None]) -> None:
        while True:
            chunk = await chunks.get()
            if chunk is None:
                return
            if self.stop.is_set():
                continue  # drain: keep reading until the sentinel
            for prepared in await self._in_thread(self._prepare_many, chunk):
                await self._dispatch(prepared)

    def _prepare_many(self, chunk: list[Candidate]) -> list[Prepared]:
        """Read stale sidecars and hash images for a chunk of candidates, in one thread hop."""
        out = []
        for cand in chunk:
            if self.stop.is_set():  # a plain flag read: safe from a worker thread
                break
            try:
                out.append(self._prepare_sync(cand))
            except Exception as exc:  # one image never stops the run
                log.error("%r: unexpected error while preparing: %s", cand.rel, exc, exc_info=True)
                out.append(Prepared(cand, {}, state="unreadable"))
        return out

    def _prepare_sync(self, cand: Candidate) -> Prepared:
        prepared = Prepared(cand, {})
        infos: list[dict[str, Any]] = []
        for pname, known in cand.known.items():
            if isinstance(known, _NeedsRead):
                row, info, corrupt = self._load_sidecar(cand, pname)
                prepared.rows[pname] = row
                prepared.corrupt += corrupt
                if info:
                    infos.append(info)
            else:
                prepared.rows[pname] = known
        image_hash = cand.known_hash or next(
            (i["hash"] for i in infos if i.get("hash") and (i.get("size"), i.get("mtime_ns")) == cand.stat), None
        )
        if image_hash is None:
            if self.action != "run":  # status and wildcards never read images
                prepared.state = "unhashed"
                return prepared
            image_hash = self._hash_sync(prepared)
            if image_hash is None:
                return prepared
        if image_hash != cand.known_hash:
            cand.ctx.index.put_image(cand.rel_dir, cand.name, cand.stat, image_hash)
        prepared.image_hash = image_hash
        for pname, row in prepared.rows.items():
            if row is not None and row.hash != image_hash:
                prepared.changed = True
                log.info("%r changed since its %s analysis: analysing it again", cand.rel, pname)
                prepared.rows[pname] = None
        return prepared

    def _hash_sync(self, prepared: Prepared) -> str | None:
        cand = prepared.cand
        try:
            image_hash, size, mtime_ns = hash_file(cand.path)
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
            prepared.failure = Failure(type(exc).__name__, f"cannot read the image: {reason}", retryable=True)
            log.error("%r: cannot read the image: %s", cand.rel, reason)
            return None
        prepared.hashed, prepared.hashed_bytes = True, size
        cand.stat = (size, mtime_ns)
        return image_hash

    async def _dispatch(self, prepared: Prepared) -> None:
        """Count what preparing found, then plan the image's work (on the event loop)."""
        stats = self.stats
        stats.corrupt_sidecars += prepared.corrupt
        stats.changed += prepared.changed
        stats.hashed += prepared.hashed
        stats.hashed_bytes += prepared.hashed_bytes
        if prepared.state == "vanished":
            stats.vanished += 1
        elif prepared.state == "busy":
            if self.follower is not None:
                self.follower.released(prepared.cand.key, True)  # still being written: look again later
        elif prepared.state == "unreadable":
            stats.unreadable += 1
            if prepared.failure is not None:
                await self._record_unreadable(prepared.cand, prepared.failure)
        elif prepared.state == "unhashed":
            stats.changed += any(prepared.rows.values())
            for plan in self.plans.values():
                plan.tally(None, self.counts)
        elif prepared.state == "ok" and prepared.image_hash is not None:
            cand = prepared.cand
            key = cand.key
            if key in self.claims:  # already in the pipeline (an event and the walk, or two events)
                self.rechecks.add(key)
                return
            self.claims[key] = 1  # the planning itself holds the image until its jobs are submitted
            image = ImageRef(cand.path, cand.rel, prepared.image_hash, cand.stat[0], cand.stat[1])
            try:
                await self._plan(cand, prepared.rows, image)
            finally:
                self.job_finished(key)

    def job_finished(self, key: Key) -> None:
        """One job of the image (or its planning) is over; release the image after the last."""
        if key not in self.claims:
            return  # work that never claimed the image (an unreadable file's error entry)
        left = self.claims[key] - 1
        if left > 0:
            self.claims[key] = left
            return
        self.claims.pop(key, None)
        recheck = key in self.rechecks
        self.rechecks.discard(key)
        if self.follower is not None:
            self.follower.released(key, recheck)

    def _row_from_doc(self, doc: dict[str, Any], stat: Stat, plugin: AnalyzerPlugin) -> SidecarRow:
        retry, failed = failed_keys(doc)
        wild: dict[str, list[str]] = {}
        for mode in plugin.wildcard_modes:
            for entry in doc.get("analysis", {}).get(mode, {}).values():
                for text in plugin.wildcard_entries(mode, entry.get("result")):
                    line = clean_entry(text)
                    if line:
                        wild.setdefault(mode, []).append(line)
        return SidecarRow(
            stat,
            doc.get("file_info", {}).get("hash"),
            frozenset(done_keys(doc)),
            frozenset(retry),
            frozenset(failed),
            json.dumps(wild, ensure_ascii=False) if wild else None,
        )

    def _read_or_set_aside(self, path: Path) -> tuple[dict[str, Any] | None, bool]:
        """The sidecar at ``path`` (None if there is none) and whether it was corrupt (blocking).

        A corrupt sidecar is reported and, unless this is a dry run or ``status``, moved aside.
        """
        try:
            return read_sidecar(path), False
        except CorruptSidecar as exc:
            if self.dry_run or self.action == "status":
                log.warning("corrupt sidecar %s (%s); a run would move it aside and redo it", path, exc)
            else:
                moved = quarantine(path)
                log.warning("corrupt sidecar moved aside to %s (%s); the image will be analysed again", moved, exc)
            return None, True

    def _load_sidecar(self, cand: Candidate, pname: str) -> tuple[SidecarRow | None, dict[str, Any] | None, bool]:
        """Read a sidecar the index does not know; quarantine it when corrupt (blocking).

        Returns the sidecar's digest, its ``file_info`` and whether it was corrupt.
        """
        path = cand.ctx.layout.sidecar_path(cand.rel, pname)
        try:
            doc, corrupt = self._read_or_set_aside(path)
        except OSError as exc:
            log.error("cannot read sidecar %s: %s", path, exc.strerror)
            return None, None, False
        if corrupt:
            cand.ctx.index.delete_sidecar(cand.rel_dir, cand.name, pname)
            return None, None, True
        if doc is None:
            return None, None, False
        st = os.stat(path)
        row = self._row_from_doc(doc, (st.st_size, st.st_mtime_ns), self.by_name[pname])
        cand.ctx.index.put_sidecar(cand.rel_dir, cand.name, pname, row.stat, row)
        self.dirty = True
        return row, doc.get("file_info"), False

    async def _plan(self, cand: Candidate, rows: dict[str, SidecarRow | None], image: ImageRef) -> None:
        for pname, plan in self.plans.items():
            if self.action == "status":
                plan.tally(rows[pname], self.counts)
                continue
            missing = plan.missing(rows[pname])
            if not missing or self.action != "run":
                continue
            self.stats.plugin(pname).planned += len(missing)
            if self.dry_run:
                shown = [
                    mode if len(self.by_name[pname].model_ids(mode)) == 1 else f"{mode}[{model}]"
                    for mode, model in missing
                ]
                self.plan_printer(f"{cand.ctx.root / cand.rel}\t{pname}\t{','.join(shown)}")
                continue
            if self.by_name[pname].context_plugins():
                image = await self._in_thread(self._with_context, cand, image, self.by_name[pname])
            self.claims[cand.key] = self.claims.get(cand.key, 0) + 1
            await self._runner(pname).submit(Job(cand, pname, missing, image))

    async def _record_unreadable(self, cand: Candidate, failure: Failure) -> None:
        if self.dry_run:
            return
        image = ImageRef(cand.path, cand.rel, "", cand.stat[0], cand.stat[1])
        items: list[tuple[Job, Outcomes]] = [
            (Job(cand, pname, list(plan.items), image), {item: (failure, 0.0) for item in plan.items})
            for pname, plan in self.plans.items()
            if plan.items
        ]
        await self.write_batch(items, count=False)

    def _with_context(self, cand: Candidate, image: ImageRef, plugin: AnalyzerPlugin) -> ImageRef:
        """``image`` with the existing results of the plugins ``plugin`` reads (blocking)."""
        context: dict[str, dict[str, Any]] = {}
        for other in plugin.context_plugins():
            try:
                doc = read_sidecar(cand.ctx.layout.sidecar_path(cand.rel, other))
            except (CorruptSidecar, OSError):
                doc = None
            if doc is None or doc["file_info"].get("hash") != image.hash:
                continue
            context[other] = {
                mode: next(iter(by_model.values()))["result"] for mode, by_model in doc["analysis"].items() if by_model
            }
        return ImageRef(image.path, image.rel_path, image.hash, image.size, image.mtime_ns, context)

    def _runner(self, pname: str) -> PluginRunner:
        runner = self.runners.get(pname)
        if runner is None:
            runner = self.runners[pname] = PluginRunner(self, self.by_name[pname])
        return runner

    async def _close_plugins(self) -> None:
        for runner in self.runners.values():
            if runner.started:
                self.summaries.extend(runner.plugin.summary_lines())
            await runner.close()

    # -- writing -----------------------------------------------------------------------
    def _write_sync(self, job: Job, results: Entries, errors: Entries, created_ns: int | None) -> bool:
        """Merge into the sidecar and write it atomically; True if a corrupt one was set aside first."""
        cand = job.cand
        plugin = self.by_name[job.plugin]
        path = cand.ctx.layout.sidecar_path(cand.rel, job.plugin)
        doc, corrupt = self._read_or_set_aside(path)
        if doc is not None and not job.image.hash:
            info = doc["file_info"]  # unreadable now: keep what was known, add the errors
        else:
            if doc is None or doc["file_info"].get("hash") != job.image.hash:
                doc = new_doc(plugin.name, plugin.version)
            info = file_info(
                rel=cand.rel,
                hash_=job.image.hash or None,
                size=cand.stat[0],
                mtime_ns=cand.stat[1],
                created_ns=created_ns,
            )
        merge_outcomes(doc, info=info, plugin_version=plugin.version, results=results, errors=errors)
        row = self._row_from_doc(doc, atomic_write_text(path, dumps(doc)), plugin)
        cand.ctx.index.put_sidecar(cand.rel_dir, cand.name, job.plugin, row.stat, row)
        self.dirty = True
        return corrupt

    def _write_one(self, job: Job, outcomes: Outcomes) -> WriteReport:
        """Check the image is unchanged, then merge the outcomes into its sidecar (blocking)."""
        plugin = self.by_name[job.plugin]
        report = WriteReport(job)
        created_ns = None
        if job.image.hash:
            try:
                st = os.stat(job.cand.path)
            except FileNotFoundError:
                report.vanished = True
                return report
            created_ns = _created_ns(st)
            if (st.st_size, st.st_mtime_ns) != job.cand.stat and not self._same_content(job):
                report.changed = True
                changed = Failure("FileChanged", "the file changed while it was analysed", retryable=True)
                outcomes = {item: (changed, 0.0) for item in outcomes}
        results, errors, report.failed_modes = _sidecar_entries(plugin, outcomes)
        report.ok, report.failed = len(results), len(errors)
        try:
            report.corrupt = self._write_sync(job, results, errors, created_ns)
        except OSError as exc:
            report.write_error = str(exc.strerror or exc)
        return report

    def _same_content(self, job: Job) -> bool:
        """The image was touched while analysed: True if it was saved again with the same content."""
        try:
            image_hash, size, mtime_ns = hash_file(job.cand.path)
        except (OSError, FileChangedError):
            return False
        if image_hash != job.image.hash:
            return False
        job.cand.stat = (size, mtime_ns)  # the results hold for the file as it is now
        job.cand.ctx.index.put_image(job.cand.rel_dir, job.cand.name, job.cand.stat, image_hash)
        return True

    def _write_many(self, items: list[tuple[Job, Outcomes]]) -> list[WriteReport]:
        return [self._write_one(job, outcomes) for job, outcomes in items]

    async def write_batch(self, items: list[tuple[Job, Outcomes]], *, count: bool = True) -> None:
        """Merge each job's outcomes into its sidecar (atomically, in one thread hop) and count them."""
        reports = await asyncio.shield(self._in_thread(self._write_many, items))
        for report in reports:
            try:
                self._account(report, count)
            finally:
                self.job_finished(report.job.cand.key)

    def _account(self, report: WriteReport, count: bool) -> None:
        """Count and log what writing one job's sidecar came to (on the event loop)."""
        job, rel = report.job, report.job.cand.rel
        planned = len(job.items)
        if report.vanished:
            self.stats.vanished += 1
            self.stats.plugin(job.plugin).planned -= planned
            log.warning("%r vanished while it was analysed; no sidecar written", rel)
            return
        self.stats.corrupt_sidecars += report.corrupt
        if report.changed:
            log.warning("%r changed while it was analysed; results discarded, it is retried next run", rel)
        for (kind, message), modes in report.failed_modes.items():
            log.error(
                "%r: %s failed (%s): %s: %s",
                rel,
                job.plugin,
                ", ".join(modes),
                kind,
                message,
                extra={"image": rel, "plugin": job.plugin, "mode": modes, "error_type": kind},
            )
        if report.write_error is not None:
            self.stats.write_errors += 1
            path = job.cand.ctx.layout.sidecar_path(rel, job.plugin)
            log.error(
                "%r: cannot write sidecar %s: %s; its results are lost for this run", rel, path, report.write_error
            )
            report.ok, report.failed = 0, planned
        elif not report.changed:
            log.log(
                self.analysed_level,
                "analysed %r: %s (%d ok, %d failed)",
                rel,
                job.plugin,
                report.ok,
                report.failed,
                extra={"image": rel, "plugin": job.plugin, "hash": job.image.hash, "event": "analysed"},
            )
        if count:
            for _ in range(report.ok):
                self.stats.item_done(job.plugin, ok=True)
            for _ in range(report.failed):
                self.stats.item_done(job.plugin, ok=False)

    # -- wildcards ---------------------------------------------------------------------
    def _refresh_wildcards(self, ctxs: list[RootContext], *, force: bool = False) -> None:
        folder = self.wildcards_dir(ctxs[0].root)
        plugins = [p for p in self.plugins if p.wildcard_modes]
        if not plugins or (not force and not self.dirty and folder.is_dir() and self.action == "run"):
            return
        entries: dict[tuple[str, str], dict[str, None]] = {
            (p.name, mode): {} for p in plugins for mode in p.wildcard_modes
        }
        for ctx in ctxs:
            for pname, wild in ctx.index.wildcard_rows(p.name for p in plugins):
                for mode, items in wild.items():
                    bucket = entries.get((pname, mode))
                    if bucket is not None:
                        for item in items:
                            bucket.setdefault(item, None)
        try:
            self.wildcard_files = write_wildcards(folder, {k: list(v) for k, v in entries.items()})
        except OSError as exc:
            log.error("cannot write wildcard files in %s: %s", folder, exc.strerror or exc)
            self.stats.write_errors += 1
            return
        if self.wildcard_files:
            log.info(
                "wildcards in %s: %s", folder, ", ".join(f"{name} ({n})" for name, n in self.wildcard_files.items())
            )


Entries = list[tuple[str, str, dict[str, Any]]]


def _sidecar_entries(
    plugin: AnalyzerPlugin, outcomes: Outcomes
) -> tuple[Entries, Entries, dict[tuple[str, str], list[str]]]:
    """Sidecar entries (mode, model id, entry) for results and errors, and the failed modes by error."""
    results: Entries = []
    errors: Entries = []
    failed_modes: dict[tuple[str, str], list[str]] = {}
    multi = {mode for (mode, _) in outcomes if len(plugin.model_ids(mode)) > 1}
    for (mode, model), (outcome, seconds) in outcomes.items():
        if isinstance(outcome, Result):
            try:
                json.dumps(outcome.value)
            except (TypeError, ValueError) as exc:
                outcome = Failure("InvalidResult", f"plugin returned a result that is not JSON: {exc}")
        if isinstance(outcome, Result):
            entry: dict[str, Any] = {
                "result": outcome.value,
                "created_at": now_iso(),
                "duration_s": round(seconds, 4),
                "parameters": outcome.parameters,
            }
            if outcome.usage is not None:
                entry["usage"] = outcome.usage
            results.append((mode, model, entry))
            continue
        failed_modes.setdefault((outcome.type, outcome.message), []).append(
            f"{mode}[{model}]" if mode in multi else mode
        )
        error = {
            "type": outcome.type,
            "message": outcome.message,
            "attempts": outcome.attempts,
            "at": now_iso(),
            "retryable": outcome.retryable,
        }
        errors.append((mode, model, error))
    return results, errors, failed_modes


def _created_ns(st: os.stat_result) -> int | None:
    """Birth time where the platform records it, else the inode change time."""
    birth = getattr(st, "st_birthtime_ns", None)
    return int(birth) if birth is not None else st.st_ctime_ns


class PluginRunner:
    """Runs one plugin: lazy setup, batching, bounded concurrency, one writer per job.

    A plugin that fails to start fails its items for ``analyzer run``; under ``analyzer watch``
    its setup is retried with a doubling delay while its jobs are set aside (they stay missing,
    and are found again by a new walk once the plugin starts).
    """

    def __init__(self, engine: Engine, plugin: AnalyzerPlugin) -> None:
        self.engine = engine
        self.plugin = plugin
        size = max(8, plugin.batch_size * plugin.concurrency * 2)
        self.queue: asyncio.Queue[Job | None] = asyncio.Queue(maxsize=size)
        self.setup_error: str | None = None
        self.started = False
        self.first_attempt = asyncio.Event()
        self.ready = asyncio.create_task(self._setup(), name=f"analyzer-setup-{plugin.name}")
        self.workers = [
            asyncio.create_task(self._worker(), name=f"analyzer-{plugin.name}-{i}") for i in range(plugin.concurrency)
        ]
        self.closed = False

    async def submit(self, job: Job) -> None:
        await self.queue.put(job)

    async def finish(self) -> None:
        for _ in self.workers:
            await self.queue.put(None)
        await asyncio.gather(*self.workers, return_exceptions=True)

    def cancel(self) -> None:
        for worker in self.workers:
            worker.cancel()

    async def close(self) -> None:
        self.cancel()
        await asyncio.gather(*self.workers, return_exceptions=True)
        if not self.ready.done():
            self.ready.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.ready
        if self.started and not self.closed:
            self.closed = True
            try:
                await self.plugin.close()
            except Exception as exc:
                log.warning("plugin %s did not close cleanly: %s", self.plugin.name, exc)

    async def _setup(self) -> None:
        engine, name = self.engine, self.plugin.name
        retry = engine.follower is not None
        delay, attempts = min(5.0, engine.settings.watch.setup_retry_max), 0
        while True:
            started = time.monotonic()
            attempts += 1
            try:
                await self.plugin.setup()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error = str(exc) or type(exc).__name__
                if self.setup_error is None:
                    engine.stats.unavailable_plugins.append(f"{name}: {error}")
                self.setup_error = error
                self.first_attempt.set()
                if not retry:
                    log.error("plugin %s could not start: %s", name, error)
                    return
                log.error("plugin %s could not start: %s; trying again in %gs", name, error, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(engine.stop.wait(), delay)
                if engine.stop.is_set():
                    return
                delay = min(delay * 2, engine.settings.watch.setup_retry_max)
                continue
            self.started = True
            self.first_attempt.set()
            log.debug("plugin %s ready in %.2fs", name, time.monotonic() - started)
            if self.setup_error is not None:
                log.warning("plugin %s started after %d attempts; looking again for the work it missed", name, attempts)
                engine.stats.unavailable_plugins = [
                    u for u in engine.stats.unavailable_plugins if not u.startswith(f"{name}: ")
                ]
                self.setup_error = None
                if engine.follower is not None:
                    engine.follower.plugin_ready(name)
            return

    async def _next_batch(self) -> tuple[list[Job], bool]:
        job = await self.queue.get()
        if job is None:
            return [], True
        batch = [job]
        while len(batch) < self.plugin.batch_size:
            try:
                more = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            if more is None:
                return batch, True
            batch.append(more)
        return batch, False

    async def _worker(self) -> None:
        await self.first_attempt.wait()
        engine = self.engine
        stats = engine.stats
        last = False
        while not last:
            batch, last = await self._next_batch()
            if not batch:
                continue
            if engine.stop.is_set() or (self.setup_error is not None and engine.follower is not None):
                for job in batch:  # not started: dropped, analysed on a later run (or walk)
                    stats.plugin(job.plugin).planned -= len(job.items)
                    engine.job_finished(job.cand.key)
                continue
            if self.setup_error is not None:
                for job in batch:
                    for _ in job.items:
                        stats.item_done(job.plugin, ok=False)
                    engine.job_finished(job.cand.key)
                continue
            await self._run_batch(batch)

    async def _run_batch(self, batch: list[Job]) -> None:
        plugin = self.plugin
        outcomes: list[Outcomes] = [{} for _ in batch]
        wanted = {item for job in batch for item in job.items}
        # every item asked of the batch, mode by mode in the plugin's order, so work shared between
        # modes of the same images is still cached when the next mode asks for it
        ordered = [(m, model) for m in plugin.modes for model in plugin.model_ids(m) if (m, model) in wanted]
        for item in ordered:
            mode, model = item
            idx = [i for i, job in enumerate(batch) if item in job.items]
            images = [batch[i].image for i in idx]
            started = time.perf_counter()
            try:
                outs = list(await plugin.analyze_with(mode, model, images))
                if len(outs) != len(images):
                    raise RuntimeError(f"plugin returned {len(outs)} outcomes for {len(images)} images")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "%s/%s: a batch of %d failed: %s",
                    plugin.name,
                    mode,
                    len(images),
                    exc,
                    exc_info=log.isEnabledFor(logging.DEBUG),
                )
                outs = [Failure.from_exception(exc)] * len(images)
            seconds = (time.perf_counter() - started) / len(images)
            for i, out in zip(idx, outs, strict=True):
                outcomes[i][item] = (out, seconds)
        await self.engine.write_batch(list(zip(batch, outcomes, strict=True)))
