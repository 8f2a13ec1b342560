#!/usr/bin/env python3
"""Benchmark of ``analyzer export``: a first export, a re-export after 1% changed, peak memory.

The input is built first (timed, but not part of the measurements) and kept in ``--workdir``
for the next run: ``--images`` (100,000) real 16x16 PNG files in subfolders of 1,000, each a
solid random colour with AUTOMATIC1111 generation parameters in a ``parameters`` text chunk
(so ``metadata.prompt`` is each image's prompt); every 100th image is a near-duplicate of the
one before it (the same colour, one pixel off by one: another content hash, nearly the same
embedding), 1% of the images. The tree is analysed for real: ``analyzer run DIR --plugins
metadata`` in a subprocess, then ``analyzer classify DIR --labels red,green,blue --name
colours`` through ``analyzer.cli.main`` in this process, with the test suite's deterministic
embedder ``analyzer_classify.testing.ColourEmbedder`` preloaded (``ANALYZER_CLASSIFY__MODEL=
colour/test``), which stores each image's embedding (its mean colour, 3 dimensions). Those would
make every image one duplicate group (in 3 dimensions most colours are look-alikes), so for the
near-duplicate search a random unit vector of ``--dims`` (512) dimensions is stored per content
hash under the model ``bench/random-512`` (a planted near-duplicate's at cosine 0.98 to its
original's, as real embeddings of look-alikes are), and the export reads those (``--embeddings``)
at its default threshold, 0.95 (``--dims 0``: the colour embedder's own). Then, every figure
measured here, in this run (nothing hard-coded):

1. **first export**: ``analyzer export DIR --to OUT --layout splits --class classify.colours
   --caption "mytoken, {metadata.prompt}" --link hard`` (hard links, train/val/test with
   duplicate groups from the stored embeddings, captions, every table) in a fresh subprocess
   into an empty OUT, wall time, against ``cp -al DIR OUT2`` of the same tree (sidecars and the
   state folder included) in a subprocess (target: at most 3x). Printed apart: the near-duplicate
   search, ``analyzer.export.splits.duplicate_groups`` timed in this process on the hashes the
   export wrote to its manifest and their stored vectors (``EmbeddingStore``), with the duplicate
   groups it finds and whether each planted pair is in one group.
2. **re-export after 1% changed**: the pixels of 1% of the images are rewritten (a new colour, so
   new content hashes), ``analyzer run`` and ``analyzer classify`` analyse them as above (not
   timed), and the same export runs again into the same OUT (target: at most 10% of the first
   export's time). The manifest before and after must give every unchanged image the same split.
   Printed apart: ``analyzer status DIR``, the walk every command does (each file stat'ed and
   compared with the index), which a re-export cannot do without.
3. **floors**, beside the targets: the first export's own hard links and caption files made by a
   bare loop in 4 threads (``place_bare``, timed after each ``cp -al``, against it), and Python's start with the
   export's modules imported plus a bare ``os.scandir``/stat walk of the tree, against what a
   re-export could take were the first export at its target (10% of 3x ``cp -al``).
4. **peak RSS** of each export subprocess (target: under 400 MB), from ``/usr/bin/time -v``
   (or, without it, a small Python wrapper's ``getrusage(RUSAGE_CHILDREN).ru_maxrss``): the peak
   of the export process itself, not of this benchmark (which holds torch).

Every child runs in an empty working folder with this checkout's code first on ``PYTHONPATH``,
and no ``ANALYZER_`` variable of yours applies; before each timed run the page cache's dirty
pages are written back (``sync``). Each figure is the median of ``--repeat`` runs (default 3;
each run printed too): each first export into an empty OUT, alternating with ``cp -al``, and each
re-export after another 1% changed (peak RSS: the highest run).
torch and numpy versions, cores and the load average before and after are printed (other work
may share the machine).

    python bench/bench_export.py                          # 100,000 images
    python bench/bench_export.py --quick                  # a smoke run: 500 images, 1 run
    python bench/bench_export.py --images 20000 --repeat 3
    python bench/bench_export.py --workdir /tmp/bench-export   # keep the analysed tree, reuse it

How long, measured on 2 shared cores: building and analysing 100,000 images about 6 minutes (once,
with ``--workdir``), the measurements about 6 more per ``--repeat`` (25 minutes in all at the
defaults); ``--quick``, under half a minute.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchlib import Report, Row, note, secs, timed

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "plugins")]  # this checkout's code, not another

MODEL_ID = "colour/test"  # ColourEmbedder's model id
DIMS = 512  # --dims: the stored vectors the near-duplicate search reads (0: the colour embedder's own, 3)
LOOK_ALIKE = 0.98  # cosine of a planted near-duplicate's vector to its original's
LABELS = "red,green,blue"
SET_NAME = "colours"
CAPTION = "mytoken, {metadata.prompt}"
SIZE = 16  # pixels per side
PER_FOLDER = 1000
DUPLICATE_EVERY = 100  # image i with i % 100 == 99 is a near-duplicate of image i - 1: 1% of images
CHANGE_EVERY = 100  # image i with i % 100 == CHANGE_SLOT is rewritten before each re-export: 1%
CHANGE_SLOT = 50
RATIO_TARGET = 3.0  # first export / cp -al
REEXPORT_TARGET = 0.10  # re-export / first export
RSS_TARGET = 400.0  # MB (10^6 bytes)
TIME = Path("/usr/bin/time")
RSS_WRAPPER = (
    "import resource, subprocess, sys\n"
    "code = subprocess.call(sys.argv[1:])\n"
    "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
    "print(f'Maximum resident set size (kbytes): {peak}', file=sys.stderr)\n"
    "sys.exit(code)\n"
)


# -- images ---------------------------------------------------------------------------------------
def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def colour(index: int, generation: int) -> tuple[int, int, int]:
    """Image ``index``'s colour in ``generation`` (0: as built; each re-export's changes: the next)."""
    r, g, b = hashlib.sha256(f"{index}:{generation}".encode()).digest()[:3]
    return r, g, b


def is_duplicate(index: int) -> bool:
    return index % DUPLICATE_EVERY == DUPLICATE_EVERY - 1


def is_changed(index: int) -> bool:
    return index % CHANGE_EVERY == CHANGE_SLOT


def image_png(index: int, generation: int = 0) -> bytes:
    """A 16x16 RGB PNG of one colour with A1111 parameters; a near-duplicate has its original's
    colour (the image before it, never changed) with one pixel off by one."""
    base = index - 1 if is_duplicate(index) else index
    rgb = colour(base, 0 if is_duplicate(index) else generation)
    row = bytes(rgb) * SIZE
    rows = [row] * SIZE
    if is_duplicate(index):
        first = rgb[0] + 1 if rgb[0] < 255 else rgb[0] - 1
        rows[0] = bytes((first, rgb[1], rgb[2])) + row[3:]
    raw = b"".join(b"\0" + r for r in rows)
    params = (
        f"portrait of subject {base}, detailed, style {base % 37}\n"
        f"Negative prompt: blurry, lowres {index % 11}\n"
        f"Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: {index}, Size: {SIZE}x{SIZE}, Model: bench"
    ).encode()
    chunks = [
        _chunk(b"IHDR", struct.pack(">IIBBBBB", SIZE, SIZE, 8, 2, 0, 0, 0)),
        _chunk(b"tEXt", b"parameters\0" + params),
        _chunk(b"IDAT", zlib.compress(raw)),
        _chunk(b"IEND", b""),
    ]
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


def image_path(root: Path, index: int) -> Path:
    return root / f"batch{index // PER_FOLDER:04d}" / f"{index:07d}.png"


def index_of(path: str) -> int:
    return int(Path(path).stem)


def build_images(root: Path, count: int) -> int:
    """``count`` images under ``root``: bytes written."""
    shutil.rmtree(root, ignore_errors=True)
    total = 0
    for i in range(count):
        path = image_path(root, i)
        if i % PER_FOLDER == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
        data = image_png(i)
        path.write_bytes(data)
        total += len(data)
    return total


# -- state of the work folder ------------------------------------------------------------------------
@dataclass
class State:
    """What the work folder holds, so that ``--workdir`` reuses it (``state.json``)."""

    images: int = 0
    generation: int = 0
    """How many times the changed 1% were rewritten."""
    analysed: bool = False

    @staticmethod
    def load(path: Path) -> State:
        try:
            data = json.loads(path.read_text())
            return State(int(data["images"]), int(data["generation"]), bool(data["analysed"]))
        except (OSError, ValueError, KeyError, TypeError):
            return State()

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.__dict__))


# -- children ---------------------------------------------------------------------------------------
@dataclass
class Child:
    wall: float
    rss: float
    """Peak RSS in MB (10^6 bytes); NaN when not measured."""
    code: int
    stdout: str
    stderr: str


def child_env() -> dict[str, str]:
    path = [str(REPO), str(REPO / "plugins"), os.environ.get("PYTHONPATH")]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, path)))


def rss_prefix() -> tuple[list[str], str]:
    """What runs a command and prints its peak RSS on stderr, and how it measures it."""
    if TIME.exists():
        return [str(TIME), "-v"], "/usr/bin/time -v"
    return [sys.executable, "-c", RSS_WRAPPER], "getrusage(RUSAGE_CHILDREN).ru_maxrss in a small wrapper"


def run_child(cmd: list[str], cwd: Path, *, what: str) -> Child:
    """Run ``cmd`` under the RSS wrapper after a ``sync``: wall seconds, peak RSS, output."""
    prefix, _ = rss_prefix()
    os.sync()
    started = time.perf_counter()
    proc = subprocess.run([*prefix, *cmd], capture_output=True, text=True, cwd=cwd, env=child_env())
    wall = time.perf_counter() - started
    found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    rss = int(found.group(1)) * 1024 / 1e6 if found else float("nan")
    if proc.returncode != 0:
        print(proc.stdout[-2000:], proc.stderr[-4000:], sep="\n", file=sys.stderr)
        raise SystemExit(f"{what} failed (exit {proc.returncode}): no figure from it; command: {' '.join(cmd)}")
    return Child(wall, rss, proc.returncode, proc.stdout, proc.stderr)


def vectors_model(dims: int) -> str:
    """The model id whose stored vectors the export's near-duplicate search reads."""
    return f"bench/random-{dims}" if dims else MODEL_ID


