"""The model boundary of the ``classify`` plugin: images and texts in, unit-length float32 vectors out.

:class:`OpenClipEmbedder` is the real one (open_clip, loaded once per process and model id);
tests put a small deterministic :class:`Embedder` of their own in its place with :func:`preload`.
:class:`LazyEmbedder` builds one at its first use, so a relabel whose image and text embeddings
are all stored never loads a model (seconds, and the model's memory, saved).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    from PIL import Image

    Matrix = npt.NDArray[np.float32]

log = logging.getLogger(__name__)


class Embedder(Protocol):
    """Encodes images and texts into the same space; every row has unit length."""

    model_id: str

    def prepare(self, image: Image.Image) -> Any:
        """What :meth:`encode_images` takes for one decoded image (a tensor, say); runs in any thread."""
        ...

    def encode_images(self, prepared: Sequence[Any]) -> Matrix: ...

    def encode_texts(self, texts: Sequence[str]) -> Matrix: ...


class OpenClipEmbedder:
    """An open_clip model: ``architecture/pretrained`` (``ViT-B-32/openai``), as clip-interrogator uses it."""

    def __init__(self, model_id: str, model: Any, preprocess: Any, tokenizer: Any, device: str) -> None:
        self.model_id = model_id
        self.model = model
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.device = device
        self._lock = threading.Lock()  # one forward pass at a time: the model is shared by the process

    def prepare(self, image: Image.Image) -> Any:
        return self.preprocess(image.convert("RGB"))

    def encode_images(self, prepared: Sequence[Any]) -> Matrix:
        import torch

        with self._lock, torch.no_grad():
            dtype = next(self.model.parameters()).dtype  # half precision on CUDA, as clip-interrogator loads it
            batch = torch.stack(list(prepared)).to(self.device, dtype)
            features = self.model.encode_image(batch).float()
            features /= features.norm(dim=-1, keepdim=True)
            result: Matrix = features.cpu().numpy()
            return result

    def encode_texts(self, texts: Sequence[str]) -> Matrix:
        import torch

        from analyzer_clip.models import encode_text_trimmed, trims_text

        with self._lock, torch.no_grad():
            tokens = self.tokenizer(list(texts)).to(self.device)
            if trims_text(self.model):  # each prompt up to its end token: the padding changes nothing
                features = encode_text_trimmed(self.model, tokens).float()
            else:
                features = self.model.encode_text(tokens).float()
            features /= features.norm(dim=-1, keepdim=True)
            result: Matrix = features.cpu().numpy()
            return result

    def to_cpu(self) -> None:
        """After CUDA ran out of memory: a full-precision copy on the CPU (the shared model stays)."""
        import copy

        self.model = copy.deepcopy(self.model).to("cpu").float()
        self.device = "cpu"


class LazyEmbedder:
    """An :class:`Embedder` built by ``build`` when it is first asked for a vector (thread-safe)."""

    def __init__(self, model_id: str, build: Callable[[], Embedder]) -> None:
        self.model_id = model_id
        self._build = build
        self._inner: Embedder | None = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._inner is not None

    def get(self) -> Embedder:
        with self._lock:
            if self._inner is None:
                self._inner = self._build()
            return self._inner

    def prepare(self, image: Image.Image) -> Any:
        return self.get().prepare(image)

    def encode_images(self, prepared: Sequence[Any]) -> Matrix:
        return self.get().encode_images(prepared)

    def encode_texts(self, texts: Sequence[str]) -> Matrix:
        return self.get().encode_texts(texts)

    def to_cpu(self) -> None:
        getattr(self.get(), "to_cpu", lambda: None)()


_loaded: dict[tuple[str, str], Embedder] = {}
_preloaded: dict[str, Embedder] = {}
_load_lock = threading.Lock()


def preload(embedder: Embedder) -> None:
    """Use ``embedder`` for its model id in this process instead of loading it (tests, embedding apps)."""
    _preloaded[embedder.model_id] = embedder


def forget_preloaded() -> None:
    _preloaded.clear()


def check(model_id: str, cache_dir: str | None = None) -> None:
    """Raise what loading ``model_id`` would raise for weights that are missing and cannot be
    downloaded, without building the model: they are fetched into the cache if they can be. A name
    this cannot judge (an unknown tag, say) is loaded, so its error is open_clip's own."""
    if model_id in _preloaded or any(key[0] == model_id for key in _loaded):
        return
    import open_clip

    arch, _, pretrained = model_id.partition("/")
    if not pretrained or os.path.isfile(pretrained):
        return
    cfg = open_clip.get_pretrained_cfg(arch, pretrained) if arch in open_clip.list_models() else None
    if cfg:
        open_clip.download_pretrained(cfg, cache_dir=cache_dir)
    else:
        load(model_id, "cpu", cache_dir)


def load(model_id: str, device: str, cache_dir: str | None = None) -> Embedder:
    """The embedder of ``model_id`` on ``device``: the process's one loaded copy of the model (shared
    with the ``clip`` plugin through :mod:`analyzer_clip.models`). Raises on failure."""
    if model_id in _preloaded:
        return _preloaded[model_id]
    with _load_lock:
        key = (model_id, device)
        if key not in _loaded:
            import open_clip

            from analyzer_clip.models import load_open_clip

            model, preprocess = load_open_clip(model_id, device, cache_dir)
            tokenizer = open_clip.get_tokenizer(model_id.partition("/")[0])
            _loaded[key] = OpenClipEmbedder(model_id, model, preprocess, tokenizer, device)
        return _loaded[key]
