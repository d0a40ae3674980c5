"""Tests of the pool-structure figures (hand-computed values on tiny pools)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from dynamics_assets.core.evaluate.pool_structure import (Contingency, gini, plan_tail_share, pool_structure,
                                                           structure_of, tail_concepts, top_share)

# 6 samples, 3 clusters of sizes 3 / 2 / 1; 5 concepts, the tail (20% of 5 = 1) is concept 2.
CLUSTERS = np.array([0, 0, 0, 1, 1, 2])
CONCEPTS = np.array([0, 0, 1, 1, 1, 2])
FREQUENCIES = np.array([10, 5, 1, 8, 7])


def test_gini_and_shares_by_hand():
    assert gini(np.array([1, 2, 3])) == pytest.approx(4 / 18)  # Σ|xi−xj| = 8 over 2·3²·2
    assert gini(np.array([5, 5, 5, 5])) == 0.0
    assert gini(np.array([0, 0, 0, 12])) == pytest.approx(0.75)  # (n−1)/n for one holder
    assert top_share(np.arange(1, 11), 0.1) == pytest.approx(10 / 55)
    assert top_share(np.arange(1, 11), 0.2, largest=False) == pytest.approx(3 / 55)
    assert top_share(np.array([7, 1, 2]), 0.1) == pytest.approx(0.7)  # ceil(0.3) = 1 cluster


def test_tail_is_the_least_frequent_fifth():
    assert tail_concepts(FREQUENCIES).tolist() == [False, False, True, False, False]
    mask = tail_concepts(np.array([9, 1, 1, 5, 3, 7, 2, 8, 6, 4]))  # 2 of 10; ties by id
    assert np.flatnonzero(mask).tolist() == [1, 2]


def test_pool_structure_by_hand():
    s = pool_structure(CLUSTERS, CONCEPTS, FREQUENCIES)
    assert (s.k, s.n, s.n_tail_concepts) == (3, 6, 1)
    assert s.top10_share == pytest.approx(3 / 6)
    assert s.bottom20_share == pytest.approx(1 / 6)
    assert s.gini == pytest.approx(4 / 18)
    assert s.purity == pytest.approx(5 / 6)
    h = -(0.5 * math.log(0.5) + math.log(1 / 3) / 3 + math.log(1 / 6) / 6)  # both marginals (3,2,1)/6
    mutual = math.log(2) / 3 + math.log(2 / 3) / 6 + math.log(2) / 3 + math.log(6) / 6
    assert s.nmi == pytest.approx(mutual / h)
    assert s.tail_pool_share == pytest.approx(1 / 6)
    assert s.tail_majority_clusters == 1  # cluster 2 is all concept 2
    assert s.tail_plan_share is None


def test_plan_share_with_multiplicity_and_unclustered_rows():
    s = pool_structure(np.append(CLUSTERS, -1), np.append(CONCEPTS, 2), FREQUENCIES,
                       plan_indices=np.array([5, 0]), multiplicity=np.array([3, 1]))
    assert s.n == 6 and s.purity == pytest.approx(5 / 6)  # the quarantined row is out of the clusters
    assert s.tail_pool_share == pytest.approx(2 / 7)  # ... but in the pool
    assert s.tail_plan_share == pytest.approx(3 / 4)
    assert plan_tail_share(np.array([2, 2, 0]), tail_concepts(FREQUENCIES)) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="multiplicity"):
        plan_tail_share(np.array([2, 0]), tail_concepts(FREQUENCIES), np.array([1]))


def test_perfect_and_empty_clusters():
    s = pool_structure(np.array([0, 0, 1, 1, 2]), np.array([3, 3, 1, 1, 2]), FREQUENCIES, k=5)
    assert s.purity == 1.0 and s.nmi == pytest.approx(1.0)
    assert s.k == 5 and s.top10_share == pytest.approx(2 / 5)  # ceil(0.5) = 1 of 5 clusters, two empty
    assert s.gini == pytest.approx(gini(np.array([2, 2, 1, 0, 0])))
    assert s.tail_majority_clusters == 1  # empty clusters never count


def test_streaming_equals_one_shot_and_matches_sklearn():
    rng = np.random.default_rng(0)
    clusters, concepts = rng.integers(0, 17, 5000), rng.integers(0, 9, 5000)
    concepts[clusters < 4] = 0  # some structure
    freq = np.bincount(concepts, minlength=9)
    table = Contingency(17, 9)
    for start in range(0, 5000, 700):
        table.update(clusters[start:start + 700], concepts[start:start + 700])
    chunked, whole = structure_of(table, freq), pool_structure(clusters, concepts, freq)
    assert chunked == whole
    sklearn = pytest.importorskip("sklearn.metrics")
    assert whole.nmi == pytest.approx(sklearn.normalized_mutual_info_score(concepts, clusters))


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="concept ids"):
        pool_structure(np.array([0, 1]), np.array([0, 9]), FREQUENCIES)
    with pytest.raises(ValueError, match="cluster ids but"):
        Contingency(2, 5).update(np.array([0]), np.array([0, 1]))
    with pytest.raises(ValueError, match="k = 2"):
        Contingency(2, 5).update(np.array([2]), np.array([0]))
    with pytest.raises(ValueError, match="no clustered"):
        pool_structure(np.array([-1, -1]), np.array([0, 1]), FREQUENCIES, k=2)


# --- from the artefacts: ground truth → manifest → assignment, and the plans --------------------

def _artefacts(tmp_path):
    """8 ground-truth pairs in 2 shards (concepts 0 0 0 1 1 3 2 4); the manifest keeps 7 (key 007 of
    shard b quarantined) under sample ids that are not the generator's uid (a pair without a json uid
    gets a content hash), and the assignment holds 6 of them (one held out)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    shard = ["a.tar"] * 4 + ["b.tar"] * 4
    key = [f"{i:03d}" for i in range(8)]
    gt = pa.table({"shard": shard, "key": key, "uid": [f"u{i}" for i in range(8)],
                   "concept_id": [0, 0, 0, 1, 1, 3, 2, 4]})
    pq.write_table(gt, tmp_path / "ground_truth.parquet")
    (tmp_path / "eval").mkdir()
    pq.write_table(pa.table({"concept_id": [0, 1, 2, 3, 4], "train_frequency": [10, 5, 1, 8, 7]}),
                   tmp_path / "eval" / "concepts.parquet")
    (tmp_path / "manifest").mkdir()
    for name, rows in (("a", range(4)), ("b", range(4, 8))):
        pq.write_table(pa.table({"sample_id": [f"s{i}" for i in rows], "shard": [shard[i] for i in rows],
                                 "key": [key[i] for i in rows],
                                 "status": ["quarantined" if i == 7 else "ok" for i in rows]}),
                       tmp_path / "manifest" / f"{name}.parquet")
    # sample index → (sample id, cluster): s4 held out; cluster 2 holds the tail concept 2
    pq.write_table(pa.table({"sample_index": [0, 1, 2, 3, 4, 5], "sample_id": ["s0", "s1", "s2", "s3", "s5", "s6"],
                             "cluster_id": [0, 0, 0, 1, 1, 2]}), tmp_path / "assignments.parquet")
    return tmp_path


