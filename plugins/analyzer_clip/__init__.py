"""The ``clip`` plugin: clip-interrogator's five modes, with models loaded once and work shared.

Modes, meaning exactly what clip-interrogator 0.6 means by them:

- ``caption``: the caption model alone (``generate_caption``);
- ``best``: ``interrogate`` (caption + a flavor chain, the best of four candidates);
- ``fast``: ``interrogate_fast`` (caption + the top-ranked labels);
- ``classic``: ``interrogate_classic`` (caption, medium, artist, trending, movement, flavors);
- ``negative``: ``interrogate_negative`` (a chain of the labels least like the image).

This module imports nothing heavy: torch, open_clip and transformers load in :meth:`setup`,
and only when some image misses a CLIP mode. Install them with ``pip install 'analyzer[clip]'``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from analyzer.errors import ErrorType, PluginUnavailable
from analyzer.plugin import AnalyzerPlugin, Failure, ImageRef, Outcome, PluginOptions, Result, SharedWork

log = logging.getLogger(__name__)

__all__ = ["CAPTION_MODELS", "ClipOptions", "ClipPlugin", "hub_offline", "hub_unreachable", "weights_advice"]

CAPTION_MODELS = {
    "blip-base": "Salesforce/blip-image-captioning-base",
    "blip-large": "Salesforce/blip-image-captioning-large",
    "blip2-2.7b": "Salesforce/blip2-opt-2.7b",
    "blip2-flan-t5-xl": "Salesforce/blip2-flan-t5-xl",
    "git-large-coco": "microsoft/git-large-coco",
}
CaptionModel = Literal["blip-base", "blip-large", "blip2-2.7b", "blip2-flan-t5-xl", "git-large-coco"]


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE=1`` (or huggingface_hub's offline mode already on in this process)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return True
    hub = sys.modules.get("huggingface_hub.constants")
    return bool(hub is not None and hub.HF_HUB_OFFLINE)


def hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the Hugging Face hub cannot be reached (one TCP connection), or None when it can.

    Without this check, an offline machine spends about 25 s in huggingface_hub's retries before
    it falls back to the local cache. Behind a proxy the check is skipped (the proxy decides).
    """
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    url = urlsplit(constants.ENDPOINT)
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"{host}: {exc.strerror or exc}"


def weights_advice(
    clip_model: str, caption_model: str | None, model_dir: Path | None, exc: BaseException, offline: bool
) -> str:
    """The one message for models that cannot be loaded: what failed, where weights were looked
    for, the commands that fetch them, and how an offline machine fails at once."""
    arch, _, pretrained = clip_model.partition("/")
    where = model_dir or os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME") or "~/.cache/huggingface"
    cache_flag = f" --cache-dir {model_dir}" if model_dir else ""
    fetch = []
    try:
        import open_clip

        clip_repo = (open_clip.get_pretrained_cfg(arch, pretrained) or {}).get("hf_hub", "")
    except Exception:  # an unknown architecture: the names are what to check
        clip_repo = ""
    if clip_repo:
        fetch.append(f"hf download {clip_repo.rstrip('/')}{cache_flag}")
    else:
        fetch.append(
            'python -c "import open_clip; '
            f"open_clip.create_model_and_transforms('{arch}', pretrained='{pretrained}')\""
        )
    caption_repo = CAPTION_MODELS.get(caption_model or "", "")
    if caption_repo:
        fetch.append(f"hf download {caption_repo}")
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return (
        f"cannot load CLIP model {clip_model!r}"
        + (f" or caption model {caption_model!r}" if caption_model else "")
        + f" ({type(exc).__name__}: {first_line}). Weights are looked up in {where}"
        + (" only (offline)" if offline else "")
        + f"; with network access, download them once: {' and '.join(fetch)} "
        "(open_clip.list_pretrained() lists the CLIP model names). "
        + (
            ""
            if os.environ.get("HF_HUB_OFFLINE")
            else "On a machine without network, HF_HUB_OFFLINE=1 makes this fail at once."
        )
    ).rstrip()


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "analyzer" / "clip"


