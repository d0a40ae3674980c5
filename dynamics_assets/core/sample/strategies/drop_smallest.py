"""Drop the smallest clusters — the comparison's negative control (known to hurt the tail).

Formula: sort clusters by size N_c (ascending, ties by id) and remove the ⌈drop · K_nonempty⌉
smallest whole; draw a uniform simple random sample of exactly T = budget · N_valid samples from
the rest (``selection.exact`` in one stratum), redrawn every epoch. On clusters equal to concepts
this removes the rare concepts from training, so a design that cannot see their tail accuracy fall
cannot see a curation effect either. Source: the negative control asked for by the comparison audit
(issue 20); "remove rare clusters" is the mirror image of DynamiCS's up-weighting of small clusters
(Liang et al., arXiv 2604.27932).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dynamics_assets.core.sample import selection
from dynamics_assets.core.sample.base import ClusterPool, DataclassParams, Plan, guarantees, resolve_budget

STREAM = 17


@dataclass(frozen=True)
class DropSmallestSampler(DataclassParams):
    budget: float | int = 0.5
    drop: float = 0.2  # fraction of the non-empty clusters removed, smallest first
    name: str = "drop_smallest"
    dynamic: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.drop) < 1.0:
            raise ValueError(f"drop_smallest: drop={self.drop} must lie in [0, 1)")

    def dropped(self, sizes: np.ndarray) -> np.ndarray:
        """Boolean mask over clusters: the dropped ones."""
        nonempty = np.flatnonzero(sizes > 0)
        n_drop = math.ceil(self.drop * len(nonempty))
        order = nonempty[np.argsort(sizes[nonempty], kind="stable")]
        mask = np.zeros(len(sizes), dtype=bool)
        mask[order[:n_drop]] = True
        return mask

    def draw(self, pool: ClusterPool, *, epoch: int, seed: int) -> Plan:
        sizes = pool.sizes
        T = resolve_budget(self.budget, pool.budget_base)
        gone = self.dropped(sizes)
        available = int(sizes[~gone].sum())
        if T > available:
            raise ValueError(f"drop_smallest: budget {T} exceeds the {available} samples left after dropping "
                             f"{int(gone.sum())} clusters")
        keep = np.empty(len(pool), dtype=bool)
        for start, ids in pool.chunks():
            keep[start:start + len(ids)] = (ids >= 0) & ~gone[np.maximum(ids, 0)]
        kept = pool.masked(keep)
        kept_sizes = kept.sizes
        one_stratum = np.zeros(pool.n_clusters, dtype=np.int64)
        idx, mult, realised = selection.exact(kept, np.array([T]), seed=seed, epoch=epoch, stream=STREAM,
                                              stratum_of_cluster=one_stratum)
        expected = kept_sizes * (T / max(available, 1))
        return Plan(indices=idx, multiplicity=mult, cluster_size=sizes, cluster_expected=expected,
                    cluster_realised=realised,
                    meta={"strategy": self.name, "params": self.params(), "seed": seed, "epoch": epoch,
                          "pool_size": pool.n_valid, "budget": T, "dropped_clusters": int(gone.sum()),
                          "guarantees": guarantees(exact_budget=True, max_multiplicity=1, every_cluster_drawn=False)})
