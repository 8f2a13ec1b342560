"""Image embeddings, computed once per (content hash, model) and kept in the root's state folder.

Layout: ``<state folder>/embeddings/<model slug>/`` holds ``model.json`` (the model id and the
vector length) and shards, each a pair of NumPy ``.npy`` files written by one process at once:
``<shard>.vec.npy`` (``float32``, one row per image) and ``<shard>.keys.npy`` (32-byte keys, the
SHA-256 of the content hash text, in the same order). A shard counts once its keys file exists:
it is written last, to a temporary name, fsynced and renamed, so readers never see half a shard
and writers never wait for each other (every process writes shards of its own). These files are
not the index's: deleting the index (a cache) leaves them; deleting them only costs time.

Memory stays bounded at millions of images: the keys of every shard are held (32 bytes and
16 bytes of position per image: 48 MB at a million), vectors are read from disk with ``pread``
as they are asked for, never mapped or loaded whole, and :meth:`ModelEmbeddings.chunks` streams
them. Shards of about the same size are merged, ``FANOUT`` at a time (:meth:`ModelEmbeddings.compact`,
under a lock, the old shards removed after the new one is in place; duplicate keys from two
processes are kept once), so a vector is rewritten about log8(images / batch) times.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    Matrix = npt.NDArray[np.float32]

log = logging.getLogger("analyzer")

KEY_BYTES = 32
"""NumPy keeps keys as ``S32``, which drops trailing NUL bytes when read back: compare padded."""
FANOUT = 8
"""Shards of about the same size (rows within a factor of this) that a writer merges into one, so
a row is rewritten about log8(rows / batch) times however many images there are."""
ABANDONED_AFTER = 3600.0
"""A vector file without its keys file this old (seconds) is a writer that died: removed on compaction."""


def key_of(content_hash: str) -> bytes:
    """The 32-byte key of a content hash (``"sha256:…"``, or any other algorithm's text)."""
    return hashlib.sha256(content_hash.encode()).digest()


def slug(model_id: str) -> str:
    """A folder name for a model id (``ViT-B-32/openai`` -> ``ViT-B-32_openai-<hash6>``)."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", model_id).strip("._")[:80]
    return f"{readable}-{hashlib.sha256(model_id.encode()).hexdigest()[:6]}"


@dataclass(frozen=True)
class _Shard:
    name: str
    vec: Path
    rows: int
    offset: int
    """Where the rows begin in the vector file (after the .npy header)."""


class ModelEmbeddings:
    """The embeddings of one model in one root. Thread-safe; safe with other processes."""

    def __init__(self, folder: Path, model_id: str, *, read_only: bool = False) -> None:
        import numpy as np

        self.folder = folder
        self.model_id = model_id
        self.read_only = read_only
        self.dim: int | None = None
        self._lock = threading.RLock()
        self._listed: frozenset[str] = frozenset()
        self._loaded: dict[str, tuple[Any, _Shard]] = {}
        """Each listed shard's keys and place, loaded once: a refresh reads only new shards."""
        self._shards: list[_Shard] = []
        self._keys = np.empty(0, dtype=f"S{KEY_BYTES}")
        self._where = np.empty((0, 2), dtype=np.int64)  # (shard number, row), in the order of _keys
        self._pending_keys: list[bytes] = []
        self._pending_rows: list[Matrix] = []
        self._pending: dict[bytes, int] = {}
        self._written = 0
        meta = folder / "model.json"
        with contextlib.suppress(OSError, ValueError):
            self.dim = int(json.loads(meta.read_text())["dim"])
        self.refresh()

    # -- reading -------------------------------------------------------------------------
    def refresh(self) -> None:
        """Take in shards other processes have written since (cheap when there are none)."""
        import numpy as np

        try:
            names = frozenset(
                p.name[: -len(".keys.npy")] for p in os.scandir(self.folder) if p.name.endswith(".keys.npy")
            )
        except FileNotFoundError:
            names = frozenset()
        with self._lock:
            if names == self._listed:
                return
            shards: list[_Shard] = []
            keys: list[Any] = []
            where: list[Any] = []
            for name in sorted(names):
                if name in self._loaded:
                    shard_keys, known = self._loaded[name]
                    number = len(shards)
                    shards.append(known)
                    keys.append(shard_keys)
                    where.append(np.stack([np.full(len(shard_keys), number), np.arange(len(shard_keys))], axis=1))
                    continue
                try:
                    shard_keys = np.load(self.folder / f"{name}.keys.npy")
                    vec = self.folder / f"{name}.vec.npy"
                    with vec.open("rb") as handle:
                        version = np.lib.format.read_magic(handle)
                        read_header = (
                            np.lib.format.read_array_header_1_0
                            if version == (1, 0)
                            else np.lib.format.read_array_header_2_0
                        )
                        shape, _, dtype = read_header(handle)
                        offset = handle.tell()
                except (OSError, ValueError) as exc:  # removed by a compaction meanwhile, or damaged
                    log.debug("embedding shard %s skipped: %s", name, exc)
                    continue
                if dtype != np.float32 or len(shape) != 2 or shape[0] != len(shard_keys):
                    log.warning("embedding shard %s in %s is damaged: ignored", name, self.folder)
                    continue
                if self.dim is None:
                    self.dim = int(shape[1])
                if shape[1] != self.dim:
                    log.warning("embedding shard %s has %d dimensions, not %d: ignored", name, shape[1], self.dim)
                    continue
                number = len(shards)
                shard = _Shard(name, vec, int(shape[0]), offset)
                shard_keys = shard_keys.astype(f"S{KEY_BYTES}")
                self._loaded[name] = (shard_keys, shard)
                shards.append(shard)
                keys.append(shard_keys)
                where.append(np.stack([np.full(len(shard_keys), number), np.arange(len(shard_keys))], axis=1))
            all_keys = np.concatenate(keys) if keys else np.empty(0, dtype=f"S{KEY_BYTES}")
            all_where = np.concatenate(where) if where else np.empty((0, 2), dtype=np.int64)
            order = np.argsort(all_keys, kind="stable")
            self._shards, self._keys, self._where = shards, all_keys[order], all_where[order]
            self._listed = names
            self._loaded = {name: item for name, item in self._loaded.items() if name in names}

    def __len__(self) -> int:
        import numpy as np

        with self._lock:
            return len(np.unique(self._keys)) + sum(1 for k in self._pending if not self._has_stored(k))

    def _has_stored(self, key: bytes) -> bool:
        import numpy as np

        i = int(np.searchsorted(self._keys, key))
        return i < len(self._keys) and bytes(self._keys[i]).ljust(KEY_BYTES, b"\0") == key

    def missing(self, hashes: Sequence[str]) -> list[str]:
        """The content hashes that have no embedding yet (after taking in others' new shards)."""
        missing = self._missing(hashes)
        if missing:
            self.refresh()
            missing = self._missing(missing)
        return missing

    def _missing(self, hashes: Sequence[str]) -> list[str]:
        keys = [key_of(h) for h in hashes]
        with self._lock:
            stored = self._stored_at(keys)
            return [h for h, k, at in zip(hashes, keys, stored, strict=True) if at < 0 and k not in self._pending]

    def _stored_at(self, keys: Sequence[bytes]) -> list[int]:
        """For each key, its index in the sorted stored keys, or -1 (one vectorised search; under the lock)."""
        import numpy as np

        if not keys or not len(self._keys):
            return [-1] * len(keys)
        wanted = np.array(keys, dtype=f"S{KEY_BYTES}")  # stripped of trailing NULs like the stored keys
        at = np.minimum(np.searchsorted(self._keys, wanted), len(self._keys) - 1)
        found = self._keys[at] == wanted
        return np.where(found, at, -1).tolist()  # type: ignore[no-any-return]

    def get(self, hashes: Sequence[str]) -> list[Matrix | None]:
        """The embedding of each content hash (a ``float32`` vector), or None where there is none.
        One search for all of them, and each shard file opened once."""
        if self._missing(hashes):
            self.refresh()
        keys = [key_of(h) for h in hashes]
        try:
            return self._get_many(keys)
        except FileNotFoundError:  # a shard merged by a compaction meanwhile: the new one has its rows
            self.refresh()
            try:
                return self._get_many(keys)
            except FileNotFoundError:
                return [None] * len(keys)

    def _get_many(self, keys: Sequence[bytes]) -> list[Matrix | None]:
        import numpy as np

        out: list[Matrix | None] = [None] * len(keys)
        wanted: dict[int, list[tuple[int, int]]] = {}  # shard number -> [(position in keys, row)]
        with self._lock:
            dim = self.dim
            stored = self._stored_at(keys)
            places = self._where[[max(at, 0) for at in stored]].tolist() if len(self._where) else []
            for i, (key, at) in enumerate(zip(keys, stored, strict=True)):
                if key in self._pending:
                    out[i] = self._pending_rows[self._pending[key]].copy()
                elif at >= 0 and dim is not None:
                    number, row = places[i]
                    wanted.setdefault(number, []).append((i, row))
            shards = {number: self._shards[number] for number in wanted}
        for number, rows in wanted.items():
            shard = shards[number]
            assert dim is not None
            with shard.vec.open("rb") as handle:
                fd = handle.fileno()
                for i, row in rows:
                    data = os.pread(fd, dim * 4, shard.offset + row * dim * 4)
                    out[i] = np.frombuffer(data, dtype=np.float32).copy()
        return out

    def chunks(self, rows: int = 65536) -> Iterator[tuple[Any, Matrix]]:
        """Every stored embedding once, ``rows`` at a time: (keys, matrix); memory stays at one chunk."""
        lock_path = self.folder / ".compact.lock"
        with contextlib.ExitStack() as held:
            if self.folder.is_dir() and not self.read_only:  # no merge removes a shard while they are read
                lock = held.enter_context(open(lock_path, "a+b"))
                fcntl.flock(lock, fcntl.LOCK_SH)
            self.refresh()
            with self._lock:
                shards = list(enumerate(self._shards))
                keys, where = self._keys, self._where
            yield from self._rows(shards, keys, where, rows)

    def _rows(self, shards: list[tuple[int, _Shard]], keys: Any, where: Any, rows: int) -> Iterator[tuple[Any, Matrix]]:
        """The rows of these shards, each key once: where a key is in several shards (two processes
        embedded the same image), only the place the sorted keys point at counts."""
        import numpy as np

        dim = self.dim
        if dim is None:
            return
        for number, shard in shards:
            try:
                shard_keys = np.load(self.folder / f"{shard.name}.keys.npy").astype(f"S{KEY_BYTES}")
                with shard.vec.open("rb") as handle:
                    for start in range(0, shard.rows, rows):
                        n = min(rows, shard.rows - start)
                        data = os.pread(handle.fileno(), n * dim * 4, shard.offset + start * dim * 4)
                        block = np.frombuffer(data, dtype=np.float32).reshape(n, dim)
                        block_keys = shard_keys[start : start + n]
                        at = np.minimum(np.searchsorted(keys, block_keys), max(len(keys) - 1, 0))
                        own = (where[at, 0] == number) & (where[at, 1] == np.arange(start, start + n))
                        if own.all():
                            yield block_keys, block
                        elif own.any():
                            yield block_keys[own], block[own]
            except FileNotFoundError:
                continue  # merged meanwhile: its rows are in the merged shard, listed next time

    # -- writing -------------------------------------------------------------------------
    def put(self, hashes: Sequence[str], vectors: Matrix) -> None:
        """Keep embeddings (one row per content hash); they are written by :meth:`flush`."""
        import numpy as np

        if self.read_only:
            return
        matrix = np.ascontiguousarray(vectors, dtype=np.float32)
        if matrix.ndim != 2 or matrix.shape[0] != len(hashes):
            raise ValueError(f"{len(hashes)} hashes but vectors of shape {matrix.shape}")
        with self._lock:
            if self.dim is None:
                self.dim = int(matrix.shape[1])
            if matrix.shape[1] != self.dim:
                raise ValueError(f"vectors of {matrix.shape[1]} dimensions; {self.model_id} has {self.dim}")
            for content_hash, row in zip(hashes, matrix, strict=True):
                key = key_of(content_hash)
                if key in self._pending or self._has_stored(key):
                    continue
                self._pending[key] = len(self._pending_rows)
                self._pending_keys.append(key)
                self._pending_rows.append(row)

    def flush(self) -> None:
        """Write what :meth:`put` kept as one new shard (atomically); merge shards when there are many."""
        import numpy as np

        with self._lock:
            if not self._pending_keys or self.read_only or self.dim is None:
                return
            keys = np.array(self._pending_keys, dtype=f"S{KEY_BYTES}")
            rows = np.stack(self._pending_rows).astype(np.float32, copy=False)
            self.folder.mkdir(parents=True, exist_ok=True)
            self._write_meta()
            name = f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            _save(self.folder / f"{name}.vec.npy", rows)
            _save(self.folder / f"{name}.keys.npy", keys)  # last: the shard counts from now on
            self._pending_keys, self._pending_rows, self._pending = [], [], {}
            self._written += 1
        self.refresh()
        while self._to_merge():  # a merge may fill the next tier: merge on up
            if not self.compact(everything=False):
                break  # another process is merging

    def _write_meta(self) -> None:
        meta = self.folder / "model.json"
        if not meta.exists():
            tmp = self.folder / f".model.json.{os.getpid()}.{uuid.uuid4().hex[:6]}.tmp"
            tmp.write_text(json.dumps({"model": self.model_id, "dim": self.dim}) + "\n")
            os.replace(tmp, meta)

    def _to_merge(self) -> list[int]:
        """The shards (by number) of the smallest size tier that holds ``FANOUT`` of them, or none."""
        tiers: dict[int, list[int]] = {}
        with self._lock:
            for number, shard in enumerate(self._shards):
                tiers.setdefault(int(math.log(max(shard.rows, 1), FANOUT)), []).append(number)
        return next((numbers for _, numbers in sorted(tiers.items()) if len(numbers) >= FANOUT), [])

    def compact(self, *, everything: bool = True) -> bool:
        """Merge shards into one, keys kept once: all of them, or (``everything`` False) a tier of
        ``FANOUT`` similar ones. False when another process is at it."""
        import numpy as np

        if self.read_only:
            return False
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".compact.lock", "a+b") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            self._listed = frozenset()  # list afresh, under the lock
            self.refresh()
            with self._lock:
                numbers = list(range(len(self._shards))) if everything else self._to_merge()
                shards = [(n, self._shards[n]) for n in numbers]
                keys, where, dim = self._keys, self._where, self.dim
            if len(shards) < 2 or dim is None:
                return True
            name = f"{time.time_ns():020d}-{os.getpid()}-merged"
            vec_tmp = self.folder / f".{name}.vec.npy.tmp"
            kept: list[Any] = []
            total = sum(s.rows for _, s in shards)
            with vec_tmp.open("wb") as out:
                np.lib.format.write_array_header_1_0(
                    out, {"descr": "<f4", "fortran_order": False, "shape": (total, dim)}
                )
                header_at = out.tell()
                count = 0
                for block_keys, block in self._rows(shards, keys, where, 65536):
                    out.write(np.ascontiguousarray(block).tobytes())
                    kept.append(block_keys)
                    count += len(block_keys)
                out.seek(0)  # the real row count (duplicates dropped), in a header of the same size
                np.lib.format.write_array_header_1_0(
                    out, {"descr": "<f4", "fortran_order": False, "shape": (count, dim)}
                )
                if out.tell() != header_at:  # pragma: no cover - header sizes are padded to 64 bytes
                    raise RuntimeError("embedding shard header changed size")
                out.flush()
                os.fsync(out.fileno())
            os.replace(vec_tmp, self.folder / f"{name}.vec.npy")
            merged = np.concatenate(kept) if kept else np.empty(0, dtype=f"S{KEY_BYTES}")
            _save(self.folder / f"{name}.keys.npy", merged.astype(f"S{KEY_BYTES}"))
            for _, shard in shards:  # readers holding an old shard open keep reading it
                (self.folder / f"{shard.name}.keys.npy").unlink(missing_ok=True)
                shard.vec.unlink(missing_ok=True)
            self._remove_abandoned()
        self._listed = frozenset()
        self.refresh()
        log.debug("merged %d embedding shards of %s into one (%d rows)", len(shards), self.model_id, count)
        return True

    def _remove_abandoned(self) -> None:
        now = time.time()
        for entry in os.scandir(self.folder):
            name = entry.name
            orphan = name.endswith(".vec.npy") and not (self.folder / (name[: -len(".vec.npy")] + ".keys.npy")).exists()
            if orphan or name.endswith(".tmp"):
                with contextlib.suppress(OSError):  # another writer's file may be renamed meanwhile
                    if now - entry.stat().st_mtime > ABANDONED_AFTER:
                        os.unlink(entry.path)


