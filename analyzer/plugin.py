"""The plugin contract: everything a plugin author needs, in one file.

A plugin is a subclass of :class:`AnalyzerPlugin` registered in the ``analyzer.plugins``
entry-point group (the built-in ``metadata``, ``clip`` and ``llm`` plugins are registered
the same way, in this project's ``pyproject.toml``)::

    [project.entry-points."analyzer.plugins"]
    myplugin = "my_package:MyPlugin"

A plugin implements two methods: :meth:`~AnalyzerPlugin.model_ids` (what a mode is computed
with) and :meth:`~AnalyzerPlugin.analyze`. The engine calls, in order:

1. ``MyPlugin(options)`` with the validated :attr:`AnalyzerPlugin.Options` for the plugin;
2. ``await plugin.setup()`` once, lazily, only when some image actually misses one of its modes;
3. ``await plugin.analyze(mode, model_id, images)`` many times, for batches of at most
   ``options.batch_size`` images, with at most ``options.concurrency`` calls in flight. Several
   modes asked of the same batch are requested one after another, so a plugin may cache work
   shared between modes (see :class:`SharedWork`);
4. ``await plugin.close()`` once when the engine shuts down.

``analyze`` returns one :class:`Result` or :class:`Failure` per image, in order. Raising an
exception fails the whole batch with that error; it never stops the run. :meth:`ImageRef.read`
opens an image and turns every way it can be broken into a :class:`Failure`.

A mode that reads other results (an LLM template quoting ``{metadata.prompt}``) names them in
:meth:`~AnalyzerPlugin.reads` with selectors (:mod:`analyzer.selector`); the engine computes
them first for the same image and hands their values over in :attr:`ImageRef.context`.

Optional, for one consumer each: :class:`Summarizes` (lines for the end-of-run summary).
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .errors import ErrorType, ImageError, error_type
from .images import DEFAULT_MAX_PIXELS, open_image

if TYPE_CHECKING:
    from PIL import Image

    from .embeddings import EmbeddingStore

__all__ = [
    "AnalyzerPlugin",
    "Failure",
    "ImageRef",
    "Outcome",
    "PluginOptions",
    "Result",
    "SharedWork",
    "Summarizes",
]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ImageRef:
    """One image as the engine hands it to a plugin."""

    path: Path
    """Absolute path of the image file."""
    rel_path: str
    """Path relative to the scanned root, with ``/`` separators."""
    hash: str
    """Content hash, ``"<algorithm>:<hex>"``; identical content gives the same hash."""
    size: int
    mtime_ns: int
    context: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)
    """The values of the selectors :meth:`AnalyzerPlugin.reads` names, for this image, by selector
    text (``{"metadata.prompt": "a cat"}``); a selector with no value maps to ``selector.MISSING``."""
    max_pixels: int = DEFAULT_MAX_PIXELS
    """Images with more pixels are refused by :meth:`open` (the ``max_image_pixels`` setting)."""
    embeddings: EmbeddingStore | None = field(default=None, compare=False, hash=False)
    """The image embeddings of the image's root, per model and content hash (kept in its state
    folder): a plugin that embeds images looks there first and keeps what it computes."""

    @contextmanager
    def open(self) -> Iterator[Image.Image]:
        """The decoded image (blocking). Raises :class:`~analyzer.errors.ImageError` or ``OSError``."""
        with open_image(self.path, max_pixels=self.max_pixels) as image:
            yield image

    def read(self, use: Callable[[Image.Image], T]) -> T | Failure:
        """``use(image)`` on the decoded image, or the :class:`Failure` that says why it cannot be read.

        A broken image (empty, truncated, corrupt, too large) is a permanent failure; a file that
        cannot be read now (vanished, permission denied, I/O error) a retryable one.
        """
        try:
            with self.open() as image:
                return use(image)
        except ImageError as exc:
            return Failure.from_exception(exc, retryable=False)
        except OSError as exc:
            return Failure.from_exception(exc, retryable=True)


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
    """A failed analysis of one image in one mode. Never stored as a result.

    ``type`` is one of :class:`~analyzer.errors.ErrorType` (any other text is recorded as
    ``PluginError``, with the text kept at the start of the message).
    """

    type: str
    message: str
    retryable: bool = False
    """True when trying again later may succeed (network, rate limits, a file being written)."""
    attempts: int = 1

    def __post_init__(self) -> None:
        if self.type not in ErrorType.__members__.values():
            self.message = f"{self.type}: {self.message}"
            self.type = ErrorType.PLUGIN_ERROR
        self.type = str(self.type)

    @classmethod
    def from_exception(cls, exc: BaseException, *, retryable: bool | None = None, attempts: int = 1) -> Failure:
        if retryable is None:
            retryable = isinstance(exc, (TimeoutError, ConnectionError))
        kind = error_type(exc)
        message = str(exc) or exc.__class__.__name__
        if kind == ErrorType.PLUGIN_ERROR:
            message = f"{type(exc).__name__}: {message}"
        return cls(type=kind, message=message, retryable=retryable, attempts=attempts)


Outcome = Result | Failure


class PluginOptions(BaseModel):
    """Options every plugin has. Subclass it to add your own; unknown keys are an error."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)

    enabled: bool = True
    """Use the plugin when no plugins are named (``--plugins`` or the ``plugins`` setting)."""
    modes: list[str] | None = None
    """Modes to run (comma-separated); unset: the plugin's default modes."""
    batch_size: int | None = Field(default=None, ge=1, le=4096)
    """Images per ``analyze`` call; unset: the plugin's own choice."""
    concurrency: int | None = Field(default=None, ge=1, le=1024)
    """``analyze`` calls in flight at once; unset: the plugin's own choice."""

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
    costly: ClassVar[bool] = False
    """Its results cost money (or hours): when what a result read changes, the result is only
    marked stale, and redone with ``--refresh-stale``; other plugins' stale results are redone."""
    requires: ClassVar[tuple[str, ...]] = ()
    """Importable modules the plugin needs at setup; checked before it is used."""
    install_hint: ClassVar[str] = ""
    """What to install when a module in :attr:`requires` is missing."""
    batch_size_hint: ClassVar[int] = 1
    concurrency_hint: ClassVar[int] = 1
    Options: ClassVar[type[PluginOptions]] = PluginOptions

    def __init__(self, options: PluginOptions | None = None) -> None:
        self.options = options if options is not None else self.Options()

    # -- what the engine asks ----------------------------------------------------------
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
    def model_ids(self, mode: str) -> tuple[str, ...]:
        """The ids of the models (and settings) ``mode`` is computed with: usually one.

        Results are stored per mode and per model id: a different id makes the result missing
        again, so include whatever changes the output. A plugin answering one mode with several
        models (two LLM providers, say) returns them all; :meth:`analyze` is called per model.
        """

    def keeps(self, mode: str, model_id: str) -> bool:
        """Whether a stored result of ``mode`` under ``model_id`` belongs to the current settings
        (``--clean`` removes the others): by default, one of :meth:`model_ids`. A plugin that stores
        results derived from those (a refinement of the whole collection, say) keeps them too."""
        return model_id in self.model_ids(mode)

    @abstractmethod
    async def analyze(self, mode: str, model_id: str, images: Sequence[ImageRef]) -> Sequence[Outcome]:
        """Analyse a batch of images in one mode with one of :meth:`model_ids`; one outcome per image, in order.

        Blocking work (decoding, model inference) must not run on the event loop: use
        ``asyncio.to_thread`` or an executor.
        """

    def reads(self, mode: str) -> tuple[str, ...]:
        """Selectors of other plugins' results this mode reads (``("metadata.prompt",)``); default none.

        The engine computes them first, for the same image in the same run, passes their values in
        :attr:`ImageRef.context`, records a digest of them with the result, and marks the result
        stale when they change.
        """
        return ()

    async def setup(self) -> None:  # noqa: B027 - optional hook
        """Load models, open clients. Raise with a message saying what to install or fix."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release what :meth:`setup` acquired."""

    def manual_result(self, mode: str, text: str) -> Any:
        """The result a person's ``text`` stands for (``analyzer label set``): by default the text
        itself. Raise :class:`~analyzer.errors.ConfigError` for a text the mode cannot take."""
        return text

    def reading_rules(self) -> str:
        """A digest of the options that shape :meth:`wildcard_entries` (thresholds, top-k): when it
        changes, the plugin's sidecars are read again for the wildcard files; nothing is re-analysed."""
        return ""

    def wildcard_entries(self, mode: str, value: Any) -> Iterable[str]:
        """Text entries a result contributes to the ``<name>_<mode>`` wildcard file."""
        if isinstance(value, str):
            yield value
        elif isinstance(value, list):
            yield from (item for item in value if isinstance(item, str))


@runtime_checkable
class Summarizes(Protocol):
    """A plugin with something to add to the end-of-run summary (the llm plugin's token accounting)."""

    def summary_lines(self) -> list[str]:
        """Lines for the summary, called once after the plugin is closed."""
        ...


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

    def get(self, key: K) -> V | None:
        """The cached value for ``key``, or None. Thread-safe."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        return None

    def put(self, key: K, value: V) -> None:
        """Remember ``value`` for ``key``, forgetting the least recently used beyond the capacity."""
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)
