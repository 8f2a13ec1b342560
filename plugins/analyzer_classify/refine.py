"""Collection-level refinement of zero-shot labels: class prototypes learnt from the collection.

Zero-shot classification scores each image against its labels' text embeddings alone (the
*inductive*, text-only assignment). A whole collection tells more: images of one class lie close
together, so a class prototype can move from its text embedding towards the images it is given.
:func:`refine` does that (seed 002's prototype refinement), with a guard against the failure its
users met, one class swallowing the collection.

The algorithm
-------------
Prototypes start as the text embeddings ``texts`` ([C, D] unit rows) and every image gets the
text-only label. Then each iteration ``i`` (0-based, ``iterations`` of them):

1. each class's *visual mean* is the normalised mean of the images now assigned to it, and its
   prototype becomes ``normalise(w * text[c] + (1 - w) * visual_mean[c])`` with the text weight
   ``w = text_weight_start - text_weight_drop * i / iterations`` (0.95 falling to 0.60): a strong
   text anchor first, more of the collection later. A class with no image keeps its text row;
2. every image is reassigned to its best class under the new prototypes (see the guard).

The assignment after the last iteration is the final one, made with the final prototypes: this
is seed 002's loop exactly (its iteration ``i`` assigns with the prototypes of iteration ``i - 1``
and updates; its extra "final assignment" is our last reassignment). Refinement stops early when
an iteration moves fewer than ``tolerance`` of the images (``tolerance=0`` never stops early,
as seed 002 did). Below ``min_images`` images (seed 002's rule: 100) there is too little
collection to learn from, and the text-only assignment is returned with no iteration.

Temperature
-----------
Similarities are cosines; ``temperature`` (0.05) turns them into logits ``sims / temperature``.
In seed 002 it was applied before a hard argmax and so changed nothing. Here it sets the scale on
which the guard's per-class log-priors act (a log-prior of 1 outweighs a cosine advantage of
``temperature``), and the confidence of each label is the softmax probability, at this
temperature, of the chosen class over the same logits that chose it (guard included): a number in
[0, 1] that sums to 1 over classes, like the classify plugin's confidences (which use the
plugin's own temperature, 0.01 for CLIP, so values are flatter here at 0.05). Assignments stay
hard (argmax): class means weighted by the softmax (soft assignments) measured no better on the
benchmark (``bench/bench_refine.py``; see ``soft``).

The guard
---------
Why collapse happens: CLIP's text and image embeddings lie apart (the modality gap; an image is
about 0.3 cosine from its label's text but 0.6 to 0.9 from images like it). Once a prototype takes
in a share of image mean it is much closer to *every* image than a text-only prototype, and when
one class is given most images at first (a generic label, a text near the centre of the data),
its prototype becomes the collection's mean, it takes the rest, the other classes empty, keep
their text rows and never win an image back.

``guard="balance"`` (the default) is a class-balance prior, Sinkhorn-style: the logits get a
per-class log-prior ``b[c]`` (zero at first). The text-only prediction's class mass ``pi`` (the
mean text-only softmax probability of each class, at ``temperature``) is the reference; after
each assignment the predicted mass ``m`` (the mean softmax probability under the guarded logits)
is measured, and where a class drifted more than ``balance_band`` times above or below its
reference (``|log(m / pi)| > log(balance_band)``) its log-prior is moved by the excess, back to
the edge of the band: one Sinkhorn scaling step per iteration, applied only outside the band.
Inside the band (a class may double or halve its share) nothing is done, so refinement remains
free to correct the text prior's class proportions; what cannot happen is a class losing almost
all its images to another, because the log-prior keeps rising until the class wins them back.
Soft mass is used rather than counts because an empty class still has a measurable (tiny) mass,
so one step moves it by the right amount instead of a capped guess.

``guard="text"`` is TransCLIP's pull towards the text-only prediction (the KL term of its
objective, in its product-of-experts form): logits ``sims / T + text_pull * log q`` where ``q`` is
each image's text-only softmax. It keeps images near their text-only label but cannot stop a
collapse that the text-only prediction itself leans towards, and costs a second matrix product
per chunk. ``guard="both"`` applies the two. ``guard="none"`` is seed 002's schedule exactly.

Memory
------
``vectors`` is a [N, D] float32 array of unit rows (the embedding store keeps unit vectors; rows
are not re-normalised), or a *chunk source*: a callable that returns a fresh iterator of [n, D]
arrays each time it is called, the same rows in the same order, e.g.
``lambda: (v for _, v in store.model(model_id).chunks())``. Each pass (``iterations + 1`` at most)
reads the chunks once, in blocks of ``BLOCK_ROWS`` rows: per block a [b, D] x [D, C] product, the
class sums accumulated with a one-hot product. Held across passes: the labels (int32) and
confidences (float32) of every image, the text-only labels (int32), and O(C x D). A million
512-dimensional embeddings (2 GB) need about 12 MB plus one chunk.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TypeAlias

import numpy as np
import numpy.typing as npt

__all__ = ["BLOCK_ROWS", "GUARDS", "ChunkSource", "Iteration", "RefineParams", "Refinement", "refine"]

Matrix: TypeAlias = npt.NDArray[np.float32]
Labels: TypeAlias = npt.NDArray[np.int32]
ChunkSource: TypeAlias = Callable[[], Iterable[Matrix]]
"""A callable returning a new iterator over the same [n, D] chunks, in the same order, each call."""
Guard: TypeAlias = Literal["none", "balance", "text", "both"]
GUARDS: tuple[Guard, ...] = ("none", "balance", "text", "both")
BLOCK_ROWS = 16384
"""Rows per matrix product (keeps the [rows, C] temporaries small and in cache)."""


@dataclass(frozen=True)
class RefineParams:
    """How :func:`refine` refines; :meth:`digest` names a set of values in result keys."""

    iterations: int = 10
    """Refinement iterations at most (each one a pass over the collection)."""
    temperature: float = 0.05
    """Similarities / temperature are the logits: the scale of the guard's log-priors and of the confidences."""
    text_weight_start: float = 0.95
    """A prototype's share of its text embedding in the first iteration."""
    text_weight_drop: float = 0.35
    """How much that share falls over all iterations (0.95 to 0.60 by the last)."""
    guard: str = "balance"
    """Against prototype collapse: ``balance``, ``text``, ``both``, or ``none`` (seed 002 exactly)."""
    balance_band: float = 2.0
    """``balance``: how many times above or below its text-only mass a class may drift unchecked."""
    text_pull: float = 1.0
    """``text``: the weight of the text-only log-probabilities added to the logits."""
    soft: bool = False
    """Class means weighted by softmax probabilities instead of hard assignments (measured no better)."""
    tolerance: float = 0.001
    """Stop when an iteration moves fewer than this share of the images (0: never stop early)."""
    min_images: int = 100
    """Below this many images: the text-only assignment, no iteration (0: always refine)."""

    def __post_init__(self) -> None:
        if self.iterations < 0:
            raise ValueError(f"iterations must be 0 or more, not {self.iterations}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive, not {self.temperature}")
        if self.guard not in GUARDS:
            raise ValueError(f"guard must be one of {', '.join(GUARDS)}, not {self.guard!r}")
        if not self.balance_band >= 1:
            raise ValueError(f"balance_band must be 1 or more, not {self.balance_band}")
        if self.text_pull < 0 or self.tolerance < 0 or self.min_images < 0:
            raise ValueError("text_pull, tolerance and min_images must not be negative")

    def text_weight(self, iteration: int) -> float:
        """The text weight of ``iteration`` (0-based)."""
        return self.text_weight_start - self.text_weight_drop * iteration / max(self.iterations, 1)

    def as_dict(self) -> dict[str, Any]:
        """The values by name (JSON-ready)."""
        return asdict(self)

    def digest(self) -> str:
        """Eight hex digits naming these values (for result keys: other values, other results)."""
        text = json.dumps(self.as_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:8]


