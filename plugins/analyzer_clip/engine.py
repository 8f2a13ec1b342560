"""clip-interrogator's five modes, computed with shared and batched work.

:class:`FastInterrogator` wraps a loaded ``clip_interrogator.Interrogator`` (which loads the
models and the label tables, in its own on-disk cache format) and answers the same questions
its ``generate_caption``/``interrogate*`` methods answer, with three changes of method and none
of result:

- image features and captions are computed once per image, for a whole batch at a time, and
  shared by every mode;
- label tables are stacked into one tensor once, instead of once per ranking call;
- the flavor chains of ``best`` and ``negative`` tokenize each label once and assemble token
  ids, and encode the prompt they all share once: CLIP's text transformer is causal, so the
  keys and values of the shared prefix are the same for every candidate, and only each
  candidate's few suffix tokens are run through the layers (:class:`PrefixTextEncoder`).

The prefix cache computes the same function in a different order of floating-point operations,
so a near-tie between two candidates can in principle resolve differently; ``bench/bench_clip.py``
measures how often. ``prefix_cache=False`` encodes every candidate in full, as clip-interrogator
does, with identical results.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from clip_interrogator.clip_interrogator import Interrogator, _prompt_at_max_len, _truncate_to_fit
from PIL import Image

from .models import split_on_oom as split_on_oom  # re-exported: it lives beside the shared models

log = logging.getLogger(__name__)


def autocast(device: str) -> Any:
    """What clip-interrogator's ``torch.cuda.amp.autocast()`` does, without its deprecation warning."""
    return torch.autocast(device_type="cuda", dtype=torch.float16, enabled=str(device).startswith("cuda"))


class FastTable:
    """A clip-interrogator ``LabelTable`` with its embeddings stacked once; ranks identically."""

    def __init__(self, labels: list[str], embeds: torch.Tensor, chunk_size: int) -> None:
        self.labels = labels
        self.embeds = embeds
        self.chunk_size = chunk_size

    @classmethod
    def from_tables(cls, tables: Sequence[Any], device: str, chunk_size: int) -> FastTable:
        labels: list[str] = []
        arrays: list[np.ndarray] = []
        for table in tables:
            labels.extend(table.labels)
            arrays.extend(table.embeds)
        stacked = torch.from_numpy(np.stack(arrays)) if arrays else torch.zeros(0)
        return cls(labels, stacked.to(device), chunk_size)

    def to(self, device: str) -> None:
        self.embeds = self.embeds.to(device)
        if device == "cpu":
            self.embeds = self.embeds.float()

    def _rank(self, features: torch.Tensor, embeds: torch.Tensor, top_count: int, reverse: bool) -> list[int]:
        top_count = min(top_count, len(embeds))
        with autocast(str(embeds.device)):
            similarity = features @ embeds.T
            if reverse:
                similarity = -similarity
        _, top = similarity.float().cpu().topk(top_count, dim=-1)
        return [int(top[0][i]) for i in range(top_count)]

    def rank(self, features: torch.Tensor, top_count: int = 1, reverse: bool = False) -> list[str]:
        if len(self.labels) <= self.chunk_size:
            return [self.labels[i] for i in self._rank(features, self.embeds, top_count, reverse)]
        num_chunks = math.ceil(len(self.labels) / self.chunk_size)
        keep_per_chunk = int(self.chunk_size / num_chunks)
        picked: list[int] = []
        for chunk in range(num_chunks):
            start = chunk * self.chunk_size
            stop = min(start + self.chunk_size, len(self.labels))
            picked.extend(start + i for i in self._rank(features, self.embeds[start:stop], keep_per_chunk, reverse))
        # clip-interrogator 0.6 ranks the survivors without ``reverse``: kept, to give its answers
        tops = self._rank(features, self.embeds[picked], top_count, False)
        return [self.labels[picked[i]] for i in tops]


