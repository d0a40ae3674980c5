"""Cluster-level learnability feedback — DynamiCS's size scaling, reweighted by what the previous
epoch's training showed about each cluster (ours; no paper implements it).

Formula. With N_c the size of cluster c, α DynamiCS's exponent, and from epoch e−1's training the
summed per-example contrastive loss S_c over the n_c draws of cluster c (``ClusterFeedback``):
    ℓ_c = S_c / n_c                                   (mean training loss of the cluster, n_c ≥ 1)
    z_c = (ℓ_c − mean_seen ℓ) / std_seen ℓ            (z-score over the clusters seen in e−1)
    z̃_c = z_c · n_c / (n_c + κ)                       (shrunk towards 0 when the cluster was seen rarely)
    g_c = exp(β · clip(z̃_c, −z_max, z_max))           (unseen clusters: z̃_c = 0, g_c = 1)
    w_c = N_c^α · g_c
and epoch e's plan is DynamiCS's exact allocation of the budget T in proportion to w_c: water-filling
within 1 ≤ R_c ≤ N_c (``upsample``: ≤ max_repeat·N_c), integerised by largest remainder, so the epoch
is exactly T and every non-empty cluster is drawn (when T ≥ #clusters). Epoch 1, or any epoch
without feedback, is plain DynamiCS (g ≡ 1) — the same targets as ``DynamicsSampler``.
Defaults: α = 0.2, β = 0.5, z_max = 2 (g ∈ [e^−1, e^1]: a cluster's share moves by at most ×2.7
either way), κ = 8.

Reasoning. ActiveCLIP / ClassAct (Evans et al. 2023) and JEST (Evans et al. 2024) spend compute on
examples the learner has not yet learnt, scoring every candidate with extra forward passes. At
cluster granularity the learner's loss is already computed during training: summing the per-example
CLIP loss of epoch e−1 by cluster costs no forward pass (``scoring_flops`` = 0; only a B×B softmax
per batch that the loss computes anyway). A cluster whose loss stays high relative to the others is
one the model has not learnt yet, so it gets more of the next epoch; a cluster already fitted gets
less. The z-score makes β independent of the loss scale (the loss falls from epoch to epoch); the
shrinkage keeps rarely seen clusters near neutral (their mean is noisy); the clip bounds the
reweighting, so DynamiCS's size prior keeps most of the structure and no cluster is starved or
takes the budget. Unlike ActiveCLIP's learnability (learner − reference loss) this signal cannot
tell hard-but-learnable clusters from noise (mismatched captions keep a high loss for ever): the
clip bounds what such clusters can take. Losses are measured while the model changes (a cluster
seen early in e−1 was scored by an older model); per-cluster means average that out over the epoch.

Properties. Deterministic for (pool, feedback, parameters, seed, epoch). Exact budget, every
non-empty cluster drawn, at most one copy per sample (``exact``) or ``max_repeat`` (``upsample``).
The order of the cluster sizes is NOT kept (unlike DynamiCS): a small cluster with a high loss can
get more draws than a larger, well-learnt one.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dynamics_assets.core.sample import selection
from dynamics_assets.core.sample.allocation import allocate
from dynamics_assets.core.sample.base import ClusterPool, DataclassParams, Plan, guarantees, resolve_budget
from dynamics_assets.core.sample.strategies.dynamics import scaling_weights

STREAM = 9
MODES = ("exact", "upsample")
FEEDBACK_FILE = "cluster_loss.npy"  # next to checkpoint.pt: float64 (2, K) rows = (loss sum, count)


@dataclass(frozen=True)
class ClusterFeedback:
    """What epoch e−1's training recorded per cluster: summed per-example loss and draws."""

    loss_sum: np.ndarray  # float64 (K,)
    count: np.ndarray  # float64 (K,) draws trained (repeats counted)
    source: str | None = None  # where it was read from (recorded in the plan)

    def __post_init__(self) -> None:
        s, n = np.asarray(self.loss_sum, np.float64), np.asarray(self.count, np.float64)
        if s.shape != n.shape or s.ndim != 1:
            raise ValueError(f"feedback: loss_sum {s.shape} and count {n.shape} must be equal 1-d arrays")
        if np.any(n < 0) or not np.all(np.isfinite(s)) or not np.all(np.isfinite(n)):
            raise ValueError("feedback: counts must be ≥ 0 and sums finite")
        object.__setattr__(self, "loss_sum", s)
        object.__setattr__(self, "count", n)

    @property
    def mean_loss(self) -> np.ndarray:
        """ℓ_c (NaN where the cluster was not trained on)."""
        return np.divide(self.loss_sum, self.count, out=np.full_like(self.loss_sum, np.nan), where=self.count > 0)

    @classmethod
    def read(cls, path: str | Path) -> "ClusterFeedback":
        a = np.load(path, allow_pickle=False)
        if a.ndim != 2 or a.shape[0] != 2:
            raise ValueError(f"{path}: expected a (2, K) array of (loss sum, count), got {a.shape}")
        return cls(a[0], a[1], str(path))

    def save(self, path: str | Path) -> None:
        np.save(path, np.stack([self.loss_sum, self.count]))


