"""What an export is asked to do (:class:`ExportOptions`) and what it plans (:class:`Plan`: each
image as the dataset should hold it, a :class:`Wish`, sorted into what to add, move, keep,
remove), shared by the planning and applying (:mod:`.dataset`) and the tables (:mod:`.tables`)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..images import DEFAULT_MAX_PIXELS
from .items import Item
from .manifest import Filtered

LAYOUTS = ("classes", "splits", "imagefolder", "kohya")
SPLIT_LAYOUTS = ("splits", "imagefolder")
UNSURE = "_unsure"


@dataclass(frozen=True)
class ExportOptions:
    to: Path
    layout: str = "splits"
    label: str | None = None
    """The selector of each image's class (``classify.animals``, ``metadata.parameters.sampler``)."""
    caption: str | None = None
    caption_ext: str = ".txt"
    min_confidence: float | None = None
    below: str = "skip"
    """Images under ``min_confidence``: ``skip``, or ``folder`` (the ``_unsure`` class)."""
    where: tuple[str, ...] = ()
    max_per_class: int | None = None
    repeats: int = 1
    concept: str = "images"
    """kohya's folder name when there is no class."""
    ratios: str = "70/15/15"
    seed: int = 0
    near_duplicates: float = 0.95
    """Cosine similarity from which two images are one duplicate group (0: identical files only)."""
    embeddings: str | None = None
    """The embedding model whose stored vectors find near-duplicates (default: any one stored)."""
    link: str = "auto"
    resize: int | None = None
    strip_metadata: bool = False
    zip: Path | None = None
    csv_only: bool = False
    """Write only ``path,top1,confidence`` of the source images to ``to`` (a file): no dataset."""
    dry_run: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    """Images larger than this are refused by --resize/--strip-metadata (the max_image_pixels setting)."""

    def check(self) -> None:
        if self.layout not in LAYOUTS:
            raise ConfigError(f"--layout {self.layout!r}: one of {', '.join(LAYOUTS)}")
        if self.layout in ("classes", "splits") and self.label is None:
            raise ConfigError(f"--layout {self.layout} sorts images into class folders: name the class with --class")
        if self.below not in ("skip", "folder"):
            raise ConfigError("--below is skip or folder")
        if self.repeats < 1 or (self.max_per_class is not None and self.max_per_class < 1):
            raise ConfigError("--repeats and --max-per-class are at least 1")
        if not self.caption_ext.startswith(".") or "/" in self.caption_ext:
            raise ConfigError(f"--caption-ext {self.caption_ext!r}: an extension such as .txt or .caption")

    def record(self) -> dict[str, Any]:
        """The options as JSON values (the manifest's and ``metadata.json``'s record of them)."""
        return {k: str(v) if isinstance(v, Path) else v for k, v in self.__dict__.items()}

    def recipe(self) -> str:
        parts = ([f"resize={self.resize}"] if self.resize else []) + (["strip"] if self.strip_metadata else [])
        return ",".join(parts)


@dataclass(slots=True)
class Wish:
    """One image as the dataset should hold it."""

    item: Item
    path: str
    split: str
    caption_path: str | None


@dataclass
class Plan:
    keep: list[Wish] = field(default_factory=list)
    add: list[Wish] = field(default_factory=list)
    move: list[tuple[str, Wish]] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)
    captions: list[Wish] = field(default_factory=list)
    """Kept or moved images whose caption changed."""
    wishes: list[Wish] = field(default_factory=list)
    drift: Any = None
    skipped: int = 0
    duplicates: int = 0
    """Images left out because the same content is exported already (copies in several places)."""
    left_out: set[str] = field(default_factory=set)
    """Paths not exported after all: the source vanished or could not be decoded."""
    filtered: dict[str, Filtered] = field(default_factory=dict)
    """The images the filters left out (``skipped`` of them), by source path, for the manifest."""
    reading: str | None = None
    """:func:`reading_digest` of the export (kept in the manifest)."""

    @property
    def exported(self) -> list[Wish]:
        return [w for w in self.wishes if w.path not in self.left_out]

    def lines(self) -> list[str]:
        out = [
            f"plan: {len(self.wishes):,} images: {len(self.add):,} to add, {len(self.move):,} to move, "
            f"{len(self.remove):,} to remove, {len(self.keep):,} up to date, {len(self.captions):,} captions to "
            f"rewrite; {self.skipped:,} left out by --where/--min-confidence/--max-per-class, "
            f"{self.duplicates:,} copies of content exported once"
        ]
        out += [f"  add {w.item.path} -> {w.path}" for w in self.add[:20]]
        out += [f"  move {old} -> {w.path}" for old, w in self.move[:20]]
        out += [f"  remove {path}" for path in self.remove[:20]]
        return out


@dataclass
class ExportResult:
    plan: Plan
    out: Path
    methods: Counter[str] = field(default_factory=Counter)
    zip_path: Path | None = None
