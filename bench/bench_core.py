#!/usr/bin/env python3
"""Benchmark of the core pipeline with the metadata plugin: cold run, hashing, warm re-run.

Builds synthetic trees of real PNG files (each with AUTOMATIC1111-style generation
parameters, so every image has unique content and a prompt), then prints, in one run:

1. cold ``analyzer run --plugins metadata`` over ``--cold`` images, at its defaults (hashing,
   fsynced atomic writes), side by side with the plain loop a user would write by hand over
   the same files: one process, single-threaded, for each image a Pillow decode, sd-parsers
   and one ``<image>.loop.json`` written (no hashing, no fsync, no skipping). Wall time, CPU
   time (user + system of the child), images/s and peak RSS of both, and the analyzer's
   throughput as a ratio to the loop's (target: at least 0.8x; and at least 650 images/s);
2. hashing throughput of analyzer's hasher (same function, same thread count as a run) as a
   ratio to ``sha256sum`` over the same files;
3. a warm re-run over ``--warm`` already-analysed images, as a ratio to
   ``find ROOT -type f -printf '%s %T@\\n'`` over the same tree (target: at most 3.6x), and its
   peak RSS (target: under 400 MB).

Every figure is the median of ``--repeat`` runs (default 3), each run printed too; each cold
run (analyzer or loop) gets a fresh copy of the same generated images, written back to disk
(``sync``) before the clock starts. Both children are started the same way (this Python, in the
work folder, so no ``.env`` or ``analyzer.toml`` of yours applies), so Python start-up and
imports count for both. Every figure comes from this machine, in this process's run; nothing
is hard-coded.

    python bench/bench_core.py                       # 20,000 cold, 100,000 warm, 3 runs each
    python bench/bench_core.py --cold 5000 --only cold
    python bench/bench_core.py --images 200 --repeat 1   # a quick smoke test
    python bench/bench_core.py --cold 2000 --warm 10000 --workdir /tmp/bench
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

COLD_TARGET = 650.0  # images/s, analyzer cold run
LOOP_RATIO_TARGET = 0.8  # analyzer throughput / plain loop throughput, cold run
WARM_TARGET = 3.6  # warm re-run time / find -printf time
RSS_TARGET = 400.0  # MB


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(index: int, pad: bytes) -> bytes:
    """An 8x8 RGB PNG with A1111 parameters naming ``index``; ``pad`` makes it bigger."""
    width = height = 8
    raw = b"".join(b"\0" + bytes((index * 7 + y) % 256 for _ in range(width * 3)) for y in range(height))
    params = (
        f"portrait of subject {index % 5000}, detailed, style {index % 37}\n"
        f"Negative prompt: blurry, lowres {index % 11}\n"
        f"Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: {index}, Size: 8x8, Model: bench"
    ).encode()
    chunks = [
        _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)),
        _chunk(b"tEXt", b"parameters\0" + params),
    ]
    if pad:
        chunks.append(_chunk(b"biNd", pad))  # an ancillary chunk decoders skip
    chunks += [_chunk(b"IDAT", zlib.compress(raw)), _chunk(b"IEND", b"")]
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


def build_tree(root: Path, count: int, per_folder: int, pad_kb: int) -> int:
    pad = os.urandom(pad_kb * 1024) if pad_kb else b""
    total = 0
    for i in range(count):
        folder = root / f"set{i // (per_folder * 50):03d}" / f"batch{i // per_folder:05d}"
        if i % per_folder == 0:
            folder.mkdir(parents=True, exist_ok=True)
        data = _png(i, pad)
        (folder / f"{i:07d}-image.png").write_bytes(data)
        total += len(data)
    return total


def fresh_copy(template: Path, dest: Path) -> None:
    """``dest`` as a new copy of ``template``, written back to disk so no writeback lands in a timed run."""
    shutil.rmtree(dest, ignore_errors=True)
    subprocess.run(["cp", "-a", str(template), str(dest)], check=True)
    os.sync()


# The loop a user would write by hand: what the metadata plugin computes (plugins/analyzer_metadata:
# a full Pillow decode, the image facts, sd-parsers' ParserManager().parse and the same parameter
# fields), one JSON file per image, nothing else.
LOOP = r"""
import json, os, sys
from PIL import Image
from sd_parsers import ParserManager

EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")

def plain(value):
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [plain(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)

def parameters(info):
    samplers = list(info.samplers)
    first = samplers[0] if samplers else None
    params = dict(first.parameters) if first is not None else {}
    model = first.model if first is not None else None
    prompts = [str(p) for p in info.prompts]
    negatives = [str(p) for p in info.negative_prompts]
    return plain({
        "generator": info.generator.name,
        "prompt": ", ".join(prompts) or None,
        "negative_prompt": ", ".join(negatives) or None,
        "prompts": prompts,
        "negative_prompts": negatives,
        "seed": params.pop("seed", None),
        "steps": params.pop("steps", None) or info.metadata.get("steps"),
        "sampler": first.name if first is not None else None,
        "cfg_scale": params.pop("cfg_scale", None),
        "model": model.name if model is not None else None,
        "model_hash": model.hash if model is not None else None,
        "sampler_parameters": params,
        "samplers": [{"name": s.name, "parameters": s.parameters, "model": str(s.model) if s.model else None}
                     for s in samplers],
        "extra": info.metadata,
    })

count = 0
for folder, _, names in os.walk(sys.argv[1]):
    for name in names:
        if not name.lower().endswith(EXTENSIONS):
            continue
        path = os.path.join(folder, name)
        with Image.open(path) as image:
            image.load()
            facts = {"format": image.format, "width": image.width, "height": image.height,
                     "mode": image.mode, "frames": getattr(image, "n_frames", 1)}
            info = ParserManager().parse(image)
        doc = {"file": name, "image": facts, "parameters": parameters(info) if info is not None else None}
        with open(path + ".loop.json", "w", encoding="utf-8") as out:
            out.write(json.dumps(doc, ensure_ascii=False))
        count += 1

with open("/proc/self/status") as status:
    peak = next((int(line.split()[1]) for line in status if line.startswith("VmHWM:")), 0)
print(f"loop: {count} images, peak RSS {peak / 1e3:.0f} MB", file=sys.stderr)
"""


@dataclass
class Child:
    wall: float
    cpu: float
    rss: float
    code: int


def run_child(cmd: list[str], cwd: Path) -> Child:
    """Run ``cmd``; return its wall and CPU seconds, the peak RSS in MB it reports, its exit code.

    CPU is the user + system time of the child (``getrusage(RUSAGE_CHILDREN)`` before and after).
    The peak is the child's own ``peak RSS`` line (Linux VmHWM): a child's ``ru_maxrss`` would
    include this benchmark process's size from before the exec.
    """
    path = [str(REPO), str(REPO / "plugins"), os.environ.get("PYTHONPATH")]  # this checkout's code, not another
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, path)))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=cwd, env=env, text=True)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    found = re.search(r"peak RSS (\d+) MB", proc.stderr)
    if proc.returncode not in (0, 1):
        print(proc.stderr[-2000:], file=sys.stderr)
        name = " ".join(cmd[2:4]) if cmd[1] == "-m" else "the plain loop"
        raise SystemExit(f"{name} failed (exit {proc.returncode}); no figure from it")
    return Child(elapsed, cpu, float(found.group(1)) if found else float("nan"), proc.returncode)


def analyzer_cmd(root: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "analyzer", "run", str(root), "--plugins", "metadata", "--progress", "plain", *extra]


def loop_cmd(root: Path) -> list[str]:
    return [sys.executable, "-c", LOOP, str(root)]


def count_files(root: Path, suffix: str) -> int:
    return sum(1 for _, _, names in os.walk(root) for name in names if name.endswith(suffix))


def median_of(runs: list[Child]) -> Child:
    return Child(
        statistics.median(r.wall for r in runs),
        statistics.median(r.cpu for r in runs),
        statistics.median(r.rss for r in runs),
        max(r.code for r in runs),
    )


def timed(n: int, fn: Callable[[], object]) -> list[float]:
    """Seconds of each of ``n`` calls of ``fn``."""
    out = []
    for _ in range(n):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


def secs(values: list[float]) -> str:
    return " ".join(f"{v:.2f}" for v in values) + " s"


def cold_runs(args: argparse.Namespace, work: Path, template: Path, count: int, repeat: int) -> float:
    """The analyzer and the plain loop, alternating, each on a fresh copy; returns the median peak RSS."""
    run_root = work / "cold-run"
    ours_runs: list[Child] = []
    loop_runs: list[Child] = []
    for i in range(repeat):
        fresh_copy(template, run_root)
        run = run_child(analyzer_cmd(run_root, "--hash-workers", str(args.hash_workers)), work)
        written = count_files(run_root, ".metadata.json")
        ours_runs.append(run)
        print(
            f"  cold run {i + 1}/{repeat}, analyzer:   {run.wall:.2f}s wall, {run.cpu:.2f}s CPU = "
            f"{count / run.wall:.0f} images/s, peak RSS {run.rss:.0f} MB, {written} sidecars (exit {run.code})"
        )
        fresh_copy(template, run_root)
        loop = run_child(loop_cmd(run_root), work)
        written = count_files(run_root, ".loop.json")
        loop_runs.append(loop)
        print(
            f"  cold run {i + 1}/{repeat}, plain loop: {loop.wall:.2f}s wall, {loop.cpu:.2f}s CPU = "
            f"{count / loop.wall:.0f} images/s, peak RSS {loop.rss:.0f} MB, {written} JSON files "
            f"(exit {loop.code}); analyzer/loop throughput {loop.wall / run.wall:.2f}x"
        )
    shutil.rmtree(run_root, ignore_errors=True)
    ours, loop = median_of(ours_runs), median_of(loop_runs)
    print(f"cold run:  {count} images, median of {repeat}, fresh copy each run")
    print("              wall      CPU  images/s  peak RSS  runs (wall)")
    for label, m, runs in (("analyzer", ours, ours_runs), ("plain loop", loop, loop_runs)):
        print(
            f"  {label:<10} {m.wall:6.2f}s {m.cpu:7.2f}s {count / m.wall:9.0f} {m.rss:6.0f} MB  "
            f"{secs([r.wall for r in runs])}"
        )
    print(
        f"  analyzer {count / ours.wall:.0f} images/s (target >= {COLD_TARGET:.0f}); "
        f"{loop.wall / ours.wall:.2f}x the plain loop's throughput (target >= {LOOP_RATIO_TARGET}x); "
        f"CPU {ours.cpu / loop.cpu:.2f}x the loop's (exit {ours.code}, loop exit {loop.code})"
    )
    return ours.rss


def hashing(args: argparse.Namespace, template: Path, size: int, repeat: int) -> None:
    """Analyzer's hasher against sha256sum, same files, page cache warm for both."""
    from analyzer.hashing import hash_file  # here, so --help works whatever state the package is in

    files = sorted(str(p) for p in template.rglob("*.png"))

    def ours() -> None:
        with ThreadPoolExecutor(args.hash_workers) as pool:
            for _ in pool.map(hash_file, map(Path, files), chunksize=64):
                pass

    def theirs() -> None:
        subprocess.run(
            ["xargs", "-0", "-n", "1000", "sha256sum"],
            input="\0".join(files).encode(),
            stdout=subprocess.DEVNULL,
            check=True,
        )

    ours_all, theirs_all = [], []
    for _ in range(repeat):  # alternating, so drift on a shared machine hits both
        ours_all += timed(1, ours)
        theirs_all += timed(1, theirs)
    ours_s, theirs_s = statistics.median(ours_all), statistics.median(theirs_all)
    print(
        f"hashing:   analyzer {size / ours_s / 1e6:.0f} MB/s ({len(files) / ours_s:.0f} files/s, "
        f"{args.hash_workers} threads) vs sha256sum {size / theirs_s / 1e6:.0f} MB/s "
        f"(1 process): ratio {theirs_s / ours_s:.2f}x of sha256sum's throughput "
        f"(median of {repeat}; analyzer {secs(ours_all)}, sha256sum {secs(theirs_all)})"
    )


def warm_runs(args: argparse.Namespace, work: Path, count: int, repeat: int) -> tuple[float, float]:
    """First run over a new tree, then re-runs against find; returns the two peak RSS figures."""
    warm_root = work / "warm"
    t = time.perf_counter()
    build_tree(warm_root, count, args.per_folder, 0)
    print(f"built warm tree: {count} images in {time.perf_counter() - t:.1f}s")
    first = run_child(analyzer_cmd(warm_root, "--hash-workers", str(args.hash_workers)), work)
    print(
        f"first run of warm tree (1 run: it prepares the tree): {first.wall:.1f}s "
        f"({count / first.wall:.0f} images/s), {first.cpu:.1f}s CPU, peak RSS {first.rss:.0f} MB "
        f"(exit {first.code})"
    )
    find_cmd = ["find", str(warm_root), "-type", "f", "-printf", "%s %T@\\n"]
    find_all: list[float] = []
    runs: list[Child] = []
    for _ in range(repeat):  # alternating, so drift on a shared machine hits both
        find_all += timed(1, lambda: subprocess.run(find_cmd, stdout=subprocess.DEVNULL, check=True))
        runs.append(run_child(analyzer_cmd(warm_root), work))
    find_s, warm = statistics.median(find_all), median_of(runs)
    files_in_tree = sum(1 for _ in warm_root.rglob("*"))
    print(
        f"warm run:  {count} images (tree of {files_in_tree} entries incl. sidecars) in {warm.wall:.2f}s "
        f"({warm.cpu:.2f}s CPU); find -printf: {find_s:.2f}s; ratio {warm.wall / find_s:.2f}x "
        f"(target <= {WARM_TARGET}x); peak RSS {warm.rss:.0f} MB (target < {RSS_TARGET:.0f} MB) "
        f"(exit {warm.code}); median of {repeat}: analyzer {secs([r.wall for r in runs])}, find {secs(find_all)}"
    )
    return first.rss, warm.rss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cold", type=int, help="images in the cold-run tree (default 20,000)")
    parser.add_argument("--warm", type=int, help="images in the warm-run tree (default 100,000)")
    parser.add_argument("--images", type=int, help="both trees at this size (--cold/--warm still win)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; each figure is their median")
    parser.add_argument("--only", choices=["cold", "hashing", "warm"], help="measure only this part")
    parser.add_argument("--per-folder", type=int, default=100, help="images per folder")
    parser.add_argument("--pad-kb", type=int, default=32, help="extra bytes per cold-tree image, in KiB")
    parser.add_argument("--hash-workers", type=int, default=4)
    parser.add_argument("--workdir", type=Path, help="where to build the trees (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the trees afterwards")
    args = parser.parse_args()
    cold_n = args.cold if args.cold is not None else args.images if args.images is not None else 20_000
    warm_n = args.warm if args.warm is not None else args.images if args.images is not None else 100_000
    repeat = max(1, args.repeat)
    parts = {args.only} if args.only else {"cold", "hashing", "warm"}

    work = (args.workdir or Path(tempfile.mkdtemp(prefix="analyzer-bench-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    cold_root = work / "cold"
    for folder in (cold_root, work / "cold-run", work / "warm"):
        shutil.rmtree(folder, ignore_errors=True)
    env_note = f"python {sys.version.split()[0]}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}"
    print(f"analyzer core benchmark ({env_note}); trees under {work}; median of {repeat} run(s) per figure")
    overrides = sorted(k for k in os.environ if k.startswith("ANALYZER_"))
    if overrides:
        print(f"note: set in the environment, so not the analyzer's defaults: {', '.join(overrides)}")

    try:
        rss = rss_first = warm_rss = float("nan")
        if parts & {"cold", "hashing"}:
            t = time.perf_counter()
            size = build_tree(cold_root, cold_n, args.per_folder, args.pad_kb)
            print(f"built cold tree: {cold_n} images, {size / 1e6:.0f} MB in {time.perf_counter() - t:.1f}s")
            if "cold" in parts:
                rss = cold_runs(args, work, cold_root, cold_n, repeat)
            if "hashing" in parts:
                hashing(args, cold_root, size, repeat)
            if not args.keep:
                shutil.rmtree(cold_root)
        if "warm" in parts:
            rss_first, warm_rss = warm_runs(args, work, warm_n, repeat)
        if {"cold", "warm"} <= parts:
            print(f"peak RSS: cold {rss:.0f} MB, first full run {rss_first:.0f} MB, warm {warm_rss:.0f} MB")
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
