"""A small deterministic embedder for tests: colours in images, colour words in texts.

An image becomes its mean colour (unit length); a text becomes the colour words it names (``red``,
``green``, ``blue``), or a neutral grey when it names none. So a red image is closest to "a
photo of a red", and a test can say which label is right, not just that there is one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image

COLOURS = {"red": 0, "green": 1, "blue": 2}


class ColourEmbedder:
    def __init__(self, model_id: str = "colour/test") -> None:
        self.model_id = model_id
        self.prepared = 0
        """Images decoded and prepared (what a stored embedding saves)."""
        self.encoded_images = 0
        self.encoded_texts = 0

    def prepare(self, image: Image.Image) -> Any:
        import numpy as np

        self.prepared += 1
        return np.asarray(image.convert("RGB"), dtype=np.float32).reshape(-1, 3).mean(axis=0)

    def encode_images(self, prepared: Sequence[Any]) -> Any:
        import numpy as np

        self.encoded_images += len(prepared)
        rows = np.stack(list(prepared)).astype(np.float32) + 1e-3
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    def encode_texts(self, texts: Sequence[str]) -> Any:
        import numpy as np

        self.encoded_texts += len(texts)
        rows = np.full((len(texts), 3), 0.05, dtype=np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().replace(".", " ").split():
                if word in COLOURS:
                    rows[i, COLOURS[word]] = 1.0
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)
