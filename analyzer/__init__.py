"""analyzer: a plugin-based async image analysis daemon.

Public surface: the plugin contract (:mod:`analyzer.plugin`), settings, the engine, the store
and the exceptions. Everything else is internal.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .engine import Engine
from .errors import AnalyzerError, ConfigError, ErrorType, ImageError, ImageTooLarge, PluginError, PluginUnavailable
from .planner import RunOptions
from .plugin import AnalyzerPlugin, Failure, ImageRef, Outcome, PluginOptions, Result, SharedWork
from .registry import register, unregister
from .settings import Settings, load_settings
from .store import Store

__all__ = [
    "AnalyzerError",
    "AnalyzerPlugin",
    "ConfigError",
    "Engine",
    "ErrorType",
    "Failure",
    "ImageError",
    "ImageRef",
    "ImageTooLarge",
    "Outcome",
    "PluginError",
    "PluginOptions",
    "PluginUnavailable",
    "Result",
    "RunOptions",
    "Settings",
    "SharedWork",
    "Store",
    "__version__",
    "load_settings",
    "register",
    "unregister",
]
