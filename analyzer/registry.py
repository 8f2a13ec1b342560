"""Finding plugins: the ``analyzer.plugins`` entry-point group, plus explicit registration.

Built-in plugins are found through the same entry-point group as third-party ones. Tests and
embedding applications may :func:`register` a class directly. ``ANALYZER_LOAD_PLUGINS``
(comma-separated names) restricts which entry points are loaded at all.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from pydantic import ValidationError

from .errors import ConfigError
from .plugin import AnalyzerPlugin, PluginOptions
from .settings import Settings

log = logging.getLogger(__name__)

GROUP = "analyzer.plugins"
_registered: dict[str, type[AnalyzerPlugin]] = {}


def register(plugin_cls: type[AnalyzerPlugin]) -> type[AnalyzerPlugin]:
    """Register a plugin class by its ``name`` (usable as a decorator)."""
    _registered[plugin_cls.name] = plugin_cls
    return plugin_cls


def unregister(name: str) -> None:
    _registered.pop(name, None)


def _entry_points() -> dict[str, Any]:
    allowed = os.environ.get("ANALYZER_LOAD_PLUGINS")
    names = {n.strip() for n in allowed.split(",")} if allowed else None
    return {ep.name: ep for ep in entry_points(group=GROUP) if names is None or ep.name in names}


def plugin_names() -> list[str]:
    """Names of every known plugin, without importing any of them."""
    return sorted(set(_entry_points()) | set(_registered))


@dataclass
class Unavailable:
    name: str
    reason: str
    explicit: bool
    """The user asked for this plugin by name (so its absence is an error, not a note)."""


def load_class(name: str) -> type[AnalyzerPlugin]:
    if name in _registered:
        return _registered[name]
    eps = _entry_points()
    if name not in eps:
        raise ConfigError(f"unknown plugin {name!r}; installed plugins: {', '.join(plugin_names()) or 'none'}")
    cls = eps[name].load()
    if not (isinstance(cls, type) and issubclass(cls, AnalyzerPlugin)):
        raise ConfigError(f"entry point {name!r} in {GROUP!r} is not an AnalyzerPlugin subclass")
    return cls


def missing_requirements(cls: type[AnalyzerPlugin]) -> list[str]:
    return [module for module in cls.requires if importlib.util.find_spec(module) is None]


def cannot_run(cls: type[AnalyzerPlugin]) -> str | None:
    """Why the plugin cannot run here and how to install what it needs, or None when it can."""
    missing = missing_requirements(cls)
    if not missing:
        return None
    hint = cls.install_hint or f"pip install {' '.join(missing)}"
    return f"needs {', '.join(missing)}: {hint}"


def check_sections(settings: Settings) -> list[str]:
    """The installed plugins' names; ConfigError for a settings section that names none of them."""
    known = plugin_names()
    for section in settings.plugin_options:
        if section not in known:
            raise ConfigError(
                f"unknown setting section {section!r}: not a core setting nor an installed plugin "
                f"({', '.join(known) or 'none installed'})"
            )
    return known


def validated_options(name: str, cls: type[AnalyzerPlugin], section: dict[str, Any]) -> PluginOptions:
    """Plugin ``name``'s options from its settings section, defaults filled in. Raises ConfigError."""
    try:
        return cls.Options.model_validate(section)
    except ValidationError as exc:
        problems = "; ".join(f"{name}.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors())
        raise ConfigError(f"invalid options for plugin {name!r}: {problems}") from exc


def select_plugins(
    settings: Settings, only: list[str] | None = None, *, check_requirements: bool = True
) -> tuple[list[AnalyzerPlugin], list[Unavailable]]:
    """Instantiate the plugins a command will use, with their validated options.

    ``only`` (``--plugins``) and ``settings.plugins`` name plugins explicitly; otherwise every
    installed plugin that is enabled and whose requirements are importable is used.
    Unknown plugin names, unknown plugin sections and invalid options raise ConfigError.
    """
    known = check_sections(settings)
    requested = only if only else settings.plugins
    explicit = requested is not None
    names = list(dict.fromkeys(requested)) if requested is not None else known
    for name in names:
        if name not in known:
            raise ConfigError(f"unknown plugin {name!r}; installed plugins: {', '.join(known) or 'none'}")

    plugins: list[AnalyzerPlugin] = []
    unavailable: list[Unavailable] = []
    for name in names:
        try:
            cls = load_class(name)
        except ImportError as exc:
            unavailable.append(Unavailable(name, f"cannot import it ({exc})", explicit))
            continue
        options = validated_options(name, cls, settings.plugin_options.get(name, {}))
        if not options.enabled and not (only and name in only):
            continue
        problem = cannot_run(cls) if check_requirements else None
        if problem is not None:
            unavailable.append(Unavailable(name, problem, explicit))
            continue
        plugin = cls(options)
        for mode in plugin.enabled_modes():
            if mode not in plugin.modes:
                raise ConfigError(f"plugin {name!r} has no mode {mode!r}; its modes: {', '.join(plugin.modes)}")
        plugins.append(plugin)
    return plugins, unavailable


def select_readers(settings: Settings, plugins: list[AnalyzerPlugin]) -> list[AnalyzerPlugin]:
    """The plugins whose results ``plugins`` read (:meth:`AnalyzerPlugin.reads`) but that are not among them.

    They are loaded (never set up nor run) so their sidecars can be indexed and read; one that
    cannot be loaded is reported, and what reads it stays blocked.
    """
    from .selector import Selector

    have = {p.name for p in plugins}
    wanted = [Selector.parse(text).plugin for p in plugins for mode in p.enabled_modes() for text in p.reads(mode)]
    readers: list[AnalyzerPlugin] = []
    for name in dict.fromkeys(n for n in wanted if n not in have):
        try:
            cls = load_class(name)
            readers.append(cls(cls.Options.model_validate(settings.plugin_options.get(name, {}))))
        except (ConfigError, ImportError, ValidationError) as exc:
            log.warning("results of plugin %s cannot be read (%s): what reads them stays blocked", name, exc)
    return readers
