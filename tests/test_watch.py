"""`analyzer watch` with the real observer on real folders: every image analysed once, when complete.

Each test runs the daemon as a process (`tests/slow_runner.py watch …`) with the `count` test
plugin, which appends one line per image it analyses to a log file, so analyses can be counted
across restarts; sidecars are checked to be whole JSON whose hash is the image's final content.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import io
import json
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from analyzer.discovery import wanted_path

from conftest import make_image

RUNNER = Path(__file__).parent / "slow_runner.py"


def noise_png(seed: int, size: int = 96) -> bytes:
    """An incompressible PNG (~28 KB at 96 px), so chunked writes take several writes."""
    rng = hashlib.sha256(str(seed).encode()).digest()
    pixels = (rng * (size * size * 3 // len(rng) + 1))[: size * size * 3]
    pixels = bytes((b + i * 131) % 256 for i, b in enumerate(pixels))
    buffer = io.BytesIO()
    Image.frombytes("RGB", (size, size), pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Daemon:
    """One `analyzer watch` process over ``root`` with the `count` plugin."""

    def __init__(self, root: Path, work: Path, **env: str) -> None:
        self.root, self.work = root, work
        self.log = work / "analysed.tsv"
        self.err_path = work / f"stderr-{time.monotonic_ns()}.txt"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ANALYZER_")}
        self.env.update(
            ANALYZER_COUNT__LOG=str(self.log),
            ANALYZER_WATCH__QUIET_PERIOD="0.3",
            ANALYZER_WATCH__WILDCARDS_DEBOUNCE="0.2",
            ANALYZER_HEARTBEAT_INTERVAL="0",
            ANALYZER_GRACE_PERIOD="10",
            ANALYZER_PROGRESS="plain",
        )
        self.env.update(env)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *args: str) -> Daemon:
        with open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(RUNNER), "watch", str(self.root), "--plugins", "count", *args],
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=self.env,
                cwd=self.work,
            )
        self.wait_for(lambda: "following changes" in self.err, what="the first walk")
        return self

    @property
    def err(self) -> str:
        return self.err_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=timeout)
        self.proc = None
        return code

    def analyses(self) -> Counter[str]:
        if not self.log.exists():
            return Counter()
        return Counter(line.split("\t")[0] for line in self.log.read_text().splitlines())

    def hashes(self) -> dict[str, list[str]]:
        seen: dict[str, list[str]] = {}
        if self.log.exists():
            for line in self.log.read_text().splitlines():
                rel, hash_, _ = line.split("\t")
                seen.setdefault(rel, []).append(hash_)
        return seen

    def wait_for(self, condition: Callable[[], bool], timeout: float = 30, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"the daemon exited ({self.proc.returncode}):\n{self.err}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what or condition}:\n{self.err[-3000:]}")
            time.sleep(0.05)

    def wait_analysed(self, *rels: str, timeout: float = 30, beside: bool = True) -> None:
        """Until each image was analysed and (``beside``) its sidecar is written next to it."""

        def done() -> bool:
            seen = self.analyses()
            return all(seen[r] >= 1 and (not beside or (self.root / f"{r}.count.json").exists()) for r in rels)

        self.wait_for(done, timeout, f"analyses of {rels}")

    def settle(self, seconds: float = 1.5) -> None:
        """Give stray events time to cause (wrong) extra analyses before counting."""
        time.sleep(seconds)


@pytest.fixture
def watch(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    made: list[Daemon] = []

    def make(**env: str) -> Daemon:
        daemon = Daemon(tmp_path / "imgs", tmp_path, **env)
        made.append(daemon)
        return daemon

    (tmp_path / "imgs").mkdir()
    yield make
    for daemon in made:
        if daemon.proc is not None:
            daemon.proc.kill()
            daemon.proc.wait()


def wildcard_lines(root: Path) -> list[str]:
    path = root / "wildcards" / "count_seen.txt"
    return path.read_text().split() if path.exists() else []


def sidecars_whole(root: Path) -> dict[str, dict[str, Any]]:
    """Every sidecar under ``root`` parsed (so: whole JSON), by image path; no temporary file left."""
    found = {}
    for path in root.rglob("*.count.json"):
        found[str(path.relative_to(root))[: -len(".count.json")]] = json.loads(path.read_text())
    assert not [p for p in root.rglob("*.tmp")], "a temporary file was left behind"
    return found


def test_backfills_on_start_then_analyses_each_new_image_once(watch, tmp_path):
    root = tmp_path / "imgs"
    for i in range(3):
        make_image(root / f"old{i}.png", color=(i, 1, 1))
    old = time.time() - 60
    for path in root.iterdir():
        os.utime(path, (old, old))
    daemon = watch().start()
    daemon.wait_analysed("old0.png", "old1.png", "old2.png")

    (root / "new.png").write_bytes(noise_png(1))
    make_image(root / "deep" / "er" / "nested.jpg", color=(9, 9, 9))
    daemon.wait_analysed("new.png", "deep/er/nested.jpg")
    daemon.settle()

    assert daemon.stop() == 0
    assert set(daemon.analyses().values()) == {1} and len(daemon.analyses()) == 5
    docs = sidecars_whole(root)
    assert docs["new.png"]["file_info"]["hash"] == sha(noise_png(1))
    assert (root / "wildcards" / "count_seen.txt").read_text().split() == ["new", "old0", "old1", "old2", "nested"]


def test_a_slowly_written_image_is_analysed_once_when_complete(watch, tmp_path):
    root = tmp_path / "imgs"
    daemon = watch().start()
    data = noise_png(2, size=160)
    step = len(data) // 12
    with open(root / "slow.png", "wb") as handle:
        for i in range(0, len(data), step):
            handle.write(data[i : i + step])
            handle.flush()
            # one pause longer than the quiet period: the half-written file is stable but does not decode
            time.sleep(0.8 if i == 5 * step else 0.1)
    daemon.wait_analysed("slow.png")
    daemon.settle()

    assert daemon.stop() == 0
    assert daemon.hashes() == {"slow.png": [sha(data)]}
    assert sidecars_whole(root)["slow.png"]["file_info"]["size"] == len(data)


def test_copies_and_moves_in_within_and_out(watch, tmp_path):
    root, outside = tmp_path / "imgs", tmp_path / "outside"
    outside.mkdir()
    daemon = watch().start()
    (outside / "copied.png").write_bytes(noise_png(3))
    shutil.copy(outside / "copied.png", root / "copied.png")
    (outside / "moved_in.png").write_bytes(noise_png(4))
    os.rename(outside / "moved_in.png", root / "moved_in.png")
    (outside / "folder").mkdir()
    (outside / "folder" / "a.png").write_bytes(noise_png(5))
    os.rename(outside / "folder", root / "folder")  # a whole folder moved in
    daemon.wait_analysed("copied.png", "moved_in.png", "folder/a.png")

    (root / "sub").mkdir()
    os.rename(root / "moved_in.png", root / "sub" / "renamed.png")  # within: the sidecar follows
    os.rename(root / "folder", root / "folder2")  # a folder within: its sidecars moved with it
    daemon.wait_for(lambda: (root / "sub" / "renamed.png.count.json").exists(), what="the sidecar to follow")
    os.rename(root / "copied.png", outside / "copied_back.png")  # out: it leaves the wildcards
    daemon.wait_for(lambda: wildcard_lines(root) == ["a", "moved_in"], what="the wildcards to drop the moved out")
    daemon.settle()

    assert daemon.stop() == 0
    assert daemon.analyses() == Counter({"copied.png": 1, "moved_in.png": 1, "folder/a.png": 1})
    docs = sidecars_whole(root)
    assert not (root / "moved_in.png.count.json").exists()
    assert docs["sub/renamed.png"]["file_info"]["path"] == "sub/renamed.png"
    assert docs["sub/renamed.png"]["file_info"]["hash"] == sha(noise_png(4))
    assert docs["folder2/a.png"]["file_info"]["path"] == "folder2/a.png"
    assert "copied.png" in docs  # on_delete=keep: the sidecar stays (the image may come back)

    restarted = watch().start()  # nothing moved or missed needs analysing again
    restarted.settle(1.0)
    assert restarted.stop() == 0
    assert restarted.analyses() == daemon.analyses()


def test_a_move_across_file_systems_keeps_the_results(watch, tmp_path):
    """mv between file systems is a copy then a delete: the copy takes over the deleted image's sidecars."""
    root = tmp_path / "imgs"
    daemon = watch().start()
    (root / "here.png").write_bytes(noise_png(13))
    daemon.wait_analysed("here.png")
    (root / "there").mkdir()
    shutil.copy2(root / "here.png", root / "there" / "here.png")
    (root / "here.png").unlink()
    daemon.wait_for(lambda: (root / "there" / "here.png.count.json").exists(), what="the sidecar to follow")
    daemon.settle()
    assert daemon.stop() == 0
    assert daemon.analyses() == Counter({"here.png": 1})
    docs = sidecars_whole(root)
    assert set(docs) == {"there/here.png"} and docs["there/here.png"]["file_info"]["path"] == "there/here.png"


