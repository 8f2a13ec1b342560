"""The bundled concept bank: what ``classify`` matches images against when the user gives no labels.

concepts.txt beside this module holds about 2,900 plain English nouns, one a line: COCO 2017's 80
object categories, most of Open Images V7's boxable classes and common concrete WordNet 3.0 nouns.
It is built by scripts/build_concepts.py (sources and licences: CONCEPTS.md); lines starting with
``#`` are its header (WordNet's licence asks to be carried along) and are skipped here.
"""

from __future__ import annotations

import functools
from pathlib import Path

__all__ = ["CONCEPTS_FILE", "concept_bank"]

CONCEPTS_FILE = Path(__file__).with_name("concepts.txt")


@functools.cache
def concept_bank() -> list[str]:
    """The bank's concepts, in the file's (sorted) order; read once. Callers must not change the list."""
    with CONCEPTS_FILE.open(encoding="utf-8") as handle:
        return [line for line in (raw.strip() for raw in handle) if line and not line.startswith("#")]
