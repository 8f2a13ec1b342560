"""Collection-level refinement of zero-shot labels: class prototypes learnt from the collection.

Zero-shot classification scores each image against its labels' text embeddings alone (the
*inductive*, text-only assignment). A whole collection tells more: images of one class lie close
together, so a class prototype can move from its text embedding towards the images it is given.
:func:`refine` does that (seed 002's prototype refinement), with a guard against the failure its
users met: classes emptied for good while one class takes the collection.

API::

    refine(vectors, texts, params=RefineParams(), on_iteration=None) -> Refinement

``vectors``: [N, D] float32 unit rows, or a chunk source (see Memory); ``texts``: [C, D] unit
rows, one per label. :class:`RefineParams` holds the settings (``digest()`` names them in result
keys), ``on_iteration`` gets an :class:`Iteration` after each iteration (``describe()`` makes the
log line), and :class:`Refinement` has the prototypes, labels, confidences, the text-only labels,
the guard's log-priors and the iterations.

The algorithm
-------------
Prototypes start as the text embeddings and every image gets its text-only label. Then each
iteration ``i`` (0-based, ``iterations`` of them):

1. each class's *visual mean* is the normalised mean of the images now assigned to it, and its
   prototype becomes ``normalise(w * text[c] + (1 - w) * visual_mean[c])`` with the text weight
   ``w = text_weight_start - text_weight_drop * i / iterations`` (0.95 falling to 0.60): a strong
   text anchor first, more of the collection later. A class with no image keeps its text row;
2. every image is reassigned to the argmax of its logits under the new prototypes (plus the
   guard's log-priors).

The assignment after the last iteration is the final one, made with the final prototypes. This is
seed 002's loop exactly: its iteration ``i`` assigns with the prototypes the iteration before made
(the text embeddings first, so its first assignment is the text-only one) and then updates them,
and its "final assignment" is our last reassignment. An iteration's ``moved`` counts the images
its reassignment changed (the first: against the text-only labels). Refinement stops early when
two iterations in a row each move fewer than ``tolerance`` of the images (``tolerance=0``: never,
as seed 002). Two, not one: the text weight keeps falling, and an iteration at ``w = 0.95`` that
moves nothing says little about the next ones (on 288 small synthetic sets of the kind
``tests/test_refine.py`` makes, stopping after one still iteration lost 0.2 points of accuracy on
average, and without the guard up to 26 points on collapse-prone ones, which stopped after the
first iteration; never stopping early gained 0.7 points there, for ten passes every time).
Below ``min_images`` images (seed 002's rule: 100) there is too little collection to learn
from: the text-only assignment is returned with no iteration.

Temperature
-----------
Similarities are cosines; ``temperature`` (0.05) turns them into logits ``sims / temperature``.
In seed 002 it came before a hard argmax and so changed nothing. Here it does three things: it
sets the scale of the guard's log-priors (a log-prior of 1 is worth a cosine of ``temperature``);
the guard's class masses are mean softmax probabilities at this temperature; and each label's
``confidence`` is the softmax probability, at this temperature, of the chosen class over the same
logits that chose it (log-priors included): in [0, 1] and summing to 1 over the classes, like the
classify plugin's confidences (which use the plugin's temperature, 0.01 for CLIP, so they are
sharper than these). Assignments stay hard: class means weighted by softmax probabilities (soft
assignments) measured no better (fashion-mnist, ``bench/bench_refine.py``'s harness, 6 prototype
draws per noise level: from -0.45 to +0.71 points against hard assignments; on synthetic sets
-0.3 points on average).

The guard
---------
Why classes die: CLIP's text and image embeddings lie apart (the modality gap: an image is about
0.3 cosine from its label's text, 0.5 to 0.9 from images like it). A prototype that has taken in
a share of image mean is closer to *every* image than a prototype that is text only, so a class
left with no image (by a label near the centre of the data that takes almost everything at
first, say) keeps its text row, cannot win an image back, and stays empty while the others grow:
seed 002's "active classes 1/7".

``guard="balance"`` (the default) is a class-balance prior, Sinkhorn-style. Each class has a
reference mass: ``1 - uniform_mix`` (0.7) of the text-only prediction's class mass (the mean
text-only softmax probability of the class) plus ``uniform_mix`` (0.3) of an even share ``1 / C``.
Before each reassignment, per-class log-priors ``b`` are added to the logits: the smallest ones
(Sinkhorn scaling steps from zero) under which every class's predicted mass, the mean softmax
probability of ``sims / T + b``, is at least ``mass_floor`` (0.5) of its reference. They are
solved on a fixed sample of ``GUARD_SAMPLE`` rows taken in the first pass, against the new
prototypes, so they never lag behind them (a first version corrected after each pass from the
pass before: a class revived that way overshot and took everything). So no class the text
prediction gives real mass to can die, and the even share brings back classes the text-only
assignment itself left empty (seed 002's "active classes 1/7" was its first, text-only,
assignment); a class above its floor is left alone, so refinement stays free to change
proportions the text prior got wrong. Soft masses, not counts: an empty class still has a
measurable mass, so the solve knows how far it is from its floor.

Measured (``bench/bench_refine.py`` prints its own figures). Fashion-mnist (5 prototype draws per
noise level): the guard is at least as accurate as seed 002 at every level, and where the
noisiest prototypes leave classes empty text-only (8 of 10 active, and seed 002 keeps them empty)
it brings all 10 back. On 288 small synthetic CLIP-like sets (modality gap, weak text priors,
some with a label near the centre of the images; in 79 the text-only assignment leaves a class
empty) seed 002 ends with every class active in 209 and the guard in 258, gaining +16.8 points
over text-only against +16.5. Imbalanced classes (250/100/40/10 images): 71.9% against 71.7%;
(10/40/100/250): 47.1% against 46.0%. The cost is on label lists with many labels absent from
the collection, where the even share pulls images to them: 12 of 16 labels absent, 40.7%
against 41.1%; 36 of 40 absent, 29.4% against 29.7%. ``uniform_mix`` sets that trade: 0 keeps
to the text-only mass (no cost there, 40.9% and 29.7%, but no class comes back that the
text-only assignment emptied: 9 of 10 classes on fashion-mnist), 1 assumes balanced classes
(+17.8 points on the synthetic sets, but 40.3% and 27.1%). Rejected after measuring: a ceiling
as well (no class above twice its reference: up to 0.5 points lost on fashion-mnist, where it
stops refinement growing classes a weak prior under-predicted, and no class revived that the
floor does not revive); TransCLIP's pull towards the text-only prediction (its KL term, as logits
``sims / T + log q_text``: up to 2.5 points below seed 002 on fashion-mnist, 5.3 points on the
synthetic sets, and powerless when the text-only prediction is itself collapsed, as it then
pulls towards the collapse). ``guard="none"`` is seed 002's schedule exactly (with
``tolerance=0``, its number of iterations too).

Memory
------
``vectors`` is a [N, D] float32 array of unit rows (the embedding store keeps unit vectors; rows
are not normalised again), or a *chunk source*: a callable returning a fresh iterator of [n, D]
arrays each time, the same rows in the same order, e.g.
``lambda: (v for _, v in store.model(model_id).chunks())``. Each pass (``iterations + 1`` at most)
reads the chunks once, in blocks of ``BLOCK_ROWS`` rows: per block one [b, D] x [D, C] product
for the logits; the class sums come from a one-hot product in the first pass, then are updated
with the images that moved (a product over their rows alone). Held across passes: labels (int32) and
confidences (float32) for the text-only assignment and two iterations (24 bytes per image), the
guard's sample (``GUARD_SAMPLE`` x D float32) and O(C x D): for a million 512-dimensional
embeddings (2 GB), about 32 MB, plus one chunk and a few blocks' temporaries.
"""