def export_cmd(root: Path, out: Path, near_duplicates: float | None, dims: int) -> list[str]:
    cmd = [sys.executable, "-m", "analyzer", "export", str(root), "--to", str(out), "--layout", "splits"]
    cmd += ["--class", f"classify.{SET_NAME}", "--caption", CAPTION, "--link", "hard"]
    if near_duplicates is not None:
        cmd += ["--near-duplicates", str(near_duplicates)]
    if dims:
        cmd += ["--embeddings", vectors_model(dims)]
    return cmd


def shown(cmd: Sequence[str]) -> str:
    """A command as a user would type it (this Python shown as ``python``)."""
    import shlex

    return " ".join(["python" if part == sys.executable else shlex.quote(part) for part in cmd])


def plan_line(child: Child) -> str:
    """The export's ``plan:`` line (stdout) and its ``exported ... (N hard)`` log line (stderr)."""
    plan = next((line for line in child.stdout.splitlines() if line.startswith("plan:")), "no plan line")
    done = re.search(r"exported \d+ images to .*", child.stderr)
    return plan + (f"; {done.group(0)}" if done else "")


# -- analysis ---------------------------------------------------------------------------------------
def analyse(root: Path, cwd: Path) -> tuple[float, float]:
    """``analyzer run DIR --plugins metadata`` (a subprocess), then ``analyzer classify`` in this
    process with the colour embedder: (seconds of each). Only what is not analysed yet is done."""
    from analyzer.cli import main

    metadata = run_child(
        [sys.executable, "-m", "analyzer", "run", str(root), "--plugins", "metadata", "--progress", "plain"],
        cwd,
        what="analyzer run --plugins metadata",
    )
    started = time.perf_counter()
    argv = ["classify", str(root), "--labels", LABELS, "--name", SET_NAME, "--progress", "plain"]
    code = main([*argv, "--log-level", "WARNING"])
    if code != 0:
        raise SystemExit(f"analyzer {' '.join(argv)} failed (exit {code})")
    return metadata.wall, time.perf_counter() - started


