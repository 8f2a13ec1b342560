"""Counting, progress display, heartbeat lines and the end-of-run summary."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("analyzer")


def rss_mb() -> float:
    """Current resident set size in MB (peak RSS where /proc is not available)."""
    try:
        with open("/proc/self/statm") as handle:
            pages = int(handle.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 1e6
    except (OSError, ValueError):
        return peak_rss_mb()


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MB.

    Linux's ``VmHWM`` is reset by exec; ``ru_maxrss`` is not, so a process started from a large
    parent would report the parent's size.
    """
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1e3
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e6 if sys.platform == "darwin" else peak / 1e3


def gpu_memory_text() -> str:
    """`` gpu=<allocated>/<reserved>MB`` when torch is in use with a GPU, else ``""``."""
    torch = sys.modules.get("torch")  # never imported just for this
    try:
        if torch is None or not torch.cuda.is_available():
            return ""
        allocated = torch.cuda.memory_allocated() / 1e6
        reserved = torch.cuda.memory_reserved() / 1e6
    except Exception:  # a broken driver must not break the heartbeat
        return ""
    return f" gpu={allocated:.0f}/{reserved:.0f}MB"


@dataclass
class PluginStats:
    planned: int = 0
    done: int = 0
    failed: int = 0
    not_run: int = 0
    """Items not run because the plugin could not start: nothing is recorded, they stay missing."""
    blocked: int = 0
    """Items not run: a result they read is missing and not coming (its plugin failed or is not in the run)."""
    stale_kept: int = 0
    """Stale results of a costly plugin, kept (``--refresh-stale`` redoes them)."""
    first_done_at: float | None = None

    def rate(self, now: float) -> float:
        if self.first_done_at is None or self.done + self.failed == 0:
            return 0.0
        return (self.done + self.failed) / max(now - self.first_done_at, 1e-6)


@dataclass
class RunStats:
    images: int = 0
    up_to_date: int = 0
    hashed: int = 0
    hashed_bytes: int = 0
    changed: int = 0
    vanished: int = 0
    unreadable: int = 0
    corrupt_sidecars: int = 0
    write_errors: int = 0
    elsewhere: int = 0
    """Items another process of this host had claimed when this one came to them (it made them)."""
    unavailable_plugins: list[str] = field(default_factory=list)
    """Plugins asked for that could not run (their error was logged when it happened)."""
    plugins: dict[str, PluginStats] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    interrupted: bool = False
    walk_started: float | None = None
    """While the folders are walked: when the walk began (the totals still grow), else None."""

    def walk_rate(self, now: float) -> float:
        """Images found per second by the walk going on (0 when none is)."""
        if self.walk_started is None:
            return 0.0
        return self.images / max(now - self.walk_started, 1e-6)

    def plugin(self, name: str) -> PluginStats:
        return self.plugins.setdefault(name, PluginStats())

    def item_done(self, plugin: str, ok: bool) -> None:
        stats = self.plugin(plugin)
        if stats.first_done_at is None:
            stats.first_done_at = time.monotonic()
        if ok:
            stats.done += 1
        else:
            stats.failed += 1

    @property
    def done(self) -> int:
        return sum(p.done for p in self.plugins.values())

    @property
    def failed(self) -> int:
        return sum(p.failed for p in self.plugins.values()) + self.write_errors + self.unreadable

    @property
    def pending(self) -> int:
        return sum(p.planned - p.done - p.failed for p in self.plugins.values())


def _eta(stats: PluginStats, now: float, walking: bool = False) -> str:
    """Time left at the current rate; ``-`` while the total is unknown (walking) or no rate yet."""
    if walking:
        return "-"
    rate = stats.rate(now)
    left = stats.planned - stats.done - stats.failed
    if rate <= 0 or left <= 0:
        return "-"
    seconds = int(left / rate)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _counts(stats: PluginStats, walking: bool) -> str:
    """``12/40 done, 1 failed``; while the walk goes on the total is not known yet: ``12/40+``."""
    return f"{stats.done}/{stats.planned}{'+' if walking else ''} done, {stats.failed} failed"