def feedback_factors(feedback: ClusterFeedback | None, n_clusters: int, *, beta: float, z_max: float,
                     kappa: float) -> np.ndarray:
    """g_c of the module formula (1 for every cluster without feedback)."""
    if feedback is None:
        return np.ones(n_clusters)
    if len(feedback.count) != n_clusters:
        raise ValueError(f"feedback has {len(feedback.count)} clusters, the pool {n_clusters}: "
                         "it was recorded on another clustering")
    seen = feedback.count > 0
    z = np.zeros(n_clusters)
    if seen.sum() >= 2:
        mean = feedback.mean_loss[seen]
        sd = mean.std()
        if sd > 0:
            z[seen] = (mean - mean.mean()) / sd
    z *= np.divide(feedback.count, feedback.count + kappa, out=np.zeros(n_clusters), where=seen)
    return np.exp(beta * np.clip(z, -z_max, z_max))


def learnability_weights(sizes: np.ndarray, feedback: ClusterFeedback | None, *, alpha: float, beta: float,
                         z_max: float, kappa: float) -> np.ndarray:
    """w_c = N_c^α · g_c (0 for empty clusters)."""
    sizes = np.asarray(sizes)
    return scaling_weights(sizes, alpha) * feedback_factors(feedback, len(sizes), beta=beta, z_max=z_max, kappa=kappa)


@dataclass(frozen=True)
class LearnabilitySampler(DataclassParams):
    budget: float | int = 0.5
    alpha: float = 0.2
    beta: float = 0.5
    z_max: float = 2.0
    kappa: float = 8.0
    mode: str = "exact"
    max_repeat: int = 4
    name: str = "learnability"
    dynamic: bool = True
    needs_feedback = True  # class attribute: the training step draws its plans with the previous epoch's feedback

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"learnability mode must be one of {MODES}, got {self.mode!r}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {self.alpha}")
        if not self.beta >= 0 or not self.z_max > 0 or not self.kappa >= 0:
            raise ValueError(f"need beta ≥ 0, z_max > 0, kappa ≥ 0 (got {self.beta}, {self.z_max}, {self.kappa})")
        if self.max_repeat < 1:
            raise ValueError("max_repeat must be ≥ 1")

    def targets(self, sizes: np.ndarray, budget: int, feedback: ClusterFeedback | None) -> tuple[np.ndarray, np.ndarray]:
        """(R_c, x_c) of the module formula."""
        sizes = np.asarray(sizes, dtype=np.int64)
        w = learnability_weights(sizes, feedback, alpha=self.alpha, beta=self.beta, z_max=self.z_max, kappa=self.kappa)
        nonempty = sizes > 0
        cap = sizes * (self.max_repeat if self.mode == "upsample" else 1)
        if budget > cap.sum():
            raise ValueError(f"budget {budget} exceeds what the pool can give ({cap.sum()}) in mode {self.mode!r}")
        lower = np.where(nonempty, 1, 0) if budget >= nonempty.sum() else np.zeros_like(sizes)
        return allocate(w, lower, cap, budget)

    def draw(self, pool: ClusterPool, *, epoch: int, seed: int, feedback: ClusterFeedback | None = None) -> Plan:
        sizes = pool.sizes
        T = resolve_budget(self.budget, pool.n_valid,
                           most=pool.n_valid * (self.max_repeat if self.mode == "upsample" else 1))
        targets, expected = self.targets(sizes, T, feedback)
        idx, mult, realised = selection.exact(pool, targets, seed=seed, epoch=epoch, stream=STREAM)
        g = feedback_factors(feedback, len(sizes), beta=self.beta, z_max=self.z_max, kappa=self.kappa)
        info = {"source": None if feedback is None else feedback.source,
                "clusters_seen": 0 if feedback is None else int((feedback.count > 0).sum()),
                "factor_min": float(g.min(initial=1.0)), "factor_max": float(g.max(initial=1.0)),
                "scoring_flops": 0}
        return Plan(
            indices=idx, multiplicity=mult, cluster_size=sizes, cluster_expected=np.asarray(expected, np.float64),
            cluster_realised=realised,
            meta={"strategy": self.name, "params": self.params(), "seed": seed, "epoch": epoch,
                  "pool_size": pool.n_valid, "budget": T, "feedback": info,
                  "guarantees": guarantees(exact_budget=True,
                                           max_multiplicity=self.max_repeat if self.mode == "upsample" else 1,
                                           every_cluster_drawn=T >= int((sizes > 0).sum()))},
        )