def unit_vector(seed: int, dims: int) -> Any:
    import numpy as np

    vector = np.random.default_rng(seed).standard_normal(dims).astype(np.float32)
    return vector / np.linalg.norm(vector)


def store_vectors(root: Path, dims: int) -> int:
    """Random unit vectors of ``dims`` dimensions (seeded by content hash) for every image the index
    knows that has none yet, under :func:`vectors_model`: a planted near-duplicate's at cosine
    ``LOOK_ALIKE`` to its original's, the way real embeddings of look-alikes are. Returns how many."""
    import numpy as np

    from analyzer.settings import Settings
    from analyzer.store import Store

    store = Store.open(root, Settings())
    try:
        hash_of = {}
        for rel_dir in store.index.dirs():
            for name, row in store.index.load_dir(rel_dir).items():
                if row.hash is not None and name.endswith(".png"):
                    hash_of[int(Path(name).stem)] = row.hash
        stored = store.embeddings.model(vectors_model(dims))
        missing = set(stored.missing(list(hash_of.values())))
        hashes, rows = [], []
        for index, content_hash in sorted(hash_of.items()):
            if content_hash not in missing:
                continue
            vector = unit_vector(int(content_hash.rpartition(":")[2][:15], 16), dims)
            if is_duplicate(index) and index - 1 in hash_of:
                original = unit_vector(int(hash_of[index - 1].rpartition(":")[2][:15], 16), dims)
                side = vector - (vector @ original) * original
                vector = LOOK_ALIKE * original + np.sqrt(1 - LOOK_ALIKE**2) * side / np.linalg.norm(side)
            hashes.append(content_hash)
            rows.append(vector / np.linalg.norm(vector))
            if len(hashes) >= 8192:
                stored.put(hashes, np.stack(rows).astype(np.float32))
                hashes, rows = [], []
        if hashes:
            stored.put(hashes, np.stack(rows).astype(np.float32))
        stored.flush()
        return len(missing)
    finally:
        store.close()