def _save(path: Path, array: Any) -> None:
    """``array`` as a ``.npy`` file, written to a temporary name, fsynced and renamed into place."""
    import numpy as np

    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:6]}.tmp")
    with tmp.open("wb") as handle:
        np.save(handle, array)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


_blas: Any = None


def one_blas_thread() -> contextlib.AbstractContextManager[object]:
    """A context in which numpy's BLAS and LAPACK use one thread (through threadpoolctl, which
    scikit-learn installs; without it, numpy's threads as they are). Products over embeddings in
    small blocks are common here (a batch's scores, a cell of the near-duplicate search): on a
    2-core machine with anything else running, OpenBLAS's threads spin and wait for each other,
    measured five to fifty times slower than one thread."""
    global _blas
    try:
        if _blas is None:
            from threadpoolctl import ThreadpoolController

            _blas = ThreadpoolController()
        limits: contextlib.AbstractContextManager[object] = _blas.limit(limits=1, user_api="blas")
        return limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        return contextlib.nullcontext()


class EmbeddingStore:
    """The embeddings of one root, per model (``<state folder>/embeddings``)."""

    def __init__(self, folder: Path, *, read_only: bool = False) -> None:
        self.folder = folder
        self.read_only = read_only
        self._models: dict[str, ModelEmbeddings] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        """Sent to another process (an image handed to a worker process): the place, not the contents."""
        return {"folder": self.folder, "read_only": self.read_only}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["folder"], read_only=state["read_only"])  # type: ignore[misc]

    def model(self, model_id: str) -> ModelEmbeddings:
        with self._lock:
            if model_id not in self._models:
                self._models[model_id] = ModelEmbeddings(
                    self.folder / slug(model_id), model_id, read_only=self.read_only
                )
            return self._models[model_id]

    def models(self) -> list[str]:
        """The ids of the models with embeddings stored here (each folder's ``model.json``)."""
        found = []
        try:
            folders = sorted(p for p in self.folder.iterdir() if p.is_dir())
        except OSError:
            return []
        for folder in folders:
            try:
                found.append(str(json.loads((folder / "model.json").read_text())["model"]))
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return found

    def flush(self) -> None:
        with self._lock:
            models = list(self._models.values())
        for model in models:
            model.flush()
