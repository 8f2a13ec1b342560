"""The model boundary of the ``classify`` plugin: images and texts in, unit-length float32 vectors out.

:class:`OpenClipEmbedder` is the real one (open_clip, loaded once per process and model id);
tests put a small deterministic :class:`Embedder` of their own in its place with :func:`preload`.
:class:`LazyEmbedder` builds one at its first use, so a relabel whose image and text embeddings
are all stored never loads a model (seconds, and the model's memory, saved).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
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


def preloaded(model_id: str) -> Embedder | None:
    """The embedder :func:`preload` gave for ``model_id``, if any."""
    return _preloaded.get(model_id)


def forget_preloaded() -> None:
    _preloaded.clear()


def check(
    model_id: str,
    cache_dir: str | None = None,
    record: Path | None = None,
    before_import: Callable[[], None] | None = None,
) -> None:
    """Raise what loading ``model_id`` would raise for weights that are missing and cannot be
    downloaded, without building the model: they are fetched into the cache if they can be. A name
    this cannot judge (an unknown tag, say) is loaded, so its error is open_clip's own.

    ``record`` (a small JSON file) remembers where each model's checkpoint was found: while that
    file exists, the next check imports nothing (no torch, no open_clip: a relabel from stored
    embeddings starts in a fraction of a second and never holds torch's memory)."""
    if model_id in _preloaded or any(key[0] == model_id for key in _loaded):
        return
    if record is not None and _recorded(record, model_id):
        return
    if before_import is not None:
        before_import()
    import open_clip

    arch, _, pretrained = model_id.partition("/")
    if not pretrained or os.path.isfile(pretrained):
        return
    cfg = open_clip.get_pretrained_cfg(arch, pretrained) if arch in open_clip.list_models() else None
    if cfg:
        found = open_clip.download_pretrained(cfg, cache_dir=cache_dir)
        if record is not None and found and os.path.isfile(found):
            _record(record, model_id, found)
    else:
        load(model_id, "cpu", cache_dir)


def _recorded(record: Path, model_id: str) -> bool:
    try:
        found = json.loads(record.read_text(encoding="utf-8")).get(model_id)
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(found, str) and os.path.isfile(found)


def _record(record: Path, model_id: str, path: str) -> None:
    try:
        known = json.loads(record.read_text(encoding="utf-8"))
        if not isinstance(known, dict):
            known = {}
    except (OSError, ValueError):
        known = {}
    known[model_id] = path
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        tmp = record.with_name(f".{record.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, record)
    except OSError as exc:  # a cache: the next check looks again
        log.debug("cannot record where %s's weights are: %s", model_id, exc)


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
