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
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from importlib.metadata import version as dist_version
from typing import TYPE_CHECKING, Any, ClassVar

from analyzer.errors import ErrorType
from analyzer.plugin import AnalyzerPlugin, Failure, ImageRef, Outcome, Result, SharedWork

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


class MetadataPlugin(AnalyzerPlugin):
    name = "metadata"
    version = "1.0.0"
    modes = ("image", "parameters", "prompt", "negative")
    wildcard_modes = ("prompt", "negative")
    requires = ("sd_parsers", "PIL")
    install_hint = "pip install sd-parsers pillow"
    batch_size_hint = 16
    concurrency_hint = 2

    MODEL_IDS: ClassVar[dict[str, str]] = {
        "image": "pillow",
        "parameters": "sd-parsers",
        "prompt": "sd-parsers",
        "negative": "sd-parsers",
    }

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self._shared: SharedWork[str, Parsed] = SharedWork(capacity=512)
        self._versions: dict[str, str] = {}

    async def setup(self) -> None:
        self._versions = {"pillow": dist_version("pillow"), "sd-parsers": dist_version("sd-parsers")}

    def model_ids(self, mode: str) -> tuple[str, ...]:
        return (self.MODEL_IDS[mode],)

    async def analyze(self, mode: str, model_id: str, images: Sequence[ImageRef]) -> Sequence[Outcome]:
        return await asyncio.to_thread(self._analyze_sync, mode, images)

    def _analyze_sync(self, mode: str, images: Sequence[ImageRef]) -> list[Outcome]:
        model = self.MODEL_IDS[mode]
        parameters = {"library_version": self._versions[model]}
        out: list[Outcome] = []
        for image in images:
            parsed = self._shared.get_or_compute(image.hash, partial(read_metadata, image))
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
