"""Sidecar JSON files: naming, reading, merging and atomic writing.

One sidecar per image per plugin, ``<image name>.<plugin>.json``, beside the image or in a
mirrored tree. Layout (``schema_version`` 1)::

    {
      "schema_version": 1,
      "plugin": {"name": "metadata", "version": "1.0.0"},
      "file_info": {"file_name", "path", "hash", "hash_algorithm", "size", "mtime_ns",
                    "created", "modified", "processed_at"},
      "analysis": {"<mode>": {"<model id>": {"result", "created_at", "duration_s",
                                             "parameters", "usage"?}}},
      "errors":   {"<mode>": {"<model id>": {"type", "message", "attempts", "at",
                                             "retryable"}}}
    }

Writes go to a temporary file in the same folder, are fsynced and renamed over the old file,
so a reader sees the old sidecar or the new one, never a mix. A write merges with what is on
disk: other modes and models are kept.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from . import hosts
from .errors import CorruptSidecar as CorruptSidecar  # re-exported: it was defined here

SCHEMA_VERSION = 1


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def ns_to_iso(ns: int) -> str:
    seconds, rest = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{rest // 1_000_000:03d}Z"


def sidecar_name(image_name: str, plugin: str) -> str:
    return f"{image_name}.{plugin}.json"


@dataclass(frozen=True, slots=True)
class Layout:
    """Where one root's sidecars and index live."""

    root: Path
    sidecar_base: Path | None = None
    """``None``: beside the images; otherwise the root of the mirrored tree for this root."""

    def sidecar_dir(self, rel_dir: str) -> Path:
        base = self.sidecar_base if self.sidecar_base is not None else self.root
        return base / rel_dir if rel_dir else base

    def sidecar_path(self, rel: str, plugin: str) -> Path:
        return Path(self.sidecar_file(rel, plugin))

    def sidecar_file(self, rel: str, plugin: str) -> str:
        """:meth:`sidecar_path` as a plain string (building a Path costs more than reading a small file)."""
        base = self.sidecar_base if self.sidecar_base is not None else self.root
        return f"{base}/{rel}.{plugin}.json"

    @property
    def beside(self) -> bool:
        return self.sidecar_base is None


def _validate(doc: Any, path: str | Path) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise CorruptSidecar(f"{path}: top level is not a JSON object")
    for section in ("file_info", "analysis", "errors"):
        if not isinstance(doc.get(section, {}), dict):
            raise CorruptSidecar(f"{path}: {section!r} is not an object")
    for section in ("analysis", "errors"):
        for mode, by_model in doc.get(section, {}).items():
            if not isinstance(by_model, dict) or not all(isinstance(v, dict) for v in by_model.values()):
                raise CorruptSidecar(f"{path}: {section}.{mode} is not an object of objects")
    version = doc.get("schema_version", SCHEMA_VERSION)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise CorruptSidecar(f"{path}: schema_version {version!r} is newer than this analyzer understands")
    doc.setdefault("analysis", {})
    doc.setdefault("errors", {})
    doc.setdefault("file_info", {})
    return doc


def read_sidecar(path: str | Path) -> dict[str, Any] | None:
    """The sidecar at ``path``, ``None`` if there is none. Raises CorruptSidecar."""
    found = read_sidecar_with_stat(path)
    return found[0] if found is not None else None


def read_sidecar_with_stat(path: str | Path) -> tuple[dict[str, Any], tuple[int, int]] | None:
    """The sidecar at ``path`` and the (size, mtime_ns) of the file read (one open: a file replaced
    meanwhile cannot pair one file's content with another's stat). Raises CorruptSidecar."""
    try:
        with open(path, "rb") as handle:
            st = os.fstat(handle.fileno())
            raw = handle.read()
    except FileNotFoundError:
        return None
    return _parse(raw, path), (st.st_size, st.st_mtime_ns)


