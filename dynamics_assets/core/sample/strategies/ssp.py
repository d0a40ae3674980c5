"""SSP pruning — self-supervised-prototype difficulty ("Beyond neural scaling laws").

Formula: difficulty d_i = 1 − cos(x_i, μ_c), the cosine distance to the nearest centroid (the
``clusters`` stage's ``distance.npy``). Keep T samples:
  balanced=True:  an equal quota per cluster, water-filled under the caps N_c so Σ_c q_c = T exactly
                  (q_c = min(N_c, λ) up to integer rounding), then the q_c hardest (largest d_i,
                  keep="hard") or easiest (smallest d_i, keep="easy") members of each cluster;
  balanced=False: one global threshold — the T hardest (or easiest) samples of the pool.
Ties go to the lower index. Keep the hard samples when data is abundant, the easy ones when scarce.
Static: the same plan every epoch.
Source: Sorscher, Geirhos, Shekhar, Ganguli, Morcos, "Beyond neural scaling laws: beating power law
scaling via data pruning", NeurIPS 2022.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dynamics_assets.core.sample.base import ClusterPool, Plan, DataclassParams, resolve_budget
from dynamics_assets.core.sample.strategies.flatten import flat_targets
from dynamics_assets.core.sample.pruning import distance_scores, keep_top, plan_from_mask, require

KEEP = ("hard", "easy")


@dataclass(frozen=True)
class SSPPruning(DataclassParams):
    budget: float | int = 0.5
    keep: str = "hard"
    balanced: bool = True
    name: str = "ssp"
    dynamic: bool = False

    def __post_init__(self) -> None:
        if self.keep not in KEEP:
            raise ValueError(f"SSP keep must be one of {KEEP}, got {self.keep!r}")

    def quotas(self, pool: ClusterPool) -> np.ndarray:
        """Per-cluster quotas (balanced) or the single global quota [T]."""
        T = resolve_budget(self.budget, pool.budget_base, most=pool.n_valid)
        if self.balanced:
            return flat_targets(pool.sizes, budget=T)[0]
        if T > pool.n_valid:
            raise ValueError(f"budget {T} exceeds the {pool.n_valid} valid samples")
        return np.array([T])

    def keep_mask(self, pool: ClusterPool, *, seed: int) -> np.ndarray:
        require(pool, "SSP pruning", distance=True)
        strata = None if self.balanced else np.zeros(pool.n_clusters, dtype=np.int64)
        return keep_top(pool, distance_scores(pool), self.quotas(pool), largest=self.keep == "hard",
                        stratum_of_cluster=strata, source="distance to the centroid")

    def draw(self, pool: ClusterPool, *, epoch: int, seed: int) -> Plan:
        return plan_from_mask(pool, self.keep_mask(pool, seed=seed),
                              expected=self.quotas(pool) if self.balanced else None,
                              meta={"strategy": self.name, "params": self.params(), "seed": seed, "epoch": epoch})
