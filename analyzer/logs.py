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


def setup_logging(level: str = "INFO", log_file: Path | None = None, *, rich_console: bool = False) -> None:
    root = logging.getLogger()
    while _installed:  # only our own handlers: an embedding application keeps its own
        old = _installed.pop()
        root.removeHandler(old)
        old.close()
    handler: logging.Handler
    if rich_console:
        from rich.logging import RichHandler

        handler = RichHandler(console=console(), show_path=False, show_time=False, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S"))
    handler.setLevel(level)
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
    for noisy in ("PIL", "httpx", "httpcore", "watchdog", "sd_parsers", "asyncio"):
        logging.getLogger(noisy).setLevel("WARNING")