def test_sidecars_in_a_mirrored_tree_follow_moves_too(watch, tmp_path):
    root, mirror = tmp_path / "imgs", tmp_path / "sidecars"
    daemon = watch().start("--sidecar-dir", str(mirror))
    (root / "a.png").write_bytes(noise_png(16))
    daemon.wait_analysed("a.png", beside=False)
    daemon.wait_for(lambda: (mirror / "imgs" / "a.png.count.json").exists(), what="the mirrored sidecar")
    (root / "deeper").mkdir()
    os.rename(root / "a.png", root / "deeper" / "b.png")
    moved = mirror / "imgs" / "deeper" / "b.png.count.json"
    daemon.wait_for(moved.exists, what="the mirrored sidecar to follow")
    daemon.wait_for(lambda: (mirror / "wildcards" / "count_seen.txt").exists(), what="wildcards in the mirror")
    daemon.settle()
    assert daemon.stop() == 0
    assert daemon.analyses() == Counter({"a.png": 1})
    assert not (mirror / "imgs" / "a.png.count.json").exists()
    assert json.loads(moved.read_text())["file_info"]["path"] == "deeper/b.png"
    assert not list(root.rglob("*.json"))


def test_deletes_leave_the_wildcards_and_remove_sidecars_when_asked(watch, tmp_path):
    root = tmp_path / "imgs"
    daemon = watch(ANALYZER_WATCH__ON_DELETE="delete").start()
    for name in ("keep.png", "gone.png"):
        (root / name).write_bytes(noise_png(len(name)))
    (root / "dir").mkdir()
    (root / "dir" / "inner.png").write_bytes(noise_png(7))
    daemon.wait_analysed("keep.png", "gone.png", "dir/inner.png")
    wildcard = root / "wildcards" / "count_seen.txt"
    daemon.wait_for(lambda: wildcard.exists() and len(wildcard.read_text().split()) == 3, what="wildcards")

    (root / "gone.png").unlink()
    shutil.rmtree(root / "dir")
    daemon.wait_for(lambda: wildcard.read_text().split() == ["keep"], what="the wildcards to drop deleted images")
    assert daemon.stop() == 0
    assert not (root / "gone.png.count.json").exists()
    assert set(sidecars_whole(root)) == {"keep.png"}


