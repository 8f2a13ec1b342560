"""X/Y(/Z) comparison grids: which value of which parameter each image has, and in what order.

An axis is a selector (``metadata.parameters.steps``; a bare name such as ``steps`` means
``metadata.parameters.steps``). Its values are compared as they mean, not as they are stored
(:func:`normal`): AUTOMATIC1111 stores numbers as text ("15"), others as numbers (15, 8.0), so
numbers are exact decimals ("5" == 5 == 5.0; "15" before "100"; a 19-digit seed keeps every
digit; float noise such as 0.8700000000000001 is rounded to 6 significant digits), sizes such
as "512x768" sort as pairs, and other text sorts case-folded. An image without the value is in
"(none)", last.

A prompt axis is labelled by what differs (:func:`prompt_labels`): the words of each prompt that
are not in every prompt of the axis, in order ("cat", "dog", "red fox" for three prompts that
differ in the animal); a prompt with no words of its own is "(base)".

``--auto-axes`` (:func:`detect_axes`) takes the generation parameters that vary across the images,
in an order of preference (prompt, model, sampler, scheduler, CFG, steps, denoise, size, negative
prompt, seed): a parameter whose every image has its own value (a random seed per image), and the
seed always (several seeds of one setting are what a cell shows side by side), is not an axis but
what tells the images of a cell apart, unless it is the only one that varies. X is
the first numeric one, else the first; Y the next; Z the one after (a sheet each). The rest tell
the images of a cell apart. It refuses when fewer than half the X by Y cells would have an image
(nothing to compare), saying what varies.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from ..errors import ConfigError
from ..selector import MISSING, Selector

PARAMETERS = "metadata.parameters"
"""Where a bare axis name is looked up: the metadata plugin's generation parameters."""
PREFERENCE = (
    "prompt",
    "model",
    "sampler",
    "sampler_parameters.scheduler",
    "cfg_scale",
    "steps",
    "sampler_parameters.denoise",
    "extra.Size",
    "negative_prompt",
    "seed",
)
"""The parameters ``--auto-axes`` looks at, in the order they become axes."""
NONE = "(none)"

_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_SIZE = re.compile(r"(\d+)\s*[x×]\s*(\d+)")
_WORD = re.compile(r"[^\s,()\[\]{}:|]+")

SortKey = tuple[Any, ...]


def selector_of(name: str) -> Selector:
    """``steps`` (or any name of :data:`PREFERENCE`) -> ``metadata.parameters.steps``; a full
    selector as it is."""
    return Selector.parse(f"{PARAMETERS}.{name}" if "." not in name or name in PREFERENCE else name)


def normal(value: Any) -> tuple[SortKey, str]:
    """(sort key, label) of an axis value: equal keys are one column."""
    if value is MISSING or value is None or value == "":
        return (3,), NONE
    if isinstance(value, bool):
        value = "true" if value else "false"
    text = (value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)).strip()
    if _NUMBER.fullmatch(text):
        try:
            number = Decimal(text)
        except InvalidOperation:
            number = None
        if number is not None and number.is_finite():
            if number != number.to_integral_value():
                number = Decimal(f"{number:.6g}")
            label = format(number.normalize(), "f") if number == number.to_integral_value() else f"{number:f}"
            return (0, number), label.rstrip("0").rstrip(".") if "." in label else label
    if found := _SIZE.fullmatch(text):
        return (1, int(found[1]), int(found[2])), f"{found[1]}x{found[2]}"
    return (2, text.casefold(), text), text


def is_numeric(keys: Sequence[SortKey]) -> bool:
    return all(key[0] in (0, 3) for key in keys) and any(key[0] == 0 for key in keys)


def prompt_labels(prompts: Sequence[str]) -> list[str]:
    """Each prompt labelled by its words that are not in every prompt, in their order."""
    words = [_WORD.findall(prompt or "") for prompt in prompts]
    counts = [Counter(w.casefold() for w in found) for found in words]
    common = counts[0].copy() if counts else Counter()
    for other in counts[1:]:
        common &= other
    labels = []
    for found in words:
        left, own = common.copy(), []
        for word in found:
            if left[word.casefold()] > 0:
                left[word.casefold()] -= 1
            else:
                own.append(word)
        labels.append(" ".join(own) or "(base)")
    return labels


