"""`analyzer config`: every plugin's effective options, where each value came from, and .env.example."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

import analyzer
from analyzer.configinfo import _model_of, plugin_classes
from analyzer.settings import Settings, WatchSettings

from fakes import NeedsMissingModule

PROJECT = Path(__file__).resolve().parent.parent


@pytest.fixture
def missing_extra() -> Iterator[None]:
    analyzer.register(NeedsMissingModule)
    yield
    analyzer.unregister(NeedsMissingModule.name)


def variables(model: type[BaseModel], prefix: str) -> Iterator[str]:
    """Every environment variable a settings model reads (named entries as <NAME>)."""
    for name, info in model.model_fields.items():
        if name == "plugin_options":
            continue
        var = f"{prefix}{(info.alias or name).upper()}"
        nested, named = _model_of(info.annotation)
        if nested is None:
            yield var
        else:
            yield from variables(nested, f"{var}__<NAME>__" if named else f"{var}__")


def test_env_example_is_what_the_settings_models_say(cli):
    printed = cli("config", "--env-example").out

    assert printed == (PROJECT / ".env.example").read_text(), "run: analyzer config --env-example > .env.example"


def test_env_example_names_every_variable_of_every_model(cli):
    printed = cli("config", "--env-example").out
    wanted = [*variables(Settings, "ANALYZER_"), *variables(WatchSettings, "ANALYZER_WATCH__")]
    for name, cls in plugin_classes().items():
        assert not isinstance(cls, str), cls
        wanted += variables(cls.Options, f"ANALYZER_{name.upper()}__")

    missing = [var for var in wanted if f"# {var}=" not in printed]

    assert not missing
    for var in ("ANALYZER_LLM__TIMEOUT", "ANALYZER_LLM__BACKOFF_BASE", "ANALYZER_LLM__TEMPLATES_DIR",
                "ANALYZER_LLM__IMAGE_FORMAT", "ANALYZER_CLIP__CHUNK_SIZE", "ANALYZER_CLIP__PREFIX_CACHE",
                "ANALYZER_CLIP__DOWNLOAD_CACHE", "ANALYZER_CLASSIFY__LABELS__<NAME>__MULTI_LABEL"):  # fmt: skip
        assert f"# {var}=" in printed
    assert "sk-" not in printed


def test_config_shows_every_installed_plugins_options_and_where_templates_are(cli, monkeypatch, missing_extra):
    monkeypatch.setenv("ANALYZER_LLM__API_KEY", "sk-secret-value")

    shown: dict[str, Any] = json.loads(cli("config").out)

    llm = shown["llm"]
    assert llm["enabled"] is False and llm["api_key"] == "**********" and llm["timeout"] == 60.0
    assert Path(llm["shipped_templates"], "describe.toml").is_file()
    assert set(shown) >= {"metadata", "clip", "llm", "classify", "needsextra"}
    assert shown["plugins"] is None  # the core setting of that name, not a plugin list
    assert "pip install 'analyzer[needsextra]'" in shown["needsextra"]["cannot_run"]
    assert "sk-secret-value" not in json.dumps(shown)


def test_config_sources_says_where_each_value_came_from(cli, monkeypatch, tmp_path):
    (Path.cwd() / "analyzer.toml").write_text("queue_size = 99\n[clip]\nbatch_size = 4\n")
    (Path.cwd() / ".env").write_text("ANALYZER_GRACE_PERIOD=5\n")
    monkeypatch.setenv("ANALYZER_HASH_WORKERS", "7")

    rows = {line.split()[0]: line for line in cli("config", "--sources", "--log-level", "ERROR").out.splitlines()}

    assert rows["hash_workers"].endswith("7\tenvironment (ANALYZER_HASH_WORKERS)")
    assert rows["queue_size"].endswith("99\tanalyzer.toml")
    assert rows["clip.batch_size"].endswith("4\tanalyzer.toml")
    assert rows["grace_period"].endswith("5.0\t.env (ANALYZER_GRACE_PERIOD)")
    assert rows["log_level"].endswith("ERROR\tcommand line (--log-level)")
    assert rows["watch.quiet_period"].endswith("2.0\tdefault")
    assert rows["clip.enabled"].endswith("false\tenvironment (ANALYZER_CLIP__ENABLED)")  # the tests' own setting


def test_a_variable_and_one_inside_it_set_together_are_a_clear_error(cli, monkeypatch):
    monkeypatch.setenv("ANALYZER_CLASSIFY__LABELS__PETS", "dog,cat")
    monkeypatch.setenv("ANALYZER_CLASSIFY__LABELS__PETS__MULTI_LABEL", "true")

    outcome = cli("config")

    assert outcome.code == 2
    assert "ANALYZER_CLASSIFY__LABELS__PETS" in outcome.err and "keep one" in outcome.err
