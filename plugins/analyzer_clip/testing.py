"""Randomly initialised CLIP and BLIP models: same code paths as real weights, no download.

Tiny ones for the test suite and a quick ``bench/bench_clip.py``; real architectures (open_clip's
``ViT-B-32``, ``ViT-L-14``, …; BLIP-base/large shapes) with random weights for the benchmark's
timings. Nothing here is used in a real run.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TINY_CLIP = "tiny-clip-test"
TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 3},
}


@dataclass
class TinyModels:
    clip_model: Any
    clip_preprocess: Any
    caption_model: Any
    caption_processor: Any
    clip_model_name: str = f"{TINY_CLIP}/random"


def tiny_clip(seed: int = 0) -> tuple[Any, Any]:
    from open_clip import factory

    factory._MODEL_CONFIGS[TINY_CLIP] = TINY_CLIP_CONFIG
    return random_clip(TINY_CLIP, seed)


def random_clip(arch: str, seed: int = 0) -> tuple[Any, Any]:
    """open_clip's architecture ``arch`` (``ViT-B-32``, ``ViT-L-14``, …) with random weights, and its
    image transform: built from open_clip's bundled config, nothing downloaded.

    ``open_clip.get_tokenizer(arch)`` (what clip-interrogator uses) gives the bundled BPE
    tokenizer for the OpenAI-style architectures (open_clip logs a warning that no pretrained
    weights were loaded: that is the point).
    """
    import open_clip
    import torch

    torch.manual_seed(seed)
    model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=None)
    model.eval()
    return model, preprocess


def tiny_blip(folder: Path, seed: int = 0) -> tuple[Any, Any]:
    """A BLIP captioner with a 60-word vocabulary written to ``folder``."""
    import torch
    from transformers import (  # type: ignore[attr-defined]
        BertTokenizerFast,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    folder.mkdir(parents=True, exist_ok=True)
    words = [
        "a",
        "photo",
        "of",
        "cat",
        "dog",
        "red",
        "blue",
        "painting",
        "on",
        "the",
        "with",
        "street",
        "tree",
        "sky",
        "man",
        "woman",
        "in",
        "and",
        "at",
        "night",
        "house",
        "green",
        "car",
        "big",
        "small",
        "old",
    ]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", *words, *[f"w{i}" for i in range(30)]]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab={word: i for i, word in enumerate(vocab)}, bos_token="[DEC]")
    torch.manual_seed(seed)
    random.seed(seed)
    config = BlipConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "encoder_hidden_size": 32,
            "bos_token_id": vocab.index("[DEC]"),
            "pad_token_id": 0,
            "sep_token_id": vocab.index("[SEP]"),
            "eos_token_id": vocab.index("[SEP]"),
        },
        vision_config={
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "image_size": 32,
            "patch_size": 8,
        },
    )
    model = BlipForConditionalGeneration(config)
    with torch.no_grad():  # a random decoder stops at once; make it speak: special tokens become unlikely
        bias = model.text_decoder.cls.predictions.bias
        for special in range(6):
            bias[special] = -1e4
        model.text_decoder.cls.predictions.decoder.weight.mul_(8.0)
    model.eval()
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer)
    return model, processor


def tiny_models(folder: Path, seed: int = 0) -> TinyModels:
    clip_model, preprocess = tiny_clip(seed)
    caption_model, processor = tiny_blip(folder / "blip", seed)
    return TinyModels(clip_model, preprocess, caption_model, processor)


BLIP_SHAPES: dict[str, dict[str, int]] = {
    # the vision towers of Salesforce/blip-image-captioning-{base,large}: ViT-B/16 and ViT-L/16 at 384 px
    "blip-base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
    "blip-large": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096},
}
"""Both decode with a BERT-base text decoder (12 layers, width 768, 30,524 tokens) cross-attending to the image."""


def random_blip(folder: Path, shape: str = "blip-large", seed: int = 0) -> tuple[Any, Any]:
    """A BLIP captioner of ``shape``'s size (see :data:`BLIP_SHAPES`) with random weights.

    The real models' BERT vocabulary cannot be downloaded here: the vocabulary is made of the
    lower-case words of CLIP's bundled BPE vocabulary (one CLIP token each, so a caption of n
    words is about n CLIP tokens, as a real caption roughly is). As in :func:`tiny_blip`, special
    tokens are made unlikely, so a caption is always ``max_new_tokens`` words long.
    """
    import torch
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import (  # type: ignore[attr-defined]
        BertTokenizerFast,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    vocab_size = 30524
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
    words = sorted({k[:-4] for k in SimpleTokenizer().encoder if k.endswith("</w>") and k[:-4].isalpha()})
    words = [w for w in words if w.isascii() and w.islower() and len(w) > 1][: vocab_size - len(specials)]
    vocab = [*specials, *words]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab={word: i for i, word in enumerate(vocab)}, bos_token="[DEC]")
    torch.manual_seed(seed)
    random.seed(seed)
    vision = BLIP_SHAPES[shape]
    config = BlipConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 768,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "intermediate_size": 3072,
            "encoder_hidden_size": vision["hidden_size"],
            "bos_token_id": vocab.index("[DEC]"),
            "pad_token_id": 0,
            "sep_token_id": vocab.index("[SEP]"),
            "eos_token_id": vocab.index("[SEP]"),
        },
        # initializer_range: BlipVisionConfig's default (1e-10, for loading weights) would make every image alike
        vision_config={**vision, "image_size": 384, "patch_size": 16, "initializer_range": 0.02},
    )
    model = BlipForConditionalGeneration(config)
    with torch.no_grad():  # a random decoder stops at once; make it speak: special tokens become unlikely
        bias = model.text_decoder.cls.predictions.bias
        for special in range(len(specials)):
            bias[special] = -1e4
    model.eval()
    processor = BlipProcessor(
        image_processor=BlipImageProcessor(size={"height": 384, "width": 384}), tokenizer=tokenizer
    )
    return model, processor


def random_models(folder: Path, arch: str, caption: str = "blip-large", seed: int = 0) -> TinyModels:
    """open_clip's ``arch`` with random weights, and a random captioner: ``tiny`` (:func:`tiny_blip`)
    or ``blip-base``/``blip-large`` (:func:`random_blip`). ``clip_model_name`` is
    ``"<arch>/random-seed<seed>"``: clip-interrogator names its label-embedding cache after it."""
    clip_model, preprocess = random_clip(arch, seed)
    if caption == "tiny":
        caption_model, processor = tiny_blip(folder / "blip", seed)
    else:
        caption_model, processor = random_blip(folder / caption, caption, seed)
    return TinyModels(clip_model, preprocess, caption_model, processor, f"{arch}/random-seed{seed}")


def tiny_label_data(folder: Path, *, flavors: int = 300, seed: int = 0) -> Path:
    """Small label lists in clip-interrogator's data layout (artists, flavors, mediums, movements, negative)."""
    rng = random.Random(seed)
    nouns = [
        "light",
        "shadow",
        "portrait",
        "landscape",
        "city",
        "forest",
        "ocean",
        "dragon",
        "castle",
        "robot",
        "flower",
        "mountain",
        "river",
        "storm",
        "fire",
        "ice",
        "gold",
        "silver",
        "neon",
        "dream",
    ]
    adjectives = [
        "dramatic",
        "soft",
        "vivid",
        "dark",
        "bright",
        "misty",
        "ornate",
        "minimal",
        "surreal",
        "epic",
        "cinematic",
        "detailed",
        "glowing",
        "ancient",
        "futuristic",
        "rustic",
        "gentle",
        "wild",
    ]
    folder.mkdir(parents=True, exist_ok=True)

    def phrases(count: int) -> list[str]:
        seen: dict[str, None] = {}
        while len(seen) < count:
            seen[
                f"{rng.choice(adjectives)} {rng.choice(nouns)}"
                + (f" {rng.randint(1, 999)}" if rng.random() < 0.5 else "")
            ] = None
        return list(seen)

    (folder / "flavors.txt").write_text("\n".join(phrases(flavors)) + "\n")
    (folder / "artists.txt").write_text("\n".join(f"Artist {i} {rng.choice(nouns).title()}" for i in range(40)) + "\n")
    (folder / "mediums.txt").write_text(
        "\n".join(
            [
                "an oil painting",
                "a photograph",
                "a sketch",
                "a 3d render",
                "a watercolor painting",
                "a digital painting",
            ]
        )
        + "\n"
    )
    (folder / "movements.txt").write_text(
        "\n".join(["impressionism", "cubism", "art nouveau", "baroque", "surrealism", "pop art"]) + "\n"
    )
    (folder / "negative.txt").write_text(
        "\n".join(["ugly", "blurry", "lowres", "watermark", "text", "bad anatomy", "cropped", "jpeg artifacts"]) + "\n"
    )
    return folder
