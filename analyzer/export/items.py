"""What goes into a dataset: each image's class, confidence, caption and filters, read from the store.

Only stored results are read (selectors, :mod:`analyzer.selector`): no model runs here. A class
selector naming a classification (a result with ``top`` and ``confidence``, as the ``classify``
plugin stores them; a hand-given label wins, as everywhere) gives its top label and confidence;
any other selector (``metadata.parameters.sampler``) gives its value as text. ``--where`` keeps
the images whose results pass every condition.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import orjson

from ..errors import ConfigError
from ..selector import MANUAL, MISSING, Selector, render_template, template_selectors, to_text
from ..store import Store
from ..survey import Seen

log = logging.getLogger(__name__)

_CONDITION = re.compile(r"^(?P<sel>[^\s=!<>~]+)\s*(?:(?P<op>==|=|!=|>=|<=|>|<|~)\s*(?P<value>.*))?$")


@dataclass(frozen=True)
class Condition:
    """``SELECTOR`` (has a value), ``SELECTOR=TEXT``, ``!=``, ``~`` (contains), ``>``, ``>=``, ``<``, ``<=``
    (numbers)."""

    text: str
    selector: Selector
    op: str | None
    value: str

    @staticmethod
    def parse(text: str) -> Condition:
        match = _CONDITION.match(text.strip())
        if match is None:
            raise ConfigError(
                f"--where {text!r}: expected SELECTOR, or SELECTOR then =, !=, ~, >, >=, <, <= and a value"
            )
        op = match["op"]
        value = (match["value"] or "").strip()
        if op in (">", ">=", "<", "<=") and _number(value) is None:
            raise ConfigError(f"--where {text!r}: {op} compares numbers, and {value!r} is not one")
        return Condition(text, Selector.parse(match["sel"]), "=" if op == "==" else op, value)

    def test(self, value: Any) -> bool:
        if value is MISSING:
            return self.op == "!="
        if self.op is None:
            return value is not None and text_of(value) != ""
        text = text_of(value)
        if self.op == "=":
            return text == self.value
        if self.op == "!=":
            return text != self.value
        if self.op == "~":
            return self.value.lower() in text.lower()
        number, limit = _number(text), _number(self.value)
        if number is None or limit is None:
            return False
        return {">": number > limit, ">=": number >= limit, "<": number < limit, "<=": number <= limit}[self.op]


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class Wanted:
    """The selectors an export reads."""

    label: Selector | None = None
    caption: str | None = None
    """A selector (``llm.describe``) or a template (``"mytoken, {classify.animals}"``)."""
    where: tuple[Condition, ...] = ()

    @functools.cached_property
    def caption_selectors(self) -> list[Selector]:
        if self.caption is None:
            return []
        if "{" in self.caption:
            return template_selectors(self.caption)
        return [Selector.parse(self.caption)]

    @functools.cached_property
    def manual(self) -> Selector | None:
        """For a class named with ``@model`` (``classify.animals@refined``): the hand-given label of
        the same mode, which wins over it as it wins over every model's."""
        if self.label is None or self.label.after_at is None or self.label.after_at == MANUAL:
            return None
        return Selector.parse(f"{self.label.plugin}.{self.label.mode}@{MANUAL}")

    @property
    def selectors(self) -> list[Selector]:
        found = [self.label] if self.label is not None else []
        found += [self.manual] if self.manual is not None else []
        found += self.caption_selectors + [c.selector for c in self.where]
        return list({s.text: s for s in found}.values())


@dataclass(slots=True)
class Item:
    root: Path
    rel: str
    hash: str
    size: int
    label: str | None = None
    """The class, as text (None: no class asked for)."""
    confidence: float | None = None
    labels: str = "[]"
    """``[{name, score}]``, best first, for ``labels.jsonl`` (a classification's labels), as JSON
    text: a few bytes where a list of dicts would take a few hundred per label, times 100,000 images
    (text, not orjson's bytes: each of those keeps a 4 KB buffer)."""
    caption: str | None = None
    sidecars: int | None = None
    """The fingerprint of the sidecars all this was read from (:attr:`analyzer.survey.Seen.sidecars`)."""

    @property
    def path(self) -> Path:
        return self.root / self.rel

    @property
    def source(self) -> str:
        """:attr:`path` as text (what the manifest records), without pathlib's cost."""
        return os.path.join(self.root, self.rel)


@dataclass
class Missing:
    """Images an export cannot take as they are, by reason, with a few examples each."""

    by_reason: dict[str, list[str]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, reason: str, path: Path) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        examples = self.by_reason.setdefault(reason, [])
        if len(examples) < 5:
            examples.append(str(path))

    def __bool__(self) -> bool:
        return bool(self.counts)

    def lines(self) -> list[str]:
        return [
            f"{n:,} images: {reason} (e.g. {', '.join(self.by_reason[reason][:3])})"
            for reason, n in sorted(self.counts.items(), key=lambda kv: -kv[1])
        ]


def classification(value: Any) -> tuple[str, float | None, str]:
    """(label, confidence, labels as JSON) of a stored value: a classification's top label, else the text."""
    if isinstance(value, Mapping) and isinstance(value.get("top"), str):
        labels = [
            {"name": e["label"], "score": e.get("confidence", e.get("score"))}
            for e in value.get("labels", [])
            if isinstance(e, Mapping) and isinstance(e.get("label"), str)
        ]
        confidence = value.get("confidence")
        known = float(confidence) if isinstance(confidence, (int, float)) else None
        return value["top"], known, orjson.dumps(labels).decode()
    return to_text(value), None, "[]"


