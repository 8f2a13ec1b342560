"""The command line: parses arguments, loads settings, calls the engine. Nothing more.

Exit codes: 0 all succeeded, 1 some items failed (or a requested plugin could not run),
2 usage or configuration error, 130/143 stopped by SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .errors import AnalyzerError, ConfigError
from .images import set_max_pixels
from .logs import setup_logging
from .progress import summary_lines
from .registry import Unavailable, select_plugins
from .scheduler import Action, Engine, Follower
from .settings import Settings, load_settings

log = logging.getLogger("analyzer")


def _csv(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML settings file (default: ./analyzer.toml if present)")
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--log-file", type=Path, help="also write JSON log lines to this file")


def _scan_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="*", type=Path, metavar="PATH", help="folders to scan (default: roots setting)")
    parser.add_argument("--plugins", type=_csv, help="comma-separated plugins to use (default: all available)")
    parser.add_argument("--include", action="append", help="only images matching this glob (repeatable)")
    parser.add_argument("--exclude", action="append", help="skip images/folders matching this glob (repeatable)")
    parser.add_argument("--sidecar-dir", type=Path, help="write sidecars to this mirrored tree")
    parser.add_argument("--wildcards-dir", type=Path, help="folder for wildcard files")
    parser.add_argument("--state-dir", type=Path, help="folder for the index")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="analyzer", description="Analyse folders of images into JSON sidecars and wildcard files."
    )
    parser.add_argument("--version", action="version", version=f"analyzer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="analyse what is missing, write sidecars and wildcards")
    _scan_options(run)
    run.add_argument("--modes", type=_csv, help="comma-separated modes to run (default: each plugin's modes)")
    run.add_argument("--force", action="store_true", help="redo results that already exist")
    run.add_argument("--retry-failed", action="store_true", help="retry items that failed permanently before")
    run.add_argument("--dry-run", action="store_true", help="print the plan and its size; change nothing")
    run.add_argument("--hash-workers", type=int, help="parallel hashing/reading threads")
    run.add_argument("--progress", choices=["auto", "bar", "plain"])
    _common(run)

    watch = sub.add_parser(
        "watch", help="analyse what is missing, then every image that lands in the folders, until stopped"
    )
    _scan_options(watch)
    watch.add_argument("--modes", type=_csv, help="comma-separated modes to run (default: each plugin's modes)")
    watch.add_argument("--polling", action="store_true", default=None, help="poll instead of using file events")
    watch.add_argument("--poll-interval", type=float, metavar="SECONDS", help="seconds between polls (default 5)")
    watch.add_argument(
        "--quiet-period", type=float, metavar="SECONDS", help="seconds an image must stay unchanged (default 2)"
    )
    watch.add_argument("--on-delete", choices=["keep", "delete"], help="sidecars of deleted images (default keep)")
    watch.add_argument("--hash-workers", type=int, help="parallel hashing/reading threads")
    _common(watch)

    wild = sub.add_parser("wildcards", help="regenerate wildcard files from existing sidecars only")
    _scan_options(wild)
    _common(wild)

    status = sub.add_parser("status", help="count done, failed and missing results per plugin and mode")
    _scan_options(status)
    status.add_argument("--json", action="store_true", help="print the counts as JSON")
    _common(status)

    config = sub.add_parser("config", help="print the effective settings (secrets masked)")
    _common(config)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    for name in (
        "log_level",
        "log_file",
        "include",
        "exclude",
        "sidecar_dir",
        "wildcards_dir",
        "state_dir",
        "hash_workers",
        "progress",
    ):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    watch = {
        name: getattr(args, name)
        for name in ("polling", "poll_interval", "quiet_period", "on_delete")
        if getattr(args, name, None) is not None
    }
    if watch:
        overrides["watch"] = watch
    return load_settings(args.config, **overrides)


def _report_unavailable(items: list[Unavailable]) -> bool:
    """Log unavailable plugins; True if one the user asked for by name is among them."""
    fatal = False
    for item in items:
        if item.explicit:
            log.error("plugin %s cannot run: %s", item.name, item.reason)
            fatal = True
        else:
            log.info("plugin %s not used: %s", item.name, item.reason)
    return fatal


def _engine(
    settings: Settings, args: argparse.Namespace, action: Action, follower: Follower | None = None
) -> tuple[Engine, bool]:
    plugins, unavailable = select_plugins(settings, getattr(args, "plugins", None), check_requirements=action == "run")
    fatal = _report_unavailable(unavailable)
    if not plugins:
        raise ConfigError(
            "no plugin to run: "
            + ("; ".join(f"{u.name}: {u.reason}" for u in unavailable) or "none is installed or enabled")
        )
    engine = Engine(
        settings,
        plugins,
        action=action,
        modes=getattr(args, "modes", None),
        force=getattr(args, "force", False),
        retry_failed=getattr(args, "retry_failed", False),
        dry_run=getattr(args, "dry_run", False),
        follower=follower,
    )
    engine.stats.unavailable_plugins.extend(f"{u.name}: {u.reason}" for u in unavailable if u.explicit)
    return engine, fatal


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    engine, fatal = _engine(settings, args, "run")
    stats = asyncio.run(engine.run(args.paths))
    if args.dry_run:
        planned = {name: p.planned for name, p in stats.plugins.items()}
        print(
            f"plan: {sum(planned.values())} items for {stats.images - stats.up_to_date} of {stats.images} images"
            + "".join(f"; {k}: {v}" for k, v in sorted(planned.items()))
        )
        return 0
    for line in [*summary_lines(stats), *engine.summaries]:
        log.info(line)
    if stats.interrupted:
        return 128 + (engine.stop_signal or signal.SIGINT.value)
    return 1 if fatal or stats.failed or engine.stats.unavailable_plugins else 0


def cmd_watch(settings: Settings, args: argparse.Namespace) -> int:
    """Runs until SIGINT/SIGTERM; a stop that finishes cleanly is a success (exit 0)."""
    from .watch import Watcher

    engine, _ = _engine(settings, args, "run", Watcher(settings.watch))
    stats = asyncio.run(engine.run(args.paths))
    if stats.interrupted:
        log.info("stopped by %s", signal.Signals(engine.stop_signal).name if engine.stop_signal else "request")
        stats.interrupted = False  # the normal end of a watch
    for line in [*summary_lines(stats), *engine.summaries]:
        log.info(line)
    return 0


def cmd_wildcards(settings: Settings, args: argparse.Namespace) -> int:
    engine, _ = _engine(settings, args, "refresh")
    asyncio.run(engine.run(args.paths))
    if not engine.wildcard_files:
        log.info("no wildcard entries found")
    for name, count in engine.wildcard_files.items():
        print(f"{name}\t{count}")
    return 0


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    engine, _ = _engine(settings, args, "status")
    stats = asyncio.run(engine.run(args.paths))
    table: dict[tuple[str, str, str], dict[str, int]] = {}
    for plan in engine.plans.values():
        for mode, model in plan.items:
            table[(plan.name, mode, model)] = {"done": 0, "failed": 0, "missing": 0}
    for (plugin, mode, model, state), n in engine.counts.items():
        table.setdefault((plugin, mode, model), {"done": 0, "failed": 0, "missing": 0})[state] += n
    if args.json:
        print(
            json.dumps(
                {
                    "images": stats.images,
                    "changed_since_analysed": stats.changed,
                    "results": [{"plugin": p, "mode": m, "model": mo, **c} for (p, m, mo), c in sorted(table.items())],
                },
                indent=2,
            )
        )
        return 0
    print(f"{stats.images} images ({stats.changed} changed since last analysed)")
    wide = [max([len(h), *(len(key[i]) for key in table)]) for i, h in enumerate(("plugin", "mode", "model"))]
    rows = [(("plugin", "mode", "model"), ("done", "failed", "missing"))]
    rows += [(key, (str(c["done"]), str(c["failed"]), str(c["missing"]))) for key, c in sorted(table.items())]
    for names, counts in rows:
        print(" ".join(n.ljust(w) for n, w in zip(names, wide, strict=True)), *(n.rjust(8) for n in counts))
    return 0


def cmd_config(settings: Settings, args: argparse.Namespace) -> int:
    plugins, _unavailable = select_plugins(settings, check_requirements=False)
    data = settings.secrets_masked()
    data["plugin_options"] = {p.name: p.options.model_dump(mode="json") for p in plugins} | {
        name: opts for name, opts in data["plugin_options"].items() if name not in {p.name for p in plugins}
    }
    from .settings import _mask

    print(json.dumps(_mask(data), indent=2, default=str))
    return 0


COMMANDS = {"run": cmd_run, "watch": cmd_watch, "wildcards": cmd_wildcards, "status": cmd_status, "config": cmd_config}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = _settings(args)
        setup_logging(
            settings.log_level,
            settings.log_file,
            rich_console=(args.command == "run" and settings.progress == "bar")
            or (args.command == "run" and settings.progress == "auto" and sys.stderr.isatty()),
        )
        set_max_pixels(settings.max_image_pixels)
        return COMMANDS[args.command](settings, args)
    except ConfigError as exc:
        print(f"analyzer: error: {exc}", file=sys.stderr)
        return 2
    except AnalyzerError as exc:
        print(f"analyzer: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
