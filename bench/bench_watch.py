#!/usr/bin/env python3
"""Soak benchmark of ``analyzer watch`` with the metadata plugin.

A writer process drops ``--images`` PNGs (with Stable Diffusion parameters) into nested folders
in ``--bursts`` bursts, from 8 threads at once: half written slowly in chunks, a fifth finished
under a temporary name elsewhere and moved in, a tenth saved again (same content) a moment after
they were complete, the rest written at once. ``analyzer watch`` runs with its default settings
(quiet period 2 s) and a JSON log file; afterwards the script prints

- files analysed exactly once (must be all) and files analysed twice or half-written (must be 0),
  from the log's ``analysed`` records and the sidecars' hashes against the writer's final content;
- the median and 95th percentile latency from the moment a file was complete to its sidecar;
- the daemon's peak RSS.

Then the same again with a SIGTERM in the middle of the bursts, more bursts written while the
daemon is down, and a restart.

    python bench/bench_watch.py                    # 2,000 images, 10 bursts, both runs
    python bench/bench_watch.py --images 400 --bursts 4
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import multiprocessing
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any


def png(seed: int) -> bytes:
    """A 64x64 noise PNG (~12 KB) with AUTOMATIC1111-style parameters."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    rng = random.Random(seed)
    info = PngInfo()
    info.add_text(
        "parameters",
        f"a castle on a hill, style {seed}\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, Seed: {seed}",
    )
    buffer = io.BytesIO()
    Image.frombytes("RGB", (64, 64), rng.randbytes(64 * 64 * 3)).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def write_one(root: Path, staging: Path, rel: str, seed: int, kind: str) -> tuple[str, float]:
    """Write one image the way ``kind`` says; returns its final sha256 and when it was complete."""
    data = png(seed)
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "chunks":  # a generator writing slowly: 4 chunks, 0.1 s apart
        step = len(data) // 4 + 1
        with open(path, "wb") as handle:
            for i in range(0, len(data), step):
                handle.write(data[i : i + step])
                handle.flush()
                time.sleep(0.1)
    elif kind == "moved":
        tmp = staging / f"{seed}.png"
        tmp.write_bytes(data)
        os.rename(tmp, path)
    else:
        path.write_bytes(data)
    complete = time.time()
    if kind == "resaved":  # the same picture saved again a moment later
        time.sleep(0.3)
        path.write_bytes(data)
    return "sha256:" + hashlib.sha256(data).hexdigest(), complete


