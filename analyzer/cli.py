"""The command line: parses arguments, loads settings, calls the engine. Nothing more.

Exit codes: 0 all succeeded, 1 some items failed (or a requested plugin could not run),
2 usage or configuration error, 130/143 stopped by SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__, configview, corrections
from .engine import Engine, stop_on_signals
from .errors import (
    EXIT_FAILURES,
    EXIT_OK,
    EXIT_PIPE,
    AnalyzerError,
    ConfigError,
    ImageError,
    OutputClosed,
    exit_code,
    exit_for_signal,
)
from .logs import setup_logging
from .planner import STATES, RunOptions
from .plugin import AnalyzerPlugin
from .progress import RunStats, summary_lines
from .registry import Unavailable, cannot_run, select_plugins, select_readers
from .selector import Selector
from .settings import Settings, load_settings
from .store import Store, root_of_file
from .survey import Seen, collect_status, rebuild_wildcards, show_values, surveyed

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
    run.add_argument(
        "--refresh-stale",
        action="store_true",
        help="redo stale results of costly plugins (llm): results whose inputs from other results changed",
    )
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

    show = sub.add_parser("show", help="print an image's results, by selector (plugin.mode[@model][.field])")
    show.add_argument("image", type=Path, metavar="IMAGE")
    show.add_argument("selectors", nargs="*", metavar="SELECTOR", help="e.g. metadata.prompt (default: every result)")
    show.add_argument("--plugins", type=_csv, help="comma-separated plugins to look at (default: all available)")
    show.add_argument("--sidecar-dir", type=Path, help="sidecars are in this mirrored tree")
    _common(show)

    status = sub.add_parser("status", help="count done, stale, failed, blocked and missing results per plugin and mode")
    _scan_options(status)
    status.add_argument("--json", action="store_true", help="print the counts as JSON")
    status.add_argument(
        "--failed", action="store_true", help="list the failed items instead: image, plugin, mode and error"
    )
    _common(status)

    classify = sub.add_parser(
        "classify", help="zero-shot classify images into labels (given here, configured, or the concept bank)"
    )
    _scan_options(classify)
    labels = classify.add_mutually_exclusive_group()
    labels.add_argument("--labels", type=_csv, help="comma-separated labels (an ad hoc label set)")
    labels.add_argument("--labels-file", type=Path, help="labels, one a line: `label` or `label: prompt | prompt`")
    labels.add_argument("--set", dest="label_set", metavar="NAME", help="a label set from the settings")
    labels.add_argument("--bank", action="store_true", help="the bundled concept bank")
    classify.add_argument("--name", help="store an ad hoc set under this name (default: labels-<hash8>)")
    classify.add_argument("--multi-label", action="store_true", default=None, help="read as tags, not one label")
    classify.add_argument("--threshold", type=float, help="multi-label: the similarity a label needs")
    classify.add_argument("--top-k", type=int, help="labels per image when read (wildcards, summary)")
    classify.add_argument("--min-confidence", type=float, help="labels below this confidence are left out when read")
    classify.add_argument("--force", action="store_true", help="classify again what is classified already")
    classify.add_argument(
        "--clean", action="store_true", help="remove the results of label lists no longer configured; classify nothing"
    )
    classify.add_argument(
        "--no-store", action="store_true", help="classify the image files given, print JSON, write nothing"
    )
    classify.add_argument("--progress", choices=["auto", "bar", "plain"])
    whole = classify.add_argument_group("the whole collection (after classifying; see the README)")
    whole.add_argument("--refine", action="store_true", help="refine: class prototypes learn from the images")
    whole.add_argument("--iterations", type=int, help="refinement iterations (default 10)")
    whole.add_argument(
        "--guard",
        choices=["balance", "none"],
        help="against one class taking all (default balance; none: seed 002)",
    )
    whole.add_argument("--min-images", type=int, help="no refinement below this many images (default 100)")
    whole.add_argument("--truth", metavar="folders|FILE", help="ground truth: parent folder names, or a CSV/JSONL")
    whole.add_argument(
        "--clusters", type=int, metavar="K", help="cluster the uncertain images into K groups (0: chosen by score)"
    )
    whole.add_argument("--uncertain", type=float, help="top-1 confidence below which an image is uncertain (0.5)")
    whole.add_argument("--report", type=Path, metavar="DIR", help="write report.txt/.json here")
    _common(classify)

    export = sub.add_parser("export", help="make a training dataset from the stored results (no model runs)")
    export.add_argument("paths", nargs="*", type=Path, metavar="PATH", help="folders to export (default: roots)")
    export.add_argument("--to", type=Path, required=True, metavar="OUT", help="the dataset folder (made or updated)")
    export.add_argument("--layout", default="splits", choices=["classes", "splits", "imagefolder", "kohya"])
    export.add_argument("--class", dest="label", metavar="SELECTOR", help="each image's class, e.g. classify.animals")
    export.add_argument("--caption", metavar="SELECTOR|TEMPLATE", help="caption files: llm.describe, or '{a.b}, {c.d}'")
    export.add_argument("--caption-ext", default=".txt", help="caption file extension (default .txt)")
    export.add_argument("--min-confidence", type=float, help="images whose class is less confident than this...")
    export.add_argument(
        "--below", choices=["skip", "folder"], default="skip", help="...are left out, or go to _unsure/"
    )
    export.add_argument("--where", action="append", default=[], metavar="COND", help="only images where COND holds")
    export.add_argument("--max-per-class", type=int, help="at most this many images per class (the most confident)")
    export.add_argument("--repeats", type=int, default=1, help="kohya: the repeats in <repeats>_<class> (default 1)")
    export.add_argument("--concept", default="images", help="kohya: the folder name without --class")
    export.add_argument("--split", dest="ratios", default="70/15/15", help="train/val/test shares (default 70/15/15)")
    export.add_argument("--seed", type=int, default=0, help="the seed of the split assignment (default 0)")
    export.add_argument(
        "--near-duplicates", type=float, default=0.95, help="cosine from which images are one group (0: exact only)"
    )
    export.add_argument("--embeddings", metavar="MODEL", help="the stored embeddings that find near-duplicates")
    export.add_argument("--link", default="auto", choices=["auto", "reflink", "hard", "sym", "copy"])
    export.add_argument("--resize", type=int, metavar="MAX", help="longest side at most MAX pixels (new files)")
    export.add_argument("--strip-metadata", action="store_true", help="drop EXIF, GPS and generation parameters")
    export.add_argument("--zip", type=Path, metavar="FILE", help="also stream the dataset into this ZIP file")
    export.add_argument("--csv-only", action="store_true", help="--to is a CSV file: path,top1,confidence, no dataset")
    export.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    export.add_argument("--analyse", action="store_true", help="first compute the results the export reads")
    export.add_argument("--include", action="append", help="only images matching this glob (repeatable)")
    export.add_argument("--exclude", action="append", help="skip images/folders matching this glob (repeatable)")
    _common(export)

    grid = sub.add_parser("grid", help="a labeled contact sheet of the images (no model runs)")
    grid.add_argument("paths", nargs="*", type=Path, metavar="PATH", help="folders or images (default: roots)")
    grid.add_argument(
        "-o",
        "--out",
        type=Path,
        required=True,
        metavar="OUT",
        help="the sheet (.png, .jpg, .webp); --batch: a folder",
    )
    grid.add_argument("--batch", action="store_true", help="a sheet per PATH into the folder OUT, redrawn when changed")
    grid.add_argument("--format", default="png", choices=["png", "jpg", "webp"], help="--batch: the sheets' format")
    grid.add_argument("--cols", type=int, help="columns (default: as square as the cells allow)")
    grid.add_argument("--rows", type=int, help="rows (per page, with --cols)")
    grid.add_argument("--aspect", type=float, default=1.0, help="the sheet's width/height without --cols (1)")
    grid.add_argument("--cell", default="128", metavar="W[xH]", help="the image box of a cell, pixels (128)")
    grid.add_argument("--fit", choices=["fit", "fill"], default="fit", help="whole image, or the cell filled (fit)")
    grid.add_argument("--margin", type=int, default=8, help="around the sheet, pixels (8)")
    grid.add_argument("--gap", type=int, default=4, help="between cells, pixels (4)")
    grid.add_argument(
        "--label", metavar="TEMPLATE", help="each label from results: '{metadata.parameters.seed}'; none: no labels"
    )
    grid.add_argument("--csv", type=Path, metavar="FILE", help="labels from a CSV: first column path or file name")
    grid.add_argument("--label-columns", nargs="+", default=[], metavar="COLUMN", help="the CSV's columns to show")
    grid.add_argument("--label-lines", type=int, default=2, help="lines of label under each cell; then … (2)")
    grid.add_argument("--font-size", type=int, default=11, help="label text size, pixels (11)")
    grid.add_argument("--title", help="a line of text over the sheet")
    grid.add_argument("--legend", action="store_true", help="a line under the title: what the labels or axes show")
    grid.add_argument("--background", default="white", help="the sheet's colour: a name or #rrggbb (white)")
    grid.add_argument("--x", metavar="PARAM", help="a comparison grid: columns by this (steps, or any selector)")
    grid.add_argument("--y", metavar="PARAM", help="...rows by this (sampler, cfg_scale, prompt, ...)")
    grid.add_argument("--z", metavar="PARAM", help="...and a sheet for each value of this")
    grid.add_argument("--auto-axes", action="store_true", help="a comparison grid of the parameters that vary")
    grid.add_argument(
        "--use-clip", action="store_true", help="label by CLIP: the concept bank's best match, computed if missing"
    )
    grid.add_argument("--clip-model", metavar="MODEL", help="with --use-clip: the open_clip model (ViT-B-32/openai)")
    grid.add_argument("--quality", type=int, default=90, help="JPEG/WebP quality (90)")
    grid.add_argument(
        "--page-pixels", type=int, default=400_000_000, help="at most this many pixels a page, else more pages"
    )
    grid.add_argument("--include", action="append", help="only images matching this glob (repeatable)")
    grid.add_argument("--exclude", action="append", help="skip images/folders matching this glob (repeatable)")
    _common(grid)

    prune = sub.add_parser("prune", help="list images whose class is not confident; --yes moves them to the trash")
    prune.add_argument("paths", nargs="*", type=Path, metavar="PATH", help="folders (default: roots)")
    prune.add_argument("--class", dest="label", metavar="SELECTOR", help="the classification, e.g. classify.animals")
    prune.add_argument("--min-confidence", type=float, help="images below this confidence are listed")
    prune.add_argument("--where", action="append", default=[], metavar="COND", help="only images where COND holds")
    prune.add_argument("--yes", action="store_true", help="move them (and their sidecars) into the trash")
    prune.add_argument("--restore", metavar="TIME", help="put back what the prune at TIME moved")
    _common(prune)

    label = sub.add_parser("label", help="correct a classification by hand: it wins over the model's")
    actions = label.add_subparsers(dest="action", required=True)
    put = actions.add_parser("set", help="give IMAGE the label LABEL in a label set")
    put.add_argument("image", type=Path, metavar="IMAGE")
    put.add_argument("label", metavar="LABEL")
    clear = actions.add_parser("clear", help="remove IMAGE's hand-given label (the model's counts again)")
    clear.add_argument("image", type=Path, metavar="IMAGE")
    imported = actions.add_parser("import", help="labels from a CSV file with a header: path,label[,set]")
    imported.add_argument("csv", type=Path, metavar="CSV")
    for action in (put, clear, imported):
        action.add_argument("--set", dest="label_set", metavar="NAME", help="the label set (default: the only one)")
        action.add_argument("--sidecar-dir", type=Path, help="sidecars are in this mirrored tree")
        _common(action)

    config = sub.add_parser("config", help="print the effective settings of the core and every plugin (secrets masked)")
    shown = config.add_mutually_exclusive_group()
    shown.add_argument("--sources", action="store_true", help="every value and where it came from, one a line")
    shown.add_argument("--env-example", action="store_true", help="print .env.example: every variable, its default")
    config.add_argument("--json", action="store_true", help="with --sources: the lines as a JSON list")
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


def _plugins(
    settings: Settings, args: argparse.Namespace, *, check_requirements: bool
) -> tuple[list[AnalyzerPlugin], list[AnalyzerPlugin], list[Unavailable], bool]:
    """The plugins a command uses, the ones whose results they read, the unavailable ones, and
    whether a plugin asked for by name is among those."""
    plugins, unavailable = select_plugins(
        settings, getattr(args, "plugins", None), check_requirements=check_requirements
    )
    fatal = _report_unavailable(unavailable)
    if not plugins:
        raise ConfigError(
            "no plugin to run: "
            + ("; ".join(f"{u.name}: {u.reason}" for u in unavailable) or "none is installed or enabled")
        )
    return plugins, select_readers(settings, plugins), unavailable, fatal


def _engine(settings: Settings, args: argparse.Namespace) -> tuple[Engine, bool]:
    plugins, readers, unavailable, fatal = _plugins(settings, args, check_requirements=True)
    options = RunOptions(
        modes=getattr(args, "modes", None),
        force=getattr(args, "force", False),
        retry_failed=getattr(args, "retry_failed", False),
        refresh_stale=getattr(args, "refresh_stale", False),
    )
    engine = Engine(settings, plugins, options=options, readers=readers, dry_run=getattr(args, "dry_run", False))
    engine.stats.unavailable_plugins.extend(f"{u.name}: {u.reason}" for u in unavailable if u.explicit)
    return engine, fatal


async def _run(engine: Engine, paths: list[Path]) -> RunStats:
    unavailable = list(engine.stats.unavailable_plugins)
    await engine.open(paths)
    engine.stats.unavailable_plugins.extend(unavailable)
    with stop_on_signals(engine):
        try:
            await engine.scan()
            await engine.drain()  # after a stop during the walk too: in-flight work gets its grace period
        finally:
            stats = await engine.close()
    return stats


class PlanPrinter:
    """Prints dry-run lines; once the reader is gone, stops the run quietly instead."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.gone = False

    def __call__(self, line: str) -> None:
        if self.gone:
            return
        try:
            print(line)
        except BrokenPipeError:
            self.gone = True
            self.engine.request_stop("output closed", quiet=True)


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    return run_engine(settings, args)[0]