def _parse(raw: bytes, path: str | Path) -> dict[str, Any]:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:  # also a ValueError for invalid UTF-8
        raise CorruptSidecar(f"{path}: not valid JSON ({exc})") from exc
    return _validate(doc, path)


def quarantine(path: Path) -> Path:
    """Move a corrupt sidecar aside as ``<name>.corrupt-<UTC time>`` and return the new path."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    os.replace(path, target)
    return target


_counter = itertools.count()


def atomic_write_text(path: Path, text: str) -> tuple[int, int]:
    """Write ``text`` (UTF-8) to ``path`` atomically: see :func:`atomic_write_bytes`."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes, owner: str | None = None) -> tuple[int, int]:
    """Write ``data`` to ``path`` through a temporary file, fsync and rename.

    Returns the written file's (size, mtime_ns). The temporary file is hidden (see :func:`stage`)
    and removed again if anything fails, so ``path`` holds the old content or the new, never a mix.
    """
    (found,) = publish([stage(path, data, owner)])
    if isinstance(found, OSError):
        raise found
    return found


def atomic_write_lines(path: Path, lines: Iterable[bytes], owner: str | None = None) -> tuple[int, int]:
    """:func:`atomic_write_bytes` for a long text given a line at a time (each ending in a newline):
    written as it comes, a few thousand lines at a time, so memory never holds the whole text."""
    staged = stage(path, b"", owner)
    try:
        chunk: list[bytes] = []
        for line in lines:
            chunk.append(line)
            if len(chunk) >= 4096:
                write_all(staged.fd, b"".join(chunk))
                chunk = []
        write_all(staged.fd, b"".join(chunk))
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(staged.fd)
        with contextlib.suppress(OSError):
            os.unlink(staged.tmp)
        raise
    (found,) = publish([staged])
    if isinstance(found, OSError):
        raise found
    return found


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to the file descriptor (``os.write`` may write less than asked)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


@dataclass
class Staged:
    """A file written under its temporary name, not yet synced nor in place (see :func:`publish`)."""

    path: str | Path
    tmp: str
    fd: int


def temp_path(path: str | Path, owner: str | None = None) -> str:
    """A new hidden temporary name beside ``path``, ``.<name>~<host>~<pid>~<n>.tmp``: it says who
    wrote it (``owner``, by default this process on this host), so a crashed writer's leftovers can
    be told from a live one's (:func:`analyzer.hosts.abandoned_temp`); no two calls give one name."""
    folder, name = os.path.split(path)
    who = owner or hosts.owner(hosts.default_host_id())
    return os.path.join(folder, f".{name[:64]}~{who}~{next(_counter)}.tmp")


def stage(path: str | Path, data: bytes, owner: str | None = None) -> Staged:
    """Write ``data`` to a new hidden temporary file beside ``path`` (blocking). Raises OSError.

    Its name, ``.<name>~<host>~<pid>~<n>.tmp``, says who wrote it (``owner``, by default this
    process on this host), so a crashed writer's leftovers can be told from a live one's.
    """
    tmp = temp_path(path, owner)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(tmp, flags, 0o644)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(tmp) or ".", exist_ok=True)
        fd = os.open(tmp, flags, 0o644)
    try:
        write_all(fd, data)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return Staged(path, tmp, fd)


FSYNC_THREADS = 8
"""fsyncs in flight at once: the file system's journal commits concurrent ones together."""
_fsyncs: ThreadPoolExecutor | None = None
_fsyncs_lock = threading.Lock()


def _fsync_all(staged: list[Staged]) -> list[OSError | None]:
    """fsync every file, several at once: the file system commits them together (blocking)."""

    def one(item: Staged) -> OSError | None:
        try:
            os.fsync(item.fd)
        except OSError as exc:
            return exc
        return None

    if len(staged) <= 1:
        return [one(item) for item in staged]
    global _fsyncs
    with _fsyncs_lock:
        if _fsyncs is None:
            _fsyncs = ThreadPoolExecutor(FSYNC_THREADS, thread_name_prefix="analyzer-fsync")
    return list(_fsyncs.map(one, staged))


