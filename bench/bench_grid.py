#!/usr/bin/env python3
"""Benchmark of ``analyzer grid`` against ImageMagick's ``montage``: contact sheets of 512x512 JPEGs.

For each size in ``--images`` (default 1,000 and 10,000), the images are generated once into
``--workdir`` (smooth gradients with shapes and noise, JPEG quality 90, each one different) and
reused by later runs. Then, each in a fresh subprocess under ``/usr/bin/time -v`` (peak RSS), a
``sync`` before each:

1. **ours, cold**: ``analyzer grid DIR -o sheet.png --cell 128 --cols 100 --label none``, after
   deleting the root's state folder (no index, no thumbnail: every image is read, hashed and
   thumbnailed);
2. **ours, warm**: the same command again (thumbnails cached, the index warm);
3. **montage**: ``montage -tile 100x -geometry 128x128+2+2 -background white DIR/*.jpg sheet.png``
   (tiles of 128 px with a 2-px border: the same sheet), with ImageMagick's resource limits raised
   by a ``policy.xml`` on ``MAGICK_CONFIGURE_PATH`` (Debian's default policy, 256 MiB memory and
   1 GiB disk, makes it fail with "cache resources exhausted"; ``-limit`` can only lower limits).
   The limits are printed. Stopped after ``--montage-timeout`` seconds and reported as such.

Printed: wall time and peak RSS of each, and the ratios montage / ours (target: at least 3x
faster cold) and our peak RSS at 10,000 images (target: under 500 MB). Every figure is measured
in this run; nothing is hard-coded.

    python bench/bench_grid.py                         # 1,000 and 10,000 images (montage at 10,000: minutes)
    python bench/bench_grid.py --images 1000 --workdir /tmp/bench-grid
    python bench/bench_grid.py --quick                 # 200 images, a smoke run
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TIME = Path("/usr/bin/time")
POLICY = """<policymap>
  <policy domain="resource" name="memory" value="8GiB"/>
  <policy domain="resource" name="map" value="16GiB"/>
  <policy domain="resource" name="area" value="16GP"/>
  <policy domain="resource" name="disk" value="64GiB"/>
  <policy domain="resource" name="width" value="256KP"/>
  <policy domain="resource" name="height" value="256KP"/>
</policymap>
"""
COLS = 100


@dataclass
class Run:
    what: str
    wall: float | None
    rss_mb: float | None
    note: str = ""


def make_images(folder: Path, count: int) -> None:
    """``count`` different 512x512 JPEGs (kept: a later run reuses them)."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    have = len(list(folder.glob("*.jpg")))
    if have >= count:
        return
    started = time.perf_counter()
    for i in range(have, count):
        rng = random.Random(i)
        a, b = [tuple(rng.randrange(256) for _ in range(3)) for _ in range(2)]
        image = Image.linear_gradient("L").resize((512, 512)).convert("RGB")
        image = Image.merge(
            "RGB",
            [
                band.point(lambda v, lo=lo, hi=hi: lo + (hi - lo) * v // 255)
                for band, lo, hi in zip(image.split(), a, b, strict=True)
            ],
        )
        draw = ImageDraw.Draw(image)
        for _ in range(4):
            x, y, r = rng.randrange(512), rng.randrange(512), rng.randrange(20, 120)
            draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(rng.randrange(256) for _ in range(3)))
        noise = Image.effect_noise((512, 512), 12).convert("RGB")
        image = Image.blend(image, noise, 0.08)
        image.save(folder / f"{i:06d}.jpg", quality=90)
    print(f"  made {count - have:,} images in {time.perf_counter() - started:.0f} s", flush=True)


def timed(what: str, cmd: list[str], cwd: Path, env: dict[str, str], timeout: float | None = None) -> Run:
    os.sync()
    started = time.perf_counter()
    try:
        proc = subprocess.run(
            [str(TIME), "-v", *cmd], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return Run(what, None, None, f"did not finish in {timeout:.0f} s")
    wall = time.perf_counter() - started
    found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    rss = int(found.group(1)) / 1024 if found else None
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-3:]
        return Run(what, wall, rss, f"failed (exit {proc.returncode}): {' / '.join(tail)}")
    return Run(what, wall, rss)


