"""DBP — density-based pruning by the complexity of concept clusters.

Formula, for cluster c with unit centroid μ_c and members at cosine distance d_i = 1 − cos(x_i, μ_c):
  d_intra_c = mean_{i∈c} d_i,
  d_inter_c = mean over the l nearest other centroids k of 1 − cos(μ_c, μ_k)   (l = 20),
  C_c = d_intra_c · d_inter_c,   P_c = softmax(C_c / τ) over the non-empty clusters   (τ = 0.5),
  quotas N*_c = clip(λ·P_c, lb_c, N_c) with λ such that Σ_c N*_c = N_target exactly (water-filling,
  ``allocate``; integer by largest remainder), lb_c = 1 for non-empty clusters when the budget
  allows (N_target ≥ #non-empty), else 0;
  inside each cluster keep the N*_c samples farthest from μ_c (ties: lower index).
The published code solves the quota problem with a QP that does not run as published; the
water-filling projection is its exact solution. d_intra is computed over the pool given (after a
preceding SemDeDup, over its survivors), d_inter over all K centroids. Static.
Source: Abbas, Rusak, Tirumala, Brendel, Chaudhuri, Morcos, "Effective pruning of web-scale datasets
based on complexity of concept clusters", ICLR 2024 (arXiv 2401.04578).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dynamics_assets.core.cluster.stats import d_inter
from dynamics_assets.core.sample.allocation import allocate
from dynamics_assets.core.sample.base import ClusterPool, Plan, DataclassParams, resolve_budget
from dynamics_assets.core.sample.pruning import distance_scores, keep_top, plan_from_mask, require


def mean_distance(pool: ClusterPool) -> np.ndarray:
    """d_intra_c (0 for empty clusters), one streaming pass."""
    total = np.zeros(pool.n_clusters + 1, dtype=np.float64)
    for (_, ids), (_, dist) in zip(pool.chunks(), pool.distance_chunks()):
        valid = ids >= 0
        total += np.bincount(ids[valid], weights=dist[valid], minlength=pool.n_clusters + 1)
    sizes = pool.sizes
    return np.divide(total[:-1], sizes, out=np.zeros(pool.n_clusters), where=sizes > 0)


def softmax(z: np.ndarray, where: np.ndarray) -> np.ndarray:
    """softmax over the entries selected by ``where``; 0 elsewhere."""
    out = np.zeros(len(z), dtype=np.float64)
    if where.any():
        e = np.exp(z[where] - z[where].max())
        out[where] = e / e.sum()
    return out


def dbp_quotas(sizes: np.ndarray, complexity: np.ndarray, budget: int, tau: float) -> tuple[np.ndarray, np.ndarray]:
    """(N*_c integer quotas summing to ``budget``, x_c continuous) within [lb_c, N_c]."""
    sizes = np.asarray(sizes, dtype=np.int64)
    nonempty = sizes > 0
    if budget > sizes.sum():
        raise ValueError(f"budget {budget} exceeds the {sizes.sum()} valid samples")
    lower = np.where(nonempty, 1, 0) if budget >= nonempty.sum() else np.zeros_like(sizes)
    return allocate(softmax(np.asarray(complexity) / tau, nonempty), lower, sizes, budget)


@dataclass(frozen=True)
class DBPPruning(DataclassParams):
    budget: float | int = 0.5
    tau: float = 0.5
    l_nearest: int = 20
    name: str = "dbp"
    dynamic: bool = False

    def __post_init__(self) -> None:
        if not self.tau > 0:
            raise ValueError(f"tau must be > 0, got {self.tau}")
        if self.l_nearest < 1:
            raise ValueError(f"l_nearest must be ≥ 1, got {self.l_nearest}")

    def complexity(self, pool: ClusterPool) -> np.ndarray:
        """C_c = d_intra_c · d_inter_c."""
        require(pool, "DBP pruning", distance=True, centroids=True)
        return mean_distance(pool) * d_inter(pool.centroids, self.l_nearest)

    def quotas(self, pool: ClusterPool) -> tuple[np.ndarray, np.ndarray]:
        T = resolve_budget(self.budget, pool.budget_base, most=pool.n_valid)
        return dbp_quotas(pool.sizes, self.complexity(pool), T, self.tau)

    def keep_mask(self, pool: ClusterPool, *, seed: int) -> np.ndarray:
        return self._keep(pool, self.quotas(pool)[0])

    def draw(self, pool: ClusterPool, *, epoch: int, seed: int) -> Plan:
        quotas, expected = self.quotas(pool)
        return plan_from_mask(pool, self._keep(pool, quotas), expected=expected,
                              meta={"strategy": self.name, "params": self.params(), "seed": seed, "epoch": epoch})

    @staticmethod
    def _keep(pool: ClusterPool, quotas: np.ndarray) -> np.ndarray:
        """The N*_c members of each cluster farthest from its centroid."""
        return keep_top(pool, distance_scores(pool), quotas, largest=True, source="distance to the centroid")
