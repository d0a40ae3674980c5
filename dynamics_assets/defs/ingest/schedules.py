"""Schedules: the nightly re-curation of the pool."""
from __future__ import annotations

import dagster as dg

from dynamics_assets.defs.experiments import EXPERIMENTS
from dynamics_assets.defs.jobs import recurate_pool_job
from dynamics_assets.defs.recuration import last_curation_config, pool_shards_dir


@dg.schedule(name="nightly_recuration", cron_schedule=EXPERIMENTS.recuration.cron, job=recurate_pool_job,
             execution_timezone="UTC", default_status=dg.DefaultScheduleStatus.RUNNING)
def nightly_recuration(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
    """Re-curates the pool on ``recuration.cron`` (nightly by default) with the configuration it was
    last curated with: shards that landed (even with the sensor off) are manifested and embedded,
    clusters refreshed, statistics recomputed; sensor replan_after_recuration then redraws the
    coming epochs of the recipes under ``recuration.recipes``."""
    if pool_shards_dir(context.instance) is None:
        return dg.SkipReason("no pool yet: run curate_pool first")
    return dg.RunRequest(run_config=last_curation_config(context.instance),
                         tags={"dynamics/trigger": "schedule",
                               "dynamics/recipes": ",".join(EXPERIMENTS.recuration.recipes)})



