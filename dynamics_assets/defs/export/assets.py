"""Stage 4b — export: each recipe × epoch plan leaves the project, as webdataset shards that
open_clip_train trains on, as a DataComp subset file (the input of DataComp's resharder) and, for a
pool that ships its metadata (LAION / clip-retrieval, DataComp), as the metadata parquet of the plan
that img2dataset downloads (LAION ids are derived, so no LAION shard carries them)."""

import dagster as dg

from dynamics_assets.core.records import ExportRecord, LaionMetadataRecord, PlanRecord, PoolClusters, SubsetRecord
from dynamics_assets.defs.experiments import partition_dir, recipe_and_epoch, recipe_epoch_partitions
from dynamics_assets.defs.resources import StorageResource

GROUP = "export"


def trained_plan_dir(recipe, epoch_key: str, sample_plan: PlanRecord, storage: StorageResource) -> str:
    """The plan this recipe × epoch trains on (core/sample/draw.py: ``trained_plan_dir``: a feedback
    recipe's ``feedback_plan``, refused until its training step has drawn it; else ``sample_plan``)."""
    from dynamics_assets.core.sample.draw import FeedbackPlanError, trained_plan_dir as plan_dir_of

    try:
        return plan_dir_of(recipe.sampler, sample_plan.plan_dir,
                           storage.layout.artifact("feedback_plan", str(partition_dir(recipe, epoch_key))),
                           f"{recipe.key} {epoch_key}")
    except FeedbackPlanError as e:
        raise dg.Failure(str(e)) from None


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

    from dynamics_assets.core.train.settings import resolve_training
    from dynamics_assets.defs.partitions import N_EPOCHS

    recipe, epoch_key = recipe_and_epoch(context)
    # the settings the checkpoint trains with under the default run config (core/train/settings.py)
    settings = resolve_training({}, recipe.training, recipe.seed, clusters.n, default_epochs=N_EPOCHS,
                                recipe_name=recipe.name)
    try:
        out = export_plan(
            trained_plan_dir(recipe, epoch_key, sample_plan, storage), clusters.manifest_dir, clusters.shards_dir,
            storage.layout.artifact("webdataset_export", str(partition_dir(recipe, epoch_key))),
            pool=clusters.clusters_dir, samples_per_shard=config.samples_per_shard,
            shuffle_buffer=config.shuffle_buffer, seed=settings.seed + sample_plan.epoch,
            settings=settings, workers=config.workers)
    except ValueError as e:
        raise dg.Failure(str(e)) from e
    reading = out.reading
    context.add_output_metadata({
        "recipe": recipe.key, "epoch": sample_plan.epoch, "samples": out.samples, "distinct": out.distinct,
        "shards": len(out.shards), "train_data": out.train_data,
        "command": dg.MetadataValue.md(f"```bash\n{out.command}\n```"),
        "open_clip_batch": reading.get("batch_size"), "trained_batch": reading.get("trained_batch_size"),
        "open_clip_samples_per_epoch": reading.get("trained_per_epoch"),
        "open_clip_left_out": reading.get("left_out"), "open_clip_repeated": reading.get("repeated"),
        "open_clip_reading": reading.get("note", ""),
        "export_dir": dg.MetadataValue.path(str(out.version_dir)), "pool_version": clusters.pool_version,
        "reused": out.reused, "dagster/row_count": out.samples,
    })
    return ExportRecord(export_dir=str(out.version_dir), recipe=recipe.key, epoch=sample_plan.epoch,
                        samples=out.samples, distinct=out.distinct, shards=len(out.shards),
                        train_data=out.train_data, command=out.command, pool_version=clusters.pool_version)


@dg.asset(group_name=GROUP, partitions_def=recipe_epoch_partitions, kinds={"numpy"})
def datacomp_subset(context: dg.AssetExecutionContext, sample_plan: PlanRecord, clusters: PoolClusters,
                    storage: StorageResource) -> SubsetRecord:
    """The epoch's plan as a DataComp subset file: a sorted ``.npy`` of dtype
    exactly ``np.dtype("u8,u8")`` (fields f0, f1: the 128-bit uid's high and low halves; DataComp's
    resharder asserts this dtype), a uid written k times
    for multiplicity k. Refused when the plan was drawn on another pool version."""
    from dynamics_assets.core.export.datacomp import write_subset
    from dynamics_assets.core.io.versions import StalePlanError

    recipe, epoch_key = recipe_and_epoch(context)
    try:
        out = write_subset(trained_plan_dir(recipe, epoch_key, sample_plan, storage), clusters.manifest_dir,
                           storage.layout.artifact("datacomp_subset", str(partition_dir(recipe, epoch_key))),
                           pool=clusters.clusters_dir)
    except StalePlanError as e:
        raise dg.Failure(str(e)) from e
    context.add_output_metadata({
        "subset": dg.MetadataValue.path(str(out.path)), "rows": out.rows, "distinct": out.distinct,
        "pool_version": out.pool_version, "dagster/row_count": out.rows,
    })
    return SubsetRecord(subset_path=str(out.path), recipe=recipe.key, epoch=sample_plan.epoch, rows=out.rows,
                        distinct=out.distinct, pool_version=out.pool_version)


@dg.asset(group_name=GROUP, partitions_def=recipe_epoch_partitions, kinds={"parquet"}, output_required=False)
def laion_metadata(context: dg.AssetExecutionContext, sample_plan: PlanRecord, clusters: PoolClusters,
                   storage: StorageResource):
    """For a pool that ships its metadata (LAION / clip-retrieval; DataComp too): the epoch's plan as
    that metadata, one parquet — each planned sample's row with the pool's columns unchanged (url,
    caption, ...), ``count`` (its multiplicity) and ``sample_id`` — that img2dataset downloads (the
    command is in the metadata). A LAION row's id is derived (sha256 of url + NUL + caption), no
    LAION shard carries it: this, not the subset file, is how LAION users subset. Refused when the
    plan was drawn on another pool version; not materialised for a pool of images (no metadata)."""
    from dynamics_assets.core.export.laion import write_laion_metadata
    from dynamics_assets.core.io.versions import StalePlanError

    if clusters.has_images:
        context.log.info("laion_metadata: this pool has images and no metadata parquets; "
                         "its exports are webdataset_export and datacomp_subset")
        return
    recipe, epoch_key = recipe_and_epoch(context)
    try:
        out = write_laion_metadata(trained_plan_dir(recipe, epoch_key, sample_plan, storage), clusters.manifest_dir,
                                   clusters.shards_dir,
                                   storage.layout.artifact("laion_metadata", str(partition_dir(recipe, epoch_key))),
                                   pool=clusters.clusters_dir)
    except (StalePlanError, ValueError) as e:
        raise dg.Failure(f"laion_metadata {recipe.key} {epoch_key}: {e}") from e
    yield dg.Output(
        LaionMetadataRecord(metadata_path=str(out.path), recipe=recipe.key, epoch=sample_plan.epoch, rows=out.rows,
                            samples=out.samples, url_col=out.url_col, caption_col=out.caption_col,
                            command=out.command, pool_version=out.pool_version),
        metadata={"metadata": dg.MetadataValue.path(str(out.path)), "rows": out.rows, "samples": out.samples,
                  "url_col": out.url_col, "caption_col": out.caption_col,
                  "command": dg.MetadataValue.md(f"```bash\n{out.command}\n```"),
                  "pool_version": out.pool_version, "dagster/row_count": out.rows})
