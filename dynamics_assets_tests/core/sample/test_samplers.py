"""Cluster scaling and plan drawing: exact budgets, order, starvation, determinism, reductions."""
from __future__ import annotations

import numpy as np
import pytest

from dynamics_assets.core.sample import ClusterPool, DynamicsSampler, UniformSampler, cluster_targets, make_sampler, read_plan, write_plan
from dynamics_assets.core.sample import selection
from dynamics_assets.core.sample.allocation import allocate
from dynamics_assets.core.sample.strategies.dynamics import reference_probabilities


def zipf_pool(k=300, n_max=5000, s=1.2, seed=0, quarantined=0) -> ClusterPool:
    sizes = np.maximum(1, (n_max * np.arange(1, k + 1) ** -s)).astype(np.int64)
    ids = np.repeat(np.arange(k, dtype=np.int32), sizes)
    ids = np.concatenate([ids, np.full(quarantined, -1, np.int32)])
    np.random.default_rng(seed).shuffle(ids)
    return ClusterPool.from_array(ids, k)


def assert_order_kept(sizes, targets):
    """N_a > N_b ⇒ R_a ≥ R_b."""
    for size in np.unique(sizes):
        smaller, larger = targets[sizes < size], targets[sizes == size]
        if len(smaller):
            assert smaller.max() <= larger.min()


# ---------------------------------------------------------------- allocation (cluster scaling)
@pytest.mark.parametrize("alpha", [0.0, 0.2, 0.5, 0.8])
@pytest.mark.parametrize("mode", ["exact", "upsample"])
def test_targets_sum_to_budget_keep_order_and_bounds(alpha, mode):
    sizes = zipf_pool().sizes
    T = int(sizes.sum() * 0.3)
    R, x = cluster_targets(sizes, T, alpha, mode=mode, max_repeat=3)
    assert R.sum() == T
    assert np.all(R >= 1), "no cluster is starved when T ≥ K"
    assert np.all(R <= sizes * (3 if mode == "upsample" else 1))
    assert_order_kept(sizes, R)
    assert abs(x.sum() - T) < 1e-6 * T


def test_alpha_zero_is_flat_where_no_cap_binds():
    sizes = np.array([1000, 800, 500, 400, 300, 5, 2])
    R, _ = cluster_targets(sizes, 1000, 0.0)
    uncapped = R < sizes
    assert R[~uncapped].tolist() == [5, 2]  # capped at their size, surplus redistributed
    assert R[uncapped].max() - R[uncapped].min() <= 1
    assert R.sum() == 1000


def test_alpha_one_allocation_is_proportional():
    sizes = np.array([6000, 3000, 900, 100])
    R, _ = cluster_targets(sizes, 5000, 1.0)
    np.testing.assert_allclose(R, sizes * 0.5, atol=1)


def test_small_budget_below_cluster_count_still_exact():
    sizes = np.array([50, 40, 30, 20, 10])
    R, _ = cluster_targets(sizes, 3, 0.2)
    assert R.sum() == 3 and np.all(R >= 0)
    assert_order_kept(sizes, R)


def test_reference_rounding_starves_and_loses_budget_but_ours_does_not():
    sizes = zipf_pool(k=2000, n_max=20000, s=1.3).sizes
    T = int(sizes.sum() * 0.5)
    p = reference_probabilities(sizes, T, 0.2)
    realised_ref = np.minimum(p, 1) * sizes
    assert realised_ref.sum() < 0.9 * T  # capped clusters lose their surplus
    R, _ = cluster_targets(sizes, T, 0.2)
    assert R.sum() == T and R.min() >= 1


def test_allocate_rejects_infeasible_budget():
    with pytest.raises(ValueError, match="outside the feasible range"):
        allocate(np.ones(3), np.zeros(3), np.array([1, 1, 1]), 4)
    with pytest.raises(ValueError, match="exceeds"):
        cluster_targets(np.array([3, 2]), 6, 0.2)


# ---------------------------------------------------------------- drawing plans
@pytest.mark.parametrize("mode", ["exact", "upsample"])
def test_plan_realises_targets_exactly_per_cluster(mode):
    pool = zipf_pool(quarantined=17)
    plan = DynamicsSampler(0.4, alpha=0.2, mode=mode, max_repeat=3).draw(pool, epoch=3, seed=7)
    T = round(0.4 * pool.n_valid)
    R, _ = cluster_targets(pool.sizes, T, 0.2, mode=mode, max_repeat=3)
    assert plan.size == T
    np.testing.assert_array_equal(plan.cluster_realised, R)
    # independent recount from the written indices
    np.testing.assert_array_equal(selection.realised_per_cluster(pool, plan.indices, plan.multiplicity), R)
    idx = plan.indices.astype(np.int64)
    assert np.all(np.diff(idx) > 0), "sorted, unique"
    ids = np.concatenate([c for _, c in pool.chunks()])
    assert np.all(ids[idx] >= 0), "quarantined samples are never planned"
    assert plan.multiplicity.min() >= 1 and plan.multiplicity.max() <= 3


def test_upsampling_repeats_tail_members_evenly():
    pool = zipf_pool(k=50, n_max=4000, s=1.5)
    plan = DynamicsSampler(0.5, alpha=0.0, mode="upsample", max_repeat=4).draw(pool, epoch=1, seed=0)
    ids = np.concatenate([c for _, c in pool.chunks()])[plan.indices.astype(np.int64)]
    R = plan.cluster_realised
    for c in np.flatnonzero(R > pool.sizes):
        m = plan.multiplicity[ids == c]
        assert len(m) == pool.sizes[c], "every member of an up-sampled cluster is seen"
        assert m.max() - m.min() <= 1 and m.sum() == R[c]


