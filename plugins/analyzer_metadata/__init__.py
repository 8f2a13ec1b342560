"""The ``metadata`` plugin: image facts and embedded Stable Diffusion generation parameters.

No machine learning. Modes (all computed from one decode of the image, shared between modes):

- ``image``: format, width, height, colour mode, frame count;
- ``parameters``: what the generator embedded (AUTOMATIC1111/Forge, ComfyUI, Fooocus,
  InvokeAI, NovelAI, as read by the sd-parsers library): generator, prompts, seed, steps,
  sampler, CFG scale, model; ``null`` for an image without generation metadata;
- ``prompt`` and ``negative``: the positive and negative prompt as one string each
  (``null`` when there is none); they feed ``metadata_prompt.txt`` and ``metadata_negative.txt``.

Every image is decoded completely, so truncated and corrupt files are reported here.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from importlib.metadata import version as dist_version
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from analyzer.errors import ErrorType
from analyzer.plugin import AnalyzerPlugin, Failure, ImageRef, Outcome, PluginOptions, Result, SharedWork

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

__all__ = ["MetadataPlugin", "read_metadata"]


@dataclass
class Parsed:
    image: dict[str, Any] | None = None
    parameters: dict[str, Any] | None = None
    parameters_error: str | None = None
    failure: Failure | None = None


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _parameters(prompt_info: Any) -> dict[str, Any]:
    samplers = list(prompt_info.samplers)
    first = samplers[0] if samplers else None
    params: dict[str, Any] = dict(first.parameters) if first is not None else {}
    model = first.model if first is not None else None
    prompts = [str(p) for p in prompt_info.prompts]
    negatives = [str(p) for p in prompt_info.negative_prompts]
    data: dict[str, Any] = _jsonable(
        {
            "generator": prompt_info.generator.name,
            "prompt": ", ".join(prompts) or None,
            "negative_prompt": ", ".join(negatives) or None,
            "prompts": prompts,
            "negative_prompts": negatives,
            "seed": params.pop("seed", None),
            "steps": params.pop("steps", None) or prompt_info.metadata.get("steps"),
            "sampler": first.name if first is not None else None,
            "cfg_scale": params.pop("cfg_scale", None),
            "model": model.name if model is not None else None,
            "model_hash": model.hash if model is not None else None,
            "sampler_parameters": params,
            "samplers": [
                {"name": s.name, "parameters": s.parameters, "model": str(s.model) if s.model else None}
                for s in samplers
            ],
            "extra": prompt_info.metadata,
        }
    )
    return data


def parse_image(image: Image.Image) -> Parsed:
    """Everything every mode needs, from one decoded image."""
    from sd_parsers import ParserManager

    facts = {
        "format": image.format,
        "width": image.width,
        "height": image.height,
        "mode": image.mode,
        "frames": getattr(image, "n_frames", 1),
    }
    parsed = Parsed(image=facts)
    try:
        info = ParserManager().parse(image)
        parsed.parameters = _parameters(info) if info is not None else None
    except Exception as exc:  # a parser bug on odd metadata must not lose the image facts
        parsed.parameters_error = f"cannot read generation parameters: {exc}"
    return parsed


def read_metadata(image: ImageRef) -> Parsed:
    """Decode the image once and read everything every mode needs (blocking)."""
    found = image.read(parse_image)
    return Parsed(failure=found) if isinstance(found, Failure) else found


def read_many(images: Sequence[ImageRef]) -> list[Parsed]:
    """:func:`read_metadata` for a batch: what a worker process is sent."""
    return [read_metadata(image) for image in images]


def _warm_up() -> None:
    """In a new worker process: end with the analyzer that started it (Linux: a kill -9 of the
    analyzer must not leave workers behind), then import what decoding needs."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # it is gone already
            os._exit(1)
    import sd_parsers  # noqa: F401
    from PIL import Image, PngImagePlugin  # noqa: F401