def prepare(args: argparse.Namespace, work: Path, root: Path) -> State:
    """The analysed tree: built and analysed, or reused from an earlier run."""
    state_file = work / "state.json"
    state = State.load(state_file)
    if state.images != args.images or not root.is_dir():
        started = time.perf_counter()
        size = build_images(root, args.images)
        state = State(images=args.images)
        state.save(state_file)
        note(
            f"  built {args.images:,} images ({size / 1e6:.1f} MB, {args.images // DUPLICATE_EVERY:,} near-duplicates) "
            f"in {time.perf_counter() - started:.1f} s"
        )
    else:
        note(f"  reusing {args.images:,} images in {root} (changed {state.generation} time(s) before)")
    if not state.analysed:
        metadata_s, classify_s = analyse(root, work / "cwd")
        state.analysed = True
        state.save(state_file)
        note(f"  analysed: analyzer run --plugins metadata {metadata_s:.1f} s, analyzer classify {classify_s:.1f} s")
    if args.dims:
        started = time.perf_counter()
        made = store_vectors(root, args.dims)
        note(f"  stored {made:,} random {args.dims}-dimensional vectors ({time.perf_counter() - started:.1f} s)")
    return state


def change_some(root: Path, state: State, state_file: Path, cwd: Path, dims: int) -> int:
    """Rewrite the pixels of 1% of the images (a new colour each time), then analyse them."""
    state.generation += 1
    state.analysed = False
    state.save(state_file)
    started = time.perf_counter()
    changed = 0
    for i in range(state.images):
        if is_changed(i):
            path = image_path(root, i)  # written beside and renamed over, as an editor saves
            path.with_name(f".{path.name}.tmp").write_bytes(image_png(i, state.generation))
            path.with_name(f".{path.name}.tmp").replace(path)
            changed += 1
    written = time.perf_counter() - started
    metadata_s, classify_s = analyse(root, cwd)
    if dims:
        store_vectors(root, dims)
    state.analysed = True
    state.save(state_file)
    note(
        f"  changed {changed:,} images ({written:.1f} s), analysed: run --plugins metadata {metadata_s:.1f} s, "
        f"classify {classify_s:.1f} s"
    )
    return changed


# -- reading an export ------------------------------------------------------------------------------
def manifest_entries(out: Path) -> dict[str, dict[str, Any]]:
    """OUT's manifest: path in OUT -> entry (src, hash, split, label, ...)."""
    header, *lines = (out / ".analyzer-export" / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
    assert json.loads(header)["version"] in (2, 3, 4), "a manifest of another version"
    return {record.pop("path"): record for record in map(json.loads, lines) if "path" in record}


def split_by_hash(entries: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {entry["hash"]: entry["split"] for entry in entries.values()}


def check_first(out: Path, count: int) -> str:
    """What the first export wrote: images, captions, hard links, the split counts."""
    entries = manifest_entries(out)
    images = captions = linked = 0
    sample = ""
    for path in entries:
        image = out / path
        images += image.is_file()
        linked += image.stat().st_nlink > 1
        caption = image.with_suffix(".txt")
        if caption.is_file():
            captions += 1
            sample = sample or caption.read_text(encoding="utf-8").strip()
    metadata = json.loads((out / "metadata.json").read_text(encoding="utf-8"))
    splits = ", ".join(f"{s} {n:,}" for s, n in sorted(metadata["splits"].items()))
    groups = (metadata.get("drift") or {}).get("groups")
    problems = [] if images == linked == captions == count else ["NOT every image exported, hard-linked, captioned"]
    return (
        f"{len(entries):,} in the manifest, {images:,} image files ({linked:,} hard links), {captions:,} captions "
        f"(e.g. {sample!r}); splits {splits}; {groups if groups is not None else '?'} duplicate groups"
        + (f"; {problems[0]}" if problems else "")
    )


def placing_list(out: Path) -> list[tuple[str, str, str, bytes]]:
    """What the export placed, from its manifest: (source, image path in OUT, caption path in OUT,
    caption bytes as written), for :func:`place_bare`."""
    found = []
    for path, entry in manifest_entries(out).items():
        caption = entry.get("caption") or ""
        data = (out / caption).read_bytes() if caption else b""
        found.append((entry["src"], path, caption, data))
    return found


def place_bare(placing: Sequence[tuple[str, str, str, bytes]], into: Path, threads: int = 4) -> None:
    """The floor of a first export: the same hard links and caption files, made by a bare loop (one
    ``os.link`` and one ``os.open``/``os.write``/``os.close`` each), nothing else: no walk, no
    reading, no search, no tables. In ``threads`` threads taking whole folders, as the export
    places its files (one thread waits out each slow step of the disk alone)."""
    from concurrent.futures import ThreadPoolExecutor

    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    base = str(into)
    by_folder: dict[str, list[tuple[str, str, str, bytes]]] = {}
    for place in placing:
        by_folder.setdefault(place[1].rpartition("/")[0], []).append(place)

    def one_folder(folder: str) -> None:
        os.makedirs(os.path.join(base, folder), exist_ok=True)
        for source, path, caption, data in by_folder[folder]:
            os.link(source, os.path.join(base, path))
            if caption:
                fd = os.open(os.path.join(base, caption), flags, 0o666)
                try:
                    os.write(fd, data)
                finally:
                    os.close(fd)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one_folder, sorted(by_folder)))


