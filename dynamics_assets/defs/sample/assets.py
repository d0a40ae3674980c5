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
    from dynamics_assets.core.io.plots import plot_cluster_scaling
    from dynamics_assets.core.sample import ClusterPool, registry, sampler_from_spec, write_plan

    recipe, epoch_key = recipe_and_epoch(context)
    epoch = epoch_of(epoch_key)
    pool = ClusterPool.from_artifacts(clusters.clusters_dir, clusters.k, embeddings_dir=clusters.embeddings_dir,
                                      fingerprint=clusters.pool_version, manifest_dir=clusters.manifest_dir)
    sampler = sampler_from_spec(lineage_filled(recipe.sampler, storage, recipe.key),
                                cache_dir=storage.layout.artifact("sample_plan", "_survivors"))
    plan = sampler.draw(pool, epoch=epoch, seed=recipe.seed)
    plan.meta.update(recipe=recipe.key)
    out = write_plan(storage.layout.artifact("sample_plan", str(partition_dir(recipe, epoch_key))), plan,
                     pool_version=clusters.clusters_dir,
                     extras=lambda d: plot_cluster_scaling(plan.cluster_size, plan.cluster_realised,
                                                           d / "cluster_scaling.png", title=f"{recipe.key} {epoch_key}"))
    notes = {}
    if registry.needs_feedback(recipe.sampler):
        notes["trained_plan"] = ("feedback_plan: this recipe's sampler reweights clusters by the previous epoch's "
                                 "training; this plan is its size-only prior (what epoch 1 trains)")
    context.add_output_metadata({"recipe": recipe.key, "epoch": epoch, "strategy": recipe.sampler["strategy"],
                                 **plan_metadata(plan, out), "pool_version": clusters.pool_version, **notes})
    return PlanRecord(plan_dir=str(out), recipe=recipe.key, epoch=epoch, realised=plan.size,
                      pool_version=clusters.pool_version)


def lineage_filled(spec: dict, storage: StorageResource, recipe: str) -> dict:
    """The sampler block with what a recipe may leave out filled in from the lineage's current
    versions (``sample.registry.LINEAGE_FILLS``): ``text_filter.classnames`` = the pool's class names and
    ``image_filter.target_embeddings`` = the target set's embeddings (``curation_targets``),
    ``dfn.scores`` = the data filtering network's scores (``dfn_scores``); compositions step by
    step. Nothing there to fill in: refused, naming the recipe, the setting and what provides it."""
    from dynamics_assets.core.io.versions import Artefact

    def current(name: str, file: str, setting: str, how: str) -> str:
        version = Artefact(storage.layout.artifact(name)).current()
        if version is None or not (version / file).is_file():
            raise dg.Failure(f"recipe {recipe}: {setting} is not set and the lineage has none: {how}")
        return str(version / file)

    out = dict(spec)
    strategy = out.get("strategy")
    if strategy == "compose":
        out["steps"] = [lineage_filled(s, storage, recipe) for s in out.get("steps", [])]
    elif strategy == "text_filter" and out.get("classnames") is None:
        out["classnames"] = current("curation_targets", "classnames.txt", "text_filter.classnames",
                                    "materialise curation_targets on a pool with class names (the synthetic pool, "
                                    "--eval, or --target with a classnames.txt), or list classnames in the recipe")
    elif strategy == "image_filter" and out.get("target_embeddings") is None:
        out["target_embeddings"] = current("curation_targets", "target.npy", "image_filter.target_embeddings",
                                           "materialise curation_targets with target images (--target DIR of "
                                           "images) or a curated set (--curated), or give a .npy in the recipe")
    elif strategy == "dfn" and out.get("scores") is None:
        out["scores"] = current("dfn_scores", "scores.npy", "dfn.scores",
                                "materialise curated_model and dfn_scores with a curated set (--curated DIR; "
                                "the synthetic pool: --curated synthetic)")
    return out


def plan_metadata(plan, out) -> dict:
    """The plan's Dagster metadata: budget and realised size, head share before and after, the
    per-cluster table and the cluster-scaling plot (shared with ``feedback_plan``)."""
    import numpy as np

    plot = out / "cluster_scaling.png"
    order = np.argsort(-plan.cluster_size, kind="stable")
    nonempty = plan.cluster_size > 0
    head = order[:max(1, len(order) // 10)]
    return {
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
    }


def feedback_plan_of(recipe, epoch_key: str, clusters: PoolClusters, previous: Optional[CheckpointRecord],
                     storage: StorageResource, log) -> tuple[PlanRecord, dict]:
    """A feedback recipe's plan of one epoch, drawn with the per-cluster loss the previous epoch's
    checkpoint recorded (none for epoch 1, or when that checkpoint was trained on another pool
    version), written like a sample plan and checked with the plan check (``plan_findings``) before
    anything trains on it. Called by the ``checkpoint`` step, whose ``feedback_plan`` output it is:
    Dagster cannot express plan(e) ← checkpoint(e−1) ← plan(e−1) between distinct assets."""
    from dynamics_assets.core.io.plots import plot_cluster_scaling
    from dynamics_assets.core.sample import ClusterFeedback, ClusterPool, sampler_from_spec, write_plan
    from dynamics_assets.core.sample.validate import plan_findings

    epoch = epoch_of(epoch_key)
    feedback = None
    if previous is not None:
        if previous.pool_version != clusters.pool_version:
            log.warning(f"epoch {epoch - 1} was trained on pool version {previous.pool_version}, this epoch reads "
                        f"{clusters.pool_version}: its per-cluster loss does not apply; drawn without feedback")
        elif previous.cluster_loss is None:
            raise dg.Failure(f"checkpoint {previous.checkpoint} recorded no per-cluster loss (cluster_loss.npy): "
                             "retrain that epoch with this version")
        else:
            feedback = ClusterFeedback.read(previous.cluster_loss)
    pool = ClusterPool.from_artifacts(clusters.clusters_dir, clusters.k, embeddings_dir=clusters.embeddings_dir,
                                      fingerprint=clusters.pool_version, manifest_dir=clusters.manifest_dir)
    plan = sampler_from_spec(recipe.sampler).draw(pool, epoch=epoch, seed=recipe.seed, feedback=feedback)
    plan.meta.update(recipe=recipe.key)
    out = write_plan(storage.layout.artifact("feedback_plan", str(partition_dir(recipe, epoch_key))), plan,
                     pool_version=clusters.clusters_dir,
                     extras=lambda d: plot_cluster_scaling(plan.cluster_size, plan.cluster_realised,
                                                           d / "cluster_scaling.png", title=f"{recipe.key} {epoch_key}"))
    findings = plan_findings(out, clusters.clusters_dir, clusters.k, clusters.pool_version)
    if not findings.passed:
        raise dg.Failure(f"feedback plan {out} breaks its guarantees: {findings.summary()}")
    info = plan.meta["feedback"]
    metadata = {"recipe": recipe.key, "epoch": epoch, "strategy": recipe.sampler["strategy"], **plan_metadata(plan, out),
                "pool_version": clusters.pool_version, "feedback_source": str(info["source"]),
                "feedback_clusters_seen": info["clusters_seen"], "feedback_factor_min": info["factor_min"],
                "feedback_factor_max": info["factor_max"], "feedback_scoring_flops": 0}
    return PlanRecord(plan_dir=str(out), recipe=recipe.key, epoch=epoch, realised=plan.size,
                      pool_version=clusters.pool_version), metadata
