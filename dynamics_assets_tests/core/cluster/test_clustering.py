"""Tests of the faiss spherical k-means core on small planted-cluster embedding stores."""
from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pyarrow.parquet as pq
import pytest

from dynamics_assets.core.io.versions import resolve
from dynamics_assets.core.io.atomic import save_npy
from dynamics_assets.core.embed.store import EmbeddingStore
from dynamics_assets.core.cluster.kmeans import assign, cluster_sizes, merge_centroids, train_kmeans

DIM = 32
GROUPS = 5
PER_GROUP = 120
SHARD_SIZES = (250, 150, 200)  # sums to GROUPS * PER_GROUP


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def planted(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit float16 embeddings around GROUPS orthogonal directions (shuffled) and their group labels.

    The noise (norm ~0.06) keeps groups far apart, so k-means++ seeding recovers them for any seed.
    """
    rng = np.random.default_rng(seed)
    directions = np.linalg.qr(rng.standard_normal((DIM, GROUPS)))[0].T
    labels = rng.permutation(np.repeat(np.arange(GROUPS), PER_GROUP))
    emb = unit(directions[labels] + 0.01 * rng.standard_normal((len(labels), DIM)))
    return emb.astype(np.float16), labels


def write_store(root: Path, emb: np.ndarray, shard_sizes=SHARD_SIZES) -> EmbeddingStore:
    starts = np.cumsum((0, *shard_sizes))
    for i, (lo, hi) in enumerate(zip(starts[:-1], starts[1:])):
        shard = root / f"shard-{i:05d}"
        save_npy(shard / "image.npy", emb[lo:hi])
        save_npy(shard / "text.npy", emb[lo:hi])
        save_npy(shard / "sample_id.npy", np.array([f"id-{j:06d}" for j in range(lo, hi)], dtype="S32"))
    return EmbeddingStore(root, kind="image")


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return planted()


@pytest.fixture
def store(tmp_path: Path, data) -> EmbeddingStore:
    return write_store(tmp_path / "emb", data[0])


def test_store_streams_in_pool_order(store: EmbeddingStore, data) -> None:
    assert store.shards == ["shard-00000", "shard-00001", "shard-00002"]
    assert (store.dim, len(store), store.counts.tolist()) == (DIM, 600, list(SHARD_SIZES))
    starts, rows = zip(*store.iter_batches(64))
    assert all(r.dtype == np.float16 and len(r) <= 64 for r in rows)
    assert list(starts) == sorted(starts) and starts[0] == 0
    np.testing.assert_array_equal(np.concatenate(rows), data[0])


def test_planted_clusters_are_recovered(store: EmbeddingStore, data, tmp_path: Path) -> None:
    centroids = train_kmeans(store, GROUPS, sample_size=600, init="kmeans++", use_gpu=False)
    assert centroids.shape == (GROUPS, DIM) and centroids.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1.0, rtol=1e-5)

    summary = assign(store, centroids, tmp_path / "out", batch_size=100, use_gpu=False)
    ids = np.load(resolve(tmp_path / "out") / "cluster_id.npy")
    labels = data[1]
    group_to_cluster = {g: set(ids[labels == g].tolist()) for g in range(GROUPS)}
    assert all(len(c) == 1 for c in group_to_cluster.values())  # each group in one cluster
    assert len(set().union(*group_to_cluster.values())) == GROUPS  # purity 1.0: no shared cluster
    assert (summary.n, summary.k, summary.n_quarantined, summary.n_empty_clusters) == (600, GROUPS, 0, 0)

    distance = np.load(resolve(tmp_path / "out") / "distance.npy")
    assert distance.dtype == np.float32 and 0 <= distance.min() and distance.max() < 0.1
    np.testing.assert_array_equal(cluster_sizes(resolve(tmp_path / "out") / "cluster_id.npy", GROUPS), np.bincount(ids))
    np.testing.assert_array_equal(np.load(resolve(tmp_path / "out") / "centroids.npy"), centroids)

    table = pq.read_table(resolve(tmp_path / "out") / "assignments.parquet")
    assert table.column("sample_index").to_pylist() == list(range(600))
    assert table.column("sample_id").to_pylist()[250] == "id-000250"
    assert table.column("shard").to_pylist()[250] == "shard-00001"
    np.testing.assert_array_equal(table.column("cluster_id").to_numpy(), ids)
    np.testing.assert_array_equal(table.column("distance").to_numpy(), distance)
    assert pq.read_table(resolve(tmp_path / "out") / "quarantine.parquet").num_rows == 0


def test_same_seed_gives_byte_identical_outputs(store: EmbeddingStore, tmp_path: Path) -> None:
    for run in ("a", "b"):
        centroids = train_kmeans(store, 8, sample_size=400, seed=3, use_gpu=False)
        assign(store, centroids, tmp_path / run, batch_size=128, use_gpu=False)
    for name in ("cluster_id.npy", "distance.npy", "centroids.npy", "assignments.parquet"):
        assert (resolve(tmp_path / "a") / name).read_bytes() == (resolve(tmp_path / "b") / name).read_bytes(), name


def test_batch_size_does_not_change_the_result(store: EmbeddingStore, tmp_path: Path) -> None:
    centroids = train_kmeans(store, 8, sample_size=600, use_gpu=False)
    assign(store, centroids, tmp_path / "small", batch_size=7, use_gpu=False)
    assign(store, centroids, tmp_path / "whole", batch_size=10**6, use_gpu=False)
    for name in ("cluster_id.npy", "distance.npy"):
        assert (resolve(tmp_path / "small") / name).read_bytes() == (resolve(tmp_path / "whole") / name).read_bytes(), name


def test_bad_rows_are_quarantined_and_others_unaffected(data, tmp_path: Path) -> None:
    emb = data[0].copy()
    emb[260, 3] = np.nan  # shard 1
    emb[420] = 0.0  # shard 2
    store = write_store(tmp_path / "emb", emb)
    centroids = train_kmeans(store, GROUPS, sample_size=600, init="kmeans++", use_gpu=False)  # bad rows dropped
    summary = assign(store, centroids, tmp_path / "out", batch_size=64, use_gpu=False)
    clean = assign(write_store(tmp_path / "clean", data[0]), centroids, tmp_path / "ref", use_gpu=False)

    ids, ref = np.load(resolve(tmp_path / "out") / "cluster_id.npy"), np.load(resolve(tmp_path / "ref") / "cluster_id.npy")
    distance = np.load(resolve(tmp_path / "out") / "distance.npy")
    assert ids[[260, 420]].tolist() == [-1, -1] and np.isnan(distance[[260, 420]]).all()
    others = np.setdiff1d(np.arange(600), [260, 420])
    np.testing.assert_array_equal(ids[others], ref[others])
    assert (summary.n_quarantined, summary.n_non_finite, summary.n_zero_norm, clean.n_quarantined) == (2, 1, 1, 0)
    assert cluster_sizes(resolve(tmp_path / "out") / "cluster_id.npy", GROUPS).sum() + summary.n_quarantined == 600

    quarantine = pq.read_table(resolve(tmp_path / "out") / "quarantine.parquet").to_pylist()
    assert quarantine == [
        {"sample_index": 260, "sample_id": "id-000260", "reason": "non_finite_embedding"},
        {"sample_index": 420, "sample_id": "id-000420", "reason": "zero_norm_embedding"},
    ]
    table = pq.read_table(resolve(tmp_path / "out") / "assignments.parquet")
    assert table.num_rows == 600 and table.column("distance").null_count == 2


def test_wrong_dimension_in_one_shard_names_it(data, tmp_path: Path) -> None:
    write_store(tmp_path / "emb", data[0])
    save_npy(tmp_path / "emb" / "shard-00001" / "image.npy", np.zeros((150, DIM + 1), np.float16))
    with pytest.raises(ValueError, match=r"shard-00001/image\.npy.*dimension 33.*32"):
        EmbeddingStore(tmp_path / "emb")


def test_centroid_dimension_mismatch_is_an_error(store: EmbeddingStore, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="dimension 33, expected 32"):
        assign(store, unit(np.ones((3, DIM + 1), np.float32)), tmp_path / "out", use_gpu=False)


def test_k_larger_than_points_is_an_error(store: EmbeddingStore) -> None:
    with pytest.raises(ValueError, match="k=700 exceeds the 600 finite training points"):
        train_kmeans(store, 700, sample_size=10_000, use_gpu=False)
    with pytest.raises(ValueError, match="k=20 exceeds the 10"):
        train_kmeans(store, 20, sample_size=10, use_gpu=False)


@pytest.mark.skipif(faiss.get_num_gpus() > 0, reason="needs a machine without GPU")
def test_forcing_gpu_without_one_is_an_error(store: EmbeddingStore) -> None:
    with pytest.raises(RuntimeError, match="no GPU"):
        train_kmeans(store, 2, sample_size=100, use_gpu=True)


@pytest.mark.parametrize("block_size", [1, 2, 1024])
def test_merge_centroids_is_greedy_in_order(block_size: int) -> None:
    e = np.eye(4, dtype=np.float32)
    near_e0 = unit(e[0] + 0.1 * e[3])  # cos 0.995 with e0
    b = unit(e[1] + 1.2 * e[2])  # cos 0.64 with e1: kept
    c = unit(e[1] + 0.6 * e[2])  # cos 0.86 with e1 and 0.94 with b: merged into the nearer, b
    centroids = np.stack([e[0], near_e0, e[1], b, c, e[3]])
    kept, mapping = merge_centroids(centroids, 0.70, block_size=block_size)
    np.testing.assert_allclose(kept, centroids[[0, 2, 3, 5]], atol=1e-6)
    assert mapping.tolist() == [0, 0, 1, 2, 2, 3]


def test_merge_keeps_a_centroid_whose_only_near_duplicate_was_dropped() -> None:
    angle = np.deg2rad(42)  # cos 0.743 between consecutive centroids, cos 0.105 between first and third
    centroids = np.array([[np.cos(t), np.sin(t)] for t in (0, angle, 2 * angle)], np.float32)
    kept, mapping = merge_centroids(centroids, 0.70)
    assert len(kept) == 2 and mapping.tolist() == [0, 0, 1]


def test_sample_size_above_the_pool_trains_on_the_pool_without_a_warning(store: EmbeddingStore, caplog) -> None:
    """The default sample_size (100,000) on a pool of 600 rows reads the pool whole, silently (issue
    18: a warning about sample_size=100000 on a 778-row pool); a cap that really trains on fewer
    rows than the pool and the asked sample still says so."""
    import logging

    with caplog.at_level(logging.WARNING, logger="dynamics_assets.core.cluster.kmeans"):
        centroids = train_kmeans(store, GROUPS, sample_size=100_000, init="kmeans++", use_gpu=False)
    assert centroids.shape == (GROUPS, DIM)
    assert not [r for r in caplog.records if "sample_size" in r.getMessage()], caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dynamics_assets.core.cluster.kmeans"):
        train_kmeans(store, 2, sample_size=600, max_points_per_centroid=100, use_gpu=False)
    assert "sample_size=600 on 600 rows exceeds max_points_per_centroid*k=200; training on 200 rows" in caplog.text