def writer(root: Path, staging: Path, images: int, bursts: int, out: Any) -> None:
    """The writer process: bursts of images from 8 threads; reports each file's hash and completion time."""
    rng = random.Random(7)
    kinds = ["chunks"] * 10 + ["moved"] * 4 + ["resaved"] * 2 + ["once"] * 4
    per_burst = images // bursts
    index = 0
    for burst in range(bursts):
        jobs = []
        for _ in range(per_burst if burst < bursts - 1 else images - index):
            rel = f"day{index % 5}/batch{index % 7}/img{index:05d}.png"
            jobs.append((rel, index, rng.choice(kinds)))
            index += 1

        def work(part: list[tuple[str, int, str]]) -> None:
            for rel, seed, kind in part:
                digest, complete = write_one(root, staging, rel, seed, kind)
                out.put(("file", rel, digest, complete, kind))

        threads = [threading.Thread(target=work, args=(jobs[k::8],)) for k in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        time.sleep(1.0)  # the gap between bursts
    out.put(("done", index))


def start_daemon(root: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANALYZER_")}
    env.update(ANALYZER_PROGRESS="plain", ANALYZER_HEARTBEAT_INTERVAL="15", ANALYZER_LOG_LEVEL="INFO")
    proc = subprocess.Popen(
        [sys.executable, "-m", "analyzer", "watch", str(root), "--plugins", "metadata", "--log-file", str(log)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    deadline = time.monotonic() + 60
    while not (log.exists() and "following changes" in log.read_text()):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"analyzer watch did not start (exit {proc.returncode}); see {log}")
        time.sleep(0.05)
    return proc


def records(log: Path) -> list[dict[str, Any]]:
    out = []
    for line in log.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def soak(images: int, bursts: int, restart: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="analyzer-bench-watch-") as folder:
        base = Path(folder)
        root, staging, log = base / "imgs", base / "staging", base / "watch.jsonl"
        root.mkdir()
        staging.mkdir()
        proc = start_daemon(root, log)
        out: Any = multiprocessing.Queue()
        proc_writer = multiprocessing.Process(target=writer, args=(root, staging, images, bursts, out))
        started = time.monotonic()
        proc_writer.start()
        files: dict[str, tuple[str, float, str]] = {}
        down: tuple[float, float] | None = None
        while True:
            message = out.get(timeout=600)
            if message[0] == "done":
                break
            files[message[1]] = (message[2], message[3], message[4])
            if restart and down is None and len(files) >= images // 2:
                # SIGTERM in the middle of a burst: the writer goes on, files are half-written, work in flight
                down_at = time.time()
                proc.send_signal(signal.SIGTERM)
                code = proc.wait(timeout=120)
                print(f"  SIGTERM after {len(files)} files: stopped in {time.time() - down_at:.1f}s, exit {code}")
                time.sleep(5.0)  # files keep landing while it is down
                proc = start_daemon(root, log)
                down = (down_at, time.time())
                print(f"  restarted after {down[1] - down[0]:.1f}s")
        proc_writer.join()
        wrote = time.monotonic() - started
        deadline = time.monotonic() + 300
        while True:
            done = {r["image"] for r in records(log) if r.get("event") == "analysed"}
            if len(done) >= len(files) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        time.sleep(4.0)  # time for any wrong second analysis to happen
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        report(root, log, files, down, wrote)


def report(
    root: Path,
    log: Path,
    files: dict[str, tuple[str, float, str]],
    down: tuple[float, float] | None,
    wrote: float,
) -> None:
    peaks: list[str] = []
    analysed: Counter[str] = Counter()
    at: dict[str, float] = {}
    hashes: dict[str, str] = {}
    for r in records(log):
        if r.get("event") == "analysed":
            analysed[r["image"]] += 1
            at.setdefault(r["image"], datetime.fromisoformat(r["time"]).timestamp())
            hashes[r["image"]] = r.get("hash", "")
        elif "peak RSS" in r["message"]:
            peaks.append(r["message"])
    once = sum(1 for rel in files if analysed[rel] == 1)
    twice = sum(1 for rel in files if analysed[rel] > 1)
    missing = sum(1 for rel in files if analysed[rel] == 0)
    half = 0
    for rel, (digest, _, _) in files.items():
        sidecar = root / f"{rel}.metadata.json"
        try:
            doc = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            half += 1
            continue
        if doc["file_info"]["hash"] != digest or hashes.get(rel, digest) != digest:
            half += 1
    # files complete within a quiet period (2 s) before the stop, or while it was down, wait for the restart
    hit = (down[0] - 2.0, down[1]) if down else None
    latencies = []
    for rel, (_, complete, _) in files.items():
        if rel in at and not (hit and hit[0] <= complete <= hit[1]):
            latencies.append(at[rel] - complete)
    latencies.sort()
    kinds = Counter(kind for _, _, kind in files.values())
    print(f"  {len(files)} files written in {wrote:.0f}s ({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))})")
    print(f"  analysed exactly once: {once}/{len(files)}  (twice or more: {twice}, never: {missing})")
    print(f"  half-written or wrong content analysed: {half}")
    if latencies:
        p95 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.95))]
        print(
            f"  latency from complete file to sidecar: median {statistics.median(latencies):.2f}s, "
            f"p95 {p95:.2f}s, max {latencies[-1]:.2f}s"
            + (" (files that waited for the restart left out)" if down else "")
        )
    if hit and down:
        waited = [rel for rel, (_, complete, _) in files.items() if hit[0] <= complete <= hit[1]]
        picked = [at[rel] - down[1] for rel in waited if rel in at]
        print(
            f"  complete just before the stop or while it was down: {len(waited)}; analysed after the restart: "
            f"{len(picked)} (the last {max(picked, default=0):.1f}s after it)"
        )
    for line in peaks:
        print(f"  daemon: {line.strip()}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--bursts", type=int, default=10)
    parser.add_argument("--only", choices=["plain", "restart"], help="run one of the two soaks")
    args = parser.parse_args()
    for restart in (False, True):
        if args.only and args.only != ("restart" if restart else "plain"):
            continue
        extra = ", SIGTERM + restart in the middle" if restart else ""
        print(f"analyzer watch soak: {args.images} images in {args.bursts} bursts{extra}")
        soak(args.images, args.bursts, restart)
    return 0


if __name__ == "__main__":
    sys.exit(main())
