#!/usr/bin/env python3
"""Benchmark of the core pipeline with the metadata plugin: cold run, hashing, warm re-run.

Builds synthetic trees of real PNG files (each with AUTOMATIC1111-style generation
parameters, so every image has unique content and a prompt), then prints, in one run:

1. cold ``analyzer run --plugins metadata`` over ``--cold`` images: images/s and peak RSS;
2. hashing throughput of analyzer's hasher (same function, same thread count as a run) as a
   ratio to ``sha256sum`` over the same files;
3. a warm re-run over ``--warm`` already-analysed images, as a ratio to
   ``find ROOT -type f -printf '%s %T@\\n'`` over the same tree (target: at most 4x), and its
   peak RSS (target: under 400 MB).

Every figure comes from this machine, in this process's run; nothing is hard-coded.

    python bench/bench_core.py                       # 20,000 cold, 100,000 warm
    python bench/bench_core.py --cold 2000 --warm 10000 --workdir /tmp/bench
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analyzer.hashing import hash_file


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


def run_child(cmd: list[str], cwd: Path | None = None) -> tuple[float, float, int]:
    """Run ``cmd``; return (wall seconds, peak RSS in MB the analyzer reports, exit code).

    The peak is the analyzer's own ``peak RSS`` summary line (Linux VmHWM): a child's
    ``ru_maxrss`` would include this benchmark process's size from before the exec.
    """
    started = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=cwd, text=True)
    elapsed = time.perf_counter() - started
    found = re.search(r"peak RSS (\d+) MB", proc.stderr)
    if proc.returncode not in (0, 1):
        print(proc.stderr[-2000:], file=sys.stderr)
    return elapsed, float(found.group(1)) if found else float("nan"), proc.returncode


def analyzer_cmd(root: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "analyzer", "run", str(root), "--plugins", "metadata", "--progress", "plain", *extra]


def best_of(n: int, fn):  # type: ignore[no-untyped-def]
    results = [fn() for _ in range(n)]
    return min(results, key=lambda r: r[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cold", type=int, default=20_000, help="images in the cold-run tree")
    parser.add_argument("--warm", type=int, default=100_000, help="images in the warm-run tree")
    parser.add_argument("--per-folder", type=int, default=100, help="images per folder")
    parser.add_argument("--pad-kb", type=int, default=32, help="extra bytes per cold-tree image, in KiB")
    parser.add_argument("--hash-workers", type=int, default=4)
    parser.add_argument("--workdir", type=Path, help="where to build the trees (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the trees afterwards")
    args = parser.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="analyzer-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    cold_root, warm_root = work / "cold", work / "warm"
    for folder in (cold_root, warm_root):
        shutil.rmtree(folder, ignore_errors=True)
    env_note = f"python {sys.version.split()[0]}, {os.cpu_count()} cores"
    print(f"analyzer core benchmark ({env_note}); trees under {work}")

    try:
        t = time.perf_counter()
        size = build_tree(cold_root, args.cold, args.per_folder, args.pad_kb)
        print(f"built cold tree: {args.cold} images, {size / 1e6:.0f} MB in {time.perf_counter() - t:.1f}s")

        # 1. cold run
        seconds, rss, code = run_child(analyzer_cmd(cold_root, "--hash-workers", str(args.hash_workers)))
        print(
            f"cold run:  {args.cold} images in {seconds:.1f}s = {args.cold / seconds:.0f} images/s, "
            f"peak RSS {rss:.0f} MB (exit {code})"
        )

        # 2. hashing throughput against sha256sum, same files, page cache warm for both
        files = sorted(str(p) for p in cold_root.rglob("*.png"))

        def ours() -> tuple[float]:
            started = time.perf_counter()
            with ThreadPoolExecutor(args.hash_workers) as pool:
                for _ in pool.map(hash_file, map(Path, files), chunksize=64):
                    pass
            return (time.perf_counter() - started,)

        def theirs() -> tuple[float]:
            started = time.perf_counter()
            subprocess.run(
                ["xargs", "-0", "-n", "1000", "sha256sum"],
                input="\0".join(files).encode(),
                stdout=subprocess.DEVNULL,
                check=True,
            )
            return (time.perf_counter() - started,)

        (ours_s,), (theirs_s,) = best_of(3, ours), best_of(3, theirs)
        print(
            f"hashing:   analyzer {size / ours_s / 1e6:.0f} MB/s ({len(files) / ours_s:.0f} files/s, "
            f"{args.hash_workers} threads) vs sha256sum {size / theirs_s / 1e6:.0f} MB/s "
            f"(1 process): ratio {theirs_s / ours_s:.2f}x of sha256sum's throughput"
        )
        if not args.keep:
            shutil.rmtree(cold_root)

        # 3. warm re-run over an analysed tree
        t = time.perf_counter()
        build_tree(warm_root, args.warm, args.per_folder, 0)
        print(f"built warm tree: {args.warm} images in {time.perf_counter() - t:.1f}s")
        seconds, rss_first, code = run_child(analyzer_cmd(warm_root, "--hash-workers", str(args.hash_workers)))
        print(
            f"first run of warm tree: {seconds:.1f}s ({args.warm / seconds:.0f} images/s), "
            f"peak RSS {rss_first:.0f} MB (exit {code})"
        )

        find_cmd = ["find", str(warm_root), "-type", "f", "-printf", "%s %T@\\n"]

        def run_find() -> tuple[float]:
            started = time.perf_counter()
            subprocess.run(find_cmd, stdout=subprocess.DEVNULL, check=True)
            return (time.perf_counter() - started,)

        (find_s,) = best_of(3, run_find)
        warm_s, warm_rss, code = best_of(3, lambda: run_child(analyzer_cmd(warm_root)))
        files_in_tree = sum(1 for _ in warm_root.rglob("*"))
        print(
            f"warm run:  {args.warm} images (tree of {files_in_tree} entries incl. sidecars) in {warm_s:.2f}s; "
            f"find -printf: {find_s:.2f}s; ratio {warm_s / find_s:.2f}x (target <= 4x); "
            f"peak RSS {warm_rss:.0f} MB (target < 400 MB) (exit {code})"
        )
        print(f"peak RSS: cold {rss:.0f} MB, first full run {rss_first:.0f} MB, warm {warm_rss:.0f} MB")
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
