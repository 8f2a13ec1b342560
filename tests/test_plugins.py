"""The plugin contract: discovery, batching, concurrency, lazy setup and failures."""

from __future__ import annotations

import json
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path

import pytest

import analyzer
from analyzer.plugin import SharedWork

from conftest import make_image, sidecar
from fakes import BrokenSetupPlugin, FlakyPlugin, NeedsMissingModule


@pytest.fixture
def extra_plugins() -> Iterator[None]:
    for cls in (BrokenSetupPlugin, NeedsMissingModule, FlakyPlugin):
        analyzer.register(cls)
    yield
    for cls in (BrokenSetupPlugin, NeedsMissingModule, FlakyPlugin):
        analyzer.unregister(cls.name)


@pytest.fixture
def ten_images(tmp_path: Path) -> Path:
    root = tmp_path / "imgs"
    for i in range(10):
        make_image(root / f"img{i:02d}.png", color=(i, i, i))
    return root


def test_the_builtin_plugin_is_registered_through_the_public_entry_point_group():
    names = {ep.name: ep.value for ep in entry_points(group="analyzer.plugins")}
    assert names["metadata"] == "analyzer_metadata:MetadataPlugin"


def test_batches_respect_batch_size_and_all_modes_of_a_batch_run_together(cli, ten_images, echo):
    outcome = cli("run", ten_images, "--plugins", "echo")

    assert outcome.code == 0
    sizes = [len(images) for _, images in echo.calls]
    assert max(sizes) <= 4 and sum(sizes) == 30  # 10 images x 3 modes, batches of at most 4
    first_batch = echo.calls[0][1]
    assert [mode for mode, images in echo.calls if images == first_batch][:3] == ["name", "upper", "size"]
    doc = sidecar(ten_images / "img03.png", "echo")
    assert doc["analysis"]["upper"]["echo-v1"]["result"] == "IMG03"
    assert doc["analysis"]["size"]["echo-v1"]["result"] == {"bytes": (ten_images / "img03.png").stat().st_size}


def test_concurrency_is_bounded_by_the_plugin_setting(cli, ten_images, echo, monkeypatch):
    monkeypatch.setenv("ANALYZER_ECHO__DELAY", "0.05")
    monkeypatch.setenv("ANALYZER_ECHO__CONCURRENCY", "3")
    monkeypatch.setenv("ANALYZER_ECHO__BATCH_SIZE", "1")

    cli("run", ten_images, "--plugins", "echo")

    assert echo.max_in_flight == 3


def test_setup_is_lazy_and_happens_once(cli, ten_images, echo):
    cli("run", ten_images, "--plugins", "echo")
    assert echo.setups == 1

    cli("run", ten_images, "--plugins", "echo")  # nothing missing: the model is never loaded
    assert echo.setups == 1


def test_a_new_model_id_makes_results_missing_and_lives_beside_the_old(cli, ten_images, echo, monkeypatch):
    cli("run", ten_images, "--plugins", "echo", "--modes", "name")
    monkeypatch.setenv("ANALYZER_ECHO__SUFFIX", "-large")

    cli("run", ten_images, "--plugins", "echo", "--modes", "name")

    by_model = sidecar(ten_images / "img00.png", "echo")["analysis"]["name"]
    assert set(by_model) == {"echo-v1", "echo-v1-large"}


def test_a_plugin_that_fails_setup_is_reported_and_the_others_still_run(cli, ten_images, echo, extra_plugins):
    outcome = cli("run", ten_images, "--plugins", "echo,brokensetup")

    assert outcome.code == 1
    assert "plugin brokensetup could not start: model weights not found: download them" in outcome.log
    assert sidecar(ten_images / "img00.png", "echo")["analysis"]["name"]["echo-v1"]["result"] == "img00"
    assert not list(ten_images.glob("*.brokensetup.json"))
    # the run and `status` tell the same story: not failed (nothing was tried), still missing
    assert "brokensetup: 0 done, 0 failed of 0 planned, 10 not run (the plugin could not start" in outcome.log
    counts = json.loads(cli("status", ten_images, "--plugins", "brokensetup", "--json").out)["results"][0]
    assert (counts["failed"], counts["missing"]) == (0, 10)


def test_a_plugin_missing_its_extra_says_what_to_install(cli, ten_images, echo, extra_plugins):
    outcome = cli("run", ten_images, "--plugins", "echo,needsextra")

    assert outcome.code == 1
    assert (
        "plugin needsextra cannot run: needs module_that_is_not_installed_anywhere: "
        "pip install 'analyzer[needsextra]'" in outcome.log
    )
    assert (ten_images / "img00.png.echo.json").exists()


