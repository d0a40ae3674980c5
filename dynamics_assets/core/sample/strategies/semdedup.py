"""SemDeDup — semantic de-duplication inside k-means clusters.

Formula: inside each cluster order the members farthest-first by their distance to the centroid
(d_i = 1 − cos(x_i, μ_c), ties: lower index first) and remove member j iff
    max_{i before j} cos(x_i, x_j) > 1 − ε,
over every earlier i, removed or not (as in the paper's code). So each group of near-duplicates
keeps the member farthest from its centroid. Duplicates in different clusters are not compared
(k-means puts near-duplicates in the same cluster). Optional ``budget``: an exact uniform draw of
that many survivors (a fraction refers to ``pool.budget_base``); by default every survivor is kept
once. Static. ε defaults to 0.05 (cos > 0.95).

Scale: members are grouped by a counting sort of the cluster ids (``members_by_cluster``: 4 bytes
per valid sample) plus the 1-byte keep mask. Each cluster's pairwise work is exact and tiled: panels
of ``panel`` rows of float32 embeddings are read with ``EmbeddingStore.take`` (a cluster of up to
``panel`` rows is read once; a larger one panel by panel, O(N_c²/panel) rows read), and similarities
are computed ``tile`` × ``tile`` at a time with the i < j mask — memory 2·panel·D·4 + tile²·4 bytes
whatever N_c, and no chunking (which would miss duplicates across chunks). Work is O(N_c²·D).
Source: Abbas, Tirumala, Simig, Ganguli, Morcos, "SemDeDup: Data-efficient learning at web-scale
through semantic deduplication", 2023 (arXiv 2303.09540); code facebookresearch/SemDeDup.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from dynamics_assets.core.embed.store import EmbeddingStore
from dynamics_assets.core.sample.base import ClusterPool, Plan, DataclassParams, resolve_budget
from dynamics_assets.core.sample.pruning import embedding_store, members_by_cluster, plan_from_mask, require, uniform_subset, valid_mask

STREAM = 4
Rows = Callable[[int, int], np.ndarray]


def unit_rows(store: EmbeddingStore, indices: np.ndarray) -> np.ndarray:
    """float32 L2-normalised embeddings at ``indices`` (any order), in that order."""
    order = np.argsort(indices, kind="stable")
    x = np.empty((len(indices), store.dim), dtype=np.float32)
    x[order] = store.take(indices[order])
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if not np.all(np.isfinite(norms) & (norms > 0)):
        bad = indices[np.flatnonzero(~(np.isfinite(norms[:, 0]) & (norms[:, 0] > 0)))[0]]
        raise ValueError(f"{store.root}: {store.kind} embedding of sample {bad} is non-finite or zero")
    return x / norms


def max_similarity_to_earlier(rows: Rows, n: int, *, tile: int, panel: int) -> np.ndarray:
    """m[j] = max_{i<j} <x_i, x_j> (−inf for j = 0) over rows(lo, hi), exact and tiled."""
    best = np.full(n, -np.inf, dtype=np.float32)
    for j0 in range(0, n, panel):
        xj = rows(j0, min(n, j0 + panel))
        for i0 in range(0, j0 + 1, panel):
            xi = xj if i0 == j0 else rows(i0, min(n, i0 + panel))
            _tiles(xi, i0, xj, j0, best, tile)
    return best


def _tiles(xi: np.ndarray, i0: int, xj: np.ndarray, j0: int, best: np.ndarray, tile: int) -> None:
    for b in range(0, len(xj), tile):
        gj = j0 + b + np.arange(min(tile, len(xj) - b))
        for a in range(0, min(len(xi), gj[-1] - i0), tile):  # only rows i < the tile's last j
            gi = i0 + a + np.arange(min(tile, len(xi) - a))
            sim = xi[a:a + len(gi)] @ xj[b:b + len(gj)].T
            if gi[-1] >= gj[0]:  # the tile crosses the diagonal: keep i < j only
                np.copyto(sim, np.float32(-np.inf), where=gi[:, None] >= gj[None, :])
            best[gj] = np.maximum(best[gj], sim.max(axis=0))


@dataclass(frozen=True)
class SemDeDup(DataclassParams):
    epsilon: float = 0.05
    budget: float | int | None = None
    embedding: str = "image"
    tile: int = 2048
    panel: int = 65536
    name: str = "semdedup"
    dynamic: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.epsilon < 1.0:
            raise ValueError(f"epsilon must lie in [0, 1), got {self.epsilon}")
        if not 1 <= self.tile <= self.panel:
            raise ValueError(f"need 1 ≤ tile ≤ panel, got tile={self.tile}, panel={self.panel}")

    def duplicates(self, pool: ClusterPool) -> np.ndarray:
        """Sorted indices of the samples SemDeDup removes."""
        require(pool, "SemDeDup", distance=True, embeddings=True)
        store = embedding_store(pool, self.embedding)
        members, offsets = members_by_cluster(pool)
        removed = []
        for c in np.flatnonzero(np.diff(offsets) > 1):
            idx = members[offsets[c]:offsets[c + 1]].astype(np.int64)
            far_first = idx[np.lexsort((idx, -pool.distance_at(idx)))]
            best = max_similarity_to_earlier(lambda lo, hi: unit_rows(store, far_first[lo:hi]),
                                             len(far_first), tile=self.tile, panel=self.panel)
            removed.append(far_first[best > np.float32(1.0 - self.epsilon)])
        return np.sort(np.concatenate(removed)) if removed else np.empty(0, np.int64)

    def keep_mask(self, pool: ClusterPool, *, seed: int) -> np.ndarray:
        keep = valid_mask(pool)
        keep[self.duplicates(pool)] = False
        if self.budget is None:
            return keep
        return uniform_subset(pool, keep, resolve_budget(self.budget, pool.budget_base), seed=seed, stream=STREAM)

    def draw(self, pool: ClusterPool, *, epoch: int, seed: int) -> Plan:
        return plan_from_mask(pool, self.keep_mask(pool, seed=seed), expected=None,
                              meta={"strategy": self.name, "params": self.params(), "seed": seed, "epoch": epoch})
