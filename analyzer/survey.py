"""Looking at the stores without analysing anything: ``analyzer status`` and ``analyzer wildcards``.

Both walk the roots like a run (the index is brought up to date with the sidecars on disk) but
never read an image nor call a plugin, and never move a sidecar (a corrupt one is reported).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .discovery import Stat
from .errors import CorruptSidecar
from .hashing import hash_file
from .index import SidecarRow
from .planner import STATES, Planner, RunOptions
from .plugin import AnalyzerPlugin
from .progress import RunStats
from .selector import MISSING, Selector, to_text
from .settings import Settings
from .store import Store, digesters, preferred_models, resolve_targets, skip_dirs, wildcards_dir
from .triage import Candidate, Triage
from .wildcards import refresh_wildcards

log = logging.getLogger("analyzer")


@dataclass
class Status:
    """Per (plugin, mode, model id): how many images are in each state (see :mod:`analyzer.planner`)."""

    images: int = 0
    changed: int = 0
    """Images whose content changed since their results were made (their results count as missing)."""
    counts: dict[tuple[str, str, str], dict[str, int]] = field(default_factory=dict)
    stores: list[Store] = field(default_factory=list)
    failures: list[Failed] = field(default_factory=list)
    """With ``failed=True``: every failed item, with its error, in path order."""


@dataclass(frozen=True, slots=True)
class Seen:
    """An image a walk found."""

    rel: str
    hash: str | None
    """Its content hash; None when it changed since it was last hashed (its results, if any,
    describe other content)."""
    size: int
    sidecars: int | None = None
    """A fingerprint of its sidecars as the walk found them (each one's size and mtime, in plugin
    order): the same while none of them changed (an export reuses what it read from them last time)."""


def sidecars_fingerprint(rows: Mapping[str, SidecarRow | None]) -> int | None:
    """:attr:`Seen.sidecars` of an image whose sidecars' index rows are ``rows``: Python's hash of
    their stats in plugin order, ``(-1, -1)`` for none. Of whole numbers only, so the same in every
    process (a hash of text, or of None before Python 3.12, is not); another Python may give
    another, and an export then reads its images again, once."""
    stats = tuple(row.stat if row is not None else (-1, -1) for _, row in sorted(rows.items()))
    return hash(stats) if any(row is not None for row in rows.values()) else None


@dataclass(frozen=True)
class Failed:
    """One failed item: which image, plugin, mode and model, and the error its sidecar records."""

    path: str
    plugin: str
    mode: str
    model: str
    type: str
    message: str
    retryable: bool


def _survey(
    settings: Settings,
    plugins: Sequence[AnalyzerPlugin],
    readers: Sequence[AnalyzerPlugin],
    paths: Sequence[Path],
    counts: Counter[tuple[str, str, str, str]] | None,
    failures: list[Failed] | None = None,
    seen: Callable[[Store, Seen], None] | None = None,
) -> tuple[list[Store], RunStats]:
    """Walk the roots, index what the sidecars say, tally item states into ``counts`` and, given
    ``failures``, collect every failed item with its error (blocking)."""
    by_name = {p.name: p for p in [*readers, *plugins]}
    planner = Planner(plugins, RunOptions(), readable=by_name)
    found, _ = digesters(planner, by_name)
    stats = RunStats()

    def tally(store: Store, rel: str, rows: dict[str, SidecarRow | None], image_hash: str | None, stat: Stat) -> None:
        if seen is not None:
            seen(store, Seen(rel, image_hash, stat[0], sidecars_fingerprint(rows)))
        if counts is not None:
            planner.tally(rows, counts)
        if failures is not None:
            _collect_failures(store, rel, rows, planner, failures)

    triage = Triage(
        planner,
        found,
        include=settings.include,
        exclude=settings.exclude,
        follow_symlinks=settings.follow_symlinks,
        on_up_to_date=tally if counts is not None or failures is not None or seen else None,  # wildcards: nothing
        stats=stats,
    )
    stores = [
        Store.open(target.root, settings, only=target.files)
        for target in resolve_targets(settings, paths, files=counts is not None)
    ]
    for store in stores:
        store.note_reading_rules(plugins)

    def look(chunk: list[Candidate]) -> bool:
        for cand in chunk:
            prepared = triage.prepare(cand, hash_images=False, set_aside=False)
            stats.corrupt_sidecars += prepared.corrupt
            if prepared.state == "unhashed":
                stats.changed += any(prepared.rows.values())
                prepared.rows = {}
            else:
                stats.changed += prepared.changed
            tally(cand.store, cand.rel, prepared.rows, prepared.image_hash, cand.stat)
        return True

    try:
        triage.walk(stores, look, skip=skip_dirs(settings, stores))
    finally:
        for store in stores:
            store.commit()
    return stores, stats


def _collect_failures(
    store: Store, rel: str, rows: dict[str, SidecarRow | None], planner: Planner, out: list[Failed]
) -> None:
    """The failed items of one image, with the errors its sidecars record (reads only those sidecars)."""
    for name, plan in planner.plans.items():
        row = rows.get(name)
        if row is None or not any(key in row.failed or key in row.retry for key in plan.keys):
            continue
        try:
            doc = store.read(rel, name)
        except (CorruptSidecar, OSError):
            continue
        if doc is None:
            continue
        for mode, model in plan.items:
            entry = doc["errors"].get(mode, {}).get(model)
            if entry is not None and model not in doc["analysis"].get(mode, {}):
                out.append(
                    Failed(
                        str(store.root / rel),
                        name,
                        mode,
                        model,
                        str(entry.get("type")),
                        str(entry.get("message")),
                        bool(entry.get("retryable")),
                    )
                )


def collect_status(
    settings: Settings,
    plugins: Sequence[AnalyzerPlugin],
    paths: Sequence[Path],
    readers: Sequence[AnalyzerPlugin] = (),
    *,
    failed: bool = False,
) -> Status:
    """Count every item's state under the roots; with ``failed``, list the failed items too (blocking)."""
    counts: Counter[tuple[str, str, str, str]] = Counter()
    failures: list[Failed] = []
    stores, stats = _survey(settings, plugins, readers, paths, counts, failures if failed else None)
    for store in stores:
        store.close()
    status = Status(stats.images, stats.changed, failures=sorted(failures, key=lambda f: (f.path, f.plugin, f.mode)))
    for plugin in plugins:
        for mode in plugin.enabled_modes():
            for model in plugin.model_ids(mode):
                status.counts[(plugin.name, mode, model)] = dict.fromkeys(STATES, 0)
    for (plugin_name, mode, model, state), n in counts.items():
        status.counts.setdefault((plugin_name, mode, model), dict.fromkeys(STATES, 0))[state] += n
    return status


