#!/usr/bin/env python3
"""Benchmark of collection-level refinement (``analyzer_classify.refine``) on this CPU.

Every figure is measured in this run; nothing is hard-coded. No CLIP weights are needed. Three parts:

1. **quality on real images** (fashion-mnist, Debian's ``dataset-fashion-mnist`` package in
   ``/usr/share/datasets/fashion-mnist``). The embedder is a PCA of the pixels (64 components,
   fitted on the 60,000 training images); each image's vector is its projection on the components,
   normalised to unit length. By default the projection is *not* centred (the pixels' mean is not
   subtracted first), so, like CLIP's embeddings, all vectors share a common direction and a noisy
   prototype falls away from every image at once (the modality gap); ``--centred`` subtracts the
   mean first (vectors spread over the sphere). The collection is the 10,000 test images. The weak
   "text" prototype of a class is the mean of 1 to 5 (drawn at random) of its training images'
   vectors plus Gaussian noise whose norm is ``level`` times the mean's norm (levels 0, 0.5, 1, 2),
   normalised; ``--draws`` (5) draws per level. Each draw is classified text-only (inductive),
   refined with seed 002's schedule (``guard="none"``, ``tolerance=0``: its ten iterations) and
   with the default parameters (the balance guard). Printed per level: mean accuracies, the gains
   over inductive, the worst single draw's difference to inductive, the fewest classes active at
   the end, and the fewest classes active at each iteration (over the draws). Targets: the guarded
   mean accuracy is at least seed 002's at every level; every guarded run ends with all 10 classes
   active; the guarded mean accuracy is never more than 0.5 points below inductive at any level.
2. **collapse-prone collections** (synthetic, the generator of ``tests/test_refine.py``): 5
   classes of 100 images in 16 dimensions, CLIP-like (a common direction, label texts apart from
   the images with a weak pull towards their class), the first label's text moved towards the
   centre of all the images so that it takes nearly every image text-only. ``--sets`` (50) such
   collections: how many end with every class active, and mean accuracies.
3. **time and memory at scale**: ``--images`` (1,000,000) synthetic unit embeddings of 512
   dimensions in 100 classes (clusters around a common direction, weak label texts), written once
   to a file in chunks of 65,536 rows and read back by a chunk source (``numpy.fromfile`` per
   chunk, as the embedding store reads its shards), refined with the default parameters. Printed:
   the time (target: under 60 s on this 2-core CPU), iterations, accuracy text-only and refined,
   and the peak RSS while refining (``VmHWM``, reset through ``/proc/self/clear_refs`` just
   before), beside the 2 GB the embeddings take on disk.

    python bench/bench_refine.py                 # everything (a few minutes on 2 cores)
    python bench/bench_refine.py --quick         # a smoke run: small sizes, seconds
    python bench/bench_refine.py --only quality --centred --draws 10
"""

from __future__ import annotations

import argparse
import gzip
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
from benchlib import reset_peak, status_mb

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "plugins")]  # this checkout's code, not another

from analyzer_classify.refine import Refinement, RefineParams, refine  # noqa: E402

Matrix = npt.NDArray[np.float32]
Ints = npt.NDArray[np.int64]
FASHION = Path("/usr/share/datasets/fashion-mnist")
LEVELS = (0.0, 0.5, 1.0, 2.0)
SEED_002 = RefineParams(guard="none", tolerance=0)
GUARDED = RefineParams()
PARTS = ("quality", "collapse", "scale")


def unit(rows: npt.NDArray[np.floating]) -> Matrix:
    norms = np.linalg.norm(rows, axis=-1, keepdims=True)
    out: Matrix = (rows / np.maximum(norms, 1e-12)).astype(np.float32)
    return out


def accuracy(labels: npt.NDArray[np.integer], truth: npt.NDArray[np.integer]) -> float:
    return 100 * float(np.mean(labels == truth))


def read_idx(path: Path) -> npt.NDArray[np.uint8]:
    """An IDX file (big-endian header: zero, zero, type, dimensions; sizes; raw bytes), gzipped."""
    with gzip.open(path) as handle:
        data = handle.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


@dataclass
class Level:
    noise: float
    inductive: list[float] = field(default_factory=list)
    seed: list[float] = field(default_factory=list)
    guarded: list[float] = field(default_factory=list)
    seed_active: list[list[int]] = field(default_factory=list)
    guarded_active: list[list[int]] = field(default_factory=list)


