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
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import AnalyzerError, ConfigError, FileChangedError
from ..hashing import hash_file
from ..selector import MISSING, Selector, render_template, template_selectors
from ..settings import Settings
from ..store import Store, preferred_models, resolve_targets
from ..survey import Seen, surveyed
from .compose import format_of, page_names, write_page
from .layout import Sheet, Spec, comparison_sheet, contact_sheet, with_title
from .text import Labeller, clean_label
from .thumbs import ThumbCache, bucket, load_tile

if TYPE_CHECKING:
    from PIL import Image

    from ..plugin import AnalyzerPlugin

log = logging.getLogger(__name__)

PLACEHOLDER = (200, 200, 200)
"""The fill of a cell whose image cannot be read."""
MISSING_FILL = (238, 238, 238)
"""The fill of a comparison grid's cell that no image has."""
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
    x: str | None = None
    """A comparison grid's axes: selectors, or bare generation parameters (``steps``); see
    :mod:`analyzer.grid.axes`."""
    y: str | None = None
    z: str | None = None
    auto_axes: bool = False
    background: tuple[int, int, int] = (255, 255, 255)
    legend: bool = False
    """A line under the title saying what the labels (or axes) show."""
    batch_format: str = "png"
    """``--batch``: the sheets' format (``png``, ``jpg``, ``webp``); ``out`` is then a folder."""

    @property
    def comparison(self) -> bool:
        return self.auto_axes or self.x is not None


@dataclass
class Cell:
    store: Store
    rel: str
    hash: str | None
    label: str
    source: str
    """Where the label came from: ``csv``, ``template``, ``file_name``, ``error``, or ``axes``."""
    kind: str = "image"
    """``image``; in a comparison grid also ``missing`` (no image has this combination: a labelled
    empty cell) and ``blank`` (the rest of a cell with fewer images than others)."""
    values: dict[str, Any] = field(default_factory=dict, repr=False)
    """The axes' values (selector text -> stored value)."""

    @property
    def path(self) -> Path:
        return self.store.root / self.rel