@dataclass
class Iteration:
    """What one iteration did (passed to ``on_iteration`` as soon as it is done)."""

    number: int
    """1-based."""
    text_weight: float
    """The text weight of the prototypes this iteration built."""
    mean_confidence: float
    """The mean confidence of the images' new labels."""
    active_classes: int
    """Classes with at least one image after the reassignment."""
    moved: int
    """Images whose label changed in this iteration (the first: against the text-only labels)."""
    moved_share: float
    """``moved`` / images."""
    counts: tuple[int, ...]
    """Images per class after the reassignment."""

    def describe(self, of: int) -> str:
        """One log line: ``iteration 3/10: mean confidence 0.561, active classes 7/7, ...``."""
        return (
            f"iteration {self.number}/{of}: mean confidence {self.mean_confidence:.3f}, "
            f"active classes {self.active_classes}/{len(self.counts)}, text weight {self.text_weight:.2f}, "
            f"moved {self.moved} ({100 * self.moved_share:.1f}%)"
        )


@dataclass
class Refinement:
    """The outcome of :func:`refine`."""

    prototypes: Matrix
    """[C, D] float32 unit rows: the prototypes of the final assignment (the texts when no iteration ran)."""
    labels: Labels
    """[N] int32: each image's class (row of ``texts``)."""
    confidence: npt.NDArray[np.float32]
    """[N] float32: the softmax probability of that class at ``temperature`` (guard included)."""
    text_labels: Labels
    """[N] int32: the text-only (inductive) labels, for comparison."""
    log_prior: npt.NDArray[np.float32]
    """[C] float32: the balance guard's final per-class log-priors (zeros without it)."""
    guard: str
    iterations: list[Iteration] = field(default_factory=list)
    stopped_early: bool = False
    """True when assignments stopped moving before ``iterations`` ran."""


