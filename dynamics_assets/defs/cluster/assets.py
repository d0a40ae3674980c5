"""Stage 3 — clustering: spherical faiss k-means on a sample, streamed assignment of every
embedding, and per-cluster statistics in DuckDB. A re-curation keeps the centroids while the new
data fits them (see core/cluster_refresh.py)."""

from pathlib import Path
from typing import Literal, Optional

import dagster as dg
import numpy as np

from dynamics_assets.core.cluster.refresh import FIT_NAME, FitRecord, decide, encoder_identity
from dynamics_assets.core.cluster.stats import compute_cluster_stats
from dynamics_assets.core.embed.store import EmbeddingStore
from dynamics_assets.core.cluster.kmeans import assign, mean_distance, merge_centroids, train_kmeans
from dynamics_assets.core.io.hashing import file_sha256
from dynamics_assets.defs.metadata import md_table
from dynamics_assets.defs.resources import GpuResource, StorageResource

GROUP = "clustering"


class ClusteringConfig(dg.Config):
    """k centroids trained on ``sample_size`` embeddings (faiss caps it at 1000 per centroid);
    ``merge_threshold``: merge centroids with cosine ≥ it. DynamiCS uses 0.70 on DINOv2 features;
    the default encoder here (a tiny model trained on the pool) packs its centroids much closer
    (median nearest-centroid cosine 0.96 on the default data: 0.70 merged 100 centroids into 12),
    so merging is off by default.

    ``refresh``: "auto" keeps the previous centroids (assigning every row to them) unless the rows
    added since they were fitted raise the mean distance to the nearest centroid by more than
    ``drift_threshold`` (relative), or the parameters or encoder changed; "assign" always keeps
    them; "retrain" always fits anew."""

    k: int = 100
    sample_size: int = 100_000
    niter: int = 20
    seed: int = 0
    embedding: str = "image"
    merge_threshold: Optional[float] = None
    refresh: Literal["auto", "assign", "retrain"] = "auto"
    drift_threshold: float = 0.25

    def fit_params(self) -> dict:
        return {"k": self.k, "sample_size": self.sample_size, "niter": self.niter, "seed": self.seed,
                "embedding": self.embedding, "merge_threshold": self.merge_threshold}


@dg.asset(group_name=GROUP, kinds={"faiss", "numpy"}, deps=["shard_embeddings"])
def clusters(context: dg.AssetExecutionContext, config: ClusteringConfig, pair_embeddings: dict,
             storage: StorageResource, gpu: GpuResource) -> dict:
    """Cluster id and cosine distance to the centroid of every embedded pair, and the centroids.
    On re-curation the centroids are kept, or re-trained when the new data drifts from them."""
    store = EmbeddingStore(pair_embeddings["embeddings_dir"], kind=config.embedding)
    use_gpu = "auto" if gpu.resolved_device().startswith("cuda") else False
    out = storage.layout.artifact("clusters")
    previous = FitRecord.read(out)
    encoder = encoder_identity(store)
    shards = {s: int(n) for s, n in zip(store.shards, store.counts)}
    decision = decide(config.refresh, previous, config.fit_params(), encoder, shards,
                      lambda new: mean_distance(store, np.load(out / "centroids.npy"), new, use_gpu=use_gpu),
                      config.drift_threshold)
    context.log.info(f"clusters: {decision.action} ({decision.reason})")
    if decision.action == "retrain":
        (out / FIT_NAME).unlink(missing_ok=True)  # a crash before the new record means: retrain again
        centroids = train_kmeans(store, config.k, sample_size=config.sample_size, niter=config.niter,
                                 seed=config.seed, use_gpu=use_gpu)
        k_trained = len(centroids)
        if config.merge_threshold is not None:
            centroids, _ = merge_centroids(centroids, threshold=config.merge_threshold)
    else:
        centroids = np.load(out / "centroids.npy")
        k_trained = int(previous.params["k"])
    summary = assign(store, centroids, out, use_gpu=use_gpu)
    if decision.action == "retrain":
        FitRecord(config.fit_params(), encoder, shards, summary.mean_distance).write(out)
    info = vars(summary)
    fingerprint = file_sha256(out / "cluster_id.npy")
    context.add_output_metadata({
        **decision.metadata(),
        "k_trained": k_trained, "k": len(centroids), "merged": k_trained - len(centroids),
        **{k: v for k, v in info.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
           and not (isinstance(v, float) and np.isnan(v))},
        "clusters_dir": dg.MetadataValue.path(str(out)), "pool_fingerprint": fingerprint,
    })
    return {"clusters_dir": str(out), "k": int(len(centroids)), "n": int(len(store)),
            "pool_fingerprint": fingerprint}


@dg.asset(group_name=GROUP, kinds={"duckdb", "parquet"})
def cluster_stats(context: dg.AssetExecutionContext, clusters: dict, raw_pairs: dict,
                  storage: StorageResource) -> dict:
    """Per cluster: size, d_intra (mean and spread of the distance to the centroid), d_inter
    (mean distance to the 20 nearest centroids), complexity d_intra·d_inter, top caption words."""
    cdir = Path(clusters["clusters_dir"])
    out = storage.layout.artifact("cluster_stats", "cluster_stats.parquet")
    table = compute_cluster_stats(cdir / "assignments.parquet", np.load(cdir / "centroids.npy"),
                                  str(Path(raw_pairs["manifest_dir"]) / "*.parquet"), out,
                                  spill_dir=storage.layout.artifact("cluster_stats", "spill"))
    rows = sorted(table.to_pylist(), key=lambda r: -r["size"])
    sizes = np.array([r["size"] for r in rows])
    context.add_output_metadata({
        "clusters": len(rows), "empty_clusters": int((sizes == 0).sum()),
        "largest": int(sizes.max(initial=0)), "smallest_nonempty": int(sizes[sizes > 0].min(initial=0)),
        "clusters_by_size": md_table(
            ["cluster", "size", "d_intra", "d_inter", "complexity", "top words"],
            [(r["cluster_id"], r["size"], r["d_intra"], r["d_inter"], r["complexity"], r["top_words"])
             for r in rows]),
        "stats_path": dg.MetadataValue.path(str(out)),
    })
    return {"stats_path": str(out), "k": len(rows)}