def fashion(train_rows: int | None, test_rows: int | None, centred: bool) -> tuple[Matrix, Ints, Matrix, Ints]:
    """Unit PCA-64 vectors and labels of the training and test images."""
    from sklearn.decomposition import PCA

    def load(split: str, rows: int | None) -> tuple[npt.NDArray[np.float32], Ints]:
        pixels = read_idx(FASHION / f"{split}-images-idx3-ubyte.gz")[:rows].reshape(-1, 784).astype(
            np.float32
        ) * np.float32(1 / 255)
        return pixels, read_idx(FASHION / f"{split}-labels-idx1-ubyte.gz")[:rows].astype(np.int64)

    train, train_labels = load("train", train_rows)
    test, test_labels = load("t10k", test_rows)
    pca = PCA(n_components=64, svd_solver="randomized", random_state=0).fit(train)

    def embed(pixels: npt.NDArray[np.float32]) -> Matrix:
        projected = pca.transform(pixels) if centred else pixels @ pca.components_.T
        return unit(projected)

    return embed(train), train_labels, embed(test), test_labels


def weak_prototypes(vectors: Matrix, labels: Ints, noise: float, rng: np.random.Generator) -> Matrix:
    """Per class: the mean of 1 to 5 of its training vectors, plus noise of ``noise`` times its norm."""
    rows = []
    for c in range(10):
        chosen = rng.choice(np.flatnonzero(labels == c), size=int(rng.integers(1, 6)), replace=False)
        mean = vectors[chosen].mean(axis=0)
        jitter = rng.standard_normal(mean.shape) * noise * np.linalg.norm(mean) / np.sqrt(len(mean))
        rows.append(mean + jitter)
    return unit(np.array(rows))


def active_line(runs: list[list[int]], iterations: int) -> str:
    """The fewest active classes over the runs, per iteration ('-' where every run had stopped)."""
    cells = []
    for i in range(iterations):
        seen = [run[i] for run in runs if len(run) > i]
        cells.append(f"{min(seen):2d}" if seen else " -")
    return " ".join(cells)


def quality(args: argparse.Namespace, verdicts: list[tuple[str, bool]]) -> None:
    started = time.perf_counter()
    train, train_labels, test, test_labels = fashion(args.train_rows, args.test_rows, args.centred)
    embedded = time.perf_counter() - started
    centring = "centred" if args.centred else "not centred (CLIP-like common direction)"
    print(f"\n1. Quality on fashion-mnist: {len(test):,} test images, PCA-64 {centring}, fitted on")
    print(f"   {len(train):,} training images in {embedded:.1f} s; {args.draws} prototype draws per noise level")
    levels = [Level(noise) for noise in LEVELS]
    for level in levels:
        for draw in range(args.draws):
            rng = np.random.default_rng([draw, int(level.noise * 100)])
            texts = weak_prototypes(train, train_labels, level.noise, rng)
            inductive = (test @ texts.T).argmax(axis=1)
            seed: Refinement = refine(test, texts, SEED_002)
            guarded: Refinement = refine(test, texts, GUARDED)
            level.inductive.append(accuracy(inductive, test_labels))
            level.seed.append(accuracy(seed.labels, test_labels))
            level.guarded.append(accuracy(guarded.labels, test_labels))
            level.seed_active.append([s.active_classes for s in seed.iterations])
            level.guarded_active.append([s.active_classes for s in guarded.iterations])
    print()
    print("   noise  inductive  seed 002 (gain)   guarded (gain)   worst draw: guarded - inductive  active at end")
    print("                                                          (seed 002)    (guarded)       seed 002 / guarded")
    for lv in levels:
        ind, seed_mean, guard_mean = np.mean(lv.inductive), np.mean(lv.seed), np.mean(lv.guarded)
        worst_seed = min(s - i for s, i in zip(lv.seed, lv.inductive, strict=True))
        worst_guard = min(g - i for g, i in zip(lv.guarded, lv.inductive, strict=True))
        end_seed = min(run[-1] for run in lv.seed_active)
        end_guard = min(run[-1] if run else 10 for run in lv.guarded_active)
        print(
            f"   {lv.noise:5.1f}  {ind:9.2f}  {seed_mean:8.2f} ({seed_mean - ind:+5.2f})  "
            f"{guard_mean:7.2f} ({guard_mean - ind:+5.2f})  {worst_seed:+10.2f}    {worst_guard:+10.2f}"
            f"       {end_seed:2d} / {end_guard:2d}"
        )
    print("\n   Active classes per iteration (the fewest over the draws):")
    for lv in levels:
        print(f"   noise {lv.noise:3.1f}  seed 002: {active_line(lv.seed_active, 10)}")
        print(f"             guarded:  {active_line(lv.guarded_active, 10)}")
    verdicts.append(
        (
            "quality: guarded mean accuracy >= seed 002's at every noise level",
            all(np.mean(lv.guarded) >= np.mean(lv.seed) - 1e-9 for lv in levels),
        )
    )
    verdicts.append(
        (
            "quality: every guarded run ends with all 10 classes active",
            all(run and run[-1] == 10 for lv in levels for run in lv.guarded_active),
        )
    )
    verdicts.append(
        (
            "quality: guarded mean accuracy never more than 0.5 points below inductive",
            all(np.mean(lv.guarded) >= np.mean(lv.inductive) - 0.5 for lv in levels),
        )
    )


