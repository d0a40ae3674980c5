"""Cluster a pool: fit spherical k-means (or keep the previous centroids), then assign every row.

The whole clustering step of a curation or re-curation, for one embeddings directory:
  1. ``refresh.decide``: keep the previous centroids (assign) or fit anew (retrain), from the
     requested mode, the parameters, the encoder and the drift of the rows added since the fit;
  2. retrain: ``kmeans.train_kmeans`` on a sample, then the optional merge of near-duplicate centroids;
  3. ``kmeans.assign``: every row to its nearest centroid, non-finite rows quarantined;
  4. one committed version of the clusters root (``io.versions``) holds the assignment, the
     centroids and the fit record; its id is the *pool version* every plan indexes.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from dynamics_assets.core.cluster.kmeans import AssignmentSummary, assign, mean_distance, merge_centroids, train_kmeans
from dynamics_assets.core.cluster.refresh import FitRecord, RefreshDecision, decide, encoder_identity
from dynamics_assets.core.embed.store import EmbeddingStore
from dynamics_assets.core.io import versions


MIN_POINTS_PER_CENTROID = 39  # faiss warns below this many training points per centroid


def k_for(n: int) -> int:
    """k for a pool of ``n`` embedded pairs when none is set: round(0.73·√n), at most n/39 (faiss's
    minimum of 39 training points per centroid), at least 1. The default pool's 18,900 pairs → 100;
    782 → 20; 10⁶ → 730; 10⁸ → 7,300 (√n growth keeps clusters' mean size ~1.4·√n)."""
    import math

    return max(1, min(round(0.73 * math.sqrt(n)), n // MIN_POINTS_PER_CENTROID))


def k_warning(k: int, n: int) -> str | None:
    if k > n // MIN_POINTS_PER_CENTROID:
        return (f"k = {k} is above N/{MIN_POINTS_PER_CENTROID} = {n // MIN_POINTS_PER_CENTROID} for this pool of "
                f"{n} pairs: faiss fits each centroid on fewer than {MIN_POINTS_PER_CENTROID} points and the "
                f"clusters are noise; the rule for this pool would give k = {k_for(n)}")
    return None


@dataclass(frozen=True)
class ClusterParams:
    """k centroids fitted on ``sample_size`` rows of the ``embedding`` kind ("image" or "text");
    ``merge_threshold``: merge centroids whose cosine is at least it (None: no merging)."""

    k: int = 100
    sample_size: int = 100_000
    niter: int = 20
    seed: int = 0
    embedding: str = "image"
    merge_threshold: float | None = None

    def fit_params(self) -> dict[str, Any]:
        return {"k": self.k, "sample_size": self.sample_size, "niter": self.niter, "seed": self.seed,
                "embedding": self.embedding, "merge_threshold": self.merge_threshold}


@dataclass(frozen=True)
class ClusteringResult:
    clusters_dir: Path
    decision: RefreshDecision
    k_trained: int
    k: int
    n: int
    pool_version: str
    assignment: AssignmentSummary


def cluster_pool(embeddings_dir: str | Path, manifest_dir: str | Path, root: str | Path, params: ClusterParams, *,
                 refresh: Literal["auto", "assign", "retrain"] = "auto", drift_threshold: float = 0.25,
                 use_gpu: bool | Literal["auto"] = False, hold_out: bool = False) -> ClusteringResult:
    """Cluster the embeddings version ``embeddings_dir`` of the manifest version ``manifest_dir``
    into a new version of the clusters artefact ``root``; the previous version (if any) decides
    between keeping its centroids and fitting anew. ``hold_out``: keep evaluation's held-out slice
    (``evaluate.holdout``) out of every plan: cluster -1, quarantine reason ``held_out``."""
    store = EmbeddingStore(embeddings_dir, kind=params.embedding)
    if not 1 <= params.k <= len(store):
        raise ValueError(f"clusters.k = {params.k} does not fit the pool's {len(store)} embedded pairs "
                         f"(allowed: 1 ≤ k ≤ {len(store)}; faiss wants ≥ 39 points per centroid, k ≤ {len(store) // 39})")
    current = versions.Artefact(root).current()
    previous = FitRecord.read(current) if current is not None else None
    encoder = encoder_identity(store)
    shards = {s: int(n) for s, n in zip(store.shards, store.counts)}
    decision = decide(refresh, previous, params.fit_params(), encoder, shards,
                      lambda new: mean_distance(store, np.load(current / "centroids.npy"), new, use_gpu=use_gpu),
                      drift_threshold)
    if decision.action == "retrain":
        centroids = train_kmeans(store, params.k, sample_size=params.sample_size, niter=params.niter,
                                 seed=params.seed, use_gpu=use_gpu)
        k_trained = len(centroids)
        if params.merge_threshold is not None:
            centroids, _ = merge_centroids(centroids, threshold=params.merge_threshold)
        fit = lambda s: FitRecord(params.fit_params(), encoder, shards, s.mean_distance)  # noqa: E731
    else:
        centroids = np.load(current / "centroids.npy")
        k_trained = int(previous.params["k"])
        fit = previous  # the centroids are the same fit: its record goes on
    mask = None
    if hold_out:
        from dynamics_assets.core.evaluate.holdout import is_held_out as mask
    summary = assign(store, centroids, root, use_gpu=use_gpu, fit=fit, refs={"manifest": manifest_dir}, hold_out=mask)
    return ClusteringResult(clusters_dir=Path(summary.version_dir), decision=decision, k_trained=k_trained,
                            k=int(len(centroids)), n=int(len(store)), pool_version=str(summary.version_id),
                            assignment=summary)
