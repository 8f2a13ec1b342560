"""Thumbnails made once per content and kept: ``<state folder>/thumbs/<size>/<ab>/<hash>.jpg``.

A thumbnail is keyed by the image's content hash (the one its sidecars carry), so a renamed or
copied image reuses it, and an edited one gets a new one. Its short side is the size bucket
(:data:`SIZES`: the smallest at least the cell asked for; the long side at most four times that),
so both ``fit`` and ``fill`` cells are cut from it. JPEG (quality 90), or PNG for an image with
transparency, written under a temporary name and renamed (a cache: no fsync). Orientation from
EXIF is applied, animations give their first frame, and the guards of :func:`analyzer.images.open_image`
hold (size limit; truncated, corrupt and empty files are an :class:`~analyzer.errors.ImageError`).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ImageError
from ..images import DEFAULT_MAX_PIXELS, open_image
from ..sidecar import temp_path

if TYPE_CHECKING:
    from PIL import Image

SIZES = (128, 256, 512, 1024)
"""Thumbnail sizes kept (short side, pixels). A cell larger than the largest uses the image itself."""
LONG_SIDE = 4
"""A thumbnail's long side is at most this many times its short side (a panorama stays usable)."""


@dataclass(frozen=True)
class Thumb:
    """An image's thumbnail, or why there is none (``error``: the image cannot be read)."""

    path: Path | None
    error: str | None = None


def bucket(cell: int) -> int | None:
    """The thumbnail size for cells of ``cell`` pixels (their longer side); None: use the original."""
    return next((size for size in SIZES if size >= cell), None)


class ThumbCache:
    """The thumbnails of one root's images (thread-safe: each file is written whole, then renamed)."""

    def __init__(self, folder: Path, size: int, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.folder = folder / str(size)
        self.size = size
        self.max_pixels = max_pixels
        self.made = 0
        """Thumbnails made by this cache object (not found ready)."""

    def path(self, content_hash: str) -> Path:
        """Where the thumbnail of this content is (or would be), without its extension."""
        digest = content_hash.rpartition(":")[2]
        return self.folder / digest[:2] / digest

    def find(self, content_hash: str) -> Path | None:
        base = self.path(content_hash)
        for extension in (".jpg", ".png"):
            candidate = base.with_suffix(extension)
            if candidate.is_file():
                return candidate
        return None

    def get(self, source: Path, content_hash: str) -> Thumb:
        """The thumbnail of ``source`` (whose content hash is ``content_hash``), made if missing."""
        found = self.find(content_hash)
        if found is not None:
            return Thumb(found)
        try:
            return Thumb(self._make(source, content_hash))
        except ImageError as exc:
            return Thumb(None, str(exc))
        except OSError as exc:
            return Thumb(None, f"cannot read the image: {exc.strerror or exc}")

    def _make(self, source: Path, content_hash: str) -> Path:
        from PIL import Image, ImageOps

        size = self.size
        with open_image(source, max_pixels=self.max_pixels, draft=(size, size)) as opened:
            image = ImageOps.exif_transpose(opened)
            alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
            image = image.convert("RGBA" if alpha else "RGB")
        w, h = image.size
        scale = size / min(w, h)
        target = (max(1, min(round(w * scale), size * LONG_SIDE)), max(1, min(round(h * scale), size * LONG_SIDE)))
        if scale < 1:
            image = image.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
        dst = self.path(content_hash).with_suffix(".png" if alpha else ".jpg")
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path(dst)
        try:
            if alpha:
                image.save(tmp, "PNG", compress_level=1)
            else:
                image.save(tmp, "JPEG", quality=90)
            os.replace(tmp, dst)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self.made += 1
        return dst


def load_tile(thumb: Path | None, source: Path, box: tuple[int, int], fit: str, max_pixels: int) -> Image.Image:
    """An image scaled for a cell of ``box`` (w, h), from its thumbnail (or the image itself when
    cells are larger than any thumbnail): RGB, or RGBA when it has transparency. Raises ImageError."""
    from PIL import Image, ImageOps

    from .layout import fitted

    with open_image(thumb or source, max_pixels=max_pixels, draft=box) as opened:
        image = opened if thumb is not None else ImageOps.exif_transpose(opened)
        image = image.convert("RGBA" if "A" in image.getbands() or "transparency" in image.info else "RGB")
    w, h, crop = fitted(image.width, image.height, box[0], box[1], fit)
    if (w, h) != image.size:
        image = image.resize((w, h), Image.Resampling.LANCZOS if w < image.width else Image.Resampling.BICUBIC)
    if (crop.x, crop.y, crop.w, crop.h) != (0, 0, w, h):
        image = image.crop((crop.x, crop.y, crop.x + crop.w, crop.y + crop.h))
    return image