class Reporter:
    """Shows progress while a run goes on: a live bar on a terminal, log lines otherwise."""

    def __init__(
        self,
        stats: RunStats,
        *,
        mode: str,
        heartbeat: float,
        progress_lines: bool = True,
        extra: Callable[[], str] | None = None,
    ) -> None:
        self.stats = stats
        self.heartbeat = heartbeat
        self.progress_lines = progress_lines
        self.extra = extra
        self.bar = mode == "bar" or (mode == "auto" and sys.stderr.isatty())
        self._task: asyncio.Task[None] | None = None
        self._progress: Any = None
        self._bars: dict[str, Any] = {}

    async def __aenter__(self) -> Reporter:
        if self.bar:
            from rich.progress import BarColumn, Progress, TextColumn

            from .logs import console

            self._progress = Progress(
                TextColumn("{task.description:>10}"),
                BarColumn(),
                TextColumn("{task.fields[counts]}"),
                TextColumn("{task.fields[rate]:.1f}/s {task.fields[eta]}"),
                console=console(),
                transient=True,
            )
            self._progress.start()
        self._task = asyncio.create_task(self._tick(), name="analyzer-progress")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._progress is not None:
            self._refresh_bars()
            self._progress.stop()

    def _refresh_bars(self) -> None:
        """One line for the walk while it goes on (found so far, rate), then one bar per plugin; a
        plugin's total and ETA are shown only once the walk is over and they mean something."""
        now = time.monotonic()
        s = self.stats
        walking = s.walk_started is not None
        walk = self._bars.get(" walk")
        if walking and walk is None:
            walk = self._bars[" walk"] = self._progress.add_task("walk", total=None, counts="", rate=0.0, eta="")
        if walk is not None:
            self._progress.update(
                walk,
                counts=f"{s.images} images found" + ("" if walking else f", {s.up_to_date} up to date"),
                rate=s.walk_rate(now) if walking else 0.0,
                total=None if walking else 1,
                completed=0 if walking else 1,
                eta="walking" if walking else "walked",
            )
        for name, stats in s.plugins.items():
            if name not in self._bars:
                self._bars[name] = self._progress.add_task(name, total=None, counts="", rate=0.0, eta="")
            self._progress.update(
                self._bars[name],
                total=None if walking else stats.planned,
                completed=stats.done,
                counts=_counts(stats, walking),
                rate=stats.rate(now),
                eta=f"ETA {_eta(stats, now, walking)}",
            )

    def heartbeat_line(self) -> str:
        now = time.monotonic()
        s = self.stats
        rate = sum(p.rate(now) for p in s.plugins.values())
        return (
            f"heartbeat: images={s.images} up_to_date={s.up_to_date} done={s.done} failed={s.failed} "
            f"pending={s.pending}{self.extra() if self.extra else ''} rate={rate:.1f}/s rss={rss_mb():.0f}MB"
            f"{gpu_memory_text()}"
        )

    def plain_lines(self, now: float | None = None) -> list[str]:
        """The progress lines shown every 10 s without a terminal: the walk while it goes on (found
        so far, rate), then per plugin done/planned, failed, rate, and an ETA once the total is known."""
        now = time.monotonic() if now is None else now
        s = self.stats
        walking = s.walk_started is not None
        lines = [f"walk: {s.images} images found so far, {s.walk_rate(now):.0f}/s"] if walking else []
        for name, p in s.plugins.items():
            if p.planned:
                lines.append(
                    f"progress {name}: {_counts(p, walking)}, {p.rate(now):.1f}/s, ETA {_eta(p, now, walking)}"
                )
        return lines

    async def _tick(self) -> None:
        last_beat = last_plain = time.monotonic()
        while True:
            await asyncio.sleep(0.5 if self.bar else 1.0)
            now = time.monotonic()
            if self._progress is not None:
                self._refresh_bars()
            elif self.progress_lines and now - last_plain >= 10:
                last_plain = now
                for line in self.plain_lines(now):
                    log.info(line)
            if self.heartbeat and now - last_beat >= self.heartbeat:
                last_beat = now
                log.info(self.heartbeat_line())


def summary_lines(stats: RunStats) -> list[str]:
    s = stats
    seconds = time.monotonic() - s.started
    lines = [
        f"{s.images} images: {s.up_to_date} already up to date, {s.hashed} hashed, "
        f"{s.changed} changed since last analysed, {s.vanished} vanished, {s.unreadable} unreadable"
    ]
    for name, p in sorted(s.plugins.items()):
        held = "".join(
            [
                f", {p.not_run} not run (the plugin could not start; they stay missing)" if p.not_run else "",
                f", {p.blocked} blocked (a result they read failed)" if p.blocked else "",
                f", {p.stale_kept} stale kept (--refresh-stale redoes them)" if p.stale_kept else "",
            ]
        )
        lines.append(f"  {name}: {p.done} done, {p.failed} failed of {p.planned} planned{held}")
    if s.corrupt_sidecars:
        lines.append(f"  {s.corrupt_sidecars} corrupt sidecars moved aside (*.corrupt-<time>) and redone")
    if s.elsewhere:
        lines.append(
            f"  {s.elsewhere} items were claimed or written by another process meanwhile: looked at again, made once"
        )
    if s.write_errors:
        lines.append(f"  {s.write_errors} sidecars could not be written (see errors above)")
    if s.unavailable_plugins:
        names = ", ".join(dict.fromkeys(item.partition(":")[0] for item in s.unavailable_plugins))
        lines.append(f"  could not run: {names} (the error is above)")
    lines.append(
        f"finished in {seconds:.1f}s, peak RSS {peak_rss_mb():.0f} MB" + (" (interrupted)" if s.interrupted else "")
    )
    return lines
