"""Labels as pixels: any script, emoji included, wrapped and cut to a number of lines.

Text is laid out by Pango through libvips (``pyvips.Image.text``): fontconfig picks a font per
character from the installed ones (with Debian's ``fonts-noto-core``, ``fonts-noto-cjk`` and
``fonts-noto-color-emoji``: Latin, Greek, Cyrillic, Hebrew, Arabic, CJK, colour emoji), and
HarfBuzz and FriBidi shape right-to-left and joined scripts. A label is wrapped at word (else
character) boundaries to the cell's width and cut to ``lines`` lines, the last ending in "…".

Whatever a label holds is drawn safely (:func:`clean_label`): control characters become their
visible symbols (U+2400...), bidi overrides are dropped (a file name cannot reverse its
neighbours), undecodable bytes (lone surrogates) become U+FFFD, and Pango's markup is escaped.
"""

from __future__ import annotations

import html
import re
from collections import OrderedDict
from typing import TYPE_CHECKING

from .compose import pyvips_module

if TYPE_CHECKING:
    from PIL import Image

FAMILIES = "Noto Sans, Noto Sans CJK JP, Noto Sans Symbols 2, Noto Color Emoji, DejaVu Sans"
"""Pango's family list: the first installed font with a character draws it (fontconfig goes on
through the rest of what is installed)."""

_BIDI_CONTROLS = re.compile("[\u202a-\u202e\u2066-\u2069]")
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f\x80-\x9f]")
_SURROGATES = re.compile("[\ud800-\udfff]")


def clean_label(text: str) -> str:
    """``text`` made safe to draw: controls shown as symbols (NUL as ␀, ESC as ␛), tabs as spaces,
    newlines kept, bidi overrides dropped, lone surrogates as U+FFFD."""
    text = _SURROGATES.sub("\ufffd", text)
    text = _BIDI_CONTROLS.sub("", text).replace("\t", " ").replace("\r\n", "\n").replace("\r", "\n")

    def symbol(found: re.Match[str]) -> str:
        code = ord(found.group())
        if code == 0x7F:
            return "\u2421"
        return chr(0x2400 + code) if code < 0x20 else "\ufffd"

    return _CONTROLS.sub(symbol, text)


class Labeller:
    """Draws labels of one size: ``width`` x (``lines`` x ``line_height``) pixels, ``colour`` (#rrggbb)
    on transparent (RGBA), kept in a small cache (axis headers and repeated labels are drawn once)."""

    def __init__(
        self,
        width: int,
        lines: int,
        line_height: int = 14,
        *,
        families: str = FAMILIES,
        cache: int = 512,
        colour: str = "#000000",
    ) -> None:
        self.pyvips = pyvips_module()
        self.width = max(1, width)
        self.lines = max(1, lines)
        self.line_height = line_height
        self.max_height = self.lines * line_height
        self.font = f"{families} {max(6, round(line_height * 0.72))}px"
        self.colour = colour
        self._cache: OrderedDict[str, Image.Image] = OrderedDict()
        self._cache_size = cache

    def render(self, text: str) -> Image.Image:
        """The label, fitted (a blank image for an empty text)."""
        from PIL import Image

        text = clean_label(text).strip()
        found = self._cache.get(text)
        if found is not None:
            self._cache.move_to_end(text)
            return found
        drawn = self._fit(text) if text else Image.new("RGBA", (self.width, self.max_height))
        self._cache[text] = drawn
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return drawn

    def _fit(self, text: str) -> Image.Image:
        image = self._draw(text)
        if image.height <= self.max_height:
            return image
        low, high = 0, len(text)  # the longest start of the text that fits with an ellipsis
        best = self._draw("…")
        while low < high:
            middle = (low + high + 1) // 2
            attempt = self._draw(text[:middle].rstrip() + "…")
            if attempt.height <= self.max_height:
                low, best = middle, attempt
            else:
                high = middle - 1
        return best

    def _draw(self, text: str) -> Image.Image:
        from PIL import Image

        options: dict[str, object] = {"font": self.font, "width": self.width, "wrap": "word-char", "dpi": 72}
        options["rgba"] = True
        options["spacing"] = max(0, self.line_height - round(self.line_height * 0.72 * 1.2))
        markup = f'<span foreground="{self.colour}">{html.escape(text, quote=False)}</span>'
        drawn = self.pyvips.Image.text(markup, **options)
        if drawn.bands != 4:
            drawn = drawn.bandjoin(255) if drawn.bands == 3 else drawn.colourspace("srgb").bandjoin(drawn)
        data = drawn.write_to_memory()
        image = Image.frombuffer("RGBA", (drawn.width, drawn.height), data, "raw", "RGBA", 0, 1)
        return image.crop((0, 0, min(image.width, self.width), image.height))