@dataclass
class Kept:
    unchanged: int = 0
    same: int = 0
    moved: int = 0
    missing: int = 0
    new: int = 0
    """Hashes in the manifest after that were not in it before: the changed images' new content."""

    @property
    def ok(self) -> bool:
        return self.same == self.unchanged and not self.moved and not self.missing

    def text(self) -> str:
        return (
            f"{self.same:,} of {self.unchanged:,} unchanged images kept their split ({self.moved:,} moved, "
            f"{self.missing:,} missing); {self.new:,} new contents"
        )


def kept_splits(before: dict[str, str], after: dict[str, str], unchanged: set[str]) -> Kept:
    """Is every unchanged image (its hash in the tree both times) in the split it had before?"""
    kept = Kept(new=len(after.keys() - before.keys()))
    for content_hash, split in before.items():
        if content_hash not in unchanged:
            continue
        kept.unchanged += 1
        now = after.get(content_hash)
        if now is None:
            kept.missing += 1
        elif now == split:
            kept.same += 1
        else:
            kept.moved += 1
    return kept


# -- the near-duplicate search, in this process -------------------------------------------------------
@dataclass
class Search:
    times: list[float]
    vectors: int
    dims: int
    groups: int
    largest: int
    planted: int
    together: int


def near_duplicate_search(root: Path, out: Path, threshold: float, repeat: int, dims: int) -> Search:
    """``duplicate_groups`` on the exported images' hashes and stored vectors, as the export calls it."""
    import numpy as np

    from analyzer.embeddings import EmbeddingStore
    from analyzer.export.splits import duplicate_groups

    entries = list(manifest_entries(out).values())
    hashes = [entry["hash"] for entry in entries]
    stored = EmbeddingStore(root / ".analyzer" / "embeddings", read_only=True).model(vectors_model(dims)).get(hashes)
    has = [vector is not None for vector in stored]
    dims = next(len(v) for v in stored if v is not None)
    matrix = np.zeros((len(hashes), dims), dtype=np.float32)
    for n, vector in enumerate(stored):
        if vector is not None:
            matrix[n] = vector
    groups: list[str] = []

    def search() -> None:
        groups[:] = duplicate_groups(hashes, matrix, has, threshold=threshold, seed=0)

    times = timed(repeat, search)
    sizes = Counter(groups)
    group_of = {index_of(entry["src"]): group for entry, group in zip(entries, groups, strict=True)}
    pairs = [(i - 1, i) for i in group_of if is_duplicate(i) and i - 1 in group_of]
    together = sum(group_of[a] == group_of[b] for a, b in pairs)
    return Search(times, sum(has), dims, len(sizes), max(sizes.values()), len(pairs), together)


# -- report -----------------------------------------------------------------------------------------
def load_text() -> str:
    return "/".join(f"{v:.2f}" for v in os.getloadavg())


