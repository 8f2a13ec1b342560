"""``analyzer grid``: a labeled contact sheet of the images under some folders.

Each image's label, highest source first (seeds 000/001): a CSV row for it (``--csv``, matched by
relative path, else by file name; ``--label-columns`` picks and orders the columns), else the
``--label`` template over its stored results (``"{metadata.parameters.seed} {classify.animals}"``,
read from the index, no model runs), else its file name. Thumbnails come from the cache keyed by
content hash (:mod:`analyzer.grid.thumbs`); the sheet is drawn and written a row at a time
(:mod:`analyzer.grid.compose`), and cut into pages past the format's size or the pixel budget.
An image that cannot be read is a grey cell whose label is the error.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import AnalyzerError, ConfigError, FileChangedError
from ..hashing import hash_file
from ..selector import MISSING, render_template, template_selectors
from ..settings import Settings
from ..store import Store, preferred_models, resolve_targets
from ..survey import Seen, surveyed
from .compose import format_of, page_names, write_page
from .layout import Sheet, Spec, contact_sheet, with_title
from .text import Labeller, clean_label
from .thumbs import ThumbCache, bucket, load_tile

if TYPE_CHECKING:
    from PIL import Image

    from ..plugin import AnalyzerPlugin

log = logging.getLogger(__name__)

BACKGROUND = (255, 255, 255)
PLACEHOLDER = (200, 200, 200)
"""The fill of a cell whose image cannot be read."""
AHEAD = 64
"""Thumbnails made ahead of the band being drawn."""


@dataclass(frozen=True)
class GridOptions:
    out: Path
    spec: Spec = field(default_factory=Spec)
    cols: int | None = None
    rows: int | None = None
    aspect: float = 1.0
    label: str | None = None
    """A template over stored results, ``"{metadata.parameters.seed} {classify.animals}"``; ``"none"``: no labels."""
    csv: Path | None = None
    label_columns: tuple[str, ...] = ()
    title: str | None = None
    quality: int = 90
    max_pixels: int | None = 400_000_000
    """Pixels a page may have (a WebP page is held whole in memory: about 5 bytes a pixel)."""
    workers: int = 2


@dataclass
class Cell:
    store: Store
    rel: str
    hash: str | None
    label: str
    source: str
    """Where the label came from: ``csv``, ``template``, ``file_name``, or ``error``."""

    @property
    def path(self) -> Path:
        return self.store.root / self.rel


@dataclass
class GridResult:
    pages: list[Path]
    cells: list[Cell]
    thumbnails_made: int = 0
    unreadable: list[str] = field(default_factory=list)


def read_csv(path: Path, columns: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """The CSV's labels, keyed by its first column (a relative path or a file name): the named
    ``columns`` (else every column after the first), as ``name=value`` pairs joined by spaces when
    several. Raises ConfigError naming a missing column or an unreadable file."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"--csv {path}: cannot be read ({exc})") from exc
    if not rows:
        raise ConfigError(f"--csv {path}: empty")
    header = [h.strip() for h in rows[0]]
    wanted = list(columns) or header[1:]
    absent = [c for c in wanted if c not in header]
    if absent:
        raise ConfigError(f"--csv {path}: no column {', '.join(map(repr, absent))} (it has {', '.join(header)})")
    at = [header.index(c) for c in wanted]
    labels: dict[str, str] = {}
    short: list[str] = []
    for number, row in enumerate(rows[1:], start=2):
        if not row or not row[0].strip():
            continue
        if len(row) < len(header):
            short.append(f"line {number}")
            row = row + [""] * (len(header) - len(row))
        values = [row[i].strip() for i in at]
        labels[row[0].strip().replace("\\", "/")] = (
            values[0] if len(values) == 1 else " ".join(f"{c}={v}" for c, v in zip(wanted, values, strict=True))
        )
    if short:
        log.warning("--csv %s: %d rows have fewer cells than columns (%s...)", path, len(short), ", ".join(short[:3]))
    return labels, header


def make_grid(
    settings: Settings, plugins: Sequence[AnalyzerPlugin], paths: Sequence[Path], options: GridOptions
) -> GridResult:
    """Walk, label, lay out and write the sheet (blocking)."""
    fmt = format_of(options.out)
    out = options.out.absolute()
    roots = [target.root for target in resolve_targets(settings, paths, files=False)]
    for root in roots:
        if out.is_relative_to(root) and not any(part.startswith(".") for part in out.relative_to(root).parts[:-1]):
            raise ConfigError(f"-o {options.out} is inside the folder {root} being drawn: put it elsewhere")
    out.parent.mkdir(parents=True, exist_ok=True)
    found: dict[Path, list[Seen]] = {}
    stores = surveyed(
        settings, plugins, paths, seen=lambda store, image: found.setdefault(store.root, []).append(image)
    )
    try:
        cells = _cells(stores, found, plugins, options)
        spec = with_title(options.spec, options.title)
        if options.label == "none":
            spec = replace(spec, label_lines=0)
        pages = contact_sheet(
            len(cells),
            spec,
            cols=options.cols,
            rows=options.rows,
            aspect=options.aspect,
            fmt=fmt,
            max_pixels=options.max_pixels,
        )
        names = page_names(options.out, len(pages))
        result = GridResult(names, cells)
        painter = _Painter(cells, spec, options, settings.max_image_pixels, stores)
        for page, name in zip(pages, names, strict=True):
            write_page(page, painter.band, name, options.quality)
        result.thumbnails_made = painter.made
        result.unreadable = painter.unreadable
        return result
    finally:
        for store in stores:
            store.close()


