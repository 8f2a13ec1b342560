"""The clip plugin, on tiny randomly initialised models: same answers as clip-interrogator 0.6."""

from __future__ import annotations

import json
import random
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("clip_interrogator", reason="the clip extra is not installed")

import numpy as np
import torch
from PIL import Image

from analyzer_clip import ClipOptions, ClipPlugin
from analyzer_clip.engine import FastInterrogator, PrefixTextEncoder, split_on_oom
from analyzer_clip.testing import TinyModels, tiny_label_data, tiny_models

from conftest import make_image, sidecar

SETTINGS = {  # small chains so clip-interrogator's own (slow) methods finish quickly
    "caption_max_length": 8,
    "flavor_intermediate_count": 200,
    "min_flavors": 2,
    "max_flavors": 8,
    "chunk_size": 256,  # smaller than the flavor list, so chunked ranking is exercised too
}


def quiet_torch() -> Any:
    context = warnings.catch_warnings()
    context.__enter__()
    warnings.simplefilter("ignore", FutureWarning)  # clip-interrogator calls torch.cuda.amp.autocast()
    warnings.simplefilter("ignore", UserWarning)
    return context


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    return tiny_models(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="session")
def label_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_label_data(tmp_path_factory.mktemp("labels"), flavors=600)


@pytest.fixture(scope="session")
def interrogator(models: TinyModels, label_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from clip_interrogator import Config, Interrogator

    config = Config(
        clip_model_name=models.clip_model_name,
        caption_model_name="blip-large",
        device="cpu",
        download_cache=False,
        cache_path=str(tmp_path_factory.mktemp("ci-cache")),
        data_path=str(label_data),
        quiet=True,
        caption_max_length=SETTINGS["caption_max_length"],
        chunk_size=SETTINGS["chunk_size"],
        flavor_intermediate_count=SETTINGS["flavor_intermediate_count"],
    )
    config.clip_model, config.clip_preprocess = models.clip_model, models.clip_preprocess
    config.caption_model, config.caption_processor = models.caption_model, models.caption_processor
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Interrogator(config)


def noise_image(seed: int, size: tuple[int, int] = (64, 48)) -> Image.Image:
    return Image.fromarray((np.random.RandomState(seed).rand(size[1], size[0], 3) * 255).astype("uint8"))


@pytest.fixture
def clip_plugin(
    models: TinyModels, label_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """The real clip plugin, fed the tiny models instead of downloading weights."""
    monkeypatch.setattr(ClipPlugin, "preloaded", models)
    monkeypatch.setenv("ANALYZER_CLIP__DATA_PATH", str(label_data))
    monkeypatch.setenv("ANALYZER_CLIP__CACHE_DIR", str(tmp_path / "clip-cache"))
    monkeypatch.setenv("ANALYZER_CLIP__DEVICE", "cpu")
    monkeypatch.setenv("ANALYZER_CLIP__ENABLED", "true")
    for key, value in SETTINGS.items():
        monkeypatch.setenv(f"ANALYZER_CLIP__{key.upper()}", str(value))
    context = quiet_torch()
    yield
    context.__exit__(None, None, None)


# -- same answers --------------------------------------------------------------------------


@pytest.mark.parametrize("prefix_cache", [False, True], ids=["full-encoding", "prefix-cache"])
def test_every_mode_equals_clip_interrogators_own_method(interrogator, prefix_cache):
    ci = interrogator
    fast = FastInterrogator(ci, prefix_cache=prefix_cache)
    assert (fast.encoder is not None) is prefix_cache
    images = [noise_image(seed) for seed in range(3)]
    context = quiet_torch()
    try:
        features = fast.features(images)  # one batch
        captions = fast.captions(images)  # one batch
        for i, image in enumerate(images):
            f, caption = features[i : i + 1], captions[i]
            n = SETTINGS["max_flavors"]
            assert caption == ci.generate_caption(image)
            assert fast.classic(f, caption) == ci.interrogate_classic(image)
            assert fast.fast(f, caption, n) == ci.interrogate_fast(image, max_flavors=n)
            assert fast.negative(f, n) == ci.interrogate_negative(image, max_flavors=n)
            assert fast.best(f, caption, SETTINGS["min_flavors"], n) == ci.interrogate(
                image, min_flavors=SETTINGS["min_flavors"], max_flavors=n
            )
    finally:
        context.__exit__(None, None, None)


def test_assembled_token_ids_equal_the_tokenizers(interrogator):
    encoder = PrefixTextEncoder(interrogator.clip_model, interrogator.tokenize)
    rng = random.Random(0)
    words = ["cat", "Dog", "(masterpiece)", "art!", "8k", "été", "<b>", "a&amp;b", "'s", "…", "", "x" * 90]
    for _ in range(300):
        prompt = ", ".join(rng.choice(words) for _ in range(rng.randint(0, 30))) + rng.choice(["", ".", ")", "!"])
        label = " ".join(rng.choice(words) for _ in range(rng.randint(1, 4)))
        expected = interrogator.tokenize([f"{prompt}, {label}"])[0].tolist()
        got = encoder.assemble(encoder.prefix_ids(prompt), label)
        assert got + [0] * (77 - len(got)) == expected, (prompt, label)
        alone = interrogator.tokenize([label])[0].tolist()
        got = encoder.assemble(encoder.prefix_ids(None), label)
        assert got + [0] * (77 - len(got)) == alone


def test_prefix_cached_similarities_match_full_encoding(interrogator):
    fast = FastInterrogator(interrogator, prefix_cache=True)
    features = fast.features([noise_image(7)])
    labels = list(fast.tables["flavors"].labels[:300])
    for prompt in (None, "a photo of a cat", "a " + "very " * 40 + "long prompt"):
        quick = fast.encoder.similarities(features, prompt, labels, chunk_size=64)
        full = fast._full_similarities(features, prompt, labels)
        assert torch.allclose(quick, full, atol=1e-5), (prompt, (quick - full).abs().max())


# -- the plugin in a run ------------------------------------------------------------------------


def test_run_fills_all_five_modes_and_a_rerun_does_nothing(cli, tmp_path, clip_plugin, interrogator):
    root = tmp_path / "imgs"
    for i in range(3):
        (root).mkdir(exist_ok=True)
        noise_image(i).save(root / f"img{i}.png")

    outcome = cli("run", root, "--plugins", "clip")

    assert outcome.code == 0, outcome.log
    doc = sidecar(root / "img1.png", "clip")
    assert set(doc["analysis"]) == {"caption", "best", "fast", "classic", "negative"}
    best = doc["analysis"]["best"]
    (model_id,) = best
    assert model_id == "tiny-clip-test/random+blip-large:8(flavors=2-8,inter=200,chunk=256,labels=" + model_id[-9:]
    params = best[model_id]["parameters"]
    assert params["clip_model"] == "tiny-clip-test/random" and params["caption_model"] == "blip-large"
    assert params["max_flavors"] == 8 and params["device"] == "cpu"
    with Image.open(root / "img1.png") as opened:
        image = opened.convert("RGB")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert best[model_id]["result"] == interrogator.interrogate(image, min_flavors=2, max_flavors=8)
        assert doc["analysis"]["negative"][
            "tiny-clip-test/random(flavors=8,inter=200,chunk=256,labels=" + model_id[-9:]
        ]["result"] == interrogator.interrogate_negative(image, max_flavors=8)
    wildcard = (root / "wildcards" / "clip_best.txt").read_text().splitlines()
    assert len(wildcard) == 3 and all("\n" not in line for line in wildcard)
    cache = list((tmp_path / "clip-cache").glob("*.safetensors"))
    assert {p.name.split("_")[-1] for p in cache} >= {"flavors.safetensors", "artists.safetensors"}

    again = cli("run", root, "--plugins", "clip")
    assert "3 already up to date" in again.log and "loading CLIP model" not in again.log


def test_a_changed_setting_is_a_different_missing_result(cli, tmp_path, clip_plugin, monkeypatch):
    root = tmp_path / "imgs"
    root.mkdir()
    noise_image(1).save(root / "a.png")
    cli("run", root, "--plugins", "clip", "--modes", "classic")
    monkeypatch.setenv("ANALYZER_CLIP__CLASSIC_FLAVORS", "5")

    cli("run", root, "--plugins", "clip", "--modes", "classic")

    ids = sorted(sidecar(root / "a.png", "clip")["analysis"]["classic"])
    assert len(ids) == 2 and "flavors=3" in ids[0] and "flavors=5" in ids[1]


def test_an_undecodable_image_fails_alone(cli, tmp_path, clip_plugin):
    root = tmp_path / "imgs"
    root.mkdir()
    noise_image(1).save(root / "good.png")
    (root / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"junk")

    outcome = cli("run", root, "--plugins", "clip", "--modes", "caption,negative")

    assert outcome.code == 1
    assert set(sidecar(root / "good.png", "clip")["analysis"]) == {"caption", "negative"}
    assert sidecar(root / "bad.png", "clip")["errors"]["caption"]


def test_models_are_loaded_lazily_only_when_something_is_missing(cli, tmp_path, clip_plugin):
    root = tmp_path / "imgs"
    make_image(root / "a.png")
    cli("run", root, "--plugins", "metadata")

    outcome = cli("run", root)  # clip is available: it runs, metadata has nothing to do

    assert "loading CLIP model" in outcome.log
    assert "loading CLIP model" not in cli("run", root).log


def test_weights_that_cannot_be_had_give_one_clear_message(cli, tmp_path, monkeypatch):
    monkeypatch.setattr(ClipPlugin, "preloaded", None)
    monkeypatch.setenv("ANALYZER_CLIP__CLIP_MODEL", "ViT-B-32/openai")
    monkeypatch.setenv("ANALYZER_CLIP__CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("ANALYZER_CLIP__DEVICE", "cpu")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    root = tmp_path / "imgs"
    make_image(root / "a.png")

    outcome = cli("run", root, "--plugins", "clip,metadata")

    assert outcome.code == 1
    message = next(line for line in outcome.log.splitlines() if "plugin clip could not start" in line)
    assert "cannot load CLIP model 'ViT-B-32/openai' or caption model 'blip-large'" in message
    assert (
        "hf download timm/vit_base_patch32_clip_224.openai and hf download Salesforce/blip-image-captioning-large"
        in (message)
    )
    assert "is unavailable" not in message  # said once, not wrapped twice
    assert sum("cannot load CLIP model" in line for line in outcome.log.splitlines()) == 1  # not again in the summary
    assert "could not run: clip (the error is above)" in outcome.log
    assert "Traceback" not in outcome.err
    assert (root / "a.png.metadata.json").exists()  # the other plugin still ran


def test_an_unreachable_hub_is_found_at_once_and_the_cache_alone_is_used(cli, tmp_path, monkeypatch):
    """Without HF_HUB_OFFLINE, an offline machine would spend ~25 s in huggingface_hub's retries."""
    import huggingface_hub.constants

    monkeypatch.setattr(ClipPlugin, "preloaded", None)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens
    monkeypatch.setenv("ANALYZER_CLIP__CLIP_MODEL", "ViT-B-32/openai")
    monkeypatch.setenv("ANALYZER_CLIP__CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("ANALYZER_CLIP__DEVICE", "cpu")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    root = tmp_path / "imgs"
    make_image(root / "a.png")

    outcome = cli("run", root, "--plugins", "clip")

    assert outcome.code == 1
    assert "the Hugging Face hub cannot be reached (127.0.0.1:" in outcome.log
    assert huggingface_hub.constants.HF_HUB_OFFLINE is True
    message = next(line for line in outcome.log.splitlines() if "plugin clip could not start" in line)
    assert "only (offline)" in message
    assert "HF_HUB_OFFLINE=1 makes this fail at once" in message
    assert "Retrying in" not in outcome.err


def test_out_of_memory_splits_the_batch_then_falls_back_to_the_cpu():
    seen: list[int] = []
    moved: list[str] = []
    state = {"device": "cuda"}

    def run(items: list[int]) -> list[int]:
        seen.append(len(items))
        if (state["device"] == "cuda" and len(items) > 1) or (state["device"] == "cuda" and items == [3]):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return [i * 10 for i in items]

    def to_cpu() -> None:
        moved.append("cpu")
        state["device"] = "cpu"

    assert split_on_oom(run, [1, 2, 3, 4], to_cpu) == [10, 20, 30, 40]
    assert seen[:3] == [4, 2, 1] and moved == ["cpu"]


def test_options_are_validated():
    with pytest.raises(ValueError, match="clip_model"):
        ClipOptions(clip_model="no-slash")
    with pytest.raises(ValueError, match="caption_model"):
        ClipOptions(caption_model="blip-huge")  # type: ignore[arg-type]
    low = ClipPlugin(ClipOptions(low_vram=True))
    assert low.opts.caption_model == "blip-base" and low.opts.chunk_size == 1024 and low.opts.clip_offload


def test_model_ids_name_what_changes_the_output():
    plugin = ClipPlugin(ClipOptions())
    assert plugin.model_ids("caption")[0] == "blip-large:32"
    assert plugin.model_ids("best")[0] == "ViT-L-14/openai+blip-large:32(flavors=8-32,inter=2048,chunk=2048)"
    assert plugin.model_ids("negative")[0] == "ViT-L-14/openai(flavors=32,inter=2048,chunk=2048)"
    assert json.dumps(plugin.parameters("fast"))


# -- embeddings shared with the classify plugin --------------------------------------------


def test_image_features_are_kept_and_shared_with_classify_on_the_same_model(
    cli, clip_plugin, models, tmp_path, monkeypatch
):
    import open_clip

    from analyzer.embeddings import EmbeddingStore
    from analyzer_classify import embedder

    class CountingEmbedder(embedder.OpenClipEmbedder):
        images = 0

        def encode_images(self, prepared):  # type: ignore[no-untyped-def]
            CountingEmbedder.images += len(prepared)
            return super().encode_images(prepared)

    root = tmp_path / "imgs"
    root.mkdir()
    for seed in range(3):
        noise_image(seed).save(root / f"{seed}.png")
    first = cli("run", root, "--plugins", "clip", "--modes", "negative")
    before = sidecar(root / "0.png", "clip")["analysis"]["negative"]

    stored = EmbeddingStore(root / ".analyzer" / "embeddings").model(models.clip_model_name)
    again = cli("run", root, "--plugins", "clip", "--modes", "negative", "--force")  # from the stored features

    shared = CountingEmbedder(
        models.clip_model_name, models.clip_model, models.clip_preprocess, open_clip.get_tokenizer("ViT-B-32"), "cpu"
    )
    embedder.preload(shared)
    monkeypatch.setenv("ANALYZER_CLASSIFY__MODEL", models.clip_model_name)
    try:
        classified = cli("classify", root, "--labels", "noise,cat")
    finally:
        embedder.forget_preloaded()

    assert first.code == 0 and again.code == 0, first.log + again.log
    assert len(stored) == 3
    assert (
        sidecar(root / "0.png", "clip")["analysis"]["negative"][next(iter(before))]["result"]
        == next(iter(before.values()))["result"]
    )
    assert classified.code == 0, classified.log
    assert CountingEmbedder.images == 0  # classify used the features the clip plugin kept
