"""Train/val/test splits for ``analyzer export``: stratified by class, reproducible without saved
state, and never with a near-duplicate of a training image in the test set.

**Duplicate groups** (:func:`duplicate_groups`). Images with the same content hash are one group;
so are images whose embeddings have a cosine similarity of at least ``threshold`` (0.95), joined
transitively (union-find). A group's key is its smallest content hash. Images without an embedding
are grouped by hash only. Up to ``EXACT_UP_TO`` (5,000) vectors every pair is compared, by blocked
matrix products. Above, an inverted file (:func:`near_pairs`): the vectors are projected on their
first 64 principal components (of a sample), cut there into ``k = 4·sqrt(N)`` cells by spherical
k-means (4 rounds on a sample of 16 vectors per cell), and each vector is put in its 3 nearest
cells, so that two look-alikes either side of a border still share one; every pair within a cell
is then compared in full. This is done for 2 partitions from other seeds: a pair that one splits,
the other rarely does.

Cost at 100,000 vectors of 512 dimensions: k = 1,265 cells of about 240 vectors (each vector in
3); per partition 6.6·10⁹ multiply-adds of k-means, 8.1·10⁹ to place the vectors and 3.6·10¹⁰ to
compare 7·10⁷ pairs, plus 8.5·10⁹ once for the principal components: 1.1·10¹¹ in all, against
2.6·10¹² (5·10⁹ pairs) for brute force. Memory: the vectors themselves (the export holds them as
float16, 102 MB, and verifies the pairs found a little below the threshold at full precision;
unit rows of distinct hashes are used in place, otherwise a normalised copy is made), 26 MB of
projections, the principal components' covariance summed a few thousand rows at a time, and
products in blocks of at most ``BLOCK`` similarities (16 MB), never N x N. Measured on this
2-core machine: 2.4 s with float32 vectors, 3.1 s with float16 (the products are computed in
float32 from them), all of 1,000 planted pairs at cosine 0.98 found. The cells are compared one
per core in threads (BLAS on one thread meanwhile: products of a few hundred rows split over
cores only wait).

Recall: a pair is missed only when no partition gives the two vectors a common cell, and
:func:`search_recall` measures how often against brute force on a sample. On random unit vectors
(the hard case: real embeddings cluster, so their cells have clearer borders), 3,000 planted pairs
among 20,000: at cosine 0.98 every pair is found (64 and 512 dimensions); at exactly the threshold,
0.95, all in 512 dimensions and 2,015 of 2,016 in 64. The tests check that every planted pair is
found and that the groups equal brute force's on a smaller set.

**Splits** (:func:`assign_splits`). Each group has a position in [0, 1), a keyed hash of the seed
and its key (``sha256(f"{seed}:{key}")``), and a class: its images' most common one (no class,
``""``, is a class of its own). Per class, the groups are taken in order of position and cut into
train | val | test at the image counts the ratios ask for (largest remainder: each class within one
image of its targets when groups are single images), so a rerun on the same images gives the same
splits, in any order, without saved state. With ``exact=False`` a group's split is instead its
position against the cumulative ratios (train below 0.7, val below 0.85): a pure function of (seed,
group key), so adding images moves no other even without saved state, but each class's shares are
only near the targets (binomial drift). :class:`Drift` reports each split's share against its
target, overall and per class.

**Why a split never moves.** Given ``previous`` (content hash -> split, from the export's
manifest), a group with an image exported before keeps that split. If its earlier images disagree
(a new image bridged two old groups of different splits), the group takes the split most of them
had, ties going to that of the image whose hash sorts first; the others move, since leaving them
would leak, and :attr:`Drift.moved` counts them. Only groups with no earlier image are dealt,
filling what keeps each class nearest its targets. Without ``previous``: with ``exact=False`` no
earlier image moves unless a new image merged its group (the key, the smallest hash, may change);
with ``exact=True`` the few groups next to a cut can cross it (27 of 2,000 when 200 images are
added, in the tests). The approximate search itself may find a pair in one run and not in another
(the sample changes as images are added); with ``previous`` that moves nothing either.

**A re-export** looks only for the look-alikes of its new images (those with no earlier split),
each of their vectors against every stored one as the store streams them past (:func:`look_alikes_of`,
exact blocked products, memory for one chunk): the earlier images were grouped, and their splits
fixed, by the exports before. 1,000 new images among 100,000 are 10⁸ similarities, against the
whole search's 10¹⁰-odd.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..embeddings import one_blas_thread

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    Matrix = npt.NDArray[np.float32]
    Indices = npt.NDArray[np.int64]

SPLITS = ("train", "val", "test")
EXACT_UP_TO = 5000
"""Up to this many vectors, every pair is compared (at most 1.25·10⁷ pairs): exact and fast enough."""
PROBES = 3
"""Cells of each partition a vector is put in (its nearest): a pair either side of a border still meets."""
TABLES = 2
"""Independent partitions (k-means from other seeds): a pair split by one is rarely split by both."""
CELLS_PER_ROOT = 4
"""Cells per partition: this times the square root of the number of vectors."""
REDUCED = 64
"""Principal components the cells are found in (the pairs are compared in full)."""
HALF_MARGIN = 2e-3
"""How far below the threshold float16 vectors' pairs are taken, to be verified at full precision:
rounding to float16 moves a cosine of unit vectors by at most about 1e-3."""
BLOCK = 1 << 22
"""Similarities computed at once (float32: 16 MB): memory stays bounded however many vectors."""
EDGES = 1 << 20
"""Pairs handed to union-find at once (16 MB of row numbers), however many look alike."""
PCA_SAMPLE = 20_000
"""Vectors the principal components are found from."""
SAMPLE_PER_CELL = 16
"""k-means is fitted on this many vectors per cell, not on all of them."""
KMEANS_ROUNDS = 4
"""Rounds of k-means: the cells need only be good enough to keep look-alikes together."""


# -- ratios ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SplitRatios:
    """The share of each split, adding up to 1; a share may be 0 (no validation set, say)."""

    train: float = 0.7
    val: float = 0.15
    test: float = 0.15

    def __post_init__(self) -> None:
        shares = self.as_tuple()
        if not all(math.isfinite(s) and s >= 0 for s in shares):
            raise ValueError(f"split shares must be numbers of at least 0, not {shares}")
        if abs(sum(shares) - 1) > 1e-6:
            raise ValueError(f"split shares must add up to 1 (or 100), not {sum(shares):g}")

    @classmethod
    def parse(cls, text: str) -> SplitRatios:
        """``"70/15/15"``, ``"0.8,0.1,0.1"``, ``"80:0:20"`` (train, val, test; percentages or fractions)."""
        parts = [p for p in re.split(r"[/,:;\s]+", text.strip()) if p]
        try:
            numbers = [float(p.removesuffix("%")) for p in parts]
        except ValueError:
            numbers = []
        if len(numbers) != 3:
            raise ValueError(f"split ratios are three shares, train/val/test (70/15/15 or 0.8,0.1,0.1), not {text!r}")
        scale = 100.0 if abs(sum(numbers) - 100) <= 1e-4 else 1.0
        return cls(*(n / scale for n in numbers))

    def as_tuple(self) -> tuple[float, float, float]:
        return (self.train, self.val, self.test)

    def as_dict(self) -> dict[str, float]:
        return dict(zip(SPLITS, self.as_tuple(), strict=True))

    def __str__(self) -> str:
        return "/".join(f"{round(s * 100, 2):g}" for s in self.as_tuple())


# -- duplicate groups ----------------------------------------------------------------------------
def duplicate_groups(
    hashes: Sequence[str],
    vectors: Matrix | None = None,
    has_vector: Sequence[bool] | None = None,
    *,
    threshold: float = 0.95,
    seed: int = 0,
    exact_up_to: int = EXACT_UP_TO,
    probes: int = PROBES,
    tables: int = TABLES,
    pairs: Iterable[tuple[Indices, Indices]] | None = None,
    verify: Callable[[Indices, Indices], npt.NDArray[np.bool_]] | None = None,
) -> list[str]:
    """The group key of each image: the smallest content hash among its duplicates.

    ``vectors`` (``[len(hashes), D]``, one row per image) join images whose cosine similarity is
    at least ``threshold``; rows where ``has_vector`` is False, or that are zero or not finite, are
    left out (those images are grouped by hash only). Unit ``float32`` rows, one per distinct hash
    (as the embedding store gives them), are used in place; otherwise a normalised copy is made.
    The same hash more than once is one image: its first row with a vector stands for it. Up to
    ``exact_up_to`` vectors every pair is compared; above, see :func:`near_pairs`. The answer does
    not depend on the order of the images (the search samples them in the order of their hashes).

    ``vectors`` may be ``float16``: half the memory (100,000 x 512: 102 MB, not 205). Similarities
    are then computed in float32 from the rounded vectors, the pairs found from ``threshold`` less
    ``HALF_MARGIN`` (rounding moves a cosine by less), and ``verify(a, b)`` (blocks of image rows)
    says which of them are look-alikes at full precision; without it, the rounded cosine decides.

    ``pairs`` (blocks of image rows, instead of ``vectors``): the look-alikes, found already (a
    re-export looks only for its new images', :func:`look_alikes_of`).
    """
    import numpy as np

    if pairs is not None:
        return _grouped(hashes, pairs)

    if not 0 < threshold <= 1:
        raise ValueError(f"the near-duplicate threshold is a cosine similarity in (0, 1], not {threshold}")
    if vectors is None:
        return list(hashes)
    if vectors.ndim != 2 or len(vectors) != len(hashes):
        raise ValueError(f"{len(hashes)} hashes but vectors of shape {vectors.shape}")
    if has_vector is not None and len(has_vector) != len(hashes):
        raise ValueError(f"{len(hashes)} hashes but {len(has_vector)} has_vector flags")
    unique = sorted(set(hashes))
    index = {h: n for n, h in enumerate(unique)}
    row_of = np.full(len(unique), -1, dtype=np.int64)  # per distinct hash, the row that stands for it
    for row, content_hash in enumerate(hashes):
        n = index[content_hash]
        if row_of[n] < 0 and (has_vector is None or has_vector[row]):
            row_of[n] = row
    with_vector = np.flatnonzero(row_of >= 0)
    matrix, order, position = _unit_rows(vectors, row_of[with_vector])
    owner = with_vector[position]  # the distinct hash of each row of the matrix
    parent = np.arange(len(unique), dtype=np.int64)
    half = matrix.dtype == np.float16
    at = max(-1.0, threshold - HALF_MARGIN) if half else threshold
    found = near_pairs(matrix, at, order=order, seed=seed, exact_up_to=exact_up_to, probes=probes, tables=tables)
    for a, b in _batched(found, EDGES) if half else found:
        if half:  # candidates: verified at full precision, many at once
            if verify is not None:
                keep = verify(row_of[owner[a]], row_of[owner[b]])
            else:
                keep = np.einsum("ij,ij->i", matrix[a], matrix[b], dtype=np.float32) >= threshold
            a, b = a[keep], b[keep]
        _union(parent, owner[a], owner[b])
    root = _roots(parent)  # the smallest index in each group: the smallest hash, as `unique` is sorted
    return [unique[root[index[h]]] for h in hashes]


def _batched(blocks: Iterable[tuple[Indices, Indices]], size: int) -> Iterator[tuple[Indices, Indices]]:
    """The pairs of many small blocks in blocks of about ``size`` pairs."""
    import numpy as np

    lefts: list[Indices] = []
    rights: list[Indices] = []
    held = 0
    for a, b in blocks:
        lefts.append(a)
        rights.append(b)
        held += len(a)
        if held >= size:
            yield np.concatenate(lefts), np.concatenate(rights)
            lefts, rights, held = [], [], 0
    if lefts:
        yield np.concatenate(lefts), np.concatenate(rights)


def _grouped(hashes: Sequence[str], pairs: Iterable[tuple[Indices, Indices]]) -> list[str]:
    """The group key of each image given the pairs of image rows that are look-alikes."""
    import numpy as np

    unique = sorted(set(hashes))
    index = {h: n for n, h in enumerate(unique)}
    owner = np.fromiter((index[h] for h in hashes), dtype=np.int64, count=len(hashes))
    parent = np.arange(len(unique), dtype=np.int64)
    for a, b in pairs:
        _union(parent, owner[a], owner[b])
    root = _roots(parent)
    return [unique[root[index[h]]] for h in hashes]


def look_alikes_of(
    fresh: Matrix, rows: Indices, stored: Iterable[tuple[Indices, Matrix]], threshold: float
) -> Iterator[tuple[Indices, Indices]]:
    """Pairs (image row, fresh image row) of the ``fresh`` vectors (one per row of ``rows``) and the
    ``stored`` ones, given as blocks of (image rows, vectors), at a cosine similarity of at least
    ``threshold``: every stored vector against every fresh one, exactly, with memory for one block
    and its products (BLOCK) whatever the count. Zero or non-finite vectors match nothing."""
    import numpy as np

    fresh = normalised(fresh)
    for block_rows, block in stored:
        if not len(block_rows):
            continue
        block = normalised(block)
        step = max(1, BLOCK // len(block))
        for start in range(0, len(fresh), step):
            near = block @ fresh[start : start + step].T >= threshold
            if not near.any():  # most blocks: nothing near (a scan, far cheaper than nonzero's)
                continue
            a, b = np.nonzero(near)
            x, y = block_rows[a], rows[b + start]
            other = x != y
            if other.any():
                yield x[other].astype(np.int64), y[other].astype(np.int64)


def normalised(block: Matrix) -> Matrix:
    """Unit rows (float32); rows that are zero or not finite stay zero (and match nothing)."""
    import numpy as np

    block = np.asarray(block, dtype=np.float32)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        norms = np.sqrt(np.einsum("ij,ij->i", block, block))
        unit: Matrix = (block / norms[:, None]).astype(np.float32, copy=False)
    unit[~(np.isfinite(norms) & (norms > 0))] = 0
    return unit


def near_pairs(
    matrix: Matrix,
    threshold: float,
    *,
    order: Indices | None = None,
    seed: int = 0,
    exact_up_to: int = EXACT_UP_TO,
    probes: int = PROBES,
    tables: int = TABLES,
) -> Iterator[tuple[Indices, Indices]]:
    """Pairs of rows of ``matrix`` (unit vectors) with a dot product of at least ``threshold``,
    as blocks of (rows, rows); a pair may come more than once.

    Up to ``exact_up_to`` rows, every pair (blocked products: exact). Above, an inverted file:
    ``tables`` independent partitions of the vectors into cells, each vector in the ``probes``
    cells of each that are nearest to it, and every pair within a cell compared (see
    :func:`_partitions`); a pair is missed only if no partition puts the two vectors in a common
    cell (:func:`search_recall` measures how often). ``order`` (a permutation of the rows, by
    default as they are) is the order the partitions sample the rows in.
    """
    import numpy as np

    if len(matrix) <= exact_up_to:
        yield from _exact_pairs(matrix, threshold)
        return
    order = np.arange(len(matrix), dtype=np.int64) if order is None else order
    for cells in _partitions(matrix, order, seed, probes, tables):
        yield from _cell_pairs(matrix, cells, threshold)


@dataclass(frozen=True)
class SearchRecall:
    """How many of the near-duplicate pairs of the sampled vectors the cell search finds."""

    sampled: int
    pairs: int
    """Pairs (a sampled vector, any other) at or above the threshold, by brute force."""
    found: int
    """Of those, the pairs that share a cell (and so are compared, and found)."""

    @property
    def recall(self) -> float:
        return self.found / self.pairs if self.pairs else 1.0


def search_recall(
    matrix: Matrix,
    threshold: float = 0.95,
    *,
    sample: int | Sequence[int] = 1000,
    order: Indices | None = None,
    seed: int = 0,
    probes: int = PROBES,
    tables: int = TABLES,
) -> SearchRecall:
    """The recall of the cell search on ``matrix`` (unit vectors, as :func:`near_pairs` takes
    them, however many): ``sample`` vectors (a number drawn at random, or the rows themselves)
    are compared with every vector by brute force (``sample·N·D`` multiply-adds: about 3 s for
    1,000 of 100,000 x 512 on a busy 2-core CPU), and each pair at or above ``threshold`` is checked against the
    cells :func:`near_pairs` would use (same seed and order). A pair missed directly may still be
    joined through a third image, so the recall of whole groups is at least this.
    """
    import numpy as np

    m = len(matrix)
    if isinstance(sample, int):
        rows = np.sort(np.random.default_rng(seed).choice(m, size=min(sample, m), replace=False))
    else:
        rows = np.unique(np.asarray(sample, dtype=np.int64))
    order = np.arange(m, dtype=np.int64) if order is None else order
    partitions = _partitions(matrix, order, seed, probes, tables)
    pairs = found = 0
    step = max(1, BLOCK // max(m, 1))
    for start in range(0, len(rows), step):
        queries = rows[start : start + step]
        q, other = np.nonzero(matrix[queries] @ matrix.T >= threshold)
        q = queries[q]
        q, other = q[q != other], other[q != other]
        met = np.zeros(len(q), dtype=bool)
        for cells in partitions:
            met |= (cells[q][:, :, None] == cells[other][:, None, :]).any(axis=(1, 2))
        pairs += len(q)
        found += int(met.sum())
    return SearchRecall(len(rows), pairs, found)


def _unit_rows(vectors: Matrix, rows: Indices) -> tuple[Matrix, Indices, Indices]:
    """These rows as unit float32 vectors: (matrix, its rows in the order of ``rows``, the
    position in ``rows`` of each matrix row). The array itself when ``rows`` are all of its rows
    and they are unit float32 already; otherwise a copy, without the rows that are zero or not
    finite."""
    import numpy as np

    half = vectors.dtype == np.float16
    if len(rows) == len(vectors) and vectors.dtype in (np.float32, np.float16) and vectors.flags.c_contiguous:
        norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors, dtype=np.float32))
        if bool((np.abs(norms - 1) < (2e-3 if half else 1e-4)).all()):
            position = np.empty(len(rows), dtype=np.int64)
            position[rows] = np.arange(len(rows))
            return vectors, rows, position
    matrix: Any = np.array(vectors[rows], dtype=np.float16 if half else np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        norms = np.sqrt(np.einsum("ij,ij->i", matrix, matrix, dtype=np.float32))
    usable = np.flatnonzero(np.isfinite(norms) & (norms > 0)).astype(np.int64)
    if len(usable) < len(matrix):
        matrix, norms = matrix[usable], norms[usable]
    matrix /= norms[:, None].astype(matrix.dtype)
    return matrix, np.arange(len(matrix), dtype=np.int64), usable


def _exact_pairs(matrix: Matrix, threshold: float) -> Iterator[tuple[Indices, Indices]]:
    """Every pair, compared once: blocks of rows against the rows from there on."""
    import numpy as np

    m = len(matrix)
    step = max(1, BLOCK // max(m, 1))
    for start in range(0, m, step):  # in float32 (from float16 vectors too: BLAS has no float16)
        block = np.asarray(matrix[start : start + step], dtype=np.float32)
        near = block @ np.asarray(matrix[start:], dtype=np.float32).T >= threshold
        rows = max(1, EDGES // near.shape[1])  # a group of thousands of look-alikes: edges a block at a time
        for first in range(0, len(near), rows):
            a, b = np.nonzero(near[first : first + rows])
            later = b > a + first
            if later.any():
                yield (a[later] + start + first).astype(np.int64), (b[later] + start).astype(np.int64)


def _partitions(matrix: Matrix, order: Indices, seed: int, probes: int, tables: int) -> list[Indices]:
    """``tables`` partitions of the vectors into ``CELLS_PER_ROOT·sqrt(N)`` cells: for each, every
    vector's ``probes`` nearest cells ([N, probes]). The cells are found in the first ``REDUCED``
    principal components of the vectors (of a sample), by spherical k-means (:func:`_spherical_kmeans`),
    each table from its own seed; the pairs are then compared in full."""
    import numpy as np

    m, dim = matrix.shape
    rng = np.random.default_rng(seed)
    sample = order[np.sort(rng.choice(m, size=min(m, PCA_SAMPLE), replace=False))]
    if dim > REDUCED:  # principal axes of the sample; the vectors are projected, not centred
        covariance = _covariance(matrix, sample)
        with one_blas_thread():  # LAPACK's threads on two busy cores: 50 times slower
            _, axes = np.linalg.eigh(covariance)
        basis = np.ascontiguousarray(axes[:, ::-1][:, :REDUCED], dtype=np.float32)
        reduced = np.empty((m, REDUCED), dtype=np.float32)
        step = max(1, BLOCK // dim)
        for start in range(0, m, step):
            reduced[start : start + step] = np.asarray(matrix[start : start + step], dtype=np.float32) @ basis
    else:
        reduced = np.asarray(matrix, dtype=np.float32)
    k = max(1, min(m, math.ceil(CELLS_PER_ROOT * math.sqrt(m))))
    return [_nearest_cells(reduced, order, k, min(probes, k), seed * 7919 + table) for table in range(tables)]


def _covariance(matrix: Matrix, rows: Indices, step: int = 2048) -> npt.NDArray[np.float64]:
    """The covariance of these rows, gathered a few thousand at a time (no copy of them all, nor
    of them centred: 80 MB at 20,000 x 512)."""
    import numpy as np

    dim = matrix.shape[1]
    products = np.zeros((dim, dim), dtype=np.float64)
    sums = np.zeros(dim, dtype=np.float64)
    for start in range(0, len(rows), step):
        block = np.asarray(matrix[rows[start : start + step]], dtype=np.float32)
        products += (block.T @ block).astype(np.float64)
        sums += block.sum(axis=0, dtype=np.float64)
    mean = sums / max(len(rows), 1)
    return products - len(rows) * np.outer(mean, mean)


def _nearest_cells(reduced: Matrix, order: Indices, k: int, probes: int, seed: int) -> Indices:
    """Each vector's ``probes`` nearest of ``k`` cells (nearest first), the cells being spherical
    k-means of a sample: by angle, so cells are of about equal size."""
    import numpy as np

    m = len(reduced)
    rng = np.random.default_rng(seed)
    sample = order[np.sort(rng.choice(m, size=min(m, SAMPLE_PER_CELL * k), replace=False))]
    centres = _spherical_kmeans(reduced[sample], k, rng)
    nearest = np.empty((m, probes), dtype=np.int64)
    step = max(1, BLOCK // k)
    for start in range(0, m, step):
        scores = reduced[start : start + step] @ centres.T
        rows = np.arange(len(scores))
        for n in range(probes):  # a few argmax passes: much faster than argpartition of every row
            best = np.argmax(scores, axis=1)
            nearest[start : start + step, n] = best
            scores[rows, best] = -np.inf
    return nearest


def _spherical_kmeans(points: Matrix, k: int, rng: np.random.Generator, rounds: int = KMEANS_ROUNDS) -> Matrix:
    """``k`` unit centres: from ``k`` of the points at random, a few rounds of moving each to the
    direction of the mean of the points nearest it (by angle). Plain NumPy: scikit-learn's
    MiniBatchKMeans took 5 times as long here from a random start (from its default k-means++
    start, over 10 s at 20,000 x 512), on a busy 2-core machine, for cells no better."""
    import numpy as np

    points = points / np.maximum(np.linalg.norm(points, axis=1, keepdims=True), 1e-12)
    centres: Matrix = points[np.sort(rng.choice(len(points), size=k, replace=False))]
    step = max(1, BLOCK // k)
    for _ in range(rounds):
        labels = np.concatenate(
            [np.argmax(points[s : s + step] @ centres.T, axis=1) for s in range(0, len(points), step)]
        )
        order = np.argsort(labels, kind="stable")
        cells, starts = np.unique(labels[order], return_index=True)
        sums = np.add.reduceat(points[order], starts, axis=0)
        centres = centres.copy()  # a cell left empty keeps its centre
        centres[cells] = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    return centres


def _cell_pairs(matrix: Matrix, cells: Indices, threshold: float) -> Iterator[tuple[Indices, Indices]]:
    """Per cell, every pair of the vectors in it: cells side by side in threads, each product on one
    core (a product of a few hundred rows split over cores mostly waits for them)."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    flat = cells.ravel()
    order = np.argsort(flat, kind="stable")
    members = (order // cells.shape[1]).astype(np.int64)
    bounds = np.flatnonzero(np.diff(flat[order])) + 1
    populated = [inside for inside in np.split(members, bounds) if len(inside) > 1]

    def pairs_in(inside: Indices) -> list[tuple[Indices, Indices]]:
        return [(inside[a], inside[b]) for a, b in _exact_pairs(matrix[inside], threshold)]

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = max(1, min(8, cores))
    with one_blas_thread(), ThreadPoolExecutor(workers) as pool:
        window = 4 * workers  # cells in flight: the pairs waiting for union-find stay few
        for first in range(0, len(populated), window):
            for found in pool.map(pairs_in, populated[first : first + window]):
                yield from found


def _find(parent: Indices, nodes: Indices) -> Indices:
    """The roots of these nodes (their paths are then shortened to point at them)."""
    import numpy as np

    root = parent[nodes]
    while True:
        up = parent[root]
        if np.array_equal(up, root):
            break
        root = up
    parent[nodes] = root
    return root


def _union(parent: Indices, a: Indices, b: Indices) -> None:
    """Join the groups of a[i] and b[i] for every i; a group's root is its smallest node."""
    import numpy as np

    while len(a):
        ra, rb = _find(parent, a), _find(parent, b)
        apart = ra != rb
        if not apart.any():
            return
        low, high = np.minimum(ra[apart], rb[apart]), np.maximum(ra[apart], rb[apart])
        np.minimum.at(parent, high, low)  # each root hooks onto its smallest partner; others next round
        a, b = low, high


def _roots(parent: Indices) -> Indices:
    import numpy as np

    while True:
        up = parent[parent]
        if np.array_equal(up, parent):
            return parent
        parent = up


# -- splits ---------------------------------------------------------------------------------------
def assign_splits(
    hashes: Sequence[str],
    classes: Sequence[str],
    groups: Sequence[str],
    ratios: SplitRatios | None = None,
    seed: int = 0,
    *,
    previous: Mapping[str, str] | None = None,
    exact: bool = True,
) -> tuple[list[str], Drift]:
    """The split of each image (``"train"``, ``"val"`` or ``"test"``) and how far the shares are
    from the ratios.

    ``groups`` is :func:`duplicate_groups`'s answer: a group is never split, and is stratified as
    its most common class (``""``, no class, is one). ``previous`` (content hash -> split, from
    the manifest of the last export) is kept by every group with an image in it, whatever the
    ratios are now; hashes no longer given are ignored. ``exact`` (the default): per class, the
    new groups are cut at the image counts the ratios ask for (a rerun is identical; adding images
    without ``previous`` can move the few groups next to a cut). False: each new group by its own
    position alone (adding images never moves another, even without ``previous``; shares are only
    near the targets).
    """
    ratios = ratios or SplitRatios()
    previous = previous or {}
    if not len(hashes) == len(classes) == len(groups):
        raise ValueError(f"{len(hashes)} hashes, {len(classes)} classes and {len(groups)} groups")
    unknown = set(previous.values()) - set(SPLITS)
    if unknown:
        raise ValueError(f"previous splits must be one of {', '.join(SPLITS)}, not {', '.join(sorted(unknown))}")
    members = _members(hashes, groups)
    split_of: dict[str, str] = {}
    to_deal: dict[str, list[str]] = defaultdict(list)  # class -> its groups without an earlier split
    for key, items in members.items():
        if len(items) == 1:  # most groups: one image, with an earlier split or none
            earlier = previous.get(hashes[items[0]])
        else:
            earlier = _earlier_split(sorted({hashes[i] for i in items if hashes[i] in previous}), previous)
        if earlier is not None:
            split_of[key] = earlier
        elif exact:
            to_deal[classes[items[0]] if len(items) == 1 else _group_class([classes[i] for i in items])].append(key)
        else:
            split_of[key] = _by_position(_position(seed, key), ratios)
    if to_deal:
        split_of.update(_deal_classes(to_deal, members, classes, split_of, ratios, seed))
    splits = [split_of[g] for g in groups]
    return splits, _drift(hashes, classes, splits, ratios, previous, len(members))


def _deal_classes(
    to_deal: dict[str, list[str]],
    members: dict[str, list[int]],
    classes: Sequence[str],
    placed_groups: dict[str, str],
    ratios: SplitRatios,
    seed: int,
) -> dict[str, str]:
    """Deal each class's new groups, largest class first, counting the images of the class already
    placed: from earlier exports, or in a group of another class (a look-alike labelled otherwise)."""
    placed: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])  # class -> images per split so far
    unplaced: Counter[str] = Counter()
    for key, split in placed_groups.items():
        for i in members[key]:
            placed[classes[i]][SPLITS.index(split)] += 1
    for keys in to_deal.values():
        unplaced.update(classes[i] for key in keys for i in members[key])
    out: dict[str, str] = {}
    for cls in sorted(to_deal, key=lambda c: (-unplaced[c], c)):
        weighted = [(_position(seed, key), key, _weight(members[key], classes, cls)) for key in to_deal[cls]]
        arriving = sum(weight for _, _, weight in weighted)
        dealt = _deal(sorted(weighted), placed[cls], unplaced[cls] - arriving, ratios)
        for key, split in dealt.items():
            for i in members[key]:
                placed[classes[i]][SPLITS.index(split)] += 1
                unplaced[classes[i]] -= 1
        out.update(dealt)
    return out


