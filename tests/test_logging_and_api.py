"""Logs a user sees (console, JSON file, heartbeat, progress) and the public Python surface."""

from __future__ import annotations

import json

import analyzer
from analyzer.planner import Planner, RunOptions
from analyzer.settings import load_settings
from analyzer.store import Store
from analyzer.triage import Candidate, Triage

from conftest import make_image
from fakes import EchoPlugin


def test_the_public_surface():
    assert set(analyzer.__all__) == {
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
    }
    for name in analyzer.__all__:
        assert getattr(analyzer, name) is not None


def test_json_log_file_has_one_object_per_line(cli, tmp_path):
    root = tmp_path / "imgs"
    make_image(root / "ok.png")
    (root / "bad.png").write_bytes(b"nope")
    log_file = tmp_path / "logs" / "run.jsonl"

    cli("run", root, "--log-file", log_file)

    records = [json.loads(line) for line in log_file.read_text().splitlines()]
    errors = [r for r in records if r["level"] == "ERROR"]
    assert errors and errors[0]["image"] == "bad.png" and errors[0]["plugin"] == "metadata"
    assert errors[0]["error_type"] == "ImageError"
    assert any("1 hashed" in r["message"] or "2 hashed" in r["message"] for r in records)


def test_heartbeat_lines_report_progress_and_memory(cli, tmp_path, echo, monkeypatch):
    root = tmp_path / "imgs"
    for i in range(6):
        make_image(root / f"{i}.png", color=(i, 1, 1))
    monkeypatch.setenv("ANALYZER_HEARTBEAT_INTERVAL", "0.5")
    monkeypatch.setenv("ANALYZER_ECHO__DELAY", "0.4")
    monkeypatch.setenv("ANALYZER_ECHO__BATCH_SIZE", "1")
    monkeypatch.setenv("ANALYZER_ECHO__CONCURRENCY", "1")

    outcome = cli("run", root, "--plugins", "echo", "--modes", "name")

    beats = [line for line in outcome.log.splitlines() if "heartbeat:" in line]
    assert beats, outcome.log
    assert "images=6" in beats[-1] and "rss=" in beats[-1] and "rate=" in beats[-1]


def test_a_progress_bar_can_be_forced(tmp_path, capsys):
    from analyzer.cli import main

    root = tmp_path / "imgs"
    make_image(root / "a.png")

    assert main(["run", str(root), "--progress", "bar"]) == 0
    assert "1 images" in capsys.readouterr().err


def test_an_image_vanishing_before_it_is_hashed_is_skipped(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    settings = load_settings()
    store = Store.open(root, settings)
    triage = Triage(Planner([EchoPlugin()], RunOptions()), {})
    cand = Candidate(store, "", "gone.png", root / "gone.png", (1, 1), None, {"echo": None})

    prepared = triage.prepare(cand, hash_images=True, set_aside=True)

    assert prepared.state == "vanished" and prepared.image_hash is None


def test_while_the_folders_are_walked_progress_shows_the_walk_and_no_total_or_eta():
    from analyzer.progress import PluginStats, Reporter, RunStats

    stats = RunStats(images=4240)
    stats.plugins["metadata"] = PluginStats(planned=4240, done=3840, first_done_at=0.0)
    reporter = Reporter(stats, mode="plain", heartbeat=0)

    stats.walk_started = 8.0
    walking = reporter.plain_lines(now=10.0)
    stats.walk_started = None
    walked = reporter.plain_lines(now=10.0)

    assert walking == [
        "walk: 4240 images found so far, 2120/s",
        "progress metadata: 3840/4240+ done, 0 failed, 384.0/s, ETA -",
    ]
    assert walked == ["progress metadata: 3840/4240 done, 0 failed, 384.0/s, ETA 0:00:01"]


def test_console_lines_keep_their_time_and_colour_no_part_of_a_number(tmp_path):
    import io
    import logging
    import re

    from rich.console import Console

    from analyzer.logs import setup_logging

    setup_logging("INFO", tmp_path / "log.jsonl", rich_console=True)
    try:
        handler = next(h for h in logging.getLogger().handlers if type(h).__name__ == "RichHandler")
        out = io.StringIO()
        handler.console = Console(file=out, force_terminal=True, width=200)  # type: ignore[attr-defined]
        logging.getLogger("analyzer").info("finished in 2.6s, peak RSS 412 MB")
        logging.getLogger("httpx").info('HTTP Request: POST http://127.0.0.1:1/v1/chat/completions "200 OK"')
        logging.getLogger("httpx").warning("a library warning still shows")
    finally:
        setup_logging("INFO")

    text = out.getvalue()
    assert re.search(r"\d\d:\d\d:\d\d", text)  # a timestamp on every line
    assert "finished in 2.6s, peak RSS 412 MB" in text  # no colour codes inside the numbers
    assert "HTTP Request" not in text and "a library warning still shows" in text
    assert "HTTP Request: POST" in (tmp_path / "log.jsonl").read_text()  # the file keeps everything
