"""One loaded copy of each open_clip model per process, shared by the plugins that use it.

The ``clip`` plugin (through clip-interrogator) and the ``classify`` plugin ask here, so when
both use ``ViT-L-14/openai`` its weights are in memory once. Loaded as clip-interrogator loads
them: half precision on CUDA, full precision elsewhere.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

_loaded: dict[tuple[str, str], tuple[Any, Any]] = {}
_lock = threading.Lock()


def load_open_clip(model_id: str, device: str, cache_dir: str | None = None) -> tuple[Any, Any]:
    """``(model, preprocess)`` of ``architecture/pretrained`` on ``device``, loaded at the first call.

    Raises what open_clip raises (missing weights, unknown names): callers turn it into advice.
    """
    with _lock:
        key = (model_id, device)
        if key not in _loaded:
            import open_clip

            arch, _, pretrained = model_id.partition("/")
            model, _, preprocess = open_clip.create_model_and_transforms(
                arch,
                pretrained=pretrained or None,
                precision="fp16" if device == "cuda" else "fp32",
                device=device,
                jit=False,
                cache_dir=cache_dir,
            )
            model.eval()
            _loaded[key] = (model, preprocess)
        return _loaded[key]


def share(model_id: str, device: str, model: Any, preprocess: Any) -> None:
    """Use this already loaded model for ``model_id`` on ``device`` (tests, embedding applications)."""
    with _lock:
        _loaded[(model_id, device)] = (model, preprocess)


def forget(model_id: str | None = None) -> None:
    """Drop loaded models (all, or one id's), so their memory can be freed."""
    with _lock:
        for key in [k for k in _loaded if model_id is None or k[0] == model_id]:
            del _loaded[key]


def split_on_oom(run: Callable[[list[Any]], list[Any]], items: list[Any], on_cpu: Callable[[], None]) -> list[Any]:
    """Run ``run(items)``; on CUDA out-of-memory retry in halves, and at one item fall back to the CPU."""
    torch = sys.modules.get("torch")
    if torch is None:  # no model of torch's loaded (a test embedder): no CUDA memory to run out of
        return run(items)
    try:
        return run(items)
    except torch.cuda.OutOfMemoryError:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if len(items) > 1:
            half = len(items) // 2
            log.warning("CUDA out of memory on a batch of %d: retrying in batches of %d", len(items), half)
            return split_on_oom(run, items[:half], on_cpu) + split_on_oom(run, items[half:], on_cpu)
        log.warning("CUDA out of memory on a single image: moving the CLIP models to the CPU for this run")
        on_cpu()
        return run(items)


def trims_text(model: Any) -> bool:
    """Whether ``model``'s text tower is causal and pooled at its end token (CLIP's own, in open_clip):
    then the padding after a prompt's end token changes nothing and can be left out."""
    return (
        getattr(model, "attn_mask", None) is not None
        and getattr(model, "text_pool_type", None) == "argmax"
        and hasattr(model, "token_embedding")
        and hasattr(model, "positional_embedding")
    )


def encode_text_trimmed(model: Any, tokens: Any, batch: int = 256) -> Any:
    """``model.encode_text(tokens)``, each row computed only up to its end token, in batches of
    similar length: a prompt of 12 tokens costs about a sixth of the 77-token context. Only for
    a model :func:`trims_text` accepts (the end token has the largest id, as in CLIP's tokenizer)."""
    import torch

    lengths = tokens.argmax(dim=-1) + 1
    order = lengths.argsort()
    out: Any = None
    for start in range(0, len(tokens), batch):
        rows = order[start : start + batch]
        encoded = _encode_prefix_tokens(model, tokens[rows, : int(lengths[rows].max())])
        if out is None:
            out = torch.empty(len(tokens), encoded.shape[-1], dtype=encoded.dtype, device=encoded.device)
        out[rows] = encoded
    return out


def _encode_prefix_tokens(model: Any, tokens: Any) -> Any:
    import torch
    from open_clip.transformer import text_global_pool

    length = tokens.shape[1]
    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast) + model.positional_embedding[:length].to(cast)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = text_global_pool(model.ln_final(x), tokens, "argmax")
    projection = model.text_projection
    if projection is not None:
        x = projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection
    return x