def _weight(items: list[int], classes: Sequence[str], cls: str) -> int:
    """How many of a group's images are of the class (most groups: one image)."""
    if len(items) == 1:
        return 1 if classes[items[0]] == cls else 0
    return sum(classes[i] == cls for i in items)


def _members(hashes: Sequence[str], groups: Sequence[str]) -> dict[str, list[int]]:
    members: dict[str, list[int]] = defaultdict(list)
    group_of: dict[str, str] = {}
    for n, (content_hash, key) in enumerate(zip(hashes, groups, strict=True)):
        if group_of.setdefault(content_hash, key) != key:
            raise ValueError(f"{content_hash} is in two groups ({group_of[content_hash]} and {key})")
        members[key].append(n)
    return members


def _group_class(classes: list[str]) -> str:
    """The most common class in a group (ties: the first by name)."""
    counts = Counter(classes)
    return min(counts, key=lambda c: (-counts[c], c))


def _earlier_split(exported: list[str], previous: Mapping[str, str]) -> str | None:
    """The split most of a group's earlier images had (ties: that of the first by hash), or None."""
    if not exported:
        return None
    counts = Counter(previous[h] for h in exported)
    most = max(counts.values())
    return next(previous[h] for h in exported if counts[previous[h]] == most)


def _position(seed: int, key: str) -> float:
    """A group's place in [0, 1): a keyed hash, the same on every machine and run."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def _by_position(position: float, ratios: SplitRatios) -> str:
    edge = 0.0
    for split, share in zip(SPLITS, ratios.as_tuple(), strict=True):
        edge += share
        if share > 0 and position < edge:
            return split
    return next(s for s, share in zip(SPLITS[::-1], ratios.as_tuple()[::-1], strict=True) if share > 0)


def _deal(groups: list[tuple[float, str, int]], kept: list[int], later: int, ratios: SplitRatios) -> dict[str, str]:
    """Cut a class's new groups ((position, key, images of the class), in order of position) into
    train | val | test so that, with the images ``kept`` where they are and ``later`` more to come
    (in groups of other classes), the class is as close to the ratios as can be."""
    arriving = sum(size for _, _, size in groups)
    total = arriving + sum(kept) + later
    shares = ratios.as_tuple()
    want = [max(0.0, total * share - have) if share > 0 else 0.0 for share, have in zip(shares, kept, strict=True)]
    scale = arriving / sum(want) if sum(want) > 0 else 0.0
    quotas = _largest_remainder([w * scale for w in want], arriving)
    edges = [sum(quotas[: n + 1]) for n in range(len(quotas))]
    last = max(n for n, q in enumerate(quotas) if q > 0) if arriving else 0
    out: dict[str, str] = {}
    at = 0
    n = 0  # the split of the group at ``at``: the first edge past its middle (middles only grow)
    for _, key, size in groups:
        middle = at + size / 2
        while n < len(edges) and not (middle < edges[n] and quotas[n] > 0):
            n += 1
        out[key] = SPLITS[n if n < len(edges) else last]
        at += size
    return out


def _largest_remainder(shares: list[float], total: int) -> list[int]:
    """Whole numbers adding up to ``total``, each within one of its share."""
    counts = [math.floor(s) for s in shares]
    by_remainder = sorted(range(len(shares)), key=lambda n: (-(shares[n] - counts[n]), n))
    for n in by_remainder[: max(0, total - sum(counts))]:
        counts[n] += 1
    return counts


# -- drift ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Drift:
    """How far each split's share is from its target, overall and per class."""

    ratios: SplitRatios
    counts: dict[str, dict[str, int]]
    """Class -> split -> images (every split present, 0 included)."""
    groups: int
    """Duplicate groups (each in one split)."""
    from_previous: int
    """Images whose split came from the previous export."""
    moved: int
    """Images of the previous export now in another split: their group merged with one of another split."""

    @property
    def images(self) -> int:
        return sum(sum(by_split.values()) for by_split in self.counts.values())

    def split_counts(self, cls: str | None = None) -> dict[str, int]:
        """Images per split, of one class or (None) of all."""
        if cls is not None:
            return dict(self.counts[cls])
        return {s: sum(by_split[s] for by_split in self.counts.values()) for s in SPLITS}

    def share(self, split: str, cls: str | None = None) -> float:
        counts = self.split_counts(cls)
        total = sum(counts.values())
        return counts[split] / total if total else 0.0

    def drift(self, split: str, cls: str | None = None) -> float:
        """The actual share less the target (+0.02: two points more than asked)."""
        return self.share(split, cls) - self.ratios.as_dict()[split]

    def off_by(self, cls: str | None = None) -> float:
        """The most images any split of the class (or of all) is away from its target count."""
        counts = self.split_counts(cls)
        total = sum(counts.values())
        return max(abs(counts[s] - total * t) for s, t in self.ratios.as_dict().items())

    def to_dict(self) -> dict[str, Any]:
        return {
            "ratios": self.ratios.as_dict(),
            "images": self.images,
            "groups": self.groups,
            "from_previous": self.from_previous,
            "moved": self.moved,
            "splits": self._splits_dict(None),
            "classes": {cls: self._splits_dict(cls) for cls in sorted(self.counts)},
        }

    def _splits_dict(self, cls: str | None) -> dict[str, dict[str, float | int]]:
        counts = self.split_counts(cls)
        return {
            s: {
                "images": counts[s],
                "share": round(self.share(s, cls), 6),
                "target": self.ratios.as_dict()[s],
                "drift": round(self.drift(s, cls), 6),
            }
            for s in SPLITS
        }

    def format(self, classes: int = 8) -> str:
        """A few lines: all images, then the classes furthest (in images) from their targets."""
        lines = [
            f"splits {self.ratios} (train/val/test): {self.images:,} images in {self.groups:,} duplicate groups"
            + (f"; {self.from_previous:,} kept from the previous export" if self.from_previous else "")
            + (f", {self.moved:,} moved (their group merged with another split's)" if self.moved else "")
        ]
        worst = sorted(self.counts, key=lambda c: (-self.off_by(c), -sum(self.counts[c].values()), c))
        width = min(24, max([5, *(len(c or "(none)") for c in worst[:classes])]))
        lines.append(self._line("all", None, width))
        lines += [self._line(c or "(none)", c, width) for c in worst[:classes]]
        rest = worst[classes:]
        if rest:
            most = max(self.off_by(c) for c in rest)
            near = f"within {most:.1f} images of" if most >= 0.05 else "on"
            lines.append(f"  and {len(rest):,} more classes, each {near} its targets")
        return "\n".join(lines)

    def _line(self, name: str, cls: str | None, width: int) -> str:
        counts = self.split_counts(cls)
        points = {s: round(self.drift(s, cls) * 100, 1) + 0.0 for s in SPLITS}  # + 0.0: no "-0.0"
        cells = [f"{s} {counts[s]:>6,} {self.share(s, cls):6.1%} ({points[s]:+.1f})" for s in SPLITS]
        return f"  {name[:width]:<{width}}  " + "  ".join(cells)


def _drift(
    hashes: Sequence[str],
    classes: Sequence[str],
    splits: list[str],
    ratios: SplitRatios,
    previous: Mapping[str, str],
    groups: int,
) -> Drift:
    counts: dict[str, dict[str, int]] = {}
    from_previous = moved = 0
    for content_hash, cls, split in zip(hashes, classes, splits, strict=True):
        counts.setdefault(cls, dict.fromkeys(SPLITS, 0))[split] += 1
        if content_hash in previous:
            from_previous += 1
            moved += previous[content_hash] != split
    return Drift(ratios, counts, groups, from_previous - moved, moved)
