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
from typing import Literal

import numpy as np

from dynamics_assets.core.cluster.params import ClusterParams, k_for, k_warning  # noqa: F401 (re-exported)
from dynamics_assets.core.cluster.kmeans import AssignmentSummary, assign, mean_distance, merge_centroids, train_kmeans
from dynamics_assets.core.cluster.refresh import FitRecord, RefreshDecision, decide, encoder_identity
from dynamics_assets.core.embed.store import EmbeddingStore
from dynamics_assets.core.engine import Engine
from dynamics_assets.core.ingest.held_out import is_held_out
from dynamics_assets.core.io import lineage, versions


@dataclass(frozen=True)
class ClusteringResult:
    clusters_dir: Path
    decision: RefreshDecision
    k_trained: int
    k: int
    n: int
    pool_version: str
    assignment: AssignmentSummary
    warnings: tuple[str, ...] = ()  # settings that do not fit the pool (k above N/39)


def cluster_pool(embeddings_dir: str | Path, manifest_dir: str | Path, root: str | Path, params: ClusterParams, *,
                 refresh: Literal["auto", "assign", "retrain"] = "auto", drift_threshold: float = 0.25,
                 use_gpu: bool | Literal["auto"] = False, hold_out: bool = False,
                 engine: Engine | None = None) -> ClusteringResult:
    """Cluster the embeddings version ``embeddings_dir`` of the manifest version ``manifest_dir``
    into a new version of the clusters artefact ``root``; the previous version (if any) decides
    between keeping its centroids and fitting anew. ``hold_out``: keep evaluation's held-out slice
    (``ingest.held_out``) out of every plan: cluster -1, quarantine reason ``held_out``.
    ``engine`` (``core.engine``; None: in this process) runs the assignment shard by shard; the
    k-means fit on a sample runs here."""
    lineage.require_made_from(embeddings_dir, manifest_dir, ref="manifest", what="clusters")
    store = EmbeddingStore(embeddings_dir, kind=params.embedding)
    k = params.k if params.k is not None else k_for(len(store))
    if not 1 <= k <= len(store):
        raise ValueError(f"clusters.k = {k} does not fit the pool's {len(store)} embedded pairs "
                         f"(allowed: 1 ≤ k ≤ {len(store)}; faiss wants ≥ 39 points per centroid, k ≤ {len(store) // 39})")
    warnings = tuple(w for w in [k_warning(k, len(store))] if w)
    current = versions.Artefact(root).current()
    previous = FitRecord.read(current) if current is not None else None
    encoder = encoder_identity(store)
    shards = {s: int(n) for s, n in zip(store.shards, store.counts)}
    decision = decide(refresh, previous, params.fit_params(), encoder, shards,
                      lambda new: mean_distance(store, np.load(current / "centroids.npy"), new, use_gpu=use_gpu),
                      drift_threshold)
    if decision.action == "retrain":
        centroids = train_kmeans(store, k, sample_size=params.sample_size, niter=params.niter,
                                 seed=params.seed, use_gpu=use_gpu)
        k_trained = len(centroids)
        if params.merge_threshold is not None:
            centroids, _ = merge_centroids(centroids, threshold=params.merge_threshold)
        fit = lambda s: FitRecord(params.fit_params(), encoder, shards, s.mean_distance)  # noqa: E731
    else:
        centroids = np.load(current / "centroids.npy")
        k_trained = int(previous.params["k"]) if previous.params.get("k") is not None else len(centroids)
        fit = previous  # the centroids are the same fit: its record goes on
    mask = is_held_out if hold_out else None
    summary = assign(store, centroids, root, use_gpu=use_gpu, fit=fit, refs={"manifest": manifest_dir}, hold_out=mask,
                     engine=engine)
    return ClusteringResult(clusters_dir=Path(summary.version_dir), decision=decision, k_trained=k_trained,
                            k=int(len(centroids)), n=int(len(store)), pool_version=str(summary.version_id),
                            assignment=summary, warnings=warnings)
