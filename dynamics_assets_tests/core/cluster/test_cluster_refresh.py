"""Re-curation when the pool grows: assign to kept centroids or re-train (cluster_refresh.py), on a
tiny planted-blob embedding store."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from dynamics_assets.core.io.versions import resolve
from dynamics_assets.core.cluster.refresh import FIT_NAME, FitRecord, RefreshDecision, decide, encoder_identity
from dynamics_assets.core.embed.store import EmbeddingStore
from dynamics_assets.core.cluster.kmeans import assign, mean_distance, train_kmeans

DIM = 16
K = 4
ROWS = 300
ENCODER = {"model_name": "m", "weights": "sha256:x"}
PARAMS = {"k": K, "sample_size": 900, "niter": 10, "seed": 0, "kind": "image", "merge_threshold": 0.95}
AXES = np.eye(DIM)
OLD_BLOBS = AXES[:K]  # the fitted concepts
NEW_BLOBS = AXES[8 : 8 + K]  # orthogonal to every fitted concept


def blob_rows(centres: np.ndarray, n: int, seed: int, noise: float = 0.1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = centres[rng.integers(len(centres), size=n)] + noise * rng.standard_normal((n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)


def write_shard(emb_dir: Path, shard: str, rows: np.ndarray, encoder: dict | None = ENCODER) -> None:
    d = emb_dir / shard
    d.mkdir(parents=True)
    np.save(d / "image.npy", rows)
    np.save(d / "text.npy", rows)
    ids = np.array([f"{shard}-{i}".encode().ljust(32, b"0")[:32] for i in range(len(rows))], dtype="S32")
    np.save(d / "sample_id.npy", ids)
    if encoder is not None:
        (d / "meta.json").write_text(json.dumps({"encoder": encoder, "n": len(rows), "dim": DIM}))


@pytest.fixture
def fitted(tmp_path):
    """Three shards of the old blobs, centroids trained and assigned, and the fit record written."""
    emb = tmp_path / "emb"
    for s in range(3):
        write_shard(emb, f"shard-{s:03d}", blob_rows(OLD_BLOBS, ROWS, seed=s))
    store = EmbeddingStore(emb)
    centroids = train_kmeans(store, K, sample_size=900, niter=10, seed=0, use_gpu=False, init="kmeans++")
    clusters = tmp_path / "clusters"
    fit = lambda s: FitRecord(PARAMS, encoder_identity(store), dict(zip(store.shards, store.counts.tolist())),  # noqa: E731
                              s.mean_distance)
    summary = assign(store, centroids, clusters, use_gpu=False, fit=fit)  # clusters: the artefact root
    record = fit(summary)
    return emb, clusters, centroids, record


def _decide_now(emb: Path, centroids: np.ndarray, previous: FitRecord | None, mode: str = "auto",
                params: dict = PARAMS, threshold: float = 0.25) -> RefreshDecision:
    store = EmbeddingStore(emb)
    shards = dict(zip(store.shards, store.counts.tolist()))
    drift_of = lambda new: mean_distance(store, centroids, new, use_gpu=False)  # noqa: E731
    return decide(mode, previous, params, encoder_identity(store), shards, drift_of, threshold)


def _no_drift(new):
    raise AssertionError(f"drift must not be measured here (new shards {new})")


# ----------------------------------------------------------------------------- FitRecord / mean_distance


def test_fit_record_round_trip_and_missing_files(fitted):
    emb, clusters, centroids, record = fitted
    assert FitRecord.read(clusters) == record
    assert record.shards == {"shard-000": ROWS, "shard-001": ROWS, "shard-002": ROWS}
    assert record.encoder == ENCODER
    version = resolve(clusters)  # fit.json is part of the clusters version
    assert json.loads((version / FIT_NAME).read_text())["mean_distance"] == record.mean_distance
    with pytest.raises(ValueError, match="immutable"):
        record.write(version)

    (version / "centroids.npy").unlink()  # (tampering with a committed version, to test the reader)
    assert FitRecord.read(clusters) is None
    np.save(version / "centroids.npy", centroids)
    assert FitRecord.read(clusters) == record
    (version / FIT_NAME).unlink()
    assert FitRecord.read(clusters) is None
    assert FitRecord.read(clusters / "nowhere") is None


def test_mean_distance_matches_assignment_and_the_planted_noise(fitted):
    emb, clusters, centroids, record = fitted
    store = EmbeddingStore(emb)
    rows, mean = mean_distance(store, centroids, store.shards, use_gpu=False)
    assert rows == 3 * ROWS
    assert mean == pytest.approx(record.mean_distance, rel=1e-5)
    # distance.npy holds the per-row values the mean is taken over
    assert mean == pytest.approx(float(np.load(resolve(clusters) / "distance.npy").astype(np.float64).mean()), rel=1e-5)
    # noise 0.1 per dimension: 1 - cos ~ (D - 1) * 0.01 / 2 ~ 0.07, far from the 1.0 of an unrelated row
    assert 0.02 < mean < 0.15

    # per shard, and the batched stream gives the same numbers
    one_rows, one = mean_distance(store, centroids, ["shard-001"], use_gpu=False, batch_size=7)
    assert one_rows == ROWS
    d = np.load(resolve(clusters) / "distance.npy")[ROWS : 2 * ROWS].astype(np.float64)
    assert one == pytest.approx(d.mean(), rel=1e-5)

    with pytest.raises(ValueError, match="shard-009"):
        mean_distance(store, centroids, ["shard-009"], use_gpu=False)


def test_mean_distance_skips_invalid_rows(tmp_path, fitted):
    emb, _, centroids, _ = fitted
    rows = blob_rows(OLD_BLOBS, 10, seed=9)
    rows[2] = 0.0
    rows[5, 3] = np.nan
    write_shard(emb, "shard-100", rows)
    write_shard(emb, "shard-101", np.zeros((4, DIM), dtype=np.float16))
    store = EmbeddingStore(emb)
    n, mean = mean_distance(store, centroids, ["shard-100"], use_gpu=False)
    assert n == 8 and math.isfinite(mean)
    c = centroids / np.linalg.norm(centroids, axis=1, keepdims=True)
    good = np.delete(rows.astype(np.float32), [2, 5], axis=0)
    good /= np.linalg.norm(good, axis=1, keepdims=True)
    assert mean == pytest.approx(float(np.mean(1 - (good @ c.T).max(axis=1))), abs=1e-4)
    n, mean = mean_distance(store, centroids, ["shard-101"], use_gpu=False)
    assert n == 0 and math.isnan(mean)


# ----------------------------------------------------------------------------- decide


def test_retrain_without_previous_or_when_asked(fitted):
    emb, _, centroids, record = fitted
    d = _decide_now(emb, centroids, None)
    assert d.action == "retrain" and "no previous" in d.reason and d.drift is None
    d = decide("retrain", record, PARAMS, ENCODER, record.shards, _no_drift, 0.25)
    assert d.action == "retrain" and "asked" in d.reason
    assert d.metadata() == {"refresh": "retrain", "refresh_reason": d.reason, "new_shards": 0, "new_rows": 0}


def test_incompatible_previous_forces_retrain_and_refuses_assign(fitted):
    _, _, _, record = fitted
    now = dict(record.shards)
    cases = {
        "clustering parameters changed: k": ({**PARAMS, "k": K + 1}, ENCODER, now),
        "clustering parameters changed: merge_threshold, seed": ({**PARAMS, "seed": 1, "merge_threshold": 0.9},
                                                                ENCODER, now),
        "another encoder": (PARAMS, {**ENCODER, "weights": "sha256:y"}, now),
        "fitted shard shard-001 left the pool": (PARAMS, ENCODER, {k: v for k, v in now.items() if k != "shard-001"}),
        "fitted shard shard-002 changed (300 -> 290 rows)": (PARAMS, ENCODER, {**now, "shard-002": 290}),
    }
    for reason, (params, encoder, shards) in cases.items():
        d = decide("auto", record, params, encoder, {**shards, "shard-new": 5}, _no_drift, 0.25)
        assert d.action == "retrain" and reason in d.reason, (reason, d.reason)
        with pytest.raises(ValueError, match="cannot assign to the previous centroids"):
            decide("assign", record, params, encoder, shards, _no_drift, 0.25)
    with pytest.raises(ValueError, match="no previous centroids"):
        decide("assign", None, PARAMS, ENCODER, now, _no_drift, 0.25)


def test_no_new_shards_assigns_with_zero_drift(fitted):
    emb, _, centroids, record = fitted
    for mode in ("auto", "assign"):
        d = _decide_now(emb, centroids, record, mode)
        assert (d.action, d.drift, d.new_shards, d.new_rows) == ("assign", 0.0, [], 0)
        assert "no new shards" in d.reason


def test_new_shard_of_known_concepts_has_small_drift_and_is_assigned(fitted):
    emb, _, centroids, record = fitted
    write_shard(emb, "shard-003", blob_rows(OLD_BLOBS, ROWS, seed=3))
    d = _decide_now(emb, centroids, record)
    assert d.action == "assign" and d.new_shards == ["shard-003"] and d.new_rows == ROWS
    assert abs(d.drift) < 0.25 and "<= threshold" in d.reason
    rows, mean = mean_distance(EmbeddingStore(emb), centroids, ["shard-003"], use_gpu=False)
    assert d.drift == pytest.approx(mean / record.mean_distance - 1)
    assert d.metadata() == {"refresh": "assign", "refresh_reason": d.reason, "new_shards": 1,
                            "new_rows": ROWS, "drift": d.drift}


def test_new_shard_of_unseen_concepts_drifts_and_retrains_in_auto(fitted):
    emb, _, centroids, record = fitted
    write_shard(emb, "shard-003", blob_rows(OLD_BLOBS, ROWS, seed=3))
    write_shard(emb, "shard-004", blob_rows(NEW_BLOBS, ROWS, seed=4))
    auto = _decide_now(emb, centroids, record, "auto")
    assert auto.action == "retrain" and auto.new_shards == ["shard-003", "shard-004"]
    assert auto.new_rows == 2 * ROWS
    # half of the new rows are ~orthogonal to every centroid (1 - cos ~ 1 against ~0.07 at fit time)
    assert auto.drift > 3 and "> threshold" in auto.reason
    forced = _decide_now(emb, centroids, record, "assign")
    assert forced.action == "assign" and forced.drift == pytest.approx(auto.drift)
    assert "asked" in forced.reason
    # a threshold above the drift keeps the centroids
    lax = _decide_now(emb, centroids, record, "auto", threshold=auto.drift + 1)
    assert lax.action == "assign"


def test_new_shards_without_valid_rows_are_assigned(fitted):
    emb, _, centroids, record = fitted
    write_shard(emb, "shard-003", np.zeros((5, DIM), dtype=np.float16))
    d = _decide_now(emb, centroids, record)
    assert (d.action, d.new_shards, d.new_rows, d.drift) == ("assign", ["shard-003"], 0, 0.0)


def test_zero_fit_distance_means_infinite_drift(fitted):
    _, _, _, record = fitted
    perfect = FitRecord(record.params, record.encoder, record.shards, 0.0)
    d = decide("auto", perfect, PARAMS, ENCODER, {**record.shards, "n": 3}, lambda new: (3, 0.01), 1e9)
    assert d.action == "retrain" and d.drift == math.inf


def test_invalid_mode_or_threshold(fitted):
    _, _, _, record = fitted
    for mode, threshold in (("sometimes", 0.25), ("auto", -0.1), ("auto", float("nan"))):
        with pytest.raises(ValueError):
            decide(mode, record, PARAMS, ENCODER, record.shards, _no_drift, threshold)


def test_drift_accumulates_over_assign_only_refreshes(fitted):
    """New shards are measured against fit.json's shards, so a second assign-only refresh still counts
    the first one's shards as new."""
    emb, _, centroids, record = fitted
    write_shard(emb, "shard-003", blob_rows(NEW_BLOBS, ROWS, seed=3))
    first = _decide_now(emb, centroids, record, "assign")
    write_shard(emb, "shard-004", blob_rows(OLD_BLOBS, ROWS, seed=4))
    second = _decide_now(emb, centroids, record, "auto")
    assert second.new_shards == ["shard-003", "shard-004"] and second.action == "retrain"
    assert 0 < second.drift < first.drift


