"""Stage 4 — sample: one plan per recipe and epoch, drawn from (recipe seed, epoch)."""

import dagster as dg

from typing import Optional

from dynamics_assets.core.records import CheckpointRecord, PlanRecord, PoolClusters
from dynamics_assets.defs.experiments import partition_dir, recipe_and_epoch, recipe_epoch_partitions
from dynamics_assets.defs.metadata import md_image, md_table
from dynamics_assets.defs.partitions import epoch_of
from dynamics_assets.defs.resources import StorageResource

GROUP = "sample"


# After cluster_stats: a re-curation's new statistics are what the replan sensor waits for.
@dg.asset(group_name=GROUP, partitions_def=recipe_epoch_partitions, kinds={"numpy"}, deps=["cluster_stats"])
def sample_plan(context: dg.AssetExecutionContext, clusters: PoolClusters, storage: StorageResource) -> PlanRecord:
    """The samples one recipe trains on in one epoch: sorted indices with multiplicity, and the
    per-cluster summary (size, expected, realised). Dynamic strategies redraw every epoch."""
    from dynamics_assets.core.sample import registry
    from dynamics_assets.core.sample.draw import draw_sample_plan, plan_record

    recipe, epoch_key = recipe_and_epoch(context)
    epoch = epoch_of(epoch_key)
    plan, out = draw_sample_plan(lineage_filled(recipe.sampler, storage, recipe.key), clusters, recipe=recipe.key,
                                 epoch=epoch, seed=recipe.seed, title=f"{recipe.key} {epoch_key}",
                                 root=storage.layout.artifact("sample_plan", str(partition_dir(recipe, epoch_key))),
                                 cache_dir=storage.layout.artifact("sample_plan", "_survivors"))
    notes = {}
    if registry.needs_feedback(recipe.sampler):
        notes["trained_plan"] = ("feedback_plan: this recipe's sampler reweights clusters by the previous epoch's "
                                 "training; this plan is its size-only prior (what epoch 1 trains)")
    context.add_output_metadata({"recipe": recipe.key, "epoch": epoch, "strategy": recipe.sampler["strategy"],
                                 **plan_metadata(plan, out), "pool_version": clusters.pool_version, **notes})
    return plan_record(out, plan, recipe.key, epoch, clusters)


def lineage_filled(spec: dict, storage: StorageResource, recipe: str) -> dict:
    """The sampler block with what a recipe may leave out filled in from the lineage's current
    versions (core/sample/draw.py: ``lineage_filled``); nothing there to fill in: a Dagster failure
    naming the recipe, the setting and what provides it."""
    from dynamics_assets.core.sample.draw import LineageFillError, lineage_filled as filled

    try:
        return filled(spec, storage.layout.artifact, recipe)
    except LineageFillError as e:
        raise dg.Failure(str(e)) from None


def plan_metadata(plan, out) -> dict:
    """The plan's Dagster metadata: budget and realised size, head share before and after, the
    per-cluster table and the cluster-scaling plot (shared with ``feedback_plan``)."""
    from dynamics_assets.core.sample.draw import per_cluster_rows, plan_facts

    return {
        **plan_facts(plan),
        "per_cluster": md_table(["cluster", "size", "expected", "realised"], per_cluster_rows(plan)),
        "plan_dir": dg.MetadataValue.path(str(out)),
        "cluster_scaling_plot": md_image(out / "cluster_scaling.png", "cluster sizes before and after scaling"),
        "dagster/row_count": int(len(plan.indices)),
    }


def feedback_plan_of(recipe, epoch_key: str, clusters: PoolClusters, previous: Optional[CheckpointRecord],
                     storage: StorageResource, log) -> tuple[PlanRecord, dict]:
    """A feedback recipe's plan of one epoch and its metadata (core/sample/draw.py:
    ``draw_feedback_plan``: drawn with the previous epoch's per-cluster loss, written like a sample
    plan and checked before anything trains on it). Called by the ``checkpoint`` step, whose
    ``feedback_plan`` output it is: Dagster cannot express plan(e) ← checkpoint(e−1) ← plan(e−1)
    between distinct assets."""
    from dynamics_assets.core.sample.draw import FeedbackPlanError, draw_feedback_plan, plan_record

    epoch = epoch_of(epoch_key)
    try:
        plan, out, facts = draw_feedback_plan(
            recipe.sampler, clusters, previous, recipe=recipe.key, epoch=epoch, seed=recipe.seed,
            root=storage.layout.artifact("feedback_plan", str(partition_dir(recipe, epoch_key))),
            title=f"{recipe.key} {epoch_key}", warn=log.warning)
    except FeedbackPlanError as e:
        raise dg.Failure(str(e)) from None
    metadata = {"recipe": recipe.key, "epoch": epoch, "strategy": recipe.sampler["strategy"], **plan_metadata(plan, out),
                "pool_version": clusters.pool_version, **facts}
    return plan_record(out, plan, recipe.key, epoch, clusters), metadata
