"""Stage 4b — export: one recipe × epoch plan as webdataset shards that open_clip_train trains on."""

import dagster as dg

from dynamics_assets.core.export.webdataset import ExportRecord
from dynamics_assets.core.records import PlanRecord, PoolClusters
from dynamics_assets.core.train.settings import TrainSettings
from dynamics_assets.defs.experiments import partition_dir, recipe_and_epoch, recipe_epoch_partitions
from dynamics_assets.defs.resources import StorageResource

GROUP = "export"


class ExportConfig(dg.Config):
    """How the plan is written: ``samples_per_shard`` per tar; ``shuffle_buffer`` > 1: a seeded
    buffer shuffle of that many samples (seed from the recipe's seed and the epoch) so shards mix
    clusters and repeats are spread; 0: pool order."""

    samples_per_shard: int = 1000
    shuffle_buffer: int = 1000
    workers: int = 4  # open_clip_train's --workers in the recorded command (capped at the shard count)


@dg.asset(group_name=GROUP, partitions_def=recipe_epoch_partitions, kinds={"webdataset"})
def webdataset_export(context: dg.AssetExecutionContext, config: ExportConfig, sample_plan: PlanRecord,
                      clusters: PoolClusters, storage: StorageResource) -> ExportRecord:
    """Exactly this epoch's plan as webdataset shards: a sample of multiplicity k written k times
    (keys ``<sample_id>_<j>``) with its original image bytes, ``.txt`` caption and ``.json``
    provenance; ``manifest.json`` holds the open_clip_train command line that trains on them."""
    from dynamics_assets.core.export.webdataset import export_plan

    recipe, epoch_key = recipe_and_epoch(context)
    settings = TrainSettings().with_overrides(recipe.training, source=f"recipe {recipe.name}")
    out = export_plan(
        sample_plan.plan_dir, clusters.manifest_dir, clusters.shards_dir,
        storage.layout.artifact("webdataset_export", str(partition_dir(recipe, epoch_key))),
        pool_version=clusters.clusters_dir, samples_per_shard=config.samples_per_shard,
        shuffle_buffer=config.shuffle_buffer, seed=recipe.seed * 1000 + sample_plan.epoch,
        model=settings.model_name, batch_size=settings.batch_size, workers=config.workers)
    context.add_output_metadata({
        "recipe": recipe.key, "epoch": sample_plan.epoch, "samples": out.samples, "distinct": out.distinct,
        "shards": len(out.shards), "train_data": out.train_data,
        "command": dg.MetadataValue.md(f"```bash\n{out.command}\n```"),
        "export_dir": dg.MetadataValue.path(str(out.version_dir)), "pool_version": clusters.pool_version,
        "reused": out.reused, "dagster/row_count": out.samples,
    })
    return ExportRecord(export_dir=str(out.version_dir), recipe=recipe.key, epoch=sample_plan.epoch,
                        samples=out.samples, distinct=out.distinct, shards=len(out.shards),
                        train_data=out.train_data, command=out.command, pool_version=clusters.pool_version)
