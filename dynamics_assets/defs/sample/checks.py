"""sample: an epoch's plan keeps its sampler's stated guarantees before training reads it (blocking).

Partitioned like the plan (a preview feature of Dagster 1.13): the check runs in the same run as
the partition and is stored per partition; an unpartitioned check would load every partition.
"""

import dagster as dg

from dynamics_assets.core.records import PlanRecord, PoolClusters
from dynamics_assets.defs.experiments import recipe_epoch_partitions
from dynamics_assets.defs.metadata import check_result


@dg.asset_check(asset="sample_plan", blocking=True, partitions_def=recipe_epoch_partitions,
                additional_ins={"clusters": dg.AssetIn("clusters")},
                description="The epoch's plan keeps the guarantees its sampler states in plan.json (exact "
                            "budget, maximum multiplicity, no starved cluster); indices sorted, unique, inside "
                            "the pool and not quarantined; drawn on the current pool version.")
def plan_is_valid(sample_plan: PlanRecord, clusters: PoolClusters) -> dg.AssetCheckResult:
    from dynamics_assets.core.sample.validate import plan_findings

    return check_result(plan_findings(sample_plan.plan_dir, clusters.clusters_dir, clusters.k, clusters.pool_version))


@dg.asset_check(asset="feedback_plan", partitions_def=recipe_epoch_partitions,
                additional_ins={"clusters": dg.AssetIn("clusters")},
                description="A feedback recipe's plan (drawn by the checkpoint step with the previous epoch's "
                            "per-cluster loss) keeps its sampler's guarantees, like every sample plan. The step "
                            "checks it before training too (a check runs after its op; this one reports it).")
def feedback_plan_is_valid(feedback_plan: PlanRecord, clusters: PoolClusters) -> dg.AssetCheckResult:
    from dynamics_assets.core.sample.validate import plan_findings

    return check_result(plan_findings(feedback_plan.plan_dir, clusters.clusters_dir, clusters.k, clusters.pool_version))
