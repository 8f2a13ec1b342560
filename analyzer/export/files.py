"""Putting files into a dataset safely: folder and file names, links or copies, and re-encoded images.

Names. A label or a file name becomes a name that every common file system accepts
(:func:`folder_name`, :func:`file_name`):

* Unicode is kept, normalised to NFC (macOS would otherwise show two spellings of one name).
* ``/ \\ : * ? " < > |``, control characters and lone surrogates become ``_``; other whitespace
  (tabs, newlines) becomes a space.
* Leading and trailing dots and spaces are dropped (hidden files; Windows drops trailing ones),
  so ``.`` and ``..`` are never produced; what is left empty becomes ``unnamed``.
* Windows' reserved device names (CON, PRN, AUX, NUL, CONIN$, CONOUT$, COM0-9, LPT0-9, also
  with ¹²³, in any case, also with an extension: ``con.txt``) get a ``_``: ``CON_``, ``con_.txt``.
* A name longer than 255 bytes of UTF-8 (``max_bytes``) is cut on a character boundary and
  ends in ``-<8 hex digits>`` of a SHA-256 of the original, so two long names stay apart.
* A file name's extension (``.png``, ASCII letters and digits after the last dot) is kept as it
  is, case included; the rules above apply to the stem.

Names are compared as the most forgiving file system does (case-folded), so ``Cat`` and
``cat`` never share a folder on Windows or macOS. :class:`FolderNames` gives a set of labels
distinct folder names, the same whatever order the labels come in; :class:`FileNames` gives
files from several input roots distinct names, and the same content one name.

Placing. :func:`place` puts a source file at a destination as a reflink (copy-on-write clone),
a hard link, a symbolic link or a copy, and :func:`transform` writes a new, resized or
metadata-free image. Both write to a hidden temporary file beside the destination
(``.<name>~<host>~<pid>~<n>.tmp``, the naming of :func:`analyzer.sidecar.stage`) and rename it
over the destination, so the destination holds the old file or the new one, never a part. A
failure (a full disk, a read-only destination) raises an ``OSError`` naming the destination and
leaves no temporary file behind. Sources are opened for reading only: never moved, changed or
deleted, and a destination that is the source itself is refused.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import itertools
import os
import re
import stat
import sys
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NoReturn

from .. import sidecar
from ..errors import AnalyzerError, ImageError
from ..images import DEFAULT_MAX_PIXELS, open_image
from ..sidecar import Staged, atomic_write_bytes, publish, stage

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "FICLONE",
    "HARD_LINK_WARNING",
    "MAX_NAME_BYTES",
    "METHODS",
    "FileNames",
    "FolderNames",
    "LinkNotSupported",
    "Placer",
    "file_name",
    "folder_name",
    "place",
    "transform",
]

MAX_NAME_BYTES: Final = 255
"""The longest file or folder name ext4, XFS, btrfs, NTFS and APFS all take (UTF-8 bytes)."""

UNNAMED: Final = "unnamed"
"""The name of an empty label (or one of dots and spaces only)."""

HASH_CHARS: Final = 8
"""Hex digits of the hash that tells two names apart: ``<name>-1a2b3c4d``."""

METHODS: Final = ("auto", "reflink", "hard", "sym", "copy")
"""What :func:`place` accepts: ``auto`` tries reflink, then a hard link, then a copy."""

HARD_LINK_WARNING: Final = "exported files are hard links: editing an exported file edits the original"
"""What to say once when :func:`place` returned ``"hard"``."""

FICLONE: Final = 0x40049409
"""Linux ``ioctl`` that makes a file share another's blocks, copy-on-write (btrfs, XFS, bcachefs...)."""

_NO_REFLINK = frozenset({errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EINVAL, errno.ENOTTY, errno.ENOSYS})
"""``FICLONE`` errors that mean "not on these file systems" (rather than a failed write)."""
_NO_HARD_LINK = frozenset({errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS})
"""``link()`` errors that mean "no hard link here": another device, a file system without them,
``fs.protected_hardlinks``, too many links."""