def run_engine(settings: Settings, args: argparse.Namespace) -> tuple[int, Engine]:
    """``run``: the exit status, and the engine (its stats) for commands built on it."""
    engine, fatal = _engine(settings, args)
    printer = engine.plan_printer = PlanPrinter(engine)
    if settings.progress == "auto" and not sys.stderr.isatty():
        engine.progress = "plain"
    stats = asyncio.run(_run(engine, args.paths))
    if printer.gone:
        raise OutputClosed
    if args.dry_run:
        planned = {name: p.planned for name, p in stats.plugins.items()}
        print(
            f"plan: {sum(planned.values())} items for {stats.images - stats.up_to_date} of {stats.images} images"
            + "".join(f"; {k}: {v}" for k, v in sorted(planned.items()))
        )
        return EXIT_OK, engine
    for line in [*summary_lines(stats), *engine.summaries]:
        log.info(line)
    if stats.interrupted:
        return exit_for_signal(engine.stop_signal or signal.SIGINT.value), engine
    return (EXIT_FAILURES if fatal or stats.failed or engine.stats.unavailable_plugins else EXIT_OK), engine


def cmd_watch(settings: Settings, args: argparse.Namespace) -> int:
    """Runs until SIGINT/SIGTERM; a stop that finishes cleanly is a success (exit 0)."""
    from .watch import watch

    engine, _ = _engine(settings, args)
    stats = asyncio.run(watch(engine, args.paths))
    if stats.interrupted:
        log.info("stopped by %s", signal.Signals(engine.stop_signal).name if engine.stop_signal else "request")
        stats.interrupted = False  # the normal end of a watch
    for line in [*summary_lines(stats), *engine.summaries]:
        log.info(line)
    return EXIT_OK