def test_rapid_resaves_cost_one_analysis_and_new_content_another(watch, tmp_path):
    root = tmp_path / "imgs"
    daemon = watch().start()
    first = noise_png(8)
    for _ in range(6):  # an editor saving the same picture over and over
        (root / "edit.png").write_bytes(first)
        time.sleep(0.05)
    daemon.wait_analysed("edit.png")
    daemon.settle(0.8)
    for _ in range(3):  # saved again later, same content
        (root / "edit.png").write_bytes(first)
    daemon.settle()
    assert daemon.analyses()["edit.png"] == 1

    second = noise_png(9)
    (root / "edit.png").write_bytes(second)
    daemon.wait_for(lambda: daemon.analyses()["edit.png"] == 2, what="the changed content to be analysed")
    daemon.settle()
    assert daemon.stop() == 0
    assert daemon.hashes() == {"edit.png": [sha(first), sha(second)]}
    assert sidecars_whole(root)["edit.png"]["file_info"]["hash"] == sha(second)


def test_temporary_names_are_ignored_until_renamed(watch, tmp_path):
    root = tmp_path / "imgs"
    daemon = watch().start()
    for name in ("download.png.part", "chrome.png.crdownload", "backup.png~", "editor.tmp", ".hidden.png"):
        (root / name).write_bytes(noise_png(10))
    daemon.settle()
    assert daemon.analyses() == Counter()

    os.rename(root / "download.png.part", root / "download.png")
    daemon.wait_analysed("download.png")
    daemon.settle()
    assert daemon.stop() == 0
    assert daemon.analyses() == Counter({"download.png": 1})


