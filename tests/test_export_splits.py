"""Dataset splits for `analyzer export`: stratified, reproducible without saved state, leakage-free.

An image's split follows from the seed and its duplicate group (same content hash, or embeddings at
cosine >= 0.95); with the previous export's manifest (`previous`), no earlier image ever moves.
"""

from __future__ import annotations

import hashlib
from collections import Counter

import numpy as np
import pytest

from analyzer.export.splits import (
    SPLITS,
    SplitRatios,
    assign_splits,
    duplicate_groups,
    look_alikes_of,
    search_recall,
)


def content_hash(name: str) -> str:
    return "sha256:" + hashlib.sha256(name.encode()).hexdigest()


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=-1, keepdims=True)).astype(np.float32)


def random_vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    return unit(np.random.default_rng(seed).standard_normal((n, dim)))


def look_alike(vector: np.ndarray, cosine: float, seed: int) -> np.ndarray:
    """A unit vector at exactly this cosine similarity to ``vector`` (in a random direction)."""
    noise = np.random.default_rng(seed).standard_normal(len(vector))
    noise -= (noise @ vector) * vector
    return unit(cosine * vector + np.sqrt(1 - cosine**2) * unit(noise)).astype(np.float32)


def plant_pairs(vectors: np.ndarray, pairs: int, cosine: float, seed: int = 1) -> list[tuple[int, int]]:
    """Make ``pairs`` rows look-alikes of other rows (in place); returns (original, look-alike)."""
    chosen = np.random.default_rng(seed).choice(len(vectors), size=2 * pairs, replace=False)
    planted = list(zip(chosen[:pairs].tolist(), chosen[pairs:].tolist(), strict=True))
    for n, (original, copy) in enumerate(planted):
        vectors[copy] = look_alike(vectors[original], cosine, seed=seed * 100_000 + n)
    return planted


def class_counts(classes: list[str], splits: list[str]) -> dict[str, Counter[str]]:
    counts: dict[str, Counter[str]] = {}
    for cls, split in zip(classes, splits, strict=True):
        counts.setdefault(cls, Counter())[split] += 1
    return counts


def test_ratios_are_read_as_percentages_or_fractions() -> None:
    assert SplitRatios.parse("70/15/15") == SplitRatios(0.7, 0.15, 0.15) == SplitRatios()
    assert SplitRatios.parse("0.8,0.1,0.1") == SplitRatios(0.8, 0.1, 0.1)
    assert SplitRatios.parse("80:0:20") == SplitRatios(0.8, 0.0, 0.2)
    assert str(SplitRatios.parse("0.8, 0.1, 0.1")) == "80/10/10"
    for wrong in ("70/30", "50/30/30", "a/b/c", "-10/60/50"):
        with pytest.raises(ValueError):
            SplitRatios.parse(wrong)


def test_the_same_images_get_the_same_splits_in_any_order_and_every_class_meets_its_ratios() -> None:
    sizes = {"cat": 1000, "dog": 333, "_unsure": 57, "": 20, "bird": 7}
    items = [(content_hash(f"{cls}{n}"), cls) for cls, size in sizes.items() for n in range(size)]
    hashes, classes = [h for h, _ in items], [c for _, c in items]

    splits, drift = assign_splits(hashes, classes, hashes, SplitRatios(), seed=7)
    again, _ = assign_splits(hashes, classes, hashes, SplitRatios(), seed=7)
    shuffled = np.random.default_rng(0).permutation(len(items))
    reordered, _ = assign_splits(
        [hashes[i] for i in shuffled], [classes[i] for i in shuffled], [hashes[i] for i in shuffled], seed=7
    )
    assert again == splits
    assert dict(zip([hashes[i] for i in shuffled], reordered, strict=True)) == dict(zip(hashes, splits, strict=True))

    for cls, counts in class_counts(classes, splits).items():  # within one image of each target count
        for split, share in SplitRatios().as_dict().items():
            assert abs(counts[split] - sizes[cls] * share) < 1, (cls, split, counts)
        assert drift.off_by(cls) < 1  # as the drift report says

    other_seed, _ = assign_splits(hashes, classes, hashes, seed=8)
    assert other_seed != splits