from __future__ import annotations

import hashlib
import json
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
Guard: TypeAlias = Literal["balance", "none"]
GUARDS: tuple[Guard, ...] = ("balance", "none")
VERSION = 1
"""Of the algorithm: part of :meth:`RefineParams.digest`, raised when the same values would refine differently."""
BLOCK_ROWS = 16384
"""Rows per matrix product (keeps the [rows, C] temporaries small and in cache)."""
GUARD_SAMPLE = 4096
"""Rows of the collection the balance guard solves its log-priors on (a fixed sample)."""
PRIOR_STEPS = 100
"""Sinkhorn steps at most per solve of the log-priors."""


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
    """Against prototype collapse: ``balance`` (class-balance log-priors) or ``none`` (seed 002 exactly)."""
    mass_floor: float = 0.5
    """``balance``: the share of its reference mass a class keeps at least (its predicted mass)."""
    uniform_mix: float = 0.3
    """``balance``: the reference mass is this much an even share (1 / C), the rest the text-only mass."""
    tolerance: float = 0.001
    """Stop when two iterations in a row each move fewer than this share of the images (0: never)."""
    min_images: int = 100
    """Below this many images: the text-only assignment, no iteration (0: always refine)."""

    def __post_init__(self) -> None:
        if self.iterations < 0:
            raise ValueError(f"iterations must be 0 or more, not {self.iterations}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive, not {self.temperature}")
        if self.guard not in GUARDS:
            raise ValueError(f"guard must be one of {', '.join(GUARDS)}, not {self.guard!r}")
        if not (0 <= self.mass_floor <= 1 and 0 <= self.uniform_mix <= 1):
            raise ValueError(
                f"mass_floor and uniform_mix must be between 0 and 1, not {self.mass_floor}, {self.uniform_mix}"
            )
        if self.tolerance < 0 or self.min_images < 0:
            raise ValueError("tolerance and min_images must not be negative")

    def text_weight(self, iteration: int) -> float:
        """The text weight of ``iteration`` (0-based)."""
        return self.text_weight_start - self.text_weight_drop * iteration / max(self.iterations, 1)

    def as_dict(self) -> dict[str, Any]:
        """The values by name (JSON-ready)."""
        return asdict(self)

    def digest(self) -> str:
        """Eight hex digits naming these values (for result keys: other values, other results)."""
        text = json.dumps({**self.as_dict(), "version": VERSION}, sort_keys=True)
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
    """[C, D] per-class sums of the assigned images."""
    mass: npt.NDArray[np.float64]
    """[C] mean softmax probability per class."""
    counts: npt.NDArray[np.int64]


