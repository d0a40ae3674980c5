"""Stage 3 — cluster: spherical faiss k-means on a sample, streamed assignment of every
embedding, and per-cluster statistics in DuckDB. A re-curation keeps the centroids while the new
data fits them (see core/cluster/refresh.py)."""

import contextlib
import math
from typing import Literal

import dagster as dg

from dynamics_assets.core.cluster.params import ClusterParams
from dynamics_assets.core.records import ClusterStats, PoolClusters, PoolEmbeddings, PoolManifest
from dynamics_assets.defs.config import config_from
from dynamics_assets.defs.metadata import md_table
from dynamics_assets.defs.resources import ComputeResource, GpuResource, StorageResource

GROUP = "cluster"


ClusteringConfig = config_from(
    ClusterParams, "ClusteringConfig",
    """The clustering parameters of core/cluster/curate.ClusterParams (``k`` empty:
    round(0.73·√N), at most N/39), plus how a re-curation refreshes them. k centroids trained on ``sample_size`` embeddings (faiss caps it at 1000 per centroid);
    ``merge_threshold``: merge centroids with cosine ≥ it. DynamiCS uses 0.70 on DINOv2 features;
    the default encoder here (a tiny model trained on the pool) packs its centroids much closer
    (median nearest-centroid cosine 0.96 on the default data: 0.70 merged 100 centroids into 12),
    so merging is off by default.

    ``refresh``: "auto" keeps the previous centroids (assigning every row to them) unless the rows
    added since they were fitted raise the mean distance to the nearest centroid by more than
    ``drift_threshold`` (relative), or the parameters or encoder changed; "assign" always keeps
    them; "retrain" always fits anew.""",
    __name__,
    refresh=(Literal["auto", "assign", "retrain"], "auto"),
    drift_threshold=(float, 0.25),
)


@contextlib.contextmanager
def _refused_as_failure(*errors: type[Exception]):
    """A refusal (``errors``) fails the step with its message alone, not a traceback to read."""
    try:
        yield
    except errors as e:
        raise dg.Failure(str(e)) from e


@dg.asset(group_name=GROUP, kinds={"faiss", "numpy"}, deps=["shard_embeddings"])
def clusters(context: dg.AssetExecutionContext, config: ClusteringConfig, raw_pairs: PoolManifest,
             pair_embeddings: PoolEmbeddings, storage: StorageResource, gpu: GpuResource,
             compute: ComputeResource) -> PoolClusters:
    """Cluster id and cosine distance to the centroid of every embedded pair, and the centroids.
    On re-curation the centroids are kept, or re-trained when the new data drifts from them."""
    from dynamics_assets.core.cluster.curate import cluster_pool

    params = ClusterParams(**config.model_dump(exclude={"refresh", "drift_threshold"}))
    from dynamics_assets.core.io.lineage import LineageError

    with compute.engine_for(context.log) as engine, _refused_as_failure(LineageError):
        result = cluster_pool(pair_embeddings.embeddings_dir, raw_pairs.manifest_dir, storage.layout.artifact("clusters"), params,
                              refresh=config.refresh, drift_threshold=config.drift_threshold,
                              use_gpu="auto" if gpu.resolved_device().startswith("cuda") else False,
                              # a user's pool keeps a slice out of every plan for retrieval evaluation;
                              # the synthetic pool has its own held-out set
                              hold_out=raw_pairs.eval_kind != "synthetic", engine=engine)
    context.log.info(f"clusters: {result.decision.action} ({result.decision.reason})")
    for w in result.warnings:
        context.log.warning(w)
    info = vars(result.assignment)
    context.add_output_metadata({
        **result.decision.metadata(),
        "k_trained": result.k_trained, "k": result.k, "merged": result.k_trained - result.k,
        "k_rule": "set" if config.k is not None else f"round(0.73·√N) capped at N/39 for N = {pair_embeddings.n}",
        "warnings": dg.MetadataValue.md("\n".join(f"- ⚠ {w}" for w in result.warnings) or "none"),
        **{k: v for k, v in info.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
           and not (isinstance(v, float) and math.isnan(v))},
        "clusters_dir": dg.MetadataValue.path(str(result.clusters_dir)), "pool_version": result.pool_version,
    })
    return PoolClusters(clusters_dir=str(result.clusters_dir), k=result.k, n=result.n,
                        pool_version=result.pool_version, manifest_dir=raw_pairs.manifest_dir,
                        shards_dir=raw_pairs.shards_dir,
                        embeddings_dir=pair_embeddings.embeddings_dir, encoder=pair_embeddings.encoder,
                        has_images=raw_pairs.has_images)


@dg.asset(group_name=GROUP, kinds={"duckdb", "parquet"})
def cluster_stats(context: dg.AssetExecutionContext, clusters: PoolClusters, storage: StorageResource) -> ClusterStats:
    """Per cluster: size, d_intra (mean and spread of the distance to the centroid), d_inter
    (mean distance to the 20 nearest centroids), complexity d_intra·d_inter, top caption words."""
    import numpy as np

    from dynamics_assets.core.cluster.stats import compute_cluster_stats

    result = compute_cluster_stats(clusters.clusters_dir, None, clusters.manifest_dir,
                                   storage.layout.artifact("cluster_stats"),
                                   spill_dir=storage.layout.artifact("_spill", "cluster_stats"))
    out = result.path
    rows = sorted(result.table.to_pylist(), key=lambda r: -r["size"])
    sizes = np.array([r["size"] for r in rows])
    empty = int((sizes == 0).sum())
    context.add_output_metadata({
        "clusters": len(rows), "empty_clusters": empty,
        "largest": int(sizes.max(initial=0)), "smallest_nonempty": int(sizes[sizes > 0].min(initial=0)),
        "clusters_by_size": md_table(
            ["cluster", "size", "d_intra", "d_inter", "complexity", "top words"],
            [(r["cluster_id"], r["size"], r["d_intra"], r["d_inter"], r["complexity"], r["top_words"])
             for r in rows]),
        "stats_path": dg.MetadataValue.path(str(out)),
    })
    return ClusterStats(stats_path=str(out), clusters=len(rows), empty_clusters=empty)
