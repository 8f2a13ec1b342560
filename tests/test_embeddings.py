"""The embedding store: one float32 vector per (content hash, model), kept apart from the index."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np

from analyzer import embeddings
from analyzer.embeddings import EmbeddingStore


def vectors(n: int, dim: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def test_embeddings_are_kept_per_model_and_read_back_exactly(tmp_path: Path) -> None:
    store = EmbeddingStore(tmp_path / "embeddings")
    a, b = vectors(3), vectors(3, dim=4, seed=1)
    hashes = ["sha256:aa", "sha256:bb", "sha256:cc"]

    store.model("ViT-B-32/openai").put(hashes, a)
    store.model("other/model").put(hashes, b)
    store.flush()

    again = EmbeddingStore(tmp_path / "embeddings")  # another process, later
    got = again.model("ViT-B-32/openai").get([*hashes, "sha256:dd"])
    assert all(np.array_equal(g, v) for g, v in zip(got[:3], a, strict=True))
    assert got[3] is None
    assert np.array_equal(again.model("other/model").get(["sha256:bb"])[0], b[1])
    assert again.model("ViT-B-32/openai").missing(["sha256:aa", "sha256:zz"]) == ["sha256:zz"]


def test_a_shard_is_only_seen_once_complete_and_a_read_only_store_writes_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "embeddings"
    model = EmbeddingStore(folder).model("m")
    model.put(["sha256:aa"], vectors(1))
    assert model.get(["sha256:aa"])[0] is not None  # before the flush: from memory
    assert EmbeddingStore(folder).model("m").get(["sha256:aa"]) == [None]  # not on disk yet

    readonly = EmbeddingStore(tmp_path / "elsewhere", read_only=True).model("m")
    readonly.put(["sha256:aa"], vectors(1))
    readonly.flush()
    assert not (tmp_path / "elsewhere").exists()


def test_many_shards_are_merged_and_duplicates_kept_once(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(embeddings, "FANOUT", 4)
    folder = tmp_path / "embeddings"
    data = vectors(12)
    for i in range(6):  # two "processes" writing the same images twice
        writer = EmbeddingStore(folder).model("m")
        writer.put([f"sha256:{j}" for j in range(2 * i, 2 * i + 2)], data[2 * i : 2 * i + 2])
        writer.flush()
        again = EmbeddingStore(folder).model("m")
        again.put([f"sha256:{2 * i}"], data[2 * i : 2 * i + 1])  # already there: not written again

    reader = EmbeddingStore(folder).model("m")
    assert len(list(reader.folder.glob("*.keys.npy"))) <= 4
    assert len(reader) == 12
    got = reader.get([f"sha256:{j}" for j in range(12)])
    assert all(np.array_equal(g, v) for g, v in zip(got, data, strict=True))
    streamed = sum(len(keys) for keys, _ in reader.chunks(rows=5))
    assert streamed == 12


def _write(folder: str, start: int) -> None:
    model = EmbeddingStore(Path(folder)).model("m")
    for i in range(start, start + 40, 4):
        model.put([f"sha256:{j}" for j in range(i, i + 4)], vectors(4, seed=i))
        model.flush()


def test_processes_writing_at_once_lose_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "embeddings"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_write, args=(str(folder), start)) for start in (0, 40, 80)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0

    model = EmbeddingStore(folder).model("m")
    assert model.missing([f"sha256:{j}" for j in range(120)]) == []
    assert np.array_equal(model.get(["sha256:44"])[0], vectors(4, seed=44)[0])


def test_every_key_is_found_also_those_ending_in_zero_bytes(tmp_path: Path) -> None:
    """NumPy's S32 drops trailing NUL bytes when read back: about 1 key in 256 ends in one."""
    model = EmbeddingStore(tmp_path / "embeddings").model("m")
    texts = [f"text {i}" for i in range(5000)]
    model.put(texts, vectors(5000))
    model.flush()

    again = EmbeddingStore(tmp_path / "embeddings").model("m")
    assert again.missing(texts) == []
    assert sum(v is None for v in again.get(texts)) == 0


def test_merging_is_tiered_so_rows_are_rewritten_a_few_times_not_at_every_merge(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(embeddings, "FANOUT", 4)
    model = EmbeddingStore(tmp_path / "embeddings").model("m")
    merged_rows = []
    original = model.compact

    def counting(*, everything: bool = True) -> bool:
        before = {p: len(np.load(p)) for p in model.folder.glob("*.keys.npy")}
        done = original(everything=everything)
        after = set(model.folder.glob("*.keys.npy"))
        merged_rows.append(sum(rows for p, rows in before.items() if p not in after))  # rows rewritten
        return done

    model.compact = counting  # type: ignore[method-assign]
    for i in range(64):  # 64 batches of one row
        model.put([f"sha256:{i}"], vectors(1, seed=i))
        model.flush()

    assert len(model) == 64
    assert len(list(model.folder.glob("*.keys.npy"))) <= 4  # 64 = 4**3: one shard per tier at most
    assert sum(merged_rows) == 64 * 3  # each row rewritten log4(64) = 3 times (merging all at each merge: 2,000)
    assert all(
        v is not None
        for v in EmbeddingStore(tmp_path / "embeddings").model("m").get([f"sha256:{i}" for i in range(64)])
    )


def test_two_processes_embedding_the_same_images_keep_each_once(tmp_path: Path) -> None:
    folder = tmp_path / "embeddings"
    data = vectors(6)
    writers = [EmbeddingStore(folder).model("m") for _ in range(2)]  # both opened before either wrote
    for writer in writers:
        writer.put([f"sha256:{j}" for j in range(6)], data)
    for writer in writers:
        writer.flush()

    model = EmbeddingStore(folder).model("m")
    assert len(list(model.folder.glob("*.keys.npy"))) == 2
    assert sum(len(keys) for keys, _ in model.chunks()) == 6  # each key once
    model.compact()
    assert len(list(model.folder.glob("*.keys.npy"))) == 1 and len(model) == 6
    assert all(np.array_equal(g, v) for g, v in zip(model.get([f"sha256:{j}" for j in range(6)]), data, strict=True))


def test_one_lookup_mixes_shards_unsaved_rows_and_absent_keys_in_the_order_asked(tmp_path: Path) -> None:
    folder = tmp_path / "embeddings"
    data = vectors(9)
    for start in (0, 3):  # two shards, from two writers
        writer = EmbeddingStore(folder).model("m")
        writer.put([f"sha256:{j}" for j in range(start, start + 3)], data[start : start + 3])
        writer.flush()
    reader = EmbeddingStore(folder).model("m")
    reader.put(["sha256:6"], data[6:7])  # not flushed: from memory

    asked = ["sha256:4", "sha256:none", "sha256:6", "sha256:0", "sha256:5", "sha256:1"]
    got = reader.get(asked)

    assert got[1] is None
    for text, vector in zip(asked, got, strict=True):
        if vector is not None:
            assert np.array_equal(vector, data[int(text.split(":")[1])])
    assert reader.missing(asked) == ["sha256:none"]
