"""Writing a sheet a band at a time: memory holds one row of cells, however large the sheet.

Pillow draws each band (a row of cells with their labels); the bands are streamed, as the rows of
an uncompressed PNG, through a pipe into libvips (pyvips), which encodes PNG, JPEG or WebP while
they arrive.
The file is written under a temporary name and renamed when whole; a band that fails to draw
stops the stream, and libvips is told to fail on a truncated input (else it would pad the image
and report success), so no partial sheet is ever left at OUT.
"""

from __future__ import annotations

import contextlib
import os
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from ..sidecar import temp_path
from .layout import Sheet

if TYPE_CHECKING:
    from PIL import Image

FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}


def pyvips_module() -> Any:
    """pyvips, or a ConfigError saying how to install it (the ``grid`` extra)."""
    try:
        import pyvips

        pyvips.cache_set_max(0)  # no operation cache: nothing of a finished sheet is kept
    except (ImportError, OSError) as exc:  # OSError: the package is there but libvips is not
        raise ConfigError(
            f"analyzer grid needs pyvips and libvips ({exc}): pip install 'analyzer[grid]' "
            "(pyvips and pyvips-binary, which bundles libvips)"
        ) from exc
    return pyvips


def format_of(path: Path) -> str:
    found = FORMATS.get(path.suffix.lower())
    if found is None:
        raise ValueError(f"{path.name}: the sheet is written as .png, .jpg or .webp")
    return found


def page_names(out: Path, pages: int) -> list[Path]:
    """``OUT.png`` for one page; ``OUT-001.png``, ``OUT-002.png``, ... for several."""
    if pages <= 1:
        return [out]
    return [out.with_name(f"{out.stem}-{n:03d}{out.suffix}") for n in range(1, pages + 1)]


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_stream(width: int, height: int, bands: Iterator[Image.Image]) -> Iterator[bytes]:
    """An RGB PNG of ``width`` x ``height`` whose rows are the bands' (stored, not compressed: the
    encoder downstream compresses). Raises ValueError when the bands do not add up to the height."""
    yield b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    deflate = zlib.compressobj(0)
    stride, rows = width * 3, 0
    for band in bands:
        if band.width != width or band.mode != "RGB":
            raise ValueError(f"a band of {band.width} px ({band.mode}) in a sheet of {width} px (RGB)")
        raw = band.tobytes()
        filtered = b"".join(b"\x00" + raw[y * stride : (y + 1) * stride] for y in range(band.height))
        rows += band.height
        yield _chunk(b"IDAT", deflate.compress(filtered) + deflate.flush(zlib.Z_SYNC_FLUSH))
    if rows != height:
        raise ValueError(f"bands of {rows} rows in a sheet of {height}")
    yield _chunk(b"IDAT", deflate.flush()) + _chunk(b"IEND", b"")


def write_page(page: Sheet, draw_band: Callable[[Sheet, int], Image.Image], out: Path, quality: int = 90) -> None:
    """Draw ``page`` band by band (``draw_band(page, row)``, each the full width, the height of
    :meth:`Sheet.band`) into ``out`` (.png, .jpg or .webp), atomically.

    The bands are drawn in a thread of ours and written into a pipe that libvips reads as a file
    (no Python called from libvips' threads); a failure while drawing closes the pipe early, and
    libvips, told to fail on a truncated image, stops: the error raised is the drawing's."""
    pyvips = pyvips_module()
    fmt = format_of(out)
    failure: list[BaseException] = []
    stream = png_stream(page.width, page.height, (draw_band(page, row) for row in range(max(page.rows, 1))))
    read_fd, write_fd = os.pipe()

    def feed() -> None:
        try:
            with os.fdopen(write_fd, "wb") as pipe:
                for chunk in stream:
                    pipe.write(chunk)
        except BrokenPipeError:
            pass  # libvips stopped reading: it says why
        except BaseException as exc:
            failure.append(exc)

    feeder = threading.Thread(target=feed, name="grid-bands", daemon=True)
    feeder.start()
    tmp = temp_path(out) + out.suffix
    options: dict[str, Any] = {"Q": quality} if fmt in ("jpeg", "webp") else {"compression": 6}
    try:
        try:
            source = pyvips.Source.new_from_descriptor(read_fd)
            sheet = pyvips.Image.new_from_source(source, "", access="sequential", fail_on="truncated")
            sheet.write_to_file(tmp, **options)
        finally:
            sheet = source = None  # libvips lets go of the pipe: a feeder still writing gets EPIPE
            os.close(read_fd)
            feeder.join()
        if failure:
            raise failure[0]
        os.replace(tmp, out)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if failure and exc is not failure[0]:
            raise failure[0] from exc
        raise
