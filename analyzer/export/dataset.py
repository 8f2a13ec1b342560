"""Build (or bring up to date) a dataset folder from the store: plan, then apply, then tables.

Layouts (``--layout``), each read by its consumer in the tests:

- ``classes``: ``OUT/<class>/<image>`` (seed 002's class folders);
- ``splits``: ``OUT/<split>/<class>/<image>``, what torchvision's ``ImageFolder`` reads per split;
- ``imagefolder``: the same tree plus ``OUT/<split>/metadata.jsonl`` (``file_name``, ``label``,
  ``text``: the caption, ``confidence``), what Hugging Face ``datasets.load_dataset("imagefolder")``
  reads (with a metadata file it takes the label from there, not from the folder names);
- ``kohya``: ``OUT/<repeats>_<class>/<image>`` with the caption in ``<stem>.txt`` beside it, as
  kohya's sd-scripts read a DreamBooth-style folder (every image is training data: no splits).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import orjson

from ..errors import AnalyzerError, ConfigError, ImageError
from ..selector import Selector
from ..settings import Settings
from ..store import Store
from ..survey import Seen
from .items import FILTERED, Item, Missing, Wanted, read_items
from .manifest import FOLDER, Entry, Filtered, Journal, Manifest
from .plan import SPLIT_LAYOUTS, UNSURE, ExportOptions, ExportResult, Plan, Wish

if TYPE_CHECKING:
    from .files import Placer

log = logging.getLogger(__name__)


class MissingResults(AnalyzerError):
    """Images lack the results an export reads: the message says which and how to get them."""


def check_out(out: Path, roots: Sequence[Path], zip_path: Path | None = None) -> None:
    """Refuse an output folder inside an input (or holding one), a folder of other files, and a ZIP
    inside the dataset."""
    if out.is_dir() and not (out / FOLDER).is_dir() and any(out.iterdir()):
        raise ConfigError(f"--to {out} holds other files and no earlier export: choose a new or empty folder")
    if zip_path is not None and zip_path.absolute().resolve().is_relative_to(out):
        raise ConfigError(f"--zip {zip_path} is inside the dataset folder {out}: put it beside it")
    for root in roots:
        if out == root or out.is_relative_to(root):
            raise ConfigError(f"--to {out} is inside the folder {root} being exported: choose a folder outside it")
        if root.is_relative_to(out):
            raise ConfigError(f"--to {out} holds the folder {root} being exported: choose another folder")


def missing_message(missing: Missing, wanted: Wanted, paths: Sequence[Path]) -> str:
    where = " ".join(str(p) for p in paths) or "PATH"
    hints = []
    for sel in wanted.selectors:
        if sel.plugin == "classify":
            refine = " --refine" if sel.after_at and sel.after_at.startswith("refined") else ""
            hints.append(f"analyzer classify {where} --set {sel.mode}{refine}")
        else:
            hints.append(f"analyzer run {where} --plugins {sel.plugin} --modes {sel.mode}")
    return (
        "cannot export: some images lack the results it reads:\n  "
        + "\n  ".join(missing.lines())
        + "\nget them with: "
        + "; ".join(dict.fromkeys(hints))
        + " (or add --analyse to compute them first, or --where to leave those images out)"
    )


def plan_export(
    stores: Sequence[Store],
    options: ExportOptions,
    preferred: Mapping[str, Mapping[str, Sequence[str]]],
    paths: Sequence[Path],
    found: Mapping[Path, Sequence[Seen]] | None = None,
) -> tuple[Plan, Manifest]:
    """What the export would do (blocking; writes nothing). Raises MissingResults, ConfigError."""
    from .items import Condition

    options.check()
    wanted = Wanted(
        label=Selector.parse(options.label) if options.label else None,
        caption=options.caption,
        where=tuple(Condition.parse(text) for text in options.where),
    )
    manifest = Manifest.load(options.to)
    reading = reading_digest(options, preferred)
    items, missing, filtered = read_items(
        stores,
        wanted,
        preferred,
        found=found,
        min_confidence=options.min_confidence,
        below=options.below,
        unsure=UNSURE,
        reuse=_reuse(manifest) if manifest.reading == reading else None,
    )
    if missing:
        raise MissingResults(missing_message(missing, wanted, paths))
    plan = Plan(skipped=len(filtered), reading=reading)
    plan.filtered = {
        os.path.join(root, image.rel): Filtered(image.hash, image.sidecars)
        for root, image in filtered
        if image.hash is not None  # always: only hashed images are read
    }
    items, plan.duplicates = _once_per_content(items)
    if options.max_per_class is not None:
        items, capped = _cap(items, options.max_per_class, options.seed)
        plan.skipped += capped
    splits, plan.drift = _splits(items, stores, options, manifest)
    plan.wishes = _wishes(items, splits, options, manifest)
    _diff(plan, manifest, options)
    return plan, manifest


READING_VERSION = 1
"""Bumped when what an item is made of changes: no manifest's entries are reused across it."""


