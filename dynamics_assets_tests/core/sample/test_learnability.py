"""Cluster-level learnability feedback: the weights, the plan's reaction to a per-cluster loss, its
guarantees, determinism, and the per-cluster loss recorded by a real training epoch."""
from __future__ import annotations

import math

import numpy as np
import pytest

from dynamics_assets.core.sample import ClusterFeedback, ClusterPool, DynamicsSampler, LearnabilitySampler, sampler_from_spec
from dynamics_assets.core.sample.strategies.learnability import feedback_factors, learnability_weights
from dynamics_assets.core.sample.spec import normalise_sampler_spec

SIZES = np.array([100, 50, 20, 5])
# seen clusters 0..2 with mean losses 1, 2, 3 (40 draws each); cluster 3 unseen
FEEDBACK = ClusterFeedback(np.array([40.0, 80.0, 120.0, 0.0]), np.array([40.0, 40.0, 40.0, 0.0]))


def test_weights_by_hand():
    # z over seen = (ℓ − 2) / sqrt(2/3) = ∓sqrt(1.5), 0; shrink 40/(40+8); g = exp(0.5·z̃); unseen g = 1
    shrink = 40 / 48
    g = [math.exp(-0.5 * math.sqrt(1.5) * shrink), 1.0, math.exp(0.5 * math.sqrt(1.5) * shrink), 1.0]
    assert feedback_factors(FEEDBACK, 4, beta=0.5, z_max=2.0, kappa=8.0) == pytest.approx(g, rel=1e-12)
    w = learnability_weights(SIZES, FEEDBACK, alpha=0.5, beta=0.5, z_max=2.0, kappa=8.0)
    assert w == pytest.approx([10 * g[0], math.sqrt(50), math.sqrt(20) * g[2], math.sqrt(5)], rel=1e-12)
    # clip: z_max bounds the factor whatever the loss gap
    wild = ClusterFeedback(np.array([1.0, 1.0, 1e6, 0.0]) * 1000, np.array([1000.0, 1000.0, 1000.0, 0.0]))
    f = feedback_factors(wild, 4, beta=0.5, z_max=2.0, kappa=0.0)
    assert f.max() <= math.exp(1.0) + 1e-12 and f.min() >= math.exp(-1.0) - 1e-12


def test_targets_by_hand():
    # budget 80, caps N_c: cluster 3 (w·λ = 7.86 > 5) and cluster 2 (26.2 > 20) are capped; the
    # remaining 55 split 6.003 : 7.071 → 25.25, 29.75 → largest remainder gives cluster 1 the spare draw
    r, x = LearnabilitySampler(80, alpha=0.5).targets(SIZES, 80, FEEDBACK)
    assert r.tolist() == [25, 30, 20, 5]
    assert x == pytest.approx([55 * 6.003092360734511 / 13.074160172600387, 55 * 7.0710678118654755 / 13.074160172600387,
                               20, 5], rel=1e-9)
    # without feedback: DynamiCS's targets; the feedback broke the order of sizes (cluster 1 > cluster 0)
    r0, _ = LearnabilitySampler(80, alpha=0.5).targets(SIZES, 80, None)
    assert r0.tolist() == [35, 25, 15, 5]


def _pool(k=40, n=6000, seed=0):
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, k + 1) ** 1.1
    return ClusterPool.from_array(rng.choice(k, size=n, p=p / p.sum()).astype(np.int32), k)


def test_epoch_two_reacts_to_the_loss_and_keeps_its_guarantees():
    pool = _pool()
    k = pool.n_clusters
    s = LearnabilitySampler(0.3, alpha=0.2)
    e1 = s.draw(pool, epoch=1, seed=3)
    ref = DynamicsSampler(0.3, alpha=0.2).draw(pool, epoch=1, seed=3)
    assert e1.cluster_realised.tolist() == ref.cluster_realised.tolist(), "no feedback: DynamiCS's targets"
    # synthetic feedback: the odd clusters have twice the loss of the even ones
    count = e1.cluster_realised.astype(float)
    loss = np.where(np.arange(k) % 2 == 1, 6.0, 3.0)
    fb = ClusterFeedback(loss * count, count)
    e2 = s.draw(pool, epoch=2, seed=3, feedback=fb)
    plain = s.draw(pool, epoch=2, seed=3)
    odd = np.arange(k) % 2 == 1
    capped = e2.cluster_realised >= pool.sizes  # those cannot grow
    assert (e2.cluster_realised[odd & ~capped] > plain.cluster_realised[odd & ~capped]).all()
    assert e2.cluster_realised[~odd].sum() < plain.cluster_realised[~odd].sum()
    for plan in (e1, e2):
        assert plan.size == plan.meta["budget"] == round(0.3 * pool.n_valid), "exact budget"
        assert ((plan.cluster_realised >= 1) | (pool.sizes == 0)).all(), "no starved cluster"
        assert (plan.cluster_realised <= pool.sizes).all() and plan.multiplicity.max() == 1
    assert e2.meta["feedback"]["clusters_seen"] == int((count > 0).sum())
    again = s.draw(pool, epoch=2, seed=3, feedback=fb)
    assert np.array_equal(again.indices, e2.indices) and np.array_equal(again.multiplicity, e2.multiplicity)
    other = s.draw(pool, epoch=2, seed=4, feedback=fb)
    assert not np.array_equal(other.indices, e2.indices)