# ----------------------------------------------------------------------------- assign with kept centroids


def test_kept_centroids_keep_the_cluster_ids_of_old_rows(fitted, tmp_path):
    emb, clusters, centroids, record = fitted
    before = np.load(resolve(clusters) / "cluster_id.npy")
    assert before.shape == (3 * ROWS,) and len(np.unique(before)) == K
    write_shard(emb, "shard-003", blob_rows(np.concatenate([OLD_BLOBS, NEW_BLOBS]), ROWS, seed=3))
    store = EmbeddingStore(emb)
    assert store.shards[-1] == "shard-003"
    kept = np.load(resolve(clusters) / "centroids.npy")
    summary = assign(store, kept, clusters, use_gpu=False, fit=FitRecord.read(clusters))  # record passed on
    after = np.load(resolve(clusters) / "cluster_id.npy")
    assert summary.n == 4 * ROWS and after.shape == (4 * ROWS,)
    np.testing.assert_array_equal(after[: 3 * ROWS], before)
    np.testing.assert_array_equal(np.load(resolve(clusters) / "centroids.npy"), kept)
    # the fit record still describes the centroids: the grown pool is measured against it
    assert FitRecord.read(clusters) == record


# ----------------------------------------------------------------------------- encoder_identity


def test_encoder_identity(tmp_path):
    emb = tmp_path / "emb"
    write_shard(emb, "a", blob_rows(OLD_BLOBS, 8, seed=0))
    write_shard(emb, "b", blob_rows(OLD_BLOBS, 8, seed=1))
    assert encoder_identity(EmbeddingStore(emb)) == ENCODER
    write_shard(emb, "c", blob_rows(OLD_BLOBS, 8, seed=2), encoder={**ENCODER, "weights": "sha256:other"})
    with pytest.raises(ValueError, match="different encoders"):
        encoder_identity(EmbeddingStore(emb))


def test_encoder_identity_without_meta_differs_from_one_with_meta(tmp_path):
    emb = tmp_path / "emb"
    write_shard(emb, "a", blob_rows(OLD_BLOBS, 8, seed=0), encoder=None)
    assert encoder_identity(EmbeddingStore(emb)) is None
    write_shard(emb, "b", blob_rows(OLD_BLOBS, 8, seed=1))
    with pytest.raises(ValueError, match="different encoders"):
        encoder_identity(EmbeddingStore(emb))