def bench(count: int, work: Path, timeout: float) -> list[Run]:
    images = work / f"images-{count}"
    make_images(images, count)
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "plugins")]), HF_HUB_OFFLINE="1")
    env = {k: v for k, v in env.items() if not k.startswith("ANALYZER_")}
    ours = [
        sys.executable,
        "-m",
        "analyzer",
        "grid",
        str(images),
        "--cell",
        "128",
        "--cols",
        str(COLS),
        "--label",
        "none",
    ]
    shutil.rmtree(images / ".analyzer", ignore_errors=True)
    runs = [timed(f"analyzer grid, cold ({count:,})", [*ours, "-o", str(out / "ours-cold.png")], work, env)]
    runs.append(timed(f"analyzer grid, warm ({count:,})", [*ours, "-o", str(out / "ours-warm.png")], work, env))
    policy = work / "im-policy"
    policy.mkdir(exist_ok=True)
    (policy / "policy.xml").write_text(POLICY)
    im_env = dict(env, MAGICK_CONFIGURE_PATH=str(policy), MAGICK_TMPDIR=str(work))
    files = sorted(str(p) for p in images.glob("*.jpg"))[:count]
    montage = ["montage", "-tile", f"{COLS}x", "-geometry", "128x128+2+2", "-background", "white", *files]
    runs.append(timed(f"montage ({count:,})", [*montage, str(out / "montage.png")], work, im_env, timeout))
    shutil.rmtree(out, ignore_errors=True)
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default="1000,10000", help="sizes, comma-separated (default 1000,10000)")
    parser.add_argument("--workdir", type=Path, help="keep (and reuse) the generated images here")
    parser.add_argument("--montage-timeout", type=float, default=1800.0, help="seconds before montage is stopped")
    parser.add_argument("--quick", action="store_true", help="200 images, a smoke run")
    args = parser.parse_args()
    sizes = [200] if args.quick else [int(n) for n in args.images.split(",")]
    if shutil.which("montage") is None or not TIME.exists():
        raise SystemExit("needs ImageMagick's montage and /usr/bin/time: apt install imagemagick time")
    version = subprocess.run(["montage", "-version"], capture_output=True, text=True).stdout.splitlines()[0]
    print(f"grid benchmark: {os.cpu_count()} cores, {version}")
    limits = ", ".join(f"{name} {value}" for name, value in re.findall(r'name="(\w+)" value="(\w+)"', POLICY))
    print(f"  montage's limits raised by a policy.xml on MAGICK_CONFIGURE_PATH: {limits}")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-grid-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for count in sizes:
        runs = bench(count, work, args.montage_timeout)
        for run in runs:
            wall = f"{run.wall:.1f} s" if run.wall is not None else "-"
            rss = f"{run.rss_mb:.0f} MB" if run.rss_mb is not None else "-"
            print(f"  {run.what}: {wall}, peak RSS {rss} {run.note}", flush=True)
        cold, warm, montage = runs
        if montage.wall is not None and not montage.note and cold.wall:
            rows.append((count, cold, warm, montage, montage.wall / cold.wall, montage.wall / (warm.wall or 1)))
        else:
            rows.append((count, cold, warm, montage, None, None))
    print(
        "\n| images | analyzer cold | analyzer warm | montage | montage / cold (target ≥ 3x) | montage / warm |", end=""
    )
    print(" peak RSS cold / warm / montage |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for count, cold, warm, montage, r_cold, r_warm in rows:
        m = f"{montage.wall:.1f} s" if montage.wall is not None else montage.note
        print(
            f"| {count:,} | {cold.wall:.1f} s | {warm.wall:.1f} s | {m} | "
            f"{f'{r_cold:.1f}x' if r_cold else '-'} | {f'{r_warm:.1f}x' if r_warm else '-'} | "
            f"{cold.rss_mb:.0f} / {warm.rss_mb:.0f} / {montage.rss_mb or 0:.0f} MB |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
