"""The index: an SQLite cache of what the sidecars say, so a warm run reads no sidecar.

The sidecars are the truth; the index only remembers, per image, the image's size, mtime and
hash, and per sidecar its size and mtime and a digest of its contents (which modes and models
are done or failed, its wildcard entries, the context digests its results were made from, and
the digests of the values other plugins read from it), and, in a table of their own, its results
(each result and when it was made, without the rest of the entry), so that a command reading
values from 100,000 images (``analyzer export``) reads one table, not 100,000 files. Whenever a
sidecar's size or mtime differs from what the index remembers, the sidecar is read again and the
index row replaced; a missing or unreadable index is rebuilt the same way. Deleting it is always
safe.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import orjson

from .discovery import Stat

log = logging.getLogger(__name__)

INDEX_VERSION = "4"
INDEX_NAME = "index.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS images(
    dir TEXT NOT NULL, name TEXT NOT NULL, size INTEGER, mtime_ns INTEGER, hash TEXT,
    PRIMARY KEY(dir, name)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sidecars(
    dir TEXT NOT NULL, name TEXT NOT NULL, plugin TEXT NOT NULL,
    sc_size INTEGER, sc_mtime_ns INTEGER, hash TEXT,
    done TEXT, retry TEXT, failed TEXT, wild TEXT, ctx TEXT, sel TEXT,
    PRIMARY KEY(dir, name, plugin)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS results(
    dir TEXT NOT NULL, name TEXT NOT NULL, plugin TEXT NOT NULL, hash TEXT, data TEXT NOT NULL,
    PRIMARY KEY(dir, name, plugin));
CREATE TABLE IF NOT EXISTS claims(
    dir TEXT NOT NULL, name TEXT NOT NULL, plugin TEXT NOT NULL, owner TEXT NOT NULL,
    items TEXT NOT NULL, expires REAL NOT NULL,
    PRIMARY KEY(dir, name, plugin, owner)) WITHOUT ROWID;
"""

Claim = tuple[str, str, str, frozenset[str]]
"""(folder, image name, plugin, its ``"mode\tmodel"`` items): one image's work for a plugin, as claimed."""


@dataclass(slots=True)
class SidecarRow:
    stat: Stat
    hash: str | None
    done: frozenset[str]
    retry: frozenset[str]
    failed: frozenset[str]
    wild: str | None = None
    ctx: dict[str, str] | None = None
    """``"mode\tmodel"`` -> digest of the context (other results) that result was made from."""
    sel: dict[str, str] | None = None
    """selector text -> digest of its value in this sidecar, for the selectors other plugins read."""
    results: str | None = None
    """The sidecar's results as JSON, ``{mode: {model: {"result", "created_at"}}}`` (written to the
    index, not read back by :meth:`Index.load_dir`: :meth:`Index.results_in` reads them)."""


@dataclass(slots=True)
class ImageRow:
    stat: Stat | None = None
    hash: str | None = None
    sidecars: dict[str, SidecarRow] = field(default_factory=dict)


@lru_cache(maxsize=4096)
def _keys(text: str | None) -> frozenset[str]:
    """Most sidecars have the same done/failed keys: one shared frozenset per distinct text."""
    return frozenset(text.split("\n")) if text else frozenset()


def _json_map(text: str | None) -> dict[str, str] | None:
    return orjson.loads(text) if text else None


def _json_text(value: dict[str, str] | None) -> str | None:
    return json.dumps(value, sort_keys=True) if value else None


BUSY_TIMEOUT = 60.0
"""Seconds a statement waits for another process's write to finish before giving up."""
FLUSH_ROWS = 512
FLUSH_SECONDS = 0.25


