"""A label set over a whole collection: refinement, grouping, metrics and a report.

``analyzer classify DIR --labels ... --refine --truth folders --clusters 0`` classifies the images
one by one as usual, then takes the collection as a whole (:func:`run`):

1. **Members**: every image under the target with a stored zero-shot result of the current label
   list and a stored embedding (nothing is decoded or encoded again).
2. **Refinement** (``--refine``, :mod:`.refine`): class prototypes learn from the images. A
   refinement depends on every image of the collection, so its result is stored beside the
   zero-shot one under its own model id, ``refined:<digest>:<zero-shot model id>``, the digest
   naming the refinement's parameters and the collection (the sorted content hashes): adding an
   image makes a new result on the next refinement, never a silent change of the old one. Read it
   with the selector ``classify.<set>@refined`` (the newest refinement when there are several).
3. **Grouping**: images by top-1 label; the uncertain ones (top-1 confidence below
   ``--uncertain``, or ``unknown``) clustered with KMeans in embedding space, each cluster named by
   the concept bank's labels nearest to its centre (not the set's own labels, which would only
   repeat the classification).
4. **Metrics** (:mod:`.metrics`): with ground truth, accuracy, top-k accuracy, per-class precision
   and recall and a confusion matrix (text, CSV, PNG), zero-shot and refined side by side; without,
   similarity and confidence statistics, label diversity and class balance.
5. **A report**: ``report.txt`` and ``report.json`` in the report folder (default
   ``<state folder>/reports/classify-<set>/``), printed as well.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from analyzer.errors import ConfigError
from analyzer.plugin import Result
from analyzer.settings import Settings
from analyzer.store import Digester, Store, Target

from .refine import Iteration, Refinement, RefineParams, refine

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from . import ClassifyPlugin

    Matrix = npt.NDArray[np.float32]

log = logging.getLogger(__name__)

REFINED = "refined"
"""The first part of a refined result's model id (and what ``classify.<set>@refined`` names)."""
CHUNK = 65_536
"""Embeddings read and scored at a time."""
IN_MEMORY_BYTES = 512 * 2**20
"""A collection whose embeddings fit in this is read once; a bigger one is streamed per pass."""
EXAMPLES = 5
"""Images named per cluster in the report."""
MINI_BATCH_ABOVE = 50_000
"""More uncertain images than this are clustered with mini-batch KMeans."""


def refined_model_id(base: str, digest: str) -> str:
    return f"{REFINED}:{digest}:{base}"


def refined_base(model_id: str) -> str | None:
    """The zero-shot model id a refined result's id extends; None for any other id."""
    kind, sep, rest = model_id.partition(":")
    if kind != REFINED or not sep:
        return None
    _, sep, base = rest.partition(":")
    return base if sep else None


@dataclass(frozen=True)
class CollectionOptions:
    refine: bool = False
    params: RefineParams = field(default_factory=RefineParams)
    truth: str | None = None
    """``folders`` (parent folder names) or a CSV/JSONL file of path,label."""
    clusters: int | None = None
    """KMeans clusters of the uncertain images: None, no clustering; 0, chosen by silhouette score."""
    uncertain: float = 0.5
    """An image whose top-1 confidence is below this is uncertain (grouped into clusters)."""
    report_dir: Path | None = None
    top_k: int = 5
    """The k of top-k accuracy."""


@dataclass
class Members:
    """The images of a collection with a zero-shot result and a stored embedding, sorted by path."""

    rels: list[str] = field(default_factory=list)
    hashes: list[str] = field(default_factory=list)
    ranked: list[list[str]] = field(default_factory=list)
    """Zero-shot labels of each image, best first."""
    confidence: list[float] = field(default_factory=list)
    score: list[float] = field(default_factory=list)
    """Zero-shot top-1 cosine similarity."""
    without_embedding: int = 0

    def __len__(self) -> int:
        return len(self.rels)