def surveyed(
    settings: Settings,
    plugins: Sequence[AnalyzerPlugin],
    paths: Sequence[Path],
    readers: Sequence[AnalyzerPlugin] = (),
    seen: Callable[[Store, Seen], None] | None = None,
) -> list[Store]:
    """Walk the roots (folders) so that each index knows every image and sidecar there is now,
    calling ``seen(store, Seen(...))`` for every image found; the open stores, one per root, for the
    caller to read and close (blocking)."""
    stores, _ = _survey(settings, plugins, readers, paths, None, None, seen)
    return stores


def rebuild_wildcards(settings: Settings, plugins: Sequence[AnalyzerPlugin], paths: Sequence[Path]) -> dict[str, int]:
    """Write the wildcard files from the sidecars as they are (blocking); lines per file name."""
    stores, _ = _survey(settings, plugins, (), paths, None, None)
    try:
        return refresh_wildcards(stores, [p for p in plugins if p.wildcard_modes], wildcards_dir(settings, stores))
    finally:
        for store in stores:
            store.close()


def show_values(
    store: Store, rel: str, plugins: Sequence[AnalyzerPlugin], selectors: Sequence[str]
) -> list[tuple[str, str]]:
    """(selector, value as text) for one image: what ``selectors`` name, or every stored result (blocking).

    Only results made for the image's current content count; a selector with no value shows ``-``.
    """
    image_hash = hash_file(store.root / rel)[0]
    preferred = preferred_models(plugins)
    if selectors:
        wanted = [Selector.parse(text) for text in selectors]
    else:
        wanted = []
        for plugin in plugins:
            try:
                doc = store.read(rel, plugin.name)
            except CorruptSidecar as exc:
                log.warning("%s", exc)
                continue
            if doc is None or doc["file_info"].get("hash") != image_hash:
                continue
            for mode, by_model in doc["analysis"].items():
                for model in by_model:
                    text = f"{plugin.name}.{mode}" + (f"@{model}" if len(by_model) > 1 else "")
                    wanted.append(Selector.parse(text))
    values, _ = store.values(rel, image_hash, wanted, preferred)
    return [(sel.text, "-" if values[sel.text] is MISSING else to_text(values[sel.text])) for sel in wanted]
