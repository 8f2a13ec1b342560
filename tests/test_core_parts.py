"""The core as parts: results that read other results, stale and blocked items, stable ids, an
engine used more than once, and a watcher that works without any engine."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import analyzer
from analyzer.engine import Engine
from analyzer.settings import load_settings
from analyzer.store import Store
from analyzer.watch import Ready, Watcher

from conftest import a1111_png, make_image, sidecar
from fakes import ReaderPlugin, SecondReaderPlugin, SourcePlugin


@pytest.fixture
def reading() -> Iterator[None]:
    """The ``source`` plugin and the ``reader`` plugin that reads ``source.text``, registered."""
    ReaderPlugin.seen = []
    analyzer.register(SourcePlugin)
    analyzer.register(ReaderPlugin)
    yield
    analyzer.unregister("source")
    analyzer.unregister("reader")


def status_of(cli: Any, root: Path, *plugins: str) -> dict[str, dict[str, int]]:
    outcome = cli("status", root, "--json", *(["--plugins", ",".join(plugins)] if plugins else []))
    return {row["selector"]: row for row in json.loads(outcome.out)["results"]}


def edit_result(image: Path, plugin: str, mode: str, value: Any) -> None:
    """Change a stored result by hand, as a user correcting a prompt would."""
    path = image.with_name(f"{image.name}.{plugin}.json")
    doc = json.loads(path.read_text())
    (entry,) = doc["analysis"][mode].values()
    entry["result"] = value
    path.write_text(json.dumps(doc))


# -- results that read other results ---------------------------------------------------------
def test_a_result_is_made_after_what_it_reads_in_the_same_run(cli, tmp_path, reading):
    root = tmp_path / "imgs"
    for name in ("cat", "dog", "owl"):
        make_image(root / f"{name}.png")

    outcome = cli("run", root, "--plugins", "source,reader")

    assert outcome.code == 0, outcome.log
    assert sorted(seen["source.text"] for seen in ReaderPlugin.seen) == ["cat", "dog", "owl"]
    (entry,) = sidecar(root / "cat.png", "reader")["analysis"]["echo"].values()
    assert entry["result"] == "read:cat"
    assert entry["context"]["reads"] == ["source.text"] and len(entry["context"]["digest"]) == 16


def test_a_changed_input_makes_a_cheap_result_stale_and_the_next_run_redoes_it(cli, tmp_path, reading):
    root = tmp_path / "imgs"
    for name in ("cat", "dog"):
        make_image(root / f"{name}.png")
    cli("run", root, "--plugins", "source,reader")
    edit_result(root / "cat.png", "source", "text", "tiger")

    assert status_of(cli, root, "source", "reader")["reader.echo"]["stale"] == 1
    ReaderPlugin.seen = []
    cli("run", root, "--plugins", "source,reader")

    assert ReaderPlugin.seen == [{"source.text": "tiger"}]  # only the stale one, with its new input
    assert next(iter(sidecar(root / "cat.png", "reader")["analysis"]["echo"].values()))["result"] == "read:tiger"
    assert status_of(cli, root, "source", "reader")["reader.echo"]["done"] == 2


def test_an_item_whose_input_failed_is_blocked_then_made_once_the_input_exists(cli, tmp_path, reading, monkeypatch):
    root = tmp_path / "imgs"
    make_image(root / "fine.png")
    make_image(root / "fail.png")

    outcome = cli("run", root, "--plugins", "source,reader")

    assert "reader: 1 done, 0 failed of 1 planned, 1 blocked (a result they read failed)" in outcome.log
    assert not (root / "fail.png.reader.json").exists()
    counts = status_of(cli, root, "source", "reader")["reader.echo"]
    assert (counts["done"], counts["blocked"], counts["missing"]) == (1, 1, 0)
    assert "1 blocked: they read a result that failed" in cli("status", root, "--plugins", "source,reader").out

    monkeypatch.setenv("ANALYZER_SOURCE__FAIL", "")  # what made it fail is fixed
    ReaderPlugin.seen = []
    outcome = cli("run", root, "--plugins", "source,reader", "--retry-failed")

    assert ReaderPlugin.seen == [{"source.text": "fail"}]
    assert next(iter(sidecar(root / "fail.png", "reader")["analysis"]["echo"].values()))["result"] == "read:fail"


def test_a_chain_of_readers_is_made_in_order_and_a_failure_at_its_start_blocks_the_rest(cli, tmp_path, reading):
    analyzer.register(SecondReaderPlugin)
    root = tmp_path / "imgs"
    make_image(root / "fine.png")
    make_image(root / "fail.png")
    try:
        outcome = cli("run", root, "--plugins", "source,reader,reader2")
    finally:
        analyzer.unregister("reader2")

    assert outcome.code == 1  # source failed for fail.png; the run ends (no hang) and says so
    assert (
        next(iter(sidecar(root / "fine.png", "reader2")["analysis"]["twice"].values()))["result"] == "again:read:fine"
    )
    assert not (root / "fail.png.reader.json").exists() and not (root / "fail.png.reader2.json").exists()


def test_a_result_made_without_its_input_is_stale_once_the_input_appears(cli, tmp_path, reading):
    root = tmp_path / "imgs"
    make_image(root / "cat.png")
    cli("run", root, "--plugins", "reader")  # source not in the run: nothing to read yet
    assert ReaderPlugin.seen == [{"source.text": analyzer.selector.MISSING}]

    cli("run", root, "--plugins", "source", "--modes", "text")

    assert status_of(cli, root, "source", "reader")["reader.echo"]["stale"] == 1


# -- the llm plugin: context in the same run, and costly stale results --------------------------
llm = pytest.importorskip("analyzer_llm.testing", reason="the llm extra is not installed")


@pytest.fixture
def provider(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    with llm.fake_provider() as server:
        server.answer = lambda body: llm.Reply(text="a prompt")
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        monkeypatch.setenv("ANALYZER_LLM__BASE_URL", server.base_url + "/v1")
        monkeypatch.setenv("ANALYZER_LLM__MODEL", "gpt-test")
        yield server


def user_text(body: dict[str, Any]) -> str:
    return " ".join(part.get("text", "") for part in body["messages"][-1]["content"] if isinstance(part, dict))


def test_an_llm_template_reads_the_metadata_prompt_made_in_the_same_run(cli, tmp_path, provider):
    root = tmp_path / "sd"
    prompts = {f"img{i:02d}": f"a castle number {i} on a hill" for i in range(12)}
    for i, (name, prompt) in enumerate(prompts.items()):
        a1111_png(root / f"{name}.png", prompt, seed=i, color=(i, 9, 9))

    outcome = cli("run", root, "--plugins", "metadata,llm", "--modes", "prompt,sd_prompt")

    assert outcome.code == 0, outcome.log
    texts = [user_text(seen.body) for seen in provider.seen]
    assert len(texts) == 12
    carried = [
        next(p for p in prompts.values() if p in text) for text in texts if any(p in text for p in prompts.values())
    ]
    assert sorted(carried) == sorted(prompts.values())  # 12 of 12 requests carry their image's prompt
    for name, prompt in prompts.items():  # ... and each its own: the context recorded is that image's
        (entry,) = sidecar(root / f"{name}.png", "llm")["analysis"]["sd_prompt"].values()
        assert entry["context"]["reads"] == ["metadata.prompt"]
        from analyzer.selector import context_digest

        assert entry["context"]["digest"] == context_digest({"metadata.prompt": prompt})


def test_a_stale_llm_result_costs_nothing_until_refresh_stale(cli, tmp_path, provider):
    root = tmp_path / "sd"
    a1111_png(root / "a.png", "a castle on a hill", color=(1, 2, 3))
    a1111_png(root / "b.png", "a boat on a lake", color=(4, 5, 6))
    cli("run", root, "--plugins", "metadata,llm", "--modes", "prompt,sd_prompt")
    edit_result(root / "a.png", "metadata", "prompt", "a castle on a hill at dawn")  # a hand correction
    provider.seen.clear()

    assert status_of(cli, root, "metadata", "llm")["llm.sd_prompt"]["stale"] == 1
    outcome = cli("run", root, "--plugins", "metadata,llm", "--modes", "prompt,sd_prompt")

    assert provider.seen == [] and outcome.code == 0
    assert "1 stale kept (--refresh-stale redoes them)" in outcome.log
    outcome = cli("run", root, "--plugins", "metadata,llm", "--modes", "prompt,sd_prompt", "--refresh-stale")

    assert len(provider.seen) == 1 and "a castle on a hill at dawn" in user_text(provider.seen[0].body)
    assert status_of(cli, root, "metadata", "llm")["llm.sd_prompt"]["stale"] == 0


# -- ids --------------------------------------------------------------------------------------
def test_a_root_keeps_its_id_when_renamed_and_images_keep_theirs(tmp_path):
    settings = load_settings()
    first = tmp_path / "photos"
    make_image(first / "sub" / "a.png")
    store = Store.open(first, settings)
    root_id, image_id = store.id, store.image_id("sub/a.png")
    store.close()
    assert (first / ".analyzer" / "root-id").read_text().strip() == root_id

    renamed = tmp_path / "photos-2024"
    first.rename(renamed)
    again = Store.open(renamed, settings)

    assert again.id == root_id and again.image_id("sub/a.png") == image_id
    assert again.image_id("sub/b.png") != image_id and image_id.startswith(root_id + "-")
    again.close()


def test_two_roots_get_different_ids(tmp_path):
    settings = load_settings()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = Store.open(tmp_path / "a", settings), Store.open(tmp_path / "b", settings)
    assert a.id != b.id
    a.close()
    b.close()


def test_show_prints_what_selectors_name(cli, tmp_path):
    root = tmp_path / "sd"
    a1111_png(root / "gen.png", "a castle on a hill", seed=42)
    cli("run", root, "--plugins", "metadata")

    out = cli("show", root / "gen.png", "metadata.prompt", "metadata.parameters.seed", "metadata.nothing").out

    assert "metadata.prompt\ta castle on a hill" in out
    assert "metadata.parameters.seed\t42" in out and "metadata.nothing\t-" in out
    assert out.startswith("id\t")
    assert "metadata.image\t" in cli("show", root / "gen.png").out
    assert cli("show", root / "gen.png", "metadata").code == 2  # not a selector: a usage error


# -- the engine as a part ----------------------------------------------------------------------
async def test_one_engine_runs_again_and_again_in_one_process(tmp_path, echo):
    root = tmp_path / "imgs"
    make_image(root / "a.png")
    engine = Engine(load_settings(progress="plain"), [echo()])

    first = await engine.run([root])
    make_image(root / "b.png")
    second = await engine.run([root])
    third = await engine.run([root])

    assert (first.done, second.done, third.done) == (3, 3, 0)
    assert (root / "b.png.echo.json").exists()


async def test_work_for_given_images_is_accepted_while_the_engine_runs(tmp_path, echo):
    root = tmp_path / "imgs"
    make_image(root / "a.png")
    engine = Engine(load_settings(progress="plain"), [echo()])
    (store,) = await engine.open([root])
    try:
        await engine.scan()
        make_image(root / "later" / "b.png")
        await engine.submit(store, "later", ["b.png"])
        await engine.drain()
    finally:
        stats = await engine.close()

    assert stats.done == 6 and (root / "later" / "b.png.echo.json").exists()


async def test_the_image_size_limit_is_a_setting_not_a_process_global(tmp_path):
    small_root, roomy_root = tmp_path / "small", tmp_path / "roomy"
    make_image(small_root / "big.png", size=(100, 100))
    make_image(roomy_root / "big.png", size=(100, 100))
    small = Engine(load_settings(max_image_pixels=50 * 50, progress="plain"), [_metadata()])
    roomy = Engine(load_settings(progress="plain"), [_metadata()])

    await small.run([small_root])
    await roomy.run([roomy_root])  # in the same process, after the other

    assert sidecar(small_root / "big.png")["errors"]["image"]["pillow"]["type"] == "ImageTooLarge"
    assert sidecar(roomy_root / "big.png")["analysis"]["image"]["pillow"]["result"]["width"] == 100


def _metadata() -> Any:
    from analyzer_metadata import MetadataPlugin

    return MetadataPlugin()


# -- the watcher as a part ---------------------------------------------------------------------
async def test_the_watcher_yields_ready_images_without_any_engine(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    settings = load_settings(watch={"quiet_period": 0.2})
    store = Store.open(root, settings)
    watcher = Watcher(settings, [store], ["metadata"], skip=[])
    watcher.start()
    try:
        make_image(root / "new.png")
        ready = watcher.ready()
        item = await asyncio.wait_for(anext(ready), 10)
    finally:
        await watcher.close()
        store.close()

    assert isinstance(item, Ready) and item.store is store and (item.rel_dir, item.names) == ("", ["new.png"])
    assert not [name for name in os.listdir(root) if name.endswith(".json")]  # it analysed nothing itself
