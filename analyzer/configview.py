"""What ``analyzer config`` shows: the effective settings of the core and of every installed
plugin, where each value came from (``--sources``), and ``.env.example`` (``--env-example``).

Every plugin the program can find (:func:`analyzer.registry.plugin_names`) is shown, used or not,
its options validated by its own options model with the defaults filled in. A plugin whose extra
is not installed is shown too: its module imports nothing heavy, only :meth:`AnalyzerPlugin.setup`
does. Secrets are masked wherever a value is shown, and :func:`env_example` prints defaults and
examples only, never a value read from the environment, ``.env`` or a TOML file.
"""

from __future__ import annotations

import ast
import functools
import inspect
import itertools
import json
import os
import re
import sys
import textwrap
import types
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from dotenv import dotenv_values
from pydantic import BaseModel, SecretStr, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import to_jsonable_python
from pydantic_settings import BaseSettings

from .plugin import AnalyzerPlugin, PluginOptions
from .registry import cannot_run, load_class, plugin_names, select_plugins, validated_options
from .settings import (
    ENV_PREFIX,
    NOT_SETTINGS,
    SECRET_WORDS,
    Settings,
    mask_secrets,
    read_toml,
    resolve_config_file,
)

__all__ = ["PluginView", "Row", "effective", "env_example", "installed", "sources", "sources_json", "sources_table"]

Key = tuple[str, ...]


# -- the effective settings -------------------------------------------------------------------


@dataclass(frozen=True)
class PluginView:
    """One installed plugin as ``analyzer config`` shows it."""

    name: str
    cls: type[AnalyzerPlugin] | None
    """None when its module cannot be imported."""
    options: PluginOptions | None
    """Its validated options (defaults filled in); None when the class cannot be imported."""
    section: Mapping[str, Any]
    """Its settings section as given (shown as is when the class cannot be imported)."""
    runs: bool
    """``analyzer run`` uses it with these settings (no ``--plugins``)."""
    note: str | None
    """Why ``run`` does not use it."""
    cannot_run: str | None
    """What it needs that is not installed here, and how to install it."""


def installed(settings: Settings) -> list[PluginView]:
    """Every installed plugin with its effective options. Raises ConfigError as a run would (an
    unknown section, an invalid option, an unknown mode), and for invalid options of unused plugins."""
    running, unavailable = select_plugins(settings, check_requirements=True)
    used = {plugin.name for plugin in running}
    reasons = {item.name: item.reason for item in unavailable}
    views: list[PluginView] = []
    for name in plugin_names():
        section = settings.plugin_options.get(name, {})
        try:
            cls = load_class(name)
        except ImportError as exc:
            problem = f"cannot import it ({exc})"
            views.append(PluginView(name, None, None, section, False, problem, problem))
            continue
        options = validated_options(name, cls, section)
        missing = cannot_run(cls)
        note = None
        if name not in used:
            if settings.plugins is not None and name not in settings.plugins:
                note = f"not named in the plugins setting ({', '.join(settings.plugins)})"
            elif not options.enabled:
                note = f"disabled: use it with --plugins {name}, or set {ENV_PREFIX}{name.upper()}__ENABLED=true"
            elif missing is not None:
                note = f"cannot run here: {missing}"
            else:
                note = reasons.get(name, "not used")
        views.append(PluginView(name, cls, options, section, name in used, note, missing))
    return views


def effective(settings: Settings) -> dict[str, Any]:
    """The effective settings as plain data, every secret masked.

    The core settings, then ``plugin_options``: every installed plugin's options, and
    ``plugin_status``: per plugin whether ``run`` uses it (``runs``), why not (``note``), what it
    needs that is missing here (``cannot_run``, with the install hint), and what is derived from
    its options (the llm plugin's ``template_dirs``).
    """
    views = installed(settings)
    data: dict[str, Any] = settings.model_dump(mode="json", exclude={"plugin_options"})
    data["plugin_options"] = {view.name: _dump(view) for view in views}
    data["plugin_status"] = {view.name: _status(view) for view in views}
    masked: dict[str, Any] = mask_secrets(data)
    return masked