def cmd_wildcards(settings: Settings, args: argparse.Namespace) -> int:
    plugins, _, _, _ = _plugins(settings, args, check_requirements=False)
    written = rebuild_wildcards(settings, plugins, args.paths)
    if not written:
        log.info("no wildcard entries found")
    for name, count in written.items():
        print(f"{name}\t{count}")
    return EXIT_OK


def _selector_text(plugin: str, mode: str, model: str, models: int) -> str:
    return f"{plugin}.{mode}" + (f"@{model}" if models > 1 else "")


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    plugins, readers, _, _ = _plugins(settings, args, check_requirements=False)
    status = collect_status(settings, plugins, args.paths, readers, failed=args.failed)
    if args.failed:
        if args.json:
            print(json.dumps([dataclasses.asdict(f) for f in status.failures], indent=2, ensure_ascii=False))
        for f in [] if args.json else status.failures:
            again = "retried on the next run" if f.retryable else "retried with --retry-failed"
            print(f"{f.path}\t{f.plugin}\t{f.mode}\t{f.type}: {f.message} ({again})")
        return EXIT_OK
    models = {(p, m): sum(1 for (p2, m2, _) in status.counts if (p2, m2) == (p, m)) for (p, m, _) in status.counts}
    rows = sorted(status.counts.items())
    blocked_here = {p.name: why for p in plugins if (why := cannot_run(type(p))) is not None}
    if args.json:
        results = [
            {"plugin": p, "mode": m, "model": mo, "selector": _selector_text(p, m, mo, models[(p, m)]), **c}
            for (p, m, mo), c in rows
        ]
        print(
            json.dumps(
                {
                    "images": status.images,
                    "changed_since_analysed": status.changed,
                    "results": results,
                    "cannot_run": blocked_here,
                },
                indent=2,
            )
        )
        return EXIT_OK
    print(f"{status.images} images ({status.changed} changed since last analysed)")
    heads = ("plugin", "mode", "model")
    wide = [max([len(h), *(len(key[i]) for key, _ in rows)]) for i, h in enumerate(heads)]
    table = [(heads, STATES)] + [(key, tuple(str(c[s]) for s in STATES)) for key, c in rows]
    for names, counts in table:
        print(" ".join(n.ljust(w) for n, w in zip(names, wide, strict=True)), *(n.rjust(8) for n in counts))
    held = {s: sum(c[s] for _, c in rows) for s in ("stale", "blocked")}
    if held["stale"]:
        print(
            f"{held['stale']} stale: results made from other results that have changed since "
            "(a cheap plugin redoes them on the next run; a costly one with --refresh-stale)"
        )
    if held["blocked"]:
        print(f"{held['blocked']} blocked: they read a result that failed for the image (retried when it exists)")
    for name, why in blocked_here.items():
        missing = sum(c["missing"] for (p, _, _), c in rows if p == name)
        print(f"{name} cannot run on this machine ({why}): its {missing} missing items stay missing until then")
    return EXIT_OK


