"""The engine: wires the store, triage, planner and plugin runners into one pipeline.

::

    scan / submit (1 thread)  --chunks-->  prepare (N tasks: read stale sidecars, hash)
        --plan-->  one runner per plugin (batches, concurrency)  -->  atomic sidecar writes (store)

Every queue is bounded, so memory does not grow with the number of images. Blocking work
(hashing, JSON, SQLite) runs in threads, never on the event loop.

An engine is opened, fed, drained and closed, as often as its owner likes::

    engine = Engine(settings, plugins)
    stores = await engine.open([folder])   # opens the roots' stores, starts the workers
    await engine.scan()                    # walks every root; may be called again
    await engine.submit(stores[0], "sub", ["new.png"])   # work for given images, any time
    await engine.drain()                   # until everything queued so far is written
    stats = await engine.close()           # plugins closed, indexes saved, wildcards written

:meth:`Engine.run` does all of that once, for ``analyzer run``. Shutdown: :meth:`request_stop`
stops taking new work; in-flight batches finish within ``grace_period`` seconds, then are
cancelled; a write that has started always completes (it is atomic), so no file is left half-written.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import functools
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from . import hosts
from .discovery import Stat
from .errors import ConfigError, ErrorType, exit_for_signal
from .hashing import FileChangedError, hash_file
from .index import Claim
from .planner import Item, Planner, RunOptions, item_key
from .plugin import AnalyzerPlugin, Failure, ImageRef, Result, Summarizes
from .progress import Reporter, RunStats
from .runner import Job, Outcomes, PluginRunner
from .selector import MISSING, context_digest
from .settings import Settings
from .sidecar import as_json, now_iso, publish
from .store import (
    Entries,
    StagedSidecar,
    Store,
    digesters,
    locked,
    resolve_targets,
    skip_dirs,
    wildcards_dir,
)
from .triage import Candidate, Defer, Prepared, Triage
from .wildcards import refresh_wildcards

log = logging.getLogger("analyzer")

T = TypeVar("T")
Key = tuple[Path, str]
"""(root, image path relative to it): one image, wherever its work is in the pipeline."""
CLAIM_LEASE = 300.0
"""Seconds a claim on an item holds; renewed while its owner lives, taken over once it is gone."""
ELSEWHERE_POLL = 0.5
"""Seconds between looks at images whose work another process had claimed."""
PUBLISH_GROUP = 64
"""Sidecars staged, synced and renamed together (each holds an open file until it is in place)."""


@dataclass
class _Waiting:
    """A plugin's job held back until the results it reads, planned for the same image, are written."""

    cand: Candidate
    plugin: str
    items: list[Item]
    image: ImageRef
    waits_for: set[str]
    seen: Stat | None = None


@dataclass
class _WriteReport:
    job: Job
    vanished: bool = False
    changed: bool = False
    corrupt: bool = False
    write_error: str | None = None
    ok: int = 0
    failed: int = 0
    failed_modes: dict[tuple[str, str], list[str]] | None = None