def test_duplicates_and_near_duplicates_are_one_group_and_never_straddle_splits() -> None:
    vectors = random_vectors(3000, 64)
    planted = plant_pairs(vectors, 100, cosine=0.98)
    hashes = [content_hash(str(n)) for n in range(3000)]
    # the same content twice (a copy of a file) is the same hash: one image, one split
    hashes += hashes[:50]
    vectors = np.concatenate([vectors, vectors[:50]])
    classes = ["cat" if n % 3 else "dog" for n in range(3000)] + ["cat" if n % 3 else "dog" for n in range(50)]

    groups = duplicate_groups(hashes, vectors, threshold=0.95)
    splits, drift = assign_splits(hashes, classes, groups)

    for original, copy in planted:
        assert groups[original] == groups[copy] == min(hashes[original], hashes[copy])
        assert splits[original] == splits[copy]
    for n in range(50):
        assert groups[3000 + n] == groups[n] and splits[3000 + n] == splits[n]
    assert len(set(groups)) == 3000 - 100  # random vectors are nowhere near 0.95 otherwise
    assert drift.groups == 2900


def test_images_without_an_embedding_are_grouped_by_hash_only() -> None:
    vectors = random_vectors(4, 16)
    vectors[1] = vectors[0]
    vectors[3] = vectors[2]
    hashes = ["sha256:d", "sha256:c", "sha256:b", "sha256:a"]

    assert duplicate_groups(hashes, vectors) == ["sha256:c", "sha256:c", "sha256:a", "sha256:a"]
    assert duplicate_groups(hashes, vectors, has_vector=[True, False, True, True]) == [
        "sha256:d",
        "sha256:c",
        "sha256:a",
        "sha256:a",
    ]
    vectors[3] = 0  # a zero (or NaN) row is no embedding either
    assert duplicate_groups(hashes, vectors)[2:] == ["sha256:b", "sha256:a"]
    assert duplicate_groups(hashes, None) == hashes


def earlier_and_added(seed: int = 3) -> tuple[list[str], list[str], np.ndarray, list[str], list[str], np.ndarray]:
    """2,000 images, then 200 more: new images, some of them look-alikes of earlier ones whose hashes
    sort first (so they become their group's key)."""
    rng = np.random.default_rng(seed)
    earlier = [content_hash(f"old{n}") for n in range(2000)]
    earlier_classes = [["cat", "dog", "_unsure"][n % 3] for n in range(2000)]
    earlier_vectors = random_vectors(2000, 64, seed=seed)
    plant_pairs(earlier_vectors, 40, cosine=0.98, seed=seed)
    added = [content_hash(f"new{n}") for n in range(200)]
    added_classes = [["cat", "dog", "_unsure"][n % 3] for n in range(200)]
    added_vectors = random_vectors(200, 64, seed=seed + 1)
    for n, old in enumerate(rng.choice(2000, size=30, replace=False)):
        added[n] = "sha256:00000000" + added[n][15:]  # sorts before every earlier hash
        added_vectors[n] = look_alike(earlier_vectors[old], 0.98, seed=n)
        added_classes[n] = earlier_classes[old]
    return earlier, earlier_classes, earlier_vectors, added, added_classes, added_vectors


def test_adding_images_moves_no_earlier_image_given_the_previous_splits() -> None:
    earlier, earlier_classes, earlier_vectors, added, added_classes, added_vectors = earlier_and_added()
    groups = duplicate_groups(earlier, earlier_vectors)
    before, _ = assign_splits(earlier, earlier_classes, groups, seed=1)
    manifest = dict(zip(earlier, before, strict=True))  # what the export keeps

    hashes, classes = earlier + added, earlier_classes + added_classes
    all_groups = duplicate_groups(hashes, np.concatenate([earlier_vectors, added_vectors]))
    after, drift = assign_splits(hashes, classes, all_groups, seed=1, previous=manifest)

    assert after[:2000] == before
    assert drift.moved == 0 and drift.from_previous == 2000
    for n in range(30):  # a new look-alike joins its earlier image's split, although its hash now keys the group
        partner = all_groups.index(all_groups[2000 + n])
        assert all_groups[2000 + n] == added[n] and after[2000 + n] == after[partner]
    # the new images fill what keeps each class nearest its targets
    for cls, counts in class_counts(classes, after).items():
        total = sum(counts.values())
        assert all(abs(counts[s] - total * r) < 1 for s, r in SplitRatios().as_dict().items()), (cls, counts)