# -- main -------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, help="images in the tree (default 100,000; --quick: 500)")
    parser.add_argument("--repeat", type=int, help="runs per figure, each figure their median (default 3)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 500 images, 1 run")
    parser.add_argument(
        "--near-duplicates", type=float, help="passed to the export as --near-duplicates (default: the export's)"
    )
    parser.add_argument(
        "--dims",
        type=int,
        default=DIMS,
        help=f"dimensions of the random vectors stored for the near-duplicate search (default {DIMS}; 0: the "
        "colour embedder's own 3-dimensional ones, which make every image one duplicate group)",
    )
    parser.add_argument("--workdir", type=Path, help="build (and keep, and reuse) the analysed tree here")
    args = parser.parse_args(argv)
    args.images = args.images if args.images is not None else 500 if args.quick else 100_000
    args.repeat = max(1, args.repeat if args.repeat is not None else 1 if args.quick else 3)
    if args.images < DUPLICATE_EVERY:
        parser.error(f"--images: at least {DUPLICATE_EVERY}")
    return args


def setup_environment(cwd: Path) -> list[str]:
    """No settings of the user's apply (no ANALYZER_ variables, an empty working folder); the colour
    embedder preloaded in this process. Returns the user's ANALYZER_ variables that were dropped."""
    from analyzer_classify import embedder
    from analyzer_classify.testing import ColourEmbedder

    dropped = sorted(name for name in os.environ if name.upper().startswith("ANALYZER_"))
    for name in dropped:
        del os.environ[name]
    os.environ["ANALYZER_CLASSIFY__MODEL"] = MODEL_ID
    os.environ["ANALYZER_CLASSIFY__CACHE_DIR"] = str(cwd.parent / "text-cache")
    os.environ["HF_HUB_OFFLINE"] = "1"
    cwd.mkdir(parents=True, exist_ok=True)
    os.chdir(cwd)
    embedder.preload(ColourEmbedder(MODEL_ID))
    return dropped


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with contextlib.ExitStack() as stack:
        if args.workdir is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-export-")))
        else:
            work = args.workdir.resolve()
            work.mkdir(parents=True, exist_ok=True)
        dropped = setup_environment(work / "cwd")
        return run(args, work, dropped)
    return 0


@dataclass
class Setup:
    """Where things are and what runs: the same for every part."""

    root: Path
    out: Path
    copy: Path
    cwd: Path
    state_file: Path
    cmd: list[str]
    threshold: float
    rss_method: str
    dims: int


def run(args: argparse.Namespace, work: Path, dropped: list[str]) -> int:
    import numpy
    import torch

    from analyzer.cli import build_parser

    root, out = work / "tree", work / "out"
    default_threshold = build_parser().parse_args(["export", str(root), "--to", str(out)]).near_duplicates
    setup = Setup(
        root=root,
        out=out,
        copy=work / "out-cp",
        cwd=work / "cwd",
        state_file=work / "state.json",
        cmd=export_cmd(root, out, args.near_duplicates, args.dims),
        threshold=args.near_duplicates if args.near_duplicates is not None else default_threshold,
        rss_method=rss_prefix()[1],
        dims=args.dims,
    )
    note(
        f"export benchmark: python {sys.version.split()[0]}, torch {torch.__version__}, numpy {numpy.__version__}, "
        f"{os.cpu_count()} cores, load average {load_text()} (1/5/15 min)"
    )
    vectors = f"random, {args.dims} dimensions, look-alikes at cosine {LOOK_ALIKE}"
    vectors = vectors if args.dims else "the colour embedder's"
    note(
        f"  options: --images {args.images:,} (subfolders of {PER_FOLDER:,}, {SIZE}x{SIZE} PNG), --repeat "
        f"{args.repeat}, near-duplicates planted: 1 in {DUPLICATE_EVERY}, changed before each re-export: 1 in "
        f"{CHANGE_EVERY}; near-duplicate vectors: {vectors}; near-duplicate threshold {setup.threshold} "
        f"({'--near-duplicates' if args.near_duplicates is not None else 'the export default'}); work folder {work}"
    )
    note(f"  export: {shown(setup.cmd)}")
    note(f"  baseline: cp -al {setup.root} {setup.copy}; peak RSS by {setup.rss_method}")
    if dropped:
        note(f"  note: not applied (dropped from the environment): {', '.join(dropped)}")

    state = prepare(args, work, root)
    report = Report()
    firsts, cp_s = first_exports(args, setup, state, report)
    first_s = statistics.median(c.wall for c in firsts)
    search_part(args, setup, state, first_s, report)
    agains = reexports(args, setup, state, first_s, report)
    walk_part(args, setup, first_s, cp_s, report)
    for name, runs in (("first export", firsts), ("re-export", agains)):
        peak = max(c.rss for c in runs)
        report.rows.append(
            Row(
                f"peak RSS of the {name} subprocess ({setup.rss_method}; the highest of {len(runs)})",
                "—",
                f"{peak:.0f} MB",
                "—",
                f"< {RSS_TARGET:.0f} MB",
                peak < RSS_TARGET,
            )
        )
    note(f"  load average after: {load_text()} (1/5/15 min)")
    report.print()
    missed = report.missed()
    if missed:
        note(f"\n{len(missed)} target(s) not met: " + "; ".join(missed))
    return 0