def cmd_show(settings: Settings, args: argparse.Namespace) -> int:
    """Print what selectors name for one image (every result, when none is given)."""
    plugins, readers, _, _ = _plugins(settings, args, check_requirements=False)
    image = args.image.resolve()
    if not image.is_file():
        raise ConfigError(f"{args.image} is not a file")
    store = Store.open(root_of_file(image, settings), settings, read_only=True)
    try:
        rel = image.relative_to(store.root).as_posix()
        print(f"id\t{store.image_id(rel)}")
        found = show_values(store, rel, [*plugins, *readers], args.selectors)
    finally:
        store.close()
    for text, value in found:
        print(f"{text}\t{value}")
    return EXIT_OK


def cmd_classify(settings: Settings, args: argparse.Namespace) -> int:
    """``run`` with the classify plugin alone, into the label set the flags name."""
    if args.clean:  # a set named on the command line counts as configured
        args.plugins = ["classify"]
        if args.labels is not None or args.labels_file is not None:
            settings, _ = classify_settings(settings, args)
        plugins, _, _, _ = _plugins(settings, args, check_requirements=False)
        removed = corrections.clean(settings, plugins[0], args.paths)
        log.info("removed %d results of label lists no longer configured", removed)
        return EXIT_OK
    settings, mode = classify_settings(settings, args)
    args.plugins, args.modes = ["classify"], [mode] if mode else None
    if args.no_store:
        return _classify_in_memory(settings, args, mode)
    args.dry_run = args.retry_failed = args.refresh_stale = False
    code, engine = run_engine(settings, args)
    wanted = {"truth": args.truth, "clusters": args.clusters, "report_dir": args.report}
    if not args.refine and all(v is None for v in wanted.values()):
        return code
    if engine.stats.unavailable_plugins or engine.stats.interrupted:  # said already; nothing to take
        return code
    plugins, _, _, _ = _plugins(settings, args, check_requirements=True)
    (plugin,) = plugins
    collection = getattr(plugin, "collection")  # noqa: B009 - the classify plugin's own entry point
    params = {"iterations": args.iterations, "guard": args.guard, "min_images": args.min_images}
    options = {k: v for k, v in wanted.items() if v is not None} | {"refine": args.refine, "refine_params": params}
    if args.uncertain is not None:
        options["uncertain"] = args.uncertain
    modes = [mode] if mode else list(plugin.enabled_modes())
    return max(code, int(collection(settings, modes, args.paths, options)))