_CHUNK = 1 << 24


# --- names -------------------------------------------------------------------------------------

_SPACES = re.compile(r"[^\S ]")
_UNSAFE = re.compile('[\x00-\x1f\x7f-\x9f/\\\\:*?"<>|\ud800-\udfff]')
_EXTENSION = re.compile(r"\.[A-Za-z0-9]{1,16}\Z")
_HEX = re.compile(r"[0-9a-fA-F]{8,}")
_RESERVED = frozenset(
    {"con", "prn", "aux", "nul", "conin$", "conout$"}
    | {f"{device}{digit}" for device in ("com", "lpt") for digit in "0123456789¹²³"}
)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _key(name: str) -> str:
    """What two names are compared by: case-folded, as a case-insensitive file system compares them."""
    return unicodedata.normalize("NFC", name.casefold())


def _clean(text: str) -> str:
    """``text`` made a valid name, not yet limited in length (see the module's rules)."""
    name = _UNSAFE.sub("_", _SPACES.sub(" ", unicodedata.normalize("NFC", text))).strip(" .")
    if not name:
        return UNNAMED
    base = name.split(".", 1)[0].rstrip(" ")
    if base.casefold() in _RESERVED:
        name = f"{base}_{name[len(base) :]}"
    return name


def _joins(char: str) -> bool:
    """Whether ``char`` belongs to the character before it (an accent, a variation selector, a joiner)."""
    return unicodedata.category(char).startswith("M") or char == "\u200d"


def _cut(name: str, max_bytes: int) -> str:
    """The longest start of ``name`` that fits ``max_bytes`` of UTF-8, cut between characters and
    never inside a cluster (a letter keeps its accents, a joined emoji its parts), without
    trailing dots or spaces."""
    data = name.encode("utf-8")
    if len(data) <= max_bytes:
        return name
    cut = data[:max_bytes].decode("utf-8", "ignore")  # drops a character cut in two
    while cut and (_joins(name[len(cut)]) or cut[-1] == "\u200d"):
        cut = cut[:-1]
    return cut.rstrip(" .")


def _tagged(name: str, tag: str, max_bytes: int) -> str:
    """``<name>-<tag>``, ``name`` cut so the whole fits ``max_bytes``."""
    base = _cut(name, max_bytes - len(tag) - 1)
    return f"{base}-{tag}" if base else tag


def _check_max_bytes(max_bytes: int) -> None:
    if max_bytes < 4 * HASH_CHARS:
        raise ValueError(f"max_bytes must be at least {4 * HASH_CHARS}, not {max_bytes}")


def folder_name(label: str, *, max_bytes: int = MAX_NAME_BYTES) -> str:
    """``label`` as a valid folder name (see the module's rules); alone, not kept apart from others.

    ``max_bytes`` leaves room for what the caller adds: a kohya folder ``10_<label>`` needs
    ``MAX_NAME_BYTES - 3``.
    """
    _check_max_bytes(max_bytes)
    name = _clean(label)
    if len(name.encode("utf-8")) > max_bytes:
        name = _tagged(name, _digest(label)[:HASH_CHARS], max_bytes)
    return name


def _split_extension(name: str) -> tuple[str, str]:
    found = _EXTENSION.search(name)
    if found is None or found.start() == 0:
        return name, ""
    return name[: found.start()], found.group()


def file_name(name: str, *, max_bytes: int = MAX_NAME_BYTES) -> str:
    """``name`` as a valid file name: the stem as :func:`folder_name` makes it, the extension kept."""
    _check_max_bytes(max_bytes)
    stem, extension = _split_extension(unicodedata.normalize("NFC", name))
    return folder_name(stem, max_bytes=max_bytes - len(extension)) + extension


