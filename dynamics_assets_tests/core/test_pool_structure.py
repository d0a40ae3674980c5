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
