#!/usr/bin/env python3
"""Benchmark of the clip plugin's engine against clip-interrogator 0.6's own methods.

Both sides run on the same randomly initialised models, the same label lists and the same
images, in this one process, with clip-interrogator's default settings (chunk 2048, 2048
intermediate flavors, 8-32 chain flavors, 3 classic flavors):

- ``--arch tiny`` (the default, a quick run): a tiny CLIP (width 64, 3 text layers) and BLIP from
  analyzer_clip.testing, the models the test suite uses. Nearly all their time is Python work and
  text encoding, so the ratios are not those of real models.
- ``--arch ViT-B-32`` (or ``ViT-L-14``, any open_clip architecture): open_clip's real
  architecture with random weights (``create_model(arch, pretrained=None)``, nothing downloaded)
  and its bundled BPE tokenizer; the caption model is a BLIP of ``--caption``'s shape (default
  blip-large: a ViT-L/16 at 384 px and a BERT-base decoder) with random weights and a made-up
  vocabulary (the real one cannot be downloaded here). Random weights cost what real ones cost;
  only the prompts are nonsense.

clip-interrogator calls its five methods once per image and mode (each timed); the engine
computes image features and captions once per batch (``--batch-size``) and shares them between
the modes, as the plugin does. The two sides alternate image by image, so that other processes
slow both alike. Printed per mode: clip-interrogator's seconds, the analyzer's seconds and the
ratio (wall clock; the ratio of CPU time beside it is less disturbed by other processes). An
analyzer mode's time is its own work plus the shared work it needs (its batches' image features
and/or captions), which is what the plugin does when asked for that mode alone; "all" is all of
the analyzer's work against the sum of clip-interrogator's calls. Then where the time goes (text
encoder, image encoder, caption model, the rest: Python, tokenizing, ranking) and how many of
the 2 cores each side kept busy.

Every prompt is compared with clip-interrogator's, string for string; if any differs the
differences are printed and the exit status is 1.

The label lists are clip-interrogator's shipped ones (about 110,000 labels), unless
``--tiny-labels``. Their embeddings are computed once per model and kept in ``--cache-dir`` in
clip-interrogator's own cache format (so later runs start at once); for a causal CLIP text tower
they are computed without the padding after each label's end token (the same function: no
token attends to later ones), which takes minutes instead of hours on a CPU, and a sample is
checked against full-length encodings. Neither side's timing includes them.

    python bench/bench_clip.py --tiny-labels      # tiny models, 8 images, 3,164 labels: about 10 minutes
    python bench/bench_clip.py --arch ViT-B-32    # real architecture, 8 images: about 8 hours on 2 cores
    python bench/bench_clip.py --arch ViT-B-32 --images 1 --modes caption,fast,classic   # minutes

On a 2-core CPU, ViT-B-32's best and negative take clip-interrogator 20-30 minutes per image
(every chain step encodes 2,048 prompts of 77 tokens); its label embeddings take about 15 minutes
the first time.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

MODES = ("caption", "best", "fast", "classic", "negative")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_IMAGE_DIRS = [ROOT / "examples", Path("/work/shared/testdata/sd-metadata")]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--arch",
        default="tiny",
        help="'tiny' (default: the test suite's 2-layer models, minutes) or an open_clip architecture with "
        "random weights: ViT-B-32, ViT-L-14 (the plugin's default ViT-L-14/openai has this shape), …",
    )
    parser.add_argument(
        "--caption",
        choices=("auto", "tiny", "blip-base", "blip-large"),
        default="auto",
        help="caption model, random weights: 'auto' is tiny with --arch tiny and blip-large (the plugin's "
        "default caption model, its shape) otherwise",
    )
    parser.add_argument("--images", type=int, default=8, help="number of images (default 8)")
    parser.add_argument(
        "--image-dir",
        type=Path,
        action="append",
        help="take images from here (repeatable; default: examples/ and /work/shared/testdata/sd-metadata); "
        "identical files count once, and generated images make up any shortfall",
    )
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of " + ",".join(MODES))
    parser.add_argument("--batch-size", type=int, default=8, help="the plugin's batch size (default 8)")
    parser.add_argument(
        "--caption-length",
        type=int,
        default=16,
        help="caption tokens (default 16; random captioners never stop early, and 16 words is about a real "
        "BLIP caption's length; the plugin's caption_max_length is a maximum of 32)",
    )
    parser.add_argument("--tiny-labels", action="store_true", help="3,000 generated flavors, not the shipped lists")
    parser.add_argument(
        "--exact", action="store_true", help="also time best and negative without the prefix cache (slow)"
    )
    parser.add_argument(
        "--intermediate",
        type=int,
        default=2048,
        help="flavor_intermediate_count, both sides (default 2048, clip-interrogator's): the candidates each "
        "step of best's and negative's chains encodes; smaller makes those modes proportionally quicker",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "analyzer" / "bench-clip")
    parser.add_argument("--work", type=Path, default=Path("/tmp/analyzer-bench-clip"))
    args = parser.parse_args()
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(args.modes) - set(MODES))
    if unknown or not args.modes:
        parser.error(f"--modes: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(MODES)}")
    args.modes = [m for m in MODES if m in args.modes]
    if args.caption == "auto":
        args.caption = "tiny" if args.arch == "tiny" else "blip-large"
    elif args.arch == "tiny" and args.caption != "tiny":
        parser.error("--arch tiny comes with the tiny caption model")
    if args.images < 1 or args.batch_size < 1:
        parser.error("--images and --batch-size must be at least 1")
    return args


# -- timing ----------------------------------------------------------------------------------
class Meter:
    """Wall-clock and CPU seconds per side (``theirs``, ``ours``, …) and key."""

    def __init__(self) -> None:
        self.side = ""
        self.wall: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self.cpu: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))

    @contextmanager
    def __call__(self, key: str) -> Iterator[None]:
        wall, cpu = self.wall[self.side], self.cpu[self.side]
        w, c = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            wall[key] += time.perf_counter() - w
            cpu[key] += time.process_time() - c

    def seconds(self, side: str, key: str, shared: bool = False) -> tuple[float, float]:
        """(wall, CPU) seconds of ``key``; with ``shared``, plus the shared work mode ``key`` needs."""
        from analyzer_clip import NEEDS

        keys = [key]
        if shared:
            needs_features, needs_caption = NEEDS[key]
            keys += ["shared features"] * needs_features + ["shared captions"] * needs_caption
        return sum(self.wall[side][k] for k in keys), sum(self.cpu[side][k] for k in keys)

    def wrap(self, obj: Any, attr: str, key: str) -> None:
        """Time every call of ``obj.attr`` under ``key`` (an instance attribute shadows the method)."""
        original: Callable[..., Any] = getattr(obj, attr)

        def timed(*args: Any, **kwargs: Any) -> Any:
            with self(key):
                return original(*args, **kwargs)

        setattr(obj, attr, timed)


PARTS = ("text encoder", "image encoder", "caption model")


# -- models and labels ------------------------------------------------------------------------
class TrimmedTextTower:
    """Stands in for the CLIP model while clip-interrogator builds its label tables: each label is
    encoded up to its end token only (CLIP's text tower is causal, so the padding after it changes
    nothing), in batches of similar length. Only ``encode_text`` and ``to`` are used then."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.done = 0
        self.started = time.perf_counter()

    @staticmethod
    def usable(model: Any) -> bool:
        from analyzer_clip.models import trims_text

        return trims_text(model)

    def to(self, device: Any) -> TrimmedTextTower:
        return self

    def encode_text(self, tokens: Any) -> Any:
        from analyzer_clip.models import encode_text_trimmed

        out = encode_text_trimmed(self.model, tokens)
        self.done += len(tokens)
        if len(tokens) > 256:
            elapsed = time.perf_counter() - self.started
            print(f"  label embeddings: {self.done} computed ({elapsed:.0f}s)", file=sys.stderr, flush=True)
        return out


