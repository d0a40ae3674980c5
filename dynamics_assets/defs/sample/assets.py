"""Stage 4 — sample: one plan per recipe and epoch, drawn from (recipe seed, epoch)."""

import dagster as dg

from dynamics_assets.core.records import PlanRecord, PoolClusters
from dynamics_assets.defs.experiments import partition_dir, recipe_and_epoch, recipe_epoch_partitions
from dynamics_assets.defs.metadata import md_image, md_table
from dynamics_assets.defs.partitions import epoch_of
from dynamics_assets.defs.resources import StorageResource

GROUP = "sampling"


# After cluster_stats: a re-curation's new statistics are what the replan sensor waits for.
@dg.asset(group_name=GROUP, partitions_def=recipe_epoch_partitions, kinds={"numpy"}, deps=["cluster_stats"])
def sample_plan(context: dg.AssetExecutionContext, clusters: PoolClusters, storage: StorageResource) -> PlanRecord:
    """The samples one recipe trains on in one epoch: sorted indices with multiplicity, and the
    per-cluster summary (size, expected, realised). Dynamic strategies redraw every epoch."""
    import numpy as np

    from dynamics_assets.core.io.plots import plot_cluster_scaling
    from dynamics_assets.core.sample import ClusterPool, sampler_from_spec, write_plan

    recipe, epoch_key = recipe_and_epoch(context)
    epoch = epoch_of(epoch_key)
    pool = ClusterPool.from_artifacts(clusters.clusters_dir, clusters.k, embeddings_dir=clusters.embeddings_dir,
                                      fingerprint=clusters.pool_version)
    sampler = sampler_from_spec(recipe.sampler, cache_dir=storage.layout.artifact("sample_plan", "_survivors"))
    plan = sampler.draw(pool, epoch=epoch, seed=recipe.seed)
    plan.meta.update(recipe=recipe.key)
    out = write_plan(storage.layout.artifact("sample_plan", str(partition_dir(recipe, epoch_key))), plan,
                     pool_version=clusters.clusters_dir,
                     extras=lambda d: plot_cluster_scaling(plan.cluster_size, plan.cluster_realised,
                                                           d / "cluster_scaling.png", title=f"{recipe.key} {epoch_key}"))
    plot = out / "cluster_scaling.png"
    order = np.argsort(-plan.cluster_size, kind="stable")
    nonempty = plan.cluster_size > 0
    head = order[:max(1, len(order) // 10)]
    context.add_output_metadata({
        "recipe": recipe.key, "epoch": epoch, "strategy": recipe.sampler["strategy"],
        "budget": int(plan.meta.get("budget", plan.size)), "realised": plan.size,
        "distinct": int(len(plan.indices)), "max_multiplicity": int(plan.multiplicity.max(initial=0)),
        "starved_clusters": int(((plan.cluster_realised == 0) & nonempty).sum()),
        "head_share_before (largest 10% of clusters)": float(plan.cluster_size[head].sum() / max(1, plan.cluster_size.sum())),
        "head_share_after": float(plan.cluster_realised[head].sum() / max(1, plan.size)),
        "per_cluster": md_table(["cluster", "size", "expected", "realised"],
                                [(int(c), int(plan.cluster_size[c]), float(plan.cluster_expected[c]),
                                  int(plan.cluster_realised[c])) for c in order]),
        "plan_dir": dg.MetadataValue.path(str(out)), "pool_version": clusters.pool_version,
        "cluster_scaling_plot": md_image(plot, "cluster sizes before and after scaling"),
        "dagster/row_count": int(len(plan.indices)),
    })
    return PlanRecord(plan_dir=str(out), recipe=recipe.key, epoch=epoch, realised=plan.size,
                      pool_version=clusters.pool_version)