def publish(staged: list[Staged]) -> list[tuple[int, int] | OSError]:
    """Sync the staged files, then rename each into place: per file its (size, mtime_ns) or the
    error that kept it out (its temporary file is removed; its old content stays). Blocking."""
    out: list[tuple[int, int] | OSError] = []
    for item, error in zip(staged, _fsync_all(staged), strict=True):
        try:
            try:
                if error is not None:
                    raise error
                st = os.fstat(item.fd)
            finally:
                os.close(item.fd)
            os.replace(item.tmp, item.path)
            out.append((st.st_size, st.st_mtime_ns))
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(item.tmp)
            out.append(exc)
    return out


def file_info(
    *, rel: str, hash_: str | None, size: int, mtime_ns: int, created_ns: int | None, now: str | None = None
) -> dict[str, Any]:
    """``hash_`` is None when the image could not be read (its errors are still recorded)."""
    algorithm = hash_.split(":", 1)[0] if hash_ else None
    return {
        "file_name": rel.rsplit("/", 1)[-1],
        "path": rel,
        "hash": hash_,
        "hash_algorithm": algorithm,
        "size": size,
        "mtime_ns": mtime_ns,
        "created": ns_to_iso(created_ns) if created_ns is not None else None,
        "modified": ns_to_iso(mtime_ns),
        "processed_at": now or now_iso(),
    }


def new_doc(plugin: str, plugin_version: str) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "plugin": {"name": plugin, "version": plugin_version},
        "file_info": {},
        "analysis": {},
        "errors": {},
    }


def merge_outcomes(
    doc: dict[str, Any],
    *,
    info: dict[str, Any],
    plugin_version: str,
    results: list[tuple[str, str, dict[str, Any]]],
    errors: list[tuple[str, str, dict[str, Any]]],
) -> dict[str, Any]:
    """Merge new results and errors, keyed (mode, model id), into ``doc`` (in place).

    A result replaces the result and clears the error of the same key; an error is recorded
    beside an earlier result of the same key, never over it.
    """
    doc["schema_version"] = SCHEMA_VERSION
    doc.setdefault("plugin", {})["version"] = plugin_version
    doc["file_info"] = info
    analysis = doc.setdefault("analysis", {})
    errs = doc.setdefault("errors", {})
    for mode, model, entry in results:
        analysis.setdefault(mode, {})[model] = entry
        if model in errs.get(mode, {}):
            del errs[mode][model]
            if not errs[mode]:
                del errs[mode]
    for mode, model, entry in errors:
        errs.setdefault(mode, {})[model] = entry
    return doc


_OPTIONS = orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS


def as_json(value: Any) -> Any:
    """``value`` as it reads back from a sidecar; TypeError (``orjson.JSONEncodeError``) if it is not JSON."""
    if value is None or type(value) in (str, bool):  # most results: nothing to convert
        return value
    return orjson.loads(orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS))


def dumps(doc: dict[str, Any]) -> bytes:
    """The sidecar as UTF-8 JSON, indented by two spaces, keys in their order, ending with a newline.

    orjson writes it (Python's own encoder falls back to pure Python when indenting: about 0.2 ms
    per sidecar, a fifth of a cold metadata run). Values JSON cannot hold are written as text.
    """
    return orjson.dumps(doc, default=str, option=_OPTIONS)


def done_keys(doc: dict[str, Any]) -> list[str]:
    """``"mode\\tmodel"`` keys that have a result."""
    return sorted(f"{mode}\t{model}" for mode, by_model in doc.get("analysis", {}).items() for model in by_model)


def failed_keys(doc: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(retryable, permanent) ``"mode\\tmodel"`` keys that have an error."""
    retry: list[str] = []
    perm: list[str] = []
    for mode, by_model in doc.get("errors", {}).items():
        for model, entry in by_model.items():
            (retry if entry.get("retryable") else perm).append(f"{mode}\t{model}")
    return sorted(retry), sorted(perm)
