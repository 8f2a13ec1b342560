"""analyzer: a plugin-based async image analysis daemon.

Public surface: the plugin contract (:mod:`analyzer.plugin`), settings, the engine and the
exceptions. Everything else is internal.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import AnalyzerError, ConfigError, ImageError, ImageTooLarge, PluginUnavailable
from .plugin import AnalyzerPlugin, Failure, ImageRef, Outcome, PluginOptions, Result, SharedWork
from .registry import register, unregister
from .scheduler import Engine
from .settings import Settings, load_settings

__all__ = [
    "AnalyzerError",
    "AnalyzerPlugin",
    "ConfigError",
    "Engine",
    "Failure",
    "ImageError",
    "ImageRef",
    "ImageTooLarge",
    "Outcome",
    "PluginOptions",
    "PluginUnavailable",
    "Result",
    "Settings",
    "SharedWork",
    "__version__",
    "load_settings",
    "register",
    "unregister",
]