def synthetic(
    seed: int, *, classes: int, per_class: int, dim: int, text_noise: float = 0.0, hub: float = 0.0
) -> tuple[Matrix, Ints, Matrix]:
    """``tests/test_refine.py``'s collections: (images, truth, texts)."""
    rng = np.random.default_rng(seed)
    directions, _ = np.linalg.qr(rng.standard_normal((dim, classes + 2)))
    common, gap, *rest = directions.T
    centres = np.array(rest)
    truth = np.repeat(np.arange(classes), per_class)
    images = unit(common + 0.8 * centres[truth] + 0.3 * rng.standard_normal((len(truth), dim)))
    middle = unit(images.mean(axis=0))
    said = unit(centres + text_noise * rng.standard_normal((classes, dim)))
    texts = unit(0.3 * middle + 0.95 * gap + 0.1 * said)
    texts[0] = unit(texts[0] + hub * middle)
    return images, truth, texts


def collapse(args: argparse.Namespace, verdicts: list[tuple[str, bool]]) -> None:
    rows = []
    for seed in range(args.sets):
        images, truth, texts = synthetic(seed, classes=5, per_class=100, dim=16, hub=0.35)
        inductive = (images @ texts.T).argmax(axis=1)
        plain, guarded = refine(images, texts, SEED_002), refine(images, texts, GUARDED)
        rows.append(
            (
                accuracy(inductive, truth),
                accuracy(plain.labels, truth),
                accuracy(guarded.labels, truth),
                len(np.unique(inductive)) == 5,
                plain.iterations[-1].active_classes == 5,
                guarded.iterations[-1].active_classes == 5,
            )
        )
    table = np.array(rows, dtype=np.float64)
    n = len(rows)
    print(f"\n2. Collapse-prone synthetic collections: {n} sets of 5 classes x 100 images, one label near the centre")
    print("                 mean accuracy   sets with all 5 classes active")
    print(f"   text-only    {table[:, 0].mean():13.2f}   {int(table[:, 3].sum()):3d} of {n}")
    print(f"   seed 002     {table[:, 1].mean():13.2f}   {int(table[:, 4].sum()):3d} of {n}  (at the end)")
    print(f"   guarded      {table[:, 2].mean():13.2f}   {int(table[:, 5].sum()):3d} of {n}  (at the end)")
    print(
        f"   guarded more than 0.5 points below seed 002 in {int((table[:, 2] < table[:, 1] - 0.5).sum())} of {n} sets"
    )
    verdicts.append(
        (
            "collapse: guarded keeps all classes in at least as many sets as seed 002",
            table[:, 5].sum() >= table[:, 4].sum(),
        )
    )