def _first_free(name: str, digest: str, max_bytes: int, free: Callable[[str], bool]) -> str:
    """``<name>-<digest[:8]>``, more of the digest while that is not ``free``, then a counter."""
    for size in range(HASH_CHARS, len(digest) + 1, 4):
        candidate = _tagged(name, digest[:size], max_bytes)
        if free(candidate):
            return candidate
    for n in itertools.count(2):  # only names made to collide on purpose get here
        candidate = _tagged(name, f"{digest[:HASH_CHARS]}-{n}", max_bytes)
        if free(candidate):
            return candidate
    raise AssertionError("unreachable")


class FolderNames(Mapping[str, str]):
    """Distinct folder names for a set of labels, the same names whatever order the labels come in.

    Each label gets :func:`folder_name`. Labels whose names are alike (equal once case-folded)
    share it out: the label that is its own name exactly (``a_b`` before ``a/b``), else the
    first in code-point order (``Cat`` before ``cat``), keeps the plain name; every other one
    gets ``-<8 hex digits>`` of a SHA-256 of the label (more digits in the unlikely case that
    name is taken too). A mapping from label to name; :meth:`name` also takes a label that was
    not in the set (it gets the plain name if free, else the hashed one: then order matters).
    """

    def __init__(self, labels: Iterable[str] = (), *, max_bytes: int = MAX_NAME_BYTES) -> None:
        _check_max_bytes(max_bytes)
        self.max_bytes = max_bytes
        self._names: dict[str, str] = {}
        self._taken: set[str] = set()
        unique = sorted(set(labels))
        plain = {label: folder_name(label, max_bytes=max_bytes) for label in unique}
        groups: dict[str, list[str]] = {}
        for label in unique:
            groups.setdefault(_key(plain[label]), []).append(label)
        others: list[str] = []
        for key, members in groups.items():
            members.sort(key=lambda label: (label != plain[label], label))
            self._names[members[0]] = plain[members[0]]
            self._taken.add(key)
            others.extend(members[1:])
        for label in sorted(others):
            self._give(label, _first_free(plain[label], _digest(label), max_bytes, self._free))

    def _free(self, name: str) -> bool:
        return _key(name) not in self._taken

    def _give(self, label: str, name: str) -> str:
        self._names[label] = name
        self._taken.add(_key(name))
        return name

    def name(self, label: str) -> str:
        """The folder name of ``label``."""
        found = self._names.get(label)
        if found is not None:
            return found
        plain = folder_name(label, max_bytes=self.max_bytes)
        if _key(plain) not in self._taken:
            return self._give(label, plain)
        return self._give(label, _first_free(plain, _digest(label), self.max_bytes, self._free))

    def __getitem__(self, label: str) -> str:
        return self._names[label]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


