"""DynamiCS — dynamic cluster-based sampling (the project's main method).

Formula (cluster scaling): with N_c samples in cluster c, budget T and exponent α,
    R_c = T · N_c^α / Σ_j N_j^α,     p_c = R_c / N_c,
and every epoch draws a fresh sample in which cluster c contributes R_c draws. α = 1 is uniform
sampling, α = 0 gives every cluster the same budget (MetaCLIP-style flattening), 0 < α < 1
compresses the head and lifts the tail while keeping the order of cluster sizes. Default α = 0.2.
Source: Liang, Liu, de Vries, Larson, "Dynamic Cluster Data Sampling for Efficient and
Long-Tail-Aware Vision-Language Pre-training", ECCV 2026 (arXiv 2604.27932); reference code
MingliangLiang3/DynamiCS (tests/DynamiCS/cluster_scaling.py and the ``_dynamics`` data filter).

Modes:
  "bernoulli" — the paper's mechanism, kept for comparison: R_c = round(·) (np.round), then an
                independent coin min(1, p_c) per sample per epoch. Inherits the reference's flaws:
                capped clusters lose their surplus (the epoch is smaller than T) and small clusters
                can be rounded to R_c = 0 and never seen.
  "exact"     — ours: water-filling allocation, so what capped clusters (R_c ≤ N_c) cannot take
                goes to the others and the epoch is exactly T; every non-empty cluster gets
                R_c ≥ 1 when T ≥ #clusters; each cluster gets exactly R_c distinct samples.
  "upsample"  — ours: as "exact" but the cap is ``max_repeat`` · N_c, so tail clusters whose share
                exceeds their size are repeated (every member ⌊R_c/N_c⌋ or ⌈R_c/N_c⌉ times).
Each epoch is drawn afresh from (seed, epoch). With α = 1 every sample has the same inclusion
probability T/N, and the sampler returns exactly the uniform sampler's plan.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dynamics_assets.core.sample import selection
from dynamics_assets.core.sample.allocation import allocate
from dynamics_assets.core.sample.base import ClusterPool, Plan, DataclassParams, guarantees, resolve_budget
from dynamics_assets.core.sample.strategies.uniform import UniformSampler

STREAM = 2
MODES = ("bernoulli", "exact", "upsample")


def scaling_weights(sizes: np.ndarray, alpha: float) -> np.ndarray:
    """N_c^α for non-empty clusters, 0 for empty ones (0^0 would otherwise be 1)."""
    sizes = np.asarray(sizes, dtype=np.float64)
    return np.where(sizes > 0, np.power(sizes, alpha, where=sizes > 0, out=np.zeros_like(sizes)), 0.0)


def cluster_targets(sizes: np.ndarray, budget: int, alpha: float, *, mode: str = "exact",
                    max_repeat: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """(R_c integer draws per cluster, x_c their continuous values) for the exact modes."""
    sizes = np.asarray(sizes, dtype=np.int64)
    w = scaling_weights(sizes, alpha)
    nonempty = sizes > 0
    cap = sizes * (max_repeat if mode == "upsample" else 1)
    if budget > cap.sum():
        raise ValueError(f"budget {budget} exceeds what the pool can give ({cap.sum()}) in mode {mode!r}")
    # No starvation: one draw per non-empty cluster, when the budget allows it.
    lower = np.where(nonempty, 1, 0) if budget >= nonempty.sum() else np.zeros_like(sizes)
    return allocate(w, lower, cap, budget)


def reference_probabilities(sizes: np.ndarray, budget: int, alpha: float) -> np.ndarray:
    """The reference code's p_c = round(T·N_c^α/ΣN^α) / N_c (before the min(1, ·) of the filter)."""
    sizes = np.asarray(sizes, dtype=np.float64)
    w = scaling_weights(sizes, alpha)
    r = np.round(budget * w / w.sum())
    return np.divide(r, sizes, out=np.zeros_like(sizes), where=sizes > 0)


@dataclass(frozen=True)
class DynamicsSampler(DataclassParams):
    budget: float | int = 0.5
    alpha: float = 0.2
    mode: str = "exact"
    max_repeat: int = 4
    name: str = "dynamics"
    dynamic: bool = True

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"DynamiCS mode must be one of {MODES}, got {self.mode!r}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {self.alpha}")
        if self.max_repeat < 1:
            raise ValueError("max_repeat must be ≥ 1")

    def draw(self, pool: ClusterPool, *, epoch: int, seed: int) -> Plan:
        if self.alpha == 1.0:
            plan = UniformSampler(self.budget, mode="bernoulli" if self.mode == "bernoulli" else "exact").draw(
                pool, epoch=epoch, seed=seed)
            plan.meta.update(strategy=self.name, params=self.params(), reduced_to="uniform")  # keeps uniform's guarantees
            return plan
        sizes = pool.sizes
        T = resolve_budget(self.budget, pool.n_valid,
                           most=pool.n_valid * (self.max_repeat if self.mode == "upsample" else 1))
        if self.mode == "bernoulli":
            p = reference_probabilities(sizes, T, self.alpha)
            idx, realised = selection.bernoulli(pool, p, seed=seed, epoch=epoch, stream=STREAM)
            mult = np.ones(len(idx), np.uint16)
            expected = sizes * np.minimum(p, 1.0)
        else:
            targets, expected = cluster_targets(sizes, T, self.alpha, mode=self.mode,
                                                max_repeat=self.max_repeat)
            idx, mult, realised = selection.exact(pool, targets, seed=seed, epoch=epoch, stream=STREAM)
        return Plan(
            indices=idx, multiplicity=mult, cluster_size=sizes, cluster_expected=np.asarray(expected, np.float64),
            cluster_realised=realised,
            meta={"strategy": self.name, "params": self.params(), "seed": seed, "epoch": epoch,
                  "pool_size": pool.n_valid, "budget": T,
                  "guarantees": guarantees(
                      exact_budget=self.mode != "bernoulli",
                      max_multiplicity=self.max_repeat if self.mode == "upsample" else 1,
                      every_cluster_drawn=self.mode != "bernoulli" and T >= int((sizes > 0).sum()))},
        )