def first_exports(args: argparse.Namespace, setup: Setup, state: State, report: Report) -> tuple[list[Child], float]:
    """The export into an empty OUT, ``cp -al`` of the tree and the export's floor (:func:`place_bare`),
    alternating, ``--repeat`` times each: the exports, and the median of ``cp -al``."""
    firsts: list[Child] = []
    copies: list[Child] = []
    floors: list[float] = []
    for i in range(args.repeat):
        shutil.rmtree(setup.out, ignore_errors=True)
        firsts.append(run_child(setup.cmd, setup.cwd, what="the first export"))
        shutil.rmtree(setup.copy, ignore_errors=True)
        copies.append(run_child(["cp", "-al", str(setup.root), str(setup.copy)], setup.cwd, what="cp -al"))
        shutil.rmtree(setup.copy, ignore_errors=True)
        placing = placing_list(setup.out)
        os.sync()
        floors += timed(1, functools.partial(place_bare, placing, setup.copy))
        shutil.rmtree(setup.copy, ignore_errors=True)
        note(
            f"  run {i + 1}/{args.repeat}: first export {firsts[-1].wall:.2f} s (peak RSS {firsts[-1].rss:.0f} MB), "
            f"cp -al {copies[-1].wall:.2f} s: {firsts[-1].wall / copies[-1].wall:.2f}x; its links and captions "
            f"alone, a bare loop: {floors[-1]:.2f} s = {floors[-1] / copies[-1].wall:.2f}x; {plan_line(firsts[-1])}"
        )
    note(f"  first export wrote: {check_first(setup.out, state.images)}")
    first_s = statistics.median(c.wall for c in firsts)
    cp_s = statistics.median(c.wall for c in copies)
    ratio = first_s / cp_s
    report.rows.append(
        Row(
            f"first export of {state.images:,} images into an empty OUT (hard links, splits, captions, tables), "
            f"wall, median of {args.repeat}",
            f"cp -al of the tree: {cp_s:.2f} s",
            f"{first_s:.2f} s",
            f"{ratio:.2f}x",
            f"<= {RATIO_TARGET:g}x",
            ratio <= RATIO_TARGET,
        )
    )
    floor_s = statistics.median(floors)
    report.rows.append(
        Row(
            f"its floor: the same {len(placing):,} hard links and caption files alone, made by a bare Python loop "
            f"in 4 threads (os.link, os.open/os.write/os.close; no walk, no reading, no search, no tables), median "
            f"of {args.repeat}",
            f"cp -al of the tree: {cp_s:.2f} s",
            f"{floor_s:.2f} s (leaves {max(0.0, RATIO_TARGET * cp_s - floor_s):.2f} s of the {RATIO_TARGET:g}x for "
            "all else)",
            f"{floor_s / cp_s:.2f}x",
            "—",
        )
    )
    return firsts, cp_s


def search_part(args: argparse.Namespace, setup: Setup, state: State, first_s: float, report: Report) -> None:
    """The near-duplicate search apart, in this process, on the hashes and vectors the export used."""
    search = near_duplicate_search(setup.root, setup.out, setup.threshold, args.repeat, setup.dims)
    search_s = statistics.median(search.times)
    note(
        f"  near-duplicate search: duplicate_groups on {search.vectors:,} stored vectors of {search.dims} dims, "
        f"threshold {setup.threshold}: {secs(search.times)}; {search.groups:,} groups, the largest of "
        f"{search.largest:,} images; {search.together:,} of {search.planted:,} planted pairs in one group"
    )
    if search.largest > state.images // 10:
        note(
            f"  note: {search.largest:,} of {state.images:,} images are one duplicate group (so in one split): at "
            f"cosine {setup.threshold}, most two colours are near-duplicates in {search.dims} dimensions"
        )
    report.rows.append(
        Row(
            f"near-duplicate search alone (duplicate_groups on {search.vectors:,} x {search.dims} stored vectors, "
            f"in this process), median of {args.repeat}",
            f"first export: {first_s:.2f} s",
            f"{search_s:.2f} s ({search.groups:,} groups, the largest {search.largest:,}; planted pairs in one "
            f"group {search.together:,}/{search.planted:,})",
            f"{search_s / first_s:.1%}",
            "—",
        )
    )