class FileNames:
    """Distinct names for files gathered from several folders, and one name per content.

    :meth:`name_for` gives a file its own (sanitised, :func:`file_name`) name when that is free,
    else ``<stem>-<first 8 hex digits of its content hash><suffix>``; asked again for a content
    hash it has named, it returns that first name (export the content once). The names follow
    from the order of the requests alone, after the names given with :meth:`keep` (a re-export's
    names from the export before, so that no newcomer takes an earlier file's name).

    ``unique_stems`` (the default) keeps stems apart too, not only whole names: ``a.png`` and a
    different ``a.jpg`` would share the caption ``a.txt`` of a kohya dataset, so the second
    becomes ``a-<hash>.jpg``. Names are compared case-folded (``A.png`` and ``a.png`` are one
    file on Windows and macOS).
    """

    def __init__(self, *, unique_stems: bool = True, max_bytes: int = MAX_NAME_BYTES) -> None:
        _check_max_bytes(max_bytes)
        self.unique_stems = unique_stems
        self.max_bytes = max_bytes
        self._by_hash: dict[str, str] = {}
        self._taken: set[str] = set()

    def name_for(self, name: str, content_hash: str) -> str:
        """The name for the file called ``name`` (a name, not a path) whose content hash is
        ``content_hash`` (``sha256:<hex>`` as :func:`analyzer.hashing.hash_file` gives, or bare hex)."""
        found = self._by_hash.get(content_hash)
        if found is not None:
            return found
        stem, extension = _split_extension(file_name(name, max_bytes=self.max_bytes))
        if self._key(stem, extension) in self._taken:
            digest = content_hash.rpartition(":")[2]
            digest = digest.lower() if _HEX.fullmatch(digest) else _digest(content_hash)
            stem = _first_free(
                stem,
                digest,
                self.max_bytes - len(extension),
                lambda candidate: self._key(candidate, extension) not in self._taken,
            )
        self._taken.add(self._key(stem, extension))
        self._by_hash[content_hash] = stem + extension
        return stem + extension

    def keep(self, name: str, content_hash: str) -> bool:
        """Give ``content_hash`` the ``name`` it had before, if that name is free and the content has
        none yet: what :meth:`name_for` then returns for it. Whether it was kept."""
        stem, extension = _split_extension(name)
        key = self._key(stem, extension)
        if content_hash in self._by_hash or key in self._taken or file_name(name, max_bytes=self.max_bytes) != name:
            return False
        self._taken.add(key)
        self._by_hash[content_hash] = name
        return True

    def _key(self, stem: str, extension: str) -> str:
        return _key(stem if self.unique_stems else stem + extension)

    def __contains__(self, content_hash: object) -> bool:
        """Whether a file with this content hash has a name already."""
        return content_hash in self._by_hash

    def __len__(self) -> int:
        return len(self._by_hash)


# --- placing files -----------------------------------------------------------------------------


class LinkNotSupported(AnalyzerError, OSError):
    """The link asked for (``reflink`` or ``hard``) cannot be made between these two places."""

    method: str = ""


def _temp_path(dst: str | Path) -> str:
    """A new hidden temporary name beside ``dst``, named as sidecars' are (:func:`analyzer.sidecar.temp_path`)."""
    return sidecar.temp_path(dst)


def write_small(dst: str | Path, data: bytes) -> None:
    """Write a small file (a caption), without an fsync of its own: where nothing is yet, in place
    (one ``write``: a new caption is there whole, or empty only if the process is killed between
    two system calls, and the journal does not list it then: the next export writes it again);
    else under a temporary name renamed over the old, so a reader sees the old file or the new,
    never a mix. After a power cut an export checks each kept file's size, so one left empty then
    is written again too."""
    try:
        try:
            _write_new(dst, data)
        except FileExistsError:
            tmp = _temp_path(dst)
            try:
                _write_new(tmp, data)
                os.replace(tmp, dst)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
    except OSError as exc:
        raise _with_destination(exc, dst) from exc


def _write_new(path: str | Path, data: bytes) -> None:
    """Create ``path`` (and its folder if need be) holding ``data``; FileExistsError if it is there.
    A failed write removes what it began."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o666)
    except FileNotFoundError:  # its folder is not there yet
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, flags, 0o666)
    try:
        try:
            sidecar.write_all(fd, data)
        finally:
            os.close(fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise


def _is_temp(name: object) -> bool:
    base = os.path.basename(os.fsdecode(name)) if isinstance(name, str | bytes | os.PathLike) else ""
    return base.startswith(".") and base.endswith(".tmp")


def _with_destination(exc: OSError, dst: str | Path) -> OSError:
    """``exc`` naming ``dst`` where it named a temporary file or nothing (``write``, ``fsync``)."""
    if exc.errno is None:
        return exc
    if exc.filename2 is not None and _is_temp(exc.filename2):  # link(), symlink(), rename()
        return OSError(exc.errno, exc.strerror, exc.filename, None, str(dst))
    if exc.filename is None or _is_temp(exc.filename):
        return OSError(exc.errno, exc.strerror, str(dst))
    return exc  # it names the source or a folder: clear already


def _reraise(exc: OSError, dst: str | Path) -> NoReturn:
    """Raise ``exc``, or a copy naming ``dst`` (see :func:`_with_destination`) caused by it."""
    clearer = _with_destination(exc, dst)
    if clearer is exc:
        raise exc
    raise clearer from exc


def _refuse_source(src: Path, dst: Path) -> None:
    """Raise ValueError when ``dst`` is the source's own directory entry (replacing it would change it)."""
    try:
        same_folder = os.path.samefile(src.parent, dst.parent)
    except OSError:
        return
    if same_folder and (
        src.name == dst.name
        or (src.name.casefold() == dst.name.casefold() and os.path.lexists(dst) and os.path.samefile(src, dst))
    ):
        raise ValueError(f"refusing to write over the source itself: {dst}")


