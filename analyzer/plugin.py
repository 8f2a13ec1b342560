"""The plugin contract: everything a plugin author needs, in one file.

A plugin is a subclass of :class:`AnalyzerPlugin` registered in the ``analyzer.plugins``
entry-point group (the built-in ``metadata``, ``clip`` and ``llm`` plugins are registered
the same way, in this project's ``pyproject.toml``)::

    [project.entry-points."analyzer.plugins"]
    myplugin = "my_package:MyPlugin"

The scheduler calls, in order:

1. ``MyPlugin(options)`` with the validated :attr:`AnalyzerPlugin.Options` for the plugin;
2. ``await plugin.setup()`` once, lazily, only when some image actually misses one of its modes;
3. ``await plugin.analyze(mode, images)`` many times, for batches of at most
   ``options.batch_size`` images, with at most ``options.concurrency`` calls in flight.
   Several modes asked of the same batch are requested one after another, so a plugin may
   cache work shared between modes (see :class:`SharedWork`);
4. ``await plugin.close()`` once at the end of the run.

``analyze`` returns one :class:`Result` or :class:`Failure` per image, in order. Raising an
exception fails the whole batch with that error; it never stops the run.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "AnalyzerPlugin",
    "Failure",
    "ImageRef",
    "Outcome",
    "PluginOptions",
    "Result",
    "SharedWork",
]


@dataclass(frozen=True, slots=True)
class ImageRef:
    """One image as the scheduler hands it to a plugin."""

    path: Path
    """Absolute path of the image file."""
    rel_path: str
    """Path relative to the scanned root, with ``/`` separators."""
    hash: str
    """Content hash, ``"<algorithm>:<hex>"``; identical content gives the same hash."""
    size: int
    mtime_ns: int
    context: dict[str, dict[str, Any]] = field(default_factory=dict, compare=False, hash=False)
    """Existing results of other plugins for this image: ``{plugin: {mode: result}}``."""


@dataclass(slots=True)
class Result:
    """A successful analysis of one image in one mode."""

    value: Any
    """JSON-serialisable result: a string for caption/prompt-like modes, or a dict/list."""
    parameters: dict[str, Any] = field(default_factory=dict)
    """The settings that shaped this result (recorded in the sidecar)."""
    usage: dict[str, Any] | None = None
    """Optional accounting, e.g. ``{"input_tokens": 12, "output_tokens": 40}``."""


@dataclass(slots=True)
class Failure:
    """A failed analysis of one image in one mode. Never stored as a result."""

    type: str
    message: str
    retryable: bool = False
    """True when trying again later may succeed (network, rate limits, a file being written)."""
    attempts: int = 1

    @classmethod
    def from_exception(cls, exc: BaseException, *, retryable: bool | None = None, attempts: int = 1) -> Failure:
        if retryable is None:
            retryable = isinstance(exc, (TimeoutError, ConnectionError))
        message = str(exc) or exc.__class__.__name__
        return cls(type=type(exc).__name__, message=message, retryable=retryable, attempts=attempts)


Outcome = Result | Failure


class PluginOptions(BaseModel):
    """Options every plugin has. Subclass it to add your own; unknown keys are an error."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    enabled: bool = True
    modes: list[str] | None = None
    """Modes to run; ``None`` means the plugin's :attr:`AnalyzerPlugin.default_modes`."""
    batch_size: int | None = Field(default=None, ge=1, le=4096)
    """Images per ``analyze`` call; ``None`` means the plugin's hint."""
    concurrency: int | None = Field(default=None, ge=1, le=1024)
    """``analyze`` calls in flight at once; ``None`` means the plugin's hint."""

    @field_validator("modes", mode="before")
    @classmethod
    def _split_modes(cls, value: Any) -> Any:
        # Environment variables arrive as strings: "caption,best" is a list of two modes.
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value


