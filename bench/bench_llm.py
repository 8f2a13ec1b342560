#!/usr/bin/env python3
"""Benchmark of the llm plugin's throughput against a loopback OpenAI-compatible server.

A server in another process answers every chat completion after ``--delay`` seconds.
``analyzer run --plugins llm --modes describe`` then analyses ``--images`` images with
``--in-flight`` requests at once; the wall time is printed as a ratio to the ideal
``images / in_flight * delay`` (target: at most 1.25x), twice:

- in a process that has already imported the analyzer and the openai SDK (as ``analyzer watch``
  has after its first minute, or any run after the first in one process): the throughput;
- as a fresh ``python -m analyzer run`` command, Python start-up and imports included, with those
  start-up costs measured on their own and printed beside it.

Then the same again with one request in ``--rate-limit-every`` answered ``429`` with
``retry-after: 1``: every image must complete, none may be lost, and no error may be stored as a
result.

    python bench/bench_llm.py                  # 200 images, 16 in flight, 200 ms per answer
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def serve(port_queue: Any, delay: float, every: int) -> None:
    """The loopback provider: an asyncio server, so its own latency stays out of the measurement."""
    import asyncio

    from analyzer_llm.testing import Reply, serve_fast

    counter = itertools.count(1)

    def answer(path: str, body: dict[str, Any]) -> Reply:
        if every and next(counter) % every == 0:
            return Reply(status=429, headers={"retry-after": "1"})
        return Reply(text="A synthetic description.", delay=delay)

    asyncio.run(serve_fast("127.0.0.1", 0, answer, port_queue))


def bench_env(base_url: str, in_flight: int) -> dict[str, str]:
    return dict(
        OPENAI_API_KEY="sk-bench",
        ANALYZER_LLM__BASE_URL=base_url + "/v1",
        ANALYZER_LLM__PROVIDER="openai",
        ANALYZER_LLM__REQUESTS_IN_FLIGHT=str(in_flight),
        ANALYZER_LLM__MODEL="bench-model",
        ANALYZER_PROGRESS="plain",
        ANALYZER_LOG_LEVEL="WARNING",
        ANALYZER_HEARTBEAT_INTERVAL="0",
    )


ARGS = ["run", "--plugins", "llm", "--modes", "describe"]


def run_in_process(root: Path, base_url: str, in_flight: int) -> tuple[float, float, int]:
    """The run in a process whose imports are done: what the scheduler and plugin make of the time."""
    import openai  # noqa: F401  (imported before the clock starts, as in a long-lived process)

    from analyzer.cli import main

    os.environ.update(bench_env(base_url, in_flight))
    started, cpu = time.perf_counter(), time.process_time()
    code = main([*ARGS, str(root)])
    return time.perf_counter() - started, time.process_time() - cpu, code


def run_command(root: Path, base_url: str, in_flight: int) -> tuple[float, int]:
    """The whole command a user types, from spawn to exit."""
    env = {**os.environ, **bench_env(base_url, in_flight)}
    started = time.perf_counter()
    code = subprocess.run([sys.executable, "-m", "analyzer", *ARGS, str(root)], env=env, check=False).returncode
    return time.perf_counter() - started, code


def start_up_cost() -> float:
    """Python start-up plus importing the analyzer and the openai SDK, best of three."""
    best = math.inf
    for _ in range(3):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import analyzer.cli, analyzer_llm, openai"], check=True)
        best = min(best, time.perf_counter() - started)
    return best


def check(root: Path, images: int) -> str:
    done = errors = bogus = 0
    for path in root.glob("*.llm.json"):
        doc = json.loads(path.read_text())
        for entry in doc["analysis"].get("describe", {}).values():
            done += 1
            bogus += entry["result"] != "A synthetic description."
        errors += len(doc["errors"].get("describe", {}))
    return f"{done}/{images} completed, {errors} errors, {bogus} results that are not the model's answer"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--in-flight", type=int, default=16)
    parser.add_argument("--delay", type=float, default=0.2)
    parser.add_argument("--rate-limit-every", type=int, default=5)
    args = parser.parse_args()
    from PIL import Image

    ideal = args.images / args.in_flight * args.delay
    print(
        f"llm benchmark: {args.images} images, {args.in_flight} in flight, {args.delay * 1000:.0f} ms per answer; "
        f"ideal {ideal:.2f}s"
    )
    scenarios = (
        (0, "all answered, imports done", False),
        (0, "all answered, whole command", True),
        (args.rate_limit_every, f"1 in {args.rate_limit_every} gets 429, imports done", False),
    )
    for every, label, command in scenarios:
        if every == 0 and "429" in label:
            continue  # --rate-limit-every 0: no rate-limited scenario
        ports: Any = multiprocessing.Queue()
        server = multiprocessing.Process(target=serve, args=(ports, args.delay, every), daemon=True)
        server.start()
        base_url = ports.get(timeout=30)
        with tempfile.TemporaryDirectory(prefix="analyzer-bench-llm-") as folder:
            root = Path(folder) / "imgs"
            root.mkdir()
            for i in range(args.images):
                Image.new("RGB", (64, 48), (i % 256, 80, 160)).save(root / f"{i:04d}.png")
            if command:
                seconds, code = run_command(root, base_url, args.in_flight)
                fixed = start_up_cost()
                rest = (seconds - fixed) / ideal
                extra = f"; of which {fixed:.2f}s is Python start-up and imports (without them {rest:.2f}x)"
            else:
                seconds, cpu, code = run_in_process(root, base_url, args.in_flight)
                extra = f"; {cpu:.2f}s of analyzer CPU"
            print(
                f"{label}: {seconds:.2f}s = {seconds / ideal:.2f}x the ideal"
                + (" (target <= 1.25x)" if not every else "")
                + f"{extra}; exit {code}; {check(root, args.images)}"
            )
        server.terminate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