def write_burst(root: Path, names: list[str], seed: int = 0) -> dict[str, bytes]:
    """Write images from four threads at once, some in chunks, some moved in from a temp name."""
    written: dict[str, bytes] = {}

    def writer(part: list[str]) -> None:
        for i, rel in enumerate(part):
            data = noise_png(hash((seed, rel)) % 100_000, size=32)
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if i % 3 == 0:  # written in three chunks
                with open(path, "wb") as handle:
                    for j in range(0, len(data), len(data) // 3 + 1):
                        handle.write(data[j : j + len(data) // 3 + 1])
                        handle.flush()
                        time.sleep(0.01)
            elif i % 3 == 1:  # finished under a temporary name, then renamed
                tmp = path.with_name(path.name + ".part")
                tmp.write_bytes(data)
                os.rename(tmp, path)
            else:
                path.write_bytes(data)
            written[rel] = data

    threads = [threading.Thread(target=writer, args=(names[k::4],)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return written


def test_a_burst_of_hundreds_of_images_is_analysed_exactly_once(watch, tmp_path):
    root = tmp_path / "imgs"
    daemon = watch().start()
    names = [f"batch{i % 5}/sub{i % 3}/img{i:03d}.png" for i in range(300)]
    written = write_burst(root, names)
    daemon.wait_analysed(*names, timeout=90)
    daemon.settle()

    assert daemon.stop() == 0
    assert daemon.analyses() == Counter({name: 1 for name in names})
    docs = sidecars_whole(root)
    assert {rel: doc["file_info"]["hash"] for rel, doc in docs.items()} == {r: sha(d) for r, d in written.items()}
    assert len((root / "wildcards" / "count_seen.txt").read_text().split()) == 300


def test_a_restart_in_the_middle_of_a_burst_misses_nothing_and_repeats_nothing(watch, tmp_path):
    root = tmp_path / "imgs"
    daemon = watch(ANALYZER_COUNT__DELAY="0.05").start()
    first = [f"a/img{i:03d}.png" for i in range(150)]
    writer = threading.Thread(target=write_burst, args=(root, first))
    writer.start()
    daemon.wait_for(lambda: sum(daemon.analyses().values()) >= 20, what="some analyses")
    assert daemon.stop() == 0  # mid-burst: the writer is still going
    writer.join()
    second = [f"b/img{i:03d}.png" for i in range(150)]
    write_burst(root, second, seed=1)  # while the daemon is down

    restarted = watch(ANALYZER_COUNT__DELAY="0.05").start()
    restarted.wait_analysed(*first, *second, timeout=120)
    restarted.settle()
    assert restarted.stop() == 0
    assert restarted.analyses() == Counter({name: 1 for name in first + second})
    assert len(sidecars_whole(root)) == 300


def test_sigterm_during_processing_finishes_in_flight_work_cleanly(watch, tmp_path):
    root = tmp_path / "imgs"
    daemon = watch(ANALYZER_COUNT__DELAY="0.6").start()
    for i in range(24):
        (root / f"s{i:02d}.png").write_bytes(noise_png(100 + i, size=24))
    daemon.wait_for(lambda: sum(daemon.analyses().values()) >= 8, what="the first batch")

    started = time.monotonic()
    assert daemon.stop() == 0
    assert time.monotonic() - started < 10
    assert "received SIGTERM: finishing in-flight work" in daemon.err
    done = sidecars_whole(root)
    assert set(daemon.analyses()) == set(done)  # every analysis that ran was written, and only those

    rest = watch().start()
    rest.wait_analysed(*(f"s{i:02d}.png" for i in range(24)))
    assert rest.stop() == 0
    assert rest.analyses() == Counter({f"s{i:02d}.png": 1 for i in range(24)})


def test_a_broken_image_gets_its_error_and_the_loop_goes_on(watch, tmp_path):
    root = tmp_path / "imgs"
    daemon = watch(ANALYZER_WATCH__DECODE_TIMEOUT="1").start("--plugins", "count,metadata")
    (root / "broken.png").write_bytes(noise_png(14)[:400])  # truncated for good
    (root / "empty.png").write_bytes(b"")
    daemon.wait_for(lambda: (root / "broken.png.metadata.json").exists(), what="the broken image's error")
    (root / "fine.png").write_bytes(noise_png(15))
    daemon.wait_analysed("fine.png")
    daemon.wait_for(lambda: (root / "empty.png.metadata.json").exists(), what="the empty file's error")
    assert daemon.stop(signal.SIGINT) == 0  # SIGINT stops it as cleanly as SIGTERM
    broken = json.loads((root / "broken.png.metadata.json").read_text())
    assert broken["analysis"] == {}
    assert {e["type"] for by_model in broken["errors"].values() for e in by_model.values()} == {"ImageError"}
    assert "'broken.png': metadata failed" in daemon.err
    assert json.loads((root / "fine.png.metadata.json").read_text())["analysis"]["image"]
    assert "stopped by SIGINT" in daemon.err


def test_polling_for_network_shares(watch, tmp_path):
    root = tmp_path / "imgs"
    daemon = watch().start("--polling", "--poll-interval", "0.2")
    assert "polling every 0.2s" in daemon.err
    (root / "polled.png").write_bytes(noise_png(11))
    daemon.wait_analysed("polled.png")
    os.rename(root / "polled.png", root / "renamed.png")
    daemon.wait_for(lambda: (root / "renamed.png.count.json").exists(), what="the sidecar to follow")
    daemon.settle()
    assert daemon.stop() == 0
    assert daemon.analyses() == Counter({"polled.png": 1})


def test_a_watched_folder_that_goes_away_and_comes_back_is_watched_again(watch, tmp_path):
    """As an unmounted and remounted share would: the watcher waits for it, then catches up."""
    root = tmp_path / "imgs"
    daemon = watch().start("--poll-interval", "0.3")
    (root / "before.png").write_bytes(noise_png(17))
    daemon.wait_for(lambda: (root / "before.png.count.json").exists(), what="the first sidecar")
    shutil.rmtree(root)
    daemon.wait_for(lambda: "is gone (unmounted?)" in daemon.err, what="the watcher to notice")
    root.mkdir()
    (root / "after.png").write_bytes(noise_png(18))
    daemon.wait_analysed("after.png")
    (root / "later.png").write_bytes(noise_png(19))
    daemon.wait_analysed("later.png")
    assert daemon.stop() == 0
    assert "watching again (file system events)" in daemon.err
    assert daemon.analyses() == Counter({"before.png": 1, "after.png": 1, "later.png": 1})


def test_a_plugin_that_fails_to_start_is_retried_and_catches_up(watch, tmp_path):
    root = tmp_path / "imgs"
    make_image(root / "early.png")
    daemon = watch(ANALYZER_COUNT__FAIL_SETUPS="2", ANALYZER_WATCH__SETUP_RETRY_MAX="0.5")
    daemon.start("--plugins", "count,metadata")
    (root / "during.png").write_bytes(noise_png(12))
    daemon.wait_analysed("early.png", "during.png")
    daemon.settle()
    assert daemon.stop() == 0
    assert "plugin count could not start: weights not there yet (attempt 1); trying again in 0.5s" in daemon.err
    assert "plugin count started after 3 attempts" in daemon.err
    assert daemon.analyses() == Counter({"early.png": 1, "during.png": 1})
    assert (root / "during.png.metadata.json").exists()


def test_heartbeat_reports_queue_and_memory(watch, tmp_path):
    daemon = watch(ANALYZER_HEARTBEAT_INTERVAL="0.3").start()
    daemon.wait_for(lambda: "heartbeat:" in daemon.err, what="a heartbeat")
    assert daemon.stop() == 0
    line = next(line for line in daemon.err.splitlines() if "heartbeat:" in line)
    for field in ("done=", "failed=", "in_flight=", "waiting=", "rate=", "rss="):
        assert field in line


def test_wildcard_readers_never_see_a_partial_file(watch, tmp_path):
    root = tmp_path / "imgs"
    daemon = watch(ANALYZER_WATCH__WILDCARDS_DEBOUNCE="0").start()
    wildcard = root / "wildcards" / "count_seen.txt"
    names = [f"w{i:03d}.png" for i in range(120)]
    seen: list[str] = []
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            with contextlib_suppress_missing():
                seen.append(wildcard.read_text())

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        write_burst(root, names)
        daemon.wait_for(lambda: wildcard.exists() and len(wildcard.read_text().split()) == 120, timeout=60)
    finally:
        done.set()
        thread.join()
    assert daemon.stop() == 0
    assert seen
    for text in seen:
        assert text.endswith("\n") and all(line.startswith("w") for line in text.split())


class contextlib_suppress_missing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, *rest: Any) -> bool:
        return kind is not None and issubclass(kind, FileNotFoundError)


def test_heartbeat_shows_gpu_memory_when_a_plugin_uses_a_gpu(monkeypatch):
    """No GPU here: a stand-in for torch at the boundary, as torch.cuda would answer."""
    import types

    from analyzer.progress import gpu_memory_text

    cuda = types.SimpleNamespace(
        is_available=lambda: True, memory_allocated=lambda: 1_500_000_000, memory_reserved=lambda: 2_000_000_000
    )
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    assert gpu_memory_text() == " gpu=1500/2000MB"
    monkeypatch.setitem(
        sys.modules, "torch", types.SimpleNamespace(cuda=types.SimpleNamespace(is_available=lambda: False))
    )
    assert gpu_memory_text() == ""


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP"])
def test_finished_files_are_told_from_unfinished_ones_by_their_end(tmp_path, fmt):
    from analyzer.images import has_end_marker

    buffer = io.BytesIO()
    Image.frombytes("RGB", (48, 48), bytes(range(256)) * 27).save(buffer, format=fmt)
    data = buffer.getvalue()
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    whole.write_bytes(data)
    cut.write_bytes(data[: len(data) * 2 // 3])
    assert has_end_marker(whole)
    assert not has_end_marker(cut)


def test_formats_without_an_end_marker_are_left_to_the_decoder(tmp_path):
    from analyzer.images import has_end_marker

    make_image(tmp_path / "a.bmp")
    (tmp_path / "empty.png").write_bytes(b"")
    assert not has_end_marker(tmp_path / "a.bmp")
    assert not has_end_marker(tmp_path / "empty.png")


def test_paths_the_watcher_takes_for_images():
    assert wanted_path("a/b.png")
    assert wanted_path("b.JPG")
    for rel in ("b.png.part", "b.png.crdownload", "b.png~", "b.tmp", ".b.png", ".analyzer/x.png", "a/.cache/b.png"):
        assert not wanted_path(rel), rel
    assert not wanted_path("skip/b.png", exclude=["skip/"])
    assert not wanted_path("a/b.png", include=["*.jpg"])


async def watch_in_process(root: Path, until: Callable[[], bool], **watch: Any) -> str:
    """Run the engine with a watcher in this process (for faults injected at the boundary) until ``until()``."""
    from analyzer.engine import Engine
    from analyzer.registry import select_plugins
    from analyzer.settings import load_settings
    from analyzer.watch import watch as watch_folders

    settings = load_settings(None, watch={"quiet_period": 0.2, "poll_interval": 0.2, **watch}, heartbeat_interval=0)
    plugins, _ = select_plugins(settings, ["metadata"], check_requirements=True)
    engine = Engine(settings, plugins)
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("analyzer").addHandler(handler)
    try:
        task = asyncio.create_task(watch_folders(engine, [root]))
        for _ in range(400):
            if task.done() or until():
                break
            await asyncio.sleep(0.05)
        engine.request_stop()
        await task
    finally:
        logging.getLogger("analyzer").removeHandler(handler)
    return "\n".join(records)


async def test_when_the_inotify_limit_is_reached_it_says_how_to_fix_it_and_polls(tmp_path, monkeypatch):
    """The limit cannot be lowered safely on a shared machine: the native observer is made to fail like it."""
    from analyzer import watch as watch_module

    real = watch_module.make_observer

    def limited(polling: bool, interval: float) -> Any:
        observer = real(polling, interval)
        if not polling:

            def start() -> None:
                raise OSError(errno.ENOSPC, "inotify watch limit reached")

            observer.start = start
        return observer

    monkeypatch.setattr(watch_module, "make_observer", limited)
    root = tmp_path / "imgs"
    make_image(root / "first.png")
    sidecar = root / "later.png.metadata.json"

    def until() -> bool:
        if (root / "first.png.metadata.json").exists() and not (root / "later.png").exists():
            make_image(root / "later.png")
        return sidecar.exists()

    log = await watch_in_process(root, until)
    assert "fs.inotify.max_user_watches" in log
    assert "sudo sysctl fs.inotify.max_user_watches=524288" in log
    assert "falling back to polling every 0.2s" in log
    assert sidecar.exists()


async def test_a_failing_hand_over_is_logged_and_the_image_is_not_lost(tmp_path, monkeypatch):
    from analyzer.engine import Engine

    real, failures = Engine.submit, []

    async def flaky(self: Engine, *args: Any) -> None:
        if not failures:
            failures.append(1)
            raise sqlite3.OperationalError("database is locked")
        await real(self, *args)

    monkeypatch.setattr(Engine, "submit", flaky)
    root = tmp_path / "imgs"
    root.mkdir()

    def until() -> bool:
        if not (root / "late.png").exists():
            make_image(root / "late.png")
        return (root / "late.png.metadata.json").exists()

    log = await watch_in_process(root, until)
    assert failures and "handing 1 images to the engine failed; they are looked at again" in log
    assert (root / "late.png.metadata.json").exists()
