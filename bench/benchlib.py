"""What the benchmarks share: printing, timing, memory figures and the results table.

Imported by the scripts beside it (``python bench/bench_export.py`` puts this folder first on
``sys.path``); nothing here imports the analyzer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path


def note(text: str) -> None:
    """A progress line, printed at once (the benchmarks run for minutes)."""
    print(text, flush=True)


def timed(n: int, fn: Callable[[], object]) -> list[float]:
    """Seconds of each of ``n`` calls of ``fn``."""
    out = []
    for _ in range(n):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


def secs(values: Sequence[float]) -> str:
    """Each run's seconds, as the scripts print them: ``1.20 1.31 1.18 s``."""
    return " ".join(f"{v:.2f}" for v in values) + " s"


def status_mb(name: str) -> float:
    """A ``/proc/self/status`` memory figure (``VmHWM``, ``VmRSS``) in MB (10^6 bytes); NaN elsewhere."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(name + ":"):
                    return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        pass
    return float("nan")


def reset_peak() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux ``clear_refs`` 5); False if refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@dataclass
class Row:
    """One line of the results table."""

    name: str
    baseline: str
    ours: str
    ratio: str
    target: str
    met: bool | None = None
    """None: a figure without a target."""


@dataclass
class Report:
    """The results table, printed last as Markdown (what the README's tables are copied from)."""

    rows: list[Row] = field(default_factory=list)

    def print(self) -> None:
        print("\n| measurement | baseline | ours | ratio | target | met |")
        print("| --- | --- | --- | ---: | --- | --- |")
        for r in self.rows:
            met = "—" if r.met is None else ("met" if r.met else "NOT MET")
            print(f"| {r.name} | {r.baseline} | {r.ours} | {r.ratio} | {r.target} | {met} |")

    def missed(self) -> list[str]:
        """The measurements whose target was not met."""
        return [r.name for r in self.rows if r.met is False]