class Engine:
    """The analysis pipeline over one set of plugins; see the module docstring for its life cycle."""

    def __init__(
        self,
        settings: Settings,
        plugins: Sequence[AnalyzerPlugin],
        *,
        options: RunOptions | None = None,
        readers: Sequence[AnalyzerPlugin] = (),
        dry_run: bool = False,
        plan_printer: Callable[[str], None] = print,
    ) -> None:
        """``readers`` are plugins whose results ``plugins`` read, not run themselves (their sidecars
        are indexed and read for context)."""
        self.settings = settings
        self.plugins = list(plugins)
        self.options = options if options is not None else RunOptions()
        self.dry_run = dry_run
        self.plan_printer = plan_printer
        self.by_name = {p.name: p for p in [*readers, *plugins]}
        if self.options.modes:
            offered = {m for p in self.plugins for m in p.enabled_modes()}
            unknown = [m for m in self.options.modes if m not in offered]
            if unknown:
                raise ConfigError(f"no enabled plugin offers mode(s) {', '.join(unknown)}")
        self.planner = Planner(self.plugins, self.options, readable=self.by_name)
        self.digesters, self.preferred = digesters(self.planner, self.by_name)
        self.retry_setup = False
        """Retry a plugin whose setup fails, with a doubling delay (a watcher), instead of failing its items."""
        self.setup_retry_max = settings.watch.setup_retry_max
        self.analysed_level = logging.DEBUG
        """Level of the one line logged per analysed image and plugin (INFO for a watcher)."""
        self.on_released: Callable[[Path, str, bool], None] | None = None
        """Called with (root, rel, asked again meanwhile) when all work of an image is written."""
        self.on_plugin_ready: Callable[[str], None] | None = None
        """Called when a plugin that had failed to start has started."""
        self.heartbeat_fields: Callable[[], str] | None = None
        """Extra `` name=value`` fields for the heartbeat line."""
        self.wildcards_on_stop = False
        """Write the wildcard files also after a stop (a watcher's stop is its normal end)."""
        self.progress = settings.progress
        self.progress_lines = True
        self.summaries: list[str] = []
        self.wildcard_files: dict[str, int] = {}
        self.stop_signal: int | None = None
        self.stores: list[Store] = []
        self.stats = RunStats()
        self.stopping = asyncio.Event()
        self._opened = False

    # -- life cycle --------------------------------------------------------------------
    async def open(self, paths: Sequence[Path] = (), *, files: bool = True) -> list[Store]:
        """Open the roots (``paths``, else the ``roots`` setting) and start the workers.

        With ``files``, an image file in ``paths`` stands for itself in its root (see
        :func:`~analyzer.store.resolve_targets`); otherwise every path must be a folder.
        """
        if self._opened:
            raise RuntimeError("the engine is open already: close it first")
        targets = resolve_targets(self.settings, paths, files=files)
        self.stats = RunStats()
        self.stopping = asyncio.Event()
        self.summaries = []
        self._thread_stop = threading.Event()
        self.stores = [
            Store.open(target.root, self.settings, read_only=self.dry_run, only=target.files) for target in targets
        ]
        for store in self.stores:
            store.note_reading_rules(self.plugins)
        self.triage = Triage(
            self.planner,
            self.digesters,
            include=self.settings.include,
            exclude=self.settings.exclude,
            follow_symlinks=self.settings.follow_symlinks,
            stats=self.stats,
        )
        self._io = concurrent.futures.ThreadPoolExecutor(self.settings.hash_workers, "analyzer-io")
        self._scan = concurrent.futures.ThreadPoolExecutor(1, "analyzer-scan")
        self._chunks: asyncio.Queue[list[Candidate] | None] = asyncio.Queue(
            maxsize=max(2, self.settings.queue_size // 64)
        )
        self.runners: dict[str, PluginRunner] = {}
        self.claims: dict[Key, int] = {}
        """Images whose work is in the pipeline, with the number of jobs (and plannings) not yet done."""
        self._rechecks: set[Key] = set()
        self._waiting: dict[Key, list[_Waiting]] = {}
        self._elsewhere: dict[Key, tuple[Store, str, str]] = {}
        """Images with items another process of this host has claimed: looked at again until done."""
        self._handoffs: set[asyncio.Task[None]] = set()
        """Jobs that waited for a provider, on their way to their runner (never inside a provider's write)."""
        self._queued = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._reporter = Reporter(
            self.stats,
            mode=self.progress,
            heartbeat=self.settings.heartbeat_interval,
            progress_lines=self.progress_lines,
            extra=self._heartbeat_extra,
        )
        await self._reporter.__aenter__()
        self._preparers = [
            asyncio.create_task(self._prepare_worker(), name=f"analyzer-prepare-{i}")
            for i in range(self.settings.hash_workers)
        ]
        for store in self.stores:  # claims of processes that are gone (a crash) or ran out
            purged = store.index.purge_claims(functools.partial(hosts.owner_gone, host=store.host))
            if purged:
                log.info("%s: forgot %d claims of processes that are gone", store.root, purged)
        self._renewer = asyncio.create_task(self._renew_claims(), name="analyzer-claims")
        self._opened = True
        return self.stores

    async def scan(self, *, defer: Defer | None = None) -> bool:
        """Walk every root and queue the work found; returns when the walk is done (not the work).

        ``defer`` may take fresh images out of the walk (the watcher's stability check).
        """
        loop = asyncio.get_running_loop()
        emit = self._emitter(loop)
        self.stats.walk_started = time.monotonic()
        try:
            return await loop.run_in_executor(
                self._scan,
                lambda: self.triage.walk(self.stores, emit, skip=self.skip_dirs(), stop=self._thread_stop, defer=defer),
            )
        finally:
            self.stats.walk_started = None

    async def submit(self, store: Store, rel_dir: str, names: Sequence[str]) -> None:
        """Queue the work some images of one folder need (images that appeared or changed)."""
        loop = asyncio.get_running_loop()
        emit = self._emitter(loop)
        await loop.run_in_executor(self._scan, self.triage.names, store, rel_dir, names, emit)

    async def drain(self) -> None:
        """Wait until every piece of work queued so far is written, also by other processes that had
        claimed some of it (or it is taken over when they are gone); after a stop, at most the grace period."""
        while True:
            await self._drain_own()
            if not self._elsewhere or self.stopping.is_set():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), ELSEWHERE_POLL)
            await self.look_again_elsewhere()

    @property
    def waiting_elsewhere(self) -> int:
        """Images with work another process had claimed, to be looked at again."""
        return len(self._elsewhere)

    async def look_again_elsewhere(self) -> None:
        """Triage again the images another process had claimed work of: done by it, or still to do here."""
        waiting, self._elsewhere = self._elsewhere, {}
        by_folder: dict[tuple[int, str], tuple[Store, list[str]]] = {}
        for store, rel_dir, name in waiting.values():
            by_folder.setdefault((id(store), rel_dir), (store, []))[1].append(name)
        for (_, rel_dir), (store, names) in by_folder.items():
            await self.submit(store, rel_dir, names)

    async def _drain_own(self) -> None:
        """Wait until this process's queued work is written; after a stop, at most the grace period."""
        idle = asyncio.create_task(self._idle.wait())
        stop = asyncio.create_task(self.stopping.wait())
        try:
            await asyncio.wait({idle, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not idle.done():
                try:
                    await asyncio.wait_for(asyncio.shield(idle), self.settings.grace_period)
                except TimeoutError:
                    log.warning("grace period over: abandoning the work still in flight")
                    for runner in self.runners.values():
                        runner.cancel()
        finally:
            idle.cancel()
            stop.cancel()

    async def close(self) -> RunStats:
        """Stop the workers, close the plugins, save the indexes and write the wildcard files."""
        if not self._opened:
            return self.stats
        self._opened = False
        self._thread_stop.set()
        self._renewer.cancel()
        try:
            if self.stopping.is_set():  # what is still queued is dropped: found again by a later run
                for task in self._preparers:
                    task.cancel()
            else:
                for _ in self._preparers:
                    await self._chunks.put(None)
            await asyncio.gather(*self._preparers, return_exceptions=True)
            if not self.stopping.is_set():  # stopping: what is still queued is dropped, not started
                for runner in self._runners_in_order():
                    await runner.finish()
            for task in self._handoffs:
                task.cancel()
            await asyncio.gather(*self._handoffs, return_exceptions=True)
            for runner in self._runners_in_order():
                await runner.close()
                if runner.started and isinstance(runner.plugin, Summarizes):
                    self.summaries.extend(runner.plugin.summary_lines())
        finally:
            await self._reporter.__aexit__(None, None, None)
            self._scan.shutdown(wait=True)
            self._io.shutdown(wait=True)  # lets a started write finish
        if not self.dry_run and (not self.stats.interrupted or self.wildcards_on_stop):
            self.write_wildcards()
        for store in self.stores:
            store.close()
        return self.stats

    async def run(self, paths: Sequence[Path] = ()) -> RunStats:
        """Open, walk every root, analyse what is missing, close: ``analyzer run``."""
        await self.open(paths)
        try:
            await self.scan()
            await self.drain()  # after a stop during the walk too: in-flight work gets its grace period
        finally:
            await self.close()
        return self.stats

    def request_stop(self, reason: str = "stop requested", *, quiet: bool = False) -> None:
        """Stop taking work; in-flight work finishes within the grace period. ``quiet``: say nothing
        (the reader of the output went away, as ``| head`` does)."""
        if not self.stopping.is_set() and not quiet:
            log.warning(
                "%s: finishing in-flight work (up to %gs), then stopping; signal again to exit at once",
                reason,
                self.settings.grace_period,
            )
        self.stats.interrupted = True
        self.stopping.set()
        with contextlib.suppress(AttributeError):
            self._thread_stop.set()

    @property
    def changes(self) -> int:
        """Grows with every change of the open stores (a watcher compares it to debounce wildcards)."""
        return sum(store.changes for store in self.stores)

    def _heartbeat_extra(self) -> str:
        extra = self.heartbeat_fields() if self.heartbeat_fields is not None else ""
        return f" in_flight={len(self.claims)}{extra}"

    # -- roots -------------------------------------------------------------------------
    def wildcards_dir(self) -> Path:
        return wildcards_dir(self.settings, self.stores)

    def skip_dirs(self) -> list[Path]:
        return skip_dirs(self.settings, self.stores)

    # -- scan and prepare --------------------------------------------------------------
    def _emitter(self, loop: asyncio.AbstractEventLoop) -> Callable[[list[Candidate]], bool]:
        """From a worker thread: put a chunk on the queue, waiting for room; False once stopping."""

        def emit(chunk: list[Candidate]) -> bool:
            future = asyncio.run_coroutine_threadsafe(self._enqueue(chunk), loop)
            while True:
                try:
                    future.result(timeout=0.2)
                    return True
                except concurrent.futures.TimeoutError:
                    if self._thread_stop.is_set():
                        future.cancel()
                        return False

        return emit

    async def _enqueue(self, chunk: list[Candidate]) -> None:
        self._queued += 1
        self._idle.clear()
        try:
            await self._chunks.put(chunk)
        except BaseException:
            self._queued -= 1
            self._check_idle()
            raise

    def _check_idle(self) -> None:
        if self._queued == 0 and not self.claims:
            self._idle.set()

    async def in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking ``fn(*args)`` in the engine's I/O threads."""
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)

    async def _prepare_worker(self) -> None:
        while True:
            chunk = await self._chunks.get()
            if chunk is None:
                return
            try:
                if self.stopping.is_set():
                    continue  # drain: keep reading until the sentinel
                for prepared in await self.in_thread(self._prepare_many, chunk):
                    await self._dispatch(prepared)
            except Exception:  # one chunk never stops the run
                log.exception("preparing %d images failed", len(chunk))
            finally:
                self._queued -= 1
                self._check_idle()

    def _prepare_many(self, chunk: list[Candidate]) -> list[Prepared]:
        """Read stale sidecars and hash images for a chunk of candidates, in one thread hop."""
        out = []
        for cand in chunk:
            if self.stopping.is_set():  # a plain flag read: safe from a worker thread
                break
            try:
                out.append(self.triage.prepare(cand, hash_images=True, set_aside=not self.dry_run))
            except Exception as exc:  # one image never stops the run
                log.error("%r: unexpected error while preparing: %s", cand.rel, exc, exc_info=True)
                out.append(Prepared(cand, state="unreadable"))
        return out

    async def _dispatch(self, prepared: Prepared) -> None:
        """Count what preparing found, then plan the image's work (on the event loop)."""
        stats = self.stats
        stats.corrupt_sidecars += prepared.corrupt
        stats.changed += prepared.changed
        stats.hashed += prepared.hashed
        stats.hashed_bytes += prepared.hashed_bytes
        cand = prepared.cand
        if prepared.state == "vanished":
            stats.vanished += 1
        elif prepared.state == "busy":
            if self.on_released is not None:
                self.on_released(cand.store.root, cand.rel, True)  # still being written: look again later
        elif prepared.state == "unreadable":
            stats.unreadable += 1
            if prepared.failure is not None:
                if cand.key in self.claims:  # work for it is in flight: its writes come first, then a look again
                    self._rechecks.add(cand.key)
                else:
                    await self._record_unreadable(cand, prepared.failure)
        elif prepared.image_hash is not None:
            key = cand.key
            if key in self.claims:  # already in the pipeline (an event and the walk, or two events)
                self._rechecks.add(key)
                return
            self.claims[key] = 1  # the planning itself holds the image until its jobs are submitted
            try:
                await self._plan(cand, prepared.rows, prepared.image_hash, prepared.seen)
            finally:
                self._job_finished(key)

    # -- planning ----------------------------------------------------------------------
    async def _plan(self, cand: Candidate, rows: dict[str, Any], image_hash: str, seen: dict[str, Stat | None]) -> None:
        assessed = self.planner.assess(rows)
        for name, items in assessed.blocked.items():
            self.stats.plugin(name).blocked += len(items)
            log.info("%r: %s %s blocked: a result it reads failed", cand.rel, name, _shown(items))
        for name, items in assessed.stale_kept.items():
            self.stats.plugin(name).stale_kept += len(items)
        if assessed.empty:
            return
        image = ImageRef(
            cand.path,
            cand.rel,
            image_hash,
            cand.stat[0],
            cand.stat[1],
            max_pixels=self.settings.max_image_pixels,
            embeddings=cand.store.embeddings,
        )
        for name in self.planner.order:
            todo = assessed.todo.get(name)
            if not todo:
                continue
            self.stats.plugin(name).planned += len(todo)
            if self.dry_run:
                self.plan_printer(f"{cand.store.root / cand.rel}\t{name}\t{_shown(todo, self.by_name[name])}")
                continue
            self.claims[cand.key] += 1
            waits = assessed.waits_for.get(name)
            if waits:
                held = _Waiting(cand, name, todo, image, set(waits), seen.get(name))
                self._waiting.setdefault(cand.key, []).append(held)
            else:
                await self._submit(cand, name, todo, image, seen.get(name))

    async def _submit(
        self, cand: Candidate, name: str, items: list[Item], image: ImageRef, seen: Stat | None = None
    ) -> None:
        """Hand a job to its plugin's runner, with the results it reads (blocked if one is missing)."""
        reads = self.planner.plans[name].reads
        contexts: dict[str, dict[str, Any]] = {}
        if any(mode in reads for mode, _ in items):
            selectors = list(dict.fromkeys(s for mode, _ in items for s in reads.get(mode, ())))
            readable = [s for s in selectors if s.plugin in self.planner.readable]
            values, failed = await self.in_thread(cand.store.values, cand.rel, image.hash, readable, self.preferred)
            for sel in selectors:  # a plugin that could not be loaded: nothing of it is read (as the planner sees it)
                values.setdefault(sel.text, MISSING)
            runnable: list[Item] = []
            for item in items:
                wanted = reads.get(item[0], ())
                absent = [s.text for s in wanted if s.text in failed]
                if absent:
                    self.stats.plugin(name).blocked += 1
                    self.stats.plugin(name).planned -= 1
                    log.warning("%r: %s %s not run: %s failed for it", cand.rel, name, item[0], ", ".join(absent))
                    continue
                runnable.append(item)
                if wanted:
                    used = {s.text: values[s.text] for s in wanted}
                    contexts[item[0]] = {"digest": context_digest(used), "reads": list(used)}
            items = runnable
            image = dataclasses.replace(image, context=values)
        if not items:
            self._release_waiting(cand.key, name)  # nothing of it will be written: what reads it is dropped too
            self._job_finished(cand.key)
            return
        await self._runner(name).submit(Job(cand, name, items, image, contexts, seen))

    async def _provider_written(self, key: Key, plugin: str) -> None:
        """``plugin``'s results for the image are written: submit the jobs that were waiting for them."""
        waiting = self._waiting.get(key)
        if not waiting:
            return
        ready = []
        for held in waiting:
            held.waits_for.discard(plugin)
            if not held.waits_for:
                ready.append(held)
        for held in ready:
            waiting.remove(held)
        if not waiting:
            del self._waiting[key]
        for held in ready:
            if self.stopping.is_set():
                self.stats.plugin(held.plugin).planned -= len(held.items)
                self._release_waiting(key, held.plugin)
                self._job_finished(key)
            else:  # in a task of its own: a full reader queue must not hold up the provider's writes
                task = asyncio.create_task(self._submit(held.cand, held.plugin, held.items, held.image, held.seen))
                self._handoffs.add(task)
                task.add_done_callback(self._handoffs.discard)

    def _runners_in_order(self) -> list[PluginRunner]:
        """Providers' runners before their readers' (a provider's last writes may hand readers work)."""
        return [self.runners[name] for name in self.planner.order if name in self.runners]

    def _runner(self, name: str) -> PluginRunner:
        runner = self.runners.get(name)
        if runner is None:
            runner = self.runners[name] = PluginRunner(self, self.by_name[name])
        return runner

    # -- claims between processes ------------------------------------------------------
    async def claim(self, batch: list[Job]) -> list[Job]:
        """Claim the batch's items; items another live process claimed are left to it (RunnerHost)."""
        granted = await self.in_thread(self._claim_sync, batch)
        kept: list[Job] = []
        for job, items in zip(batch, granted, strict=True):
            others = [item for item in job.items if item not in items]
            if others:
                key = job.cand.key
                self._elsewhere[key] = (job.cand.store, job.cand.rel_dir, job.cand.name)
                self.stats.plugin(job.plugin).planned -= len(others)
                self.stats.elsewhere += len(others)
                log.info("%r: %s %s is being analysed by another process", job.cand.rel, job.plugin, _shown(others))
            if items:
                job.items = items
                kept.append(job)
            else:
                self._release_waiting(job.cand.key, job.plugin)
                self._job_finished(job.cand.key)
        return kept

    def _claim_sync(self, batch: list[Job]) -> list[list[Item]]:
        by_store: dict[int, tuple[Store, list[int]]] = {}
        for i, job in enumerate(batch):
            by_store.setdefault(id(job.cand.store), (job.cand.store, []))[1].append(i)
        out: list[list[Item]] = [[] for _ in batch]
        for store, indexes in by_store.values():
            gone = functools.partial(hosts.owner_gone, host=store.host)
            granted = store.index.claim([_claim(batch[i]) for i in indexes], store.owner, CLAIM_LEASE, gone)
            for i, (_, _, _, got) in zip(indexes, granted, strict=True):
                job = batch[i]
                mine = [item for item in job.items if item_key(*item) in got]
                if mine and self._sidecar_now(job) != job.seen:  # another process wrote it since it was planned
                    store.index.release([_claim(job)], store.owner)
                    mine = []
                out[i] = mine
        return out

    @staticmethod
    def _sidecar_now(job: Job) -> Stat | None:
        try:
            st = os.stat(job.cand.store.layout.sidecar_file(job.cand.rel, job.plugin))
        except FileNotFoundError:
            return None
        return (st.st_size, st.st_mtime_ns)

    def _release_claims(self, jobs: Iterable[Job]) -> None:
        for job in jobs:
            job.cand.store.index.release([_claim(job)], job.cand.store.owner)

    async def _renew_claims(self) -> None:
        while True:
            await asyncio.sleep(CLAIM_LEASE / 5)
            for store in self.stores:
                try:
                    await self.in_thread(store.index.renew, store.owner, CLAIM_LEASE)
                except Exception:
                    log.exception("could not renew this process's claims")

    # -- what runners report (RunnerHost) ----------------------------------------------
    def job_dropped(self, job: Job, *, failed: bool) -> None:
        self._release_claims([job])
        stats = self.stats.plugin(job.plugin)
        stats.planned -= len(job.items)
        if failed:  # its plugin could not start: nothing is written, so `status` shows them missing too
            stats.not_run += len(job.items)
        self._release_waiting(job.cand.key, job.plugin)
        self._job_finished(job.cand.key)

    def _release_waiting(self, key: Key, plugin: str) -> None:
        """The provider's job will not be written: jobs waiting for it are dropped (found again later),
        and so are the jobs waiting for those."""
        dropped = []
        for held in list(self._waiting.get(key, ())):
            if plugin in held.waits_for:
                self._waiting[key].remove(held)
                self.stats.plugin(held.plugin).planned -= len(held.items)
                dropped.append(held.plugin)
        if key in self._waiting and not self._waiting[key]:
            del self._waiting[key]
        for name in dropped:
            self._release_waiting(key, name)
            self._job_finished(key)

    def plugin_unavailable(self, name: str, error: str | None) -> None:
        unavailable = self.stats.unavailable_plugins
        if error is not None:
            unavailable.append(f"{name}: {error}")
            return
        self.stats.unavailable_plugins = [u for u in unavailable if not u.startswith(f"{name}: ")]
        if self.on_plugin_ready is not None:
            self.on_plugin_ready(name)

    def _job_finished(self, key: Key) -> None:
        """One job of the image (or its planning) is over; release the image after the last."""
        if key not in self.claims:
            return  # work that never claimed the image (an unreadable file's error entry)
        left = self.claims[key] - 1
        if left > 0:
            self.claims[key] = left
            return
        self.claims.pop(key, None)
        self._waiting.pop(key, None)
        recheck = key in self._rechecks
        self._rechecks.discard(key)
        if self.on_released is not None:
            self.on_released(key[0], key[1], recheck)
        self._check_idle()

    # -- writing -----------------------------------------------------------------------
    async def write_batch(self, items: list[tuple[Job, Outcomes]], *, count: bool = True) -> None:
        """Merge each job's outcomes into its sidecar (atomically, in one thread hop) and count them."""
        try:
            reports = await asyncio.shield(self.in_thread(self._write_many, items))
        except Exception:  # a bug: its images are released (and retried by a later run), never left hanging
            log.exception("writing a batch of %d failed", len(items))
            for job, _ in items:
                self.job_dropped(job, failed=True)
            return
        for report in reports:
            key = report.job.cand.key
            try:
                self._account(report, count)
                if report.vanished or report.write_error is not None:
                    self._release_waiting(key, report.job.plugin)
                else:
                    await self._provider_written(key, report.job.plugin)
            finally:
                self._job_finished(key)

    def _write_many(self, items: list[tuple[Job, Outcomes]]) -> list[_WriteReport]:
        """Stage every job's sidecar, sync them together, put them in place, index them (blocking)."""
        reports: list[_WriteReport] = []
        now = now_iso()  # one time for the batch: the results were made together
        for start in range(0, len(items), PUBLISH_GROUP):  # a bounded number of open files at a time
            group = items[start : start + PUBLISH_GROUP]
            with locked((job.cand.store, job.cand.rel, job.plugin) for job, _ in group):
                reports.extend(self._write_group(group, now))
        self._release_claims(job for job, _ in items)  # written (or failed for good): others may look
        return reports

    def _write_group(self, group: list[tuple[Job, Outcomes]], now: str) -> list[_WriteReport]:
        """Read, merge, stage, sync, rename and index a group of sidecars (their locks held; blocking)."""
        reports: list[_WriteReport] = []
        staged: list[tuple[_WriteReport, StagedSidecar]] = []
        for job, outcomes in group:
            report, sidecar = self._stage_one(job, outcomes, now)
            reports.append(report)
            if sidecar is not None:
                staged.append((report, sidecar))
        if staged:
            for (report, sidecar), found in zip(staged, publish([s.staged for _, s in staged]), strict=True):
                if isinstance(found, OSError):
                    report.write_error = str(found.strerror or found)
                    continue
                try:
                    sidecar.store.written(sidecar, found)
                except Exception as exc:  # written, but not indexed: the next run reads it again
                    log.exception("%r: indexing its sidecar failed", report.job.cand.rel)
                    report.write_error = f"indexing failed: {exc}"
        return reports

    def _stage_one(self, job: Job, outcomes: Outcomes, now: str) -> tuple[_WriteReport, StagedSidecar | None]:
        """Check the image is unchanged, then merge the outcomes into its staged sidecar (blocking)."""
        plugin = self.by_name[job.plugin]
        report = _WriteReport(job)
        created_ns = None
        if job.image.hash:
            try:
                st = os.stat(job.cand.path)
            except FileNotFoundError:
                report.vanished = True
                return report, None
            created_ns = _created_ns(st)
            if (st.st_size, st.st_mtime_ns) != job.cand.stat and not self._same_content(job):
                report.changed = True
                changed = Failure(ErrorType.FILE_CHANGED, "the file changed while it was analysed", retryable=True)
                outcomes = {item: (changed, 0.0) for item in outcomes}
        results, errors, report.failed_modes = _sidecar_entries(plugin, job, outcomes, now)
        report.ok, report.failed = len(results), len(errors)
        try:
            sidecar = job.cand.store.stage(
                job.cand.rel,
                self.digesters[job.plugin],
                image_hash=job.image.hash or None,
                stat=job.cand.stat,
                created_ns=created_ns,
                results=results,
                errors=errors,
                now=now,
            )
        except OSError as exc:
            report.write_error = str(exc.strerror or exc)
            return report, None
        except Exception as exc:  # a plugin's wildcard_entries, say: this image's results are not written
            log.exception("%r: preparing its %s sidecar failed", job.cand.rel, job.plugin)
            report.write_error = f"{type(exc).__name__}: {exc}"
            return report, None
        report.corrupt = sidecar.corrupt
        return report, sidecar

    def _same_content(self, job: Job) -> bool:
        """The image was touched while analysed: True if it was saved again with the same content."""
        try:
            image_hash, size, mtime_ns = hash_file(job.cand.path)
        except (OSError, FileChangedError):
            return False
        if image_hash != job.image.hash:
            return False
        job.cand.stat = (size, mtime_ns)  # the results hold for the file as it is now
        job.cand.store.index.put_image(job.cand.rel_dir, job.cand.name, job.cand.stat, image_hash)
        return True

    def _account(self, report: _WriteReport, count: bool) -> None:
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
        for (kind, message), modes in (report.failed_modes or {}).items():
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
            path = job.cand.store.sidecar_path(rel, job.plugin)
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

    async def _record_unreadable(self, cand: Candidate, failure: Failure) -> None:
        if self.dry_run:
            return
        image = ImageRef(cand.path, cand.rel, "", cand.stat[0], cand.stat[1])
        items: list[tuple[Job, Outcomes]] = [
            (Job(cand, name, list(plan.items), image), {item: (failure, 0.0) for item in plan.items})
            for name, plan in self.planner.plans.items()
            if plan.items
        ]
        if items:
            self.claims[cand.key] = len(items)  # held while its error entries are written
            self._idle.clear()
            await self.write_batch(items, count=False)

    # -- wildcards ---------------------------------------------------------------------
    def commit(self) -> None:
        """Save the indexes now (blocking); they are saved on close anyway."""
        for store in self.stores:
            store.commit()

    def write_wildcards(self, force: bool = False) -> None:
        """Write the wildcard files from the index, if anything changed since they were written (blocking)."""
        folder = self.wildcards_dir()
        plugins = [p for p in self.plugins if p.wildcard_modes]
        if not plugins or (not force and not self.changes and folder.is_dir()):
            return
        self.wildcard_files = refresh_wildcards(self.stores, plugins, folder, self.stats)


def _claim(job: Job) -> Claim:
    return (job.cand.rel_dir, job.cand.name, job.plugin, frozenset(item_key(*item) for item in job.items))


def _shown(items: list[Item], plugin: AnalyzerPlugin | None = None) -> str:
    return ",".join(
        mode if plugin is None or len(plugin.model_ids(mode)) == 1 else f"{mode}[{model}]" for mode, model in items
    )


def _sidecar_entries(
    plugin: AnalyzerPlugin, job: Job, outcomes: Outcomes, now: str
) -> tuple[Entries, Entries, dict[tuple[str, str], list[str]]]:
    """Sidecar entries (mode, model id, entry) for results and errors, and the failed modes by error."""
    results: Entries = []
    errors: Entries = []
    failed_modes: dict[tuple[str, str], list[str]] = {}
    multi = {mode for (mode, _) in outcomes if len(plugin.model_ids(mode)) > 1}
    for (mode, model), (outcome, seconds) in outcomes.items():
        if isinstance(outcome, Result):
            try:  # stored and digested as it will read back: JSON (int keys become strings, say)
                outcome.value = as_json(outcome.value)
            except TypeError as exc:
                outcome = Failure(ErrorType.INVALID_RESULT, f"plugin returned a result that is not JSON: {exc}")
        if isinstance(outcome, Result):
            entry: dict[str, Any] = {
                "result": outcome.value,
                "created_at": now,
                "duration_s": round(seconds, 4),
                "parameters": outcome.parameters,
            }
            if outcome.usage is not None:
                entry["usage"] = outcome.usage
            if mode in job.contexts:
                entry["context"] = job.contexts[mode]
            results.append((mode, model, entry))
            continue
        failed_modes.setdefault((outcome.type, outcome.message), []).append(
            f"{mode}[{model}]" if mode in multi else mode
        )
        error = {
            "type": outcome.type,
            "message": outcome.message,
            "attempts": outcome.attempts,
            "at": now,
            "retryable": outcome.retryable,
        }
        errors.append((mode, model, error))
    return results, errors, failed_modes


def _created_ns(st: os.stat_result) -> int | None:
    """Birth time where the platform records it, else the inode change time."""
    birth = getattr(st, "st_birthtime_ns", None)
    return int(birth) if birth is not None else st.st_ctime_ns


@contextlib.contextmanager
def stop_on_signals(engine: Engine) -> Iterator[None]:
    """SIGINT/SIGTERM ask ``engine`` to stop (a second one exits at once), while in this block.

    Only in the main thread, with a running event loop.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()
    received = 0

    def on_signal(sig: signal.Signals) -> None:
        nonlocal received
        received += 1
        if received > 1:
            sys.stderr.write("second signal: exiting now\n")
            sys.stderr.flush()
            os._exit(exit_for_signal(sig.value))
        engine.stop_signal = sig.value
        engine.request_stop(f"received {sig.name}")

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal, sig)
    try:
        yield
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