def walk_part(args: argparse.Namespace, setup: Setup, first_s: float, cp_s: float, report: Report) -> None:
    """The walk every command does (``analyzer status``: stat every file, compare with the index),
    what a re-export cannot do without; and a bare walk (:func:`bare_walk`), against what the
    re-export could take were the first export at its target."""
    cmd = [sys.executable, "-m", "analyzer", "status", str(setup.root), "--plugins", "metadata,classify"]
    walks = [run_child(cmd, setup.cwd, what="analyzer status").wall for _ in range(args.repeat)]
    walk_s = statistics.median(walks)
    note(f"  the walk alone ({shown(cmd)}): {secs(walks)}")
    report.rows.append(
        Row(
            f"of which the walk every command does, alone (analyzer status of the tree), median of {args.repeat}",
            f"first export: {first_s:.2f} s",
            f"{walk_s:.2f} s",
            f"{walk_s / first_s:.1%}",
            "—",
        )
    )
    files: list[int] = []
    bare = timed(args.repeat, lambda: files.append(bare_walk(setup.root)))
    start = [sys.executable, "-c", "import analyzer.cli, analyzer.export.dataset"]
    starts = [run_child(start, setup.cwd, what="python's start").wall for _ in range(args.repeat)]
    bare_s, start_s = statistics.median(bare), statistics.median(starts)
    budget = REEXPORT_TARGET * RATIO_TARGET * cp_s
    note(f"  a bare walk (os.scandir and a stat of each of {files[-1]:,} files, in this process): {secs(bare)}")
    note(f"  python's start with the export's modules imported ({shown(start)}): {secs(starts)}")
    report.rows.append(
        Row(
            f"both time targets at once: a re-export within {REEXPORT_TARGET:.0%} of a first export at "
            f"{RATIO_TARGET:g}x cp -al, against python's start (the export's modules imported) and a bare walk "
            f"of the tree (os.scandir, a stat of each of {files[-1]:,} files; no index, no manifest, no tables), "
            f"medians of {args.repeat}",
            f"{REEXPORT_TARGET:.0%} of {RATIO_TARGET:g}x cp -al: {budget:.2f} s",
            f"{start_s:.2f} s + {bare_s:.2f} s",
            f"{(start_s + bare_s) / budget:.0%}",
            "—",
        )
    )


def bare_walk(root: Path) -> int:
    """Every file under ``root`` listed and stat'ed, nothing else: how many."""
    count = 0
    folders = [str(root)]
    while folders:
        with os.scandir(folders.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    folders.append(entry.path)
                else:
                    entry.stat(follow_symlinks=False)
                    count += 1
    return count


def reexports(args: argparse.Namespace, setup: Setup, state: State, first_s: float, report: Report) -> list[Child]:
    """``--repeat`` times: change another 1%, analyse them, export again into the same OUT."""
    agains: list[Child] = []
    checks: list[Kept] = []
    for i in range(args.repeat):
        before = manifest_entries(setup.out)
        unchanged = {e["hash"] for e in before.values() if not is_changed(index_of(e["src"]))}
        change_some(setup.root, state, setup.state_file, setup.cwd, setup.dims)
        agains.append(run_child(setup.cmd, setup.cwd, what="the re-export"))
        checks.append(kept_splits(split_by_hash(before), split_by_hash(manifest_entries(setup.out)), unchanged))
        note(
            f"  run {i + 1}/{args.repeat}: re-export {agains[-1].wall:.2f} s (peak RSS {agains[-1].rss:.0f} MB), "
            f"{agains[-1].wall / first_s:.1%} of the first export; {plan_line(agains[-1])}; {checks[-1].text()}"
        )
    again_s = statistics.median(c.wall for c in agains)
    share = again_s / first_s
    report.rows.append(
        Row(
            f"re-export into the same OUT after 1% of the images changed (and were analysed), wall, median of "
            f"{args.repeat}",
            f"first export: {first_s:.2f} s",
            f"{again_s:.2f} s",
            f"{share:.1%}",
            f"<= {REEXPORT_TARGET:.0%}",
            share <= REEXPORT_TARGET,
        )
    )
    worst = min(checks, key=lambda k: (k.ok, k.same - k.unchanged))
    report.rows.append(
        Row(
            "re-export: split of every unchanged image, manifest before and after",
            "—",
            worst.text() + (f" (the worst of {len(checks)} re-exports)" if len(checks) > 1 else ""),
            "—",
            "every one kept",
            all(k.ok for k in checks),
        )
    )
    return agains


if __name__ == "__main__":
    sys.exit(main())
