"""Where everything goes on a sheet: pure arithmetic, no pixels.

A contact sheet is ``rows`` x ``cols`` cells; a cell is the image's box (``cell_w`` x ``cell_h``)
with its label below (``label_lines`` lines of ``line_height`` pixels). Around the cells: a
``margin``, ``gap`` pixels between cells, and a title line on top. A sheet is drawn and written a
row of cells at a time (a *band*), so a sheet of any height costs one band of memory; a sheet
larger than its format allows (WebP: 16,383 pixels a side) or than the pixel budget is cut into
pages of whole rows, each laid out alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

FORMAT_MAX_SIDE = {"webp": 16_383, "jpeg": 65_500, "png": 1_000_000}
"""The longest side each format takes: WebP's limit, libjpeg's (65,500, not 65,535), and for PNG
(no limit of its own) a bound that keeps a page within reach of ordinary viewers."""


@dataclass(frozen=True)
class Box:
    x: int
    y: int
    w: int
    h: int


@dataclass(frozen=True)
class Spec:
    """How a sheet looks; every length in pixels."""

    cell_w: int = 128
    cell_h: int = 128
    fit: str = "fit"
    """``fit``: the whole image, letterboxed; ``fill``: the cell filled, the image cut to its shape."""
    margin: int = 8
    gap: int = 4
    label_lines: int = 2
    line_height: int = 14
    title_height: int = 0

    @property
    def label_h(self) -> int:
        return self.label_lines * self.line_height

    @property
    def pitch_x(self) -> int:
        return self.cell_w + self.gap

    @property
    def pitch_y(self) -> int:
        return self.cell_h + self.label_h + self.gap


@dataclass(frozen=True)
class Sheet:
    """One page: its size, and per image (in order) its cell box and its label box."""

    width: int
    height: int
    cols: int
    rows: int
    first: int
    """The index of this page's first image among all the images."""
    count: int
    spec: Spec
    left: int = 0
    """A column of row headers (a comparison grid's Y values) left of the cells."""
    header: int = 0
    """A row of column headers (X values) over the cells."""
    block_cols: int = 0
    """Cells per block across (a comparison grid's images of one X value); 0: no blocks."""
    block_rows: int = 0
    block_gap: int = 0
    """Extra space between blocks."""

    def cell(self, i: int) -> Box:
        """The image box of this page's ``i``-th image."""
        row, col = divmod(i, self.cols)
        s = self.spec
        return Box(self.column_left(col), self.band_top(row), s.cell_w, s.cell_h)

    def column_left(self, col: int) -> int:
        extra = (col // self.block_cols) * self.block_gap if self.block_cols else 0
        return self.spec.margin + self.left + col * self.spec.pitch_x + extra

    def label(self, i: int) -> Box:
        cell = self.cell(i)
        return Box(cell.x, cell.y + cell.h, cell.w, self.spec.label_h)

    def band_top(self, row: int) -> int:
        """Where row ``row``'s cells begin."""
        extra = (row // self.block_rows) * self.block_gap if self.block_rows else 0
        return self.spec.margin + self.spec.title_height + self.header + row * self.spec.pitch_y + extra

    def band(self, row: int) -> tuple[int, int]:
        """(top, height) of the horizontal strip drawn for row ``row``: the strip ends where the
        next row's begins (the last strip takes the bottom margin, the first the top margin and title)."""
        top = 0 if row == 0 else self.band_top(row)
        bottom = self.height if row == self.rows - 1 else self.band_top(row + 1)
        return top, bottom - top


def auto_shape(n: int, spec: Spec, aspect: float = 1.0) -> tuple[int, int]:
    """(cols, rows) for ``n`` cells, the sheet's width/height as near ``aspect`` as whole cells allow."""
    if n <= 0:
        return 1, 0
    cols = max(1, min(n, round(math.sqrt(n * aspect * spec.pitch_y / spec.pitch_x))))
    return cols, math.ceil(n / cols)


def contact_sheet(
    n: int,
    spec: Spec,
    *,
    cols: int | None = None,
    rows: int | None = None,
    aspect: float = 1.0,
    fmt: str = "png",
    max_pixels: int | None = None,
) -> list[Sheet]:
    """The pages of a contact sheet of ``n`` images: ``cols`` and/or ``rows`` as given (one of them
    given: the other follows), else :func:`auto_shape`. Each page at most the format's side
    (:data:`FORMAT_MAX_SIDE`) and ``max_pixels``; ``rows`` (given) is then rows per page. Raises
    ValueError when not even one cell fits."""
    if cols is None and rows is not None:
        cols = max(1, math.ceil(n / rows)) if n else 1
    if cols is None:
        cols, _ = auto_shape(n, spec, aspect)
    cols = max(1, cols)
    max_side = FORMAT_MAX_SIDE.get(fmt, FORMAT_MAX_SIDE["png"])
    fit_cols = (max_side - 2 * spec.margin + spec.gap) // spec.pitch_x
    if fit_cols < 1:
        raise ValueError(f"a cell of {spec.cell_w} px does not fit in {fmt.upper()}'s {max_side:,} px")
    cols = min(cols, fit_cols)
    width = 2 * spec.margin + cols * spec.pitch_x - spec.gap
    room = max_side
    if max_pixels is not None:
        room = min(room, max_pixels // width)
    per_page = (room - 2 * spec.margin - spec.title_height + spec.gap) // spec.pitch_y
    if per_page < 1:
        raise ValueError(f"one row of {width:,} px does not fit in the page's {room:,} px budget: fewer columns")
    if rows is not None:
        per_page = min(per_page, max(1, rows))
    total_rows = math.ceil(n / cols) if n else 0
    pages = []
    for first_row in range(0, max(total_rows, 1), per_page):
        page_rows = min(per_page, total_rows - first_row) if n else 0
        first = first_row * cols
        count = min(n - first, page_rows * cols)
        height = 2 * spec.margin + spec.title_height + page_rows * spec.pitch_y - (spec.gap if page_rows else 0)
        pages.append(Sheet(width, height, cols, page_rows, first, count, spec))
    return pages


def fitted(image_w: int, image_h: int, box_w: int, box_h: int, fit: str = "fit") -> tuple[int, int, Box]:
    """How an image goes into a box: (scaled width, scaled height, the part of the scaled image to
    show, in its own coordinates). ``fit``: the whole image, centred (the box's rest is background);
    ``fill``: scaled to cover the box, centred, the overflow cut."""
    if image_w <= 0 or image_h <= 0:
        return 0, 0, Box(0, 0, 0, 0)
    scale = (max if fit == "fill" else min)(box_w / image_w, box_h / image_h)
    w, h = max(1, round(image_w * scale)), max(1, round(image_h * scale))
    if fit == "fill":
        return w, h, Box((w - box_w) // 2, (h - box_h) // 2, min(w, box_w), min(h, box_h))
    return w, h, Box(0, 0, w, h)


def with_title(spec: Spec, title: str | None, lines: int = 1) -> Spec:
    """``spec`` with room for ``lines`` lines of title on top (a title, then a legend), when there is a title."""
    return replace(spec, title_height=lines * spec.line_height + spec.gap) if title else spec


def comparison_sheet(
    nx: int, ny: int, sub: tuple[int, int], spec: Spec, *, header: int, left: int, fmt: str = "png"
) -> Sheet:
    """One page of an X/Y grid: ``nx`` by ``ny`` blocks of ``sub`` (columns, rows) cells, column
    headers over them and row headers left of them. Raises ValueError past the format's size."""
    block_gap = 3 * spec.gap + 4
    cols, rows = nx * sub[0], ny * sub[1]
    width = 2 * spec.margin + left + cols * spec.pitch_x - spec.gap + (nx - 1) * block_gap
    height = 2 * spec.margin + spec.title_height + header + rows * spec.pitch_y - spec.gap + (ny - 1) * block_gap
    limit = FORMAT_MAX_SIDE.get(fmt, FORMAT_MAX_SIDE["png"])
    if max(width, height) > limit:
        raise ValueError(
            f"a {width:,} x {height:,} px comparison grid is larger than {fmt.upper()} allows ({limit:,} px): "
            "smaller cells, fewer values per axis (--z makes a sheet per value), or PNG"
        )
    return Sheet(width, height, cols, rows, 0, cols * rows, spec, left, header, sub[0], sub[1], block_gap)
