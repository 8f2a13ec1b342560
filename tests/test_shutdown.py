"""SIGTERM and SIGINT: stop taking work, finish or abandon in-flight work, never half-write."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import make_image

RUNNER = Path(__file__).parent / "slow_runner.py"


@pytest.fixture
def forty(tmp_path: Path) -> Path:
    root = tmp_path / "imgs"
    for i in range(40):
        make_image(root / f"{i:02d}.png", color=(i, 0, 0))
    return root


def start(root: Path, delay: float, grace: float) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANALYZER_")}
    env.update(ANALYZER_SLOW__DELAY=str(delay), ANALYZER_GRACE_PERIOD=str(grace), ANALYZER_PROGRESS="plain")
    return subprocess.Popen(
        [sys.executable, str(RUNNER), "run", str(root), "--plugins", "slow"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=root.parent,
    )


def wait_for_sidecars(root: Path, count: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while len(list(root.glob("*.slow.json"))) < count:
        assert time.monotonic() < deadline, "no sidecars appeared"
        time.sleep(0.02)


def assert_all_sidecars_whole(root: Path) -> int:
    sidecars = list(root.glob("*.slow.json"))
    for path in sidecars:
        json.loads(path.read_text())
    assert not [p for p in root.iterdir() if p.name.endswith(".tmp")], "a temporary file was left behind"
    return len(sidecars)


def test_sigterm_finishes_in_flight_work_and_a_restart_picks_up_the_rest(forty):
    proc = start(forty, delay=0.3, grace=10)
    wait_for_sidecars(forty, 2)

    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)

    assert proc.returncode == 128 + signal.SIGTERM
    assert "received SIGTERM: finishing in-flight work" in err
    done = assert_all_sidecars_whole(forty)
    assert 2 <= done < 40

    rest = start(forty, delay=0.01, grace=10)
    _, err = rest.communicate(timeout=60)
    assert rest.returncode == 0, err
    assert f"slow: {40 - done} done, 0 failed of {40 - done} planned" in err
    assert assert_all_sidecars_whole(forty) == 40


def test_work_still_running_after_the_grace_period_is_abandoned(forty):
    proc = start(forty, delay=30, grace=0.5)
    time.sleep(1.5)  # the first batch is in flight

    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)

    assert time.monotonic() - started < 10
    assert "grace period over: abandoning the work still in flight" in err
    assert proc.returncode == 128 + signal.SIGTERM
    assert assert_all_sidecars_whole(forty) == 0


def test_a_second_signal_exits_at_once(forty):
    proc = start(forty, delay=30, grace=60)
    time.sleep(1.5)

    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=10)

    assert "second signal: exiting now" in err
    assert proc.returncode == 128 + signal.SIGINT
    assert_all_sidecars_whole(forty)