def _dump(view: PluginView) -> dict[str, Any]:
    if view.options is None:
        return dict(view.section)
    dumped: dict[str, Any] = view.options.model_dump(mode="json", by_alias=True)
    return dumped


def _status(view: PluginView) -> dict[str, Any]:
    status: dict[str, Any] = {"runs": view.runs}
    if view.note is not None:
        status["note"] = view.note
    if view.cannot_run is not None:
        status["cannot_run"] = view.cannot_run
    if view.cls is not None and view.options is not None:
        status |= _derived(view.cls, view.options)
    return status


def _derived(cls: type[AnalyzerPlugin], options: PluginOptions) -> dict[str, Any]:
    """Values that follow from the options and are worth seeing: the folders the llm plugin looks
    up templates in, in order (``templates_dir``, then its module's ``TEMPLATES``: the shipped ones)."""
    shipped = getattr(sys.modules.get(cls.__module__), "TEMPLATES", None)
    if not isinstance(shipped, Path) or "templates_dir" not in type(options).model_fields:
        return {}
    own = getattr(options, "templates_dir", None)
    return {"template_dirs": [str(folder) for folder in (own, shipped.resolve()) if folder is not None]}


# -- where each value came from ---------------------------------------------------------------


@dataclass(frozen=True)
class Origin:
    """Where a value came from: ``default``, ``toml``, ``.env``, ``env`` or ``flag``."""

    source: Literal["default", "toml", ".env", "env", "flag"]
    file: str | None = None
    variable: str | None = None
    flag: str | None = None

    def __str__(self) -> str:
        """``default``, ``toml:/abs/analyzer.toml``, ``.env:/abs/.env:ANALYZER_X``, ``env:ANALYZER_X``, ``flag:--x``."""
        return ":".join(part for part in (self.source, self.file, self.variable, self.flag) if part is not None)

    def as_json(self) -> dict[str, str]:
        return {name: value for name, value in vars(self).items() if value is not None}


@dataclass(frozen=True)
class Row:
    key: str
    """Dotted: ``hash_workers``, ``watch.polling``, ``llm.providers.local.model``."""
    value: Any
    """As JSON data, secrets masked."""
    origin: Origin


def sources(settings: Settings, config_file: Path | None, flags: Mapping[str, str]) -> list[Row]:
    """Every effective value (core settings, then each installed plugin's options) and where it
    came from: the highest of a command-line flag (``flags``: dotted key -> the flag given), an
    environment variable, ``.env``, the TOML file (``config_file``, else ``./analyzer.toml``), or
    the default. A value set below a table a source gives whole (``ANALYZER_WATCH='{…}'``) is
    attributed to it."""
    toml_file = resolve_config_file(config_file)
    env_file = Settings.model_config.get("env_file")
    dotenv_path = Path(env_file) if isinstance(env_file, (str, Path)) and Path(env_file).is_file() else None
    layers = [  # highest precedence first
        {tuple(key.lower().split(".")): Origin("flag", flag=flag) for key, flag in flags.items()},
        _variables(os.environ, None),
        _variables(dotenv_values(dotenv_path), dotenv_path) if dotenv_path is not None else {},
        _toml_keys(read_toml(toml_file), toml_file) if toml_file is not None else {},
    ]
    rows: list[Row] = []
    for key, value in _effective_leaves(settings):
        origin = next((found for layer in layers if (found := _lookup(layer, key)) is not None), Origin("default"))
        rows.append(Row(".".join(key), _shown(key[-1], value), origin))
    return rows


def _effective_leaves(settings: Settings) -> Iterator[tuple[Key, Any]]:
    for name, info in Settings.model_fields.items():
        if name != "plugin_options":
            yield from _leaves(getattr(settings, name), (info.alias or name,))
    for view in installed(settings):
        if view.options is not None:
            yield from _leaves(view.options, (view.name,))
        else:
            yield from _leaves(dict(view.section), (view.name,), raw=True)


def _leaves(value: Any, key: Key, *, raw: bool = False) -> Iterator[tuple[Key, Any]]:
    """The values under ``key``: a settings model's fields and the entries of a table of models
    (``llm.providers``) are walked, and every table of a ``raw`` section; anything else is one value."""
    if isinstance(value, BaseModel):
        for name, info in type(value).model_fields.items():
            yield from _leaves(getattr(value, name), (*key, info.alias or name))
    elif isinstance(value, dict) and value and (raw or all(isinstance(v, BaseModel) for v in value.values())):
        for name, item in value.items():
            yield from _leaves(item, (*key, str(name)), raw=raw)
    else:
        yield key, value