def collect(store: Store, plugin: ClassifyPlugin, mode: str, target: Target) -> Members:
    base = plugin.model_ids(mode)[0]
    members = Members()
    wanted = set(target.files) if target.files is not None else None
    found: list[tuple[str, str, dict[str, Any]]] = []
    for rel in sorted(store.index.sidecar_images(plugin.name)):
        if wanted is not None and rel not in wanted:
            continue
        try:
            doc = store.read(rel, plugin.name)
        except (OSError, ValueError) as exc:
            log.warning("%s: its classify sidecar cannot be read (%s): left out", rel, exc)
            continue
        entry = (doc or {}).get("analysis", {}).get(mode, {}).get(base)
        image_hash = (doc or {}).get("file_info", {}).get("hash")
        if not isinstance(entry, dict) or not isinstance(entry.get("result"), dict) or not image_hash:
            continue
        found.append((rel, image_hash, entry["result"]))
    stored = store.embeddings.model(plugin.opts.model)
    for start in range(0, len(found), CHUNK):
        part = found[start : start + CHUNK]
        for (rel, image_hash, value), vector in zip(part, stored.get([h for _, h, _ in part]), strict=True):
            if vector is None:
                members.without_embedding += 1
                continue
            labels = [e for e in value.get("labels", []) if isinstance(e, dict) and isinstance(e.get("label"), str)]
            if not labels:
                continue
            members.rels.append(rel)
            members.hashes.append(image_hash)
            members.ranked.append([e["label"] for e in labels])
            members.confidence.append(float(labels[0].get("confidence", 0.0)))
            members.score.append(float(labels[0].get("score", 0.0)))
    return members


def collection_digest(hashes: Sequence[str]) -> str:
    """Names the collection: its sorted distinct content hashes."""
    digest = hashlib.sha256()
    for image_hash in sorted(set(hashes)):
        digest.update(image_hash.encode() + b"\n")
    return digest.hexdigest()[:12]


def vector_source(store: Store, plugin: ClassifyPlugin, hashes: Sequence[str]) -> Callable[[], Iterator[Matrix]]:
    """The members' embeddings in order, chunk by chunk: read once when they fit in memory."""
    import numpy as np

    stored = store.embeddings.model(plugin.opts.model)

    def stream() -> Iterator[Matrix]:
        for start in range(0, len(hashes), CHUNK):
            part = list(hashes[start : start + CHUNK])
            rows = stored.get(part)
            gone = [h for h, r in zip(part, rows, strict=True) if r is None]
            if gone:  # rows must stay in step with the members: never shift them
                raise RuntimeError(f"the stored embedding of {gone[0]} vanished while the collection was read")
            yield np.stack([r for r in rows if r is not None]).astype(np.float32, copy=False)

    dims = next(stream()).shape[1] if hashes else 0
    if len(hashes) * dims * 4 > IN_MEMORY_BYTES:
        return stream
    whole = [np.concatenate(list(stream()))] if hashes else []
    return lambda: iter(whole)


# -- grouping -------------------------------------------------------------------------------------
def rows_of(source: Callable[[], Iterator[Matrix]], wanted: npt.NDArray[np.int64], dims: int) -> Matrix:
    """The rows ``wanted`` (sorted indexes) of the source, gathered chunk by chunk."""
    import numpy as np

    found: list[Matrix] = []
    start = 0
    for chunk in source():
        lo, hi = np.searchsorted(wanted, [start, start + len(chunk)])
        if hi > lo:
            found.append(chunk[wanted[lo:hi] - start])
        start += len(chunk)
    return np.concatenate(found).astype(np.float32) if found else np.zeros((0, dims), dtype=np.float32)


@dataclass
class Cluster:
    size: int
    names: list[str]
    """The concept bank's labels nearest the cluster's centre, best first."""
    examples: list[str]
    """Paths of the images nearest the centre."""


def cluster_uncertain(
    vectors: Matrix, rels: Sequence[str], k: int, bank: tuple[list[str], Matrix], seed: int = 0
) -> tuple[list[Cluster], float | None]:
    """KMeans of the uncertain images' embeddings (``k`` 0: chosen by silhouette score among 2..10)
    and each cluster named from the concept bank; the silhouette score of the chosen k."""
    import numpy as np
    from sklearn.cluster import KMeans, MiniBatchKMeans
    from sklearn.metrics import silhouette_score

    n = len(vectors)
    if n == 0:
        return [], None
    if n < 3:
        k = 1
    candidates = [k] if k else list(range(2, min(10, n - 1) + 1))
    best: tuple[float, Any] | None = None
    for kk in candidates:  # mini-batches for big sets: memory and time bounded
        kind = KMeans if n <= MINI_BATCH_ABOVE else MiniBatchKMeans
        model = kind(n_clusters=min(kk, n), n_init=4, random_state=seed).fit(vectors)
        if len(set(model.labels_)) < 2:
            score = -1.0
        else:
            sample = min(n, 5000)
            score = float(silhouette_score(vectors, model.labels_, sample_size=sample, random_state=seed))
        if best is None or score > best[0]:
            best = (score, model)
    assert best is not None
    score, model = best
    names, bank_matrix = bank
    clusters: list[Cluster] = []
    for c, centre in enumerate(model.cluster_centers_):
        centre = centre / max(float(np.linalg.norm(centre)), 1e-12)
        members = np.flatnonzero(model.labels_ == c)
        nearest_names = np.argsort(-(bank_matrix @ centre), kind="stable")[:3]
        nearest_images = members[np.argsort(-(vectors[members] @ centre), kind="stable")[:EXAMPLES]]
        clusters.append(Cluster(len(members), [names[i] for i in nearest_names], [rels[i] for i in nearest_images]))
    clusters.sort(key=lambda c: -c.size)
    return clusters, score if len(clusters) > 1 else None