class ClipOptions(PluginOptions):
    """Settings of the ``clip`` plugin (``[clip]`` in TOML, ``ANALYZER_CLIP__<NAME>``)."""

    clip_model: str = Field(default="ViT-L-14/openai", pattern=r"^[^/]+/[^/]+$")
    """open_clip ``architecture/pretrained``: ``ViT-L-14/openai`` for SD 1.x,
    ``ViT-H-14/laion2b_s32b_b79k`` for SD 2.x."""
    caption_model: CaptionModel | None = "blip-large"
    """Captioning model of every mode but ``negative`` (BLIP, BLIP-2 or GIT)."""
    device: Literal["auto", "cuda", "mps", "cpu"] = "auto"
    """``auto``: CUDA, then Apple MPS, then the CPU."""
    fp16: bool = True
    """Half precision on CUDA (ignored elsewhere)."""
    low_vram: bool = False
    """clip-interrogator's low-VRAM defaults: blip-base, offloading, smaller chunks and chains."""
    caption_offload: bool = False
    """Keep the caption model on the CPU while it is not captioning (less VRAM, slower)."""
    clip_offload: bool = False
    """Keep the CLIP model on the CPU while it is not encoding (less VRAM, slower)."""
    chunk_size: int = Field(default=2048, ge=16)
    """Labels ranked (and chain candidates encoded) per batch: smaller uses less memory."""
    flavor_intermediate_count: int = Field(default=2048, ge=1)
    """Best-ranked flavors the ``best`` and ``negative`` chains choose from."""
    min_flavors: int = Field(default=8, ge=0)
    """Flavors the ``best`` chain adds at least."""
    max_flavors: int = Field(default=32, ge=1)
    """Flavors ``best``, ``fast`` and ``negative`` add at most."""
    classic_flavors: int = Field(default=3, ge=1)
    """Flavors in a ``classic`` prompt."""
    caption_max_length: int = Field(default=32, ge=1)
    """Longest caption, in tokens."""
    cache_dir: Path = Field(default_factory=default_cache_dir)
    """Label-embedding cache (clip-interrogator's own ``.safetensors`` format); default:
    ``$XDG_CACHE_HOME/analyzer/clip``, else ``~/.cache/analyzer/clip``."""
    model_dir: Path | None = None
    """Where open_clip keeps downloaded CLIP weights (default: the Hugging Face cache)."""
    data_path: Path | None = None
    """Folder with artists/flavors/mediums/movements/negative.txt (default: clip-interrogator's)."""
    download_cache: bool = True
    """Fetch precomputed label embeddings; off when ``HF_HUB_OFFLINE=1``."""
    prefix_cache: bool = True
    """Encode the chains' shared prompt prefix once (see bench/bench_clip.py for the near-tie rate)."""


@dataclass
class _Shared:
    """What one image's modes share: decoded once, encoded once, captioned once."""

    image: Any = None
    failure: Failure | None = None
    features: Any = None
    caption: str | None = None


NEEDS = {
    "caption": (False, True),
    "best": (True, True),
    "fast": (True, True),
    "classic": (True, True),
    "negative": (True, False),
}
"""mode -> (needs image features, needs a caption)"""