@dataclass
class GridResult:
    pages: list[Path]
    cells: list[Cell]
    axes: list[tuple[str, list[str]]] = field(default_factory=list)
    """A comparison grid's axes: (name, its value labels in order), X first."""
    skipped: bool = False
    """``--batch``: the sheet was up to date, nothing was drawn."""
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
    settings: Settings,
    plugins: Sequence[AnalyzerPlugin],
    paths: Sequence[Path],
    options: GridOptions,
    unchanged: Callable[[list[Cell]], bool] | None = None,
) -> GridResult:
    """Walk, label, lay out and write the sheet (blocking). ``unchanged(cells)`` (``--batch``):
    True when the sheet of these cells is drawn already: nothing is written."""
    fmt = format_of(options.out)
    out = options.out.absolute()
    drawn = [target.root for target in resolve_targets(settings, paths, files=False)]
    watched = [root.expanduser().absolute() for root in settings.roots]  # what `analyzer watch` would analyse
    for root, what in [*((r, "being drawn") for r in drawn), *((r, "configured as a root") for r in watched)]:
        if out.is_relative_to(root) and not any(part.startswith(".") for part in out.relative_to(root).parts[:-1]):
            raise ConfigError(f"-o {options.out} is inside the folder {root} {what}: put it elsewhere")
    out.parent.mkdir(parents=True, exist_ok=True)
    found: dict[Path, list[Seen]] = {}
    stores = surveyed(
        settings, plugins, paths, seen=lambda store, image: found.setdefault(store.root, []).append(image)
    )
    try:
        cells = _cells(stores, found, plugins, options)
        if unchanged is not None and unchanged(cells):
            return GridResult([], cells, skipped=True)
        if options.comparison:
            return _comparison(cells, options, fmt, settings.max_image_pixels, stores)
        legend = _legend(options, cells) if options.legend else None
        lines = bool(options.title) + bool(legend)
        spec = with_title(options.spec, "title" if lines else None, lines)
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
        painter.legend_text = legend
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
    axis_selectors = _axis_selectors(options)
    wanted = list({sel.text: sel for sel in [*selectors, *axis_selectors]}.values())
    preferred = preferred_models(plugins)
    cells: list[Cell] = []
    matched: set[str] = set()
    for store in stores:
        seen = sorted(found.get(store.root, ()), key=lambda image: image.rel.rpartition("/")[::2])
        hashes = [image.hash or _hash(store, image.rel) for image in seen]
        known = [(image.rel, h) for image, h in zip(seen, hashes, strict=True) if h]  # results made for this content
        values = dict(zip([rel for rel, _ in known], store.values_of(known, wanted, preferred), strict=True))
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
            stored = values[image.rel][0] if image.rel in values else {}
            cells[-1].values = {sel.text: stored.get(sel.text, MISSING) for sel in axis_selectors}
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
        red, green, blue = options.background
        self.ink = "#ffffff" if 0.299 * red + 0.587 * green + 0.114 * blue < 128 else "#000000"
        """Text in white on a dark background, else black."""
        ink = self.ink
        self.labels = (
            Labeller(spec.cell_w, spec.label_lines, spec.line_height, colour=ink) if spec.label_lines else None
        )
        self.title = Labeller(10_000, 1, spec.line_height, colour=ink) if spec.title_height else None
        self.unreadable: list[str] = []
        self.title_text = options.title
        self.legend_text: str | None = None
        self.axes: tuple[Any, Any] | None = None
        """A comparison grid's (X axis, Y axis or None): their values head the columns and rows."""
        self._headers: dict[int, Labeller] = {}
        self._thumbs = self._thumbnails()

    @property
    def made(self) -> int:
        return sum(cache.made for cache in self.caches.values())

    def _thumbnails(self) -> Iterator[tuple[Path | None, str | None]]:
        """(thumbnail, error) of every cell, in order, made ``workers`` at a time a little ahead."""
        from concurrent.futures import Future, ThreadPoolExecutor

        def one(cell: Cell) -> tuple[Path | None, str | None]:
            if cell.kind != "image":
                return None, None
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
        band = Image.new("RGB", (page.width, height), self.options.background)
        if row == 0 and self.title is not None:
            for n, text in enumerate(t for t in (self.title_text, self.legend_text) if t):
                drawn = self.title.render(text)
                band.paste(drawn, (self.spec.margin, self.spec.margin + n * self.spec.line_height), drawn)
        self._draw_headers(band, page, row, top)
        first = row * page.cols
        for i in range(first, min(first + page.cols, page.count)):
            cell = self.cells[page.first + i]
            box, label_box = page.cell(i), page.label(i)
            thumb, error = next(self._thumbs)
            if cell.kind != "image":
                if cell.kind == "missing":
                    band.paste(MISSING_FILL, (box.x, box.y - top, box.x + box.w, box.y - top + box.h))
                    self._label(band, cell.label, label_box.x, label_box.y - top)
                continue
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
            self._label(band, text, label_box.x, label_box.y - top)
        return band

    def _label(self, band: Image.Image, text: str, x: int, y: int) -> None:
        if self.labels is not None:
            drawn = self.labels.render(clean_label(text))
            band.paste(drawn, (x, y), drawn)

    def _header(self, width: int) -> Labeller:
        if width not in self._headers:
            self._headers[width] = Labeller(width, 2, self.spec.line_height, colour=self.ink)
        return self._headers[width]

    def _draw_headers(self, band: Image.Image, page: Sheet, row: int, top: int) -> None:
        """A comparison grid's X values over the first row of blocks, Y values left of each row of blocks."""
        if self.axes is None or not page.block_cols:
            return
        x_axis, y_axis = self.axes
        s = self.spec
        if row == 0:
            width = page.block_cols * s.pitch_x - s.gap
            y = s.margin + s.title_height
            for xi, (_, label) in enumerate(x_axis.values):
                drawn = self._header(width).render(f"{x_axis.name} = {label}" if xi == 0 else label)
                band.paste(drawn, (page.column_left(xi * page.block_cols), y - top), drawn)
        if y_axis is not None and page.block_rows and row % page.block_rows == 0:
            yi = row // page.block_rows
            if yi < len(y_axis.values):
                label = y_axis.values[yi][1]
                drawn = self._header(page.left - s.gap).render(f"{y_axis.name} = {label}" if yi == 0 else label)
                band.paste(drawn, (s.margin, page.band_top(row) - top), drawn)


# -- comparison grids ----------------------------------------------------------------------------
def _axis_selectors(options: GridOptions) -> list[Selector]:
    from .axes import PREFERENCE, selector_of

    names = list(PREFERENCE) if options.auto_axes else [n for n in (options.x, options.y, options.z) if n]
    return [selector_of(name) for name in names]


