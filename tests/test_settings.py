"""Settings: CLI > environment > .env > TOML > defaults; secrets never printed."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from dotenv import dotenv_values
from pydantic import BaseModel, ValidationError

from analyzer import configview
from analyzer.errors import ConfigError
from analyzer.registry import load_class, plugin_names
from analyzer.settings import Settings, load_settings


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
    assert data["plugin_options"]["metadata"]["batch_size"] == 7
    assert data["hash_workers"] == 4


def test_secret_looking_values_are_masked():
    from analyzer.settings import mask_secrets as _mask

    masked = _mask({"llm": {"api_key": "sk-123", "providers": [{"token": "t"}], "model": "gpt"}})
    assert masked == {"llm": {"api_key": "**********", "providers": [{"token": "**********"}], "model": "gpt"}}


REPO = Path(__file__).resolve().parents[1]


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


# -- .env.example, made from the settings models -------------------------------------------------

HEAVY = ("torch", "torchvision", "open_clip", "clip_interrogator", "transformers", "numpy", "openai", "anthropic")
HEAVY += ("jsonschema",)
EXAMPLE_LINE = re.compile(r"^# (ANALYZER_[A-Z0-9_<>]+)=(.*)$", flags=re.M)


def setting_models() -> Iterator[tuple[type[BaseModel], str]]:
    """Every settings model with the variable prefix of its fields: the core's, then each plugin's,
    nested models and tables of models (``<NAME>``) included."""

    def walk(model: type[BaseModel], prefix: str) -> Iterator[tuple[type[BaseModel], str]]:
        yield model, prefix
        for name, info in model.model_fields.items():
            inner, table = configview._inner_model(info.annotation)
            if inner is not None:
                yield from walk(inner, f"{prefix}{(info.alias or name).upper()}__" + ("<NAME>__" if table else ""))

    yield from walk(Settings, "ANALYZER_")
    for name in plugin_names():
        yield from walk(load_class(name).Options, f"ANALYZER_{name.upper()}__")


def test_the_checked_in_env_example_is_what_the_command_generates(cli):
    outcome = cli("config", "--env-example")

    assert outcome.code == 0, outcome.err
    assert outcome.out == (REPO / ".env.example").read_text(), (
        ".env.example is out of date: run `analyzer config --env-example > .env.example`"
    )


def test_env_example_names_every_field_of_every_model_with_its_description():
    text = (REPO / ".env.example").read_text()
    models = list(setting_models())
    assert {model.__name__ for model, _ in models} >= {
        "Settings",
        "WatchSettings",
        "MetadataOptions",
        "ClipOptions",
        "LlmOptions",
        "ProviderOptions",
        "PromptOptions",
        "ClassifyOptions",
        "LabelSet",
    }
    for model, prefix in models:
        for name, info in model.model_fields.items():
            if name == "plugin_options" or configview._inner_model(info.annotation)[0] is not None:
                continue
            var = prefix + (info.alias or name).upper()
            doc = configview._one_line(configview.field_doc(model, name))
            assert doc, f"{model.__name__}.{name} has no docstring"
            assert re.search(rf"^# {re.escape(doc)}.*\n# {re.escape(var)}[=:]", text, flags=re.M), var
    # the ones the old, hand-written file missed
    for var in (
        "ANALYZER_LLM__TIMEOUT=60",
        "ANALYZER_LLM__BACKOFF_BASE=0.5",
        "ANALYZER_LLM__MAX_BACKOFF=60",
        "ANALYZER_LLM__TEMPLATES_DIR=",
        "ANALYZER_LLM__IMAGE_FORMAT=jpeg",
        "ANALYZER_CLIP__CHUNK_SIZE=2048",
        "ANALYZER_CLIP__PREFIX_CACHE=true",
        "ANALYZER_CLIP__DOWNLOAD_CACHE=true",
        "ANALYZER_LLM__PROVIDERS__<NAME>__MODEL=",
        "ANALYZER_LLM__PROMPTS__<NAME>__TEMPLATE=",
        "ANALYZER_CLASSIFY__LABELS__<NAME>__LABELS=",
    ):
        assert f"# {var}" in text, var
    for kept in ("# HF_HUB_OFFLINE=1", "# OPENAI_API_KEY=", "# ANTHROPIC_API_KEY=", "# ANALYZER_LOAD_PLUGINS="):
        assert kept in text


def test_every_variable_in_env_example_uncommented_alone_is_a_valid_setting(monkeypatch):
    monkeypatch.delenv("ANALYZER_CLIP__ENABLED")  # (set by the test setup) with ANALYZER_LOAD_PLUGINS=metadata
    text = (REPO / ".env.example").read_text()
    found = EXAMPLE_LINE.findall(text)
    assert len(found) > 100
    for var, raw in found:
        value = dotenv_values(stream=io.StringIO(f"X={raw}"))["X"]
        name = var.replace("<NAME>", "LOCAL")
        monkeypatch.setenv(name, value or "")
        settings = load_settings()
        for plugin, section in settings.plugin_options.items():
            load_class(plugin).Options.model_validate(section)
        monkeypatch.delenv(name)
    # and what it says is not read from the environment is not
    for var in re.findall(r"^# (ANALYZER_[A-Z0-9_<>]+): not read from the environment", text, flags=re.M):
        monkeypatch.setenv(var.replace("<NAME>", "LOCAL"), "a")
        settings = load_settings()
        plugin = next(iter(settings.plugin_options))
        with pytest.raises(ValidationError):
            load_class(plugin).Options.model_validate(settings.plugin_options[plugin])
        monkeypatch.delenv(var.replace("<NAME>", "LOCAL"))


def test_env_example_prints_defaults_and_examples_never_what_is_set(cli, monkeypatch):
    monkeypatch.setenv("ANALYZER_LLM__API_KEY", "sk-live-secret")
    monkeypatch.setenv("ANALYZER_LLM__PROVIDERS__LOCAL__API_KEY", "sk-other-secret")
    monkeypatch.setenv("ANALYZER_HASH_WORKERS", "13")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-sdk-secret")

    outcome = cli("config", "--env-example")

    assert "secret" not in outcome.out.replace("SECRET", "")  # no value of the environment
    assert "# ANALYZER_HASH_WORKERS=4\n" in outcome.out
    assert "# ANALYZER_LLM__API_KEY=\n" in outcome.out
    assert outcome.out == (REPO / ".env.example").read_text()


def test_plugin_modules_import_nothing_heavy_and_config_works_without_the_extras(tmp_path):
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(f"import sys\nfor name in {HEAVY!r}:\n    sys.modules[name] = None\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANALYZER_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hide), env.get("PYTHONPATH")]))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False
        )

    imported = run("-c", "import analyzer_metadata, analyzer_clip, analyzer_llm, analyzer_classify")
    assert imported.returncode == 0, imported.stderr
    shown = run("-m", "analyzer", "config")
    assert shown.returncode == 0 and "Traceback" not in shown.stderr, shown.stderr
    data = json.loads(shown.stdout)
    for name, extra in (("clip", "clip"), ("classify", "clip"), ("llm", "llm")):
        assert data["plugin_status"][name]["runs"] is False
        assert data["plugin_status"][name]["cannot_run"].endswith(f"pip install 'analyzer[{extra}]'")
    assert "cannot run here: needs torch" in data["plugin_status"]["clip"]["note"]
    assert data["plugin_options"]["clip"]["clip_model"] == "ViT-L-14/openai"
    assert data["plugin_options"]["llm"]["max_backoff"] == 60.0
    assert data["plugin_status"]["metadata"] == {"runs": True}
    generated = run("-m", "analyzer", "config", "--env-example")
    assert generated.returncode == 0, generated.stderr
    assert generated.stdout == (REPO / ".env.example").read_text()


# -- analyzer config: every installed plugin, and where each value came from --------------------


def test_config_shows_every_plugin_with_its_defaults_even_when_not_used(cli, monkeypatch):
    monkeypatch.setenv("ANALYZER_LLM__API_KEY", "sk-live-secret")

    outcome = cli("config")

    assert outcome.code == 0, outcome.err
    assert "sk-live-secret" not in outcome.out
    data = json.loads(outcome.out)
    assert set(data["plugin_options"]) == set(plugin_names())
    llm = data["plugin_options"]["llm"]
    assert llm["api_key"] == "**********"
    assert (llm["enabled"], llm["timeout"], llm["image_format"], llm["templates_dir"]) == (False, 60.0, "jpeg", None)
    status = data["plugin_status"]["llm"]
    assert status["runs"] is False and "--plugins llm" in status["note"]
    shipped = Path(status["template_dirs"][-1])
    assert shipped.is_dir() and (shipped / "describe.toml").is_file()
    assert data["plugin_status"]["clip"] == {
        "runs": False,
        "note": "disabled: use it with --plugins clip, or set ANALYZER_CLIP__ENABLED=true",
    }  # the test setup disables it


def test_config_shows_the_templates_dir_first_then_the_shipped_templates(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("ANALYZER_LLM__TEMPLATES_DIR", str(tmp_path))
    monkeypatch.setenv("ANALYZER_PLUGINS", "metadata")

    data = json.loads(cli("config").out)

    assert data["plugin_status"]["llm"]["template_dirs"][0] == str(tmp_path)
    assert data["plugin_status"]["llm"]["note"] == "not named in the plugins setting (metadata)"


def test_config_shows_a_plugin_whose_extra_is_missing_with_what_to_install(cli, monkeypatch):
    import analyzer
    from analyzer.plugin import PluginOptions

    from fakes import NeedsMissingModule

    class Options(PluginOptions):
        depth: int = 3
        """How deep."""

    monkeypatch.setattr(NeedsMissingModule, "Options", Options)
    monkeypatch.setenv("ANALYZER_NEEDSEXTRA__DEPTH", "5")
    analyzer.register(NeedsMissingModule)
    try:
        outcome = cli("config")
        example = cli("config", "--env-example").out
    finally:
        analyzer.unregister("needsextra")

    assert outcome.code == 0, outcome.err
    data = json.loads(outcome.out)
    assert data["plugin_options"]["needsextra"]["depth"] == 5
    assert data["plugin_status"]["needsextra"] == {
        "runs": False,
        "note": "cannot run here: needs module_that_is_not_installed_anywhere: pip install 'analyzer[needsextra]'",
        "cannot_run": "needs module_that_is_not_installed_anywhere: pip install 'analyzer[needsextra]'",
    }
    assert "# How deep.\n# ANALYZER_NEEDSEXTRA__DEPTH=3\n" in example


def test_invalid_options_of_an_unused_plugin_are_a_clear_error(cli, monkeypatch):
    monkeypatch.setenv("ANALYZER_LLM__TIMEOUT", "soon")

    outcome = cli("config")

    assert outcome.code == 2 and "Traceback" not in outcome.err
    assert "invalid options for plugin 'llm': llm.timeout:" in outcome.err


def test_sources_say_where_every_value_came_from(cli, monkeypatch):
    Path("analyzer.toml").write_text(
        "hash_workers = 2\nqueue_size = 100\n[watch]\npolling = true\n"
        '[llm.providers.local]\nprovider = "openai-compatible"\nbase_url = "http://localhost:1/v1"\n'
        '[llm.prompts.short]\nprompt = "Say hi."\nschema = {type = "object"}\n'
    )
    Path(".env").write_text("ANALYZER_QUEUE_SIZE=200\nANALYZER_METADATA__WORKERS=0\n")
    monkeypatch.setenv("ANALYZER_LLM__API_KEY", "sk-live-secret")
    monkeypatch.setenv("ANALYZER_LLM__PROVIDERS__LOCAL__MODEL", "llava:13b")

    outcome = cli("config", "--sources", "--log-level", "DEBUG")

    assert outcome.code == 0, outcome.err
    assert "sk-live-secret" not in outcome.out
    lines = outcome.out.splitlines()
    assert lines[0].split() == ["key", "value", "source"]
    rows = {line.split()[0]: (line.split()[1], line.split()[-1]) for line in lines[1:]}
    toml, dotenv = f"toml:{Path('analyzer.toml').resolve()}", f".env:{Path('.env').resolve()}"
    assert rows["hash_workers"] == ("2", toml)
    assert rows["queue_size"] == ("200", f"{dotenv}:ANALYZER_QUEUE_SIZE")
    assert rows["log_level"] == ('"DEBUG"', "flag:--log-level")
    assert rows["grace_period"] == ("30.0", "default")
    assert rows["watch.polling"] == ("true", toml)
    assert rows["watch.quiet_period"] == ("2.0", "default")
    assert rows["metadata.workers"] == ("0", f"{dotenv}:ANALYZER_METADATA__WORKERS")
    assert rows["llm.api_key"] == ('"**********"', "env:ANALYZER_LLM__API_KEY")
    assert rows["llm.providers.local.model"] == ('"llava:13b"', "env:ANALYZER_LLM__PROVIDERS__LOCAL__MODEL")
    assert rows["llm.providers.local.provider"] == ('"openai-compatible"', toml)
    assert rows["llm.providers.local.timeout"] == ("60.0", "default")
    assert rows["llm.prompts.short.schema"][1] == toml
    assert rows["clip.clip_model"] == ('"ViT-L-14/openai"', "default")
    # every value of `analyzer config`, each once
    assert len(rows) == len(lines) - 1

    as_json = json.loads(cli("config", "--sources", "--json").out)
    by_key = {row["key"]: row for row in as_json}
    assert by_key["queue_size"] == {
        "key": "queue_size",
        "value": 200,
        "source": ".env",
        "file": str(Path(".env").resolve()),
        "variable": "ANALYZER_QUEUE_SIZE",
    }
    assert by_key["llm.api_key"] == {
        "key": "llm.api_key",
        "value": "**********",
        "source": "env",
        "variable": "ANALYZER_LLM__API_KEY",
    }
    assert by_key["hash_workers"]["source"] == "toml" and by_key["roots"] == {
        "key": "roots",
        "value": [],
        "source": "default",
    }


def test_sources_follow_the_precedence_and_the_config_flag(cli, tmp_path, monkeypatch):
    config = tmp_path / "custom.toml"
    config.write_text("grace_period = 5\nheartbeat_interval = 7\n[clip]\nfp16 = false\n")
    Path(".env").write_text("ANALYZER_GRACE_PERIOD=6\nANALYZER_CLIP__FP16=true\n")
    monkeypatch.setenv("ANALYZER_GRACE_PERIOD", "9")

    rows = {row["key"]: row for row in json.loads(cli("config", "--config", config, "--sources", "--json").out)}

    assert (rows["grace_period"]["value"], rows["grace_period"]["source"]) == (9.0, "env")
    assert (rows["heartbeat_interval"]["value"], rows["heartbeat_interval"]["file"]) == (7.0, str(config))
    assert (rows["clip.fp16"]["value"], rows["clip.fp16"]["source"]) == (True, ".env")


def test_analyzer_load_plugins_is_not_taken_for_a_misspelt_setting(cli, monkeypatch):
    monkeypatch.delenv("ANALYZER_CLIP__ENABLED")  # (set by the test setup) a section of a plugin not loaded
    monkeypatch.setenv("ANALYZER_LOAD_PLUGINS", "metadata")

    outcome = cli("config")

    assert outcome.code == 0, outcome.err
    assert set(json.loads(outcome.out)["plugin_options"]) == {"metadata"}


def test_a_variable_and_one_inside_it_set_together_are_a_clear_error(cli, monkeypatch):
    monkeypatch.setenv("ANALYZER_CLASSIFY__LABELS__PETS", "dog,cat")
    monkeypatch.setenv("ANALYZER_CLASSIFY__LABELS__PETS__MULTI_LABEL", "true")

    outcome = cli("config")

    assert outcome.code == 2
    assert "ANALYZER_CLASSIFY__LABELS__PETS" in outcome.err and "keep one" in outcome.err