class ClipPlugin(AnalyzerPlugin):
    name = "clip"
    version = "1.0.0"
    modes = ("caption", "best", "fast", "classic", "negative")
    wildcard_modes = ("caption", "best", "fast", "classic", "negative")
    requires = ("torch", "open_clip", "clip_interrogator", "transformers")
    install_hint = "pip install 'analyzer[clip]'"
    batch_size_hint = 8
    concurrency_hint = 1
    Options = ClipOptions

    preloaded: ClassVar[Any] = None
    """Tests and embedders may set ready models here (an object with ``clip_model``,
    ``clip_preprocess``, ``caption_model``, ``caption_processor`` and ``clip_model_name``)."""

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        assert isinstance(self.options, ClipOptions)
        self.opts: ClipOptions = self.options
        if self.opts.low_vram:
            self.opts.caption_model = "blip-base"
            self.opts.caption_offload = self.opts.clip_offload = True
            self.opts.chunk_size = 1024
            self.opts.flavor_intermediate_count = 1024
        self.engine: Any = None
        self._shared: SharedWork[str, _Shared] = SharedWork(capacity=4 * self.batch_size)
        self._executor: ThreadPoolExecutor | None = None
        self._labels_tag = self._label_hash() if self.opts.data_path else ""

    # -- identity ----------------------------------------------------------------------
    def _label_hash(self) -> str:
        digest = hashlib.sha256()
        assert self.opts.data_path is not None
        for name in ("artists", "flavors", "mediums", "movements", "negative"):
            path = self.opts.data_path / f"{name}.txt"
            digest.update(path.read_bytes() if path.exists() else b"")
        return digest.hexdigest()[:8]

    def _clip_name(self) -> str:
        return str(self.preloaded.clip_model_name) if self.preloaded is not None else self.opts.clip_model

    def model_ids(self, mode: str) -> tuple[str, ...]:
        return (self._model_id(mode),)

    def _model_id(self, mode: str) -> str:
        o = self.opts
        clip = self._clip_name()
        caption = f"{o.caption_model}:{o.caption_max_length}"
        labels = f",labels={self._labels_tag}" if self._labels_tag else ""
        if mode == "caption":
            return caption
        if mode == "negative":
            return f"{clip}(flavors={o.max_flavors},inter={o.flavor_intermediate_count},chunk={o.chunk_size}{labels})"
        if mode == "best":
            detail = f"flavors={o.min_flavors}-{o.max_flavors},inter={o.flavor_intermediate_count}"
        elif mode == "fast":
            detail = f"flavors={o.max_flavors}"
        else:
            detail = f"flavors={o.classic_flavors}"
        return f"{clip}+{caption}({detail},chunk={o.chunk_size}{labels})"

    def parameters(self, mode: str) -> dict[str, Any]:
        o = self.opts
        return {
            "clip_model": self._clip_name(),
            "caption_model": o.caption_model if mode != "negative" else None,
            "caption_model_id": CAPTION_MODELS.get(o.caption_model or "") if mode != "negative" else None,
            "caption_max_length": o.caption_max_length if mode != "negative" else None,
            "max_flavors": {"classic": o.classic_flavors, "caption": None}.get(mode, o.max_flavors),
            "min_flavors": o.min_flavors if mode == "best" else None,
            "flavor_intermediate_count": o.flavor_intermediate_count if mode in ("best", "negative") else None,
            "chunk_size": o.chunk_size,
            "device": self.engine.device if self.engine is not None else None,
            "prefix_cache": o.prefix_cache if mode in ("best", "negative") else None,
        }

    # -- life cycle --------------------------------------------------------------------
    def _device(self) -> str:
        import torch

        if self.opts.device != "auto":
            return self.opts.device
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"

    def _config(self, device: str, offline: bool) -> Any:
        from clip_interrogator import Config

        o = self.opts
        config = Config(
            clip_model_name=o.clip_model,
            clip_model_path=str(o.model_dir) if o.model_dir else None,
            caption_model_name=o.caption_model,
            caption_max_length=o.caption_max_length,
            caption_offload=o.caption_offload,
            clip_offload=o.clip_offload,
            cache_path=str(o.cache_dir),
            download_cache=o.download_cache and not offline,
            chunk_size=o.chunk_size,
            device=device,
            flavor_intermediate_count=o.flavor_intermediate_count,
            quiet=not sys.stderr.isatty(),
        )
        if o.data_path is not None:
            config.data_path = str(o.data_path)
        if self.preloaded is not None:
            config.clip_model_name = self.preloaded.clip_model_name
            config.clip_model = self.preloaded.clip_model
            config.clip_preprocess = self.preloaded.clip_preprocess
            config.caption_model = self.preloaded.caption_model
            config.caption_processor = self.preloaded.caption_processor
        return config

    def _go_offline_if_unreachable(self) -> bool:
        """True when the hub is not to be asked (offline); switches huggingface_hub to its offline
        mode when the hub cannot be reached, so cached weights load at once and missing ones fail at once."""
        if hub_offline():
            return True
        why = hub_unreachable()
        if why is None:
            return False
        from huggingface_hub import constants

        constants.HF_HUB_OFFLINE = True  # read at call time by huggingface_hub and transformers
        log.info(
            "the Hugging Face hub cannot be reached (%s): weights come from the local cache only "
            "(HF_HUB_OFFLINE=1 skips this check)",
            why,
        )
        return True

    def _load(self) -> Any:
        import torch
        from clip_interrogator import Interrogator

        from analyzer.logs import route_library_logs

        from .engine import FastInterrogator

        route_library_logs()  # transformers and huggingface_hub would print every warning twice
        offline = self._go_offline_if_unreachable()
        from .models import load_open_clip

        device = self._device()
        config = self._config(device, offline)
        o = self.opts
        log.info(
            "loading CLIP model %s and caption model %s on %s (label embeddings cached in %s)",
            config.clip_model_name,
            o.caption_model,
            device,
            o.cache_dir,
        )
        try:
            if config.clip_model is None:  # the process's one copy, shared with the classify plugin
                model_dir = str(o.model_dir) if o.model_dir else None
                config.clip_model, config.clip_preprocess = load_open_clip(o.clip_model, device, model_dir)
            interrogator = Interrogator(config)
        except torch.cuda.OutOfMemoryError as exc:
            raise PluginUnavailable(
                self.name,
                f"out of GPU memory loading {o.clip_model} / {o.caption_model}: set "
                "ANALYZER_CLIP__LOW_VRAM=true, a smaller model, or ANALYZER_CLIP__DEVICE=cpu",
            ) from exc
        except Exception as exc:  # missing weights, unknown names, no network: say what to do
            raise PluginUnavailable(self.name, self.load_advice(exc, offline)) from exc
        if device == "cuda" and not o.fp16:
            interrogator.dtype = torch.float32
            interrogator.clip_model = interrogator.clip_model.float()
            if interrogator.caption_model is not None:
                interrogator.caption_model = interrogator.caption_model.float()
        return FastInterrogator(interrogator, prefix_cache=o.prefix_cache)

    def load_advice(self, exc: BaseException, offline: bool) -> str:
        """One message: what failed, where weights were looked for, the commands that fetch them."""
        o = self.opts
        return weights_advice(o.clip_model, o.caption_model, o.model_dir, exc, offline)

    async def setup(self) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="analyzer-clip")
        loop = asyncio.get_running_loop()
        self.engine = await loop.run_in_executor(self._executor, self._load)

    async def close(self) -> None:
        self.engine = None
        self._shared = SharedWork(capacity=4 * self.batch_size)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    # -- analysis ----------------------------------------------------------------------
    async def analyze(self, mode: str, model_id: str, images: Sequence[ImageRef]) -> Sequence[Outcome]:
        assert self._executor is not None, "setup() was not called"
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._analyze_sync, mode, list(images))

    def _state(self, image: ImageRef) -> _Shared:
        def load() -> _Shared:
            found = image.read(lambda opened: opened.convert("RGB"))
            return _Shared(failure=found) if isinstance(found, Failure) else _Shared(image=found)

        return self._shared.get_or_compute(image.hash, load)

    def _prepare(self, states: list[_Shared], features: bool, caption: bool) -> None:
        """Compute what the batch still lacks: features in one pass, captions in one pass."""
        from .engine import split_on_oom

        engine = self.engine
        usable = [s for s in states if s.failure is None]
        if features:
            todo = [s for s in usable if s.features is None]
            if todo:
                rows = split_on_oom(
                    lambda items: list(engine.features([s.image for s in items]).split(1)),
                    todo,
                    lambda: engine.move_to("cpu"),
                )
                for state, row in zip(todo, rows, strict=True):
                    state.features = row
        if caption:
            todo = [s for s in usable if s.caption is None]
            if todo:
                if engine.ci.caption_model is None:
                    for state in todo:
                        state.failure = Failure(
                            ErrorType.CONFIG_ERROR, "no caption model configured (ANALYZER_CLIP__CAPTION_MODEL)"
                        )
                    return
                texts = split_on_oom(
                    lambda items: engine.captions([s.image for s in items]), todo, lambda: engine.move_to("cpu")
                )
                for state, text in zip(todo, texts, strict=True):
                    state.caption = text
        for state in usable:  # decoded pixels can be large: keep them only while something still needs them
            if state.features is not None and state.caption is not None:
                state.image = None

    def _stored_features(self, images: list[ImageRef], states: list[_Shared]) -> None:
        """Image features already in the roots' embedding stores (made by this plugin or by
        ``classify`` with the same model) are used instead of encoding the image again."""
        import torch

        model_id = self._clip_name()
        for image, state in zip(images, states, strict=True):
            if state.features is None and state.failure is None and image.embeddings is not None and image.hash:
                (stored,) = image.embeddings.model(model_id).get([image.hash])
                if stored is not None:
                    state.features = torch.from_numpy(stored)[None, :].to(self.engine.device, self.engine.ci.dtype)

    def _keep_features(self, images: list[ImageRef], states: list[_Shared]) -> None:
        """Features computed here go to the roots' embedding stores (float32), for the next run and ``classify``."""
        model_id = self._clip_name()
        touched = {}
        for image, state in zip(images, states, strict=True):
            if state.features is None or image.embeddings is None or not image.hash:
                continue
            store = image.embeddings.model(model_id)
            if store.missing([image.hash]):
                store.put([image.hash], state.features.float().cpu().numpy().reshape(1, -1))
                touched[id(store)] = store
        for store in touched.values():
            store.flush()

    def _analyze_sync(self, mode: str, images: list[ImageRef]) -> list[Outcome]:
        import torch

        states = [self._state(image) for image in images]
        needs_features, needs_caption = NEEDS[mode]
        if needs_features:
            self._stored_features(images, states)
        try:
            self._prepare(states, needs_features, needs_caption)
        except torch.cuda.OutOfMemoryError as exc:
            return [Failure(ErrorType.OUT_OF_MEMORY, str(exc), retryable=True) for _ in images]
        if needs_features:
            self._keep_features(images, states)
        o = self.opts
        engine = self.engine
        params = self.parameters(mode)
        out: list[Outcome] = []
        for state in states:
            if state.failure is not None:
                out.append(state.failure)
                continue
            try:
                if mode == "caption":
                    value = state.caption
                elif mode == "classic":
                    value = engine.classic(state.features, state.caption, o.classic_flavors)
                elif mode == "fast":
                    value = engine.fast(state.features, state.caption, o.max_flavors)
                elif mode == "best":
                    value = engine.best(state.features, state.caption, o.min_flavors, o.max_flavors)
                else:
                    value = engine.negative(state.features, o.max_flavors)
            except torch.cuda.OutOfMemoryError as exc:
                out.append(Failure(ErrorType.OUT_OF_MEMORY, str(exc), retryable=True))
                continue
            out.append(Result(value, params))
        return out
