"""Stage 4 — sampling: one plan per recipe and epoch, drawn from (recipe seed, epoch)."""

from pathlib import Path

import dagster as dg
import numpy as np

from dynamics_assets.core.io.plots import plot_cluster_scaling
from dynamics_assets.core.sample import ClusterPool, make_sampler, write_plan
from dynamics_assets.defs.experiments import Recipe, partition_dir, recipe_and_epoch, recipe_epoch_partitions
from dynamics_assets.defs.metadata import md_image, md_table
from dynamics_assets.defs.partitions import epoch_of
from dynamics_assets.defs.resources import StorageResource

GROUP = "sampling"


def sampler_for(recipe: Recipe, survivors_cache: Path | None = None):
    """The recipe's sampler; a composition keeps its pruners' survivors in ``survivors_cache``."""
    spec = dict(recipe.sampler)
    strategy = spec.pop("strategy")
    if strategy == "compose" and survivors_cache is not None:
        spec["cache_dir"] = str(survivors_cache)
    return make_sampler(strategy, **spec)


@dg.asset(group_name=GROUP, partitions_def=recipe_epoch_partitions, kinds={"numpy"})
def sample_plan(context: dg.AssetExecutionContext, clusters: dict, pair_embeddings: dict,
                cluster_stats: dict, storage: StorageResource) -> dict:
    """The samples one recipe trains on in one epoch: sorted indices with multiplicity, and the
    per-cluster summary (size, expected, realised). Dynamic strategies redraw every epoch."""
    recipe, epoch_key = recipe_and_epoch(context)
    epoch = epoch_of(epoch_key)
    pool = ClusterPool.from_artifacts(clusters["clusters_dir"], clusters["k"],
                                      embeddings_dir=pair_embeddings["embeddings_dir"],
                                      fingerprint=clusters["pool_fingerprint"])
    survivors_cache = storage.layout.artifact("sample_plan", "_survivors")
    plan = sampler_for(recipe, survivors_cache).draw(pool, epoch=epoch, seed=recipe.seed)
    plan.meta.update(pool_fingerprint=clusters["pool_fingerprint"], recipe=recipe.key)
    out = write_plan(storage.layout.artifact("sample_plan", str(partition_dir(recipe, epoch_key))), plan)
    plot = plot_cluster_scaling(plan.cluster_size, plan.cluster_realised, out / "cluster_scaling.png",
                                title=f"{recipe.key} {epoch_key}")
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
        "plan_dir": dg.MetadataValue.path(str(out)),
        "cluster_scaling_plot": md_image(plot, "cluster sizes before and after scaling"),
        "dagster/row_count": int(len(plan.indices)),
    })
    return {"plan_dir": str(out), "epoch": epoch, "recipe": recipe.key, "realised": plan.size,
            "pool_fingerprint": clusters["pool_fingerprint"]}