def _shown(name: str, value: Any) -> Any:
    return mask_secrets({name: to_jsonable_python(value)})[name]


def _variables(variables: Mapping[str, str | None], file: Path | None) -> dict[Key, Origin]:
    found: dict[Key, Origin] = {}
    for name, value in variables.items():
        upper = name.upper()
        if value is None or not upper.startswith(ENV_PREFIX) or upper in NOT_SETTINGS:
            continue
        key = tuple(upper[len(ENV_PREFIX) :].lower().split("__"))
        if file is None:
            found[key] = Origin("env", variable=name)
        else:
            found[key] = Origin(".env", file=str(file.resolve()), variable=name)
    return found


def _toml_keys(data: Mapping[str, Any], file: Path, key: Key = ()) -> dict[Key, Origin]:
    found: dict[Key, Origin] = {}
    for name, value in data.items():
        if isinstance(value, dict) and value:
            found |= _toml_keys(value, file, (*key, name.lower()))
        else:
            found[(*key, name.lower())] = Origin("toml", file=str(file.resolve()))
    return found


def _lookup(layer: Mapping[Key, Origin], key: Key) -> Origin | None:
    """The origin of ``key`` in a layer: the most specific entry at, above or below it."""
    key = tuple(part.lower() for part in key)
    matches = [given for given in layer if given == key[: len(given)] or key == given[: len(key)]]
    return layer[max(matches, key=len)] if matches else None


def sources_table(rows: Sequence[Row]) -> str:
    """One line per value: key, value (as JSON), source; aligned like ``analyzer status``."""
    values = [json.dumps(row.value, ensure_ascii=False) for row in rows]
    key_width = max([len("key"), *(len(row.key) for row in rows)])
    value_width = min(40, max([len("value"), *map(len, values)]))
    lines = [f"{'key'.ljust(key_width)}  {'value'.ljust(value_width)}  source"]
    lines += [
        f"{row.key.ljust(key_width)}  {value.ljust(value_width)}  {row.origin}"
        for row, value in zip(rows, values, strict=True)
    ]
    return "\n".join(lines) + "\n"


def sources_json(rows: Sequence[Row]) -> str:
    """The rows as a JSON list of ``{"key", "value", "source"[, "file"][, "variable"][, "flag"]}``."""
    data = [{"key": row.key, "value": row.value, **row.origin.as_json()} for row in rows]
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


# -- .env.example -----------------------------------------------------------------------------

HEADER = """\
# analyzer's environment variables: every setting, with what it means and its default or an example.
# Generated from the settings models and their docstrings: `analyzer config --env-example > .env.example`
# (tests/test_settings.py checks this file is exactly what that command prints: edit the models, not it).
# Copy to .env in the folder you run analyzer from, or export the variables; every one is optional.
# Precedence: command-line flags > environment > .env > TOML file (--config, or ./analyzer.toml) > defaults.
# A misspelt ANALYZER_ variable is an error. Lists are comma-separated.
"""

