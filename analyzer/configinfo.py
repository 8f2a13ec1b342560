"""What ``analyzer config`` shows: the effective settings of the core and of every installed plugin,
where each value came from (``--sources``), and ``.env.example`` made from the settings models.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from enum import Enum
from pathlib import Path
from typing import Any, get_args, get_origin

from dotenv import dotenv_values
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

from .errors import ConfigError
from .plugin import AnalyzerPlugin
from .registry import cannot_run, check_sections, load_class, plugin_names
from .settings import DEFAULT_CONFIG_FILE, ENV_PREFIX, Settings, WatchSettings, mask_secrets, read_toml

SECRET = "**********"


def plugin_classes() -> dict[str, type[AnalyzerPlugin] | str]:
    """Every installed plugin's class, or why it cannot be imported."""
    found: dict[str, type[AnalyzerPlugin] | str] = {}
    for name in plugin_names():
        try:
            found[name] = load_class(name)
        except ImportError as exc:
            found[name] = f"cannot import it ({exc})"
    return found


def effective(settings: Settings) -> dict[str, Any]:
    """The core settings and every installed plugin's options (a section per plugin, as in the TOML
    file), defaults filled in, secrets masked.

    A plugin that cannot run here (its extra is missing) is shown too, with why and what to install.
    """
    check_sections(settings)
    data = settings.model_dump(mode="json", exclude={"plugin_options"})
    plugins: dict[str, Any] = {}
    for name, cls in plugin_classes().items():
        if isinstance(cls, str):
            plugins[name] = {"cannot_run": cls}
            continue
        try:
            options = cls.Options.model_validate(settings.plugin_options.get(name, {}))
        except ValueError as exc:
            raise ConfigError(f"invalid options for plugin {name!r}: {exc}") from exc
        shown = cls(options).shown_options()
        problem = cannot_run(cls)
        plugins[name] = shown | ({"cannot_run": problem} if problem else {})
    data.update(plugins)  # plugin sections at the top, as [clip] is in the TOML file
    masked: dict[str, Any] = mask_secrets(data)
    return masked


# -- where each value came from --------------------------------------------------------------