class Index:
    """One root's index, shared by every process of this host that works on the root.

    Writes are kept in memory and written in one short transaction at a time (every
    ``FLUSH_ROWS`` writes or ``FLUSH_SECONDS``, before a read, and on :meth:`commit`), so no
    process holds SQLite's write lock for longer than that; the others wait for it (busy timeout),
    never fail. A write that cannot be saved is logged and dropped: the index is a cache of the
    sidecars, and what it misses is read again from them.
    """

    def __init__(self, path: Path | None, *, read_only: bool = False) -> None:
        """Open (creating) the index at ``path``; ``None`` keeps it in memory for this run.

        ``read_only`` (a dry run): an existing index is read, never created nor changed; what this
        process would write is dropped.
        """
        self.path = path
        self.read_only = read_only
        self._lock = threading.Lock()
        self._pending: list[tuple[tuple[str, tuple[object, ...]], ...]] = []
        self._pending_since = 0.0
        self.changes = 0
        """Counts every change (under the lock): a reader compares it with the count it saw last."""
        if read_only:
            self._db = self._open_read_only(path)
            return
        self._db = self._connect()
        try:
            self._init()
        except sqlite3.OperationalError:
            raise  # locked or unreachable: another process may be using it, never delete it
        except sqlite3.DatabaseError:
            if path is None:
                raise
            log.warning("index %s is unreadable; rebuilding it from the sidecars", path)
            self._db.close()
            path.unlink(missing_ok=True)
            self._db = self._connect()
            self._init()

    @staticmethod
    def _open_read_only(path: Path | None) -> sqlite3.Connection:
        """The existing index at ``path`` opened for reading, else an empty one in memory."""
        if path is not None and path.is_file():
            try:
                db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False, isolation_level=None)
                row = db.execute("SELECT value FROM meta WHERE key='version'").fetchone()
                if row is not None and row[0] == INDEX_VERSION:
                    return db
                db.close()
            except sqlite3.Error:
                pass
        db = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        for statement in ["CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT)", *_SCHEMA.split(";")]:
            if statement.strip() and "meta(" not in statement:
                db.execute(statement)
        return db

    def _connect(self) -> sqlite3.Connection:
        target = str(self.path) if self.path is not None else ":memory:"
        db = sqlite3.connect(target, timeout=BUSY_TIMEOUT, check_same_thread=False, isolation_level=None)
        db.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}")
        return db

    def _init(self) -> None:
        db = self._db
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("BEGIN IMMEDIATE")  # one process at a time sets the layout up
        try:
            db.execute("CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID")
            row = db.execute("SELECT value FROM meta WHERE key='version'").fetchone()
            if row is None or row[0] != INDEX_VERSION:  # another layout: rebuilt from the sidecars
                db.execute("DROP TABLE IF EXISTS images")
                db.execute("DROP TABLE IF EXISTS sidecars")
                db.execute("DROP TABLE IF EXISTS claims")
                db.execute("DROP TABLE IF EXISTS results")
                db.execute("INSERT OR REPLACE INTO meta VALUES('version', ?)", (INDEX_VERSION,))
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    @classmethod
    def open_for(cls, state_dir: Path, fallback_key: str) -> Index:
        """The index under ``state_dir``, or in the user cache, or in memory: the first that works."""
        candidates = [state_dir]
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "analyzer" / fallback_key
        candidates.append(cache)
        for folder in candidates:
            try:
                folder.mkdir(parents=True, exist_ok=True)
                index = cls(folder / INDEX_NAME)
            except (OSError, sqlite3.Error) as exc:
                log.warning("cannot use index folder %s (%s); trying the next place", folder, exc)
                continue
            if folder != state_dir:
                log.warning("index for this root kept in %s (cannot write %s)", folder, state_dir)
            return index
        log.warning("no writable place for the index: keeping it in memory (warm runs will be slower)")
        return cls(None)

    # -- reading -------------------------------------------------------------------------
    def load_dir(self, rel_dir: str, names: Sequence[str] | None = None) -> dict[str, ImageRow]:
        """The rows of a folder's images, or of just ``names`` in it (the watcher's few at a time)."""
        rows: dict[str, ImageRow] = {}
        where, args = "dir=?", [rel_dir]
        if names is not None:
            where += f" AND name IN ({','.join('?' * len(names))})"
            args = [rel_dir, *names]
        with self._lock:
            self._flush_locked()
            images = self._db.execute(f"SELECT name, size, mtime_ns, hash FROM images WHERE {where}", args)
            for name, size, mtime_ns, hash_ in images:
                rows[name] = ImageRow((size, mtime_ns), hash_)
            sidecars = self._db.execute(
                "SELECT name, plugin, sc_size, sc_mtime_ns, hash, done, retry, failed, ctx, sel "
                f"FROM sidecars WHERE {where}",
                args,
            )
            for name, plugin, sc_size, sc_mtime, hash_, done, retry, failed, ctx, sel in sidecars:
                row = rows.get(name)
                if row is None:
                    row = rows[name] = ImageRow()
                row.sidecars[plugin] = SidecarRow(
                    (sc_size, sc_mtime),
                    hash_,
                    _keys(done),
                    _keys(retry),
                    _keys(failed),
                    None,
                    _json_map(ctx),
                    _json_map(sel),
                )
        return rows

    def dirs(self) -> set[str]:
        with self._lock:
            self._flush_locked()
            found = {d for (d,) in self._db.execute("SELECT DISTINCT dir FROM images")}
            found |= {d for (d,) in self._db.execute("SELECT DISTINCT dir FROM sidecars")}
        return found

    def wildcard_rows(self, plugins: Iterable[str]) -> Iterator[tuple[str, dict[str, list[str]]]]:
        """(plugin, {mode: entries}) for every indexed sidecar, in path order."""
        wanted = list(plugins)
        if not wanted:
            return
        marks = ",".join("?" * len(wanted))
        with self._lock:
            self._flush_locked()
            rows = self._db.execute(
                f"SELECT plugin, wild FROM sidecars WHERE plugin IN ({marks}) AND wild IS NOT NULL ORDER BY dir, name",
                wanted,
            ).fetchall()
        for plugin, wild in rows:
            yield plugin, json.loads(wild)

    def sidecar_images(self, plugin: str) -> list[str]:
        """The images (relative paths) that have a sidecar of ``plugin``, in path order."""
        with self._lock:
            self._flush_locked()
            rows = self._db.execute(
                "SELECT dir, name FROM sidecars WHERE plugin=? ORDER BY dir, name", (plugin,)
            ).fetchall()
        return [f"{d}/{n}" if d else n for d, n in rows]

    def results_in(
        self, rel_dir: str, plugins: Sequence[str], names: Sequence[str] | None = None
    ) -> dict[str, dict[str, tuple[str | None, str]]]:
        """The stored results of a folder's sidecars of ``plugins`` (of the images ``names`` only,
        if given): name -> plugin -> (the hash of the content they describe, their JSON, see
        :attr:`SidecarRow.results`)."""
        found: dict[str, dict[str, tuple[str | None, str]]] = {}
        if not plugins or (names is not None and not names):
            return found
        marks = ",".join("?" * len(plugins))
        query = f"SELECT name, plugin, hash, data FROM results WHERE dir=? AND plugin IN ({marks})"
        args = [rel_dir, *plugins]
        if names is not None:
            query += f" AND name IN ({','.join('?' * len(names))})"
            args += names
        with self._lock:
            self._flush_locked()
            rows = self._db.execute(query, args).fetchall()
        for name, plugin, hash_, data in rows:
            found.setdefault(name, {})[plugin] = (hash_, data)
        return found

    # -- writing -------------------------------------------------------------------------
    def put_image(self, rel_dir: str, name: str, stat: Stat, hash_: str) -> None:
        self._write("INSERT OR REPLACE INTO images VALUES(?,?,?,?,?)", (rel_dir, name, stat[0], stat[1], hash_))

    def put_sidecar(self, rel_dir: str, name: str, plugin: str, stat: Stat, row: SidecarRow) -> None:
        key = (rel_dir, name, plugin)
        results: tuple[str, tuple[object, ...]] = (
            ("INSERT OR REPLACE INTO results VALUES(?,?,?,?,?)", (*key, row.hash, row.results))
            if row.results is not None
            else ("DELETE FROM results WHERE dir=? AND name=? AND plugin=?", key)
        )
        self._write(
            "INSERT OR REPLACE INTO sidecars VALUES(?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                rel_dir,
                name,
                plugin,
                stat[0],
                stat[1],
                row.hash,
                "\n".join(sorted(row.done)),
                "\n".join(sorted(row.retry)),
                "\n".join(sorted(row.failed)),
                row.wild,
                _json_text(row.ctx),
                _json_text(row.sel),
            ),
            then=results,
        )

    def reading_rules(self, plugin: str, digest: str) -> bool:
        """Note the rules ``plugin`` reads its results with now; when they differ from the last ones
        noted, its sidecar rows are dropped (their wildcard lines were made under the old rules), so
        the next walk reads its sidecars again. True when they were dropped."""
        if self.read_only:
            return False
        key = f"rules:{plugin}"
        with self._lock:
            self._flush_locked()
            row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
            if (row[0] if row else "") == digest:
                return False
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("DELETE FROM sidecars WHERE plugin=?", (plugin,))
                self._db.execute("DELETE FROM results WHERE plugin=?", (plugin,))
                self._db.execute("INSERT OR REPLACE INTO meta VALUES(?, ?)", (key, digest))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self.changes += 1
            return True

    def delete_sidecar(self, rel_dir: str, name: str, plugin: str) -> None:
        key = (rel_dir, name, plugin)
        self._write(
            "DELETE FROM sidecars WHERE dir=? AND name=? AND plugin=?",
            key,
            then=("DELETE FROM results WHERE dir=? AND name=? AND plugin=?", key),
        )

    def delete_names(self, rel_dir: str, names: Iterable[str]) -> None:
        for name in names:
            self._write("DELETE FROM images WHERE dir=? AND name=?", (rel_dir, name))
            self._write(
                "DELETE FROM sidecars WHERE dir=? AND name=?",
                (rel_dir, name),
                then=("DELETE FROM results WHERE dir=? AND name=?", (rel_dir, name)),
            )

    def delete_dirs(self, rel_dirs: Iterable[str]) -> None:
        for rel_dir in rel_dirs:
            self._write("DELETE FROM images WHERE dir=?", (rel_dir,))
            self._write(
                "DELETE FROM sidecars WHERE dir=?", (rel_dir,), then=("DELETE FROM results WHERE dir=?", (rel_dir,))
            )

    def _write(self, sql: str, args: tuple[object, ...], then: tuple[str, tuple[object, ...]] | None = None) -> None:
        """Queue one statement (and ``then``, a second one on another table that goes with it)."""
        with self._lock:
            self.changes += 1
            if self.read_only:
                return
            if not self._pending:
                self._pending_since = time.monotonic()
            self._pending.append(((sql, args),) if then is None else ((sql, args), then))
            if len(self._pending) >= FLUSH_ROWS or time.monotonic() - self._pending_since >= FLUSH_SECONDS:
                self._flush_locked()

    def _flush_locked(self) -> None:
        """Write what is pending in one short transaction (under the lock)."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                # a run of writes of one kind (each one statement, or a pair on two tables) is
                # written with one executemany per statement: the order per table is kept
                for _, run in itertools.groupby(pending, key=lambda p: tuple(sql for sql, _ in p)):
                    writes = list(run)
                    for position, (sql, _) in enumerate(writes[0]):
                        db.executemany(sql, [write[position][1] for write in writes])
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:  # a cache: what it misses is read again from the sidecars
            log.warning(
                "index %s: %d changes not saved (%s); they are read again from the sidecars",
                self.path,
                len(pending),
                exc,
            )

    # -- claims: who analyses what, between the processes of this host ----------------------
    def claim(self, wanted: Sequence[Claim], owner: str, lease: float, gone: Callable[[str], bool]) -> list[Claim]:
        """Claim items for ``owner`` for ``lease`` seconds; returns, per claim asked, the items it got.

        An item another owner claimed is refused while that claim is unexpired and its owner not
        ``gone``; otherwise it is taken over. One short transaction for the whole batch.
        """
        now = time.time()
        granted: list[Claim] = []
        with self._lock:
            self._flush_locked()
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                held: dict[tuple[str, str, str], set[str]] = {}
                for rel_dir, names in itertools.groupby(sorted({(c[0], c[1]) for c in wanted}), key=lambda k: k[0]):
                    found = [name for _, name in names]
                    marks = ",".join("?" * len(found))
                    rows = db.execute(
                        f"SELECT name, plugin, owner, items, expires FROM claims WHERE dir=? AND name IN ({marks})",
                        [rel_dir, *found],
                    )
                    for name, plugin, other, items, expires in rows:
                        if other != owner and expires > now and not gone(other):
                            held.setdefault((rel_dir, name, plugin), set()).update(items.split("\n"))
                rows_out = []
                for rel_dir, name, plugin, items in wanted:
                    mine = frozenset(items - held.get((rel_dir, name, plugin), set()))
                    granted.append((rel_dir, name, plugin, mine))
                    if mine:
                        rows_out.append((rel_dir, name, plugin, owner, "\n".join(sorted(mine)), now + lease))
                db.executemany("INSERT OR REPLACE INTO claims VALUES(?,?,?,?,?,?)", rows_out)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return granted

    def release(self, done: Iterable[Claim], owner: str) -> None:
        """Give up ``owner``'s claims on these images' work (written, or not to be done here)."""
        for rel_dir, name, plugin, _ in done:
            self._write(
                "DELETE FROM claims WHERE dir=? AND name=? AND plugin=? AND owner=?", (rel_dir, name, plugin, owner)
            )

    def purge_claims(self, gone: Callable[[str], bool]) -> int:
        """Forget expired claims and those of owners that are ``gone``; returns how many (on open)."""
        now = time.time()
        with self._lock:
            self._flush_locked()
            rows = self._db.execute("SELECT dir, name, plugin, owner, expires FROM claims").fetchall()
        dead = [row[:4] for row in rows if row[4] <= now or gone(row[3])]
        for key in dead:
            self._write("DELETE FROM claims WHERE dir=? AND name=? AND plugin=? AND owner=?", key)
        return len(dead)

    def renew(self, owner: str, lease: float) -> None:
        """Extend every claim of ``owner`` by ``lease`` seconds from now (a long analysis is not taken over)."""
        self._write("UPDATE claims SET expires=? WHERE owner=?", (time.time() + lease, owner))

    def commit(self) -> None:
        """Write what is pending now."""
        with self._lock:
            self._flush_locked()

    def close(self) -> None:
        with self._lock:
            self._flush_locked()
            self._db.close()
