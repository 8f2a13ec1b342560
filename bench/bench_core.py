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
   peak RSS (target: under 400 MB);
4. two ``analyzer run --plugins metadata`` processes on one root at once (the second started 0.3 s
   after the first, each with its own ``--log-file``), over ``--concurrent`` images (default: the
   cold size): cold with the same modes, cold with different modes (``prompt,negative`` and
   ``image,parameters``), and warm (both again over the tree the first pair analysed). For each:
   the pair's wall time (start of the first to end of the last) as a ratio to one process over
   the same tree, both exit codes (target 0/0), images whose sidecar lacks a mode either process
   asked for (target 0), stray ``*.tmp`` files (target 0), and duplicated analyses: (image,
   plugin) ``analysed`` records that are in both JSON logs (target 0 on one host; counted per mode
   where the records carry their modes, otherwise only when both processes ran the same modes).

Every figure is the median of ``--repeat`` runs (default 3), each run printed too; each cold
run (analyzer or loop) gets a fresh copy of the same generated images, written back to disk
(``sync``) before the clock starts. Both children are started the same way (this Python, in the
work folder, so no ``.env`` or ``analyzer.toml`` of yours applies), so Python start-up and
imports count for both. Every figure comes from this machine, in this process's run; nothing
is hard-coded.

    python bench/bench_core.py                       # 20,000 cold, 100,000 warm, 3 runs each
    python bench/bench_core.py --cold 5000 --only cold
    python bench/bench_core.py --concurrent 5000 --only concurrent
    python bench/bench_core.py --images 200 --repeat 1   # a quick smoke test
    python bench/bench_core.py --cold 2000 --warm 10000 --workdir /tmp/bench
"""

from __future__ import annotations

import argparse
import json
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
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchlib import secs, timed

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

COLD_TARGET = 650.0  # images/s, analyzer cold run
LOOP_RATIO_TARGET = 0.8  # analyzer throughput / plain loop throughput, cold run
WARM_TARGET = 3.6  # warm re-run time / find -printf time
RSS_TARGET = 400.0  # MB
METADATA_MODES = frozenset({"image", "parameters", "prompt", "negative"})  # MetadataPlugin.modes
SPLIT_MODES = ("prompt,negative", "image,parameters")  # the two processes of the different-modes case
START_GAP = 0.3  # seconds between the starts of the two concurrent processes


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
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = start_child(cmd, cwd)
    _, stderr = proc.communicate()
    elapsed = time.perf_counter() - started
    cpu = cpu_since(before)
    if proc.returncode not in (0, 1):
        print(stderr[-2000:], file=sys.stderr)
        name = " ".join(cmd[2:4]) if cmd[1] == "-m" else "the plain loop"
        raise SystemExit(f"{name} failed (exit {proc.returncode}); no figure from it")
    return Child(elapsed, cpu, peak_rss(stderr), proc.returncode)


def start_child(cmd: list[str], cwd: Path) -> subprocess.Popen[str]:
    """Start ``cmd`` as every child of this benchmark starts: in ``cwd``, with this checkout's code first."""
    path = [str(REPO), str(REPO / "plugins"), os.environ.get("PYTHONPATH")]  # this checkout's code, not another
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, path)))
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=cwd, env=env, text=True)


def cpu_since(before: resource.struct_rusage) -> float:
    """User + system seconds of the children waited for since ``before``."""
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def peak_rss(stderr: str) -> float:
    found = re.search(r"peak RSS (\d+) MB", stderr)
    return float(found.group(1)) if found else float("nan")


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


def cold_runs(args: argparse.Namespace, work: Path, template: Path, count: int, repeat: int) -> Child:
    """The analyzer and the plain loop, alternating, each on a fresh copy; returns the analyzer's medians."""
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
    return ours


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


@dataclass
class Pair:
    """Two analyzer processes over one root: the pair's wall time (start of the first to end of the
    last), their CPU time together, and each one's wall time, exit code and stderr."""

    wall: float
    cpu: float
    walls: list[float]
    codes: list[int]
    stderr: list[str]


@dataclass
class Case:
    """One concurrent run and what it left: ``dup`` is None where duplicates cannot be told apart."""

    pair: Pair
    dup: int | None
    records: list[int]
    missing: int
    images: int
    stray: int