def classify_settings(settings: Settings, args: argparse.Namespace) -> tuple[Settings, str | None]:
    """The settings with the label set the flags give, and its mode (None: every configured set)."""
    options: dict[str, Any] = dict(settings.plugin_options.get("classify", {}))
    sets: dict[str, Any] = dict(options.get("labels") or {})
    spec: dict[str, Any] | None = None
    mode: str | None = None
    if args.labels is not None:
        spec = {"labels": args.labels}
    elif args.labels_file is not None:
        spec = {"file": str(args.labels_file)}
    elif args.bank or (args.label_set is None and not sets):
        spec, mode = {"bank": True}, args.name or "concepts"
    elif args.label_set is not None:
        if args.label_set not in sets:
            raise ConfigError(f"no label set {args.label_set!r} in the settings; sets: {', '.join(sets) or 'none'}")
        mode = args.label_set
        spec = sets[mode] if isinstance(sets[mode], dict) else {"labels": sets[mode]}
    if spec is not None:
        spec = dict(spec)
        if args.multi_label is not None:
            spec["multi_label"] = args.multi_label
        if args.threshold is not None:
            spec["threshold"] = args.threshold
        if mode is None:
            text = json.dumps(spec, sort_keys=True)
            mode = args.name or f"labels-{hashlib.sha256(text.encode()).hexdigest()[:8]}"
        sets[mode] = spec
    options["labels"] = sets
    for name in ("top_k", "min_confidence"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    plugin_options = dict(settings.plugin_options) | {"classify": options}
    return settings.model_copy(update={"plugin_options": plugin_options}), mode


def _classify_in_memory(settings: Settings, args: argparse.Namespace, mode: str | None) -> int:
    plugins, _, _, _ = _plugins(settings, args, check_requirements=True)
    (plugin,) = plugins
    modes = [mode] if mode else list(plugin.enabled_modes())
    classify_bytes = getattr(plugin, "classify_bytes")  # noqa: B009 - the classify plugin's own entry point

    async def go() -> dict[str, Any]:
        await plugin.setup()
        try:
            found: dict[str, Any] = {}
            for path in args.paths:
                data = path.read_bytes()
                found[str(path)] = {m: classify_bytes(data, m, settings.max_image_pixels) for m in modes}
            return found
        finally:
            await plugin.close()

    if not args.paths or not all(p.is_file() for p in args.paths):
        raise ConfigError("--no-store classifies image files: name one or more")
    try:
        print(json.dumps(asyncio.run(go()), indent=2, ensure_ascii=False))
    except (ImageError, OSError) as exc:
        raise ConfigError(f"cannot classify: {exc}") from exc
    return EXIT_OK


def cmd_label(settings: Settings, args: argparse.Namespace) -> int:
    """Record, remove or import hand-given labels of the classify plugin."""
    args.plugins = ["classify"]
    plugins, _, _, _ = _plugins(settings, args, check_requirements=False)
    (plugin,) = plugins
    mode: str | None = args.label_set or (plugin.modes[0] if len(plugin.modes) == 1 else None)
    if args.action == "import":  # a CSV may name the set per row
        found = corrections.read_csv(args.csv, mode)
    elif mode is None:
        raise ConfigError(f"name the label set with --set ({', '.join(plugin.modes) or 'none is configured'})")
    else:
        found = [corrections.Correction(args.image, mode, args.label if args.action == "set" else None)]
    done = corrections.apply(settings, plugin, found)
    log.info("%d hand-given labels recorded", done)
    return EXIT_OK


def cmd_export(settings: Settings, args: argparse.Namespace) -> int:
    """A dataset from what the sidecars say: plan, apply, tables (see :mod:`analyzer.export`)."""
    from .export.dataset import run_export
    from .export.items import Condition
    from .export.plan import ExportOptions
    from .selector import template_selectors

    texts = [args.label] if args.label else []
    caption = args.caption
    if caption:
        texts += [s.text for s in template_selectors(caption)] if "{" in caption else [caption]
    selectors = [Selector.parse(t) for t in texts] + [Condition.parse(w).selector for w in args.where]
    args.plugins = sorted({s.plugin for s in selectors}) or None
    if args.analyse and selectors:
        args.modes = sorted({s.mode for s in selectors})
        args.force = args.dry_run = args.retry_failed = args.refresh_stale = False
        code, _ = run_engine(settings, args)
        if code not in (EXIT_OK, EXIT_FAILURES):
            return code
    plugins, readers, _, _ = _plugins(settings, args, check_requirements=False)
    fields = {k: getattr(args, k) for k in ("layout", "label", "caption", "caption_ext", "min_confidence", "below")}
    fields |= {k: getattr(args, k) for k in ("max_per_class", "repeats", "concept", "ratios", "seed", "embeddings")}
    fields |= {k: getattr(args, k) for k in ("link", "resize", "strip_metadata", "zip", "dry_run", "csv_only")}
    options = ExportOptions(to=args.to, where=tuple(args.where), near_duplicates=args.near_duplicates, **fields)
    try:
        result = run_export(settings, [*plugins, *readers], args.paths, options)
    except OSError as exc:  # a full disk, say: what is done is journaled, and the next export resumes
        raise AnalyzerError(f"export to {args.to} stopped: {exc}; run it again to resume") from exc
    for line in result.plan.lines() if args.dry_run else result.plan.lines()[:1]:
        print(line)
    if not args.dry_run:
        done = ", ".join(f"{n:,} {method}" for method, n in sorted(result.methods.items())) or "nothing to change"
        log.info("exported %d images to %s (%s)", len(result.plan.wishes), result.out, done)
        if result.zip_path is not None:
            log.info("zip written: %s", result.zip_path)
    return EXIT_OK


def cmd_grid(settings: Settings, args: argparse.Namespace) -> int:
    """A labeled contact sheet (see :mod:`analyzer.grid`)."""
    from .grid.layout import Spec
    from .grid.sheet import GridOptions, make_grid
    from .selector import template_selectors

    width, _, height = args.cell.lower().partition("x")
    try:
        cell_w, cell_h = int(width), int(height or width)
    except ValueError as exc:
        raise ConfigError(f"--cell {args.cell!r}: pixels, as 128 or 160x120") from exc
    if min(cell_w, cell_h, args.font_size, args.label_lines + 1) < 1 or min(args.margin, args.gap) < 0:
        raise ConfigError("--cell, --font-size are at least 1; --label-lines, --margin, --gap at least 0")
    from .grid.axes import PARAMETERS, selector_of

    if args.use_clip and args.label is None:
        args.label = _clip_labels(settings, args)
    label = args.label
    if (args.y or args.z) and not args.x:
        raise ConfigError("--y and --z go with --x (or use --auto-axes)")
    selectors = template_selectors(label) if label and label != "none" else []
    selectors += [selector_of(name) for name in (args.x, args.y, args.z) if name]
    selectors += [Selector.parse(PARAMETERS)] if args.auto_axes else []
    args.plugins = sorted({s.plugin for s in selectors}) or None
    plugins, readers, _, _ = _plugins(settings, args, check_requirements=False)
    line = round(args.font_size * 1.3)
    spec = Spec(cell_w, cell_h, args.fit, args.margin, args.gap, args.label_lines, line)
    options = GridOptions(
        out=args.out,
        spec=spec,
        cols=args.cols,
        rows=args.rows,
        aspect=args.aspect,
        label=label,
        csv=args.csv,
        label_columns=tuple(args.label_columns),
        title=args.title,
        quality=args.quality,
        max_pixels=args.page_pixels,
        x=args.x,
        y=args.y,
        z=args.z,
        auto_axes=args.auto_axes,
        batch_format=args.format,
        background=_colour(args.background),
        legend=args.legend,
    )
    if args.batch:
        return _grid_batch(settings, [*plugins, *readers], args, options)
    result = make_grid(settings, [*plugins, *readers], args.paths, options)
    for name, values in result.axes:
        log.info("axis %s: %s", name, ", ".join(values))
    for page in result.pages:
        print(page)
    log.info(
        "%d images on %d page(s); %d thumbnails made, the rest from the cache",
        len(result.cells),
        len(result.pages),
        result.thumbnails_made,
    )
    if result.unreadable:
        log.warning(
            "%d images could not be read (grey cells): %s", len(result.unreadable), "; ".join(result.unreadable[:3])
        )
        return EXIT_FAILURES
    return EXIT_OK


def _colour(text: str) -> tuple[int, int, int]:
    from PIL import ImageColor

    try:
        red, green, blue = ImageColor.getrgb(text)[:3]
    except ValueError as exc:
        raise ConfigError(f"--background {text!r}: a colour name (white, black) or #rrggbb") from exc
    return red, green, blue


def _clip_labels(settings: Settings, args: argparse.Namespace) -> str | None:
    """``--use-clip``: the template of a CLIP label (the concept bank's best match, as its prompt
    reads: "a photo of a lighthouse"), after computing and storing what is missing through the
    normal pipeline; without the clip extra, None (file names) and one line saying so."""
    import importlib.util

    if any(importlib.util.find_spec(name) is None for name in ("torch", "open_clip")):
        log.warning("--use-clip: the clip extra is not installed (pip install 'analyzer[clip]'): labels are file names")
        return None
    # the classify plugin's concept bank, as `analyzer classify PATH... --bank` would run it
    clip = build_parser().parse_args(["classify", *map(str, args.paths), "--bank", "--name", "concepts"])
    clip.progress = getattr(args, "progress", None)
    clip_settings, mode = classify_settings(settings, clip)
    if args.clip_model:
        options = dict(clip_settings.plugin_options["classify"]) | {"model": args.clip_model}
        clip_settings = clip_settings.model_copy(
            update={"plugin_options": dict(clip_settings.plugin_options) | {"classify": options}}
        )
    clip.plugins, clip.modes = ["classify"], [mode]
    clip.force = clip.dry_run = clip.retry_failed = clip.refresh_stale = False
    code, _ = run_engine(clip_settings, clip)
    if code not in (EXIT_OK, EXIT_FAILURES):
        raise AnalyzerError("--use-clip: the CLIP labels could not be computed")
    return f"a photo of a {{classify.{mode}}}"


def _grid_batch(settings: Settings, plugins: list[Any], args: argparse.Namespace, options: Any) -> int:
    from .grid.sheet import make_batch

    if not args.paths:
        raise ConfigError("--batch makes a sheet per folder: name the folders")
    failed = False
    for folder, result in make_batch(settings, plugins, args.paths, options):
        if result.skipped:
            log.info("%s: unchanged, not redrawn", folder)
        for page in result.pages:
            print(page)
        failed |= bool(result.unreadable)
    return EXIT_FAILURES if failed else EXIT_OK


def cmd_prune(settings: Settings, args: argparse.Namespace) -> int:
    """List (and with ``--yes`` set aside) the images below a confidence; ``--restore`` puts them back."""
    from . import prune
    from .store import preferred_models, resolve_targets

    if args.restore:
        for target in resolve_targets(settings, args.paths, files=False):
            store = Store.open(target.root, settings)
            try:
                log.info("%s: %d files put back", target.root, prune.restore(store, args.restore))
            finally:
                store.close()
        return EXIT_OK
    if args.label is None or args.min_confidence is None:
        raise ConfigError("name the classification and the threshold: --class classify.SET --min-confidence X")
    from .export.items import Condition

    wanted = [Selector.parse(args.label), *(Condition.parse(w).selector for w in args.where)]
    args.plugins = sorted({s.plugin for s in wanted})
    plugins, _, _, _ = _plugins(settings, args, check_requirements=False)
    seen: dict[Path, list[Seen]] = {}
    stores = surveyed(
        settings, plugins, args.paths, seen=lambda store, image: seen.setdefault(store.root, []).append(image)
    )
    try:
        found = prune.below(stores, args.label, args.min_confidence, preferred_models(plugins), args.where, seen)
        for item in found:
            conf = "-" if item.confidence is None else f"{item.confidence:.3f}"
            print(f"{item.store.root / item.rel}\t{item.label}\t{conf}")
        if not args.yes:
            log.info(
                "%d images below %g; --yes moves them (and their sidecars) to the trash",
                len(found),
                args.min_confidence,
            )
            return EXIT_OK
        for root, folder in prune.trash(found).items():
            log.info("%s: moved to %s; put back with: analyzer prune %s --restore %s", root, folder, root, folder.name)
    finally:
        for store in stores:
            store.close()
    return EXIT_OK


def cmd_config(settings: Settings, args: argparse.Namespace) -> int:
    """The effective settings as JSON; ``--sources``: where each value came from; ``--env-example``."""
    if args.env_example:
        print(configview.env_example(), end="")
    elif args.sources:
        flags = {key: f"--{key.replace('_', '-')}" for key in ("log_level", "log_file") if getattr(args, key)}
        rows = configview.sources(settings, args.config, flags)
        print(configview.sources_json(rows) if args.json else configview.sources_table(rows), end="")
    else:
        print(json.dumps(configview.effective(settings), indent=2, default=str))
    return EXIT_OK


COMMANDS = {
    "run": cmd_run,
    "watch": cmd_watch,
    "wildcards": cmd_wildcards,
    "status": cmd_status,
    "show": cmd_show,
    "config": cmd_config,
    "classify": cmd_classify,
    "export": cmd_export,
    "prune": cmd_prune,
    "grid": cmd_grid,
    "label": cmd_label,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, load settings, run the command; every error's exit code comes from :func:`errors.exit_code`."""
    args = build_parser().parse_args(argv)
    try:
        settings = _settings(args)
        setup_logging(
            settings.log_level,
            settings.log_file,
            rich_console=args.command in ("run", "classify")
            and (settings.progress == "bar" or (settings.progress == "auto" and sys.stderr.isatty())),
        )
        code = COMMANDS[args.command](settings, args)
        sys.stdout.flush()  # here, where a closed pipe is handled, not at interpreter exit
        return code
    except (BrokenPipeError, OutputClosed):
        # like `git log | head`: stop quietly; what would still be printed goes nowhere
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return EXIT_PIPE
    except (AnalyzerError, KeyboardInterrupt) as exc:
        if isinstance(exc, AnalyzerError):
            print(f"analyzer: error: {exc}", file=sys.stderr)
        return exit_code(exc)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