def _source_stat(src: str | Path) -> os.stat_result:
    st = os.stat(src)
    if not stat.S_ISREG(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, "not a regular file", str(src))
    return st


def _discard(staged: Staged) -> None:
    with contextlib.suppress(OSError):
        os.close(staged.fd)
    with contextlib.suppress(OSError):
        os.unlink(staged.tmp)


def _publish(staged: Staged, dst: Path) -> None:
    (found,) = publish([staged])  # fsync, rename; removes the temporary file on failure
    if isinstance(found, OSError):
        _reraise(found, dst)


def _stage_empty(dst: Path) -> Staged:
    try:
        return stage(dst, b"")
    except OSError as exc:
        _reraise(exc, dst)


def _copy_fd(src_fd: int, dst_fd: int) -> None:
    offset = 0
    try:
        while sent := os.sendfile(dst_fd, src_fd, offset, _CHUNK):
            offset += sent
        return
    except OSError as exc:
        if offset or exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
    while chunk := os.read(src_fd, _CHUNK):  # sendfile cannot read this source: plain reads
        sidecar.write_all(dst_fd, chunk)


def _copy(src: Path, dst: Path) -> None:
    with open(src, "rb") as source:
        staged = _stage_empty(dst)
        try:
            _copy_fd(source.fileno(), staged.fd)
        except OSError as exc:
            _discard(staged)
            _reraise(exc, dst)
        except BaseException:
            _discard(staged)
            raise
    _publish(staged, dst)


_no_reflink: set[tuple[int, int]] = set()
"""(source device, destination folder device) pairs where a reflink failed as unsupported."""


def _unsupported(method: str, exc: OSError, src: str | Path, dst: str | Path) -> LinkNotSupported:
    what = {"reflink": "reflinks (copy-on-write clones)", "hard": "hard links"}[method]
    error = LinkNotSupported(exc.errno, f"{what} are not possible from {src} to here ({exc.strerror})", str(dst))
    error.method = method
    return error


def _reflink(src: Path, dst: Path, src_dev: int, dst_dev: int | None = None) -> None:
    if sys.platform != "linux":
        raise _unsupported("reflink", OSError(errno.ENOTSUP, "only on Linux"), src, dst)
    import fcntl

    devices = (src_dev, dst_dev if dst_dev is not None else _folder_device(dst))
    if devices in _no_reflink:
        raise _unsupported("reflink", OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP)), src, dst)
    with open(src, "rb") as source:
        staged = _stage_empty(dst)
        try:
            fcntl.ioctl(staged.fd, FICLONE, source.fileno())
        except OSError as exc:
            _discard(staged)
            if exc.errno in _NO_REFLINK:
                _no_reflink.add(devices)
                raise _unsupported("reflink", exc, src, dst) from exc
            _reraise(exc, dst)
        except BaseException:
            _discard(staged)
            raise
    _publish(staged, dst)


def _folder_device(dst: Path) -> int:
    dst.parent.mkdir(parents=True, exist_ok=True)
    return os.stat(dst.parent).st_dev


