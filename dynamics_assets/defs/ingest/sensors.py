"""The landing sensor: new raw shards in the pool's folder are registered, ingested, re-curated."""
from __future__ import annotations

import os

import dagster as dg

from dynamics_assets.core.ingest.landing import LandingCursor, advance, observe
from dynamics_assets.core.ingest.landing_tick import skip_reason, tick
from dynamics_assets.defs.jobs import curate_pool_job, ingest_shard_job, recurate_pool_job
from dynamics_assets.defs.partitions import raw_shard_partitions
from dynamics_assets.defs.recuration import last_curation_config, pool_embeddings_dir, pool_shards_dir, runs_in_flight

# How often the daemon lists the landing folder (a shard needs two looks to settle).
LANDING_INTERVAL_S = int(os.environ.get("DYNAMICS_LANDING_INTERVAL_S", "60"))


@dg.sensor(name="raw_shard_sensor", jobs=[ingest_shard_job, recurate_pool_job],
           minimum_interval_seconds=LANDING_INTERVAL_S, default_status=dg.DefaultSensorStatus.RUNNING)
def raw_shard_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
    """Watches the folder the pool was curated from (``raw_shards``' ``shards_dir``) for new ``.tar``
    shards. A shard is registered (a ``raw_shard`` partition) once it is a complete tar whose size
    and mtime did not move since the previous tick; a half-written one waits, with its reason in the
    tick log. Each new shard gets one ``ingest_shard`` run (never twice: registered shards are
    skipped, and the run key names the file's size and mtime); when every ingestion has finished, one
    ``recurate_pool`` run follows. Every tick lists the whole folder, so shards that landed while the
    daemon was down are found at the next tick. Shards already embedded with the pool are registered
    without a run; while a curation or re-curation runs, the sensor waits."""
    folder = pool_shards_dir(context.instance)
    if folder is None:
        return dg.SkipReason("no pool yet: run curate_pool (raw_shards records the folder to watch)")
    if not folder.is_dir():
        return dg.SkipReason(f"the pool's shard folder {folder} does not exist")
    if busy := [job.name for job in (curate_pool_job, recurate_pool_job) if runs_in_flight(context.instance, job.name)]:
        # The pool's own shards are not embedded yet: they would look new. Look again afterwards.
        return dg.SkipReason(f"{', '.join(busy)} in progress: the folder is looked at when it has finished")
    registered = set(context.instance.get_dynamic_partitions(raw_shard_partitions.name))
    step = advance(LandingCursor.from_json(context.cursor), observe(folder, skip=registered), registered, folder)
    for name, why in sorted(step.waiting.items()):
        context.log.info(f"waiting for {name}: {why}")
    t = tick(step, pool_embeddings_dir(context.instance),
             ingest_running=lambda: runs_in_flight(context.instance, ingest_shard_job.name),
             embedded=lambda: context.instance.get_materialized_partitions(dg.AssetKey("shard_embeddings")))
    requests = [dg.RunRequest(job_name=ingest_shard_job.name, partition_key=o.name, run_key=t.ingest_key(o),
                              tags={"dynamics/trigger": "new_shard"}) for o in t.new]
    if t.failed:
        context.log.warning(f"ingestion failed for {t.failed}: the re-curation embeds them with the pool "
                            "(pair_embeddings) or fails naming them")
    if t.recurate_key:
        requests.append(dg.RunRequest(job_name=recurate_pool_job.name, run_key=t.recurate_key,
                                      run_config=last_curation_config(context.instance),
                                      tags={"dynamics/trigger": "new_shards", "dynamics/new_shards": str(t.recurate_shards)}))
    events = [dg.AssetMaterialization(dg.AssetKey("shard_embeddings"), partition=name, metadata={
        "shard": name, "source": "embedded with the pool by pair_embeddings (registered, not re-embedded)"})
        for name in t.in_pool]
    return dg.SensorResult(
        run_requests=requests, skip_reason=None if requests else skip_reason(step, folder), asset_events=events,
        dynamic_partitions_requests=[raw_shard_partitions.build_add_request([o.name for o in t.ready])] if t.ready else [],
        cursor=t.cursor.to_json())