@dataclass
class _Pass:
    """One assignment pass over the collection."""

    labels: Labels
    confidence: npt.NDArray[np.float32]
    sums: npt.NDArray[np.float64]
    """[C, D] per-class sums of the images (probability-weighted when ``soft``)."""
    mass: npt.NDArray[np.float64]
    """[C] mean softmax probability per class."""
    counts: npt.NDArray[np.int64]


def _source(vectors: Matrix | ChunkSource) -> ChunkSource:
    if callable(vectors):
        return vectors
    matrix = np.asarray(vectors)
    if matrix.ndim != 2:
        raise ValueError(f"vectors must be a [N, D] matrix or a chunk source, not of shape {matrix.shape}")
    return lambda: iter((matrix,))


def _blocks(source: ChunkSource, dim: int) -> Iterator[Matrix]:
    for chunk in source():
        matrix = np.asarray(chunk, dtype=np.float32)
        if matrix.ndim != 2 or matrix.shape[1] != dim:
            raise ValueError(f"a chunk of shape {matrix.shape}: [n, {dim}] expected (the texts have {dim} dimensions)")
        for start in range(0, len(matrix), BLOCK_ROWS):
            yield matrix[start : start + BLOCK_ROWS]


def _log_softmax(logits: Matrix) -> Matrix:
    shifted = logits - logits.max(axis=1, keepdims=True)
    out: Matrix = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return out


def _assign(
    source: ChunkSource,
    prototypes: Matrix,
    texts: Matrix,
    temperature: float,
    *,
    log_prior: npt.NDArray[np.float32] | None = None,
    text_pull: float = 0.0,
    soft: bool = False,
    into: tuple[Labels, npt.NDArray[np.float32]] | None = None,
) -> _Pass:
    """Assign every image (argmax of the logits), accumulating what the next prototypes need.

    ``into``: arrays of the right size to write labels and confidences into (all passes but the
    first, which learns the size of the collection)."""
    classes, dim = prototypes.shape
    anchors = np.vstack([prototypes, texts]) if text_pull else prototypes
    scale = np.float32(1 / temperature)
    sums = np.zeros((classes, dim), dtype=np.float64)
    mass = np.zeros(classes, dtype=np.float64)
    label_parts: list[Labels] = []
    confidence_parts: list[npt.NDArray[np.float32]] = []
    done = 0
    for block in _blocks(source, dim):
        rows = len(block)
        if into is not None and done + rows > len(into[0]):
            raise ValueError("the chunk source yielded more rows than in its first pass")
        sims = block @ anchors.T
        logits = sims[:, :classes] * scale
        if log_prior is not None:
            logits += log_prior
        if text_pull:
            logits += np.float32(text_pull) * _log_softmax(sims[:, classes:] * scale)
        labels = logits.argmax(axis=1).astype(np.int32)
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits, out=logits)
        total = probs.sum(axis=1, keepdims=True)
        probs /= total
        confidence = (1 / total[:, 0]).astype(np.float32)  # the top class's exp(0) over the total
        mass += probs.sum(axis=0, dtype=np.float64)
        if soft:
            weights = probs
        else:
            weights = np.zeros((rows, classes), dtype=np.float32)
            weights[np.arange(rows), labels] = 1
        sums += (block.T @ weights).T  # (x.T @ w).T: several times faster in OpenBLAS than w.T @ x here
        if into is None:
            label_parts.append(labels)
            confidence_parts.append(confidence)
        else:
            into[0][done : done + rows] = labels
            into[1][done : done + rows] = confidence
        done += rows
    if into is None:
        all_labels = np.concatenate(label_parts) if label_parts else np.empty(0, dtype=np.int32)
        all_confidence = np.concatenate(confidence_parts) if confidence_parts else np.empty(0, dtype=np.float32)
    else:
        if done != len(into[0]):
            raise ValueError("the chunk source yielded fewer rows than in its first pass")
        all_labels, all_confidence = into
    counts = np.bincount(all_labels, minlength=classes).astype(np.int64)
    return _Pass(all_labels, all_confidence, sums, mass / max(done, 1), counts)