def _link_into_place(dst: str | Path, make: Callable[[str | Path], None]) -> None:
    """``make(dst)`` a link where nothing is yet (a link appears whole or not at all); else
    ``make(tmp)`` at a temporary name beside ``dst`` and rename it over ``dst``."""
    try:
        try:
            make(dst)
            return
        except FileNotFoundError:
            folder = os.path.dirname(dst)
            if os.path.isdir(folder):
                raise
            os.makedirs(folder, exist_ok=True)  # its folder is not there yet
            make(dst)
            return
    except FileExistsError:
        pass  # replace it, in one rename
    except LinkNotSupported:
        raise
    except OSError as exc:
        _reraise(exc, dst)
    tmp = _temp_path(dst)
    try:
        while True:
            try:
                make(tmp)
                break
            except FileExistsError:
                tmp = _temp_path(dst)  # a leftover of an earlier process that had our pid
        os.replace(tmp, dst)
    except LinkNotSupported:
        raise
    except OSError as exc:
        _reraise(exc, dst)
    finally:
        # rename() of two links to one file does nothing and succeeds: the temporary link stays
        if os.path.lexists(tmp):
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _hard_link(src: str | Path, dst: str | Path) -> None:
    def make(tmp: str | Path) -> None:
        try:
            os.link(src, tmp)
        except OSError as exc:
            if exc.errno in _NO_HARD_LINK:
                raise _unsupported("hard", exc, src, dst) from exc
            raise

    _link_into_place(dst, make)


def _symlink(src: Path, dst: Path) -> None:
    target = os.path.abspath(src)
    _link_into_place(dst, lambda tmp: os.symlink(target, tmp))


def place(src: Path, dst: Path, link: str = "auto") -> str:
    """Put the file ``src`` at ``dst`` and return how: ``reflink``, ``hard``, ``sym`` or ``copy``.

    ``link`` is one of :data:`METHODS`. ``reflink`` is a copy-on-write clone (Linux ``FICLONE``:
    btrfs, XFS; an independent file sharing the blocks until one is changed); ``hard`` a hard
    link (one file under two names: editing either edits both, print
    :data:`HARD_LINK_WARNING` once); ``sym`` a symbolic link to the absolute source path;
    ``copy`` a copy. ``auto`` tries reflink, then hard, then copy. Folders are created;
    an existing ``dst`` is replaced in one rename. Raises :class:`LinkNotSupported` (an
    OSError) when the ``reflink`` or ``hard`` asked for cannot be made here, another OSError
    naming ``dst`` when writing fails (no temporary file stays), ValueError when ``dst`` is
    ``src`` itself or ``link`` is unknown.
    """
    return Placer(link).place(src, dst)


class Placer:
    """Puts many files into place as :func:`place` does one, remembering what stays true while it
    runs: which destination folders are not a source's folder, and their devices."""

    def __init__(self, link: str = "auto") -> None:
        if link not in METHODS:
            raise ValueError(f"unknown link method {link!r}: one of {', '.join(METHODS)}")
        self.link = link
        self._apart: set[tuple[str, str]] = set()
        """(source folder, destination folder) pairs known to be two folders."""
        self._devices: dict[str, int] = {}

    def place(self, src: str | Path, dst: str | Path) -> str:
        """See :func:`place`. Paths as text are taken as they are: no pathlib on the way of the
        100,000 hard links of an export (its objects cost more than the link)."""
        link = self.link
        folders = (os.path.dirname(src), os.path.dirname(dst))
        if folders not in self._apart:
            _refuse_source(Path(src), Path(dst))
            with contextlib.suppress(OSError):
                if not os.path.samefile(*folders):
                    self._apart.add(folders)
        if link == "sym":
            _source_stat(src)
            _symlink(Path(src), Path(dst))
            return "sym"
        if link in ("auto", "reflink"):
            src_dev = _source_stat(src).st_dev
            dst_dev = self._device(folders[1], dst)
            if link == "reflink" or (src_dev, dst_dev) not in _no_reflink:  # known: no exception per file
                try:
                    _reflink(Path(src), Path(dst), src_dev, dst_dev)
                    return "reflink"
                except LinkNotSupported:
                    if link == "reflink":
                        raise
        if link in ("auto", "hard"):
            try:
                _hard_link(src, dst)  # no stat of the source first: 100,000 of them add up
                return "hard"
            except LinkNotSupported:
                if link == "hard":
                    raise
            except OSError:
                _source_stat(src)  # a folder, not a file (link() says EPERM): say so
                raise
        _copy(Path(src), Path(dst))
        return "copy"

    def _device(self, folder: str, dst: str | Path) -> int:
        if folder not in self._devices:
            self._devices[folder] = _folder_device(Path(dst))
        return self._devices[folder]