class MetadataOptions(PluginOptions):
    workers: int | None = Field(default=None, ge=0, le=64)
    """Processes decoding images and parsing their metadata (default: the CPU count, at most 4;
    ``0``: threads of this process). Decoding and parsing hold Python's GIL, so processes let them
    use every core while the engine hashes and writes."""


class MetadataPlugin(AnalyzerPlugin):
    name = "metadata"
    version = "1.0.0"
    modes = ("image", "parameters", "prompt", "negative")
    wildcard_modes = ("prompt", "negative")
    requires = ("sd_parsers", "PIL")
    install_hint = "pip install sd-parsers pillow"
    batch_size_hint = 64
    """Large batches: a batch's sidecars are synced to disk together, and each batch is one task for a worker."""
    Options = MetadataOptions

    MODEL_IDS: ClassVar[dict[str, str]] = {
        "image": "pillow",
        "parameters": "sd-parsers",
        "prompt": "sd-parsers",
        "negative": "sd-parsers",
    }

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        assert isinstance(self.options, MetadataOptions)
        self.workers = self.options.workers if self.options.workers is not None else min(4, os.cpu_count() or 1)
        # every mode of a batch reads it: at least the batches in flight must fit
        self._shared: SharedWork[str, Parsed] = SharedWork(capacity=max(512, 2 * self.batch_size * self.concurrency))
        self._versions: dict[str, str] = {}
        self._pool: ProcessPoolExecutor | None = None

    @property
    def concurrency(self) -> int:
        return self.options.concurrency or max(2, self.workers)

    async def setup(self) -> None:
        self._versions = {"pillow": dist_version("pillow"), "sd-parsers": dist_version("sd-parsers")}
        if self.workers > 0:
            self._pool = self._new_pool()

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)

    async def _restart_pool(self) -> None:
        await self.close()
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        # spawn: workers start as new interpreters, never as forks of this threaded process, and are
        # this process's own children, so they end with it (see _warm_up), even after a kill -9
        context = multiprocessing.get_context("spawn")
        return ProcessPoolExecutor(self.workers, mp_context=context, initializer=_warm_up)

    def model_ids(self, mode: str) -> tuple[str, ...]:
        return (self.MODEL_IDS[mode],)

    async def analyze(self, mode: str, model_id: str, images: Sequence[ImageRef]) -> Sequence[Outcome]:
        todo = [image for image in images if self._shared.get(image.hash) is None]
        if todo:
            loop = asyncio.get_running_loop()
            if self._pool is not None:
                try:
                    found = await loop.run_in_executor(self._pool, read_many, todo)
                except BrokenProcessPool as exc:  # a worker died (out of memory on a huge image, say)
                    await self._restart_pool()
                    log.warning("metadata: a worker process died (%s); started new ones", exc)
                    failure = Failure(ErrorType.PLUGIN_ERROR, f"a worker process died: {exc}", retryable=True)
                    return [failure] * len(images)
            else:
                found = await asyncio.to_thread(read_many, todo)
            for image, parsed in zip(todo, found, strict=True):
                self._shared.put(image.hash, parsed)
        return self._outcomes(mode, images)

    def _outcomes(self, mode: str, images: Sequence[ImageRef]) -> list[Outcome]:
        model = self.MODEL_IDS[mode]
        parameters = {"library_version": self._versions[model]}
        out: list[Outcome] = []
        for image in images:
            parsed = self._shared.get(image.hash) or read_metadata(image)
            if parsed.failure is not None:
                out.append(parsed.failure)
            elif mode == "image":
                out.append(Result(parsed.image, parameters))
            elif parsed.parameters_error is not None:
                out.append(Failure(ErrorType.METADATA_ERROR, parsed.parameters_error))
            elif mode == "parameters":
                out.append(Result(parsed.parameters, parameters))
            else:
                key = "prompt" if mode == "prompt" else "negative_prompt"
                value = parsed.parameters.get(key) if parsed.parameters else None
                out.append(Result(value, parameters))
        return out