class AnalyzerPlugin(ABC):
    """Base class of every analyzer plugin."""

    name: ClassVar[str]
    """Unique name; used in sidecar names (``cat.png.<name>.json``) and wildcard files."""
    version: ClassVar[str] = "0"
    modes: tuple[str, ...] = ()
    """Every mode the plugin offers (a plugin may set its own per instance, from its options)."""
    default_modes: ClassVar[tuple[str, ...] | None] = None
    """Modes run when the user names none; ``None`` means all of :attr:`modes`."""
    wildcard_modes: tuple[str, ...] = ()
    """Modes whose results are text worth a wildcard file (``<name>_<mode>.txt``)."""
    requires: ClassVar[tuple[str, ...]] = ()
    """Importable modules the plugin needs at setup; checked before it is used."""
    install_hint: ClassVar[str] = ""
    """What to install when a module in :attr:`requires` is missing."""
    batch_size_hint: ClassVar[int] = 1
    concurrency_hint: ClassVar[int] = 1
    Options: ClassVar[type[PluginOptions]] = PluginOptions

    def __init__(self, options: PluginOptions | None = None) -> None:
        self.options = options if options is not None else self.Options()

    # -- what the scheduler asks -------------------------------------------------------
    def enabled_modes(self) -> tuple[str, ...]:
        chosen = self.options.modes
        if chosen is None:
            return self.default_modes if self.default_modes is not None else self.modes
        return tuple(chosen)

    @property
    def batch_size(self) -> int:
        return self.options.batch_size or self.batch_size_hint

    @property
    def concurrency(self) -> int:
        return self.options.concurrency or self.concurrency_hint

    @abstractmethod
    def model_id(self, mode: str) -> str:
        """The id of the model (and settings) this plugin will use for ``mode``.

        Results are stored per mode and per model id: a different id makes the result
        missing again, so include whatever changes the output.
        """

    def model_ids(self, mode: str) -> tuple[str, ...]:
        """Every model id ``mode`` is computed with; one per configured model (default: one).

        A plugin answering one mode with several models (two LLM providers, say) returns them
        all; the scheduler then calls :meth:`analyze_with` once per model.
        """
        return (self.model_id(mode),)

    async def setup(self) -> None:  # noqa: B027 - optional hook
        """Load models, open clients. Raise with a message saying what to install or fix."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release what :meth:`setup` acquired."""

    @abstractmethod
    async def analyze(self, mode: str, images: Sequence[ImageRef]) -> Sequence[Outcome]:
        """Analyse a batch of images in one mode; return one outcome per image, in order.

        Blocking work (decoding, model inference) must not run on the event loop: use
        ``asyncio.to_thread`` or an executor.
        """

    async def analyze_with(self, mode: str, model_id: str, images: Sequence[ImageRef]) -> Sequence[Outcome]:
        """Analyse with one of :meth:`model_ids`; plugins with one model per mode need not override it."""
        return await self.analyze(mode, images)

    def context_plugins(self) -> tuple[str, ...]:
        """Plugins whose existing results this plugin reads from :attr:`ImageRef.context`."""
        return ()

    def summary_lines(self) -> list[str]:
        """Lines for the end-of-run summary (accounting, for instance)."""
        return []

    def wildcard_entries(self, mode: str, value: Any) -> Iterable[str]:
        """Text entries a result contributes to the ``<name>_<mode>`` wildcard file."""
        if isinstance(value, str):
            yield value
        elif isinstance(value, list):
            yield from (item for item in value if isinstance(item, str))


K = TypeVar("K")
V = TypeVar("V")


class SharedWork(Generic[K, V]):
    """A small LRU cache for work shared between modes of the same image.

    The scheduler asks the modes of one batch one after another, so a cache holding a few
    batches' worth of entries lets, say, a caption be computed once for every mode.
    """

    def __init__(self, capacity: int = 256) -> None:
        self.capacity = capacity
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get_or_compute(self, key: K, compute: Callable[[], V]) -> V:
        """The cached value for ``key``, computing it (outside the lock) when absent. Thread-safe."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = compute()
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._items)