def build_interrogator(args: argparse.Namespace) -> tuple[Any, str]:
    """clip-interrogator's ``Interrogator`` on random models; and a line describing them."""
    import open_clip
    import torch
    from clip_interrogator import Config, Interrogator

    from analyzer_clip.testing import random_models, tiny_label_data, tiny_models

    if args.arch == "tiny":
        models = tiny_models(args.work / "models", seed=args.seed)
    elif args.arch in open_clip.list_models():
        models = random_models(args.work / "models", args.arch, args.caption, args.seed)
    else:
        sys.exit(f"--arch {args.arch}: not an open_clip architecture (open_clip.list_models())")
    config = Config(
        clip_model_name=models.clip_model_name,
        caption_model_name="blip-large",  # any BLIP name: clip-interrogator casts BLIP inputs to its dtype
        device="cpu",
        download_cache=False,
        cache_path=str(args.cache_dir),
        quiet=True,
        caption_max_length=args.caption_length,
        flavor_intermediate_count=args.intermediate,
    )
    if args.tiny_labels:
        config.data_path = str(tiny_label_data(args.work / "labels", flavors=3000))
    clip_model = models.clip_model
    trimmed = TrimmedTextTower(clip_model) if TrimmedTextTower.usable(clip_model) else None
    config.clip_model = trimmed or clip_model
    config.clip_preprocess = models.clip_preprocess
    config.caption_model, config.caption_processor = models.caption_model, models.caption_processor
    started = time.perf_counter()
    with torch.no_grad():
        ci = Interrogator(config)
    ci.clip_model = config.clip_model = clip_model
    built = time.perf_counter() - started
    check_tables(ci)
    clip_params = sum(p.numel() for p in clip_model.parameters()) / 1e6
    caption_params = sum(p.numel() for p in models.caption_model.parameters()) / 1e6
    computed = f"{trimmed.done} computed" if trimmed is not None and trimmed.done else "from the cache"
    return ci, (
        f"CLIP {models.clip_model_name} ({clip_params:.0f}M parameters), caption model {args.caption} "
        f"({caption_params:.0f}M parameters), random weights; tokenizer {type(ci.tokenize).__name__}; "
        f"label embeddings {computed} in {built:.0f}s ({args.cache_dir})"
    )