def text_of(value: Any) -> str:
    """A value as caption or filter text: a classification's top label, else :func:`to_text`."""
    if isinstance(value, Mapping) and isinstance(value.get("top"), str):
        return str(value["top"])
    return to_text(value)


def indexed_images(store: Store) -> list[Seen]:
    """Every image the index knows, as a walk would report it (its hash only while the file is as
    it was hashed)."""
    found = []
    for rel_dir in sorted(store.index.dirs()):
        for name, row in sorted(store.index.load_dir(rel_dir).items()):
            rel = f"{rel_dir}/{name}" if rel_dir else name
            try:
                st = os.stat(store.root / rel)
            except OSError:
                continue  # gone since the walk
            fresh = row.hash is not None and row.stat is not None and (st.st_size, st.st_mtime_ns) == tuple(row.stat)
            found.append(Seen(rel, row.hash if fresh else None, st.st_size))
    return found


FILTERED: Final = "filtered"
"""What ``reuse`` in :func:`read_items` gives for an image the filters left out last time (its
sidecars unchanged since): it stays out, unread."""


def read_items(
    stores: Sequence[Store],
    wanted: Wanted,
    preferred: Mapping[str, Mapping[str, Sequence[str]]],
    *,
    found: Mapping[Path, Sequence[Seen]] | None = None,
    min_confidence: float | None = None,
    below: str = "skip",
    unsure: str = "_unsure",
    reuse: Callable[[Path, Seen], Item | Literal["filtered"] | None] | None = None,
) -> tuple[list[Item], Missing, list[tuple[Path, Seen]]]:
    """Every image (``found``: the images a walk found, per root; else the ones the index knows)
    with what the export needs (blocking): (items, the images missing a result, the images
    ``--where`` or ``--min-confidence`` left out, with their roots).

    The values come from the index's copy of the results, a folder at a time; an image's sidecars
    are read only where the index has no results for it (and to say why a result is missing).
    ``reuse(root, image)`` may give an image's item as an earlier export read it, or
    :data:`FILTERED` for an image it left out (its sidecars unchanged since): then nothing is read
    for it."""
    selectors = wanted.selectors
    items: list[Item] = []
    missing = Missing()
    left_out: list[tuple[Path, Seen]] = []
    for store in stores:
        seen = found.get(store.root, ()) if found is not None else indexed_images(store)
        ordered = sorted(seen, key=lambda image: image.rel.rpartition("/")[::2])  # by folder, then name
        for image in ordered:
            if not image.hash:
                missing.add("not analysed since it was added or changed", store.root / image.rel)
        hashed = [image for image in ordered if image.hash]
        earlier = [reuse(store.root, image) for image in hashed] if reuse is not None else [None] * len(hashed)
        pairs = [(image.rel, image.hash) for image, item in zip(hashed, earlier, strict=True) if item is None]
        read = store.values_of(pairs, selectors, preferred)  # type: ignore[arg-type]  # hashed: str
        for image, known in zip(hashed, earlier, strict=True):
            if known == FILTERED:
                left_out.append((store.root, image))
                continue
            if known is not None:
                items.append(known)
                continue
            values, failed = next(read)
            item = _item(store, image, wanted, values, failed, min_confidence, below, unsure)
            if item is None:
                left_out.append((store.root, image))
            elif isinstance(item, str):
                missing.add(item, store.root / image.rel)
            else:
                items.append(item)
    return items, missing, left_out


def _item(
    store: Store,
    image: Seen,
    wanted: Wanted,
    values: Mapping[str, Any],
    failed: set[str],
    min_confidence: float | None,
    below: str,
    unsure: str,
) -> Item | str | None:
    """The image as an export item; None when ``--where`` or ``--min-confidence`` leave it out; why
    not, when it lacks its class."""
    if not all(c.test(values[c.selector.text]) for c in wanted.where):
        return None
    assert image.hash is not None
    item = Item(store.root, image.rel, image.hash, image.size, sidecars=image.sidecars)
    if wanted.label is not None:
        value = values[wanted.label.text]
        if wanted.manual is not None and values[wanted.manual.text] is not MISSING:
            value = values[wanted.manual.text]
        if value is MISSING:
            if not failed:  # from the index: the sidecar says whether the result failed
                _, failed = store.values(image.rel, image.hash, [wanted.label], {})
            return _why_missing(store, image.rel, wanted.label, failed)
        item.label, item.confidence, item.labels = classification(value)
        if min_confidence is not None and (item.confidence is None or item.confidence < min_confidence):
            if below == "skip":
                return None
            item.label = unsure
    if wanted.caption is not None:
        item.caption = caption_of(wanted, values, image.rel.rpartition("/")[2])
    return item


def _why_missing(store: Store, rel: str, selector: Selector, failed: set[str]) -> str:
    from ..errors import CorruptSidecar

    if selector.text in failed:
        return f"failed for {selector.text} (analyzer status --failed says why)"
    try:
        store.read(rel, selector.plugin)
    except CorruptSidecar:
        return f"the {selector.plugin} sidecar is corrupt (the next run sets it aside and analyses again)"
    except OSError:
        return f"the {selector.plugin} sidecar cannot be read"
    return f"no result for {selector.text}"


def caption_of(wanted: Wanted, values: Mapping[str, Any], file_name: str) -> str:
    assert wanted.caption is not None
    if "{" in wanted.caption:
        texts = {s.text: "" if values[s.text] is MISSING else text_of(values[s.text]) for s in wanted.caption_selectors}
        return render_template(wanted.caption, texts, file_name)
    value = values[wanted.caption]
    return "" if value is MISSING else text_of(value)