def test_a_re_export_looks_only_for_look_alikes_of_its_new_images_and_finds_each_one() -> None:
    """Only the new images' pairs are looked for, each new vector against every stored one as they
    stream past a block at a time: every new look-alike joins its earlier image, as in a search of all."""
    earlier, earlier_classes, earlier_vectors, added, added_classes, added_vectors = earlier_and_added()
    before, _ = assign_splits(earlier, earlier_classes, duplicate_groups(earlier, earlier_vectors), seed=1)
    manifest = dict(zip(earlier, before, strict=True))
    hashes, classes = earlier + added, earlier_classes + added_classes
    vectors = np.concatenate([earlier_vectors, added_vectors])
    new_rows = np.array([n for n, h in enumerate(hashes) if h not in manifest])
    stored = [(np.arange(start, min(start + 500, 2200)), vectors[start : start + 500]) for start in range(0, 2200, 500)]

    pairs = list(look_alikes_of(vectors[new_rows], new_rows, stored, 0.95))
    fresh = duplicate_groups(hashes, pairs=pairs)
    full = duplicate_groups(hashes, vectors)

    assert all(fresh[2000 + n] == full[2000 + n] for n in range(200))  # each new image's group key
    joined = {n for n in range(2000) if fresh[n] != earlier[n]}  # earlier images a new one joined
    assert len(joined) >= 30 and all(fresh[n] in fresh[2000:] for n in joined)
    after, drift = assign_splits(hashes, classes, fresh, seed=1, previous=manifest)
    assert after[:2000] == before and drift.moved == 0
    for n in range(30):
        assert after[2000 + n] == after[fresh.index(fresh[2000 + n])]