# -- the whole pass -------------------------------------------------------------------------------
@dataclass
class Report:
    mode: str
    root: Path
    folder: Path
    data: dict[str, Any]
    text: str


def run(
    settings: Settings,
    plugin: ClassifyPlugin,
    digester: Digester,
    mode: str,
    target: Target,
    options: CollectionOptions,
) -> Report | None:
    """Refine, group, measure and report one label set over one root's collection (blocking)."""
    import numpy as np

    from . import metrics

    store = Store.open(target.root, settings)
    try:
        members = collect(store, plugin, mode, target)
        if members.without_embedding:
            log.warning(
                "%d classified images have no stored embedding (classify them with --force): left out",
                members.without_embedding,
            )
        if not members:
            log.warning("%s: no image classified into %r to take as a collection", target.root, mode)
            return None
        labels = list(plugin.label_prompts(mode))
        texts = plugin.text_matrix(mode)
        source = vector_source(store, plugin, members.hashes)
        collection = collection_digest(members.hashes)
        data: dict[str, Any] = {
            "label_set": mode,
            "model": plugin.opts.model,
            "zero_shot_model_id": plugin.model_ids(mode)[0],
            "images": len(members),
            "collection": collection,
            "labels": labels,
            "thresholds": {"min_confidence": plugin.opts.min_confidence, "uncertain": options.uncertain},
        }
        zero_top = [r[0] for r in members.ranked]
        data["zero_shot"] = class_counts(zero_top, members.confidence, labels)
        refined_ranked: list[list[str]] | None = None
        refined_conf: list[float] = []
        refined_scores: list[float] = []
        if options.refine:
            refinement, ranked, refined_conf, refined_scores, written = refine_and_store(
                store, plugin, digester, mode, members, texts, source, options.params, collection
            )
            data["refinement"] = refinement_data(refinement, options.params, written)
            if ranked:
                refined_ranked = ranked
                data["refined"] = class_counts([r[0] for r in ranked], refined_conf, labels)
        final_top = [r[0] for r in refined_ranked] if refined_ranked else zero_top
        final_conf = refined_conf if refined_ranked else members.confidence
        if options.clusters is not None:
            uncertain = [i for i, (t, c) in enumerate(zip(final_top, final_conf, strict=True)) if c < options.uncertain]
            vectors = rows_of(source, np.asarray(uncertain, dtype=np.int64), texts.shape[1])
            clusters, silhouette = cluster_uncertain(
                vectors, [members.rels[i] for i in uncertain], options.clusters, plugin.bank_matrix()
            )
            data["uncertain"] = {
                "images": len(uncertain),
                "below": options.uncertain,
                "silhouette": silhouette,
                "clusters": [c.__dict__ for c in clusters],
            }
        folder = options.report_dir or store.state_dir / "reports" / f"classify-{mode}"
        data["metrics"] = measure(target.root, members, refined_ranked, labels, options, folder)
        if options.truth is None and refined_ranked:
            top = [r[0] for r in refined_ranked]
            data["metrics"]["refined"] = metrics.describe(refined_conf, refined_scores, top, labels, options.uncertain)
        text = report_text(data, data["metrics"].pop("text", None))
        write_report(folder, data, text)
        return Report(mode, target.root, folder, data, text)
    finally:
        store.close()