def check_tables(ci: Any) -> None:
    """The cached label embeddings are those of this model: a sample, encoded in full, must match."""
    import torch

    positions = range(0, len(ci.flavors.labels), max(1, len(ci.flavors.labels) // 16))[:16]
    labels = [ci.flavors.labels[i] for i in positions]
    with torch.no_grad():
        encoded = ci.clip_model.encode_text(ci.tokenize(labels))
        encoded = encoded / encoded.norm(dim=-1, keepdim=True)
    cached = torch.from_numpy(np.stack([ci.flavors.embeds[i] for i in positions])).float()
    worst = float((encoded * cached).sum(dim=-1).min())
    if worst < 0.999:
        sys.exit(
            f"label embeddings in {ci.config.cache_path} do not match {ci.config.clip_model_name} "
            f"(cosine {worst:.4f}): delete its {ci.config.clip_model_name.replace('/', '_')}_*.safetensors"
        )


def load_images(dirs: list[Path], count: int) -> tuple[list[Any], str]:
    """``count`` distinct images from ``dirs`` (sorted by path), topped up with generated ones."""
    from PIL import Image

    images: list[Any] = []
    seen: set[str] = set()
    used: list[str] = []
    for folder in dirs:
        before = len(images)
        for path in sorted(folder.rglob("*")) if folder.is_dir() else []:
            if len(images) >= count or path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest in seen:
                continue
            try:
                with Image.open(path) as opened:
                    image = opened.convert("RGB")
            except OSError:
                continue
            seen.add(digest)
            images.append(image)
        if len(images) > before:
            used.append(f"{len(images) - before} from {folder}")
    real = len(images)
    sizes = sorted({f"{i.width}x{i.height}" for i in images})
    for i in range(count - real):  # noise, about a generated picture's size (the models resize it)
        images.append(Image.fromarray((np.random.RandomState(i).rand(512 + 8 * i, 512, 3) * 255).astype("uint8")))
    described = f"{count} images: " + (f"{real} real ({', '.join(used)}; sizes {', '.join(sizes)})" if real else "")
    if count > real:
        described += (" and " if real else "") + f"{count - real} generated (random noise)"
    return images, described


# -- the two sides ------------------------------------------------------------------------------
def baseline(ci: Any, image: Any, modes: list[str], meter: Meter, out: dict[str, list[str]]) -> None:
    """clip-interrogator: one method call per mode for ``image``."""
    methods = {
        "caption": ci.generate_caption,
        "best": ci.interrogate,
        "fast": ci.interrogate_fast,
        "classic": ci.interrogate_classic,
        "negative": ci.interrogate_negative,
    }
    meter.side = "theirs"
    for mode in modes:
        started = time.perf_counter()
        with meter(mode), meter("all"):
            out[mode].append(methods[mode](image))
        progress(f"clip-interrogator {mode}, image {len(out[mode])}", started)


def shared(engine: Any, images: list[Any], modes: list[str], meter: Meter, side: str) -> tuple[Any, list[str]]:
    """The plugin's shared work for a batch: image features in one pass, captions in one call."""
    from analyzer_clip import NEEDS

    meter.side = side
    features: Any = None
    captions = [""] * len(images)
    with meter("all"):
        if any(NEEDS[m][0] for m in modes):
            with meter("shared features"):
                features = engine.features(images)
        if any(NEEDS[m][1] for m in modes):
            with meter("shared captions"):
                captions = engine.captions(images)
    return features, captions


def ours(
    engine: Any, features: Any, caption: str, modes: list[str], meter: Meter, out: dict[str, list[str]], side: str
) -> None:
    """The plugin's engine: each mode for one image, from its batch's shared features and caption."""
    meter.side = side
    for mode in modes:
        started = time.perf_counter()
        with meter(mode), meter("all"):
            out[mode].append(run_mode(engine, mode, features, caption))
        progress(f"analyzer{'' if side == 'ours' else ' (' + side + ')'} {mode}, image {len(out[mode])}", started)


def progress(what: str, started: float) -> None:
    print(f"  {what}: {time.perf_counter() - started:.1f}s", file=sys.stderr, flush=True)


def run_mode(engine: Any, mode: str, features: Any, caption: str) -> str:
    if mode == "caption":
        return caption
    if mode == "best":
        return str(engine.best(features, caption))
    if mode == "fast":
        return str(engine.fast(features, caption))
    if mode == "classic":
        return str(engine.classic(features, caption))
    return str(engine.negative(features))


# -- the report -----------------------------------------------------------------------------------
def report_row(name: str, theirs: tuple[float, float], mine: tuple[float, float], same: str) -> str:
    (t_wall, t_cpu), (o_wall, o_cpu) = theirs, mine
    return f"| {name} | {t_wall:.1f} s | {o_wall:.1f} s | **{t_wall / o_wall:.1f}x** | {t_cpu / o_cpu:.1f}x | {same} |"


def same_count(theirs: dict[str, list[str]], mine: dict[str, list[str]], modes: list[str]) -> tuple[int, int]:
    pairs = [(a, b) for m in modes for a, b in zip(theirs[m], mine[m], strict=True)]
    return sum(a == b for a, b in pairs), len(pairs)


def differences(theirs: dict[str, list[str]], mine: dict[str, list[str]], label: str) -> list[str]:
    out = []
    for mode in theirs:
        for i, (a, b) in enumerate(zip(theirs[mode], mine[mode], strict=True)):
            if a != b:
                out.append(f"{label}{mode}, image {i}:\n  clip-interrogator: {a!r}\n  analyzer:          {b!r}")
    return out


def breakdown(name: str, meter: Meter, side: str) -> str:
    wall, total = meter.wall[side], meter.wall[side]["all"]
    parts = [f"{p} {wall[p]:.1f}s ({100 * wall[p] / total:.0f}%)" for p in PARTS]
    rest = total - sum(wall[p] for p in PARTS)
    cores = meter.cpu[side]["all"] / total
    return f"  {name}: " + ", ".join(
        [*parts, f"the rest {rest:.1f}s ({100 * rest / total:.0f}%); {cores:.2f} cores busy"]
    )


def main() -> int:
    args = parse_args()
    warnings.simplefilter("ignore")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import logging

    logging.getLogger().setLevel(logging.ERROR)  # open_clip: "No pretrained weights loaded" (intended)
    import torch

    from analyzer_clip.engine import FastInterrogator

    ci, models_line = build_interrogator(args)
    images, images_line = load_images(args.image_dir or DEFAULT_IMAGE_DIRS, args.images)
    labels = sum(len(getattr(ci, t).labels) for t in ("artists", "flavors", "mediums", "movements", "trendings"))
    print(f"clip benchmark: torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    print(f"  {models_line}")
    print(
        f"  {images_line}; {labels:,} labels + {len(ci.negative.labels)} negative; caption length "
        f"{args.caption_length}; batches of {args.batch_size}; {args.intermediate} intermediate flavors; "
        f"modes {', '.join(args.modes)}"
    )

    meter = Meter()
    for obj, attr, key in (
        (ci.clip_model, "encode_text", "text encoder"),
        (ci.clip_model, "encode_image", "image encoder"),
        (ci.caption_model, "generate", "caption model"),
    ):
        meter.wrap(obj, attr, key)
    engines = {"ours": FastInterrogator(ci)}
    if args.exact and {"best", "negative"} & set(args.modes):
        engines["exact"] = FastInterrogator(ci, prefix_cache=False)
    encoder = engines["ours"].encoder
    if encoder is not None:
        meter.wrap(encoder, "similarities", "text encoder")
    print(f"  prefix cache: {'on' if encoder is not None else 'NOT SUPPORTED for this model'}")
    load = os.getloadavg()[0]

    prompts: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    exact_modes = [m for m in ("best", "negative") if m in args.modes]
    for start in range(0, len(images), args.batch_size):
        batch = images[start : start + args.batch_size]
        features, captions = shared(engines["ours"], batch, args.modes, meter, "ours")
        if "exact" in engines:
            exact_shared = shared(engines["exact"], batch, exact_modes, meter, "exact")
        for i, image in enumerate(batch):  # image by image, so that noise hits both sides alike
            baseline(ci, image, args.modes, meter, prompts["theirs"])
            ours(engines["ours"], row(features, i), captions[i], args.modes, meter, prompts["ours"], "ours")
            if "exact" in engines:
                f, c = row(exact_shared[0], i), exact_shared[1][i]
                ours(engines["exact"], f, c, exact_modes, meter, prompts["exact"], "exact")
    return report(args, meter, prompts, load)


def row(features: Any, i: int) -> Any:
    return features[i : i + 1] if features is not None else None


def report(args: argparse.Namespace, meter: Meter, prompts: dict[str, dict[str, list[str]]], load: float) -> int:
    theirs, mine = prompts["theirs"], prompts["ours"]
    print()
    print("| mode | clip-interrogator | analyzer | ratio | ratio of CPU time | prompts identical |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for mode in args.modes:
        same, total = same_count(theirs, mine, [mode])
        print(report_row(mode, meter.seconds("theirs", mode), meter.seconds("ours", mode, True), f"{same}/{total}"))
    same, total = same_count(theirs, mine, args.modes)
    name = "all five modes" if len(args.modes) == len(MODES) else f"all {len(args.modes)} modes"
    print(report_row(name, meter.seconds("theirs", "all"), meter.seconds("ours", "all"), f"{same}/{total}"))
    failures = differences(theirs, mine, "")
    if "exact" in prompts:
        for mode in prompts["exact"]:
            same, total = same_count(theirs, prompts["exact"], [mode])
            mine_s = meter.seconds("exact", mode, True)
            print(report_row(f"{mode}, no prefix cache", meter.seconds("theirs", mode), mine_s, f"{same}/{total}"))
        exact_theirs = {m: theirs[m] for m in prompts["exact"]}
        failures += differences(exact_theirs, prompts["exact"], "without the prefix cache: ")
    ours_wall = meter.wall["ours"]
    print(
        f"\nanalyzer per mode = the mode's own work + the shared work it needs (image features "
        f"{ours_wall['shared features']:.1f}s, captions {ours_wall['shared captions']:.1f}s, each batch in one "
        f"call); 'all' = all of the analyzer's work vs the sum of clip-interrogator's calls. The two sides "
        f"alternate image by image. Load average {load:.2f} before, {os.getloadavg()[0]:.2f} after."
    )
    print("where the time goes (wall clock):")
    print(breakdown("clip-interrogator", meter, "theirs"))
    print(breakdown("analyzer", meter, "ours"))
    if failures:
        print(f"\nFAILED: {len(failures)} prompts differ from clip-interrogator's:", file=sys.stderr)
        for failure in failures:
            print(failure, file=sys.stderr)
        return 1
    print("\nevery prompt is identical to clip-interrogator's")
    return 0


if __name__ == "__main__":
    sys.exit(main())
