"""The ``classify`` plugin: zero-shot classification into the user's labels, on image embeddings
computed once.

Modes are label sets: ``[classify.labels.animals] labels = ["dog", "cat", "tiger"]`` gives the mode
``animals``. An image is encoded once per (content hash, model) and its embedding kept in the
root's embedding store (:mod:`analyzer.embeddings`); classifying it into another label set, or
into a changed one, reads the stored embedding: no decode, no image encode. Label texts are
encoded once per (model, prompt) and kept in a cache of their own.

The result keeps every label's cosine similarity and softmax confidence (the top
``store_top`` for big sets); top-k, ``min_confidence``, multi-label thresholds and manual labels
are applied when results are read (:func:`chosen_labels`), so changing them never needs a re-run.

torch and open_clip load in :meth:`ClassifyPlugin.setup` (``pip install 'analyzer[clip]'``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from analyzer.embeddings import EmbeddingStore, one_blas_thread
from analyzer.errors import ConfigError, PluginUnavailable
from analyzer.images import DEFAULT_MAX_PIXELS, open_image
from analyzer.plugin import AnalyzerPlugin, Failure, ImageRef, Outcome, PluginOptions, Result

from .embedder import LazyEmbedder

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from .embedder import Embedder

    Matrix = npt.NDArray[np.float32]

log = logging.getLogger(__name__)

__all__ = ["CLIP_TEMPLATES", "ClassifyOptions", "ClassifyPlugin", "LabelSet", "chosen_labels"]

CLIP_TEMPLATES = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)
"""The seven of CLIP's 80 ImageNet templates its authors found best as an ensemble."""
BANK = "concepts"
"""The mode of the bundled concept bank (``analyzer classify`` without labels)."""


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "analyzer" / "classify"