def test_upsample_mode_and_bad_feedback():
    pool = _pool()
    s = LearnabilitySampler(9000, alpha=0.0, mode="upsample", max_repeat=4)
    plan = s.draw(pool, epoch=2, seed=0, feedback=ClusterFeedback(np.ones(pool.n_clusters), np.ones(pool.n_clusters)))
    assert plan.size == 9000 and plan.multiplicity.max() <= 4
    with pytest.raises(ValueError, match="another clustering"):
        s.draw(pool, epoch=2, seed=0, feedback=ClusterFeedback(np.ones(3), np.ones(3)))
    with pytest.raises(ValueError):
        ClusterFeedback(np.array([np.nan]), np.array([1.0]))


def test_spec_and_registry():
    spec = normalise_sampler_spec({"strategy": "learnability", "budget": "50%", "beta": 1.0}, "recipe")
    s = sampler_from_spec(spec)
    assert isinstance(s, LearnabilitySampler) and s.budget == 0.5 and s.beta == 1.0
    with pytest.raises(ValueError):
        normalise_sampler_spec({"strategy": "learnability", "gamma": 1}, "recipe")


def test_feedback_file_roundtrip(tmp_path):
    FEEDBACK.save(tmp_path / "cluster_loss.npy")
    back = ClusterFeedback.read(tmp_path / "cluster_loss.npy")
    assert np.array_equal(back.loss_sum, FEEDBACK.loss_sum) and np.array_equal(back.count, FEEDBACK.count)
    np.save(tmp_path / "bad.npy", np.ones(3))
    with pytest.raises(ValueError, match=r"\(2, K\)"):
        ClusterFeedback.read(tmp_path / "bad.npy")


def test_training_records_the_per_cluster_loss_and_the_next_plan_reads_it(tmp_path):
    """A real open_clip epoch on a tiny pool writes cluster_loss.npy next to its checkpoint: one draw
    per trained sample, counted in the sample's cluster; epoch 2's plan is drawn from it."""
    from dynamics_assets.core.ingest.manifest import build_manifest
    from dynamics_assets.core.ingest.synthetic import generate
    from dynamics_assets.core.sample import write_plan
    from dynamics_assets.core.train.epoch import EpochJob, run_epoch

    ds = generate(tmp_path / "raw", pairs=360, samples_per_shard=120, eval_per_concept=1, seed=5)
    n = build_manifest(ds.shards, tmp_path / "manifest").ok
    ids = np.random.default_rng(0).integers(0, 5, n).astype(np.int32)
    np.save(tmp_path / "cluster_id.npy", ids)
    pool = ClusterPool.from_array(ids, 5)
    sampler = LearnabilitySampler(0.5, alpha=0.2)
    plan1 = sampler.draw(pool, epoch=1, seed=0)
    job = EpochJob(plan_dir=str(write_plan(tmp_path / "plan-1", plan1, pool_version="test-pool")), manifest_dir=str(tmp_path / "manifest"),
                   shards_dir=str(ds.out_dir / "shards"), out_checkpoint=str(tmp_path / "ck"), epoch=1, n_epochs=2,
                   batch_size=16, buffer_size=32, checkpoint_every_steps=0, device="cpu",
                   cluster_ids=str(tmp_path / "cluster_id.npy"), n_clusters=5, pool_version="test-pool")
    metrics = run_epoch(job)
    fb = ClusterFeedback.read(metrics["cluster_loss"])
    assert fb.count.tolist() == plan1.cluster_realised.tolist(), "every trained sample counted in its cluster"
    assert fb.count.sum() == metrics["epoch_samples"]
    mean = fb.mean_loss
    assert np.all(np.isfinite(mean)) and np.all(mean > 0) and np.all(mean < 2 * math.log(16) + 1)
    plan2 = sampler.draw(pool, epoch=2, seed=0, feedback=fb)
    assert plan2.size == plan1.size and plan2.meta["feedback"]["source"] == metrics["cluster_loss"]
    assert plan2.meta["feedback"]["factor_max"] > 1.0 > plan2.meta["feedback"]["factor_min"]
