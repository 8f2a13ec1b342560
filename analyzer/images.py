"""Opening images safely: one place that turns every way a file can be broken into an ImageError."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ImageError, ImageTooLarge

if TYPE_CHECKING:
    from PIL import Image

#: Extensions (lower case, without the dot) that discovery treats as images.
IMAGE_EXTENSIONS = frozenset({"png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff"})

DEFAULT_MAX_PIXELS = 178_956_970  # Pillow's own default: about 0.18 gigapixels


@contextmanager
def open_image(
    path: Path | bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, draft: tuple[int, int] | None = None
) -> Iterator[Image.Image]:
    """Open ``path`` (or an image file's bytes), refuse decompression bombs, and decode every pixel
    (a JPEG, given ``draft``, at the smallest scale of 1/2, 1/4 or 1/8 still at least that size:
    a thumbnail's decode, several times faster).

    Raises :class:`ImageError` with a plain-language message for empty, truncated, corrupt
    and non-image files, and :class:`ImageTooLarge` for images over ``max_pixels``.
    ``OSError`` for a missing or unreadable file is passed through unchanged.
    """
    import io

    from PIL import Image, UnidentifiedImageError  # imported on first use: warm runs never need it

    if (len(path) if isinstance(path, bytes) else os.stat(path).st_size) == 0:
        raise ImageError("empty file (0 bytes)")
    try:
        image = Image.open(io.BytesIO(path) if isinstance(path, bytes) else path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own process-wide ceiling (twice its default); the limit asked for is checked below
        raise ImageTooLarge(f"image too large ({exc}); raise max_image_pixels to allow it") from exc
    except UnidentifiedImageError as exc:
        raise ImageError("not a readable image (unknown or corrupt format)") from exc
    except (SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"corrupt image header: {exc}") from exc
    except OSError as exc:
        if exc.errno is not None:  # a real I/O error (missing, unreadable): the caller decides
            raise
        raise ImageError(f"corrupt image: {exc}") from exc  # Pillow's decoder errors carry no errno
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise ImageTooLarge(
                f"image too large: {width}x{height} = {width * height} pixels, over the limit of "
                f"{max_pixels} (setting max_image_pixels); it may be a decompression bomb"
            )
        try:
            if draft is not None and image.format == "JPEG":
                image.draft("RGB", draft)
            image.load()
        except OSError as exc:
            if exc.errno is not None:
                raise
            raise ImageError(f"cannot decode image: {exc}") from exc
        except (SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
            raise ImageError(f"cannot decode image: {exc}") from exc
        yield image


def is_image_name(name: str) -> bool:
    dot = name.rfind(".")
    return dot > 0 and name[dot + 1 :].lower() in IMAGE_EXTENSIONS


_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def has_end_marker(path: Path) -> bool:
    """Whether the file ends the way a finished PNG, JPEG, GIF or WebP file ends (reads a few bytes).

    A file written front to back gets its end marker last, so this tells a finished image from one
    still being written without decoding it. ``False`` means "not known to be finished" (another
    format, trailing bytes after the marker, or truly unfinished): the caller then decodes it.
    """
    with open(path, "rb") as handle:
        head = handle.read(12)
        size = handle.seek(0, os.SEEK_END)
        handle.seek(max(0, size - 16))
        tail = handle.read()
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return tail.endswith(_PNG_END)
    if head.startswith(b"\xff\xd8"):
        return tail.endswith(b"\xff\xd9")
    if head.startswith((b"GIF87a", b"GIF89a")):
        return tail.endswith(b";")
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return int.from_bytes(head[4:8], "little") + 8 == size
    return False