class LabelSet(BaseModel):
    """One label set (a mode): labels, each with its own prompts or the templates' ensemble."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    labels: list[str] | dict[str, list[str]] = Field(default_factory=list)
    """Label names, or label -> its own prompts (``{}`` in a prompt stands for the label)."""
    file: Path | None = None
    """A file of labels, one a line: ``label`` or ``label: prompt | prompt``; ``#`` starts a comment."""
    bank: bool = False
    """The bundled concept bank (COCO, Open Images and common WordNet nouns)."""
    templates: list[str] | None = None
    """Prompt templates for labels without prompts of their own (default: the plugin's)."""
    multi_label: bool = False
    """Read as tags: every label whose similarity reaches ``threshold``, not the top one."""
    threshold: float = Field(default=0.25, ge=-1, le=1)
    """Multi-label: the cosine similarity a label needs (model-specific: set it per set)."""

    @field_validator("labels", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    def prompts(self, default_templates: Sequence[str]) -> dict[str, list[str]]:
        """label -> its prompts. Raises ConfigError for an empty list or a label given twice."""
        found: list[tuple[str, list[str] | None]] = []
        if isinstance(self.labels, dict):
            found += [(label, list(prompts) or None) for label, prompts in self.labels.items()]
        else:
            found += [(label, None) for label in self.labels]
        if self.file is not None:
            found += _read_label_file(self.file)
        counts = Counter(label.strip().lower() for label, _ in found)
        twice = sorted(label for label, n in counts.items() if n > 1)
        if twice:
            raise ConfigError(f"labels given more than once: {', '.join(twice[:10])}")
        if self.bank:  # the bank's concepts the user did not name already
            from .concepts import concept_bank

            found += [(label, None) for label in concept_bank() if label.lower() not in counts]
        if not found:
            raise ConfigError("an empty label set: give labels, a file of labels, or bank = true")
        templates = list(self.templates or default_templates)
        return {
            label.strip(): [p.replace("{}", label.strip()) for p in prompts]
            if prompts
            else [t.replace("{}", label.strip()) for t in templates]
            for label, prompts in found
        }


def _read_label_file(path: Path) -> list[tuple[str, list[str] | None]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the label file {path}: {exc.strerror}") from exc
    found: list[tuple[str, list[str] | None]] = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        label, _, prompts = line.partition(":")
        found.append((label.strip(), [p.strip() for p in prompts.split("|") if p.strip()] or None))
    return found


class ClassifyOptions(PluginOptions):
    """Settings of the ``classify`` plugin (``[classify]`` in TOML, ``ANALYZER_CLASSIFY__<NAME>``)."""

    model: str = Field(default="ViT-B-32/openai", pattern=r"^[^/#]+/[^/#]+$")
    """open_clip ``architecture/pretrained`` computing image and text embeddings."""
    device: Literal["auto", "cuda", "mps", "cpu"] = "auto"
    """``auto``: CUDA, then Apple MPS, then the CPU."""
    model_dir: Path | None = None
    """Where open_clip keeps downloaded weights (default: the Hugging Face cache)."""
    labels: dict[str, LabelSet] = Field(default_factory=dict)
    """The label sets ``run`` and ``watch`` classify into, by name (each one a mode)."""
    templates: list[str] = Field(default_factory=lambda: list(CLIP_TEMPLATES))
    """Prompt templates averaged per label (``{}`` stands for the label)."""
    temperature: float = Field(default=0.01, gt=0)
    """Softmax temperature over the similarities (0.01: CLIP's own logit scale of 100)."""
    store_top: int = Field(default=20, ge=1)
    """Labels kept per image for sets bigger than this (the most confident); smaller sets keep all."""
    top_k: int = Field(default=3, ge=1)
    """When read (wildcards, status, export): labels per image."""
    min_confidence: float = Field(default=0.0, ge=0, le=1)
    """When read: labels below this confidence are left out; an image with none is ``unknown``."""
    cache_dir: Path = Field(default_factory=default_cache_dir)
    """Text-embedding cache (per model and prompt); default: ``$XDG_CACHE_HOME/analyzer/classify``,
    else ``~/.cache/analyzer/classify``."""

    @field_validator("labels", mode="before")
    @classmethod
    def _sets(cls, value: Any) -> Any:
        if isinstance(value, dict):  # a plain list (or "a,b" from the environment) is a set of labels
            return {name: {"labels": spec} if isinstance(spec, (list, str)) else spec for name, spec in value.items()}
        return value

    @model_validator(mode="after")
    def _names(self) -> ClassifyOptions:
        for name in self.labels:
            if not name or "." in name or "@" in name:
                raise ValueError(f"label set name {name!r}: no dots or @ (it is a mode in selectors)")
        return self


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:8]


def best_first(conf: Matrix, keep: int) -> Any:
    """Per row, the indexes of the ``keep`` largest values, largest first (ties: lower index first);
    a partial sort when ``keep`` is much smaller than the row."""
    import numpy as np

    if keep >= conf.shape[1]:
        return np.argsort(-conf, axis=1, kind="stable")
    part = np.argpartition(-conf, keep - 1, axis=1)[:, :keep]
    part.sort(axis=1)  # index order first, so the stable sort below breaks ties by index
    picked = np.take_along_axis(conf, part, axis=1)
    return np.take_along_axis(part, np.argsort(-picked, axis=1, kind="stable"), axis=1)


def chosen_labels(
    value: Any, *, top_k: int = 3, min_confidence: float = 0.0, multi_label: bool = False, threshold: float = 0.25
) -> list[str]:
    """The labels a stored result gives under read-time rules (manual labels go first, alone)."""
    if not isinstance(value, dict) or not isinstance(value.get("labels"), list):
        return []
    entries = [e for e in value["labels"] if isinstance(e, dict) and isinstance(e.get("label"), str)]
    if multi_label:
        return [e["label"] for e in entries if float(e.get("score", -1)) >= threshold]
    return [e["label"] for e in entries[:top_k] if float(e.get("confidence", 0)) >= min_confidence]


class ClassifyPlugin(AnalyzerPlugin):
    name = "classify"
    version = "1.0.0"
    requires = ("torch", "open_clip", "numpy")
    """(``split_on_oom`` comes from :mod:`analyzer_clip.models`, which imports none of clip-interrogator.)"""
    install_hint = "pip install 'analyzer[clip]'"
    batch_size_hint = 128
    concurrency_hint = 1
    Options = ClassifyOptions

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        assert isinstance(self.options, ClassifyOptions)
        self.opts: ClassifyOptions = self.options
        self.modes = tuple(self.opts.labels)
        self.wildcard_modes = self.modes
        self.embedder: Embedder | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._prompts: dict[str, dict[str, list[str]]] = {}
        self._model_ids: dict[str, tuple[str, ...]] = {}
        self._texts: dict[str, Matrix] = {}
        self.decoded = 0
        """Images decoded by this plugin (for tests and the summary: 0 when every embedding is stored)."""
        self.encoded = 0
        """Images encoded by the model."""
        self.prompts_encoded = 0
        self.tally: dict[str, Counter[str]] = {}
        """Per label set, the top label of each image classified in this run (read-time rules applied)."""

    def label_prompts(self, mode: str) -> dict[str, list[str]]:
        if mode not in self._prompts:
            self._prompts[mode] = self.opts.labels[mode].prompts(self.opts.templates)
        return self._prompts[mode]

    def model_ids(self, mode: str) -> tuple[str, ...]:
        if mode not in self._model_ids:  # asked for every image: digest the labels once
            spec = self.opts.labels[mode]
            prompts = self.label_prompts(mode)  # as resolved: a label file's own prompts count too
            labels = _digest({"labels": prompts, "t": self.opts.temperature, "top": self.opts.store_top})
            templates = _digest(spec.templates or self.opts.templates)
            self._model_ids[mode] = (f"{self.opts.model}#labels={labels},templates={templates}",)
        return self._model_ids[mode]

    def manual_result(self, mode: str, text: str) -> Any:
        labels = self.label_prompts(mode)
        if text not in labels:
            shown = ", ".join(list(labels)[:20]) + (", …" if len(labels) > 20 else "")
            raise ConfigError(f"{text!r} is not a label of set {mode!r} ({shown})")
        entry = {"label": text, "score": 1.0, "confidence": 1.0}
        return {"top": text, "confidence": 1.0, "labels": [entry], "manual": True}

    def reading_rules(self) -> str:
        # Only sets read otherwise than an unknown set is count: an ad hoc set (classify --labels)
        # read the default way leaves the rules as they are, so a command with it and one without
        # do not each make the other read every sidecar again.
        default = LabelSet()
        sets = {
            name: [spec.multi_label, spec.threshold]
            for name, spec in self.opts.labels.items()
            if (spec.multi_label, spec.threshold) != (default.multi_label, default.threshold)
        }
        return _digest({"top_k": self.opts.top_k, "min_confidence": self.opts.min_confidence, "sets": sets})

    def wildcard_entries(self, mode: str, value: Any) -> Iterable[str]:
        spec = self.opts.labels.get(mode)
        return chosen_labels(
            value,
            top_k=self.opts.top_k,
            min_confidence=self.opts.min_confidence,
            multi_label=spec.multi_label if spec else False,
            threshold=spec.threshold if spec else 0.25,
        )

    def summary_lines(self) -> list[str]:
        """Per label set, how many images got each top label in this run (the ten most frequent)."""
        lines = []
        for mode, counts in sorted(self.tally.items()):
            shown = ", ".join(f"{label} {n}" for label, n in counts.most_common(10))
            more = f", {len(counts) - 10} more labels" if len(counts) > 10 else ""
            lines.append(f"  classify {mode}: {shown}{more}")
        return lines

    # -- life cycle ----------------------------------------------------------------------
    def _device(self) -> str:
        import torch

        if self.opts.device != "auto":
            return self.opts.device
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"

    def _load(self) -> Embedder:
        """The embedder, built when an image or a prompt must be encoded (not at all when every
        embedding is stored); the weights are checked now, so a missing model says so at once."""
        from analyzer_clip import hub_offline, weights_advice

        from . import embedder

        model_dir = str(self.opts.model_dir) if self.opts.model_dir else None

        def unavailable(exc: Exception) -> PluginUnavailable:
            advice = weights_advice(self.opts.model, None, self.opts.model_dir, exc, hub_offline())
            return PluginUnavailable(self.name, advice)

        def build() -> Embedder:
            try:
                return embedder.preloaded(self.opts.model) or embedder.load(self.opts.model, self._device(), model_dir)
            except Exception as exc:  # missing weights, unknown names, no network: say what to do
                raise unavailable(exc) from exc

        record = self.opts.cache_dir / "weights.json"
        try:
            embedder.check(self.opts.model, model_dir, record, before_import=self._offline_unless_reachable)
        except Exception as exc:
            raise unavailable(exc) from exc
        return embedder.LazyEmbedder(self.opts.model, build)

    @staticmethod
    def _offline_unless_reachable() -> None:
        """Before looking for weights: when the hub cannot be reached, use the local cache only."""
        from analyzer_clip import hub_offline, hub_unreachable

        if not hub_offline() and hub_unreachable() is not None:
            from huggingface_hub import constants

            constants.HF_HUB_OFFLINE = True

    async def setup(self) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="analyzer-classify")
        loop = asyncio.get_running_loop()
        self.embedder = await loop.run_in_executor(self._executor, self._load)

    async def close(self) -> None:
        lazy = self.embedder
        if isinstance(lazy, LazyEmbedder) and not lazy.loaded and self._texts:
            log.info("classify: every embedding was stored, so the model %s was never loaded", self.opts.model)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    # -- analysis ------------------------------------------------------------------------
    async def analyze(self, mode: str, model_id: str, images: Sequence[ImageRef]) -> Sequence[Outcome]:
        assert self._executor is not None, "setup() was not called"
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.classify, mode, list(images))

    def classify(self, mode: str, images: list[ImageRef]) -> list[Outcome]:
        """Classify images into a label set (blocking): stored embeddings first, the rest encoded once."""
        return self.scores(mode, self.image_vectors(images))

    def scores(
        self,
        mode: str,
        vectors: Sequence[Matrix | Failure],
        against: Matrix | None = None,
        bias: Matrix | None = None,
        *,
        tally: bool = True,
    ) -> list[Outcome]:
        """Each image's labels, scored against the set's label embeddings, or ``against`` (refined
        prototypes, one row per label, with ``bias`` added to the logits: a refinement's per-class
        log-priors at this temperature); failures passed through."""
        import numpy as np

        texts = self.text_matrix(mode) if against is None else against
        labels = list(self.label_prompts(mode))
        found = [v for v in vectors if not isinstance(v, Failure)]
        if not found:
            return [v for v in vectors if isinstance(v, Failure)]
        with one_blas_thread():  # a small product: BLAS threads would only wait for each other
            sims = np.stack(found) @ texts.T
        logits = sims / self.opts.temperature
        if bias is not None:
            logits += bias
        logits -= logits.max(axis=1, keepdims=True)
        conf = np.exp(logits)
        conf /= conf.sum(axis=1, keepdims=True)
        keep = min(len(labels), self.opts.store_top)
        order = best_first(conf, keep)  # [n, keep] label indexes, most confident first
        rows_at = np.arange(len(found))[:, None]
        scores_kept = np.round(sims[rows_at, order].astype(np.float64), 5).tolist()
        conf_kept = np.round(conf[rows_at, order].astype(np.float64), 5).tolist()
        top_conf = conf[rows_at[:, 0], order[:, 0]].tolist()
        order_rows = order.tolist()  # plain ints: indexing a list with numpy integers is slow
        parameters = {
            "model": self.opts.model,
            "labels": len(labels),
            "stored": keep,
            "temperature": self.opts.temperature,
        }
        rows = iter(range(len(found)))
        out: list[Outcome] = []
        for vector in vectors:
            if isinstance(vector, Failure):
                out.append(vector)
                continue
            i = next(rows)
            names = [labels[j] for j in order_rows[i]]
            if tally:
                top = names[0] if top_conf[i] >= self.opts.min_confidence else "unknown"
                self.tally.setdefault(mode, Counter())[top] += 1
            entries = [
                {"label": name, "score": score, "confidence": c}
                for name, score, c in zip(names, scores_kept[i], conf_kept[i], strict=True)
            ]
            out.append(
                Result(
                    {"top": names[0], "confidence": entries[0]["confidence"], "labels": entries},
                    parameters=dict(parameters),
                )
            )
        return out

    def classify_bytes(self, data: bytes, mode: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> dict[str, Any]:
        """Classify one image given as its file's bytes, storing nothing anywhere (blocking; after
        :meth:`setup`). Raises :class:`~analyzer.errors.ImageError` for bytes that are no image."""
        embedder = self.embedder
        assert embedder is not None, "setup() was not called"
        with open_image(data, max_pixels=max_pixels) as image:
            prepared = embedder.prepare(image)
        vector = embedder.encode_images([prepared])[0]
        (outcome,) = self.scores(mode, [vector])
        assert isinstance(outcome, Result)
        value: dict[str, Any] = outcome.value
        return value

    def image_vectors(self, images: Sequence[ImageRef]) -> list[Matrix | Failure]:
        """Each image's embedding: from its root's store, else decoded and encoded (in one batch) and kept."""
        from analyzer_clip.models import split_on_oom

        embedder = self.embedder
        assert embedder is not None
        vectors: list[Matrix | Failure | None] = [None] * len(images)
        by_store: dict[int, list[int]] = {}
        for i, image in enumerate(images):
            if image.embeddings is not None and image.hash:
                by_store.setdefault(id(image.embeddings), []).append(i)
        for members in by_store.values():  # one lookup per store and batch
            kept = images[members[0]].embeddings
            assert kept is not None
            hits = kept.model(self.opts.model).get([images[i].hash for i in members])
            for i, hit in zip(members, hits, strict=True):
                vectors[i] = hit
        todo = [i for i, v in enumerate(vectors) if v is None]
        prepared: list[tuple[int, Any]] = []
        for i in todo:
            self.decoded += 1
            found = images[i].read(embedder.prepare)
            if isinstance(found, Failure):
                vectors[i] = found
            else:
                prepared.append((i, found))
        if prepared:

            def encode(items: list[tuple[int, Any]]) -> list[Any]:
                return list(embedder.encode_images([p for _, p in items]))

            to_cpu = getattr(embedder, "to_cpu", lambda: None)
            rows = split_on_oom(encode, prepared, to_cpu)
            self.encoded += len(prepared)
            stores: dict[int, EmbeddingStore] = {}
            for (i, _), row in zip(prepared, rows, strict=True):
                vectors[i] = row
                store = images[i].embeddings
                if store is not None and images[i].hash:
                    store.model(self.opts.model).put([images[i].hash], row[None, :])
                    stores[id(store)] = store
            for store in stores.values():
                try:
                    store.model(self.opts.model).flush()
                except OSError as exc:  # a cache: the results stand, the next run encodes again
                    log.warning("cannot keep image embeddings in %s: %s", store.folder, exc.strerror or exc)
        return [v for v in vectors if v is not None]

    def text_matrix(self, mode: str) -> Matrix:
        """One unit vector per label: the mean of its prompts' embeddings (each encoded once, cached on disk)."""
        if mode not in self._texts:
            self._texts[mode] = self.prompt_matrix(self.label_prompts(mode))
        return self._texts[mode]

    def bank_matrix(self) -> tuple[list[str], Matrix]:
        """The concept bank's labels and their text embeddings (to name clusters of images)."""
        prompts = LabelSet(bank=True).prompts(self.opts.templates)
        return list(prompts), self.prompt_matrix(prompts)

    def collection(self, settings: Any, modes: Sequence[str], paths: Sequence[Path], options: dict[str, Any]) -> int:
        """The collection pass of ``analyzer classify --refine/--truth/--clusters/--report`` (see
        :mod:`.collection`): each report printed; the exit status."""
        from .collection import CollectionOptions, run_all
        from .refine import RefineParams

        params = RefineParams(**{k: v for k, v in options.pop("refine_params", {}).items() if v is not None})
        reports = run_all(settings, self, modes, paths, CollectionOptions(params=params, **options))
        for report in reports:
            print(report.text, end="", flush=True)
            log.info("report of %r written to %s", report.mode, report.folder)
        return 0 if reports else 1

    def keeps(self, mode: str, model_id: str) -> bool:
        """Results of the current label list, and refinements of them (:mod:`.collection`)."""
        from .collection import refined_base

        return model_id in self.model_ids(mode) or refined_base(model_id) in self.model_ids(mode)

    def prompt_matrix(self, prompts: dict[str, list[str]]) -> Matrix:
        """One unit row per label of ``prompts`` (label -> its prompts), through the text cache."""
        import numpy as np

        embedder = self.embedder
        assert embedder is not None
        cache = EmbeddingStore(self.opts.cache_dir / "texts").model(self.opts.model)
        unique = list(dict.fromkeys(p for ps in prompts.values() for p in ps))
        missing = cache.missing(unique)
        for start in range(0, len(missing), 256):
            chunk = missing[start : start + 256]
            cache.put(chunk, embedder.encode_texts(chunk))
            self.prompts_encoded += len(chunk)
        cache.flush()
        vectors: dict[str, Matrix] = {}
        for prompt, vector in zip(unique, cache.get(unique), strict=True):
            if vector is None:  # pragma: no cover - just written
                raise RuntimeError(f"the text embedding of {prompt!r} was not kept")
            vectors[prompt] = vector
        rows = []
        for label_prompts in prompts.values():
            mean = np.mean(np.stack([vectors[p] for p in label_prompts]), axis=0)
            rows.append(mean / max(float(np.linalg.norm(mean)), 1e-12))
        matrix: Matrix = np.stack(rows).astype(np.float32)
        return matrix