class PrefixTextEncoder:
    """Similarities of many prompts ``prefix + suffix_i`` to an image, encoding the prefix once.

    Works on open_clip's built-in text tower (``CLIP`` with ``ResidualAttentionBlock`` layers,
    causal mask, argmax pooling) and its ``SimpleTokenizer``; :meth:`supports` says whether a
    model qualifies. Token ids are assembled from per-label token lists, so no candidate string
    is ever tokenized.
    """

    def __init__(self, model: Any, tokenizer: Any, context_length: int = 77) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.context = context_length
        self.sot = tokenizer.sot_token_id
        self.eot = tokenizer.eot_token_id
        self._ids: dict[str, list[int]] = {}

    @staticmethod
    def tokenizer_supported(tokenizer: Any) -> bool:
        return all(hasattr(tokenizer, a) for a in ("encode", "sot_token_id", "eot_token_id")) and (
            getattr(tokenizer, "reduction_fn", None) is None
        )

    @staticmethod
    def supports(model: Any, tokenizer: Any) -> bool:
        from open_clip.transformer import ResidualAttentionBlock

        transformer = getattr(model, "transformer", None)
        blocks = getattr(transformer, "resblocks", None)
        return (
            PrefixTextEncoder.tokenizer_supported(tokenizer)
            and blocks is not None
            and getattr(transformer, "batch_first", False)
            and getattr(model, "text_pool_type", "argmax") == "argmax"
            and all(
                type(b) is ResidualAttentionBlock
                and isinstance(b.attn, torch.nn.MultiheadAttention)
                and b.attn.in_proj_weight is not None
                and not hasattr(b, "ln_1_kv")
                for b in blocks
            )
        )

    # -- token ids ---------------------------------------------------------------------
    def ids(self, text: str) -> list[int]:
        """BPE ids of ``text`` (no start/end tokens), memoised: labels repeat across images."""
        found = self._ids.get(text)
        if found is None:
            found = self._ids[text] = list(self.tokenizer.encode(text))
            if len(self._ids) > 500_000:
                self._ids.clear()
        return found

    def prefix_ids(self, prompt: str | None) -> list[int]:
        """Ids every candidate ``f"{prompt}, {label}"`` starts with (just the start token for None)."""
        return [self.sot, *self.tokenizer.encode(prompt + ",")] if prompt is not None else [self.sot]

    def assemble(self, prefix: list[int], label: str) -> list[int]:
        """The ids ``tokenizer([f"{prompt}, {label}"])`` gives, truncated as open_clip truncates."""
        tokens = [*prefix, *self.ids(label), self.eot]
        if len(tokens) > self.context:
            tokens = tokens[: self.context]
            tokens[-1] = self.eot
        return tokens

    def token_tensor(self, rows: list[list[int]], device: Any) -> torch.Tensor:
        out = torch.zeros(len(rows), self.context, dtype=torch.long)
        for i, row in enumerate(rows):
            out[i, : len(row)] = torch.tensor(row)
        return out.to(device)

    # -- encoding ----------------------------------------------------------------------
    @torch.no_grad()
    def similarities(
        self, features: torch.Tensor, prompt: str | None, labels: list[str], *, chunk_size: int = 2048
    ) -> torch.Tensor:
        """``[similarity(features, f"{prompt}, {label}") for label in labels]`` as one tensor.

        ``prompt=None`` scores the labels alone.
        """
        prefix = self.prefix_ids(prompt)
        if len(prefix) >= self.context:  # nothing of any label fits: plain encoding of the truncated text
            rows = [self.assemble(prefix, label) for label in labels]
            return self._full(features, rows)
        keys, values = self._encode_prefix(prefix, features.device)
        room = self.context - len(prefix) - 1
        out = []
        for start in range(0, len(labels), chunk_size):
            suffixes = [[*self.ids(label)[:room], self.eot] for label in labels[start : start + chunk_size]]
            out.append(self._encode_suffixes(features, len(prefix), keys, values, suffixes))
        return torch.cat(out)

    def _full(self, features: torch.Tensor, rows: list[list[int]]) -> torch.Tensor:
        tokens = self.token_tensor(rows, features.device)
        with autocast(str(features.device)):
            text = self.model.encode_text(tokens)
            text = text / text.norm(dim=-1, keepdim=True)
            return (text @ features.T)[:, 0].float()

    def _dtype(self) -> torch.dtype:
        return self.model.transformer.get_cast_dtype()

    def _qkv(self, block: Any, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        attn = block.attn
        batch, length, width = hidden.shape
        heads = attn.num_heads
        q, k, v = F.linear(hidden, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(batch, length, heads, width // heads).transpose(1, 2)

        return split(q), split(k), split(v)

    def _finish_block(self, block: Any, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        batch, heads, length, head_dim = attended.shape
        merged = attended.transpose(1, 2).reshape(batch, length, heads * head_dim)
        x = x + block.ls_1(F.linear(merged, block.attn.out_proj.weight, block.attn.out_proj.bias))
        return x + block.ls_2(block.mlp(block.ln_2(x)))

    def _embed(self, ids: torch.Tensor, offset: int) -> torch.Tensor:
        dtype = self._dtype()
        x = self.model.token_embedding(ids).to(dtype)
        return x + self.model.positional_embedding[offset : offset + ids.shape[1]].to(dtype)

    def _encode_prefix(self, prefix: list[int], device: Any) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        x = self._embed(torch.tensor([prefix], device=device), 0)
        keys, values = [], []
        for block in self.model.transformer.resblocks:
            q, k, v = self._qkv(block, block.ln_1(x))
            keys.append(k)
            values.append(v)
            x = self._finish_block(block, x, F.scaled_dot_product_attention(q, k, v, is_causal=True))
        return keys, values

    def _encode_suffixes(
        self,
        features: torch.Tensor,
        prefix_len: int,
        keys: list[torch.Tensor],
        values: list[torch.Tensor],
        suffixes: list[list[int]],
    ) -> torch.Tensor:
        device = features.device
        width = max(len(s) for s in suffixes)
        ids = torch.zeros(len(suffixes), width, dtype=torch.long)
        for i, s in enumerate(suffixes):
            ids[i, : len(s)] = torch.tensor(s)
        ids = ids.to(device)
        x = self._embed(ids, prefix_len)
        # suffix position i sees the whole prefix and suffix positions <= i
        rows = torch.arange(width, device=device)[:, None]
        cols = torch.arange(prefix_len + width, device=device)[None, :]
        mask = (cols < prefix_len) | (cols - prefix_len <= rows)
        batch = len(suffixes)
        for block, k_prefix, v_prefix in zip(self.model.transformer.resblocks, keys, values, strict=True):
            q, k, v = self._qkv(block, block.ln_1(x))
            k = torch.cat([k_prefix.expand(batch, -1, -1, -1), k], dim=2)
            v = torch.cat([v_prefix.expand(batch, -1, -1, -1), v], dim=2)
            x = self._finish_block(block, x, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
        last = torch.tensor([len(s) - 1 for s in suffixes], device=device)
        pooled = self.model.ln_final(x[torch.arange(batch, device=device), last])
        projection = self.model.text_projection
        if projection is not None:
            pooled = projection(pooled) if isinstance(projection, torch.nn.Linear) else pooled @ projection
        with autocast(str(device)):
            pooled = pooled / pooled.norm(dim=-1, keepdim=True)
            return (pooled @ features.T)[:, 0].float()


class FastInterrogator:
    """Answers clip-interrogator 0.6's questions for batches of images, sharing the work."""

    def __init__(self, ci: Interrogator, *, prefix_cache: bool = True) -> None:
        self.ci = ci
        self.config = ci.config
        self.device = str(ci.device)
        chunk = ci.config.chunk_size
        self.tables = {
            name: FastTable.from_tables([getattr(ci, name)], self.device, chunk)
            for name in ("artists", "flavors", "mediums", "movements", "trendings", "negative")
        }
        self.merged = FastTable.from_tables(
            [ci.artists, ci.flavors, ci.mediums, ci.movements, ci.trendings], self.device, chunk
        )
        tokenizer = ci.tokenize
        self.encoder: PrefixTextEncoder | None = None
        self.assembler: PrefixTextEncoder | None = None
        if PrefixTextEncoder.tokenizer_supported(tokenizer):
            self.assembler = PrefixTextEncoder(ci.clip_model, tokenizer)
            if prefix_cache and PrefixTextEncoder.supports(ci.clip_model, tokenizer):
                self.encoder = self.assembler

    # -- shared, batched work ----------------------------------------------------------
    @torch.no_grad()
    def features(self, images: list[Image.Image]) -> torch.Tensor:
        """Normalised CLIP image features, one row per image, from one forward pass."""
        self.ci._prepare_clip()
        batch = torch.stack([self.ci.clip_preprocess(image) for image in images]).to(self.device)
        with autocast(self.device):
            features = self.ci.clip_model.encode_image(batch)
            features /= features.norm(dim=-1, keepdim=True)
        return features

    @torch.no_grad()
    def captions(self, images: list[Image.Image]) -> list[str]:
        """Captions for a batch of images from one ``generate`` call."""
        ci = self.ci
        assert ci.caption_model is not None, "No caption model loaded."
        ci._prepare_caption()
        inputs = ci.caption_processor(images=images, return_tensors="pt").to(self.device)
        if not (ci.config.caption_model_name or "").startswith("git-"):
            inputs = inputs.to(ci.dtype)
        tokens = ci.caption_model.generate(**inputs, max_new_tokens=ci.config.caption_max_length)
        return [text.strip() for text in ci.caption_processor.batch_decode(tokens, skip_special_tokens=True)]

    def move_to(self, device: str) -> None:
        """Move models and tables (after CUDA ran out of memory: to the CPU)."""
        ci = self.ci
        ci.device = ci.config.device = self.device = device
        ci.dtype = torch.float32
        ci.clip_model = ci.clip_model.float().to(device)
        ci.clip_offloaded = False
        if ci.caption_model is not None:
            ci.caption_model = ci.caption_model.float().to(device)
            ci.caption_offloaded = False
        for table in (*self.tables.values(), self.merged):
            table.to(device)

    # -- the modes, per image, from shared features and caption --------------------------
    def classic(self, features: torch.Tensor, caption: str, max_flavors: int = 3) -> str:
        t = self.tables
        medium = t["mediums"].rank(features, 1)[0]
        artist = t["artists"].rank(features, 1)[0]
        trending = t["trendings"].rank(features, 1)[0]
        movement = t["movements"].rank(features, 1)[0]
        flaves = ", ".join(t["flavors"].rank(features, max_flavors))
        if caption.startswith(medium):
            prompt = f"{caption} {artist}, {trending}, {movement}, {flaves}"
        else:
            prompt = f"{caption}, {medium} {artist}, {trending}, {movement}, {flaves}"
        return _truncate_to_fit(prompt, self.ci.tokenize)

    def fast(self, features: torch.Tensor, caption: str, max_flavors: int = 32) -> str:
        tops = self.merged.rank(features, max_flavors)
        return _truncate_to_fit(caption + ", " + ", ".join(tops), self.ci.tokenize)

    def negative(self, features: torch.Tensor, max_flavors: int = 32) -> str:
        flaves = self.tables["flavors"].rank(features, self.config.flavor_intermediate_count, reverse=True)
        flaves = flaves + self.tables["negative"].labels
        return self.chain(features, flaves, max_count=max_flavors, reverse=True)

    def best(self, features: torch.Tensor, caption: str, min_flavors: int = 8, max_flavors: int = 32) -> str:
        flaves = self.merged.rank(features, self.config.flavor_intermediate_count)
        best_prompt, best_sim = caption, self.ci.similarity(features, caption)
        best_prompt = self.chain(features, flaves, best_prompt, best_sim, min_count=min_flavors, max_count=max_flavors)
        fast_prompt = self.fast(features, caption, max_flavors)
        classic_prompt = self.classic(features, caption, max_flavors)
        candidates = [caption, classic_prompt, fast_prompt, best_prompt]
        return candidates[int(np.argmax(self.ci.similarities(features, candidates)))]

    # -- the chain ---------------------------------------------------------------------
    def rank_top(self, features: torch.Tensor, prompt: str | None, labels: list[str], reverse: bool = False) -> str:
        """The label whose ``f"{prompt}, {label}"`` (the label alone for None) is most similar."""
        if self.encoder is not None:
            sims = self.encoder.similarities(features, prompt, labels, chunk_size=self.config.chunk_size)
        else:
            sims = self._full_similarities(features, prompt, labels)
        if reverse:
            sims = -sims
        return labels[int(sims.argmax().item())]

    def _full_similarities(self, features: torch.Tensor, prompt: str | None, labels: list[str]) -> torch.Tensor:
        """Every candidate encoded in full, in one call, as clip-interrogator does (bit for bit)."""
        ci = self.ci
        ci._prepare_clip()
        if self.assembler is not None:
            prefix = self.assembler.prefix_ids(prompt)
            tokens = self.assembler.token_tensor([self.assembler.assemble(prefix, f) for f in labels], self.device)
        else:
            tokens = ci.tokenize([f"{prompt}, {f}" if prompt is not None else f for f in labels]).to(self.device)
        with torch.no_grad(), autocast(self.device):
            text = ci.clip_model.encode_text(tokens)
            text /= text.norm(dim=-1, keepdim=True)
            return (text @ features.T)[:, 0].float()

    def chain(
        self,
        features: torch.Tensor,
        phrases_in: list[str],
        best_prompt: str = "",
        best_sim: float = 0,
        min_count: int = 8,
        max_count: int = 32,
        reverse: bool = False,
    ) -> str:
        """clip-interrogator 0.6's ``Interrogator.chain``, step for step, with fast candidate ranking."""
        ci = self.ci
        ci._prepare_clip()
        phrases = set(phrases_in)  # the same set, so the same iteration order and tie-breaking
        if not best_prompt:
            best_prompt = self.rank_top(features, None, [f for f in phrases], reverse=reverse)
            best_sim = ci.similarity(features, best_prompt)
            phrases.remove(best_prompt)
        curr_prompt, curr_sim = best_prompt, best_sim

        def check(addition: str, idx: int) -> bool:
            nonlocal best_prompt, best_sim, curr_prompt, curr_sim
            prompt = curr_prompt + ", " + addition
            sim = ci.similarity(features, prompt)
            if reverse:
                sim = -sim
            if sim > best_sim:
                best_prompt, best_sim = prompt, sim
            if sim > curr_sim or idx < min_count:
                curr_prompt, curr_sim = prompt, sim
                return True
            return False

        for idx in range(max_count):
            flave = self.rank_top(features, curr_prompt, [f for f in phrases], reverse=reverse)
            if not check(flave, idx):
                break
            if _prompt_at_max_len(curr_prompt, ci.tokenize):
                break
            phrases.remove(flave)
        return best_prompt