CASES = (  # label, the --modes of each process (None: the plugin's modes), whether it runs on an analysed tree
    ("cold, same modes", (None, None), False),
    ("cold, different modes", SPLIT_MODES, False),
    ("warm, same modes", (None, None), True),
)


def run_pair(cmds: list[list[str]], cwd: Path) -> Pair:
    """Start ``cmds`` ``START_GAP`` seconds apart, each as :func:`run_child` starts one, and wait for all."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    starts: list[float] = []
    ends = [0.0] * len(cmds)
    codes = [0] * len(cmds)
    errs = [""] * len(cmds)

    def finish(i: int, proc: subprocess.Popen[str]) -> None:
        errs[i] = proc.communicate()[1]  # read while it runs: a full stderr pipe would stall the child
        ends[i] = time.perf_counter()
        codes[i] = proc.returncode

    with ThreadPoolExecutor(len(cmds)) as pool:
        waits = []
        for i, cmd in enumerate(cmds):
            if starts:
                time.sleep(max(0.0, starts[0] + i * START_GAP - time.perf_counter()))
            starts.append(time.perf_counter())
            waits.append(pool.submit(finish, i, start_child(cmd, cwd)))
        for wait in waits:
            wait.result()
    walls = [end - start for start, end in zip(starts, ends, strict=True)]
    return Pair(max(ends) - starts[0], cpu_since(before), walls, codes, errs)


def analysed_records(log: Path) -> list[dict[str, Any]]:
    """The ``"event": "analysed"`` records of a JSON log file (a line that does not parse is skipped)."""
    if not log.exists():
        return []
    records = []
    with log.open(encoding="utf-8", errors="replace") as lines:
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("event") == "analysed":
                records.append(record)
    return records


def analysis_keys(records: list[dict[str, Any]], by_mode: bool) -> Counter[tuple[Any, ...]]:
    """(image, plugin) of each record, or (image, plugin, mode) for each of its modes."""
    keys: Counter[tuple[Any, ...]] = Counter()
    for record in records:
        base = (record.get("image"), record.get("plugin"))
        if not by_mode:
            keys[base] += 1
            continue
        modes = record["mode"]
        for mode in [modes] if isinstance(modes, str) else modes:
            keys[(*base, mode)] += 1
    return keys


def duplicated(logs: list[Path], same_modes: bool) -> tuple[int | None, list[int]]:
    """Analyses that are in both logs, and the number of ``analysed`` records of each log.

    Per mode when every record names its modes; otherwise per (image, plugin), which counts
    duplicates only when both processes ran the same modes (else None: they cannot be told apart).
    """
    first, second = (analysed_records(log) for log in logs)
    by_mode = all("mode" in record for record in first + second)
    counts = [len(first), len(second)]
    if not (same_modes or by_mode):
        return None, counts
    a, b = analysis_keys(first, by_mode), analysis_keys(second, by_mode)
    return sum(min(a[key], b[key]) for key in a.keys() & b.keys()), counts


def missing_modes(root: Path, modes: frozenset[str]) -> tuple[int, int]:
    """Images whose metadata sidecar is absent, unreadable or without one of ``modes``; and all images."""
    missing = images = 0
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]  # the index, claims and locks: no images
        for name in names:
            if not name.endswith(".png"):
                continue
            images += 1
            try:
                with open(os.path.join(folder, name + ".metadata.json"), "rb") as sidecar:
                    found = json.load(sidecar).get("analysis") or {}
            except (OSError, ValueError, AttributeError):
                found = {}
            missing += not modes <= found.keys()
    return missing, images


def stray_temps(root: Path) -> int:
    """Files under ``root`` whose names end in ``.tmp`` (index folder included)."""
    found = subprocess.run(["find", str(root), "-name", "*.tmp"], capture_output=True, text=True, check=True)
    return len(found.stdout.splitlines())


def claimed_elsewhere(stderr: str) -> int:
    found = re.search(r"(\d+) items were claimed by another process", stderr)
    return int(found.group(1)) if found else 0


def concurrent_case(
    args: argparse.Namespace, work: Path, root: Path, label: str, modes: tuple[str | None, ...], run: str
) -> Case:
    """One pair over ``root`` as it is, then what it left: sidecars, ``*.tmp`` files, the two logs."""
    logs = [work / "concurrent-logs" / f"{label.replace(', ', '-').replace(' ', '-')}-{n}.jsonl" for n in "ab"]
    for log in logs:
        log.unlink(missing_ok=True)  # the analyzer appends to its log file
    cmds = [
        analyzer_cmd(
            root, "--hash-workers", str(args.hash_workers), "--log-file", str(log), *(("--modes", m) if m else ())
        )
        for log, m in zip(logs, modes, strict=True)
    ]
    pair = run_pair(cmds, work)
    asked = frozenset(mode for m in modes for mode in (m.split(",") if m else METADATA_MODES))
    dup, records = duplicated(logs, same_modes=len(set(modes)) == 1)
    missing, images = missing_modes(root, asked)
    case = Case(pair, dup, records, missing, images, stray_temps(root))
    print(
        f"  run {run}, {label + ':':<22} pair {pair.wall:.2f}s ({' + '.join(f'{w:.2f}s' for w in pair.walls)}), "
        f"{pair.cpu:.2f}s CPU, exit {'/'.join(map(str, pair.codes))}; analysed records "
        f"{' + '.join(map(str, records))}, items claimed by the other "
        f"{'/'.join(str(claimed_elsewhere(e)) for e in pair.stderr)}; missing {missing} of {images} images, "
        f"stray {case.stray}, duplicated {'n/a' if dup is None else dup}"
    )
    for cmd, code, err in zip(cmds, pair.codes, pair.stderr, strict=True):
        if code:
            print(f"    exit {code} of {' '.join(cmd[2:])}:\n{err[-2000:]}", file=sys.stderr)
    return case


def concurrent_runs(args: argparse.Namespace, work: Path, count: int, repeat: int, single_cold: Child | None) -> None:
    """The three cases of CASES ``repeat`` times, each cold pair on a fresh copy; the warm pair runs over
    the tree the same-modes cold pair left, then one process does (the warm single figure). The single
    cold figure is the cold part's when it ran over a tree of this size, else measured here."""
    template, root = work / "concurrent-src", work / "concurrent"
    t = time.perf_counter()
    size = build_tree(template, count, args.per_folder, args.pad_kb)
    print(f"built concurrent tree: {count} images, {size / 1e6:.0f} MB in {time.perf_counter() - t:.1f}s")
    results: dict[str, list[Case]] = {label: [] for label, _, _ in CASES}
    singles: dict[str, list[Child]] = {"cold": [], "warm": []}
    cmd = analyzer_cmd(root, "--hash-workers", str(args.hash_workers))
    for i in range(repeat):
        run = f"{i + 1}/{repeat}"
        if single_cold is None:
            fresh_copy(template, root)
            singles["cold"].append(run_child(cmd, work))
            print(f"  run {run}, {'cold, one process:':<22} {singles['cold'][-1].wall:.2f}s")
        for label, modes, warm in CASES:
            if not warm:
                fresh_copy(template, root)
            results[label].append(concurrent_case(args, work, root, label, modes, run))
            if warm:
                singles["warm"].append(run_child(cmd, work))
                print(f"  run {run}, {'warm, one process:':<22} {singles['warm'][-1].wall:.2f}s (after the pair)")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(template, ignore_errors=True)
    cold_s = single_cold.wall if single_cold is not None else statistics.median(r.wall for r in singles["cold"])
    warm_s = statistics.median(r.wall for r in singles["warm"])
    print_concurrent(count, repeat, results, {False: cold_s, True: warm_s}, single_cold is not None)