def _cells(
    stores: Sequence[Store],
    found: Mapping[Path, Sequence[Seen]],
    plugins: Sequence[AnalyzerPlugin],
    options: GridOptions,
) -> list[Cell]:
    csv_labels: dict[str, str] = {}
    if options.csv is not None:
        csv_labels, _ = read_csv(options.csv, options.label_columns)
    template = options.label if options.label not in (None, "none") else None
    selectors = template_selectors(template) if template else []
    preferred = preferred_models(plugins)
    cells: list[Cell] = []
    matched: set[str] = set()
    for store in stores:
        seen = sorted(found.get(store.root, ()), key=lambda image: image.rel.rpartition("/")[::2])
        hashes = [image.hash or _hash(store, image.rel) for image in seen]
        known = [(image.rel, h) for image, h in zip(seen, hashes, strict=True) if h]  # results made for this content
        values = dict(zip([rel for rel, _ in known], store.values_of(known, selectors, preferred), strict=True))
        for image, content_hash in zip(seen, hashes, strict=True):
            name = image.rel.rpartition("/")[2]
            key = image.rel if image.rel in csv_labels else name if name in csv_labels else None
            if key is not None:
                matched.add(key)
                cells.append(Cell(store, image.rel, content_hash, csv_labels[key], "csv"))
            elif template is not None and image.rel in values and _any_value(values[image.rel][0], selectors):
                texts = {s.text: _text(values[image.rel][0][s.text]) for s in selectors}
                cells.append(Cell(store, image.rel, content_hash, render_template(template, texts, name), "template"))
            else:
                cells.append(Cell(store, image.rel, content_hash, name, "file_name"))
    unmatched = sorted(set(csv_labels) - matched)
    if unmatched:
        log.warning("--csv: %d rows name no image found (%s)", len(unmatched), ", ".join(unmatched[:5]))
    return cells


def _any_value(values: Mapping[str, Any], selectors: Sequence[Any]) -> bool:
    """Whether the template names anything stored for the image (else its label is its file name)."""
    return not selectors or any(values[s.text] is not MISSING for s in selectors)


def _text(value: Any) -> str:
    from ..export.items import text_of

    return "" if value is MISSING else text_of(value)


def _hash(store: Store, rel: str) -> str | None:
    """The content hash of an image the index has none for (new, or changed since): its thumbnail's key."""
    try:
        return hash_file(store.root / rel)[0]
    except (OSError, FileChangedError):
        return None


class _Painter:
    """Draws bands: thumbnails made ahead in order, each cell pasted, its label drawn under it."""

    def __init__(
        self, cells: Sequence[Cell], spec: Spec, options: GridOptions, max_pixels: int, stores: Sequence[Store]
    ) -> None:
        self.cells = cells
        self.spec = spec
        self.options = options
        self.max_pixels = max_pixels
        size = bucket(max(spec.cell_w, spec.cell_h))
        self.caches = (
            {store.root: ThumbCache(store.state_dir / "thumbs", size, max_pixels=max_pixels) for store in stores}
            if size
            else {}
        )
        self.labels = Labeller(spec.cell_w, spec.label_lines, spec.line_height) if spec.label_lines else None
        self.title = Labeller(10_000, 1, spec.line_height) if options.title else None
        self.unreadable: list[str] = []
        self._thumbs = self._thumbnails()

    @property
    def made(self) -> int:
        return sum(cache.made for cache in self.caches.values())

    def _thumbnails(self) -> Iterator[tuple[Path | None, str | None]]:
        """(thumbnail, error) of every cell, in order, made ``workers`` at a time a little ahead."""
        from concurrent.futures import Future, ThreadPoolExecutor

        def one(cell: Cell) -> tuple[Path | None, str | None]:
            cache = self.caches.get(cell.store.root)
            if cell.hash is None:
                return None, "cannot read the image"
            if cache is None:
                return None, None  # cells larger than any thumbnail: the image itself
            thumb = cache.get(cell.path, cell.hash)
            return thumb.path, thumb.error

        with ThreadPoolExecutor(max(1, self.options.workers), thread_name_prefix="thumbs") as pool:
            ahead: list[Future[tuple[Path | None, str | None]]] = []
            for cell in self.cells:
                ahead.append(pool.submit(one, cell))
                if len(ahead) > AHEAD:
                    yield ahead.pop(0).result()
            for future in ahead:
                yield future.result()

    def band(self, page: Sheet, row: int) -> Image.Image:
        from PIL import Image

        top, height = page.band(row)
        band = Image.new("RGB", (page.width, height), BACKGROUND)
        if row == 0 and self.title is not None and self.options.title:
            title = self.title.render(self.options.title)
            band.paste(title, (self.spec.margin, self.spec.margin), title)
        first = row * page.cols
        for i in range(first, min(first + page.cols, page.count)):
            cell = self.cells[page.first + i]
            box, label_box = page.cell(i), page.label(i)
            thumb, error = next(self._thumbs)
            tile = None
            if error is None:
                try:
                    tile = load_tile(thumb, cell.path, (box.w, box.h), self.spec.fit, self.max_pixels)
                except (AnalyzerError, OSError, ValueError) as exc:  # a placeholder cell, with the error
                    error = str(exc)
            text = cell.label
            if tile is None:
                band.paste(PLACEHOLDER, (box.x, box.y - top, box.x + box.w, box.y - top + box.h))
                self.unreadable.append(f"{cell.path}: {error}")
                text = f"{cell.rel.rpartition('/')[2]}: {error}"
                cell.source = "error"
            else:
                x = box.x + (box.w - tile.width) // 2
                y = box.y - top + (box.h - tile.height) // 2
                band.paste(tile, (x, y), tile if tile.mode == "RGBA" else None)
            if self.labels is not None:
                drawn = self.labels.render(clean_label(text))
                band.paste(drawn, (label_box.x, label_box.y - top), drawn)
        return band