EXAMPLES: dict[str, str] = {
    # Settings without a default, or whose default depends on the machine: an example to edit.
    "ANALYZER_ROOTS": "/home/me/sd-outputs:/home/me/more",
    "ANALYZER_INCLUDE": "**/*.png,**/*.jpg",
    "ANALYZER_EXCLUDE": "**/thumbnails/**",
    "ANALYZER_SIDECAR_DIR": "/data/analyzer-sidecars",
    "ANALYZER_WILDCARDS_DIR": "/opt/sd-webui/extensions/sd-dynamic-prompts/wildcards",
    "ANALYZER_STATE_DIR": "/var/lib/analyzer",
    "ANALYZER_HOST_ID": "render-box-1",
    "ANALYZER_PLUGINS": "metadata,clip",
    "ANALYZER_LOG_FILE": "analyzer.log.jsonl",
    "ANALYZER_CLASSIFY__MODES": "animals",
    "ANALYZER_CLASSIFY__MODEL_DIR": "/data/models/open_clip",
    "ANALYZER_CLASSIFY__CACHE_DIR": "/home/me/.cache/analyzer/classify",
    "ANALYZER_CLASSIFY__LABELS__<NAME>__LABELS": "dog,cat,tiger",
    "ANALYZER_CLASSIFY__LABELS__<NAME>__FILE": "/home/me/labels/animals.txt",
    "ANALYZER_CLASSIFY__LABELS__<NAME>__TEMPLATES": "a photo of a {}.",
    "ANALYZER_CLIP__MODEL_DIR": "/data/models/open_clip",
    "ANALYZER_CLIP__CACHE_DIR": "/home/me/.cache/analyzer/clip",
    "ANALYZER_CLIP__DATA_PATH": "/data/clip-interrogator-data",
    "ANALYZER_LLM__MODES": "describe,tags",
    "ANALYZER_LLM__MODEL": "gpt-4.1-mini",
    "ANALYZER_LLM__BASE_URL": "http://localhost:11434/v1",
    "ANALYZER_LLM__REQUESTS_PER_MINUTE": "500",
    "ANALYZER_LLM__TOKENS_PER_MINUTE": "200000",
    "ANALYZER_LLM__INPUT_PRICE_PER_MTOK": "0.4",
    "ANALYZER_LLM__OUTPUT_PRICE_PER_MTOK": "1.6",
    "ANALYZER_LLM__TEMPLATES_DIR": "/home/me/prompts",
    "ANALYZER_LLM__PROVIDERS__<NAME>__PROVIDER": "openai-compatible",
    "ANALYZER_LLM__PROVIDERS__<NAME>__MODEL": "llava:13b",
    "ANALYZER_LLM__PROVIDERS__<NAME>__BASE_URL": "http://localhost:11434/v1",
    "ANALYZER_LLM__PROVIDERS__<NAME>__REQUESTS_PER_MINUTE": "500",
    "ANALYZER_LLM__PROVIDERS__<NAME>__TOKENS_PER_MINUTE": "200000",
    "ANALYZER_LLM__PROVIDERS__<NAME>__INPUT_PRICE_PER_MTOK": "0",
    "ANALYZER_LLM__PROVIDERS__<NAME>__OUTPUT_PRICE_PER_MTOK": "0",
    "ANALYZER_LLM__PROMPTS__<NAME>__TEMPLATE": "describe",
    "ANALYZER_LLM__PROMPTS__<NAME>__SYSTEM": "You describe images for a catalogue.",
    "ANALYZER_LLM__PROMPTS__<NAME>__PROMPT": "Describe {file_name} in one sentence.",
    "ANALYZER_LLM__PROMPTS__<NAME>__MAX_TOKENS": "300",
    "ANALYZER_LLM__PROMPTS__<NAME>__TEMPERATURE": "0.7",
    "ANALYZER_LLM__PROMPTS__<NAME>__OUTPUT": "line",
    "ANALYZER_LLM__PROMPTS__<NAME>__SCHEMA": '{"type": "object"}',
    "ANALYZER_LLM__PROMPTS__<NAME>__WILDCARD": "tags",
    "ANALYZER_LLM__PROMPTS__<NAME>__PROVIDERS": "local",
    "ANALYZER_METADATA__WORKERS": "2",
}

EXTRA: dict[str, list[str]] = {
    # Variables that are not settings, shown at the end of a section ("" is the core's).
    "": [
        "# Not a setting, read before them: only these installed plugins are loaded at all (comma-separated).",
        "# ANALYZER_LOAD_PLUGINS=metadata",
        "# Hugging Face's own variable (clip and classify): never touch the network; weights must be cached.",
        "# HF_HUB_OFFLINE=1",
    ],
    "llm": [
        "# The SDKs' own key variables, used when no api_key is given:",
        "# OPENAI_API_KEY=",
        "# ANTHROPIC_API_KEY=",
    ],
}