def test_measure_pool_joins_ground_truth_through_the_manifest(tmp_path):
    from dynamics_assets.core.evaluate.pool_structure import measure_pool

    d = _artefacts(tmp_path)
    pool = measure_pool(d / "ground_truth.parquet", d / "eval" / "concepts.parquet", d / "manifest",
                        d / "assignments.parquet", k=3, batch_rows=3)
    assert pool.concept_of_index.tolist() == [0, 0, 0, 1, 3, 2]
    s = pool.structure
    assert s.n == 6 and s.k == 3
    assert s.purity == pytest.approx((3 + 1 + 1) / 6)  # clusters {0,0,0}, {1,3}, {2}
    assert s.tail_pool_share == pytest.approx(1 / 8)  # concept 2, counted over all 8 ground-truth pairs
    assert s.tail_majority_clusters == 1


def test_plan_tail_rows_prefer_feedback_plans_and_skip_other_pool_versions(tmp_path):
    from dynamics_assets.core.evaluate.pool_structure import measure_pool, plan_tail_rows, structure_markdown
    from dynamics_assets.core.sample.base import Plan
    from dynamics_assets.core.sample.plan_io import write_plan

    d = _artefacts(tmp_path)
    pool = measure_pool(d / "ground_truth.parquet", d / "eval" / "concepts.parquet", d / "manifest",
                        d / "assignments.parquet", k=3)

    def plan(indices, mult, version="v1"):
        indices, mult = np.asarray(indices, np.uint32), np.asarray(mult, np.uint16)
        return Plan(indices, mult, np.array([3, 2, 1]), np.zeros(3), np.zeros(3, np.int64), {"pool_version": version})

    write_plan(d / "sp" / "up.s0" / "epoch-001", plan([0, 5], [1, 3]))  # tail index 5 drawn 3 of 4 times
    write_plan(d / "sp" / "up.s0" / "epoch-002", plan([0, 1, 2, 5], [1, 1, 1, 1]))
    write_plan(d / "fb" / "up.s0" / "epoch-002", plan([5], [2]))  # what training read: all tail
    write_plan(d / "sp" / "up.s1" / "epoch-001", plan([0, 1], [1, 1], version="v0"))  # before a re-curation
    rows, other = plan_tail_rows(d / "sp", pool, d / "fb", pool_version="v1")
    assert [(r["epoch"], r["plan"], r["tail_share"]) for r in rows] == [(1, "sample_plan", 0.75), (2, "feedback_plan", 1.0)]
    assert len(other) == 1 and other[0].endswith("up.s1/epoch-001")
    md, table = structure_markdown(pool, rows, online={"up"}, other_pool=len(other))
    assert table[0]["tail_share"] == pytest.approx(0.875) and table[0]["ratio_to_pool"] == pytest.approx(7.0)
    assert "up †" in md and "1 plan(s) drawn from an earlier version" in md
    write_plan(d / "sp" / "bad.s0" / "epoch-001", plan([7], [1]))  # index beyond the assignment
    with pytest.raises(ValueError, match="beyond the pool"):
        plan_tail_rows(d / "sp", pool, pool_version="v1")


def test_measure_pool_refuses_another_pools_assignment(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dynamics_assets.core.evaluate.pool_structure import measure_pool

    d = _artefacts(tmp_path)
    pq.write_table(pa.table({"sample_index": [0], "sample_id": ["elsewhere"], "cluster_id": [0]}), d / "other.parquet")
    with pytest.raises(ValueError, match="not the same pool"):
        measure_pool(d / "ground_truth.parquet", d / "eval" / "concepts.parquet", d / "manifest", d / "other.parquet", k=3)