# --- new images --------------------------------------------------------------------------------

_TIFF_LOSSLESS = frozenset({"raw", "tiff_lzw", "tiff_deflate", "tiff_adobe_deflate", "packbits"})


def _webp_is_lossless(path: Path) -> bool:
    """Whether a WebP file's (first) image is lossless (``VP8L``) rather than lossy (``VP8 ``)."""
    with open(path, "rb") as handle:
        if handle.read(12)[8:12] != b"WEBP":
            return False
        for _ in range(64):
            header = handle.read(8)
            if len(header) < 8:
                return False
            kind, size = header[:4], int.from_bytes(header[4:], "little")
            if kind in (b"VP8L", b"VP8 "):
                return kind == b"VP8L"
            if kind == b"ANMF":
                handle.seek(16, os.SEEK_CUR)  # the frame's own header; its image chunks follow
            else:
                handle.seek(size + (size & 1), os.SEEK_CUR)
    return False


def _resized(image: Image.Image, max_side: int | None) -> Image.Image:
    from PIL import Image

    width, height = image.size
    if max_side is None or max(width, height) <= max_side:
        return image
    scale = max_side / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if "transparency" in image.info and image.mode in ("P", "L", "RGB"):
        image = image.convert("RGBA")  # a transparent colour means nothing once pixels are mixed
    elif image.mode in ("P", "PA"):
        image = image.convert("RGBA" if image.mode == "PA" else "RGB")  # palettes only resize NEAREST
    elif image.mode == "1":
        image = image.convert("L")
    return image.resize(size, Image.Resampling.LANCZOS)


def _png_colour_chunks(info: Mapping[str | tuple[int, int], Any]) -> list[tuple[bytes, bytes]]:
    """The colour chunks Pillow reads but does not write back (gAMA, cHRM, sRGB)."""
    chunks: list[tuple[bytes, bytes]] = []
    if isinstance(info.get("gamma"), float | int):
        chunks.append((b"gAMA", round(info["gamma"] * 100_000).to_bytes(4, "big")))
    chromaticity = info.get("chromaticity")
    if isinstance(chromaticity, tuple) and len(chromaticity) == 8:
        chunks.append((b"cHRM", b"".join(round(v * 100_000).to_bytes(4, "big") for v in chromaticity)))
    if isinstance(info.get("srgb"), int):
        chunks.append((b"sRGB", bytes([info["srgb"]])))
    return chunks