def print_concurrent(
    count: int, repeat: int, results: dict[str, list[Case]], single: dict[bool, float], from_cold_part: bool
) -> None:
    print(
        f"concurrent: 2 processes on one root, {count} images, started {START_GAP}s apart; median of {repeat} "
        f"(each cold pair on a fresh copy)"
    )
    print("  case                   pair wall  1 process  ratio  exit  missing  stray  duplicated  runs (pair wall)")
    failed = []
    for label, _, warm in CASES:
        cases = results[label]
        wall = statistics.median(c.pair.wall for c in cases)
        codes = next((c.pair.codes for c in cases if any(c.pair.codes)), cases[0].pair.codes)
        dups = [c.dup for c in cases if c.dup is not None]
        worst = {
            "exit codes": max(abs(code) for c in cases for code in c.pair.codes),
            "missing": max(c.missing for c in cases),
            "stray": max(c.stray for c in cases),
            "duplicated": max(dups, default=0),
        }
        failed += [f"{label}: {name} {value}" for name, value in worst.items() if value]
        print(
            f"  {label:<22} {wall:8.2f}s {single[warm]:9.2f}s {wall / single[warm]:5.2f}x "
            f"{'/'.join(map(str, codes)):>5} {worst['missing']:8} {worst['stray']:6} "
            f"{max(dups) if dups else 'n/a':>11}  {secs([c.pair.wall for c in cases])}"
        )
    source = "the cold part's median, same tree size" if from_cold_part else "measured here, same tree"
    print(
        f"  targets: duplicated 0, exit codes 0/0, missing 0, stray 0 (worst run shown): "
        f"{'met' if not failed else 'NOT met: ' + '; '.join(failed)}. 1 process: cold = {source}; "
        f"warm = one run after each warm pair, same tree"
    )
    if any(c.dup is None for cases in results.values() for c in cases):
        print(
            '  duplicated n/a: the "analysed" log records carry no mode, so with different modes an image in '
            "both logs is expected; duplicates are counted only where both processes ran the same modes"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cold", type=int, help="images in the cold-run tree (default 20,000)")
    parser.add_argument("--warm", type=int, help="images in the warm-run tree (default 100,000)")
    parser.add_argument("--images", type=int, help="every tree at this size (--cold/--warm/--concurrent still win)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; each figure is their median")
    parser.add_argument("--concurrent", type=int, help="images in the concurrent-runs tree (default: the cold size)")
    parser.add_argument("--only", choices=["cold", "hashing", "warm", "concurrent"], help="measure only this part")
    parser.add_argument("--per-folder", type=int, default=100, help="images per folder")
    parser.add_argument("--pad-kb", type=int, default=32, help="extra bytes per cold-tree image, in KiB")
    parser.add_argument("--hash-workers", type=int, default=4)
    parser.add_argument("--workdir", type=Path, help="where to build the trees (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the trees afterwards")
    args = parser.parse_args()
    cold_n = args.cold if args.cold is not None else args.images if args.images is not None else 20_000
    warm_n = args.warm if args.warm is not None else args.images if args.images is not None else 100_000
    repeat = max(1, args.repeat)
    concurrent_n = args.concurrent if args.concurrent is not None else cold_n
    parts = {args.only} if args.only else {"cold", "hashing", "warm", "concurrent"}

    work = (args.workdir or Path(tempfile.mkdtemp(prefix="analyzer-bench-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    cold_root = work / "cold"
    for name in ("cold", "cold-run", "warm", "concurrent", "concurrent-src", "concurrent-logs"):
        shutil.rmtree(work / name, ignore_errors=True)
    env_note = f"python {sys.version.split()[0]}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}"
    print(f"analyzer core benchmark ({env_note}); trees under {work}; median of {repeat} run(s) per figure")
    overrides = sorted(k for k in os.environ if k.startswith("ANALYZER_"))
    if overrides:
        print(f"note: set in the environment, so not the analyzer's defaults: {', '.join(overrides)}")

    try:
        rss = rss_first = warm_rss = float("nan")
        cold: Child | None = None
        if parts & {"cold", "hashing"}:
            t = time.perf_counter()
            size = build_tree(cold_root, cold_n, args.per_folder, args.pad_kb)
            print(f"built cold tree: {cold_n} images, {size / 1e6:.0f} MB in {time.perf_counter() - t:.1f}s")
            if "cold" in parts:
                cold = cold_runs(args, work, cold_root, cold_n, repeat)
                rss = cold.rss
            if "hashing" in parts:
                hashing(args, cold_root, size, repeat)
            if not args.keep:
                shutil.rmtree(cold_root)
        if "warm" in parts:
            rss_first, warm_rss = warm_runs(args, work, warm_n, repeat)
        if {"cold", "warm"} <= parts:
            print(f"peak RSS: cold {rss:.0f} MB, first full run {rss_first:.0f} MB, warm {warm_rss:.0f} MB")
        if "concurrent" in parts:
            concurrent_runs(args, work, concurrent_n, repeat, cold if concurrent_n == cold_n else None)
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
