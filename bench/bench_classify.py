#!/usr/bin/env python3
"""Benchmark of the classify plugin on open_clip's real ViT-B-32 shape with random weights, on this CPU.

Nothing is downloaded: ``analyzer_clip.testing.random_clip("ViT-B-32")`` builds open_clip's
architecture (151 M parameters, 512-dimensional embeddings) with random weights, which cost what
real ones cost; it is handed to the plugin with ``embedder.preload`` under the model id
``ViT-B-32/random-seed0`` (``ANALYZER_CLASSIFY__MODEL``). Every figure is measured here, in this
run; nothing is hard-coded. Three parts:

1. **relabel vs re-encode.** The baseline is what classifying into a new label list would cost if
   every image had to be decoded and encoded again: the pipeline's images/s (part 2's
   ``analyzer classify DIR`` over ``--images`` synthetic images) extrapolated to ``--extrapolate``
   images (100,000). Against it, relabelling ``--stored`` (100,000) stored embeddings (random unit
   vectors of 512 dimensions in an EmbeddingStore, keyed by fake content hashes) into a new list
   of ``--labels`` (1,000) labels from the bundled concept bank, through the plugin's public
   methods the way a run calls them: ``image_vectors`` on ``ImageRef`` objects (their embeddings
   the store, their files absent) and ``scores``, in batches of the plugin's batch size (128).
   That is what a relabel computes (``ClassifyPlugin.classify``): a stored-vector look-up per image,
   then scoring. Cold: an empty text cache (1,000 labels x 7 templates = 7,000 prompts encoded);
   warm: the cache filled by the cold run (a new plugin, so nothing is kept in memory). Warm: the
   best of ``--repeat`` runs; cold: one run (its 7,000 prompt encodings take minutes).
   Also printed (no target): a loop over ``ModelEmbeddings.chunks()`` and
   ``scores`` per 1,024 rows (what a bulk relabel without per-image look-ups would cost), and the
   whole user command ``analyzer classify DIR --labels <the 1,000 labels>`` over the folder of
   already-embedded images (walk, plan, stored vectors, scoring, a sidecar written per image, the
   wildcard file), once with a cold text cache and ``--repeat`` times warm (each time under a new set
   name, so every image is classified again), extrapolated per 100,000 images: the per-image cost
   times 100,000 (warm), plus the one-off text encoding (cold - warm) for the cold figure.
2. **embedding throughput.** The real ``analyzer classify DIR --labels a,b,c`` through
   ``analyzer.cli.main`` in this process, fresh state each run (no sidecars, no embedding store,
   no index, an empty text cache), against a plain batched open_clip loop over the same files
   (Pillow open, convert RGB, the model's preprocess, ``encode_image`` in batches of 32, nothing
   stored). Same ``torch.set_num_threads`` for both; they alternate, best of ``--repeat`` each.
3. **memory.** Peak RSS (``VmHWM`` of ``/proc/self/status``) in a fresh subprocess per measurement
   (these runs do not wait for other benchmarks to end: a peak RSS does not depend on the load):
   relabelling ``--memory-stored`` (1,000,000) stored embeddings as the command does: with a warm
   text cache (a first subprocess fills it) the ViT-B-32 model is never built. Streaming
   (``image_vectors`` + ``scores`` in batches of 128, the plugin's; ``chunks()`` + ``scores`` per 1,024 rows;
   and, for comparison, ``scores`` on each whole 65,536-row chunk ``chunks()`` yields by default).
   The peak is reset (``/proc/self/clear_refs``) once the plugin is set up, so the figure is the
   peak while classifying; the imports' share (torch, open_clip) is printed beside it. And
   ``analyzer classify DIR`` embedding ``--memory-images`` (100,000) 64x64 images: ViT-B-32 would
   take about an hour here, so this one uses the test suite's tiny model
   (``analyzer_clip.testing.tiny_clip``): it measures the pipeline's memory bound, not the model's.

Images are synthetic but realistic files: 512x512 colour gradients with shapes and noise, half PNG
and half JPEG (quality 90), each one different, in subfolders of 500.

    python bench/bench_classify.py                      # everything (more than an hour on 2 cores)
    python bench/bench_classify.py --quick              # a smoke run, small sizes
    python bench/bench_classify.py --only relabel,throughput --images 500
    python bench/bench_classify.py --only memory --memory-images 20000
    python bench/bench_classify.py --workdir /tmp/bench-classify   # keep (and reuse) the images
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import benchlib
from benchlib import Row, note, reset_peak, status_mb

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "plugins")]  # this checkout's code, not another

ARCH = "ViT-B-32"
MODEL_ID = "ViT-B-32/random-seed0"
TINY_MODEL_ID = "tiny-clip-test/random"
DIM = 512
BATCH = 128  # ClassifyPlugin.batch_size_hint: the batches a run hands the plugin
CHUNK_SCORES = 1024  # rows per scores() call in the chunks() loop
WARM_TARGET = 1000.0  # re-encode time / warm relabel time
COLD_TARGET = 20.0  # re-encode time / cold relabel time
THROUGHPUT_TARGET = 0.9  # pipeline images/s / plain loop images/s
MEMORY_TARGET = 1000.0  # MB (10^6 bytes): peak RSS
IMAGE_SIZE = 512
PER_FOLDER = 500


# -- small helpers -----------------------------------------------------------------------------------
def fake_hash(i: int) -> str:
    return "sha256:" + hashlib.sha256(f"bench-classify-{i}".encode()).hexdigest()


def wait_for_quiet() -> None:
    """Wait while another benchmark (bench_clip) runs: this machine has 2 cores."""
    waited = 0
    while subprocess.run(["pgrep", "-f", "bench_clip"], capture_output=True).returncode == 0:
        if waited % 300 == 0:
            note("  waiting: another benchmark (bench_clip) is running")
        time.sleep(10)
        waited += 10


@dataclass
class Report(benchlib.Report):
    pipeline_wall: float | None = None
    """Best wall time of the pipeline over the images (the re-encode baseline's source)."""


# -- images ------------------------------------------------------------------------------------------
def image_bytes(i: int, size: int) -> tuple[bytes, str]:
    """A unique, photo-like image: a four-colour gradient, a few shapes, noise; PNG or JPEG."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(i)
    corners = rng.integers(0, 256, (2, 2, 3)).astype(np.float32)
    t = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None]
    top = corners[0, 0] * (1 - t) + corners[0, 1] * t
    bottom = corners[1, 0] * (1 - t) + corners[1, 1] * t
    pixels = top[None, :, :] * (1 - t)[:, :, None] + bottom[None, :, :] * t[:, :, None]
    image = Image.fromarray(pixels.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 9))):
        x0, y0 = (int(v) for v in rng.integers(0, size, 2))
        x1, y1 = x0 + int(rng.integers(size // 16, size // 2)), y0 + int(rng.integers(size // 16, size // 2))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=colour)
    noisy = np.asarray(image, dtype=np.int16) + rng.integers(-12, 13, (size, size, 3), dtype=np.int16)
    image = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    buffer = io.BytesIO()
    if i % 2 == 0:
        image.save(buffer, format="PNG")
        return buffer.getvalue(), "png"
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue(), "jpg"


def write_images(root: Path, count: int, size: int, batch: int = 1000) -> tuple[int, float]:
    """``count`` images under ``root`` (reused when a previous run left them complete): (bytes, seconds)."""
    from concurrent.futures import ThreadPoolExecutor

    marker = root / f".complete-{count}-{size}"
    started = time.perf_counter()
    if marker.exists():
        return int(marker.read_text()), 0.0
    shutil.rmtree(root, ignore_errors=True)
    total = 0
    with ThreadPoolExecutor(2) as pool:  # Pillow and NumPy release the GIL while encoding
        for start in range(0, count, batch):  # made and written a batch at a time: memory stays small
            ids = range(start, min(count, start + batch))
            for i, (data, ext) in zip(ids, pool.map(lambda i: image_bytes(i, size), ids), strict=True):
                folder = root / f"set{i // PER_FOLDER:04d}"
                folder.mkdir(parents=True, exist_ok=True)
                (folder / f"{i:07d}.{ext}").write_bytes(data)
                total += len(data)
    marker.write_text(str(total))
    os.sync()
    return total, time.perf_counter() - started


def image_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix in (".png", ".jpg"))


def reset_state(root: Path) -> None:
    """The folder as before any run: no sidecars, no state folder (embeddings, index), no wildcards."""
    shutil.rmtree(root / ".analyzer", ignore_errors=True)
    shutil.rmtree(root / "wildcards", ignore_errors=True)
    for sidecar in root.rglob("*.json"):
        sidecar.unlink()


def concept_labels(n: int) -> list[str]:
    """``n`` labels spread over the bundled concept bank (and numbered extras past its 2,913)."""
    from analyzer_classify.concepts import concept_bank

    bank = [label for label in concept_bank() if "," not in label]
    step = max(1, len(bank) // n)
    labels = bank[::step][:n]
    return labels + [f"thing number {i}" for i in range(n - len(labels))]


# -- models and the plugin ----------------------------------------------------------------------------
def counting_embedder(model_id: str, model: Any, preprocess: Any) -> Any:
    """The plugin's real OpenClipEmbedder, counting the images and prompts it encodes and timing
    ``prepare`` (convert + preprocess) and ``encode_images`` (where a run's time goes)."""
    import open_clip

    from analyzer_classify.embedder import OpenClipEmbedder

    class Counting(OpenClipEmbedder):
        images = 0
        prompts = 0
        prepare_s = 0.0
        encode_s = 0.0

        def prepare(self, image: Any) -> Any:
            started = time.perf_counter()
            try:
                return super().prepare(image)
            finally:
                self.prepare_s += time.perf_counter() - started

        def encode_images(self, prepared: Sequence[Any]) -> Any:
            self.images += len(prepared)
            started = time.perf_counter()
            try:
                return super().encode_images(prepared)
            finally:
                self.encode_s += time.perf_counter() - started

        def encode_texts(self, texts: Sequence[str]) -> Any:
            self.prompts += len(texts)
            return super().encode_texts(texts)

    return Counting(model_id, model, preprocess, open_clip.get_tokenizer(ARCH), "cpu")


def load_vit(threads: int) -> Any:
    """ViT-B-32 with random weights, preloaded for the plugin under MODEL_ID."""
    import torch

    from analyzer_classify import embedder
    from analyzer_clip.testing import random_clip

    torch.set_num_threads(threads)
    model, preprocess = random_clip(ARCH)
    found = counting_embedder(MODEL_ID, model, preprocess)
    embedder.preload(found)
    return found


def make_plugin(labels: list[str], cache_dir: Path) -> Any:
    from analyzer_classify import ClassifyOptions, ClassifyPlugin, LabelSet

    options = ClassifyOptions(
        model=MODEL_ID, device="cpu", labels={"new": LabelSet(labels=labels)}, cache_dir=cache_dir
    )
    plugin = ClassifyPlugin(options)
    asyncio.run(plugin.setup())
    return plugin


def run_cli(argv: list[str], cache_dir: Path) -> tuple[float, int]:
    """``analyzer ARGV`` through ``analyzer.cli.main`` in this process: (wall seconds, exit code)."""
    from analyzer.cli import main

    os.environ["ANALYZER_CLASSIFY__CACHE_DIR"] = str(cache_dir)
    started = time.perf_counter()
    code = main([*argv, "--progress", "plain", "--log-level", "WARNING"])
    return time.perf_counter() - started, code


def stored_count(root: Path, model_id: str) -> int:
    from analyzer.embeddings import EmbeddingStore

    return len(EmbeddingStore(root / ".analyzer" / "embeddings").model(model_id))


def build_store(folder: Path, count: int, model_id: str = MODEL_ID) -> float:
    """``count`` random unit vectors under fake content hashes (reused when complete): seconds taken."""
    import numpy as np

    from analyzer.embeddings import EmbeddingStore

    marker = folder / f".complete-{count}"
    if marker.exists():
        return 0.0
    shutil.rmtree(folder, ignore_errors=True)
    started = time.perf_counter()
    model = EmbeddingStore(folder).model(model_id)
    rng = np.random.default_rng(0)
    step = max(1000, count // 100)  # flushed in ~100 shards, merged in tiers as a run's would be
    for start in range(0, count, step):
        n = min(step, count - start)
        rows = rng.standard_normal((n, DIM), dtype=np.float32)
        rows /= np.linalg.norm(rows, axis=1, keepdims=True)
        model.put([fake_hash(i) for i in range(start, start + n)], rows)
        model.flush()
    marker.write_text("")
    return time.perf_counter() - started


def stored_refs(start: int, stop: int, store: Any) -> list[Any]:
    """ImageRefs of stored images: the files need not exist, their embeddings are in ``store``."""
    from analyzer.plugin import ImageRef

    return [
        ImageRef(Path(f"/absent/{i:07d}.png"), f"{i:07d}.png", fake_hash(i), 0, 0, embeddings=store)
        for i in range(start, stop)
    ]


def relabel_stored(plugin: Any, refs: Iterator[list[Any]]) -> tuple[int, float]:
    """What a run computes per batch: stored vectors, then scores. (images classified, text seconds)."""
    from analyzer.plugin import Result

    started = time.perf_counter()
    plugin.text_matrix("new")
    text_s = time.perf_counter() - started
    done = 0
    for batch in refs:
        outcomes = plugin.scores("new", plugin.image_vectors(batch))
        done += sum(1 for o in outcomes if isinstance(o, Result))
    if plugin.decoded or plugin.encoded:
        raise SystemExit(f"relabel decoded {plugin.decoded} and encoded {plugin.encoded} images: not a relabel")
    return done, text_s


def relabel_chunks(plugin: Any, store: Any, chunk_rows: int = 65536, per_call: int = CHUNK_SCORES) -> int:
    """Every stored vector through ``chunks()``, scored ``per_call`` rows at a time."""
    plugin.text_matrix("new")
    done = 0
    for _, matrix in store.model(MODEL_ID).chunks(chunk_rows):
        for start in range(0, len(matrix), per_call):
            done += len(plugin.scores("new", list(matrix[start : start + per_call])))
    return done


# -- part 2: throughput --------------------------------------------------------------------------------
def plain_loop(files: list[Path], model: Any, preprocess: Any) -> tuple[float, float, float]:
    """What a user would write by hand: open, convert, preprocess, encode in batches of 32.
    (seconds, of which convert + preprocess, of which encode_image)."""
    import torch
    from PIL import Image

    prepare_s = encode_s = 0.0
    started = time.perf_counter()
    with torch.no_grad():
        for start in range(0, len(files), BATCH):
            batch = []
            for path in files[start : start + BATCH]:
                with Image.open(path) as image:
                    image.load()
                    began = time.perf_counter()
                    batch.append(preprocess(image.convert("RGB")))
                    prepare_s += time.perf_counter() - began
            began = time.perf_counter()
            model.encode_image(torch.stack(batch))
            encode_s += time.perf_counter() - began
    return time.perf_counter() - started, prepare_s, encode_s


def pipeline_run(root: Path, work: Path, embedder: Any, count: int, run: int) -> tuple[float, float, float]:
    """One fresh ``analyzer classify ROOT --labels a,b,c`` (checked: every image done): (seconds, of
    which in the embedder's prepare, of which in its encode_images)."""
    reset_state(root)
    cache = work / f"text-cache-pipeline-{run}"
    shutil.rmtree(cache, ignore_errors=True)
    before, prepare_s, encode_s = embedder.images, embedder.prepare_s, embedder.encode_s
    wall, code = run_cli(["classify", str(root), "--labels", "a,b,c", "--name", "abc"], cache)
    encoded = embedder.images - before
    sidecars = sum(1 for _ in root.rglob("*.classify.json"))
    stored = stored_count(root, MODEL_ID)
    if code != 0 or encoded != count or sidecars != count or stored != count:
        raise SystemExit(
            f"pipeline run: exit {code}, {encoded} images encoded, {sidecars} sidecars, {stored} stored "
            f"(expected 0, {count} each): no figure from it"
        )
    return wall, embedder.prepare_s - prepare_s, embedder.encode_s - encode_s


def breakdown(wall: float, prepare_s: float, encode_s: float, count: int) -> str:
    rest = wall - prepare_s - encode_s
    return (
        f"{wall:7.1f} s = {count / wall:6.1f} images/s; encode_image {encode_s:.1f} s, convert + preprocess "
        f"{prepare_s:.1f} s, the rest (decode, walk, hash, store, score, sidecars) {rest:.1f} s"
    )


def throughput(args: argparse.Namespace, root: Path, work: Path, embedder: Any, report: Report) -> None:
    files = image_files(root)
    loops: list[float] = []
    pipes: list[float] = []
    for run in range(args.repeat):
        wait_for_quiet()
        if "throughput" in args.parts:
            wall, prepare_s, encode_s = plain_loop(files, embedder.model, embedder.preprocess)
            loops.append(wall)
            note(f"  run {run + 1}: plain loop {breakdown(wall, prepare_s, encode_s, len(files))}")
        wait_for_quiet()
        wall, prepare_s, encode_s = pipeline_run(root, work, embedder, len(files), run)
        pipes.append(wall)
        note(f"  run {run + 1}: pipeline   {breakdown(wall, prepare_s, encode_s, len(files))}")
    report.pipeline_wall = min(pipes)
    if not loops:
        return
    loop_ips, pipe_ips = len(files) / min(loops), len(files) / min(pipes)
    ratio = pipe_ips / loop_ips
    note(
        f"throughput: {len(files)} images, best of {args.repeat}: pipeline {pipe_ips:.1f} images/s, plain loop "
        f"{loop_ips:.1f} images/s: {ratio:.2f}x (target >= {THROUGHPUT_TARGET}x); "
        f"runs: loop {', '.join(f'{s:.1f}' for s in loops)} s, pipeline {', '.join(f'{s:.1f}' for s in pipes)} s"
    )
    report.rows.append(
        Row(
            f"embedding throughput, {len(files):,} images (`analyzer classify DIR --labels a,b,c`, fresh state)",
            f"plain open_clip loop {loop_ips:.1f} images/s",
            f"{pipe_ips:.1f} images/s",
            f"{ratio:.2f}x",
            f"≥ {THROUGHPUT_TARGET}x",
            ratio >= THROUGHPUT_TARGET,
        )
    )


# -- part 1: relabel -----------------------------------------------------------------------------------
def best_relabel(args: argparse.Namespace, work: Path, labels: list[str], cold: bool) -> tuple[float, float, Path]:
    """Relabels of the stored set through image_vectors + scores, best of --repeat when warm (cold
    once: its text encoding takes minutes): (seconds, of which the text matrix, the text cache)."""
    from analyzer.embeddings import EmbeddingStore

    cache = work / "text-cache-relabel"
    best: tuple[float, float] | None = None
    for run in range(1 if cold else args.repeat):
        if cold:
            shutil.rmtree(cache, ignore_errors=True)
        wait_for_quiet()
        plugin = make_plugin(labels, cache)
        store = EmbeddingStore(work / "stored")  # its key index is read in the timed part, as a run reads it
        batches = [stored_refs(s, min(args.stored, s + BATCH), store) for s in range(0, args.stored, BATCH)]
        started = time.perf_counter()
        done, text_s = relabel_stored(plugin, iter(batches))
        wall = time.perf_counter() - started
        asyncio.run(plugin.close())
        if done != args.stored:
            raise SystemExit(f"relabel classified {done} of {args.stored} stored images")
        kind = "cold" if cold else "warm"
        note(
            f"  run {run + 1}: relabel {kind}: {wall:.2f} s for {done:,} stored embeddings "
            f"(text matrix {text_s:.2f} s, {plugin.prompts_encoded:,} prompts encoded)"
        )
        if best is None or wall < best[0]:
            best = (wall, text_s)
    assert best is not None
    return best[0], best[1], cache


def relabel(args: argparse.Namespace, root: Path, work: Path, embedder: Any, report: Report) -> None:
    from analyzer.embeddings import EmbeddingStore

    assert report.pipeline_wall is not None
    n_images = len(image_files(root))
    per_image = report.pipeline_wall / n_images
    reencode = per_image * args.extrapolate
    labels = concept_labels(args.labels)
    seconds = build_store(work / "stored", args.stored)
    note(
        f"  stored {args.stored:,} random unit vectors ({DIM} dims) in {seconds:.1f} s; "
        f"{len(labels):,} labels x 7 templates"
    )
    cold, cold_text, _ = best_relabel(args, work, labels, cold=True)
    warm, warm_text, cache = best_relabel(args, work, labels, cold=False)
    scale = args.extrapolate / args.stored
    cold_x = (cold - cold_text) * scale + cold_text  # the text encoding is paid once, not per image
    warm_x = warm * scale
    plugin = make_plugin(labels, cache)
    started = time.perf_counter()
    done = relabel_chunks(plugin, EmbeddingStore(work / "stored"))
    chunks_x = (time.perf_counter() - started) * args.extrapolate / done
    asyncio.run(plugin.close())
    note(
        f"relabel of {args.stored:,} stored embeddings into {len(labels):,} new labels (best of {args.repeat}): "
        f"cold {cold:.2f} s ({cold_text:.2f} s of it the text matrix), warm {warm:.2f} s "
        f"({warm_text:.2f} s the text matrix); chunks() + scores per {CHUNK_SCORES} rows, warm: "
        f"{chunks_x:.2f} s per {args.extrapolate:,}"
    )
    base = f"{reencode:,.0f} s (pipeline {1 / per_image:.1f} images/s x {args.extrapolate:,})"
    what = f"{args.extrapolate:,} images into {len(labels):,} new labels"
    stored_note = "" if scale == 1 else f" (measured on {args.stored:,}, x{scale:g})"
    for kind, secs, target in (("warm", warm_x, WARM_TARGET), ("cold", cold_x, COLD_TARGET)):
        report.rows.append(
            Row(
                f"relabel {what}, {kind} text cache (image_vectors + scores){stored_note}",
                base,
                f"{secs:.2f} s",
                f"{reencode / secs:,.0f}x",
                f"≥ {target:,.0f}x",
                reencode / secs >= target,
            )
        )
    report.rows.append(
        Row(f"relabel {what}, warm, chunks() + scores", base, f"{chunks_x:.2f} s", f"{reencode / chunks_x:,.0f}x", "—")
    )
    end_to_end(args, root, work, labels, embedder, report, reencode, base)


def end_to_end(
    args: argparse.Namespace,
    root: Path,
    work: Path,
    labels: list[str],
    embedder: Any,
    report: Report,
    reencode: float,
    base: str,
) -> None:
    """The whole command relabelling the embedded folder: once with a cold text cache, then warm (a new
    set name each time, so every image is classified again), best of --repeat."""
    n_images = len(image_files(root))
    best: dict[str, float] = {}
    cache = work / "text-cache-e2e"
    shutil.rmtree(cache, ignore_errors=True)
    for run, kind in enumerate(["cold"] + ["warm"] * args.repeat):
        wait_for_quiet()
        images, prompts = embedder.images, embedder.prompts
        name = f"relabel-{kind}-{run}"
        wall, code = run_cli(["classify", str(root), "--labels", ",".join(labels), "--name", name], cache)
        images, prompts = embedder.images - images, embedder.prompts - prompts
        done = sum(1 for p in root.rglob("*.classify.json") if f'"{name}"' in p.read_text())
        note(
            f"  run {run + 1}: `analyzer classify DIR --labels <{len(labels)} labels>` {kind} text cache: "
            f"{wall:.1f} s, exit {code}, {done} sidecars with the new set, {images} images and "
            f"{prompts:,} prompts encoded"
        )
        if code != 0 or done != n_images or images:
            raise SystemExit("the end-to-end relabel did not relabel every image from its stored embedding")
        best[kind] = min(best.get(kind, wall), wall)
    per_image = best["warm"] / n_images
    warm_x = per_image * args.extrapolate
    cold_x = warm_x + max(best["cold"] - best["warm"], 0.0)
    note(
        f"end to end, {n_images:,} embedded images (cold once, warm best of {args.repeat}): "
        f"cold {best['cold']:.1f} s, warm {best['warm']:.1f} s ({1 / per_image:.0f} images/s); "
        f"per {args.extrapolate:,}: warm {warm_x:,.0f} s, "
        f"cold {cold_x:,.0f} s (warm + the one-off text encoding {best['cold'] - best['warm']:.1f} s)"
    )
    for kind, secs in (("warm", warm_x), ("cold", cold_x)):
        report.rows.append(
            Row(
                f"whole `analyzer classify DIR --labels <{len(labels):,} labels>`, {kind} text cache, sidecars "
                f"written (measured on {n_images:,}, per {args.extrapolate:,})",
                base,
                f"{secs:,.0f} s",
                f"{reencode / secs:,.1f}x",
                "—",
            )
        )


# -- part 3: memory ------------------------------------------------------------------------------------
def child(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Run ``kind`` in a fresh process of this script; what it printed as its last line (JSON)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=spec["cwd"])
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"the {kind} subprocess failed (exit {proc.returncode}): no figure from it")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def child_stored(spec: dict[str, Any]) -> dict[str, Any]:
    """Relabel ``spec["count"]`` stored embeddings as the command does: the ViT-B-32 model is built
    only if a prompt's embedding is not in the text cache (method ``texts`` fills the cache)."""
    from analyzer.embeddings import EmbeddingStore
    from analyzer_classify import embedder  # as the command imports it: torch only if a model is built

    imports = status_mb("VmRSS")
    lazy = embedder.LazyEmbedder(MODEL_ID, lambda: load_vit(spec["threads"]))
    embedder.preload(lazy)
    plugin = make_plugin(concept_labels(spec["labels"]), Path(spec["cache"]))
    count, method = spec["count"], spec["method"]
    if method == "texts":
        plugin.text_matrix("new")
        return {"done": 0, "seconds": 0.0, "imports": imports, "load_peak": 0, "loaded": 0, "reset": True}
    plugin.text_matrix("new")
    load_peak, loaded = status_mb("VmHWM"), status_mb("VmRSS")
    was_reset = reset_peak()
    store = EmbeddingStore(Path(spec["store"]))
    started = time.perf_counter()
    if method == "image_vectors":
        batches = (stored_refs(s, min(count, s + BATCH), store) for s in range(0, count, BATCH))
        done, _ = relabel_stored(plugin, batches)
    elif method == "chunks":
        done = relabel_chunks(plugin, store, chunk_rows=8192)
    else:  # scores() on each whole chunk chunks() yields
        done = relabel_chunks(plugin, store, per_call=65536)
    seconds = time.perf_counter() - started
    return {
        "done": done,
        "seconds": seconds,
        "imports": imports,
        "load_peak": load_peak,
        "loaded": loaded,
        "reset": was_reset,
        "model": lazy.loaded,
        "torch": "torch" in sys.modules,
    }


def child_embed(spec: dict[str, Any]) -> dict[str, Any]:
    """``analyzer classify DIR --labels a,b,c`` with the tiny model: the pipeline's own memory."""
    import open_clip  # noqa: F401 - imported first, to tell their memory from the run's
    import torch

    from analyzer.cli import main
    from analyzer_classify import embedder
    from analyzer_clip.testing import tiny_clip

    imports = status_mb("VmRSS")
    torch.set_num_threads(spec["threads"])
    model, preprocess = tiny_clip()
    embedder.preload(counting_embedder(TINY_MODEL_ID, model, preprocess))
    os.environ["ANALYZER_CLASSIFY__MODEL"] = TINY_MODEL_ID
    os.environ["ANALYZER_CLASSIFY__CACHE_DIR"] = spec["cache"]
    loaded = status_mb("VmRSS")
    started = time.perf_counter()
    code = main(["classify", spec["root"], "--labels", "a,b,c", "--progress", "plain", "--log-level", "WARNING"])
    return {"code": code, "seconds": time.perf_counter() - started, "imports": imports, "loaded": loaded}


def run_child(kind: str, spec: dict[str, Any]) -> None:
    logging.getLogger().setLevel(logging.ERROR)
    result = child_stored(spec) if kind == "stored" else child_embed(spec)
    result["peak"] = status_mb("VmHWM")
    print(json.dumps(result), flush=True)


def memory(args: argparse.Namespace, work: Path, report: Report) -> None:
    cwd = work / "cwd"
    seconds = build_store(work / "memory-store", args.memory_stored)
    note(f"  stored {args.memory_stored:,} random unit vectors for the memory runs ({seconds:.1f} s)")
    cache = work / "text-cache-relabel"  # warm when the relabel part ran; else the first run fills it
    methods = (
        ("image_vectors", f"image_vectors + scores, batches of {BATCH} (as a run)", True),
        ("chunks", f"chunks(8,192 rows) + scores per {CHUNK_SCORES:,} rows", True),
        ("whole-chunks", "chunks() + scores on each whole 65,536-row chunk", False),
    )
    spec = {"cwd": str(cwd), "threads": args.threads, "labels": args.labels, "cache": str(cache)}
    child("stored", spec | {"store": str(work / "memory-store"), "count": 0, "method": "texts"})  # a warm cache
    for method, what, targeted in methods:  # no waiting for a quiet machine: a peak RSS does not depend on it
        found = child(
            "stored", spec | {"store": str(work / "memory-store"), "count": args.memory_stored, "method": method}
        )
        peak_note = "" if found["reset"] else " (peak could not be reset: the whole process's)"
        model = "loaded" if found["model"] else "not loaded: every embedding was stored"
        note(
            f"  relabel {found['done']:,} stored, {what}: {found['seconds']:.1f} s, peak RSS {found['peak']:.0f} MB "
            f"while classifying{peak_note}, {found['peak'] - found['loaded']:+.0f} MB over the RSS before "
            f"({found['loaded']:.0f} MB, the model {model}; after importing the analyzer and the plugin "
            f"{found['imports']:.0f} MB; torch {'imported' if found['torch'] else 'never imported'})"
        )
        report.rows.append(
            Row(
                f"peak RSS, relabel {args.memory_stored:,} stored embeddings, {what}, warm text cache",
                "—",
                f"{found['peak']:,.0f} MB: imports {found['imports']:,.0f} MB + plugin, labels"
                f"{', model' if found['model'] else ''} {found['loaded'] - found['imports']:,.0f} MB + classifying "
                f"{found['peak'] - found['loaded']:,.0f} MB ({found['seconds']:.0f} s)",
                "—",
                f"< {MEMORY_TARGET:,.0f} MB" if targeted else "—",
                found["peak"] < MEMORY_TARGET if targeted else None,
            )
        )
    embed_memory(args, work, report)


def embed_memory(args: argparse.Namespace, work: Path, report: Report) -> None:
    root = work / "small-images"
    size, seconds = write_images(root, args.memory_images, 64)
    note(f"  {args.memory_images:,} 64x64 images, {size / 1e6:.0f} MB, written in {seconds:.0f} s")
    reset_state(root)
    cache = work / "text-cache-tiny"
    shutil.rmtree(cache, ignore_errors=True)
    found = child("embed", {"cwd": str(work / "cwd"), "threads": args.threads, "root": str(root), "cache": str(cache)})
    sidecars = sum(1 for _ in root.rglob("*.classify.json"))
    stored = stored_count(root, TINY_MODEL_ID)
    note(
        f"  embed {args.memory_images:,} images, tiny model: exit {found['code']}, {found['seconds']:.0f} s "
        f"({args.memory_images / found['seconds']:.0f} images/s), {sidecars:,} sidecars, {stored:,} stored; "
        f"peak RSS {found['peak']:.0f} MB (after importing torch, open_clip and the analyzer: "
        f"{found['imports']:.0f} MB; with the tiny model: {found['loaded']:.0f} MB)"
    )
    if found["code"] != 0 or sidecars != args.memory_images or stored != args.memory_images:
        raise SystemExit("the embedding run did not embed and classify every image")
    report.rows.append(
        Row(
            f"peak RSS, `analyzer classify DIR` embedding {args.memory_images:,} 64x64 images (tiny model)",
            "—",
            f"{found['peak']:,.0f} MB: imports {found['imports']:,.0f} MB + the run "
            f"{found['peak'] - found['imports']:,.0f} MB ({found['seconds']:.0f} s)",
            "—",
            f"< {MEMORY_TARGET:,.0f} MB",
            found["peak"] < MEMORY_TARGET,
        )
    )


# -- main ----------------------------------------------------------------------------------------------
PARTS = ("relabel", "throughput", "memory")


def parts(text: str) -> set[str]:
    chosen = {part.strip() for part in text.split(",") if part.strip()}
    if not chosen or chosen - set(PARTS):
        raise argparse.ArgumentTypeError(f"parts are {', '.join(PARTS)}, not {text!r}")
    return chosen


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000, help="512x512 images embedded (default 2,000)")
    parser.add_argument("--labels", type=int, default=1000, help="labels of the new list (default 1,000)")
    parser.add_argument("--stored", type=int, default=100_000, help="stored embeddings relabelled (default 100,000)")
    parser.add_argument("--extrapolate", type=int, default=100_000, help="images the figures are given for")
    parser.add_argument("--memory-stored", type=int, default=1_000_000, help="stored embeddings, memory part")
    parser.add_argument("--memory-images", type=int, default=100_000, help="64x64 images embedded, memory part")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each timing; the best is kept (default 2)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads for both sides (default: torch's)")
    parser.add_argument("--only", type=parts, help="these parts only: relabel, throughput, memory (comma-separated)")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--workdir", type=Path, help="keep images and stores here and reuse them (default: temp)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.labels, args.stored, args.repeat = 64, 20, 5000, 1
        args.memory_stored, args.memory_images = 20_000, 1000
    args.parts = args.only or set(PARTS)
    return args


def setup_environment(cwd: Path, threads: int) -> int:
    """No settings of the user's apply (no ANALYZER_ variables, an empty working folder); offline."""
    import torch

    for name in list(os.environ):
        if name.upper().startswith("ANALYZER_"):
            del os.environ[name]
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["ANALYZER_CLASSIFY__MODEL"] = MODEL_ID
    cwd.mkdir(parents=True, exist_ok=True)
    os.chdir(cwd)
    torch.set_num_threads(threads or torch.get_num_threads())
    return torch.get_num_threads()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.simplefilter("ignore")
    logging.getLogger().setLevel(logging.ERROR)  # open_clip: "No pretrained weights loaded" (intended)
    if args.child:
        os.environ["HF_HUB_OFFLINE"] = "1"
        run_child(args.child[0], json.loads(args.child[1]))
        return 0
    with contextlib.ExitStack() as stack:
        if args.workdir is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-classify-")))
        else:
            work = args.workdir.resolve()
            work.mkdir(parents=True, exist_ok=True)
        args.threads = setup_environment(work / "cwd", args.threads)
        return run(args, work)
    return 0


def run(args: argparse.Namespace, work: Path) -> int:
    import torch

    report = Report()
    note(
        f"classify benchmark: torch {torch.__version__}, {args.threads} threads, CPU, {os.cpu_count()} cores; "
        f"{ARCH} with random weights ({MODEL_ID}); parts: {', '.join(sorted(args.parts))}"
    )
    if args.parts & {"relabel", "throughput"}:
        root = work / "images"
        size, seconds = write_images(root, args.images, IMAGE_SIZE)
        note(
            f"  {args.images:,} {IMAGE_SIZE}x{IMAGE_SIZE} images (half PNG, half JPEG), {size / 1e6:.0f} MB"
            + (f", written in {seconds:.0f} s" if seconds else ", reused")
        )
        embedder = load_vit(args.threads)
        throughput(args, root, work, embedder, report)
        if "relabel" in args.parts:
            relabel(args, root, work, embedder, report)
    if "memory" in args.parts:
        note(f"  memory (load average {os.getloadavg()[0]:.2f}; its seconds are for information only)")
        memory(args, work, report)
    report.print()
    missed = report.missed()
    if missed:
        note(f"\n{len(missed)} target(s) not met: " + "; ".join(missed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