def test_same_seed_gives_byte_identical_plan_files(tmp_path):
    pool = zipf_pool()
    sampler = DynamicsSampler(0.5, alpha=0.2)
    a = write_plan(tmp_path / "a", sampler.draw(pool, epoch=2, seed=11))
    b = write_plan(tmp_path / "b", sampler.draw(pool, epoch=2, seed=11))
    for name in ["indices.npy", "multiplicity.npy", "clusters.parquet", "plan.json"]:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    back = read_plan(a)
    assert back.size == round(0.5 * pool.n_valid) and back.meta["epoch"] == 2


def test_every_epoch_is_drawn_afresh_and_static_uniform_is_not():
    pool = zipf_pool()
    d = DynamicsSampler(0.5)
    e1, e2 = d.draw(pool, epoch=1, seed=0), d.draw(pool, epoch=2, seed=0)
    overlap = len(np.intersect1d(e1.indices, e2.indices)) / len(e1.indices)
    assert 0.2 < overlap < 0.95
    np.testing.assert_array_equal(e1.cluster_realised, e2.cluster_realised)
    s = UniformSampler(0.5, redraw=False)
    np.testing.assert_array_equal(s.draw(pool, epoch=1, seed=0).indices, s.draw(pool, epoch=5, seed=0).indices)
    assert d.draw(pool, epoch=1, seed=1).indices.tobytes() != e1.indices.tobytes()


def test_alpha_one_is_exactly_uniform_sampling():
    pool = zipf_pool()
    for mode, umode in [("exact", "exact"), ("upsample", "exact"), ("bernoulli", "bernoulli")]:
        d = DynamicsSampler(0.3, alpha=1.0, mode=mode).draw(pool, epoch=4, seed=5)
        u = UniformSampler(0.3, mode=umode).draw(pool, epoch=4, seed=5)
        assert d.indices.tobytes() == u.indices.tobytes()
        assert d.multiplicity.tobytes() == u.multiplicity.tobytes()


def test_uniform_exact_draw_has_exact_size_and_uniform_inclusion():
    pool = zipf_pool(k=20, n_max=400, s=1.0)
    n = pool.n_valid
    hits = np.zeros(n)
    for epoch in range(400):
        plan = UniformSampler(0.25).draw(pool, epoch=epoch, seed=3)
        assert plan.size == round(0.25 * n)
        hits[plan.indices.astype(np.int64)] += 1
    freq = hits / 400
    assert abs(freq.mean() - round(0.25 * n) / n) < 1e-9
    # binomial(400, 0.25): sd ≈ 0.0217; all samples within 6 sd of 0.25
    assert np.all(np.abs(freq - 0.25) < 6 * np.sqrt(0.25 * 0.75 / 400))


def test_bernoulli_mode_is_the_reference_mechanism():
    pool = zipf_pool(k=500, n_max=20000, s=1.3)
    plan = DynamicsSampler(0.5, alpha=0.2, mode="bernoulli").draw(pool, epoch=1, seed=0)
    assert plan.multiplicity.max() == 1
    assert plan.size < 0.9 * plan.meta["budget"], "the reference's epoch is smaller than T"
    np.testing.assert_array_equal(selection.realised_per_cluster(pool, plan.indices, plan.multiplicity),
                                  plan.cluster_realised)


def test_band_miss_falls_back_to_the_same_answer(monkeypatch):
    pool = zipf_pool()
    want = DynamicsSampler(0.5).draw(pool, epoch=1, seed=0)
    real = selection._bands

    def narrow(sizes, extra, full_band):  # a band of zero width misses almost every stratum
        lo, width = real(sizes, extra, full_band)
        return lo, np.where(full_band, width, 0).astype(np.uint64)

    monkeypatch.setattr(selection, "_bands", narrow)
    got = DynamicsSampler(0.5).draw(pool, epoch=1, seed=0)
    assert got.indices.tobytes() == want.indices.tobytes()


def test_pool_from_file_matches_memory_and_rejects_bad_ids(tmp_path):
    pool = zipf_pool(quarantined=3)
    ids = np.concatenate([c for _, c in pool.chunks()])
    np.save(tmp_path / "c.npy", ids)
    from_file = ClusterPool.from_npy(tmp_path / "c.npy", pool.n_clusters)
    np.testing.assert_array_equal(from_file.sizes, pool.sizes)
    a = DynamicsSampler(0.5).draw(pool, epoch=1, seed=0)
    b = DynamicsSampler(0.5).draw(from_file, epoch=1, seed=0)
    assert a.indices.tobytes() == b.indices.tobytes()
    with pytest.raises(ValueError, match="cluster ids must lie"):
        ClusterPool.from_array(np.array([0, 5], np.int32), 3)
    np.save(tmp_path / "f.npy", ids.astype(np.float32))
    with pytest.raises(ValueError, match="int32"):
        ClusterPool.from_npy(tmp_path / "f.npy", pool.n_clusters)


def test_sampler_factory_and_budget_validation():
    assert isinstance(make_sampler("dynamics", budget=0.5, alpha=0.3), DynamicsSampler)
    with pytest.raises(ValueError, match="unknown strategy"):
        make_sampler("nope")
    with pytest.raises(ValueError, match="alpha"):
        DynamicsSampler(alpha=1.5)
    with pytest.raises(ValueError, match="fractional budget"):
        DynamicsSampler(1.5).draw(zipf_pool(), epoch=1, seed=0)
    plan = DynamicsSampler(1000).draw(zipf_pool(), epoch=1, seed=0)
    assert plan.size == 1000