def _save_options(
    fmt: str, info: Mapping[str | tuple[int, int], Any], text: Mapping[str, str], keep: bool, lossless: bool
) -> dict[str, Any]:
    """Keyword arguments of ``Image.save``: the quality asked for, ICC always, the rest if ``keep``."""
    options: dict[str, Any] = {}
    if info.get("icc_profile"):
        options["icc_profile"] = info["icc_profile"]
    if "transparency" in info and fmt in ("PNG", "GIF"):
        options["transparency"] = info["transparency"]
    metadata: tuple[str, ...] = ("exif", "xmp", "comment", "dpi") if keep else ()
    if fmt == "JPEG":
        options["quality"] = 95
    elif fmt == "PNG":
        from PIL.PngImagePlugin import PngInfo

        options["optimize"] = False
        pnginfo = PngInfo()
        for cid, data in _png_colour_chunks(info):
            pnginfo.add(cid, data)
        if keep:
            for key, value in text.items():
                now = info.get(key)  # exif_transpose may have rewritten a "Raw profile type exif"
                pnginfo.add_text(key, now if isinstance(now, str) else value)
        options["pnginfo"] = pnginfo
        metadata = tuple(name for name in metadata if name in ("exif", "dpi"))  # XMP is a text chunk
    elif fmt == "WEBP":
        options.update({"lossless": True, "exact": True} if lossless else {"quality": 95})
        metadata = tuple(name for name in metadata if name in ("exif", "xmp"))
    elif fmt == "TIFF":
        compression = info.get("compression")
        options["compression"] = compression if compression in _TIFF_LOSSLESS else "tiff_lzw"
        metadata = tuple(name for name in metadata if name == "dpi")
    elif fmt == "GIF":
        metadata = tuple(name for name in metadata if name == "comment")
    else:
        metadata = ()
    options.update({name: info[name] for name in metadata if info.get(name)})
    return options


def transform(
    src: Path, dst: Path, *, max_side: int | None, strip_metadata: bool, max_pixels: int = DEFAULT_MAX_PIXELS
) -> None:
    """Write a new image at ``dst`` from the image ``src``: resized, without metadata, or both.

    ``max_side``: the longest side becomes at most this many pixels (aspect kept, Lanczos;
    never enlarged; ``None`` keeps the size). The EXIF orientation is always applied to the
    pixels (and its tag dropped), so the image stands upright for tools that ignore EXIF.
    ``strip_metadata`` drops EXIF (GPS and camera data, A1111's ``UserComment`` included), XMP,
    PNG text chunks (``parameters``, ComfyUI's ``prompt``/``workflow``...), JPEG and GIF
    comments and the DPI; it keeps the ICC profile and PNG's gAMA/cHRM/sRGB chunks, which say
    what the colours mean. Without it, metadata is carried over where Pillow can write it back
    (JPEG, PNG, WebP; TIFF and GIF keep their DPI and comment only).

    The format stays the source's, whatever ``dst``'s extension: JPEG (and MPO) at quality 95,
    PNG without the slow ``optimize``, WebP lossless if the source was lossless else quality 95,
    TIFF with its compression when lossless else LZW, others with Pillow's defaults. An animated
    source keeps its first frame. Always a new file, written atomically (a temporary file
    renamed over ``dst``). Raises :class:`analyzer.errors.ImageError` for a broken or too large
    (``max_pixels``) image, OSError naming ``dst`` when writing fails, ValueError for a
    ``max_side`` under 1 or a ``dst`` that is ``src`` itself.
    """
    from PIL import ImageOps

    if max_side is not None and max_side < 1:
        raise ValueError(f"max_side must be at least 1, not {max_side}")
    src, dst = Path(src), Path(dst)
    _source_stat(src)
    _refuse_source(src, dst)
    with open_image(src, max_pixels=max_pixels) as image:
        fmt = "JPEG" if image.format == "MPO" else (image.format or "PNG")
        text: dict[str, str] = dict(getattr(image, "text", {}))
        lossless = fmt == "WEBP" and _webp_is_lossless(src)
        upright = ImageOps.exif_transpose(image)  # a new image; the Orientation tag dropped from its EXIF
        out = _resized(upright, max_side)
        info = dict(upright.info)
        if out is not upright:
            info.pop("transparency", None)
            info.update({k: v for k, v in out.info.items() if k == "transparency"})
        out.info = {}  # nothing reaches the file unless named below (Pillow copies some keys itself)
        buffer = io.BytesIO()
        try:
            out.save(buffer, format=fmt, **_save_options(fmt, info, text, not strip_metadata, lossless))
        except KeyError as exc:  # a format Pillow reads but cannot write
            raise ImageError(f"cannot write {fmt} images: export it without resizing or stripping") from exc
    try:
        atomic_write_bytes(dst, buffer.getvalue())
    except OSError as exc:
        _reraise(exc, dst)
