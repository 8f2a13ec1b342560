"""Results a person gives (``analyzer label set IMAGE LABEL`` and its CSV form), and results a
person no longer wants (``analyzer classify --clean``).

A correction is stored in the image's sidecar of the plugin, beside the models' results, under
the model id ``manual`` (:data:`analyzer.selector.MANUAL`); it wins over them wherever results
are read and stays when they are redone (see :meth:`analyzer.store.Store.set_manual`).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError
from .images import is_image_name
from .planner import Planner, RunOptions
from .plugin import AnalyzerPlugin
from .selector import MANUAL
from .settings import Settings
from .store import Store, digesters, resolve_targets, root_of_file


@dataclass(frozen=True)
class Correction:
    image: Path
    mode: str
    value: str | None
    """None: remove the correction."""


def read_csv(path: Path, default_mode: str | None) -> list[Correction]:
    """Corrections from a CSV file with a header: ``path,label[,set]`` (paths relative to the file's folder)."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    found: list[Correction] = []
    for number, row in enumerate(rows, start=2):
        image, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
        mode = (row.get("set") or "").strip() or default_mode
        if not image or mode is None:
            raise ConfigError(f"{path}:{number}: a row needs a path, a label, and a set (a column or --set)")
        found.append(Correction((path.parent / image).absolute(), mode, label or None))
    return found


def apply(settings: Settings, plugin: AnalyzerPlugin, corrections: Iterable[Correction]) -> int:
    """Record the corrections (each checked first: an image that exists, a known set, a known label); how many."""
    checked = []
    for c in corrections:
        if not c.image.is_file() or not is_image_name(c.image.name):
            raise ConfigError(f"{c.image} is not an image file")
        if c.mode not in plugin.modes:
            raise ConfigError(f"{plugin.name} has no set {c.mode!r}; its sets: {', '.join(plugin.modes) or 'none'}")
        value = plugin.manual_result(c.mode, c.value) if c.value is not None else None
        checked.append((c, value))
    planner = Planner([plugin], RunOptions())
    found, _ = digesters(planner, {plugin.name: plugin})
    stores: dict[Path, Store] = {}
    try:
        for c, value in checked:
            image = c.image.absolute().parent.resolve() / c.image.name
            root = root_of_file(image, settings)
            store = stores.get(root) or stores.setdefault(root, Store.open(root, settings))
            store.set_manual(image.relative_to(root).as_posix(), found[plugin.name], c.mode, value)
    finally:
        for store in stores.values():
            store.close()
    return len(checked)


def clean(settings: Settings, plugin: AnalyzerPlugin, paths: Sequence[Path]) -> int:
    """Remove the plugin's results of modes or models it is no longer configured with (hand-given
    results of its configured modes stay); how many results went."""
    from .survey import collect_status

    collect_status(settings, [plugin], paths)  # a walk: the index learns every sidecar there is
    modes = set(plugin.modes)

    def keep(mode: str, model: str) -> bool:
        return mode in modes and (model == MANUAL or plugin.keeps(mode, model))

    planner = Planner([plugin], RunOptions())
    found, _ = digesters(planner, {plugin.name: plugin})
    removed = 0
    for target in resolve_targets(settings, paths, files=False):
        store = Store.open(target.root, settings)
        try:
            removed += store.prune(found[plugin.name], keep)
        finally:
            store.close()
    return removed