def test_float16_vectors_give_the_groups_float32_gives_once_their_pairs_are_verified() -> None:
    """Half the memory: pairs are found from the rounded vectors a little below the threshold, then
    verified at full precision; planted pairs just either side of the threshold are told apart."""
    vectors = random_vectors(4000, 64, seed=4)  # up to 5,000: every pair compared, in both
    above = [(n, 200 + n) for n in range(100)]
    below = [(n, 200 + n) for n in range(100, 200)]
    for original, copy in above + below:
        vectors[copy] = look_alike(vectors[original], 0.9504 if copy < 300 else 0.9496, seed=copy)
    hashes = [content_hash(f"h{n}") for n in range(4000)]

    def verify(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.einsum("ij,ij->i", vectors[a], vectors[b]) >= 0.95

    exact = duplicate_groups(hashes, vectors)
    half = duplicate_groups(hashes, vectors.astype(np.float16), verify=verify)

    assert half == exact
    assert all(exact[a] == exact[b] for a, b in above) and not any(exact[a] == exact[b] for a, b in below)


def test_without_previous_splits_only_merged_groups_can_move_when_each_group_is_placed_alone() -> None:
    earlier, earlier_classes, earlier_vectors, added, added_classes, added_vectors = earlier_and_added()
    groups = duplicate_groups(earlier, earlier_vectors)
    hashes, classes = earlier + added, earlier_classes + added_classes
    all_groups = duplicate_groups(hashes, np.concatenate([earlier_vectors, added_vectors]))

    # exact=False: a group's split is a pure function of the seed and its key
    before, _ = assign_splits(earlier, earlier_classes, groups, seed=1, exact=False)
    after, drift = assign_splits(hashes, classes, all_groups, seed=1, exact=False)
    merged = {n for n in range(2000) if all_groups[n] != groups[n]}
    assert len(merged) >= 30  # the 30 earlier images with a new look-alike (and any look-alike of theirs)
    assert all(after[n] == before[n] for n in range(2000) if n not in merged)
    assert drift.off_by() > 1  # the price: shares only near the targets (see the drift report)

    # exact=True (the default) cuts each class at its target counts: without the manifest, adding
    # images shifts the cuts a little and the few groups next to them cross
    before, _ = assign_splits(earlier, earlier_classes, groups, seed=1)
    after, _ = assign_splits(hashes, classes, all_groups, seed=1)
    moved = [n for n in range(2000) if n not in merged and after[n] != before[n]]
    assert 0 < len(moved) < 40


def test_a_new_image_joining_two_earlier_groups_of_different_splits_moves_the_fewest() -> None:
    base = random_vectors(1, 32, seed=5)[0]
    noise = np.random.default_rng(6).standard_normal(32)
    side = unit(noise - (noise @ base) * base)
    at = np.radians(15)
    a = unit(np.cos(at) * base + np.sin(at) * side)  # a and b: cosine 0.87, two groups
    b = unit(np.cos(at) * base - np.sin(at) * side)
    c = look_alike(b, 0.99, seed=1)  # b's look-alike: b and c are one group
    bridge = base  # cosine 0.97 to both a and b
    hashes = ["sha256:a", "sha256:b", "sha256:c", "sha256:d"]
    vectors = np.stack([a, b, c, bridge])
    previous = {"sha256:a": "test", "sha256:b": "train", "sha256:c": "train"}

    groups = duplicate_groups(hashes, vectors)
    splits, drift = assign_splits(hashes, ["x"] * 4, groups, previous=previous)

    assert groups == ["sha256:a"] * 4
    assert splits == ["train"] * 4  # two earlier images were in train, one in test: it moves, or it would leak
    assert drift.moved == 1 and drift.from_previous == 2


def test_the_approximate_search_finds_every_planted_pair_among_20000_vectors() -> None:
    vectors = random_vectors(20_000, 64)
    planted = plant_pairs(vectors, 200, cosine=0.98)
    hashes = [content_hash(str(n)) for n in range(20_000)]

    groups = duplicate_groups(hashes, vectors)  # 20,000 > 5,000: the inverted file, not brute force

    assert all(groups[a] == groups[b] for a, b in planted)
    assert len(set(groups)) == 20_000 - 200
    recall = search_recall(vectors, 0.95, sample=[n for pair in planted for n in pair])
    assert recall.pairs == 400 and recall.recall == 1.0  # each pair, from either side, shares a cell


def test_the_approximate_search_gives_the_groups_brute_force_gives() -> None:
    vectors = random_vectors(8000, 32, seed=2)
    planted = plant_pairs(vectors, 300, cosine=0.96, seed=2)
    free = sorted(set(range(8000)) - {n for pair in planted for n in pair})
    for n, (_, copy) in enumerate(planted[:50]):  # chains of three: a ~ b ~ c
        vectors[free[n]] = look_alike(vectors[copy], 0.97, seed=50_000 + n)
    hashes = [content_hash(f"v{n}") for n in range(8000)]

    approximate = duplicate_groups(hashes, vectors)
    exact = duplicate_groups(hashes, vectors, exact_up_to=len(hashes))
    reordered = np.random.default_rng(0).permutation(8000)
    shuffled = duplicate_groups([hashes[i] for i in reordered], vectors[reordered])

    assert approximate == exact
    assert shuffled == [exact[i] for i in reordered]
    assert len(set(exact)) == 8000 - 300 - 50


def test_a_class_of_one_image_and_splits_given_no_share() -> None:
    hashes = [content_hash(str(n)) for n in range(41)]
    classes = ["lonely"] + ["many"] * 40

    splits, _ = assign_splits(hashes, classes, hashes)
    assert splits[0] == "train"  # 0.7 of an image rounds to train; val and test get 0.15 each

    splits, drift = assign_splits(hashes, classes, hashes, SplitRatios.parse("80/0/20"))
    assert "val" not in splits
    assert Counter(splits[1:]) == {"train": 32, "test": 8}
    assert drift.split_counts()["val"] == 0

    for exact in (True, False):
        splits, _ = assign_splits(hashes, classes, hashes, SplitRatios.parse("0/0/100"), exact=exact)
        assert set(splits) == {"test"}


def test_the_drift_report_gives_each_split_s_share_against_its_target() -> None:
    hashes = [content_hash(str(n)) for n in range(30)]
    classes = ["a"] * 10 + ["b"] * 20

    _, drift = assign_splits(hashes, classes, hashes, SplitRatios.parse("70/15/15"))

    # class a: 10 images, targets 7 / 1.5 / 1.5; the half images go to val first (largest remainder, then order)
    assert drift.split_counts("a") == {"train": 7, "val": 2, "test": 1}
    assert drift.split_counts("b") == {"train": 14, "val": 3, "test": 3}
    assert drift.share("val", "a") == pytest.approx(0.2)
    assert drift.drift("val", "a") == pytest.approx(0.05)
    assert drift.drift("test") == pytest.approx(4 / 30 - 0.15)
    report = drift.to_dict()
    assert report["images"] == 30 and report["groups"] == 30 and report["moved"] == 0
    assert report["splits"]["train"] == {"images": 21, "share": 0.7, "target": 0.7, "drift": 0.0}
    assert report["classes"]["a"]["val"] == {"images": 2, "share": 0.2, "target": 0.15, "drift": 0.05}
    assert set(report["classes"]["b"]) == set(SPLITS)

    text = drift.format()
    assert text.splitlines()[0].startswith("splits 70/15/15 (train/val/test): 30 images in 30 duplicate groups")
    assert "  a      train      7  70.0% (+0.0)  val      2  20.0% (+5.0)  test      1  10.0% (-5.0)" in text
    assert "  b      train     14  70.0% (+0.0)  val      3  15.0% (+0.0)  test      3  15.0% (+0.0)" in text
