"""Flattening — MetaCLIP-style balancing of the cluster (concept) distribution.

Formula: with a cap t, cluster c keeps R_c = min(N_c, t) samples, i.e. p_c = t / max(N_c, t): the
head is capped at t, the tail kept whole. Given a budget T instead, t is solved from
Σ_c min(N_c, t) = T — water-filling with equal weights (``allocate``), so the epoch is exactly T.
Every epoch draws afresh (MetaCLIP 2 redraws the balancing online), R_c exact per cluster
(``selection.exact``). Equivalent to DynamiCS with α = 0, but with its own random stream.
Source: Xu et al., "Demystifying CLIP Data" (MetaCLIP), ICLR 2024 (t = 20,000 for 400M);
Chuang et al., "MetaCLIP 2: A Worldwide Scaling Recipe", 2025.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dynamics_assets.core.sample import selection
from dynamics_assets.core.sample.allocation import allocate
from dynamics_assets.core.sample.base import ClusterPool, Plan, DataclassParams, guarantees, resolve_budget

STREAM = 3


def flat_targets(sizes: np.ndarray, *, t: int | None = None, budget: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(R_c integer draws, x_c continuous) for a cap t, or for a budget T (t solved by water-filling)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    if t is not None:
        r = np.minimum(sizes, t)
        return r, r.astype(np.float64)
    if budget > sizes.sum():
        raise ValueError(f"budget {budget} exceeds the {sizes.sum()} valid samples")
    return allocate((sizes > 0).astype(np.float64), np.zeros_like(sizes), sizes, budget)


@dataclass(frozen=True)
class FlattenSampler(DataclassParams):
    t: int | None = None
    budget: float | int | None = None
    name: str = "flatten"
    dynamic: bool = True

    def __post_init__(self) -> None:
        if (self.t is None) == (self.budget is None):
            raise ValueError("flatten needs exactly one of a cap t or a budget")
        if self.t is not None and (isinstance(self.t, bool) or int(self.t) != self.t or self.t < 1):
            raise ValueError(f"the cap t must be an integer ≥ 1, got {self.t!r}")

    def draw(self, pool: ClusterPool, *, epoch: int, seed: int) -> Plan:
        sizes = pool.sizes
        T = None if self.budget is None else resolve_budget(self.budget, pool.budget_base, most=pool.n_valid)
        targets, expected = flat_targets(sizes, t=None if self.t is None else int(self.t), budget=T)
        idx, mult, realised = selection.exact(pool, targets, seed=seed, epoch=epoch, stream=STREAM)
        return Plan(
            indices=idx, multiplicity=mult, cluster_size=sizes, cluster_expected=expected,
            cluster_realised=realised,
            meta={"strategy": self.name, "params": self.params(), "seed": seed, "epoch": epoch,
                  "pool_size": pool.n_valid, "budget": int(targets.sum()),
                  "guarantees": guarantees(exact_budget=True, max_multiplicity=1, every_cluster_drawn=False)},
        )
