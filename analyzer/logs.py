"""Logging: concise human lines on the console, optional JSON lines in a file."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

_installed: list[logging.Handler] = []


@lru_cache(maxsize=1)
def console() -> Console:
    from rich.console import Console  # imported only when a progress bar is shown

    return Console(stderr=True)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("image", "plugin", "mode", "error_type", "hash", "event"):
            if hasattr(record, key):
                data[key] = getattr(record, key)
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)


LIBRARIES = (
    "PIL",
    "anthropic",
    "asyncio",
    "filelock",
    "httpcore",
    "httpx",
    "huggingface_hub",
    "openai",
    "sd_parsers",
    "transformers",
    "urllib3",
    "watchdog",
)
"""Loggers of the libraries the analyzer uses: on the console only their warnings and errors
(their INFO lines, such as one ``HTTP Request: POST …`` per request, go to the log file only)."""


class ConsoleFilter(logging.Filter):
    """Keeps the console to the analyzer's own lines and other libraries' warnings and errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        return not any(record.name == lib or record.name.startswith(lib + ".") for lib in LIBRARIES)


def route_library_logs() -> None:
    """Libraries that print to stderr themselves (huggingface_hub, transformers) would print every
    line twice, once through their own handler and once through ours: drop their handlers and let
    their records reach the analyzer's. Called again after such a library is imported."""
    for name in ("huggingface_hub", "transformers"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:
                logger.removeHandler(handler)
        logger.propagate = True


def setup_logging(level: str = "INFO", log_file: Path | None = None, *, rich_console: bool = False) -> None:
    root = logging.getLogger()
    while _installed:  # only our own handlers: an embedding application keeps its own
        old = _installed.pop()
        root.removeHandler(old)
        old.close()
    handler: logging.Handler
    if rich_console:
        from rich.highlighter import NullHighlighter
        from rich.logging import RichHandler

        handler = RichHandler(
            console=console(),
            show_path=False,
            show_time=True,
            omit_repeated_times=False,
            log_time_format="%H:%M:%S",
            markup=False,
            highlighter=NullHighlighter(),  # colour the level only, never parts of numbers or paths
        )
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S"))
    handler.setLevel(level)
    if level != "DEBUG":  # asking for DEBUG is asking for everything
        handler.addFilter(ConsoleFilter())
    root.addHandler(handler)
    _installed.append(handler)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_file, encoding="utf-8", errors="backslashreplace")
        file_handler.setFormatter(JsonFormatter())
        file_handler.setLevel("DEBUG")
        root.addHandler(file_handler)
        _installed.append(file_handler)
    root.setLevel("DEBUG" if log_file is not None else level)
    for library in LIBRARIES:  # their DEBUG lines are a flood (PIL logs every PNG chunk)
        logging.getLogger(library).setLevel("DEBUG" if level == "DEBUG" else "INFO")
    route_library_logs()