@dataclass(frozen=True)
class Axis:
    """One axis: its selector, and its values in order as (sort key, label)."""

    name: str
    selector: Selector
    values: tuple[tuple[SortKey, str], ...]

    def position(self, key: SortKey) -> int:
        return [k for k, _ in self.values].index(key)


def axis(name: str, values: Sequence[Any]) -> tuple[Axis, list[SortKey]]:
    """The axis ``name`` over these images' values: (axis, each image's key). A prompt axis (its
    values long texts) is labelled by what differs."""
    selector = selector_of(name)
    normals = [normal(v) for v in values]
    keys = [key for key, _ in normals]
    labels: dict[SortKey, str] = {}
    for key, label in normals:
        labels.setdefault(key, label)
    ordered = sorted(labels, key=_order)
    if selector.fields[-1:] in (("prompt",), ("negative_prompt",)) or any(len(lb) > 40 for lb in labels.values()):
        shown = prompt_labels([labels[k] if k != (3,) else "" for k in ordered])
        labels = {k: (NONE if k == (3,) else s) for k, s in zip(ordered, shown, strict=True)}
    return Axis(name, selector, tuple((k, labels[k]) for k in ordered)), keys


def _order(key: SortKey) -> tuple[Any, ...]:
    kind = key[0]
    if kind == 0:
        return (0, key[1], "")
    if kind == 1:
        return (1, Decimal(key[1]), str(key[2]))
    if kind == 2:
        return (2, Decimal(0), key[1] + "\0" + key[2])
    return (3, Decimal(0), "")


@dataclass(frozen=True)
class Axes:
    x: str
    y: str | None
    z: str | None
    within: tuple[str, ...]
    """Parameters that vary inside a cell (they order its images and label them)."""


def detect_axes(rows: Sequence[Mapping[str, Any]], max_values: int = 24) -> Axes:
    """Axes for images whose parameters are ``rows`` (name in :data:`PREFERENCE` -> value).
    Raises ConfigError when nothing varies or the X by Y cells would be mostly empty."""
    n = len(rows)
    varying: list[tuple[str, int]] = []
    seen_partitions: set[tuple[int, ...]] = set()
    for name in PREFERENCE:
        keys = [normal(row.get(name, MISSING))[0] for row in rows]
        distinct = len(set(keys))
        if distinct < 2:
            continue
        index: dict[SortKey, int] = {}
        partition = tuple(index.setdefault(k, len(index)) for k in keys)
        if partition in seen_partitions:  # one to one with an axis taken already (model and its hash)
            continue
        seen_partitions.add(partition)
        varying.append((name, distinct))
    if not varying:
        raise ConfigError("--auto-axes: no generation parameter varies across these images; name --x and --y")
    axes = [name for name, distinct in varying if distinct < n and distinct <= max_values and name != "seed"]
    within = [name for name, distinct in varying if name not in axes]
    if not axes:
        axes, within = [varying[0][0]], [name for name, _ in varying[1:]]
    numeric = [name for name in axes if is_numeric([normal(row.get(name, MISSING))[0] for row in rows])]
    x = numeric[0] if numeric else axes[0]
    rest = [name for name in axes if name != x]
    y = rest[0] if rest else None
    z = rest[1] if len(rest) > 1 else None
    within = rest[2:] + within
    if y is not None:
        filled = {(normal(row.get(x, MISSING))[0], normal(row.get(y, MISSING))[0]) for row in rows}
        nx = len({normal(row.get(x, MISSING))[0] for row in rows})
        ny = len({normal(row.get(y, MISSING))[0] for row in rows})
        if len(filled) < 0.5 * nx * ny:
            what = ", ".join(f"{name} ({distinct} values)" for name, distinct in varying)
            raise ConfigError(
                f"--auto-axes: these images do not make a comparison grid (only {len(filled)} of the "
                f"{nx} x {ny} cells of {x} by {y} would hold an image); what varies: {what}; "
                "name the axes with --x and --y"
            )
    return Axes(x, y, z, tuple(within))


def sub_grid(count: int) -> tuple[int, int]:
    """(columns, rows) of the images of one cell: side by side up to 4, else as square as can be."""
    if count <= 4:
        return max(count, 1), 1
    cols = math.ceil(math.sqrt(count))
    return cols, math.ceil(count / cols)
