"""The plugin runner: one per plugin, with lazy setup, batching and bounded concurrency.

A runner takes :class:`Job` objects (one image's items for its plugin), groups them into batches
of the plugin's ``batch_size``, calls ``analyze`` mode by mode with at most ``concurrency`` batches
in flight, and hands the outcomes to its host (the engine) to write. It knows nothing else of the
engine: the host is the small :class:`RunnerHost` protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from .discovery import Stat
from .errors import ErrorType, PluginUnavailable
from .planner import Item
from .plugin import AnalyzerPlugin, Failure, ImageRef, Outcome
from .triage import Candidate

log = logging.getLogger("analyzer")

Outcomes = dict[Item, tuple[Outcome, float]]
"""(mode, model id) -> (outcome, seconds per image)"""


@dataclass
class Job:
    """One image's items for one plugin."""

    cand: Candidate
    plugin: str
    items: list[Item]
    image: ImageRef
    contexts: dict[str, dict[str, Any]] = field(default_factory=dict)
    """mode -> ``{"digest", "reads"}``: the context its results are made from (recorded with them)."""
    seen: Stat | None = None
    """The sidecar's (size, mtime_ns) when the job was planned (None: there was none)."""


class RunnerHost(Protocol):
    """What a runner needs of the engine that drives it."""

    stopping: asyncio.Event
    retry_setup: bool
    """Keep retrying a plugin whose setup failed (a watcher), instead of failing its items (a run)."""
    setup_retry_max: float

    async def write_batch(self, items: list[tuple[Job, Outcomes]]) -> None:
        """Write the outcomes of a batch of jobs."""

    async def claim(self, batch: list[Job]) -> list[Job]:
        """The jobs with only the items no other process is analysing (claimed for this one)."""

    def job_dropped(self, job: Job, *, failed: bool) -> None:
        """A job that will not run: stopping or set aside (``failed`` False), or its plugin cannot start."""

    def plugin_unavailable(self, name: str, error: str | None) -> None:
        """The plugin's setup failed with ``error``, or (None) it started after failing."""


class PluginRunner:
    """Runs one plugin for its host. A plugin that fails to start fails its items, or, when the
    host retries setups, has them set aside (they stay missing and are found again by a walk)."""

    def __init__(self, host: RunnerHost, plugin: AnalyzerPlugin) -> None:
        self.host = host
        self.plugin = plugin
        size = max(8, plugin.batch_size * plugin.concurrency * 2)
        self.queue: asyncio.Queue[Job | None] = asyncio.Queue(maxsize=size)
        self.setup_error: str | None = None
        self.started = False
        self.closed = False
        self.first_attempt = asyncio.Event()
        self.ready = asyncio.create_task(self._setup(), name=f"analyzer-setup-{plugin.name}")
        self.workers = [
            asyncio.create_task(self._worker(), name=f"analyzer-{plugin.name}-{i}") for i in range(plugin.concurrency)
        ]
        self._writes: set[asyncio.Task[None]] = set()
        self._write_slots = asyncio.Semaphore(max(2, plugin.concurrency * 2))
        """Batches analysed but not yet written: a worker goes on with the next batch meanwhile
        (the write's fsyncs run in the host's threads), at most this many at a time."""

    async def submit(self, job: Job) -> None:
        await self.queue.put(job)

    async def finish(self) -> None:
        """Let the queued jobs run and their results be written, then end the workers."""
        for _ in self.workers:
            await self.queue.put(None)
        await asyncio.gather(*self.workers, return_exceptions=True)
        await self.written()

    async def written(self) -> None:
        """Wait for the writes under way (they are never cancelled: a write that started completes)."""
        while self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)

    def cancel(self) -> None:
        for worker in self.workers:
            worker.cancel()

    async def close(self) -> None:
        self.cancel()
        await asyncio.gather(*self.workers, return_exceptions=True)
        await self.written()
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
        host, name = self.host, self.plugin.name
        delay, attempts = min(5.0, host.setup_retry_max), 0
        while True:
            started = time.monotonic()
            attempts += 1
            try:
                await self.plugin.setup()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error = (exc.reason if isinstance(exc, PluginUnavailable) else str(exc)) or type(exc).__name__
                if self.setup_error is None:
                    host.plugin_unavailable(name, error)
                self.setup_error = error
                self.first_attempt.set()
                if not host.retry_setup:
                    log.error("plugin %s could not start: %s", name, error)
                    return
                log.error("plugin %s could not start: %s; trying again in %gs", name, error, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(host.stopping.wait(), delay)
                if host.stopping.is_set():
                    return
                delay = min(delay * 2, host.setup_retry_max)
                continue
            self.started = True
            self.first_attempt.set()
            log.debug("plugin %s ready in %.2fs", name, time.monotonic() - started)
            if self.setup_error is not None:
                log.warning("plugin %s started after %d attempts; looking again for the work it missed", name, attempts)
                self.setup_error = None
                host.plugin_unavailable(name, None)
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
        host = self.host
        last = False
        while not last:
            batch, last = await self._next_batch()
            if not batch:
                continue
            if host.stopping.is_set() or (self.setup_error is not None and host.retry_setup):
                for job in batch:  # not started: dropped, analysed on a later run (or walk)
                    host.job_dropped(job, failed=False)
                continue
            if self.setup_error is not None:
                for job in batch:
                    host.job_dropped(job, failed=True)
                continue
            await self._run_batch(batch)

    async def _run_batch(self, batch: list[Job]) -> None:
        plugin = self.plugin
        batch = await self.host.claim(batch)
        if not batch:
            return
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
                outs = list(await plugin.analyze(mode, model, images))
                if len(outs) != len(images):
                    wrong = Failure(
                        ErrorType.INVALID_RESULT, f"plugin returned {len(outs)} outcomes for {len(images)} images"
                    )
                    log.warning("%s/%s: %s", plugin.name, mode, wrong.message)
                    outs = [wrong] * len(images)
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
        await self._write_slots.acquire()
        task = asyncio.create_task(self._write(list(zip(batch, outcomes, strict=True))))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(self, items: list[tuple[Job, Outcomes]]) -> None:
        try:
            await self.host.write_batch(items)
        except Exception:  # the host logs per image; this is a bug, not a lost run
            log.exception("%s: writing a batch of %d failed", self.plugin.name, len(items))
        finally:
            self._write_slots.release()
