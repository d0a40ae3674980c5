"""The landing sensor: new raw shards in the pool's folder are registered, ingested, re-curated."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import dagster as dg

from dynamics_assets.core.ingest.landing import LandingCursor, advance, observe
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
    cursor = LandingCursor.from_json(context.cursor)
    step = advance(cursor, observe(folder, skip=registered), registered, folder)
    for name, why in sorted(step.waiting.items()):
        context.log.info(f"waiting for {name}: {why}")

    emb_dir = pool_embeddings_dir(context.instance)
    in_pool = {o.name for o in step.ready if emb_dir is not None and (emb_dir / Path(o.name).stem / "meta.json").exists()}
    new = [o for o in step.ready if o.name not in in_pool]
    requests = [dg.RunRequest(job_name=ingest_shard_job.name, partition_key=o.name,
                              run_key=f"ingest:{o.name}:{o.size}:{o.mtime_ns}", tags={"dynamics/trigger": "new_shard"})
                for o in new]
    ingesting = [*step.cursor.ingesting, *(o.name for o in new)]
    if ingesting and not new and not runs_in_flight(context.instance, ingest_shard_job.name):
        done = context.instance.get_materialized_partitions(dg.AssetKey("shard_embeddings"))
        if failed := sorted(set(ingesting) - done):
            context.log.warning(f"ingestion failed for {failed}: the re-curation embeds them with the pool "
                                "(pair_embeddings) or fails naming them")
        digest = hashlib.sha256("\n".join(sorted(ingesting)).encode()).hexdigest()[:16]
        requests.append(dg.RunRequest(job_name=recurate_pool_job.name, run_key=f"recurate:{digest}",
                                      run_config=last_curation_config(context.instance),
                                      tags={"dynamics/trigger": "new_shards", "dynamics/new_shards": str(len(ingesting))}))
        ingesting = []

    registrations = ([raw_shard_partitions.build_add_request([o.name for o in step.ready])] if step.ready else [])
    events = [dg.AssetMaterialization(dg.AssetKey("shard_embeddings"), partition=name, metadata={
        "shard": name, "source": "embedded with the pool by pair_embeddings (registered, not re-embedded)"})
        for name in sorted(in_pool)]
    skip = None
    if not requests:
        said = [f"{len(step.ready)} shard(s) registered, already in the pool" if step.ready
                else f"no new complete shard in {folder}"]
        if step.waiting:
            said.append(f"{len(step.waiting)} waiting: "
                        + "; ".join(f"{k}: {v}" for k, v in sorted(step.waiting.items())[:3]))
        skip = "; ".join(said)
    return dg.SensorResult(run_requests=requests, skip_reason=skip, dynamic_partitions_requests=registrations,
                           asset_events=events, cursor=LandingCursor(step.cursor.seen, tuple(ingesting)).to_json())
