"""Selectors: the one way to name a stored result, ``plugin.mode[@model][.field...]``.

Examples: ``metadata.prompt``, ``metadata.parameters.seed``, ``llm.tags.tags.0``,
``clip.best@ViT-L-14/openai``, ``llm.tags@anthropic:claude-haiku-4-5.tags``.

1. Parsing. ``plugin`` and ``mode`` are the first two dot-separated names (lowercase letters,
   digits, ``_``, ``-``). Without ``@``, the rest is the field path. An ``@`` comes right after
   the mode and is followed by a model, then optionally ``.`` and a field path. Model ids contain
   dots, so that split is made against the stored results: the longest text after ``@`` that
   ends at a ``.`` (or at the end) and names a stored model of the mode wins; what follows its
   dot is the field path. A text names the stored model id equal to it; failing that, the stored
   ids that start with it and go on with a character other than a letter, digit, ``-``, ``_`` or
   ``.`` (``@openai:gpt-4.1`` names ``openai:gpt-4.1#3fa2c1d0e9ab``, not ``openai:gpt-4.1-mini#…``).
2. Which model. A manual result (model id ``manual``: ``analyzer label set``) wins over every
   model's. Otherwise, when several models qualify (no ``@``, or an ``@`` naming several): the first of
   ``preferred`` (the models the plugin is configured with now, in its order) that has a result;
   else the result with the newest ``created_at``; on a tie, the model id that sorts first.
3. Field path. Each segment is a key into an object or a non-negative index into a list. A
   missing key or index, or a segment applied to anything else, means the selector has no value
   (not an error); so does a mode or model without a result.
4. Text (``to_text``). A string as it is; null -> ""; booleans -> ``true``/``false``; numbers as
   JSON (``7``, ``7.5``); a list -> its items converted, empty ones dropped, joined with ", ";
   an object -> compact JSON, keys in stored order; no value -> "".
5. Digests. ``value_digest``: the first 16 hex digits of the SHA-256 of the value's canonical
   JSON (sorted keys, no spaces, UTF-8); no value hashes the empty string, so it differs from
   null. ``context_digest``: the same over each selector's text and its value's digest,
   whatever the order of the mapping.
6. Templates. A placeholder is ``{plugin.mode...}`` with no whitespace or brace inside;
   ``{file_name}`` is the image's file name; all other braces (a JSON example, say) are left
   alone. A placeholder with no value becomes "".
"""

from __future__ import annotations

import enum
import functools
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from .errors import ConfigError

__all__ = [
    "MANUAL",
    "MISSING",
    "Analysis",
    "Resolved",
    "Selector",
    "SelectorError",
    "combine_digests",
    "context_digest",
    "render_template",
    "template_selectors",
    "to_text",
    "value_digest",
]

_NAME = re.compile(r"[a-z0-9_-]+")
MANUAL = "manual"
"""The model id of a result a person gave (a corrected label): read before any model's."""
_FORM = "expected plugin.mode[@model][.field...], e.g. 'metadata.prompt' or 'llm.tags@openai:gpt-4.1-mini.tags'"
_PLACEHOLDER = re.compile(r"\{(?:(file_name)|([a-z0-9_-]+\.[a-z0-9_-]+[^\s{}]*))\}")
_ID_CHAR = re.compile(r"[A-Za-z0-9_.-]")
"""A stored model id that goes on with one of these after an ``@`` prefix is a different model."""


class SelectorError(ConfigError, ValueError):
    """A selector that cannot be parsed; the message says what is wrong and shows the form."""

    def __init__(self, text: str, problem: str) -> None:
        super().__init__(f"invalid selector {text!r}: {problem}; {_FORM}")
        self.text = text


class _Missing(enum.Enum):
    MISSING = "MISSING"

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Literal[_Missing.MISSING] = _Missing.MISSING
"""The value of a selector that names nothing; distinct from JSON null (``None``)."""

Analysis = Mapping[str, Mapping[str, Mapping[str, Any]]]
"""A sidecar's ``analysis`` section: mode -> model id -> stored entry."""


@dataclass(frozen=True)
class Resolved:
    model: str
    value: Any
    entry: Mapping[str, Any]
    """The whole stored entry (``result``, ``created_at``, ``parameters``...), as stored."""


@dataclass(frozen=True)
class Selector:
    text: str
    plugin: str
    mode: str
    after_at: str | None = None
    """The raw text after ``@`` (a model, maybe then ``.field...``), split in ``resolve``."""
    fields: tuple[str, ...] = ()
    """The field path when there is no ``@``."""

    @staticmethod
    def parse(text: str) -> Selector:
        return _parse(text)

    def __str__(self) -> str:
        return self.text

    def resolve(self, analysis: Analysis, preferred: Sequence[str] = ()) -> Resolved | None:
        """The chosen result and the value at the field path, or None when there is none."""
        stored = analysis.get(self.mode)
        if not isinstance(stored, Mapping):
            return None
        by_model = {m: e for m, e in stored.items() if (type(e) is dict or isinstance(e, Mapping)) and "result" in e}
        if self.after_at is None:
            return _resolved(by_model, list(by_model), preferred, self.fields)
        after = self.after_at
        for end in [len(after), *reversed([i for i, c in enumerate(after) if c == "."])]:
            named, rest = after[:end], after[end + 1 :]
            fields = tuple(rest.split(".")) if rest else ()
            if "" in fields:
                continue
            models = [named] if named in by_model else [m for m in by_model if _extends(m, named)]
            if models:
                return _resolved(by_model, models, preferred, fields)
        return None