def env_example() -> str:
    """The text of ``.env.example``: every core setting and every installed plugin's options,
    each as a commented-out variable with its one-line description, default or example."""
    out = [HEADER, "# == Core settings (the top level of the TOML file) =="]
    out += _model_lines(Settings, ENV_PREFIX, "", None, skip={"plugin_options"}, extra=EXTRA[""])
    for name in plugin_names():
        out.append("")
        try:
            cls = load_class(name)
        except ImportError as exc:
            out.append(f"# == Plugin {name}: cannot be imported here ({exc}), so its options are unknown ==")
            continue
        needs = f"; needs {cls.install_hint}" if cls.install_hint and cls.requires else ""
        out.append(f"# == Plugin {name} ([{name}] in the TOML file{needs}) ==")
        out += _model_lines(cls.Options, f"{ENV_PREFIX}{name.upper()}__", name, cls, extra=EXTRA.get(name, []))
    return "\n".join(out) + "\n"


def _model_lines(
    model: type[BaseModel],
    prefix: str,
    table: str,
    plugin: type[AnalyzerPlugin] | None,
    *,
    skip: frozenset[str] | set[str] = frozenset(),
    extra: Sequence[str] = (),
) -> list[str]:
    """A model's fields as variables (``prefix`` + the field's name), then ``extra``, then the
    fields that are models (``[watch]``) or tables of models (``[llm.providers.<name>]``)."""
    fields: list[str] = []
    nested: list[str] = []
    names = list(model.model_fields)
    if issubclass(model, PluginOptions):  # the options every plugin has first
        names.sort(key=lambda name: name not in PluginOptions.model_fields)
    for name in names:
        info = model.model_fields[name]
        if name in skip:
            continue
        key = info.alias or name
        var = prefix + key.upper()
        inner, named = _inner_model(info.annotation)
        doc = _one_line(field_doc(model, name))
        if inner is None:
            fields += _field_lines(model, name, info, var, table, plugin)
        elif named:
            where = f"{table}.{key}.<name>".lstrip(".")
            nested += ["", f"# -- {doc.rstrip('.')}. One group of {var}__<NAME>__<OPTION> per name ([{where}] in"]
            nested[-1] += " the TOML file; <NAME> is read in lower case) --"
            nested += _model_lines(inner, f"{var}__<NAME>__", where, None)
        else:
            where = f"{table}.{key}".lstrip(".")
            nested += ["", f"# -- {doc.rstrip('.')}: {var}__<OPTION> ([{where}] in the TOML file) --"]
            nested += _model_lines(inner, f"{var}__", where, None)
    return [*fields, *extra, *nested]


def _field_lines(
    model: type[BaseModel], name: str, info: FieldInfo, var: str, table: str, plugin: type[AnalyzerPlugin] | None
) -> list[str]:
    doc = _one_line(field_doc(model, name))
    default = _env_text(_default(info))
    hinted = _plugin_hint(plugin, name) if plugin is not None and issubclass(model, PluginOptions) else None
    if hinted is not None:
        doc += f" {hinted[1]}"
    if _is_secret(name, info.annotation):
        return [f"# {doc}", f"# {var}="]
    if var in EXAMPLES:
        shown = EXAMPLES[var]
    elif info.examples:
        shown = _env_text(info.examples[0])
    elif hinted is not None and hinted[0]:
        shown = hinted[0]
    else:
        shown = default
    choices = _choices(info.annotation)
    if choices and not all(choice in doc for choice in choices):
        doc += f" One of: {', '.join(choices)}."
    if shown != default and not re.search(r"\b(default|unset)\b", doc, flags=re.IGNORECASE):
        doc += f" Default: {default or 'none'}."
    lines = [f"# {doc}"]
    key = info.alias or name
    if not _from_environment(model, key, shown):
        where = f"[{table}]" if table else "the top level"
        return [*lines, f"# {var}: not read from the environment; set {key} in {where} of the TOML file"]
    return [*lines, f"# {var}={_quoted(shown)}"]


def _plugin_hint(plugin: type[AnalyzerPlugin], name: str) -> tuple[str, str] | None:
    """(example, note) for the options every plugin has, from what the plugin class says."""
    if name == "modes" and plugin.modes:
        default = plugin.default_modes if plugin.default_modes is not None else plugin.modes
        return ",".join(default), f"Modes: {', '.join(plugin.modes)}."
    if name == "batch_size":
        return str(plugin.batch_size_hint), f"This plugin's choice: {plugin.batch_size_hint}."
    if name == "concurrency":
        if _inherited(plugin, "concurrency"):
            return str(plugin.concurrency_hint), f"This plugin's choice: {plugin.concurrency_hint}."
        return "2", "This plugin works it out from its other options."
    return None


