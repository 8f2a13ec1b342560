"""Many processes on one store: runs side by side, runs beside a watcher, crashes, two hosts.

Every process here is a real `analyzer` process (`tests/slow_runner.py`, which also registers
the `count` test plugin: one line per image it analyses, appended to a log shared by the
processes, so analyses can be counted across them).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from conftest import a1111_png

RUNNER = Path(__file__).parent / "slow_runner.py"


def env_for(work: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANALYZER_")}
    env.update(
        ANALYZER_COUNT__LOG=str(work / "analysed.tsv"),
        ANALYZER_HEARTBEAT_INTERVAL="0",
        ANALYZER_PROGRESS="plain",
        ANALYZER_GRACE_PERIOD="5",
    )
    env.update(extra)
    return env


def start(work: Path, *args: str | Path, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(RUNNER), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env_for(work, **env),
        cwd=work,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 90) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def analyses(work: Path) -> Counter[str]:
    log = work / "analysed.tsv"
    if not log.exists():
        return Counter()
    return Counter(line.split("\t")[0] for line in log.read_text().splitlines())


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "imgs"
    for i in range(240):
        a1111_png(root / f"d{i % 4}" / f"img_{i:03d}.png", f"prompt {i}", seed=i, color=(i % 256, 3, 4))
    return root


def sidecars(root: Path, plugin: str) -> dict[str, dict]:  # type: ignore[type-arg]
    return {str(p.relative_to(root)): json.loads(p.read_text()) for p in root.rglob(f"*.png.{plugin}.json")}


def stray_files(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.name.endswith(".tmp")]


def test_two_runs_with_different_modes_at_once_lose_nothing(tmp_path, tree):
    a = start(tmp_path, "run", tree, "--plugins", "metadata", "--modes", "prompt,negative")
    time.sleep(0.3)
    b = start(tmp_path, "run", tree, "--plugins", "metadata", "--modes", "image,parameters")

    (code_a, err_a), (code_b, err_b) = finish(a), finish(b)

    assert (code_a, code_b) == (0, 0), err_a + err_b
    assert "Traceback" not in err_a + err_b and "locked" not in err_a + err_b
    found = sidecars(tree, "metadata")
    assert len(found) == 240
    for rel, doc in found.items():
        assert set(doc["analysis"]) == {"prompt", "negative", "image", "parameters"}, rel
    assert not stray_files(tree)


def test_two_runs_with_the_same_modes_analyse_each_image_once(tmp_path, tree):
    a = start(tmp_path, "run", tree, "--plugins", "count", ANALYZER_COUNT__DELAY="0.02")
    time.sleep(0.2)
    b = start(tmp_path, "run", tree, "--plugins", "count", ANALYZER_COUNT__DELAY="0.02")

    (code_a, err_a), (code_b, err_b) = finish(a), finish(b)

    assert (code_a, code_b) == (0, 0), err_a + err_b
    seen = analyses(tmp_path)
    assert len(seen) == 240 and set(seen.values()) == {1}, [r for r, n in seen.items() if n > 1]
    assert len(sidecars(tree, "count")) == 240


def test_run_and_status_beside_a_watcher(tmp_path, tree):
    watcher = start(tmp_path, "watch", tree, "--plugins", "count", ANALYZER_WATCH__QUIET_PERIOD="0.3")
    try:
        time.sleep(0.5)
        run = start(tmp_path, "run", tree, "--plugins", "count,metadata")
        statuses = [start(tmp_path, "status", tree, "--plugins", "count,metadata") for _ in range(3)]
        code, err = finish(run)
        assert code == 0 and "Traceback" not in err, err
        for status in statuses:
            code, err = finish(status)
            assert code == 0 and "Traceback" not in err, err
    finally:
        watcher.send_signal(signal.SIGTERM)
        code, err = finish(watcher)
    assert code == 0 and "Traceback" not in err, err
    seen = analyses(tmp_path)
    assert len(seen) == 240 and set(seen.values()) == {1}
    assert len(sidecars(tree, "metadata")) == 240


def test_kill_9_at_random_moments_then_a_resumed_run_finishes_and_leaves_no_stray_file(tmp_path, tree):
    rng = random.Random(7)
    for _ in range(4):
        proc = start(tmp_path, "run", tree, "--plugins", "count,metadata", ANALYZER_COUNT__DELAY="0.01")
        time.sleep(rng.uniform(0.3, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)  # reaps it and closes its pipes
        for path in tree.rglob("*.json"):  # never half-written
            if ".corrupt-" not in path.name:
                json.loads(path.read_text())

    code, err = finish(start(tmp_path, "run", tree, "--plugins", "count,metadata"))

    assert code == 0, err
    assert len(sidecars(tree, "count")) == 240 and len(sidecars(tree, "metadata")) == 240
    assert not stray_files(tree), stray_files(tree)


def test_two_hosts_sharing_a_folder_keep_their_own_index_and_lose_nothing(tmp_path, tree):
    a = start(tmp_path, "run", tree, "--plugins", "metadata", "--modes", "prompt", ANALYZER_HOST_ID="host-a")
    b = start(tmp_path, "run", tree, "--plugins", "metadata", "--modes", "image", ANALYZER_HOST_ID="host-b")

    (code_a, err_a), (code_b, err_b) = finish(a), finish(b)

    assert (code_a, code_b) == (0, 0), err_a + err_b
    hosts = tree / ".analyzer" / "hosts"
    assert (hosts / "host-a" / "index.sqlite").exists() and (hosts / "host-b" / "index.sqlite").exists()
    for rel, doc in sidecars(tree, "metadata").items():
        assert set(doc["analysis"]) == {"prompt", "image"}, rel
    assert not stray_files(tree)


def test_a_walk_removes_temporary_files_of_writers_that_are_gone_and_never_a_live_ones(tmp_path, tree):
    from analyzer.hosts import default_host_id

    folder = tree / "d0"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = default_host_id()
    names = {
        "live": f".img_000.png.metadata.json~{host}~{os.getpid()}~1.tmp",  # this test process: alive
        "dead": f".img_004.png.metadata.json~{host}~{dead.pid}~1.tmp",
        "other-new": ".img_008.png.metadata.json~elsewhere~123~1.tmp",
        "other-old": ".img_012.png.metadata.json~elsewhere~456~1.tmp",
    }
    for name in names.values():
        (folder / name).write_text("{")
    two_hours_ago = time.time() - 7200
    os.utime(folder / names["other-old"], (two_hours_ago, two_hours_ago))

    code, err = finish(start(tmp_path, "run", tree, "--plugins", "metadata"))

    assert code == 0, err
    left = {key for key, name in names.items() if (folder / name).exists()}
    assert left == {"live", "other-new"}
