"""Defaults that fit the pool: k, the batch size and the reference model's epochs follow the pool
size by documented rules, and settings that do not fit raise warnings."""
from __future__ import annotations

import math

import pytest

from dynamics_assets.core.cluster.curate import k_for, k_warning
from dynamics_assets.core.train.settings import batch_for, near_chance, reference_epochs_for


@pytest.mark.parametrize("n, k, batch, epochs", [
    (782, 20, 16, 3),        # the user pool of the issue: 6 steps at chance before; now 3 epochs × 48 steps
    (18_900, 100, 256, 2),   # the default pool keeps its settings
    (1_000_000, 730, 256, 2),
    (100_000_000, 7_300, 256, 2),
    (40, 1, 16, 70),         # tiny: one cluster; 2 steps per epoch, so 70 epochs for 140 steps
])
def test_rules(n, k, batch, epochs):
    assert k_for(n) == k and k <= max(1, n // 39)
    assert batch_for(n) == batch
    assert reference_epochs_for(n, batch) == epochs
    assert (n // batch) * epochs >= 140 or n < batch


def test_k_above_n_over_39_warns_with_the_rule():
    warning = k_warning(100, 782)
    assert warning is not None and "k = 100 is above N/39 = 20" in warning and "would give k = 20" in warning
    assert k_warning(20, 782) is None


def test_a_reference_model_at_chance_loss_is_flagged():
    assert near_chance(5.48, 256), "ln 256 = 5.545: the issue's model learnt nothing"
    assert not near_chance(3.9, 256)
    assert near_chance(0.9 * math.log(16) + 1e-6, 16)


def test_k_by_the_rule_keeps_its_centroids_when_the_pool_grows(tmp_path):
    """k left to the rule is recorded as the rule: a grown pool (for which the rule gives another
    k) is assigned to the kept centroids unless it drifts, like an explicit k."""
    import numpy as np

    from dynamics_assets.core.cluster.curate import ClusterParams, cluster_pool

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 8))

    def shard(name: str, n: int) -> None:
        d = tmp_path / "emb" / name
        d.mkdir(parents=True)
        x = centres[rng.integers(0, 4, n)] + 0.05 * rng.normal(size=(n, 8))
        x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)
        for kind in ("image", "text"):
            np.save(d / f"{kind}.npy", x)
        np.save(d / "sample_id.npy", np.array([f"{name}{i:028x}"[:32] for i in range(n)]))

    shard("a", 800)
    first = cluster_pool(tmp_path / "emb", tmp_path / "emb", tmp_path / "clusters", ClusterParams(sample_size=800))
    assert first.k == k_for(800) and first.decision.action == "retrain"
    shard("b", 800)
    assert k_for(1600) != k_for(800)
    second = cluster_pool(tmp_path / "emb", tmp_path / "emb", tmp_path / "clusters", ClusterParams(sample_size=800))
    assert second.decision.action == "assign", second.decision.reason
    assert second.k == first.k and second.warnings == ()