def _leaves(value: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    if isinstance(value, Mapping) and value:
        for key, item in value.items():
            yield from _leaves(item, (*path, str(key)))
    else:
        yield path, value


def _find(tree: Mapping[str, Any], path: tuple[str, ...]) -> bool:
    node: Any = tree
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def sources(settings: Settings, config_file: Path | None, flags: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """(key, value, where it came from) for every effective value: a command-line flag, an
    environment variable, ``.env``, the TOML file, or the default (as ``git config --show-origin``)."""
    if config_file is None and DEFAULT_CONFIG_FILE.is_file():
        config_file = DEFAULT_CONFIG_FILE
    toml = read_toml(config_file) if config_file is not None and config_file.is_file() else {}
    dotenv = {k.upper(): v for k, v in dotenv_values(".env").items()} if Path(".env").is_file() else {}
    environ = {k.upper(): v for k, v in os.environ.items()}
    data = effective(settings)
    plugins = {name: data.pop(name) for name in plugin_classes() if name in data}
    rows: list[tuple[str, str, str]] = []
    for scope, tree, toml_tree in [("", data, toml), *[(f"{n}.", p, toml.get(n, {})) for n, p in plugins.items()]]:
        plugin = scope.rstrip(".")
        for path, value in _leaves(tree):
            key = scope + ".".join(path)
            origin = "default"
            if plugin == "" and path and path[0] in flags:
                origin = f"command line ({flags[path[0]]})"
            else:
                names = [
                    ENV_PREFIX + "__".join((plugin, *path[:i]) if plugin else path[:i]).upper()
                    for i in range(len(path), 0, -1)
                ]
                env = next((n for n in names if n in environ), None)
                if env is not None:
                    origin = f"environment ({env})"
                elif (dot := next((n for n in names if n in dotenv), None)) is not None:
                    origin = f".env ({dot})"
                elif any(_find(toml_tree, path[:i]) for i in range(len(path), 0, -1)):
                    origin = str(config_file)
            rows.append((key, _text(value), origin))
    return rows


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, list):
        return ",".join(_text(v) for v in value)
    if isinstance(value, dict):
        return "{}" if not value else str(value)
    return str(value)


# -- .env.example ---------------------------------------------------------------------------

HEADER = """\
# Every variable analyzer reads, made from its settings models by `analyzer config --env-example`
# (tests/test_config_command.py checks that this file is what that command prints).
# Copy to .env in the folder you run analyzer from, or export them. Every variable is optional;
# an unknown ANALYZER_ variable is an error. Lists are comma-separated (ANALYZER_ROOTS: ":" on
# POSIX, ";" on Windows), or JSON ('["a", "b"]'). See README.md ("Settings") for precedence.
"""

EXTRA = {
    "": [
        "# Restrict which installed plugin entry points are loaded at all:",
        "# ANALYZER_LOAD_PLUGINS=metadata,clip",
        "# Never touch the network for model weights (they must be in the local cache):",
        "# HF_HUB_OFFLINE=1",
    ],
    "llm": [
        "# The SDKs' own key variables are used when ANALYZER_LLM__API_KEY is not set:",
        "# OPENAI_API_KEY=",
        "# ANTHROPIC_API_KEY=",
    ],
}


def _example(info: FieldInfo) -> str:
    if info.default_factory is not None:
        try:
            value = info.default_factory()  # type: ignore[call-arg]
        except TypeError:
            return ""
        if isinstance(value, Path):
            home = str(Path.home())
            return "~" + str(value)[len(home) :] if str(value).startswith(home) else str(value)
        return _text(value) if not isinstance(value, (dict, BaseModel)) else ""
    value = info.default
    if isinstance(value, SecretStr):
        return ""
    if isinstance(value, Enum):
        return str(value.value)
    return _text(value)


def _model_of(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The settings model inside a field's type, and whether it sits in a dict (named entries)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    if get_origin(annotation) is dict:
        inner = get_args(annotation)[1]
        for candidate in (inner, *get_args(inner)):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                return candidate, True
    return None, False


def _lines(model: type[BaseModel], prefix: str, skip: set[str] = frozenset()) -> list[str]:  # type: ignore[assignment]
    out: list[str] = []
    for name, info in model.model_fields.items():
        if name in skip:
            continue
        var = f"{prefix}{(info.alias or name).upper()}"
        nested, named = _model_of(info.annotation)
        description = " ".join((info.description or "").split()).replace("``", "`")
        if nested is not None and named:
            out.append(f"# {var}__<NAME>__<OPTION>: {description}".rstrip(": "))
            out.extend(_lines(nested, f"{var}__<NAME>__"))
            continue
        if nested is not None:
            out.extend(_lines(nested, f"{var}__"))
            continue
        if description:
            out.append(f"# {description}")
        out.append(f"# {var}={_example(info)}")
    return out


def env_example() -> str:
    """The text of ``.env.example``: every core setting and every installed plugin's options."""
    parts = [HEADER, "# -- core settings --", *_lines(Settings, ENV_PREFIX, {"plugin_options", "watch"})]
    parts += ["", "# -- analyzer watch ([watch] in the TOML file) --", *_lines(WatchSettings, f"{ENV_PREFIX}WATCH__")]
    parts += ["", *EXTRA[""]]
    for name, cls in plugin_classes().items():
        if isinstance(cls, str):
            continue
        hint = f" ({cls.install_hint})" if cls.install_hint and cls.requires else ""
        parts += ["", f"# -- plugin {name}{hint}: [{name}] in the TOML file --"]
        parts += _lines(cls.Options, f"{ENV_PREFIX}{name.upper()}__")
        parts += EXTRA.get(name, [])
    return "\n".join(parts) + "\n"