def refine_and_store(
    store: Store,
    plugin: ClassifyPlugin,
    digester: Digester,
    mode: str,
    members: Members,
    texts: Matrix,
    source: Callable[[], Iterator[Matrix]],
    params: RefineParams,
    collection: str,
) -> tuple[Refinement, list[list[str]], list[float], list[float], int]:
    """Refine, then store each image's refined result beside its zero-shot one; (refinement,
    ranked labels, top-1 confidences, top-1 similarities, results written)."""

    labels = list(plugin.label_prompts(mode))

    def logged(step: Iteration) -> None:
        log.info("refine %s: %s", mode, step.describe(params.iterations))

    refinement = refine(source, texts, params, on_iteration=logged)
    if not refinement.iterations:
        log.warning(
            "refine %s: %d images, fewer than min_images (%d): not refined (--min-images 0 refines any collection)",
            mode,
            len(members),
            params.min_images,
        )
        return refinement, [], [], [], 0
    digest = hashlib.sha256(f"{params.digest()}:{collection}".encode()).hexdigest()[:12]
    model_id = refined_model_id(plugin.model_ids(mode)[0], digest)
    parameters = {
        "refined_from": plugin.model_ids(mode)[0],
        "collection": collection,
        "images": len(members),
        "refinement": params.as_dict(),
        "iterations": len(refinement.iterations),
        "note": "depends on every image of the collection: refining again after a change makes a new result",
    }
    # the guard's log-priors, rescaled from the refinement's temperature to the plugin's, so that
    # the stored top label is the refinement's own
    bias = refinement.log_prior * (params.temperature / plugin.opts.temperature)
    ranked: list[list[str]] = []
    confidence: list[float] = []
    scores: list[float] = []
    written = changed = 0
    row = 0
    for chunk in source():
        outcomes = plugin.scores(mode, list(chunk), refinement.prototypes, bias, tally=False)
        for outcome in outcomes:
            assert isinstance(outcome, Result)
            value = outcome.value
            ranked.append([e["label"] for e in value["labels"]])
            confidence.append(float(value["confidence"]))
            scores.append(float(value["labels"][0]["score"]))
            rel, image_hash = members.rels[row], members.hashes[row]
            if ranked[-1][0] != labels[refinement.labels[row]]:  # a tie broken the other way
                log.debug("%s: refined top %s, refinement %s", rel, ranked[-1][0], labels[refinement.labels[row]])
            row += 1
            value_parameters = {**outcome.parameters, **parameters}
            try:
                if store.put_result(rel, digester, mode, model_id, value, value_parameters, image_hash):
                    written += 1
                else:
                    changed += 1
            except OSError as exc:
                log.warning("%s: cannot store its refined result: %s", rel, exc.strerror or exc)
        store.commit()
    if changed:
        log.warning("%d images changed while refining: their refined results were not stored", changed)
    log.info("refine %s: %d refined results stored as %s", mode, written, model_id)
    return refinement, ranked, confidence, scores, written


def refinement_data(refinement: Refinement, params: RefineParams, written: int) -> dict[str, Any]:
    return {
        "parameters": params.as_dict(),
        "guard": refinement.guard,
        "stopped_early": refinement.stopped_early,
        "results_stored": written,
        "iterations": [
            {
                "number": s.number,
                "text_weight": round(s.text_weight, 4),
                "mean_confidence": round(s.mean_confidence, 4),
                "active_classes": s.active_classes,
                "moved": s.moved,
                "moved_share": round(s.moved_share, 4),
            }
            for s in refinement.iterations
        ],
    }


def class_counts(top: Sequence[str], confidence: Sequence[float], labels: Sequence[str]) -> dict[str, Any]:
    counts = Counter(top)
    sums: dict[str, float] = {}
    for label, conf in zip(top, confidence, strict=True):
        sums[label] = sums.get(label, 0.0) + conf
    return {
        label: {
            "images": counts[label],
            "mean_confidence": round(sums[label] / counts[label], 4) if counts[label] else None,
        }
        for label in [*labels, *sorted(set(counts) - set(labels))]
    }


def measure(
    root: Path,
    members: Members,
    refined: list[list[str]] | None,
    labels: list[str],
    options: CollectionOptions,
    folder: Path,
) -> dict[str, Any]:
    """Metrics against the truth (written as CSV and PNG too), else statistics without truth."""
    from . import metrics

    if options.truth is None:
        top = [r[0] for r in members.ranked]
        return {"zero_shot": metrics.describe(members.confidence, members.score, top, labels, options.uncertain)}
    paths = [root / rel for rel in members.rels]
    truth = metrics.read_truth(options.truth, paths, root)
    known = [i for i, p in enumerate(paths) if p.resolve() in truth or p in truth]
    if not known:
        raise ConfigError(f"--truth {options.truth}: no classified image has a truth label")
    truths = [truth.get(paths[i].resolve(), truth.get(paths[i], "")) for i in known]
    zero = metrics.evaluate(truths, [members.ranked[i] for i in known], labels, k=options.top_k)
    out: dict[str, Any] = {"with_truth": len(known), "zero_shot": zero.to_dict()}
    folder.mkdir(parents=True, exist_ok=True)
    metrics.write_confusion_csv(folder / "confusion-zero-shot.csv", *zero.confusion_axes(), zero.confusion)
    if refined is None:
        metrics.draw_confusion_png(folder / "confusion.png", zero, "zero-shot")
        out["text"] = metrics.format_table(zero)
        return out
    done = metrics.evaluate(truths, [refined[i] for i in known], labels, k=options.top_k)
    out["refined"] = done.to_dict()
    metrics.write_confusion_csv(folder / "confusion-refined.csv", *done.confusion_axes(), done.confusion)
    metrics.side_by_side_png(folder / "confusion.png", zero, done)
    out["text"] = metrics.format_side_by_side(zero, done) + "\n\n" + metrics.format_table(done)
    return out