def scale(args: argparse.Namespace, verdicts: list[tuple[str, bool]]) -> None:
    images, dim, classes, chunk = args.images, 512, 100, 65536
    rng = np.random.default_rng(0)
    directions, _ = np.linalg.qr(rng.standard_normal((dim, classes + 2)))
    common, gap, *rest = directions.T
    centres = np.array(rest)
    truth = np.empty(images, dtype=np.int64)
    total = np.zeros(dim)
    with tempfile.TemporaryDirectory(prefix="bench-refine-") as folder:
        path = Path(folder) / "embeddings.f32"
        started = time.perf_counter()
        with path.open("wb") as out:
            for start in range(0, images, chunk):
                n = min(chunk, images - start)
                labels = rng.integers(0, classes, n)
                noise = rng.standard_normal((n, dim), dtype=np.float32) * np.float32(3 / np.sqrt(dim))
                block = unit(common + 0.8 * centres[labels] + noise)
                truth[start : start + n] = labels
                total += block.sum(axis=0, dtype=np.float64)
                out.write(block.tobytes())
        written = time.perf_counter() - started
        said = unit(centres + 2 * unit(rng.standard_normal((classes, dim))))  # a weak text prior
        texts = unit(0.3 * unit(total) + 0.95 * gap + 0.1 * said)

        def chunks() -> Iterator[Matrix]:
            with path.open("rb") as handle:
                for start in range(0, images, chunk):
                    n = min(chunk, images - start)
                    yield np.fromfile(handle, dtype=np.float32, count=n * dim).reshape(n, dim)

        rss_before = status_mb("VmRSS")
        was_reset = reset_peak()
        started = time.perf_counter()
        refined = refine(chunks, texts, GUARDED)
        took = time.perf_counter() - started
        peak = status_mb("VmHWM")
    size = images * dim * 4 / 1e9
    steps = len(refined.iterations)
    print(
        f"\n3. Scale: {images:,} unit embeddings x {dim} ({size:.2f} GB on disk, written in {written:.1f} s), "
        f"{classes} classes,"
    )
    print(f"   read back in chunks of {chunk:,} rows; default parameters (guard {GUARDED.guard})")
    print(f"   refine: {took:.1f} s for {steps} iterations + the text-only pass ({took / (steps + 1):.2f} s a pass)")
    before, after = accuracy(refined.text_labels, truth), accuracy(refined.labels, truth)
    print(f"   stopped early: {refined.stopped_early}; accuracy text-only {before:.2f}, refined {after:.2f}")
    peak_note = "" if was_reset else " (not reset: the process's whole life)"
    print(f"   peak RSS while refining: {peak:.0f} MB{peak_note} (RSS before: {rss_before:.0f} MB)")
    verdicts.append((f"scale: refining {images:,} embeddings under 60 s", took < 60))


def parts(text: str) -> list[str]:
    chosen = [p.strip() for p in text.split(",") if p.strip()]
    if not chosen or any(p not in PARTS for p in chosen):
        raise argparse.ArgumentTypeError(f"parts are {', '.join(PARTS)}, not {text!r}")
    return chosen


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--draws", type=int, default=5, help="prototype draws per noise level (default 5)")
    parser.add_argument("--centred", action="store_true", help="centre the PCA projection before normalising")
    parser.add_argument("--sets", type=int, default=50, help="collapse-prone synthetic sets (default 50)")
    parser.add_argument(
        "--images", type=int, default=1_000_000, help="embeddings of the scale part (default 1,000,000)"
    )
    parser.add_argument("--only", type=parts, help=f"these parts only: {', '.join(PARTS)} (comma-separated)")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    args = parser.parse_args(argv)
    args.train_rows = args.test_rows = None
    if args.quick:
        args.draws, args.sets, args.images = 2, 10, 100_000
        args.train_rows, args.test_rows = 10_000, 2_000
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    chosen = args.only or list(PARTS)
    verdicts: list[tuple[str, bool]] = []
    print(f"bench_refine{' --quick' if args.quick else ''}: seed 002 = {SEED_002}; guarded = {GUARDED}")
    if "quality" in chosen:
        if FASHION.is_dir():
            quality(args, verdicts)
        else:
            print(f"\n1. Quality: skipped, no {FASHION} (apt-get install dataset-fashion-mnist)")
    if "collapse" in chosen:
        collapse(args, verdicts)
    if "scale" in chosen:
        scale(args, verdicts)
    print("\nTargets:" + (" (--quick: sizes too small for these to mean much)" if args.quick else ""))
    for text, met in verdicts:
        print(f"   {'met    ' if met else 'NOT MET'}  {text}")
    return 0 if all(met for _, met in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
