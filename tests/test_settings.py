"""Settings: CLI > environment > .env > TOML > defaults; secrets never printed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from analyzer.errors import ConfigError
from analyzer.settings import Settings, WatchSettings, load_settings


def test_defaults_are_sane():
    settings = load_settings()
    assert settings.hash_workers == 4 and settings.sidecar_dir is None and settings.plugins is None


def test_precedence_cli_over_env_over_dotenv_over_toml(monkeypatch):
    Path("analyzer.toml").write_text("hash_workers = 2\nqueue_size = 100\ngrace_period = 5\nheartbeat_interval = 7\n")
    Path(".env").write_text("ANALYZER_QUEUE_SIZE=200\nANALYZER_GRACE_PERIOD=6\nANALYZER_HASH_WORKERS=3\n")
    monkeypatch.setenv("ANALYZER_GRACE_PERIOD", "9")
    monkeypatch.setenv("ANALYZER_HASH_WORKERS", "5")

    settings = load_settings(hash_workers=8)

    assert settings.hash_workers == 8  # flag
    assert settings.grace_period == 9  # environment
    assert settings.queue_size == 200  # .env
    assert settings.heartbeat_interval == 7  # analyzer.toml in the working directory


def test_plugin_sections_come_from_toml_env_and_dotenv(monkeypatch, tmp_path):
    config = tmp_path / "custom.toml"
    config.write_text('exclude = ["tmp/**"]\n[metadata]\nmodes = ["prompt"]\nbatch_size = 3\n')
    Path(".env").write_text("ANALYZER_METADATA__CONCURRENCY=2\n")
    monkeypatch.setenv("ANALYZER_METADATA__BATCH_SIZE", "5")

    settings = load_settings(config)

    assert settings.exclude == ["tmp/**"]
    assert settings.plugin_options["metadata"] == {"modes": ["prompt"], "batch_size": "5", "concurrency": "2"}


def test_lists_from_the_environment_are_comma_separated(monkeypatch):
    monkeypatch.setenv("ANALYZER_PLUGINS", "metadata,clip")
    monkeypatch.setenv("ANALYZER_EXCLUDE", "a/**, *.gif")
    settings = load_settings()
    assert settings.plugins == ["metadata", "clip"] and settings.exclude == ["a/**", "*.gif"]


def test_typos_are_errors_not_silent_defaults(monkeypatch, cli):
    monkeypatch.setenv("ANALYZER_HASHWORKERS", "3")
    with pytest.raises(ConfigError, match="unknown setting 'ANALYZER_HASHWORKERS'"):
        load_settings()
    monkeypatch.delenv("ANALYZER_HASHWORKERS")

    Path("analyzer.toml").write_text("[metdata]\nmodes = ['prompt']\n")
    outcome = cli("config")
    assert outcome.code == 2
    assert "unknown setting section 'metdata'" in outcome.err


def test_invalid_values_exit_2_with_the_setting_named(cli, monkeypatch):
    monkeypatch.setenv("ANALYZER_HASH_WORKERS", "many")
    outcome = cli("config")
    assert outcome.code == 2 and "hash_workers" in outcome.err


def test_missing_config_file_is_an_error(cli):
    outcome = cli("config", "--config", "nope.toml")
    assert outcome.code == 2 and "nope.toml does not exist" in outcome.err


def test_config_command_prints_effective_settings_with_plugin_options(cli, monkeypatch):
    monkeypatch.setenv("ANALYZER_METADATA__BATCH_SIZE", "7")

    outcome = cli("config")

    data = json.loads(outcome.out)
    assert data["metadata"]["batch_size"] == 7
    assert data["hash_workers"] == 4


def test_secret_looking_values_are_masked():
    from analyzer.settings import mask_secrets as _mask

    masked = _mask({"llm": {"api_key": "sk-123", "providers": [{"token": "t"}], "model": "gpt"}})
    assert masked == {"llm": {"api_key": "**********", "providers": [{"token": "**********"}], "model": "gpt"}}


REPO = Path(__file__).resolve().parents[1]


def test_env_example_lists_every_core_setting():
    text = (REPO / ".env.example").read_text()
    for name in Settings.model_fields:
        if name not in ("plugin_options", "watch"):
            assert f"ANALYZER_{name.upper()}=" in text, name
    for name in WatchSettings.model_fields:
        assert f"ANALYZER_WATCH__{name.upper()}=" in text, name


def test_watch_settings_come_from_the_environment_toml_and_flags(tmp_path, monkeypatch):
    config = tmp_path / "analyzer.toml"
    config.write_text("[watch]\nquiet_period = 5\non_delete = 'delete'\n")
    monkeypatch.setenv("ANALYZER_WATCH__POLL_INTERVAL", "9")
    settings = load_settings(config, watch={"polling": True})
    assert (settings.watch.quiet_period, settings.watch.on_delete) == (5, "delete")
    assert (settings.watch.poll_interval, settings.watch.polling) == (9, True)
    with pytest.raises(ConfigError, match="watch"):
        load_settings(None, watch={"quiet": 1})


def test_the_shipped_example_config_is_valid(cli):
    outcome = cli("config", "--config", REPO / "config" / "analyzer.toml")
    assert outcome.code == 0, outcome.err
    assert json.loads(outcome.out)["exclude"] == ["**/thumbnails/**"]


def test_an_unknown_setting_lists_only_settings_a_user_can_set(monkeypatch):
    monkeypatch.setenv("ANALYZER_HASH_WORKRS", "2")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "hash_workers" in str(caught.value) and "plugin_options" not in str(caught.value)