def _unit(rows: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    norms = np.linalg.norm(rows, axis=-1, keepdims=True)
    out: npt.NDArray[np.float64] = np.asarray(rows, dtype=np.float64) / np.maximum(norms, 1e-12)
    return out


def _prototypes(texts: Matrix, done: _Pass, text_weight: float) -> Matrix:
    """``normalise(w * text + (1 - w) * normalise(class mean))``; a class with no image keeps its text."""
    norms = np.linalg.norm(done.sums, axis=1)
    has_mean = (done.counts > 0) & (norms > 1e-12)
    blended = text_weight * texts.astype(np.float64) + (1 - text_weight) * _unit(done.sums)
    rows = np.where(has_mean[:, None], _unit(blended), texts.astype(np.float64))
    return rows.astype(np.float32)


def _balance(
    log_prior: npt.NDArray[np.float32], mass: npt.NDArray[np.float64], reference: npt.NDArray[np.float64], band: float
) -> npt.NDArray[np.float32]:
    """One Sinkhorn step, outside the band only: each class's log-prior moved by how far its mass
    drifted beyond ``band`` times (or 1 / ``band`` times) its reference mass."""
    tiny = 1e-30
    drift = np.log(np.maximum(mass, tiny)) - np.log(np.maximum(reference, tiny))
    limit = math.log(band)
    excess = np.sign(drift) * np.maximum(np.abs(drift) - limit, 0)
    out: npt.NDArray[np.float32] = (log_prior - excess).astype(np.float32)
    return out


def refine(
    vectors: Matrix | ChunkSource,
    texts: Matrix,
    params: RefineParams | None = None,
    on_iteration: Callable[[Iteration], None] | None = None,
) -> Refinement:
    """Refine the zero-shot labels of a collection (see the module docstring).

    ``vectors``: [N, D] unit rows, or a chunk source (a callable returning a fresh iterator of
    [n, D] float32 arrays, the same rows in the same order each call). ``texts``: [C, D] unit rows,
    one per label. ``on_iteration`` is called after each iteration with what it did.
    Raises ValueError for shapes that do not fit, or a chunk source whose row count changes."""
    params = params or RefineParams()
    texts = np.ascontiguousarray(texts, dtype=np.float32)
    if texts.ndim != 2 or len(texts) == 0:
        raise ValueError(f"texts must be a [C, D] matrix with C >= 1, not of shape {texts.shape}")
    source = _source(vectors)
    temperature = params.temperature
    text_only = _assign(source, texts, texts, temperature)
    images = len(text_only.labels)
    classes = len(texts)
    no_prior = np.zeros(classes, dtype=np.float32)
    result = Refinement(
        prototypes=texts.copy(),
        labels=text_only.labels,
        confidence=text_only.confidence,
        text_labels=text_only.labels,
        log_prior=no_prior,
        guard=params.guard,
    )
    if images == 0 or images < params.min_images or params.iterations == 0:
        return result
    balance = params.guard in ("balance", "both")
    pull = params.text_pull if params.guard in ("text", "both") else 0.0
    buffers = [(np.empty(images, dtype=np.int32), np.empty(images, dtype=np.float32)) for _ in range(2)]
    previous, log_prior, prototypes = text_only, no_prior, texts
    for i in range(params.iterations):
        weight = params.text_weight(i)
        prototypes = _prototypes(texts, previous, weight)
        done = _assign(
            source,
            prototypes,
            texts,
            temperature,
            log_prior=log_prior if balance else None,
            text_pull=pull,
            soft=params.soft,
            into=buffers[i % 2],  # the other one holds the labels before this iteration
        )
        moved = int(np.count_nonzero(done.labels != previous.labels))
        step = Iteration(
            number=i + 1,
            text_weight=weight,
            mean_confidence=float(done.confidence.mean(dtype=np.float64)),
            active_classes=int(np.count_nonzero(done.counts)),
            moved=moved,
            moved_share=moved / images,
            counts=tuple(int(c) for c in done.counts),
        )
        result.iterations.append(step)
        if on_iteration is not None:
            on_iteration(step)
        previous = done
        result.prototypes, result.labels, result.confidence = prototypes, done.labels, done.confidence
        result.log_prior = log_prior
        if balance:
            log_prior = _balance(log_prior, done.mass, text_only.mass, params.balance_band)
        if step.moved_share < params.tolerance and i + 1 < params.iterations:
            result.stopped_early = True
            break
    return result