@functools.lru_cache(maxsize=1024)
def _parse(text: str) -> Selector:
    if not text:
        raise SelectorError(text, "it is empty")
    head, at, after = text.partition("@")
    plugin, *names = head.split(".")
    if not plugin:
        raise SelectorError(text, "the plugin name is missing")
    if not names or not names[0]:
        raise SelectorError(text, "the mode is missing")
    mode, fields = names[0], tuple(names[1:])
    for kind, name in (("plugin", plugin), ("mode", mode)):
        if not _NAME.fullmatch(name):
            raise SelectorError(text, f"{kind} {name!r} may hold only lowercase letters, digits, '_' and '-'")
    if "" in fields:
        raise SelectorError(text, "a field name is empty")
    if not at:
        return Selector(text, plugin, mode, None, fields)
    if fields:
        raise SelectorError(text, "'@model' must come right after the mode")
    if not after or after.startswith("."):
        raise SelectorError(text, "no model after '@'")
    if after.endswith("."):
        raise SelectorError(text, "a field name is empty")
    return Selector(text, plugin, mode, after, ())


def _extends(model: str, named: str) -> bool:
    return model.startswith(named) and not _ID_CHAR.match(model, len(named))


def _created(entry: Mapping[str, Any]) -> float:
    try:
        when = datetime.fromisoformat(entry["created_at"])
    except (KeyError, TypeError, ValueError):
        return float("-inf")
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def _newest(by_model: Mapping[str, Mapping[str, Any]], models: list[str]) -> str:
    """The model whose result was made last (ties: the first by name). Times as the analyzer writes
    them (``2026-11-23T17:20:38.518Z``, UTC) compare as text; others are parsed."""
    latest: str | None = None
    chosen = models[0]
    for model in models:  # one pass, no generators: run for every image an export reads
        stamp = by_model[model].get("created_at")
        if not (type(stamp) is str and len(stamp) == 24 and stamp[-1] == "Z" and stamp[10] == "T"):
            return min(models, key=lambda m: (-_created(by_model[m]), m))
        if latest is None or stamp > latest or (stamp == latest and model < chosen):
            latest, chosen = stamp, model
    return chosen


def _resolved(
    by_model: Mapping[str, Mapping[str, Any]], models: list[str], preferred: Sequence[str], fields: tuple[str, ...]
) -> Resolved | None:
    if not models:
        return None
    chosen = MANUAL if MANUAL in models else None
    if chosen is None:
        for model in preferred:  # a plain loop, not a generator: run for every image an export reads
            if model in models:
                chosen = model
                break
        else:
            chosen = models[0] if len(models) == 1 else _newest(by_model, models)
    entry = by_model[chosen]
    value = entry["result"]
    for name in fields:
        if isinstance(value, Mapping) and name in value:
            value = value[name]
        elif isinstance(value, list) and name.isascii() and name.isdigit() and int(name) < len(value):
            value = value[int(name)]
        else:
            return None
    return Resolved(chosen, value, entry)


def to_text(value: Any) -> str:
    """A value as text for templates and wildcard lines (rule 4)."""
    if isinstance(value, str):
        return value
    if value is None or value is MISSING:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return ", ".join(text for text in map(to_text, value) if text)
    if isinstance(value, Mapping):
        return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    return str(value)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def value_digest(value: Any) -> str:
    """16 hex digits identifying a value; ``MISSING`` has its own, distinct from ``None``."""
    return _sha("" if value is MISSING else _canonical(value))


def context_digest(values: Mapping[str, Any]) -> str:
    """16 hex digits identifying selector texts with their values, independent of order."""
    return combine_digests({str(text): value_digest(value) for text, value in values.items()})


def combine_digests(digests: Mapping[str, str]) -> str:
    """:func:`context_digest` from the values' digests (what the index keeps) instead of the values."""
    return _sha(_canonical(sorted([text, digest] for text, digest in digests.items())))


def template_selectors(text: str) -> list[Selector]:
    """The selectors of a template's placeholders, in order, without duplicates.

    Raises ``SelectorError`` for a placeholder shaped like a selector that does not parse.
    """
    found = dict.fromkeys(match[2] for match in _PLACEHOLDER.finditer(text) if match[2])
    return [Selector.parse(selector) for selector in found]


def render_template(text: str, values: Mapping[str, str], file_name: str) -> str:
    """Fill ``{file_name}`` and each ``{selector}`` (from ``values``, '' when absent) in one pass."""
    texts, keys = _pieces(text)
    out = [texts[0]]
    for key, after in zip(keys, texts[1:], strict=True):
        out += (file_name if key is None else values.get(key, ""), after)
    return "".join(out)


@functools.lru_cache(maxsize=256)
def _pieces(text: str) -> tuple[tuple[str, ...], tuple[str | None, ...]]:
    """A template cut at its placeholders, once (an export fills one template 100,000 times): the
    texts around them (one more than they are), and each placeholder's selector text, or None for
    ``{file_name}``."""
    texts: list[str] = []
    keys: list[str | None] = []
    at = 0
    for match in _PLACEHOLDER.finditer(text):
        texts.append(text[at : match.start()])
        keys.append(None if match[1] else match[2])
        at = match.end()
    texts.append(text[at:])
    return tuple(texts), tuple(keys)