def test_status_says_which_plugin_cannot_run_here_and_how_to_install_it(cli, ten_images, echo, extra_plugins):
    cli("run", ten_images, "--plugins", "echo")

    table = cli("status", ten_images, "--plugins", "echo,needsextra")
    as_json = json.loads(cli("status", ten_images, "--plugins", "echo,needsextra", "--json").out)

    assert table.code == 0
    assert (
        "needsextra cannot run on this machine (needs module_that_is_not_installed_anywhere: "
        "pip install 'analyzer[needsextra]'): its 10 missing items stay missing until then" in table.out
    )
    assert as_json["cannot_run"] == {
        "needsextra": "needs module_that_is_not_installed_anywhere: pip install 'analyzer[needsextra]'"
    }
    assert "cannot run" not in cli("status", ten_images, "--plugins", "echo").out


def test_exit_codes_follow_one_rule_refused_before_any_work_is_2_something_not_done_is_1(
    cli, ten_images, echo, extra_plugins
):
    only_missing = cli("run", ten_images, "--plugins", "needsextra")
    assert only_missing.code == 2 and "needsextra" in only_missing.err  # nothing that can run: refused
    assert not list(ten_images.glob("*.json"))
    assert cli("run", ten_images, "--plugins", "echo,needsextra").code == 1  # echo ran, needsextra did not
    assert cli("run", ten_images, "--plugins", "echo").code == 0


def test_unrequested_unavailable_plugins_are_a_note_not_a_failure(cli, ten_images, echo, extra_plugins, monkeypatch):
    monkeypatch.setenv("ANALYZER_BROKENSETUP__ENABLED", "false")
    monkeypatch.setenv("ANALYZER_FLAKY__ENABLED", "false")

    outcome = cli("run", ten_images)

    assert outcome.code == 0
    assert "plugin needsextra not used: needs module_that_is_not_installed_anywhere" in outcome.log
    assert (ten_images / "img00.png.metadata.json").exists() and (ten_images / "img00.png.echo.json").exists()


def test_errors_are_recorded_per_image_and_never_stored_as_results(cli, tmp_path, extra_plugins):
    root = tmp_path / "imgs"
    for name in ("ok", "object", "busy"):
        make_image(root / f"{name}.png")
    make_image(root / "later" / "raise.png")

    outcome = cli("run", root, "--plugins", "flaky")

    assert outcome.code == 1
    assert sidecar(root / "ok.png", "flaky")["analysis"]["x"]["f1"]["result"] == "fine"
    invalid = sidecar(root / "object.png", "flaky")
    assert invalid["analysis"] == {} and invalid["errors"]["x"]["f1"]["type"] == "InvalidResult"
    busy = sidecar(root / "busy.png", "flaky")["errors"]["x"]["f1"]
    assert busy == {**busy, "type": "RateLimited", "retryable": True, "attempts": 3}
    raised = sidecar(root / "later" / "raise.png", "flaky")["errors"]["x"]["f1"]
    assert raised["type"] == "ConnectionError" and raised["retryable"] is True

    again = cli("run", root, "--plugins", "flaky")  # retryable errors are tried again by themselves
    assert "flaky: 0 done, 2 failed of 2 planned" in again.log


def test_unknown_plugin_options_are_an_error(cli, ten_images, echo, monkeypatch):
    monkeypatch.setenv("ANALYZER_ECHO__DELAYY", "1")

    outcome = cli("run", ten_images, "--plugins", "echo")

    assert outcome.code == 2
    assert "invalid options for plugin 'echo': echo.delayy: Extra inputs are not permitted" in outcome.err


def test_unknown_mode_in_plugin_settings_is_an_error(cli, ten_images, echo, monkeypatch):
    monkeypatch.setenv("ANALYZER_ECHO__MODES", "name,shout")

    outcome = cli("run", ten_images, "--plugins", "echo")

    assert outcome.code == 2
    assert "plugin 'echo' has no mode 'shout'" in outcome.err


def test_shared_work_computes_once_and_stays_bounded():
    cache: SharedWork[str, int] = SharedWork(capacity=2)
    calls: list[str] = []

    def compute(key: str) -> int:
        calls.append(key)
        return len(calls)

    assert cache.get_or_compute("a", lambda: compute("a")) == 1
    assert cache.get_or_compute("a", lambda: compute("a")) == 1
    cache.get_or_compute("b", lambda: compute("b"))
    cache.get_or_compute("c", lambda: compute("c"))
    assert len(cache) == 2 and calls == ["a", "b", "c"]
