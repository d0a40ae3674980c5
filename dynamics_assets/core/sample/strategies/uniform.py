"""Uniform sampling — the baseline every curation method is compared with.

Formula: every valid sample has the same inclusion probability T / N.
  mode "exact":     a simple random sample of exactly T of the N samples, without replacement
                    (T > N: every sample ⌊T/N⌋ times, T mod N of them once more);
  mode "bernoulli": an independent coin with p = T / N per sample (the realised size varies).
A budget of 1.0 is "full data". Redrawn every epoch (a random subset per epoch), or drawn once
and kept (``redraw=False``, a static random subset).
Source: the standard baseline of DataComp (Gadre et al., 2023) and of the DynamiCS paper.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dynamics_assets.core.sample import selection
from dynamics_assets.core.sample.base import ClusterPool, Plan, DataclassParams, guarantees, resolve_budget

STREAM = 1


@dataclass(frozen=True)
class UniformSampler(DataclassParams):
    budget: float | int = 1.0
    mode: str = "exact"
    redraw: bool = True
    name: str = "uniform"

    def __post_init__(self) -> None:
        if self.mode not in ("exact", "bernoulli"):
            raise ValueError(f"uniform mode must be 'exact' or 'bernoulli', got {self.mode!r}")

    @property
    def dynamic(self) -> bool:
        return self.redraw

    def draw(self, pool: ClusterPool, *, epoch: int, seed: int) -> Plan:
        n = pool.n_valid
        T = resolve_budget(self.budget, n)
        draw_epoch = epoch if self.redraw else 0
        sizes = pool.sizes
        if self.mode == "exact":
            one_stratum = np.zeros(pool.n_clusters, dtype=np.int64)
            idx, mult, realised = selection.exact(pool, np.array([T]), seed=seed, epoch=draw_epoch,
                                        stream=STREAM, stratum_of_cluster=one_stratum)
        else:
            p = np.full(pool.n_clusters, min(1.0, T / max(n, 1)))
            idx, realised = selection.bernoulli(pool, p, seed=seed, epoch=draw_epoch, stream=STREAM)
            mult = np.ones(len(idx), np.uint16)
        expected = sizes * (T / max(n, 1))
        return Plan(
            indices=idx, multiplicity=mult, cluster_size=sizes, cluster_expected=expected,
            cluster_realised=realised,
            meta={"strategy": self.name, "params": self.params(), "seed": seed, "epoch": epoch,
                  "pool_size": n, "budget": T,
                  "guarantees": guarantees(exact_budget=self.mode == "exact",
                                           max_multiplicity=max(1, -(-T // max(n, 1))), every_cluster_drawn=False)},
        )
