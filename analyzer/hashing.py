"""Content hashes of images: SHA-256 over the file's bytes, streamed in 1 MiB chunks.

SHA-256 (what ``sha256sum`` prints) is hardware-accelerated on current x86 and ARM CPUs and
is the hash Stable Diffusion tools already show for files. ``hashlib`` releases the GIL while
hashing, so several threads keep a disk busy.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .errors import FileChangedError as FileChangedError  # re-exported: it was defined here

ALGORITHM = "sha256"
CHUNK = 1 << 20


def hash_file(path: Path) -> tuple[str, int, int]:
    """Return ``("sha256:<hex>", size, mtime_ns)`` as of the read.

    Raises FileChangedError when the file's size or mtime changed during the read, so a hash
    never describes a half-written file.
    """
    with open(path, "rb") as handle:
        before = os.fstat(handle.fileno())
        digest = hashlib.file_digest(handle, ALGORITHM)
        after = os.fstat(handle.fileno())
    if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns):
        raise FileChangedError(f"{path} changed while it was being hashed")
    return f"{ALGORITHM}:{digest.hexdigest()}", after.st_size, after.st_mtime_ns