def _choose_axes(images: Sequence[Cell], options: GridOptions) -> tuple[str, str | None, str | None, list[str]]:
    """(x, y, z, what else varies within a cell): as given, or found (``--auto-axes``)."""
    from .axes import PREFERENCE, detect_axes, selector_of

    if not options.auto_axes:
        assert options.x is not None
        return options.x, options.y, options.z, []
    rows = [{name: cell.values.get(selector_of(name).text, MISSING) for name in PREFERENCE} for cell in images]
    chosen = detect_axes(rows)
    return chosen.x, chosen.y, chosen.z, list(chosen.within)


def _slots(
    page: Sheet,
    x_axis: Any,
    y_axis: Any,
    ys: Sequence[tuple[Any, str]],
    groups: Mapping[tuple[Any, Any], list[Cell]],
    sub: tuple[int, int],
    within_key: Any,
    within: Sequence[str],
) -> list[Cell | None]:
    """The page's cells in reading order: each block's images, a labelled empty cell for a
    combination no image has, None for the rest of a block."""
    from .axes import normal, selector_of

    slots: list[Cell | None] = [None] * (page.cols * page.rows)
    store = next(iter(cell for group in groups.values() for cell in group)).store
    for xi, (x_key, x_label) in enumerate(x_axis.values):
        for yi, (y_key, y_label) in enumerate(ys):
            members = sorted(groups.get((x_key, y_key), []), key=within_key)
            for n in range(sub[0] * sub[1]):
                r, c = divmod(n, sub[0])
                at = (yi * sub[1] + r) * page.cols + xi * sub[0] + c
                if n < len(members):
                    cell = members[n]
                    if within and cell.source == "file_name":  # told apart by what varies within the cell
                        cell.label = " ".join(
                            f"{w.rpartition('.')[2]}={normal(cell.values.get(selector_of(w).text, MISSING))[1]}"
                            for w in within
                        )
                        cell.source = "axes"
                    slots[at] = cell
                elif n == 0:
                    missing = f"none: {x_axis.name}={x_label}" + (f", {y_axis.name}={y_label}" if y_axis else "")
                    slots[at] = Cell(store, "", None, missing, "axes", kind="missing")
    return slots


def _comparison(
    cells: list[Cell], options: GridOptions, fmt: str, max_pixels: int, stores: Sequence[Store]
) -> GridResult:
    """One sheet per Z value: X by Y blocks, each holding the images with those values side by
    side (ordered by what else varies), headers over and beside them; a combination no image has
    is an empty cell saying so."""
    from ..export.files import file_name
    from .axes import Axis, axis, normal, selector_of, sub_grid

    images = list(cells)
    if not images:
        raise ConfigError("no images to compare")
    x_name, y_name, z_name, within = _choose_axes(images, options)
    names = [n for n in (x_name, y_name, z_name) if n]
    built: dict[str, tuple[Axis, list[Any]]] = {}
    for name in names:
        built[name] = axis(name, [cell.values.get(selector_of(name).text, MISSING) for cell in images])
    x_axis, x_keys = built[x_name]
    y_axis, y_keys = built[y_name] if y_name else (None, [(0,)] * len(images))
    z_axis, z_keys = built[z_name] if z_name else (None, [(0,)] * len(images))
    if len(x_axis.values) * (len(y_axis.values) if y_axis else 1) > 10_000:
        raise ConfigError(f"{x_name} by {y_name}: over 10,000 cells; choose axes with fewer values")

    def within_key(cell: Cell) -> tuple[Any, ...]:
        return (*(normal(cell.values.get(selector_of(n).text, MISSING))[0] for n in within), cell.rel)

    z_values = z_axis.values if z_axis else (((0,), ""),)
    spec = with_title(options.spec, options.title or "x", 2 if options.legend else 1)
    if options.label == "none":
        spec = replace(spec, label_lines=0)
    header = spec.line_height * 2 + spec.gap
    left = max(spec.cell_w, 96) if y_axis else 0
    shown = [a for a in (x_axis, y_axis, z_axis) if a is not None]
    result = GridResult([], [], axes=[(a.name, [label for _, label in a.values]) for a in shown])
    painter_cells: list[Cell] = []
    pages: list[tuple[Any, Path, str]] = []
    for z_key, z_label in z_values:
        here = [i for i in range(len(images)) if z_keys[i] == z_key]
        groups: dict[tuple[Any, Any], list[Cell]] = {}
        for i in here:
            groups.setdefault((x_keys[i], y_keys[i]), []).append(images[i])
        per_cell = max((len(g) for g in groups.values()), default=1)
        sub = sub_grid(per_cell)
        ys = y_axis.values if y_axis else (((0,), ""),)
        page = comparison_sheet(len(x_axis.values), len(ys), sub, spec, header=header, left=left, fmt=fmt)
        slots = _slots(page, x_axis, y_axis, ys, groups, sub, within_key, within)
        page_cells = [slot or Cell(images[0].store, "", None, "", "axes", kind="blank") for slot in slots]
        painter_cells += page_cells
        suffix = f"-{file_name(z_label)}" if z_axis else ""
        out = options.out.with_name(f"{options.out.stem}{suffix}{options.out.suffix}")
        title = options.title or f"{x_axis.name} × {y_axis.name}" if y_axis else options.title or x_axis.name
        if z_axis:
            title = f"{title} — {z_axis.name} = {z_label}"
        pages.append((replace(page, first=len(painter_cells) - len(page_cells)), out, title))
    painter = _Painter(painter_cells, spec, options, max_pixels, stores)
    for page, out, title in pages:
        painter.axes = (x_axis, y_axis)
        painter.title_text = title
        if options.legend:
            in_cell = ", ".join(within) or "file name"
            painter.legend_text = f"columns: {x_axis.name}" + (f" · rows: {y_axis.name}" if y_axis else "")
            painter.legend_text += f" · in a cell: {in_cell}"
        write_page(page, painter.band, out, options.quality)
        result.pages.append(out)
    result.cells = [c for c in painter_cells if c.kind == "image"]
    result.thumbnails_made = painter.made
    result.unreadable = painter.unreadable
    return result