def report_text(data: dict[str, Any], metrics_text: str | None) -> str:
    lines = [
        f"label set {data['label_set']!r}: {data['images']:,} images, collection {data['collection']}, "
        f"model {data['model']}",
        f"thresholds: min_confidence {data['thresholds']['min_confidence']}, "
        f"uncertain below {data['thresholds']['uncertain']}",
    ]
    if data.get("refinement", {}).get("iterations"):
        r = data["refinement"]
        lines.append(f"\nrefinement ({r['guard']} guard{', stopped early' if r['stopped_early'] else ''}):")
        for s in r["iterations"]:
            lines.append(
                f"  iteration {s['number']}: mean confidence {s['mean_confidence']:.3f}, active classes "
                f"{s['active_classes']}/{len(data['labels'])}, text weight {s['text_weight']:.2f}, "
                f"moved {s['moved']} ({100 * s['moved_share']:.1f}%)"
            )
    shown = [("zero-shot", data["zero_shot"])] + ([("refined", data["refined"])] if "refined" in data else [])
    width = max(len(label) for label in data["zero_shot"]) if data["zero_shot"] else 5
    lines.append("\nimages per class (mean confidence):")
    lines.append("  " + "label".ljust(width) + "".join(f"  {name:>18}" for name, _ in shown))
    for label in data["zero_shot"]:
        cells = []
        for _, counts in shown:
            found = counts.get(label, {"images": 0, "mean_confidence": None})
            conf = f"({found['mean_confidence']:.3f})" if found["mean_confidence"] is not None else ""
            cells.append(f"  {found['images']:>9,} {conf:>8}")
        lines.append("  " + label.ljust(width) + "".join(cells))
    if "uncertain" in data:
        u = data["uncertain"]
        silhouette = f", silhouette {u['silhouette']:.3f}" if u["silhouette"] is not None else ""
        lines.append(
            f"\nuncertain images (confidence below {u['below']}): {u['images']:,}, "
            f"{len(u['clusters'])} clusters{silhouette}"
        )
        for c in u["clusters"]:
            lines.append(f"  {c['size']:>6,}  {', '.join(c['names'])}  (e.g. {', '.join(c['examples'][:3])})")
    found = data["metrics"]
    if metrics_text is not None:
        lines.append(f"\nagainst the truth ({found['with_truth']:,} images):\n{metrics_text}")
    else:
        stats = {k: found[k] for k in ("zero_shot", "refined") if k in found}
        lines.append("\nwithout truth (similarity and confidence of the top label, diversity, balance):")
        lines.append(json.dumps(stats, indent=2))
    return "\n".join(lines) + "\n"


def write_report(folder: Path, data: dict[str, Any], text: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in (("report.txt", text), ("report.json", json.dumps(data, indent=2, default=str) + "\n")):
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(content)
            os.replace(tmp, folder / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def run_all(
    settings: Settings, plugin: ClassifyPlugin, modes: Sequence[str], paths: Sequence[Path], options: CollectionOptions
) -> list[Report]:
    """:func:`run` for each label set and root (blocking; sets the plugin up and closes it)."""
    import asyncio

    from analyzer.planner import Planner, RunOptions
    from analyzer.store import digesters, resolve_targets

    found, _ = digesters(Planner([plugin], RunOptions()), {plugin.name: plugin})
    asyncio.run(plugin.setup())
    reports: list[Report] = []
    try:
        for target in resolve_targets(settings, paths):
            for mode in modes:
                report = run(settings, plugin, found[plugin.name], mode, target, options)
                if report is not None:
                    reports.append(report)
    finally:
        asyncio.run(plugin.close())
    return reports