def reading_digest(options: ExportOptions, preferred: Mapping[str, Mapping[str, Sequence[str]]]) -> str:
    """How this export reads each image's class and caption: the selectors, filters and configured
    models they depend on (an earlier export's items are reused only if it read them the same way)."""
    recipe = {
        "version": READING_VERSION,
        "label": options.label,
        "caption": options.caption,
        "where": list(options.where),
        "min_confidence": options.min_confidence,
        "below": options.below,
        "unsure": UNSURE,
        "preferred": {plugin: {mode: list(ids) for mode, ids in modes.items()} for plugin, modes in preferred.items()},
    }
    return hashlib.sha256(orjson.dumps(recipe, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


def _reuse(manifest: Manifest) -> Callable[[Path, Seen], Item | Literal["filtered"] | None]:
    """What gives an image's item as the last export read it, or says that its filters left it out,
    when its content and sidecars are as they were then (the manifest says what it read and from
    which sidecars)."""
    by_source = {entry.src: entry for entry in manifest.files.values() if entry.sidecars is not None}

    def reuse(root: Path, image: Seen) -> Item | Literal["filtered"] | None:
        source = os.path.join(root, image.rel)
        if image.hash is None or image.sidecars is None:
            return None
        entry = by_source.get(source)
        if entry is None:
            left = manifest.filtered.get(source)
            return FILTERED if left == Filtered(image.hash, image.sidecars) else None
        if entry.sidecars != image.sidecars or entry.hash != image.hash:
            return None
        return Item(
            root,
            image.rel,
            image.hash,
            image.size,
            entry.label,
            entry.confidence,
            entry.labels or "[]",
            entry.text,
            image.sidecars,
        )

    return reuse


def _once_per_content(items: list[Item]) -> tuple[list[Item], int]:
    seen: set[str] = set()
    kept = []
    for item in items:
        if item.hash not in seen:
            seen.add(item.hash)
            kept.append(item)
    return kept, len(items) - len(kept)


def _cap(items: list[Item], limit: int, seed: int) -> tuple[list[Item], int]:
    """At most ``limit`` per class: the most confident, ties by a seeded hash order (reproducible)."""
    by_class: dict[str | None, list[Item]] = {}
    for item in items:
        by_class.setdefault(item.label, []).append(item)
    kept: list[Item] = []
    for group in by_class.values():
        group.sort(key=lambda i: (-(i.confidence or 0.0), hashlib.sha256(f"{seed}:{i.hash}".encode()).hexdigest()))
        kept += group[:limit]
    order = {id(item): n for n, item in enumerate(items)}
    kept.sort(key=lambda i: order[id(i)])
    return kept, len(items) - len(kept)


def _splits(
    items: list[Item], stores: Sequence[Store], options: ExportOptions, manifest: Manifest
) -> tuple[list[str], Any]:
    if options.layout not in SPLIT_LAYOUTS:
        return ["train"] * len(items), None
    from .splits import SplitRatios, assign_splits, duplicate_groups

    ratios = SplitRatios.parse(options.ratios)
    hashes = [item.hash for item in items]
    previous = manifest.splits()
    fresh = [h not in previous for h in hashes] if previous else None
    new = sum(fresh) if fresh is not None else len(items)
    threshold = options.near_duplicates or 1.0
    if options.near_duplicates > 0 and 0 < new * 4 < len(items):  # a re-export: the new images' look-alikes
        assert fresh is not None
        pairs = _look_alikes_of_new(items, fresh, stores, options)
        groups = duplicate_groups(hashes, threshold=threshold, pairs=pairs)
    else:
        search = options.near_duplicates > 0 and new > 0  # no new image: nothing to look for
        vectors, has_vector = _vectors(items, stores, options) if search else (None, None)
        groups = duplicate_groups(
            hashes,
            vectors,
            has_vector,
            threshold=threshold,
            seed=options.seed,
            verify=_verifier(items, stores, options) if vectors is not None else None,
        )
    classes = [item.label or "" for item in items]
    return assign_splits(hashes, classes, groups, ratios, options.seed, previous=previous)


def _vectors_model(stores: Sequence[Store], options: ExportOptions) -> str | None:
    """The model whose stored embeddings find near-duplicates: ``--embeddings``, else the first stored."""
    if options.embeddings is not None:
        return options.embeddings
    found = sorted({name for store in stores for name in store.embeddings.models()})
    return found[0] if found else None


def _look_alikes_of_new(
    items: list[Item], fresh: list[bool], stores: Sequence[Store], options: ExportOptions
) -> list[tuple[Any, Any]]:
    """Pairs of item rows: each new item's (``fresh``) look-alikes among all, by their stored
    embeddings, streamed through each store a chunk at a time: memory for the new items' vectors
    and one chunk, not for every vector (205 MB at 100,000 x 512)."""
    import numpy as np

    from .splits import look_alikes_of

    model = _vectors_model(stores, options)
    if model is None:
        return []
    found = list(_stored_vectors(items, [n for n, new in enumerate(fresh) if new], stores, model))
    if not found:
        return []
    new_rows = np.asarray([n for n, _ in found], dtype=np.int64)
    new = np.stack([vector for _, vector in found])
    pairs: list[tuple[Any, Any]] = []
    for store in stores:
        pairs += look_alikes_of(new, new_rows, _stored_blocks(items, store, model), options.near_duplicates)
    return pairs


def _stored_vectors(
    items: list[Item], rows: Sequence[int], stores: Sequence[Store], model: str
) -> Iterator[tuple[int, Any]]:
    """(row, stored vector) of these item rows that have one, looked up a batch at a time per store."""
    for store in stores:
        part = [n for n in rows if items[n].root == store.root]
        for start in range(0, len(part), 8192):
            batch = part[start : start + 8192]
            stored = store.embeddings.model(model).get([items[n].hash for n in batch])
            yield from ((n, vector) for n, vector in zip(batch, stored, strict=True) if vector is not None)


def _stored_blocks(items: list[Item], store: Store, model: str) -> Iterator[tuple[Any, Any]]:
    """Every vector the store holds for the items, a chunk at a time: (item rows, their vectors)."""
    import numpy as np

    from ..embeddings import KEY_BYTES, key_of

    row_of = {key_of(item.hash): n for n, item in enumerate(items) if item.root == store.root}
    for keys, chunk in store.embeddings.model(model).chunks(rows=8192):
        at = np.fromiter((row_of.get(key.ljust(KEY_BYTES, b"\0"), -1) for key in keys.tolist()), np.int64, len(keys))
        known = at >= 0
        yield at[known], chunk[known]


def _verifier(items: list[Item], stores: Sequence[Store], options: ExportOptions) -> Callable[[Any, Any], Any]:
    """What says, for pairs of item rows found with float16 vectors, which are look-alikes with
    their stored float32 vectors (a few thousand reads: the pairs near or above the threshold)."""
    import numpy as np

    from .splits import normalised

    model = _vectors_model(stores, options)
    assert model is not None  # there were vectors to search

    def verify(a: Any, b: Any) -> Any:
        found = dict(_stored_vectors(items, np.unique(np.concatenate([a, b])).tolist(), stores, model))
        zero = np.zeros(next(iter(found.values())).shape[0] if found else 1, dtype=np.float32)
        left = normalised(np.stack([found.get(int(n), zero) for n in a]))
        right = normalised(np.stack([found.get(int(n), zero) for n in b]))
        return np.einsum("ij,ij->i", left, right) >= options.near_duplicates

    return verify


def _vectors(items: list[Item], stores: Sequence[Store], options: ExportOptions) -> tuple[Any, list[bool] | None]:
    """The items' stored embeddings of one model, in the items' order (zeros where none), read
    straight into one float16 matrix (half of float32's memory; the pairs found are verified at
    full precision, :func:`_verifier`): streamed through the whole store when the items are most
    of it, else looked up (a batch at a time)."""
    import numpy as np

    model = _vectors_model(stores, options)
    if model is None:
        return None, None
    matrix: Any = None
    has = [False] * len(items)

    def put(rows: list[int], vectors: Any) -> None:
        nonlocal matrix
        if matrix is None:
            matrix = np.zeros((len(items), vectors.shape[1]), dtype=np.float16)
        matrix[rows] = vectors
        for n in rows:
            has[n] = True

    for store in stores:
        rows = [n for n, item in enumerate(items) if item.root == store.root]
        if rows and len(rows) * 2 >= len(store.embeddings.model(model)):
            for at, chunk in _stored_blocks(items, store, model):
                if len(at):
                    put(at.tolist(), chunk)
            continue
        for n, vector in _stored_vectors(items, rows, [store], model):  # a row at a time: no second copy
            put([n], vector[None])
    return (matrix, has) if matrix is not None else (None, None)


def _wishes(items: list[Item], splits: list[str], options: ExportOptions, manifest: Manifest) -> list[Wish]:
    """Where each item goes in OUT. A content exported before keeps its file name (a newcomer of
    the same name gets the ``-<hash8>`` suffix, whichever folder it comes from)."""
    from .files import FileNames, FolderNames

    labels = sorted({item.label for item in items if item.label is not None})
    prefix = f"{options.repeats}_" if options.layout == "kohya" else ""
    folders = FolderNames(labels, max_bytes=255 - len(prefix.encode()))
    names = FileNames()
    exported = {item.hash for item in items}
    for path in sorted(manifest.files):
        entry = manifest.files[path]
        if entry.hash in exported:
            names.keep(path.rpartition("/")[2], entry.hash)
    wishes = []
    for item, split in zip(items, splits, strict=True):
        name = names.name_for(item.rel.rpartition("/")[2], item.hash)
        folder = folders.name(item.label) if item.label is not None else None
        if options.layout == "classes":
            rel = f"{folder}/{name}"
        elif options.layout == "kohya":
            rel = f"{options.repeats}_{folder or folders.name(options.concept)}/{name}"
        else:
            rel = f"{split}/{folder}/{name}" if folder else f"{split}/{name}"
        caption = _with_suffix(rel, options.caption_ext) if options.caption is not None else None
        wishes.append(Wish(item, rel, split, caption))
    return wishes


def _with_suffix(rel: str, suffix: str) -> str:
    """``PurePosixPath(rel).with_suffix(suffix)`` as text, without pathlib's cost, 100,000 times."""
    head, slash, name = rel.rpartition("/")
    dot = name.rfind(".")
    stem = name[:dot] if 0 < dot < len(name) - 1 else name
    return f"{head}{slash}{stem}{suffix}"


def _digest(text: str | None) -> str | None:
    return None if text is None else hashlib.sha256(text.encode()).hexdigest()[:16]


def _diff(plan: Plan, manifest: Manifest, options: ExportOptions) -> None:
    """Sort the wishes into keep, add, move, captions; and what the manifest has that no wish wants
    into remove. A kept file must be in its folder (one listing per folder, no stat per file); and
    with the size it was written with too, unless the manifest can be trusted on that
    (:attr:`Manifest.trusted`)."""
    out = f"{options.to}/"  # paths joined as text: without pathlib's cost, 100,000 times
    there = _Listed(out) if manifest.trusted else None
    recipe = options.recipe()
    wanted_paths = {w.path for w in plan.wishes}
    others: list[Wish] = []  # not kept as they are: moved (the same content is elsewhere in OUT) or added
    for wish in plan.wishes:
        entry = manifest.files.get(wish.path)
        if entry is not None and entry.hash == wish.item.hash and entry.recipe == recipe:
            intact = wish.path in there if there is not None else _intact(out + wish.path, entry.size)
        else:
            intact = False
        if intact:
            plan.keep.append(wish)
            assert entry is not None
            stale = entry.caption_digest != _digest(wish.item.caption) or entry.caption != wish.caption_path
            if not stale and wish.caption_path:
                stale = (
                    wish.caption_path not in there
                    if there is not None
                    else not _intact(out + wish.caption_path, len(_caption_bytes(wish)))
                )
            if stale:
                plan.captions.append(wish)
            continue
        others.append(wish)
    hashes = {wish.item.hash for wish in others}
    movable: dict[str, list[str]] = {}  # content hash -> its files in OUT that no wish keeps
    for path, entry in manifest.files.items():
        if entry.hash in hashes and path not in wanted_paths:
            movable.setdefault(entry.hash, []).append(path)
    for wish in others:
        old = [
            p for p in movable.get(wish.item.hash, []) if manifest.files[p].recipe == recipe and os.path.exists(out + p)
        ]
        if old:
            movable[wish.item.hash].remove(old[0])
            plan.move.append((old[0], wish))
            plan.captions.append(wish)
        else:
            plan.add.append(wish)
    moved = {old for old, _ in plan.move}
    plan.remove = sorted(p for p in manifest.files if p not in wanted_paths and p not in moved)


class _Listed:
    """Which files are in OUT, from one listing of each folder asked about (names, no stat)."""

    def __init__(self, out: str) -> None:
        self.out = out
        self._folders: dict[str, frozenset[str]] = {}

    def __contains__(self, path: object) -> bool:
        assert isinstance(path, str)
        folder, _, name = path.rpartition("/")
        names = self._folders.get(folder)
        if names is None:
            try:
                names = frozenset(os.listdir(self.out + folder))
            except OSError:
                names = frozenset()
            self._folders[folder] = names
        return name in names


def _caption_bytes(wish: Wish) -> bytes:
    return (wish.item.caption or "").encode() + b"\n"


def _intact(path: str, size: int) -> bool:
    """The file is there with the size it was written with (not left empty by a power cut)."""
    try:
        return os.stat(path).st_size == size
    except OSError:
        return False


def apply_plan(plan: Plan, manifest: Manifest, options: ExportOptions, report: Mapping[str, Any]) -> ExportResult:
    """Carry the plan out, journaled (blocking): an interruption resumes on the next export."""
    from .files import write_small
    from .tables import write_tables, write_zip

    out = options.to
    result = ExportResult(plan, out)
    out.mkdir(parents=True, exist_ok=True)
    journal = Journal(manifest)
    try:
        _remove_and_move(plan, manifest, journal, options, result)
        _add(plan, journal, options, result)
        for wish in plan.captions:
            entry = manifest.files[wish.path]
            if entry.caption and entry.caption != wish.caption_path:  # another extension, or no caption now
                _unlink(out / entry.caption)
            if wish.caption_path is not None:
                write_small(out / wish.caption_path, _caption_bytes(wish))
            journal.record(wish.path, _entry(wish, entry.method, options, entry.size))
        _refresh_kept(plan, manifest, options)
        write_tables(out, plan, options, report)
        _remove_empty_dirs(out, [*plan.remove, *(old for old, _ in plan.move), *plan.left_out])
    except BaseException:
        journal.abandon()
        raise
    journal.close(options.record(), plan.reading, plan.filtered)
    if options.zip is not None:
        result.zip_path = write_zip(out, options.zip)
    return result


def _refresh_kept(plan: Plan, manifest: Manifest, options: ExportOptions) -> None:
    """A kept file's entry, with what was read for it now (its sidecars' fingerprint, confidence,
    labels, caption) where that differs: no file changes, so not journaled."""
    captions = {wish.path for wish in plan.captions}
    for wish in plan.keep:
        entry = manifest.files[wish.path]
        item = wish.item
        now = (item.sidecars, item.confidence, item.labels, item.caption, item.label, wish.split)
        if wish.path not in captions and now != (
            entry.sidecars,
            entry.confidence,
            entry.labels,
            entry.text,
            entry.label,
            entry.split,
        ):
            manifest.files[wish.path] = _entry(wish, entry.method, options, entry.size, entry.recipe)


def _remove_and_move(
    plan: Plan, manifest: Manifest, journal: Journal, options: ExportOptions, result: ExportResult
) -> None:
    out = options.to
    for path in plan.remove:
        entry = manifest.files[path]
        _unlink(out / path)
        if entry.caption:
            _unlink(out / entry.caption)
        journal.record(path, None)
    for old, wish in plan.move:
        entry = manifest.files[old]
        (out / wish.path).parent.mkdir(parents=True, exist_ok=True)
        os.replace(out / old, out / wish.path)
        if entry.caption and (out / entry.caption).exists():
            _unlink(out / entry.caption)
        journal.record(old, None)
        journal.record(wish.path, _entry(wish, entry.method, options, entry.size))
        result.methods["moved"] += 1


PLACING_THREADS = 4
"""Images placed at once: links and small writes are system calls that wait on the file system
(the GIL is free meanwhile), so a few threads overlap them, even on 2 cores."""
MAKING_THREADS = 2
"""Images made at once by --resize/--strip-metadata: each holds a decoded image (up to
``max_image_pixels``), so fewer."""


def _add(plan: Plan, journal: Journal, options: ExportOptions, result: ExportResult) -> None:
    """Place (or make, for --resize/--strip-metadata) each new image and write its caption, a few
    at a time in threads, journaling each as it is done (in order); one whose source vanished or
    cannot be decoded is left out with a warning, the rest goes on."""
    from concurrent.futures import ThreadPoolExecutor

    from .files import HARD_LINK_WARNING, Placer

    placer = Placer(options.link)
    recipe = options.recipe()
    warned = False
    chunks = _by_folder_in_turn(plan.add)
    making = bool(options.resize or options.strip_metadata)
    with ThreadPoolExecutor(MAKING_THREADS if making else PLACING_THREADS, thread_name_prefix="export") as pool:
        pending = [pool.submit(_place_all, chunk, placer, journal.manifest, options) for chunk in chunks]
        try:
            for future in pending:
                done, failure = future.result()
                for wish, placed in done:
                    if isinstance(placed, Exception):
                        src = wish.item.path
                        why = "gone since it was analysed" if not src.exists() else placed
                        log.warning("%s: not exported: %s", src, why)
                        plan.left_out.add(wish.path)
                        continue
                    method, size = placed
                    if method == "hard" and not warned:
                        warned = True
                        log.warning("%s (in %s; --link copy avoids it)", HARD_LINK_WARNING, options.to)
                    result.methods[method] += 1
                    journal.record(wish.path, _entry(wish, method, options, size, recipe))
                if failure is not None:
                    raise failure
        except BaseException:
            for future in pending:
                future.cancel()
            raise


def _by_folder_in_turn(wishes: Sequence[Wish], batch: int = 64) -> list[list[Wish]]:
    """The wishes in batches of one destination folder each, taking the folders in turn: batches
    placed at once then mostly write to different folders (a folder takes one new name at a time)."""
    by_folder: dict[str, list[Wish]] = {}
    for wish in wishes:
        by_folder.setdefault(wish.path.rpartition("/")[0], []).append(wish)
    queues = [[group[i : i + batch] for i in range(0, len(group), batch)] for group in by_folder.values()]
    return [chunk for turn in itertools.zip_longest(*queues) for chunk in turn if chunk is not None]


def _place_all(
    wishes: Sequence[Wish], placer: Placer, manifest: Manifest, options: ExportOptions
) -> tuple[list[tuple[Wish, tuple[str, int] | Exception]], BaseException | None]:
    """Place each image and write its caption (in a worker thread): per image done, (method,
    size) or why it is left out (a source that vanished or cannot be decoded); and the error that
    stopped the rest, if one did (what was done before it is journaled all the same)."""
    done: list[tuple[Wish, tuple[str, int] | Exception]] = []
    try:
        for wish in wishes:
            done.append((wish, _place_one(wish, placer, manifest, options)))
    except BaseException as exc:
        return done, exc
    return done, None


def _place_one(wish: Wish, placer: Placer, manifest: Manifest, options: ExportOptions) -> tuple[str, int] | Exception:
    """Place one image and write its caption: (method, size), or why it is left out."""
    from .files import transform, write_small

    out = f"{options.to}/"  # paths joined as text: pathlib's objects cost more than the link itself
    src, dst = wish.item.source, out + wish.path
    try:
        if options.resize or options.strip_metadata:
            strip, most = options.strip_metadata, options.max_pixels
            transform(Path(src), Path(dst), max_side=options.resize, strip_metadata=strip, max_pixels=most)
            method, size = "new", os.stat(dst).st_size
        else:
            method, size = placer.place(src, dst), wish.item.size  # a link or copy: the source's size
    except (FileNotFoundError, ImageError) as exc:
        if isinstance(exc, FileNotFoundError) and os.path.exists(src):
            raise  # the destination's folder, not the source: a real failure
        return exc
    earlier = manifest.files.get(wish.path)  # what it replaces, if anything
    if earlier is not None and earlier.caption and earlier.caption != wish.caption_path:
        _unlink(options.to / earlier.caption)
    if wish.caption_path is not None:
        write_small(out + wish.caption_path, _caption_bytes(wish))
    return method, size


def _entry(wish: Wish, method: str, options: ExportOptions, size: int, recipe: str | None = None) -> Entry:
    return Entry(
        src=wish.item.source,
        hash=wish.item.hash,
        split=wish.split,
        label=wish.item.label,
        method=method,
        size=size,
        caption=wish.caption_path,
        caption_digest=_digest(wish.item.caption) if wish.caption_path else None,
        recipe=options.recipe() if recipe is None else recipe,
        sidecars=wish.item.sidecars,
        confidence=wish.item.confidence,
        labels=wish.item.labels,
        text=wish.item.caption,
    )


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _remove_empty_dirs(out: Path, gone: Iterable[str]) -> None:
    """Remove the folders that the files ``gone`` (paths in ``out``) left empty, and then their
    parents that are empty, up to ``out``."""
    for folder in sorted({os.path.dirname(path) for path in gone}, key=lambda f: -f.count("/")):
        while folder:
            try:
                os.rmdir(out / folder)
            except OSError:  # not empty (or gone already)
                break
            folder = os.path.dirname(folder)


def run_export(
    settings: Settings,
    plugins: Sequence[Any],
    paths: Sequence[Path],
    options: ExportOptions,
) -> ExportResult:
    """Walk the roots, plan, and (unless a dry run) export (blocking)."""
    from ..store import preferred_models, resolve_targets
    from ..survey import surveyed
    from .tables import classification_report, write_csv

    roots = [target.root for target in resolve_targets(settings, paths, files=False)]
    options = replace(options, to=options.to.absolute().resolve(), max_pixels=settings.max_image_pixels)
    if not options.csv_only:
        check_out(options.to, roots, options.zip)
    elif options.to.is_dir():
        raise ConfigError(f"--csv-only writes one CSV file: --to {options.to} is a folder")
    found: dict[Path, list[Seen]] = {}
    stores = surveyed(
        settings, plugins, paths, seen=lambda store, image: found.setdefault(store.root, []).append(image)
    )
    try:
        plan, manifest = plan_export(stores, options, preferred_models(plugins), paths, found)
        if options.dry_run:
            return ExportResult(plan, options.to)
        if options.csv_only:
            write_csv(options.to, plan)
            return ExportResult(plan, options.to)
        return apply_plan(plan, manifest, options, classification_report(stores, options.label))
    finally:
        for store in stores:
            store.close()
