"""The planner: what each plugin still owes an image, and what must come first.

An item is one (mode, model id) of a plugin, keyed ``"<mode>\\t<model id>"`` in the index. Its
state, from the image's sidecar digests (:class:`~analyzer.index.SidecarRow`):

- ``done``: the sidecar holds a result;
- ``stale``: it holds a result, but the results it read (:meth:`AnalyzerPlugin.reads`) have
  changed or appeared since (or it records no context at all): the digest of the values it read,
  stored with the result, differs from the digest of those values now;
- ``failed``: it holds only an error (retryable or permanent);
- ``blocked``: no result, and a result it reads failed for the image (its plugin recorded an
  error for that mode) and is not being retried: it is not made without it;
- ``missing``: none of these.

A run analyses missing items, retryable failures, permanent ones with ``--retry-failed``, stale
results of cheap plugins (a costly plugin's only with ``--refresh-stale``), and everything asked
for with ``--force``. An item that reads a result planned in the same run waits for it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from .selector import MISSING, Selector, combine_digests, value_digest

if TYPE_CHECKING:
    from .index import SidecarRow
    from .plugin import AnalyzerPlugin

Item = tuple[str, str]
"""(mode, model id)"""
State = Literal["done", "stale", "failed", "blocked", "missing"]
STATES: tuple[State, ...] = ("done", "stale", "failed", "blocked", "missing")
MISSING_DIGEST = value_digest(MISSING)
Rows = Mapping[str, "SidecarRow | None"]


def item_key(mode: str, model: str) -> str:
    return f"{mode}\t{model}"


@dataclass
class RunOptions:
    """What a run is asked to redo, beyond what is missing."""

    modes: list[str] | None = None
    force: bool = False
    retry_failed: bool = False
    refresh_stale: bool = False


@dataclass
class PluginPlan:
    """What one plugin is asked for in this run."""

    name: str
    items: list[Item]
    """(mode, model id) for each enabled mode."""
    options: RunOptions = field(default_factory=RunOptions)
    costly: bool = False
    reads: dict[str, tuple[Selector, ...]] = field(default_factory=dict)
    """mode -> the selectors it reads (only modes that read something)."""
    keys: list[str] = field(init=False)
    _memo: dict[tuple[frozenset[str], frozenset[str], frozenset[str]], tuple[Item, ...]] = field(
        init=False, default_factory=dict, repr=False
    )

    def __post_init__(self) -> None:
        self.keys = [item_key(mode, model) for mode, model in self.items]

    @classmethod
    def for_plugin(cls, plugin: AnalyzerPlugin, options: RunOptions) -> PluginPlan:
        chosen = [m for m in plugin.enabled_modes() if options.modes is None or m in options.modes]
        items = [(m, model) for m in chosen for model in plugin.model_ids(m)]
        reads = {m: tuple(Selector.parse(s) for s in plugin.reads(m)) for m in chosen}
        return cls(plugin.name, items, options, plugin.costly, {m: r for m, r in reads.items() if r})

    def missing(self, row: SidecarRow | None) -> list[Item]:
        """Items to analyse for a plugin that reads nothing, whose sidecar digest is ``row``."""
        if row is None or self.options.force:
            return list(self.items)
        # The index shares one frozenset per distinct key text, so a warm run over 100k images
        # asks this with a handful of distinct digests: remember the answers.
        memo_key = (row.done, row.retry, row.failed)
        found = self._memo.get(memo_key)
        if found is None:
            found = self._memo[memo_key] = self._missing(row)
        return list(found)

    def _missing(self, row: SidecarRow) -> tuple[Item, ...]:
        out = []
        for item, key in zip(self.items, self.keys, strict=True):
            if key in row.done:
                continue
            if key in row.failed and not self.options.retry_failed:
                continue
            out.append(item)
        return tuple(out)


@dataclass
class Assessment:
    """What one image needs: per plugin the items to analyse, and the items held back."""

    todo: dict[str, list[Item]] = field(default_factory=dict)
    waits_for: dict[str, set[str]] = field(default_factory=dict)
    """plugin -> the plugins whose results, planned for the same image in this run, it reads."""
    blocked: dict[str, list[Item]] = field(default_factory=dict)
    stale_kept: dict[str, list[Item]] = field(default_factory=dict)
    """Stale results of a costly plugin, kept (``--refresh-stale`` redoes them)."""

    @property
    def empty(self) -> bool:
        return not any(self.todo.values())


class Planner:
    """Every plugin's plan for a run, and the results they read from each other."""

    def __init__(self, plugins: Sequence[AnalyzerPlugin], options: RunOptions, readable: Iterable[str] = ()) -> None:
        self.options = options
        self.plans = {p.name: PluginPlan.for_plugin(p, options) for p in plugins}
        self.order = self._ordered()
        self.selectors: dict[str, list[Selector]] = {}
        """provider plugin -> the selectors read from it, by any plan."""
        for plan in self.plans.values():
            for selectors in plan.reads.values():
                for sel in selectors:
                    known = self.selectors.setdefault(sel.plugin, [])
                    if sel not in known:
                        known.append(sel)
        self.readable = set(readable)
        """Plugins whose sidecars can be digested here (those of this run and the providers loaded)."""
        self.watched = list(dict.fromkeys([*self.plans, *(p for p in self.selectors if p in self.readable)]))
        """Plugins whose sidecars triage looks at: this run's and the ones they read."""
        self.reading = any(plan.reads for plan in self.plans.values())

    def _ordered(self) -> list[str]:
        """Plugin names, providers before the plugins that read them (a cycle keeps the given order)."""
        order: list[str] = []
        visiting: set[str] = set()

        def visit(name: str) -> None:
            if name in order or name in visiting or name not in self.plans:
                return
            visiting.add(name)
            for selectors in self.plans[name].reads.values():
                for sel in selectors:
                    visit(sel.plugin)
            visiting.discard(name)
            order.append(name)

        for name in self.plans:
            visit(name)
        return order

    # -- the warm run's hot path -------------------------------------------------------
    def satisfied(self, rows: Rows) -> bool:
        """True when no plugin owes the image anything and nothing of it is stale (asked per image)."""
        if self.reading:
            assessed = self.assess(rows)
            return assessed.empty and not assessed.stale_kept  # a kept stale result is counted by the run
        for name, plan in self.plans.items():
            row = rows.get(name)
            if row is None or plan.options.force:
                if plan.items:
                    return False
            elif plan.missing(row):
                return False
        return True

    def needs_digest(self, name: str, row: SidecarRow) -> bool:
        """The index's digest of ``name``'s sidecar lacks a value some plan reads: read it again."""
        wanted = self.selectors.get(name, ())
        return bool(wanted) and (row.sel is None or any(s.text not in row.sel for s in wanted))

    # -- per item ----------------------------------------------------------------------
    def context_now(self, selectors: Iterable[Selector], rows: Rows) -> str:
        """The digest of the values ``selectors`` read now, from the providers' sidecar digests."""
        digests = {}
        for sel in selectors:
            row = rows.get(sel.plugin)
            digests[sel.text] = (row.sel or {}).get(sel.text, MISSING_DIGEST) if row is not None else MISSING_DIGEST
        return combine_digests(digests)

    def state(self, plan: PluginPlan, item: Item, rows: Rows) -> State:
        row = rows.get(plan.name)
        key = item_key(*item)
        selectors = plan.reads.get(item[0])
        if row is not None and key in row.done:
            if selectors and (row.ctx or {}).get(key) != self.context_now(selectors, rows):
                return "stale"
            return "done"
        if row is not None and (key in row.failed or key in row.retry):
            return "failed"
        if selectors and any(self._failed(s, rows) and not self._can_come(s, rows) for s in selectors):
            return "blocked"
        return "missing"

    def _can_come(self, sel: Selector, rows: Rows) -> bool:
        """A run of these plans would make ``sel``'s result: its plugin and mode are planned, not failed for good."""
        plan = self.plans.get(sel.plugin)
        if plan is None or not any(mode == sel.mode for mode, _ in plan.items):
            return False
        row = rows.get(sel.plugin)
        permanent = row is not None and any(k.startswith(f"{sel.mode}\t") for k in row.failed)
        return not permanent or plan.options.retry_failed

    @staticmethod
    def _failed(sel: Selector, rows: Rows) -> bool:
        """The selector's plugin failed for the image: an error for its mode, and no result."""
        row = rows.get(sel.plugin)
        if row is None:
            return False
        prefix = f"{sel.mode}\t"
        return not any(k.startswith(prefix) for k in row.done) and any(
            k.startswith(prefix) for k in (*row.failed, *row.retry)
        )

    def tally(self, rows: Rows, counts: Counter[tuple[str, str, str, str]]) -> None:
        """Count each item's state into ``counts[(plugin, mode, model, state)]`` (for ``status``)."""
        for plan in self.plans.values():
            for item in plan.items:
                counts[(plan.name, item[0], item[1], self.state(plan, item, rows))] += 1

    def assess(self, rows: Rows) -> Assessment:
        """What the image needs in this run, providers first."""
        out = Assessment()
        coming: set[tuple[str, str]] = set()  # (plugin, mode) analysed for this image in this run
        for name in self.order:
            plan = self.plans[name]
            if not plan.reads and rows.get(name) is not None:
                todo = plan.missing(rows[name])
                states: dict[Item, State] = {}
            else:
                states = {item: self.state(plan, item, rows) for item in plan.items}
                todo = [item for item, state in states.items() if self._wanted(plan, item, state, rows)]
            for item in list(todo):
                selectors = plan.reads.get(item[0], ())
                waits = {s.plugin for s in selectors if (s.plugin, s.mode) in coming}
                if any(self._failed(s, rows) and (s.plugin, s.mode) not in coming for s in selectors):
                    todo.remove(item)
                    out.blocked.setdefault(name, []).append(item)
                elif waits:
                    out.waits_for.setdefault(name, set()).update(waits)
            kept = [item for item, state in states.items() if state == "stale" and item not in todo]
            if kept:
                out.stale_kept[name] = kept
            if todo:
                out.todo[name] = todo
                coming.update((name, mode) for mode, _ in todo)
        return out

    def _wanted(self, plan: PluginPlan, item: Item, state: State, rows: Rows) -> bool:
        options = plan.options
        if options.force:
            return True
        if state == "done":
            return False
        if state == "stale":
            return not plan.costly or options.refresh_stale
        if state == "failed":
            row = rows.get(plan.name)
            return options.retry_failed or (row is not None and item_key(*item) in row.retry)
        return True  # missing, or blocked (assess checks again whether it is coming in this run)
