"""cluster: every embedded pair assigned or quarantined before anything samples the pool (blocking)."""

import dagster as dg

from dynamics_assets.core.records import PoolClusters
from dynamics_assets.defs.metadata import check_result


@dg.asset_check(asset="clusters", blocking=True,
                description="Every embedded pair is accounted for: cluster ids ≥ 0 plus quarantine.parquet rows "
                            "equal len(cluster_id.npy) and the number of embedded pairs; every id < k.")
def every_pair_assigned(clusters: PoolClusters) -> dg.AssetCheckResult:
    from dynamics_assets.core.cluster.validate import cluster_findings

    return check_result(cluster_findings(clusters.clusters_dir, clusters.k, clusters.embeddings_dir))