# -- --batch ---------------------------------------------------------------------------------------
BATCH_STATE = ".analyzer-grid.json"
"""In the output folder of ``--batch``: per sheet, the digest of what it was drawn from, and its pages."""


def make_batch(
    settings: Settings, plugins: Sequence[AnalyzerPlugin], folders: Sequence[Path], options: GridOptions
) -> list[tuple[Path, GridResult]]:
    """One sheet per folder, ``<options.out>/<folder name>.<batch_format>``, redrawn only when what it
    shows changed: the images (by content), their labels, the options, or this version. Blocking."""
    import hashlib
    import json

    from .. import __version__
    from ..export.files import FolderNames
    from ..sidecar import atomic_write_bytes

    out_dir = options.out
    out_dir.mkdir(parents=True, exist_ok=True)
    state_path = out_dir / BATCH_STATE
    try:
        state: dict[str, Any] = json.loads(state_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        state = {}
    names = FolderNames([folder.resolve().name or "root" for folder in folders])
    drawn: list[tuple[Path, GridResult]] = []
    for folder in folders:
        sheet_out = out_dir / f"{names[folder.resolve().name or 'root']}.{options.batch_format}"
        sheet_options = replace(options, out=sheet_out)
        recipe = json.dumps([__version__, repr(replace(sheet_options, out=Path()))], sort_keys=True)

        def digest(cells: list[Cell], recipe: str = recipe) -> str:
            parts = [recipe, *(f"{c.hash}\t{c.label}\t{c.source}" for c in cells)]
            return hashlib.sha256("\n".join(parts).encode()).hexdigest()

        now: dict[str, str] = {}

        def unchanged(cells: list[Cell], key: str = sheet_out.name, now: dict[str, str] = now) -> bool:
            now["digest"] = digest(cells)
            before = state.get(key, {})
            pages = [out_dir / page for page in before.get("pages", [])]
            return before.get("digest") == now["digest"] and bool(pages) and all(p.is_file() for p in pages)

        result = make_grid(settings, plugins, [folder], sheet_options, unchanged)
        if not result.skipped:
            state[sheet_out.name] = {"digest": now["digest"], "pages": [p.name for p in result.pages]}
            atomic_write_bytes(state_path, (json.dumps(state, indent=1, sort_keys=True) + "\n").encode())
        drawn.append((folder, result))
    return drawn


def _legend(options: GridOptions, cells: Sequence[Cell]) -> str:
    """What a contact sheet's labels show, for the line under its title."""
    sources = Counter(cell.source for cell in cells)
    parts = []
    if sources["csv"]:
        columns = ", ".join(options.label_columns) or "its columns"
        parts.append(f"{sources['csv']:,} from {options.csv.name if options.csv else 'the CSV'} ({columns})")
    if sources["template"]:
        parts.append(f"{sources['template']:,} {options.label}")
    if sources["file_name"]:
        parts.append(f"{sources['file_name']:,} file name")
    if options.label == "none":
        return f"{len(cells):,} images"
    return f"{len(cells):,} images; labels: " + "; ".join(parts)
