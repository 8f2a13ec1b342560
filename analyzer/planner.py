"""The planner: which (mode, model id) items of a plugin an image is missing.

An item is a key ``"<mode>\\t<model id>"``. It is *done* when its sidecar holds a result for
it, *failed* when it holds only an error. Missing items are analysed; failed ones are tried
again when the error was marked retryable, or when ``--retry-failed`` is given; ``--force``
redoes everything asked for.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .index import SidecarRow
    from .plugin import AnalyzerPlugin


def item_key(mode: str, model: str) -> str:
    return f"{mode}\t{model}"


@dataclass
class PluginPlan:
    """What one plugin is asked for in this run."""

    name: str
    items: list[tuple[str, str]]
    """(mode, model id) for each enabled mode."""
    force: bool = False
    retry_failed: bool = False
    keys: list[str] = field(init=False)
    _memo: dict[tuple[frozenset[str], frozenset[str], frozenset[str]], tuple[tuple[str, str], ...]] = field(
        init=False, default_factory=dict, repr=False
    )

    def __post_init__(self) -> None:
        self.keys = [item_key(mode, model) for mode, model in self.items]

    @classmethod
    def for_plugin(
        cls, plugin: AnalyzerPlugin, *, modes: list[str] | None, force: bool, retry_failed: bool
    ) -> PluginPlan:
        chosen = [m for m in plugin.enabled_modes() if modes is None or m in modes]
        items = [(m, model) for m in chosen for model in plugin.model_ids(m)]
        return cls(plugin.name, items, force, retry_failed)

    def missing(self, row: SidecarRow | None) -> list[tuple[str, str]]:
        """(mode, model id) items to analyse for an image whose sidecar digest is ``row`` (None: no sidecar)."""
        if row is None or self.force:
            return list(self.items)
        # The index shares one frozenset per distinct key text, so a warm run over 100k images
        # asks this with a handful of distinct digests: remember the answers.
        memo_key = (row.done, row.retry, row.failed)
        found = self._memo.get(memo_key)
        if found is None:
            found = self._memo[memo_key] = self._missing(row)
        return list(found)

    def satisfied(self, row: SidecarRow | None) -> bool:
        """True when nothing is missing: :meth:`missing` without building a list."""
        if row is None or self.force:
            return not self.items
        memo_key = (row.done, row.retry, row.failed)
        found = self._memo.get(memo_key)
        if found is None:
            found = self._memo[memo_key] = self._missing(row)
        return not found

    def _missing(self, row: SidecarRow) -> tuple[tuple[str, str], ...]:
        out = []
        for item, key in zip(self.items, self.keys, strict=True):
            if key in row.done:
                continue
            if key in row.failed and not self.retry_failed:
                continue
            out.append(item)
        return tuple(out)

    def tally(self, row: SidecarRow | None, counts: Counter[tuple[str, str, str, str]]) -> None:
        """Count each item as done, failed or missing into ``counts[(plugin, mode, model, state)]``."""
        for (mode, model), key in zip(self.items, self.keys, strict=True):
            if row is not None and key in row.done:
                state = "done"
            elif row is not None and (key in row.failed or key in row.retry):
                state = "failed"
            else:
                state = "missing"
            counts[(self.name, mode, model, state)] += 1