class _Sample:
    """A fixed sample of at most ``size`` rows, the same whatever the chunking: the rows whose
    position hashes lowest (Fibonacci hashing of the row number)."""

    def __init__(self, size: int, dim: int) -> None:
        self.size = size
        self.keys = np.empty(0, dtype=np.uint64)
        self.rows = np.empty((0, dim), dtype=np.float32)

    def add(self, start: int, block: Matrix) -> None:
        with np.errstate(over="ignore"):
            keys = np.arange(start, start + len(block), dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        if len(self.keys) >= self.size:
            wanted = keys < self.keys.max()
            keys, block = keys[wanted], block[wanted]
            if not len(keys):
                return
        self.keys = np.concatenate([self.keys, keys])
        self.rows = np.concatenate([self.rows, block])
        if len(self.keys) > self.size:
            kept = np.argpartition(self.keys, self.size - 1)[: self.size]
            kept.sort()
            self.keys, self.rows = self.keys[kept], self.rows[kept]


def _source(vectors: Matrix | ChunkSource) -> ChunkSource:
    if callable(vectors):
        return vectors
    matrix = np.asarray(vectors)
    if matrix.ndim != 2:
        raise ValueError(f"vectors must be a [N, D] matrix or a chunk source, not of shape {matrix.shape}")
    return lambda: iter((matrix,))


def _blocks(source: ChunkSource, dim: int) -> Iterator[Matrix]:
    """The source's rows, ``BLOCK_ROWS`` at a time; a chunk is let go before the next is read."""
    for chunk in source():
        matrix = np.asarray(chunk, dtype=np.float32)
        del chunk
        if matrix.ndim != 2 or matrix.shape[1] != dim:
            raise ValueError(f"a chunk of shape {matrix.shape}: [n, {dim}] expected (the texts have {dim} dimensions)")
        for start in range(0, len(matrix), BLOCK_ROWS):
            yield matrix[start : start + BLOCK_ROWS]
        del matrix


def _assign(
    source: ChunkSource,
    prototypes: Matrix,
    temperature: float,
    *,
    log_prior: npt.NDArray[np.float32] | None = None,
    into: tuple[Labels, npt.NDArray[np.float32]] | None = None,
    before: _Pass | None = None,
    sample: _Sample | None = None,
) -> _Pass:
    """Assign every image to the argmax of its logits, accumulating the class sums and masses.

    ``into``: arrays of the collection's size to write labels and confidences into (every pass
    but the first, which learns the size); ``before``: the pass before, whose class sums are
    updated with the images that moved (a product over the moved rows only, not every row);
    ``sample``: rows to keep for the guard (the first pass)."""
    classes, dim = prototypes.shape
    scaled = (prototypes / np.float32(temperature)).astype(np.float32).T  # logits in one product
    sums = np.zeros((classes, dim), dtype=np.float64) if before is None else before.sums.copy()
    mass = np.zeros(classes, dtype=np.float64)
    label_parts: list[Labels] = []
    confidence_parts: list[npt.NDArray[np.float32]] = []
    done = 0
    for block in _blocks(source, dim):
        rows = len(block)
        if into is not None and done + rows > len(into[0]):
            raise ValueError("the chunk source yielded more rows than in its first pass")
        logits = block @ scaled
        if log_prior is not None:
            logits += log_prior
        labels = logits.argmax(axis=1).astype(np.int32)
        every = np.arange(rows)
        logits -= logits[every, labels][:, None]
        probs = np.exp(logits, out=logits)
        inverse = 1 / probs.sum(axis=1)
        confidence = inverse.astype(np.float32)  # the top class's exp(0) over the sum
        mass += np.einsum("n,nc->c", inverse, probs)  # each row's probabilities, summed (gemv: 30x slower)
        if before is None:
            one_hot = np.zeros((rows, classes), dtype=np.float32)
            one_hot[every, labels] = 1
            sums += (block.T @ one_hot).T  # several times faster in OpenBLAS than one_hot.T @ block
        else:
            was = before.labels[done : done + rows]
            moved = np.flatnonzero(labels != was)
            if len(moved):
                change = np.zeros((len(moved), classes), dtype=np.float32)
                change[np.arange(len(moved)), labels[moved]] = 1
                change[np.arange(len(moved)), was[moved]] = -1
                sums += (block[moved].T @ change).T
        if sample is not None:
            sample.add(done, block)
        if into is None:
            label_parts.append(labels)
            confidence_parts.append(confidence)
        else:
            into[0][done : done + rows] = labels
            into[1][done : done + rows] = confidence
        done += rows
        del block  # a view of the chunk: let it go before the next chunk is read
    if into is None:
        all_labels = np.concatenate(label_parts) if label_parts else np.empty(0, dtype=np.int32)
        all_confidence = np.concatenate(confidence_parts) if confidence_parts else np.empty(0, dtype=np.float32)
    else:
        if done != len(into[0]):
            raise ValueError("the chunk source yielded fewer rows than in its first pass")
        all_labels, all_confidence = into
    counts = np.bincount(all_labels, minlength=classes).astype(np.int64)
    return _Pass(all_labels, all_confidence, sums, mass / max(done, 1), counts)


def _unit(rows: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float64]:
    norms = np.linalg.norm(rows, axis=-1, keepdims=True)
    out: npt.NDArray[np.float64] = np.asarray(rows, dtype=np.float64) / np.maximum(norms, 1e-12)
    return out


def _prototypes(texts: Matrix, done: _Pass, text_weight: float) -> Matrix:
    """``normalise(w * text + (1 - w) * normalise(class mean))``; a class with no image keeps its text."""
    has_mean = (done.counts > 0) & (np.linalg.norm(done.sums, axis=1) > 1e-12)
    blended = _unit(text_weight * texts.astype(np.float64) + (1 - text_weight) * _unit(done.sums))
    return np.where(has_mean[:, None], blended, texts.astype(np.float64)).astype(np.float32)


def _log_prior(
    logits: npt.NDArray[np.float64], reference: npt.NDArray[np.float64], floor: float
) -> npt.NDArray[np.float32]:
    """The smallest per-class log-priors (Sinkhorn steps from zero) under which every class's mean
    softmax probability over ``logits`` ([S, C], the guard's sample) is at least ``floor`` times
    its ``reference`` mass."""
    tiny = 1e-300
    low = np.log(np.maximum(reference * floor, tiny))
    prior = np.zeros(logits.shape[1])
    for _ in range(PRIOR_STEPS):
        shifted = logits + prior
        shifted -= shifted.max(axis=1, keepdims=True)
        probs = np.exp(shifted)
        probs /= probs.sum(axis=1, keepdims=True)
        short = low - np.log(np.maximum(probs.mean(axis=0), tiny))
        if short.max() < 0.01:  # every class within 1% of its floor, or above it
            break
        prior += np.maximum(short, 0)
    return prior.astype(np.float32)


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
    balance = params.guard == "balance"
    sample = _Sample(GUARD_SAMPLE, texts.shape[1]) if balance else None
    text_only = _assign(source, texts, params.temperature, sample=sample)
    images, classes = len(text_only.labels), len(texts)
    result = Refinement(
        prototypes=texts.copy(),
        labels=text_only.labels,
        confidence=text_only.confidence,
        text_labels=text_only.labels,
        log_prior=np.zeros(classes, dtype=np.float32),
        guard=params.guard,
    )
    if images == 0 or images < params.min_images or params.iterations == 0:
        return result
    reference = (1 - params.uniform_mix) * text_only.mass + params.uniform_mix / classes
    buffers = [(np.empty(images, dtype=np.int32), np.empty(images, dtype=np.float32)) for _ in range(2)]
    previous = text_only
    for i in range(params.iterations):
        weight = params.text_weight(i)
        prototypes = _prototypes(texts, previous, weight)
        log_prior = None
        if sample is not None:
            logits = (sample.rows @ prototypes.T).astype(np.float64) / params.temperature
            log_prior = _log_prior(logits, reference, params.mass_floor)
        done = _assign(
            source,
            prototypes,
            params.temperature,
            log_prior=log_prior,
            into=buffers[i % 2],  # the other one holds the labels from before this iteration
            before=previous,
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
        result.prototypes, result.labels, result.confidence = prototypes, done.labels, done.confidence
        if log_prior is not None:
            result.log_prior = log_prior
        if on_iteration is not None:
            on_iteration(step)
        previous = done
        still = len(result.iterations) >= 2 and all(s.moved_share < params.tolerance for s in result.iterations[-2:])
        if still and i + 1 < params.iterations:
            result.stopped_early = True
            break
    return result
