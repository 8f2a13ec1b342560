"""Analyzer's own exceptions, each with a message that says what to do next.

AnalyzerError                 base; ``exit_code`` is what the CLI exits with
 ├── ConfigError              bad settings, unknown plugin or mode (exit 2)
 ├── PluginUnavailable        a plugin's extra is not installed, or its setup failed
 └── ImageError               an image cannot be read or decoded (recorded per image)
      └── ImageTooLarge       more pixels than ``max_image_pixels`` (decompression bomb)
"""

from __future__ import annotations


class AnalyzerError(Exception):
    exit_code = 1


class ConfigError(AnalyzerError):
    exit_code = 2


class PluginUnavailable(AnalyzerError):
    def __init__(self, plugin: str, message: str) -> None:
        super().__init__(f"plugin {plugin!r} is unavailable: {message}")
        self.plugin = plugin


class ImageError(AnalyzerError):
    """The file cannot be used as an image; retrying will not help until it changes."""


class ImageTooLarge(ImageError):
    pass
