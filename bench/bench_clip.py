#!/usr/bin/env python3
"""Benchmark of the clip plugin's engine against clip-interrogator 0.6's own methods.

Both run on the same tiny, randomly initialised open_clip and BLIP models (the same code paths
real weights take), the same label lists (clip-interrogator's shipped ones by default, about
110,000 labels) and the same images, in this one process. Printed, as ratios:

- all five modes per image (caption, best, fast, classic, negative): clip-interrogator calls its
  five methods per image; the engine computes features and captions once per batch and shares
  them (target: at least 3x, identical prompts);
- ``best`` alone and ``negative`` alone (target: at least 5x, identical prompts, or the measured
  near-tie rate);
- images/s for ``fast`` and ``classic`` across a batch.

Every prompt is compared with clip-interrogator's; a difference is counted as a near-tie flip.

    python bench/bench_clip.py                      # 16 images, shipped label lists
    python bench/bench_clip.py --images 4 --tiny-labels
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--tiny-labels", action="store_true", help="3,000 generated labels, not the shipped lists")
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "analyzer" / "bench-clip")
    parser.add_argument("--work", type=Path, default=Path("/tmp/analyzer-bench-clip"))
    parser.add_argument("--skip-exact", action="store_true", help="skip the runs without the prefix cache")
    args = parser.parse_args()

    warnings.simplefilter("ignore")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from clip_interrogator import Config, Interrogator
    from PIL import Image

    from analyzer_clip.engine import FastInterrogator
    from analyzer_clip.testing import tiny_label_data, tiny_models

    models = tiny_models(args.work / "models")
    config = Config(
        clip_model_name=models.clip_model_name,
        caption_model_name="blip-large",
        device="cpu",
        download_cache=False,
        cache_path=str(args.cache_dir),
        quiet=True,
        caption_max_length=16,
    )
    if args.tiny_labels:
        config.data_path = str(tiny_label_data(args.work / "labels", flavors=3000))
    config.clip_model, config.clip_preprocess = models.clip_model, models.clip_preprocess
    config.caption_model, config.caption_processor = models.caption_model, models.caption_processor
    started = time.perf_counter()
    ci = Interrogator(config)
    labels = sum(len(getattr(ci, t).labels) for t in ("artists", "flavors", "mediums", "movements", "trendings"))
    print(
        f"clip benchmark: torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; {args.images} images; "
        f"{labels} labels (tables ready in {time.perf_counter() - started:.1f}s, cached in {args.cache_dir})"
    )

    images = [
        Image.fromarray((np.random.RandomState(i).rand(64 + i, 80, 3) * 255).astype("uint8"))
        for i in range(args.images)
    ]

    # clip-interrogator, one method per image and mode, each timed
    theirs: dict[str, list[str]] = defaultdict(list)
    their_time: dict[str, float] = defaultdict(float)
    methods = {
        "caption": ci.generate_caption,
        "best": ci.interrogate,
        "fast": ci.interrogate_fast,
        "classic": ci.interrogate_classic,
        "negative": ci.interrogate_negative,
    }
    for image in images:
        for mode, method in methods.items():
            t = time.perf_counter()
            theirs[mode].append(method(image))
            their_time[mode] += time.perf_counter() - t

    def ours(modes: list[str], prefix_cache: bool = True) -> tuple[float, dict[str, list[str]]]:
        fast = FastInterrogator(ci, prefix_cache=prefix_cache)
        out: dict[str, list[str]] = defaultdict(list)
        t = time.perf_counter()
        for start in range(0, len(images), args.batch_size):
            batch = images[start : start + args.batch_size]
            needs_caption = any(m != "negative" for m in modes)
            features = fast.features(batch)
            captions = fast.captions(batch) if needs_caption else [""] * len(batch)
            for i in range(len(batch)):
                f, caption = features[i : i + 1], captions[i]
                for mode in modes:
                    out[mode].append(_mode(fast, mode, f, caption))
        return time.perf_counter() - t, out

    def flips(got: dict[str, list[str]], modes: list[str]) -> str:
        bad = sum(g != w for m in modes for g, w in zip(got[m], theirs[m], strict=True))
        return f"{bad} of {len(modes) * len(images)} prompts differ"

    all_modes = list(methods)
    all_s, got = ours(all_modes)
    base = sum(their_time.values())
    print(
        f"all five modes: clip-interrogator {base:.1f}s, analyzer {all_s:.1f}s: {base / all_s:.1f}x faster "
        f"(target >= 3x); {flips(got, all_modes)}"
    )
    for mode in ("best", "negative"):
        mode_s, got = ours([mode])
        # best also needs the caption it extends: clip-interrogator's interrogate() computes its own
        print(
            f"{mode} alone: clip-interrogator {their_time[mode]:.1f}s, analyzer {mode_s:.1f}s: "
            f"{their_time[mode] / mode_s:.1f}x faster (target >= 5x); {flips(got, [mode])}"
        )
        if args.skip_exact:
            continue
        exact_s, exact = ours([mode], prefix_cache=False)
        print(
            f"  {mode} without the prefix cache: {exact_s:.1f}s ({their_time[mode] / exact_s:.1f}x); "
            f"{flips(exact, [mode])}"
        )
    for mode in ("fast", "classic"):
        mode_s, got = ours([mode])
        print(
            f"{mode}: analyzer {len(images) / mode_s:.1f} images/s across batches of {args.batch_size} "
            f"(clip-interrogator {len(images) / their_time[mode]:.1f} images/s); {flips(got, [mode])}"
        )
    return 0


def _mode(fast: Any, mode: str, features: Any, caption: str) -> str:
    if mode == "caption":
        return caption
    if mode == "best":
        return str(fast.best(features, caption))
    if mode == "fast":
        return str(fast.fast(features, caption))
    if mode == "classic":
        return str(fast.classic(features, caption))
    return str(fast.negative(features))


if __name__ == "__main__":
    sys.exit(main())