def _inherited(plugin: type[AnalyzerPlugin], attribute: str) -> bool:
    """The plugin does not compute ``attribute`` itself (so its hint is what it uses)."""
    return getattr(plugin, attribute) is getattr(AnalyzerPlugin, attribute)


def _from_environment(model: type[BaseModel], key: str, text: str) -> bool:
    """An environment variable can give this field ``text`` (a list without a splitting
    validator, or a table, cannot: those are set in the TOML file)."""
    if issubclass(model, BaseSettings) or not text:
        return True  # the core settings parse their lists themselves
    try:
        model.model_validate({key: text})
    except ValidationError as exc:
        return not any(error["loc"][:1] == (key,) for error in exc.errors())
    return True


def _inner_model(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The settings model a field holds, and whether it holds a table of them (``dict[str, Model]``)."""
    for candidate in _alternatives(annotation):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate, False
        if get_origin(candidate) is dict:
            for inner in _alternatives(get_args(candidate)[1]):
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    return inner, True
    return None, False


def _alternatives(annotation: Any) -> list[Any]:
    """The types of a union (``X | None``), or the type itself."""
    if get_origin(annotation) in (Union, types.UnionType):
        return [arg for arg in get_args(annotation) if arg is not type(None)]
    return [annotation]


def _choices(annotation: Any) -> list[str]:
    for candidate in _alternatives(annotation):
        if get_origin(candidate) is Literal:
            return [str(arg) for arg in get_args(candidate)]
    return []


def _is_secret(name: str, annotation: Any) -> bool:
    kinds = _alternatives(annotation)
    return SecretStr in kinds or (str in kinds and any(word in name.lower() for word in SECRET_WORDS))


def _default(info: FieldInfo) -> Any:
    if info.default_factory is not None:
        try:
            return info.default_factory()  # type: ignore[call-arg]
        except TypeError:  # a factory of the other fields' values: no default of its own
            return None
    return info.default


def _env_text(value: Any) -> str:
    """A value as an environment variable gives it."""
    if value is None or isinstance(value, SecretStr | BaseModel):
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, list | tuple):
        return ",".join(_env_text(item) for item in value)
    if isinstance(value, dict):
        return json.dumps(value) if value else ""
    return str(value)


def _quoted(text: str) -> str:
    """``text`` as a value in a ``.env`` file: quoted when it has spaces, quotes or ``#``."""
    return json.dumps(text) if re.search(r"[\s\"'#\\]", text) else text


def _one_line(doc: str) -> str:
    """A docstring as one line of plain text: Sphinx roles and double backquotes made plain."""
    text = " ".join(doc.split())
    text = re.sub(r" \(:\w+:`[^`]+`\)", "", text)  # a pointer for plugin authors
    text = re.sub(r":\w+:`~?([^`]+)`", lambda m: f"`{m.group(1)}`", text)
    return text.replace("``", "`")


def field_doc(model: type[BaseModel], name: str) -> str:
    """A field's description: ``Field(description=…)``, else the docstring below it in the
    nearest class of the model's hierarchy that has one."""
    info = model.model_fields[name]
    if info.description:
        return info.description
    for cls in model.__mro__:
        doc = _attribute_docstrings(cls).get(name)
        if doc is not None:
            return doc
    return ""


@functools.cache
def _attribute_docstrings(cls: type) -> dict[str, str]:
    """``{attribute: docstring}`` of a class body's ``name: type = value`` lines followed by a string."""
    if cls is object or cls.__module__ in ("pydantic.main", "pydantic_settings.main"):
        return {}
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError, SyntaxError):
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    found: dict[str, str] = {}
    for statement, following in itertools.pairwise(body):
        if (
            isinstance(statement, ast.AnnAssign)
            and isinstance(statement.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            found[statement.target.id] = inspect.cleandoc(following.value.value)
    return found
